"""Training: the loop, the fine-tune and pretrain recipes, LoRA, distributed launch."""
