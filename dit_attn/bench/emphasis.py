"""Cost of prompt emphasis in the attention logits: the emphasis path of :func:`dit_attn.call.execute` vs plain
attention, at real attention shapes, measured in one run.

The emphasis path is what :class:`dit_attn.Emphasis` asks for: a per-key bias (``log w`` on some text keys) for
the image/video query rows only. On CUDA it runs our block-sparse kernel with a full block table and ``key_bias``
for the image rows and the plain dispatcher for the text rows; the baseline is the plain call through diffusers'
dispatcher (SDPA). Target on GPU: ≤ 1.05x.

    python -m dit_attn.bench.emphasis [--shapes flux,wan] [--json out.json]

On CPU only the ``small`` shape makes sense (reference path and SDPA math): those numbers are not GPU numbers.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from dit_attn.call import AttentionCall, execute
from dit_attn.layout import Layout

from .timing import time_ms

# name -> (heads, head dim, image/video queries, text keys, joint?) — joint: keys = [text, image] (FLUX);
# cross: keys = text only (Wan attn2).
SHAPES = {
    "flux": dict(H=24, D=128, n_image=4096, n_text=512, joint=True, label="FLUX.1 1024^2 joint (24x128, 4096+512)"),
    "wan": dict(H=12, D=128, n_image=32760, n_text=512, joint=False, label="Wan2.1-1.3B 480p cross (12x128, 32760x512)"),
    "small": dict(H=2, D=64, n_image=256, n_text=32, joint=True, label="tiny joint (2x64, 256+32)"),
}


def _calls(spec: dict, device, dtype, batch: int):
    h, d, n_img, n_txt = spec["H"], spec["D"], spec["n_image"], spec["n_text"]
    n_q = n_txt + n_img if spec["joint"] else n_img
    n_k = n_txt + n_img if spec["joint"] else n_txt
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(batch, n, h, d, device=device, dtype=dtype, generator=gen) for n in (n_q, n_k, n_k))
    q_segs = {"text": (0, n_txt), "image": (n_txt, n_q)} if spec["joint"] else {"image": (0, n_q)}
    k_segs = {"text": (0, n_txt), "image": (n_txt, n_k)} if spec["joint"] else {"text": (0, n_k)}
    layout = Layout(family="bench", site=None, kind="joint" if spec["joint"] else "cross", heads=h, head_dim=d,
                    query_segments=q_segs, key_segments=k_segs, batch_size=batch)
    plain = AttentionCall(q, k, v, layout)
    bias = torch.zeros(batch, 1, n_k, device=device)
    bias[:, :, 3:8] = math.log(1.5)  # a weighted word of five tokens
    emphasis = AttentionCall(q, k, v, layout, key_bias=bias,
                             key_bias_rows=slice(*q_segs["image"]) if spec["joint"] else None)
    return plain, emphasis


def measure(names, device, dtype, batch: int = 1, repeats: int = 5) -> list[dict]:
    rows = []
    for name in names:
        plain, emphasis = _calls(SHAPES[name], device, dtype, batch)
        plain_ms = time_ms(lambda: execute(plain), device, repeats=repeats)
        emph_ms = time_ms(lambda: execute(emphasis), device, repeats=repeats)
        rows.append({"shape": name, "label": SHAPES[name]["label"], "plain_ms": plain_ms, "emphasis_ms": emph_ms,
                     "ratio": emph_ms / plain_ms})
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m dit_attn.bench.emphasis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=None, help="comma list of: " + ", ".join(SHAPES) +
                        " (default: flux,wan on GPU, small on CPU)")
    parser.add_argument("--dtype", default=None, help="bfloat16 (GPU default) or float32 (CPU default)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = (args.shapes or ("flux,wan" if device.type == "cuda" else "small")).split(",")
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; known: {', '.join(SHAPES)}")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (NOT GPU NUMBERS)"
    rows = measure(names, device, dtype, args.batch)
    print(f"emphasis cost, {where}, {dtype}, batch {args.batch}")
    print(f"{'shape':<48}{'plain ms':>10}{'emphasis ms':>13}{'ratio':>8}")
    for r in rows:
        print(f"{r['label']:<48}{r['plain_ms']:>10.3f}{r['emphasis_ms']:>13.3f}{r['ratio']:>8.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": where, "dtype": str(dtype), "results": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
