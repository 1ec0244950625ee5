"""What dit_attn controls cost under ``torch.compile``: compiled-attached / compiled-stock time per denoising step,
beside the eager ratio, per control and all together, at a tiny and a mid-size Wan shape.

One step is one forward of a bare Wan transformer (no classifier-free guidance), attached with the control, then
``torch.compile(transformer, fullgraph=True)``. Every configuration gets its own copy of the transformer (same
weights) and is compiled before any timing; timing then goes round the configurations ``--rounds`` times, each
time taking the median of ``--repeats`` calls per configuration, so that machine noise hits every configuration
alike; the reported time is the median over rounds. SoftPAG adds the perturbed rows to the same forward (batch 2
instead of 1), so its ratio includes that second pass.

    python -m dit_attn.bench.compile [--shapes tiny mid] [--backend inductor] [--rounds 3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

import dit_attn
from dit_attn.testing import tiny_transformer

from .timing import machine_line, time_ms

# Wan transformer configs and latent sizes: (config overrides, latent frames, height, width, text tokens, sparse
# block size). Patch (1, 2, 2): tiny = 3 x 6 x 8 = 144 video tokens, mid = 3 x 16 x 16 = 768.
SHAPES = {
    "tiny": (dict(), 3, 12, 16, 32, 16),
    "mid": (dict(num_attention_heads=4, attention_head_dim=64, ffn_dim=1024, num_layers=4), 3, 32, 32, 64, 64),
}
CONTROLS = ("emphasis", "softpag", "sparse", "entropy")


def _controls(name: str, text_len: int, block_size: int) -> list:
    def emphasis():
        control = dit_attn.Emphasis()
        weights = torch.ones(1, text_len)
        weights[0, 2], weights[0, 5] = 1.5, 0.5  # "(word:1.5)", "(word:0.5)"
        control.set_weights(weights)
        return control

    make = {
        "emphasis": emphasis,
        "softpag": lambda: dit_attn.SoftPAG("blocks.0:*", strength=0.5, scale=2.0),
        "sparse": lambda: dit_attn.RectifiedSparse(sparsity=0.5, block_size=block_size),
        "entropy": lambda: dit_attn.EntropyScale(train_tokens=64),
    }
    if name == "stock":
        return []
    if name == "all":
        return [make[c]() for c in CONTROLS]
    return [make[name]()]


def _inputs(config: dict, frames: int, height: int, width: int, text_len: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    return dict(
        hidden_states=torch.randn(1, config["in_channels"], frames, height, width, generator=generator),
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, text_len, config["text_dim"], generator=generator),
        return_dict=False,
    )


def measure(shape: str, backend: str, rounds: int, repeats: int) -> list[dict]:
    overrides, frames, height, width, text_len, block_size = SHAPES[shape]
    torch._dynamo.reset()
    names = ["stock", *CONTROLS, "all"]
    eager, compiled = {}, {}
    inputs = None
    for name in names:
        transformer = tiny_transformer("wan", **overrides).eval()
        inputs = inputs or _inputs(transformer.config, frames, height, width, text_len)
        if name != "stock":
            dit_attn.attach(transformer, *_controls(name, text_len, block_size))
        eager[name] = transformer
        compiled[name] = torch.compile(transformer, fullgraph=True, backend=backend)
        with torch.no_grad():
            compiled[name](**inputs)  # compile now, not while timing
    times = {(name, mode): [] for name in names for mode in ("eager", "compiled")}
    with torch.no_grad():
        for _ in range(rounds):
            for name in names:
                for mode, model in (("eager", eager[name]), ("compiled", compiled[name])):
                    times[name, mode].append(time_ms(lambda: model(**inputs), repeats=repeats, warmup=1))
    median = {key: statistics.median(values) for key, values in times.items()}
    rows = []
    for name in names:
        rows.append({
            "shape": shape, "control": name,
            "eager_ms": median[name, "eager"], "compiled_ms": median[name, "compiled"],
            "eager_ratio": median[name, "eager"] / median["stock", "eager"],
            "compiled_ratio": median[name, "compiled"] / median["stock", "compiled"],
            "compiled_vs_eager": median[name, "compiled"] / median[name, "eager"],
        })
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dit_attn.bench.compile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (inductor, aot_eager, eager)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    # Every configuration is one more entry in the cache of the same code objects (the hook and module forwards).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * (len(CONTROLS) + 2))
    print(machine_line())
    print(f"backend={args.backend}, rounds={args.rounds}, repeats={args.repeats}; one step = one Wan transformer "
          "forward, batch 1")
    print(f"{'shape':6} {'control':10} {'eager ms':>9} {'compiled ms':>12} {'eager ratio':>12} "
          f"{'compiled ratio':>15} {'compiled/eager':>15}")
    results = []
    for shape in args.shapes:
        for row in measure(shape, args.backend, args.rounds, args.repeats):
            results.append(row)
            print(f"{row['shape']:6} {row['control']:10} {row['eager_ms']:9.2f} {row['compiled_ms']:12.2f} "
                  f"{row['eager_ratio']:12.2f} {row['compiled_ratio']:15.2f} {row['compiled_vs_eager']:15.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_line(), "backend": args.backend, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
