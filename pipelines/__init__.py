"""dit_attn.pipelines"""
