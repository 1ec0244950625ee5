"""Multi-condition attention (PKA) building blocks; the user-facing control is :class:`dit_attn.MultiCondition`.

* :mod:`~dit_attn.conditions.attention`: fast exact paths (dense attention + LSE merges: PAA, KSA, cached-full,
  sum of branches) and the dense token-group oracle; the KSA keyword mask;
* :mod:`~dit_attn.conditions.keywords`: keyword → text-token positions via tokenizer offsets;
* :mod:`~dit_attn.conditions.tokens`: VAE encoding and packing, position ids, PAA alignment;
* :mod:`~dit_attn.conditions.cache`: the per-layer condition K/V cache;
* :mod:`~dit_attn.conditions.adapters`: which LoRA adapters are active in write and denoising passes.

Training condition adapters (``dit-attn train-conditions``) and measuring their fidelity on ShapesWorld live a
layer up, with the data they need: :mod:`dit_attn.pipelines.conditions`; the time and memory benchmark is
:mod:`dit_attn.bench.conditions`.
"""
