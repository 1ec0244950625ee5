"""Benchmarks and experiments, one module each, every one runnable as ``python -m dit_attn.bench.<name>``.

Speed and cost (numbers mean something only on the machine they name; GPU sections say so on a CPU):

* :mod:`~dit_attn.bench.report`: ``dit-attn bench``, every benchmark this machine can run in one report;
* :mod:`~dit_attn.bench.overhead`: the processor layer attached without controls vs stock, per tiny pipeline;
* :mod:`~dit_attn.bench.kernels`: the block-sparse Triton kernels vs torch SDPA (cuDNN, flash);
* :mod:`~dit_attn.bench.emphasis`: the cost of prompt emphasis (a key bias) in the attention logits;
* :mod:`~dit_attn.bench.guidance`: SoftPAG vs CFG only, per denoising step;
* :mod:`~dit_attn.bench.sparse_speed`: rectified sparse attention vs dense SDPA at real video shapes (GPU);
* :mod:`~dit_attn.bench.sparse_density`: requested vs achieved density at real shapes (CPU);
* :mod:`~dit_attn.bench.conditions`: multi-condition attention time and memory vs the number of conditions.

Quality experiments (they write JSON and plots; ``--write-docs`` also refreshes the results block of their page
in ``docs/``, a step a maintainer runs, never an import):

* :mod:`~dit_attn.bench.sparse_quality`: rectified sparse attention vs dense, per layer and final output;
* :mod:`~dit_attn.bench.reweighting`: does emphasising a colour word change how often it is drawn (ShapesWorld);
* :mod:`~dit_attn.bench.guidance_effect`: SoftPAG on searched heads vs CFG and layer PAG (ShapesWorld).

:mod:`~dit_attn.bench.timing` holds what they share: the timer, the machine description and the docs updater.
This package is the top layer: it may import everything else (the ShapesWorld pipelines included); nothing
below it imports it.
"""
