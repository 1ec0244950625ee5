"""dit_attn.kernels"""
