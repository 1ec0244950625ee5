"""Controls under diffusers' context parallelism.

Two processes (``torchrun``, gloo, CPU) run ``tests/context_parallel_worker.py``: every control on tiny FLUX
(joint + single-stream), Wan (self + cross attention, text not split) and Qwen-Image (text split inside the
model) transformers, two whole tiny pipelines with Emphasis + SoftPAG + RectifiedSparse under CFG, and
MultiCondition (edge map + subject, each mode) on a tiny FLUX pipeline, each with Ulysses degree 2 against one
process; the per-key controls (Emphasis, EntropyScale) with ring degree 2 the same
way, and the others refused under ring by name. The rest checks the token bookkeeping and the refusals on one
process.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

import dit_attn
from dit_attn import parallel
from dit_attn.testing import tiny_transformer
from PIL import Image

pytestmark = pytest.mark.skipif(
    "parallel_config" not in inspect.signature(dispatch_attention_fn).parameters,
    reason="this diffusers release has no context parallelism")

WORKER = Path(__file__).with_name("context_parallel_worker.py")
CONTROLS = ("entropy", "sparse0", "sparse", "emphasis", "softpag", "all")
CASES = ([f"{family}:{control}" for family in ("flux", "wan", "qwenimage") for control in CONTROLS]
         # (under ring, calls no control changes run diffusers' own ring attention, which needs a backend that
         # returns the log-sum-exp: none on CPU; Emphasis leaves Wan's self-attention alone, so it is not run alone)
         + [f"{family}:{control}:ring" for family in ("flux", "wan", "qwenimage")
            for control in ("entropy", "emphasis", "keywise") if (family, control) != ("wan", "emphasis")]
         + ["flux:none", "flux:pipeline", "wan:pipeline", "flux:pipeline:ring"]
         + ["flux:conditions", "flux:conditions:cached-full", "flux:conditions:concat"])
RING_REFUSED = ("flux:sparse:ring", "flux:softpag:ring", "flux:conditions:ring")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("cp") / "results.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
               "127.0.0.1", "--master-port", str(_free_port()), str(WORKER), str(out), ",".join(CASES)]
    command[-1] = ",".join(CASES + list(RING_REFUSED))
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and out.exists(), run.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", CASES)
def test_ulysses_degree_2_equals_one_process(two_process_results, case):
    result = two_process_results[case]
    assert isinstance(result, dict), result  # else the worker's exception and traceback
    assert result["error"] <= 1e-5, result
    if not case.endswith(":none"):
        # the controls changed the output on one process, so equality is not two untouched runs agreeing
        # (RectifiedSparse(sparsity=0) computes every block: its change is rounding only)
        assert result["effect"] > (1e-7 if case.endswith("sparse0") else 1e-3), result
    if case.endswith(":pipeline"):
        assert result["heads"] == [1, 2], result  # the parallel run held 1 of the 2 heads per process
    if case.endswith(":pipeline:ring"):
        assert result["heads"] == [2, 2], result  # ring keeps every head


@pytest.mark.parametrize("case", RING_REFUSED)
def test_ring_refuses_controls_that_need_queries_and_keys_in_one_order(two_process_results, case):
    result = two_process_results[case]
    assert isinstance(result, str) and result.startswith("NotImplementedError") and "ring attention" in result
    assert "ulysses_degree" in result


def _ulysses(rank, world=2, text_split=True):
    return parallel.Shard(rank=rank, world=world, text_split=text_split)


def test_shard_plan_puts_flux_joint_tokens_back_in_one_process_order():
    # each of 2 processes holds 3 text and 4 image tokens: gathered [t0 t0 t0 i0 i0 i0 i0 t1 t1 t1 i1 i1 i1 i1]
    plan = parallel.shard_plan({"text": (0, 3), "image": (3, 7)}, _ulysses(0), "cpu")
    assert plan.global_segments == {"text": (0, 6), "image": (6, 14)}
    gathered = torch.tensor([0, 1, 2, 6, 7, 8, 9, 3, 4, 5, 10, 11, 12, 13])  # one-process position of each token
    assert torch.equal(plan.scatter, gathered)
    assert torch.equal(parallel.to_single_order(gathered[None], plan)[0], torch.arange(14))
    x = torch.randn(2, 14, 3)
    assert torch.equal(parallel.to_gathered_order(parallel.to_single_order(x, plan), plan), x)


def test_shard_plan_takes_an_unsplit_input_once_and_keeps_in_order_shards_as_they_are():
    # Wan's cross-attention keys: the text arrives whole on both processes (its _cp_plan does not split it)
    keys = parallel.shard_plan({"text": (0, 5)}, _ulysses(1, text_split=False), "cpu")
    assert keys.global_segments == {"text": (0, 5)}
    assert keys.gather.tolist() == [0, 1, 2, 3, 4] and keys.scatter.tolist() == [0, 1, 2, 3, 4] * 2
    # Wan's self-attention: one split segment, already in order
    queries = parallel.shard_plan({"image": (0, 8)}, _ulysses(1, text_split=False), "cpu")
    assert queries.gather is None and queries.global_segments == {"image": (0, 16)}


def _cp_config(ring=1, ulysses=1):
    cp = SimpleNamespace(ring_degree=ring, ulysses_degree=ulysses, _ulysses_local_rank=0, ulysses_anything=False)
    return SimpleNamespace(context_parallel_config=cp)


def _flux_inputs():
    g = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(1, 48, 16, generator=g), encoder_hidden_states=torch.randn(1, 8, 48, generator=g),
                pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
                guidance=torch.tensor([3.5]), img_ids=torch.zeros(48, 3), txt_ids=torch.zeros(8, 3))


def test_ring_attention_refuses_order_dependent_controls_at_attach_time():
    model = tiny_transformer("flux")
    model._parallel_config = _cp_config(ring=2)
    with pytest.raises(NotImplementedError, match=r"SoftPAG cannot run under diffusers' ring attention.*"
                                                  r"ulysses_degree"):
        dit_attn.attach(model, dit_attn.SoftPAG("0:0"))
    for fine in (dit_attn.PassThrough(), dit_attn.EntropyScale(train_tokens=64), dit_attn.Emphasis()):
        with dit_attn.attach(model, fine):  # per-key controls run on the gathered keys
            pass
    model._parallel_config = _cp_config(ring=2, ulysses=2)
    with pytest.raises(NotImplementedError, match="unified"):
        dit_attn.attach(model, dit_attn.EntropyScale(train_tokens=64))


@pytest.mark.parametrize("config", [dict(ulysses=2), dict(ring=2)])
def test_parallelism_enabled_after_attaching_says_to_enable_it_first(config):
    model = tiny_transformer("flux")
    with dit_attn.attach(model, dit_attn.EntropyScale(train_tokens=64)):
        for proc in dit_attn.families.processors_of(model).values():
            if isinstance(proc, dit_attn.DitAttnProcessor):
                proc._parallel_config = _cp_config(**config)  # what enable_parallelism sets
        with pytest.raises(RuntimeError, match=r"enable_parallelism\(\.\.\.\) first, then attach"):
            model(**_flux_inputs())


def test_a_control_without_context_parallel_support_is_refused_by_name():
    class ShardBlind(dit_attn.Control):
        context_parallel = False

        def prepare(self, call):
            return call.replace(logit_scale=2.0)

    model = tiny_transformer("flux")
    for module in model.modules():
        if hasattr(module, "processor"):
            module.processor._parallel_config = _cp_config(ulysses=2)
    model._parallel_config = _cp_config(ulysses=2)
    with dit_attn.attach(model, ShardBlind()):
        with pytest.raises(NotImplementedError, match="ShardBlind cannot run under diffusers' context parallelism"):
            model(**_flux_inputs())


def _cli(args, launch=False):
    """``dit-attn ARGS`` in a fresh process, or in two started by torchrun (``launch=True``)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    launcher = ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(_free_port())] if launch else []
    return subprocess.run([sys.executable, *launcher, "-m", "dit_attn.cli", *args], env=env, capture_output=True,
                          text=True, timeout=600)


# slow tier: two processes of the real command line; the 2-process equality tests above stay fast
@pytest.mark.slow
def test_batch_with_cp_writes_each_file_once_and_equal_to_one_process(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        '{"id": "a", "model": "tiny:flux", "prompt": "a (red:1.5) circle", "steps": 2, '
        '"controls": {"emphasis": {}, "sparse": {"sparsity": 0.5, "block_size": 8}}}\n'
        '{"id": "b", "model": "tiny:flux", "prompt": "a blue square", "steps": 2, '
        '"controls": {"entropy": {"train_tokens": 16}}}\n')
    split = _cli(["batch", str(jobs), "--out", str(tmp_path / "cp"), "--cp", "ulysses:2", "--quiet"], launch=True)
    assert split.returncode == 0, split.stderr[-3000:]
    one = _cli(["batch", str(jobs), "--out", str(tmp_path / "one"), "--quiet"])
    assert one.returncode == 0, one.stderr[-3000:]
    lines = (tmp_path / "cp" / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 2 and split.stdout.count("2 generated") == 1  # written and reported by process 0 only
    names = sorted(p.name for p in (tmp_path / "cp").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "one").iterdir())
    for name in names:
        if name.endswith(".png"):
            a, b = (np.asarray(Image.open(tmp_path / d / name)) for d in ("cp", "one"))
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, name


def test_cp_needs_a_launch_with_that_many_processes_and_a_valid_value(monkeypatch, capsys):
    from dit_attn import cli
    from dit_attn.pipelines.context_parallel import ContextParallel, start

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="torchrun --nproc-per-node 2"):
        start(ContextParallel.parse("ulysses:2"))
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["generate", "x", "--model", "tiny:flux", "--cp", "ulysses"])
    assert exit_code.value.code == 2 and "--cp takes 'ulysses:N' or 'ring:N'" in capsys.readouterr().err


def test_uneven_ulysses_splits_refuse_controls_by_name_and_allow_passthrough():
    model = tiny_transformer("flux")
    config = _cp_config(ulysses=2)
    config.context_parallel_config.ulysses_anything = True
    model._parallel_config = config
    with pytest.raises(NotImplementedError, match="EntropyScale: .*ulysses_anything=True"):
        dit_attn.attach(model, dit_attn.EntropyScale(train_tokens=64))
    with dit_attn.attach(model, dit_attn.PassThrough()):
        pass


def test_tensor_parallelism_refuses_controls_by_name():
    """diffusers' tensor parallelism gives each process some of the heads without telling the processors: head
    sets would name the wrong heads, so controls are refused (observers are fine)."""
    model = tiny_transformer("flux")
    model._parallel_config = SimpleNamespace(tensor_parallel_config=object(), context_parallel_config=None)
    with pytest.raises(NotImplementedError, match="SoftPAG cannot run under diffusers' tensor parallelism"):
        dit_attn.attach(model, dit_attn.SoftPAG("0:0"))
    with dit_attn.attach(model, dit_attn.Recorder()):
        pass
