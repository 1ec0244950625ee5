"""One process of the 2-process context-parallel tests (``tests/test_context_parallel.py`` launches it with
``torchrun --nproc-per-node 2``, gloo backend, CPU).

Every case builds the same tiny model on both processes from a fixed seed, computes the single-process result
with the controls attached, then enables diffusers' Ulysses context parallelism (degree 2), attaches the same
controls again and computes the parallel result. Rank 0 writes ``{case: {"error": ..., "effect": ...}}`` (or the exception) as
JSON to the path given as the first argument.
"""

from __future__ import annotations

import json
import sys
import traceback

import torch
import torch.distributed as dist

# diffusers' context parallelism places each process on device ``rank % torch.accelerator.device_count()``,
# which is 0 on a CPU machine; one "device" makes every process use the CPU.
torch.accelerator.device_count = lambda: 1

import dit_attn  # noqa: E402
from diffusers import FluxTransformer2DModel, QwenImageTransformer2DModel, WanTransformer3DModel  # noqa: E402
from diffusers.models._modeling_parallel import ContextParallelConfig  # noqa: E402

SEED = 1234


def _generator():
    return torch.Generator().manual_seed(SEED)


def flux():
    g = _generator()
    model = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2,
                                   attention_head_dim=8, num_attention_heads=4, joint_attention_dim=16,
                                   pooled_projection_dim=8, axes_dims_rope=(2, 2, 4))
    img_ids = torch.zeros(48, 3)
    img_ids[:, 1], img_ids[:, 2] = torch.arange(48) // 8, torch.arange(48) % 8
    inputs = dict(hidden_states=torch.randn(2, 48, 16, generator=g),
                  encoder_hidden_states=torch.randn(2, 6, 16, generator=g),
                  pooled_projections=torch.randn(2, 8, generator=g), timestep=torch.tensor([0.5, 0.5]),
                  img_ids=img_ids, txt_ids=torch.zeros(6, 3))
    return model, inputs


def wan():
    g = _generator()
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=8, in_channels=4,
                                  out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2,
                                  rope_max_seq_len=32)
    inputs = dict(hidden_states=torch.randn(2, 4, 4, 16, 16, generator=g),
                  encoder_hidden_states=torch.randn(2, 7, 16, generator=g), timestep=torch.tensor([500, 500]))
    return model, inputs


def qwenimage():
    g = _generator()
    model = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=16,
                                        axes_dims_rope=(2, 2, 4))
    inputs = dict(hidden_states=torch.randn(2, 48, 16, generator=g),
                  encoder_hidden_states=torch.randn(2, 6, 16, generator=g),
                  encoder_hidden_states_mask=torch.tensor([[1] * 6, [1] * 4 + [0] * 2]),  # row 2: padded text
                  timestep=torch.tensor([0.5, 0.5]),
                  img_shapes=[[(1, 6, 8)]] * 2)
    return model, inputs


MODELS = {"flux": flux, "wan": wan, "qwenimage": qwenimage}


def _emphasis(model_inputs):
    emphasis = dit_attn.Emphasis()
    text = model_inputs["encoder_hidden_states"]
    weights = torch.ones(text.shape[0], text.shape[1])
    weights[:, 1], weights[:, 3] = 3.0, 0.25
    emphasis.set_weights(weights)
    return [emphasis]


CONTROLS = {
    "none": lambda inputs: [],
    "passthrough": lambda inputs: [dit_attn.PassThrough()],
    "entropy": lambda inputs: [dit_attn.EntropyScale(train_tokens=16)],
    "sparse0": lambda inputs: [dit_attn.RectifiedSparse(sparsity=0.0, block_size=8)],
    "sparse": lambda inputs: [dit_attn.RectifiedSparse(sparsity=0.5, block_size=8)],
    "emphasis": _emphasis,
    "softpag": lambda inputs: [dit_attn.SoftPAG("0:0,3;1:1,2", strength=0.7, scale=2.0)],
    "keywise": lambda inputs: [*_emphasis(inputs), dit_attn.EntropyScale(train_tokens=16)],
    "all": lambda inputs: [*_emphasis(inputs), dit_attn.EntropyScale(train_tokens=16),
                           dit_attn.RectifiedSparse(sparsity=0.5, block_size=8)],
}


def _forward(model, inputs, controls):
    with torch.no_grad(), dit_attn.attach(model, *controls):
        return model(**inputs, return_dict=False)[0]


def run_case(family: str, control: str, kind: str = "ulysses") -> dict:
    """``error``: parallel (``kind``: Ulysses or ring, degree = the process count) vs single process; ``effect``:
    the controls' change on one process (so a control that silently did nothing cannot pass)."""
    torch.manual_seed(SEED)
    model, inputs = MODELS[family]()
    model.eval()
    plain = _forward(model, inputs, [])
    expected = _forward(model, inputs, CONTROLS[control](inputs))
    model.enable_parallelism(config=ContextParallelConfig(**{f"{kind}_degree": dist.get_world_size()}))
    got = _forward(model, inputs, CONTROLS[control](inputs))
    return {"error": float((got - expected).abs().max()), "effect": float((expected - plain).abs().max())}


def run_pipeline(family: str, control: str, kind: str = "ulysses") -> dict:
    """A whole tiny pipeline (CFG, several steps): step index, batch roles and the pipeline-level parts of
    Emphasis and SoftPAG under parallelism."""
    from dit_attn.testing import tiny_call_kwargs, tiny_pipeline

    pipe = tiny_pipeline(family)
    kwargs = lambda: dict(tiny_call_kwargs(family, steps=3), prompt="a (red:1.6) circle above a [blue] square")  # noqa: E731

    def generate(controls):
        with dit_attn.attach(pipe, *controls):
            return torch.as_tensor(pipe(**kwargs())[0])

    plain = generate([])
    if kind == "ring":  # the per-key controls, the ones ring attention runs
        controls = lambda: [dit_attn.Emphasis(), dit_attn.EntropyScale(train_tokens=16)]  # noqa: E731
    else:
        controls = lambda: [dit_attn.Emphasis(), dit_attn.SoftPAG("0:0;1:1", strength=0.8, scale=2.0),  # noqa: E731
                            dit_attn.RectifiedSparse(sparsity=0.5, block_size=8)]
    expected = generate(controls())
    pipe.transformer.enable_parallelism(config=ContextParallelConfig(**{f"{kind}_degree": dist.get_world_size()}))
    recorder = dit_attn.Recorder()
    got = generate(controls() + [recorder])
    layout = recorder.layouts[0]  # proof that the parallel run did split the heads
    return {"error": float((got - expected).abs().max()), "effect": float((expected - plain).abs().max()),
            "heads": [layout.heads, layout.model_heads]}


def run_conditions(family: str, variant: str = "pka") -> dict:
    """MultiCondition (an edge map and a subject sprite) on a whole tiny pipeline: the condition pass runs under
    parallelism too, its caches hold this process's heads, keyword masks average over every head. ``variant``:
    the mode (Ulysses), or ``"ring"`` (pka under ring attention, which refuses it)."""
    kind, mode = ("ring", "pka") if variant == "ring" else ("ulysses", variant)
    from dit_attn.testing import tiny_call_kwargs, tiny_pipeline

    pipe = tiny_pipeline(family)
    g = torch.Generator().manual_seed(SEED)
    edges, sprite = torch.rand(3, 48, 64, generator=g) * 2 - 1, torch.rand(3, 32, 32, generator=g) * 2 - 1

    def generate(controls):
        with dit_attn.attach(pipe, *controls):
            return torch.as_tensor(pipe(**tiny_call_kwargs(family, steps=3))[0])

    control = lambda: dit_attn.MultiCondition(spatial=[edges], subjects=[(sprite, "circle")], mode=mode)  # noqa: E731
    plain = generate([])
    expected = generate([control()])
    pipe.transformer.enable_parallelism(config=ContextParallelConfig(**{f"{kind}_degree": dist.get_world_size()}))
    got = generate([control()])
    return {"error": float((got - expected).abs().max()), "effect": float((expected - plain).abs().max())}


def main(out_path: str, cases: list[str]) -> None:
    dist.init_process_group("gloo")
    results = {}
    for case in cases:
        family, control, *kind = case.split(":")
        try:
            run = {"pipeline": run_pipeline, "conditions": run_conditions}.get(control, run_case)
            results[case] = run(family, *kind) if control == "conditions" else run(family, control, *kind)
        except Exception as error:  # reported per case, so one failure does not hide the others
            results[case] = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=4)}"
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","))
