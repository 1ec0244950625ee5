"""dit_attn: attention control for diffusion transformers."""

__version__ = "0.1.0"
