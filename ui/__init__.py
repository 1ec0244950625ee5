"""dit_attn.ui"""
