"""CLI and batch jobs: generation, metadata, malformed files, failures, resume after kill -9, 2 processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dit_attn.cli import main as cli_main
from dit_attn.pipelines.batch import JobFileError, expand, load_jobs, read_manifest, run_batch

BIN = os.path.dirname(sys.executable)


def _write(path, lines):
    path.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")
    return str(path)


def _jobs(tmp_path, n_seeds=2):
    return _write(tmp_path / "jobs.jsonl", [
        {"defaults": {"model": "tiny:sd3", "steps": 2}},
        {"prompt": "a red circle", "seeds": list(range(1, 1 + n_seeds))},
        {"prompt": "a blue square", "count": 2, "controls": {"entropy": {"train_tokens": 64}}},
        {"prompt": "a green star", "seed": 7},
    ])


def _pngs(out):
    return sorted(f for f in os.listdir(out) if f.endswith(".png"))


def test_generate_writes_png_with_metadata(tmp_path):
    out = tmp_path / "img.png"
    assert cli_main(["generate", "a red circle", "--model", "tiny:sd3", "--seed", "3", "--steps", "2",
                     "--control", "entropy:train_tokens=64", "--out", str(out)]) == 0
    image = Image.open(out)
    assert "Seed: 3" in image.text["parameters"] and image.text["parameters"].startswith("a red circle")
    settings = json.loads(image.text["dit_attn"])
    assert settings["controls"] == {"entropy": {"train_tokens": 64}}


def test_generate_video_and_bad_control(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    assert cli_main(["generate", "a red circle", "--model", "tiny:wan", "--steps", "2", "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and (tmp_path / "clip.gif").exists()
    assert cli_main(["generate", "x", "--control", "nonsense"]) == 2
    assert "unknown control 'nonsense'" in capsys.readouterr().err


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "a"}', '{"prompt": "b", "stpes": 3}'], r"jobs.jsonl:2: unknown field\(s\) \['stpes'\]"),
    (['{"prompt": "a"}', '{"prompt": "b",'], r"jobs.jsonl:2: not valid JSON"),
    (['{"prompt": ""}'], r"jobs.jsonl:1: 'prompt' must be a non-empty string"),
    (['{"prompt": "a", "steps": -1}'], r"jobs.jsonl:1: 'steps' must be a positive integer"),
    (['{"prompt": "a (red:-1)"}'], r"jobs.jsonl:1: prompt: bad weight '-1'"),  # unbalanced '(' is A1111 text now
    (['[1, 2]'], r"jobs.jsonl:1: a job must be an object"),
])
def test_malformed_jobs_files_name_the_line(tmp_path, lines, message):
    path = _write(tmp_path / "jobs.jsonl", lines)
    with pytest.raises(JobFileError, match=message):
        expand(load_jobs(path))


def test_yaml_jobs_and_deterministic_ids(tmp_path):
    path = tmp_path / "jobs.yaml"
    path.write_text("defaults: {model: 'tiny:sd3', steps: 2}\njobs:\n  - prompt: a red circle\n    count: 2\n")
    items = expand(load_jobs(str(path)), base_seed=10)
    assert [it.seed for it in items] == [10, 11]
    again = expand(load_jobs(str(path)), base_seed=10)
    assert [it.id for it in items] == [it.id for it in again]


def test_failing_item_is_recorded_and_the_rest_run(tmp_path):
    jobs = _jobs(tmp_path)

    def generate(item):
        if item.seed == 7:
            raise RuntimeError("boom on purpose")
        return "image", Image.new("RGB", (8, 8), (item.seed, 0, 0))

    summary = run_batch(jobs, str(tmp_path / "out"), generate=generate, progress=False)
    assert summary.done == 4 and summary.failed == 1
    lines = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    failed = [x for x in lines if x["status"] == "failed"]
    assert len(failed) == 1 and "boom on purpose" in failed[0]["error"]
    # a second run redoes only the failed item
    summary = run_batch(jobs, str(tmp_path / "out"), generate=lambda it: ("image", Image.new("RGB", (8, 8))),
                        progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (1, 4, 0)


def _cli(*args, env=None):
    return [os.path.join(BIN, "dit-attn"), *args]


def test_resume_after_kill_9(tmp_path):
    """The run is SIGKILLed at a known point (the batch's test switch): right after its 3rd image is written and
    before that image's manifest line, the worst moment; the resumed run must finish with every item exactly once."""
    from dit_attn.pipelines.batch import TEST_SIGKILL_AFTER_OUTPUTS_ENV

    jobs = _jobs(tmp_path, n_seeds=6)  # 9 items
    out = tmp_path / "out"
    manifest = out / "manifest.jsonl"
    killed = subprocess.run(_cli("batch", jobs, "--out", str(out), "--quiet"), capture_output=True, text=True,
                            env={**os.environ, TEST_SIGKILL_AFTER_OUTPUTS_ENV: "3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(_pngs(out)) == 3  # the 3rd image is on disk, its manifest line is not
    done_before = set(read_manifest(str(out)))
    assert len(done_before) == 2
    result = subprocess.run(_cli("batch", jobs, "--out", str(out), "--quiet"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    expected = {it.id for it in expand(load_jobs(jobs))}
    assert {f[:-4] for f in _pngs(out)} == expected
    ok = [json.loads(x)["id"] for x in manifest.read_text().splitlines()
          if x.strip().startswith("{") and '"status": "ok"' in x]
    assert sorted(ok) == sorted(expected)  # every item exactly once: nothing lost, nothing duplicated
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]


# slow: two accelerate-launched processes plus a single-process run; the context-parallel batch test keeps a
# two-process batch in the default tier
@pytest.mark.slow
def test_two_processes_make_the_same_files_as_one(tmp_path):
    jobs = _jobs(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    # One thread per process in both runs: float reductions (hence pixels) depend on the thread count.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(_cli("batch", jobs, "--out", str(one), "--quiet"), capture_output=True, text=True,
                            env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    launch = [os.path.join(BIN, "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--num_cpu_threads_per_process", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "-m", "dit_attn.cli", "batch", jobs, "--out", str(two), "--quiet"]
    result = subprocess.run(launch, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[process 1/2]" in result.stdout and "[process 2/2]" in result.stdout
    assert _pngs(one) == _pngs(two) and len(_pngs(one)) == 5
    for name in _pngs(one):
        assert np.array_equal(np.asarray(Image.open(one / name)), np.asarray(Image.open(two / name)))
