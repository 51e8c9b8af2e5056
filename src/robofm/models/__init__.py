"""Models: vision encoders, language backbones, action heads and the VLA composer."""
