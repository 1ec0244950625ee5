"""Condition adapters trained and measured on data: the layer above :mod:`dit_attn.conditions`.

* :mod:`~dit_attn.pipelines.conditions.train`: LoRA condition-adapter training (CSAS) on ShapesWorld or a folder
  of images, ``dit-attn train-conditions``;
* :mod:`~dit_attn.pipelines.conditions.fidelity`: how faithfully the bundled ShapesWorld ``flux`` model follows
  its conditions in each mode, scored by the exact evaluator (``python -m dit_attn.pipelines.conditions.fidelity``).
"""
