"""Deployment: INT8 weight quantization of checkpoints for CPU inference (`quantize`)."""
