"""Attention kernels: a plain PyTorch reference (`reference.py`) and our Triton flash attention."""
