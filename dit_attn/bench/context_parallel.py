"""Step time under diffusers' Ulysses context parallelism, with and without dit_attn controls.

``python -m dit_attn.bench.context_parallel`` starts ``--degree`` processes with torchrun (one per GPU, NCCL) and
times one transformer forward of a FLUX-shaped model on each configuration, interleaved:

* ``one process``: stock, then with controls (Emphasis + EntropyScale + RectifiedSparse), on process 0 alone;
* ``ulysses:N``: the same two, split over the N processes.

It prints the ratios (speed-up of the split, cost of the controls in each setting) measured in one run. With
fewer GPUs than ``--degree`` it says so and measures nothing, unless ``--cpu`` asks for CPU processes (gloo):
that checks the plumbing and measures the controls' relative cost on CPU, not a GPU speed-up.

Example:
    python -m dit_attn.bench.context_parallel --cpu --tokens 256 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

import torch


def _controls(text_len: int):
    import dit_attn

    emphasis = dit_attn.Emphasis()
    weights = torch.ones(1, text_len)
    weights[:, 1:3] = 2.0
    emphasis.set_weights(weights)
    return [emphasis, dit_attn.EntropyScale(train_tokens=1024),
            dit_attn.RectifiedSparse(sparsity=0.5, block_size=64)]


def _model_and_inputs(tokens: int, text_len: int, device):
    from diffusers import FluxTransformer2DModel

    side = int(round(tokens ** 0.5))
    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4,
                                   attention_head_dim=64, num_attention_heads=8, joint_attention_dim=256,
                                   pooled_projection_dim=64, axes_dims_rope=(16, 24, 24)).to(device).eval()
    img_ids = torch.zeros(side * side, 3)
    img_ids[:, 1], img_ids[:, 2] = torch.arange(side * side) // side, torch.arange(side * side) % side
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, side * side, 64, generator=g),
                  encoder_hidden_states=torch.randn(1, text_len, 256, generator=g),
                  pooled_projections=torch.randn(1, 64, generator=g), timestep=torch.tensor([0.5]),
                  img_ids=img_ids, txt_ids=torch.zeros(text_len, 3))
    return model, {k: v.to(device) for k, v in inputs.items()}


def _worker(out: str, tokens: int, text_len: int, repeats: int) -> None:
    import torch.distributed as dist
    from diffusers import ContextParallelConfig

    import dit_attn
    from dit_attn.bench.timing import time_ms
    from dit_attn.pipelines.context_parallel import _one_cpu_device

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(device)
    else:
        _one_cpu_device()
    model, inputs = _model_and_inputs(tokens, text_len, device)

    def forward(controls):
        with torch.no_grad(), dit_attn.attach(model, *controls):
            return time_ms(lambda: model(**inputs, return_dict=False), device, repeats=repeats, warmup=1)

    results = {}
    if rank == 0:
        results["one process, stock"] = forward([])
        results["one process, controls"] = forward(_controls(text_len))
    dist.barrier()
    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    results[f"ulysses:{world}, stock"] = forward([])
    results[f"ulysses:{world}, controls"] = forward(_controls(text_len))
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


def run(degree: int = 2, tokens: int = 4096, text_len: int = 128, repeats: int = 10, cpu: bool = False) -> dict:
    """``{"skipped": reason}`` or ``{configuration: ms}`` plus ``ratios``, measured in one launch."""
    gpus = torch.cuda.device_count()
    if not cpu and gpus < degree:
        return {"skipped": f"needs {degree} GPUs for ulysses:{degree}, this machine has {gpus} "
                           "(--cpu runs CPU processes to check the plumbing)"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.json")
        env = dict(os.environ)
        if cpu:
            env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(degree),
                   "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "dit_attn.bench.context_parallel",
                   "--worker", out, "--tokens", str(tokens), "--text-len", str(text_len), "--repeats", str(repeats)]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the {degree}-process run failed:\n{done.stderr[-3000:]}")
        with open(out) as f:
            times = json.load(f)
    split = f"ulysses:{degree}"
    times["ratios"] = {
        f"{split} / one process (stock)": times[f"{split}, stock"] / times["one process, stock"],
        "controls / stock (one process)": times["one process, controls"] / times["one process, stock"],
        f"controls / stock ({split})": times[f"{split}, controls"] / times[f"{split}, stock"],
    }
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--degree", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=4096, help="image tokens (a square grid)")
    parser.add_argument("--text-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cpu", action="store_true", help="CPU processes (gloo): plumbing and relative cost only")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.tokens, args.text_len, args.repeats)
        return 0
    from dit_attn.bench.timing import machine_line

    result = run(args.degree, args.tokens, args.text_len, args.repeats, args.cpu)
    print(machine_line())
    if "skipped" in result:
        print(f"context parallel: skipped: {result['skipped']}")
        return 0
    for name, value in result.items():
        if name != "ratios":
            print(f"{name:32s} {value:9.1f} ms per forward")
    for name, value in result["ratios"].items():
        print(f"{name:40s} {value:6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
