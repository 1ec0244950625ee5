"""Hostile job files and misuse: nothing written outside --out, nothing lost, one clear error line.

Most tests use a fake ``generate`` (no model); the NaN, CLI and attach tests use the tiny sd3 pipeline.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import dit_attn
from dit_attn.cli import main as cli_main
from dit_attn.pipelines import batch as B
from dit_attn.state import HOOK_NAME
from dit_attn.pipelines.batch import (BatchLock, BatchLockedError, JobFileError, expand, load_jobs, read_manifest,
                                      run_batch)

BIN = os.path.dirname(sys.executable)


def _write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


def _fake(item):
    """A deterministic image from the item's prompt and seed."""
    value = (sum(map(ord, item.params["prompt"])) + item.seed) % 256
    return "image", Image.new("RGB", (8, 8), (value, 0, 0))


def _tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def _strict_json_lines(path):
    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return [json.loads(line, parse_constant=no_constants) for line in open(path).read().splitlines()]


# --- ids --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("job_id, problem", [
    ("../x", "contains '..'"),
    ("/abs/path", "absolute path"),
    ("a/b", "contains '/'"),
    ("./x", "contains '/'"),
    ("a\\b", "contains '\\\\\\\\'"),
    ("..", "only dots"),
    (".", "only dots"),
    ("", "is empty"),
    ("   ", "is empty"),
    ("CON", "reserved device name"),
    ("nul.txt", "reserved device name"),
    ("com1", "reserved device name"),
    ("a\nb", "control characters"),
    ("a\x00b", "control characters"),
    (".hidden", "starts with '.'"),
    (".tmp-x", "starts with '.'"),
    ("x.", "ends with"),
    ("~x", "contains '~'"),
    ("C:x", "absolute path"),
    ("ab:c", "contains ':'"),
    ("a*b?", "contains '*' '?'"),
    ("x" * 101, "longer than 100"),
    (7, "must be a string"),
])
def test_unsafe_job_ids_are_rejected_before_anything_is_written(tmp_path, job_id, problem):
    jobs = _write(tmp_path / "jobs.jsonl", [{"prompt": "ok"}, {"id": job_id, "prompt": "a red circle"}])
    before = _tree(tmp_path)
    with pytest.raises(JobFileError) as info:
        run_batch(jobs, str(tmp_path / "out"), generate=_fake, progress=False)
    message = str(info.value)
    assert message.startswith("jobs.jsonl:2") and problem.replace("\\\\", "\\") in message
    if job_id != 7:
        assert "allowed: a plain file name" in message
    assert _tree(tmp_path) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("other", ["X", "x"])
def test_ids_naming_the_same_file_are_an_error_before_anything_runs(tmp_path, other):
    jobs = _write(tmp_path / "jobs.jsonl", [{"id": "x", "prompt": "first"}, {"id": other, "prompt": "second"}])
    with pytest.raises(JobFileError, match=r"jobs.jsonl:2: id '.*' names the same files as id 'x' of jobs.jsonl:1"):
        run_batch(jobs, str(tmp_path / "out"), generate=_fake, progress=False)
    assert not (tmp_path / "out").exists()


def test_unicode_normalised_ids_collide(tmp_path):
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    jobs = _write(tmp_path / "jobs.jsonl", [{"id": composed, "prompt": "a"}, {"id": decomposed, "prompt": "b"}])
    with pytest.raises(JobFileError, match="names the same files"):
        expand(load_jobs(jobs))


def test_safe_ids_write_only_inside_out(tmp_path):
    jobs = _write(tmp_path / "jobs.jsonl", [{"id": "my job (v2)", "prompt": "a", "seeds": [1, 2]},
                                           {"id": "café", "prompt": "b"}])
    out = tmp_path / "out"
    summary = run_batch(jobs, str(out), generate=_fake, progress=False)
    assert summary.done == 3
    assert set(os.listdir(out)) == {"my job (v2)-1.png", "my job (v2)-2.png", "café-2.png", "manifest.jsonl"}
    assert _tree(tmp_path) == sorted(["jobs.jsonl", *(f"out/{f}" for f in os.listdir(out))])


# --- numbers ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("steps", 1000000, r"'steps' = 1000000 is out of range; allowed 1..200"),
    ("count", 100000000, r"'count' = 100000000 is out of range; allowed 1..1000"),
    ("count", "1e8", r"'count' must be a positive integer; got 100000000.0"),
    ("width", 100000, r"'width' = 100000 is out of range; allowed 8..4096"),
    ("height", 0, r"'height' must be a positive integer"),
    ("num_frames", 10**9, r"'num_frames' = 1000000000 is out of range"),
    ("fps", 10**6, r"'fps' = 1000000 is out of range"),
    ("guidance", "Infinity", r"'guidance' = inf is not a finite number; allowed 0..100"),
    ("guidance", "NaN", r"'guidance' = nan is not a finite number"),
    ("guidance", "1e308", r"'guidance' = 1e\+308 is out of range; allowed 0..100"),
    ("guidance", -3, r"'guidance' = -3 is out of range"),
    ("seed", -1, r"'seed' = -1 is out of range; allowed 0..18446744073709551615"),
    ("seed", 2**70, r"'seed' = \d+ is out of range"),
    ("seeds", list(range(2000)), r"'seeds \(length\)' = 2000 is out of range; allowed 1..1000"),
    ("controls", {"entropy": {"train_tokens": "NaN"}}, r"'controls.entropy.train_tokens' = nan is not a finite"),
    ("controls", {"entropy": {"train_tokens": 1e300}}, r"'controls.entropy.train_tokens' = 1e\+300 is out of "),
    ("controls", {"emphasis": {"layers": [1, "-Infinity"]}}, r"'controls.emphasis.layers\[1\]' = -inf is not"),
])
def test_every_number_is_finite_and_bounded(tmp_path, field, value, message):
    if isinstance(value, str) and field != "controls":
        line = f'{{"id": "j", "prompt": "a", "{field}": {value}}}'  # raw JSON: NaN, Infinity, 1e8, 1e308
    else:
        line = json.dumps({"id": "j", "prompt": "a", field: value}).replace('"NaN"', "NaN").replace(
            '"-Infinity"', "-Infinity")
    jobs = _write(tmp_path / "jobs.jsonl", [line])
    with pytest.raises(JobFileError, match=r"^jobs.jsonl:1 \(job 'j'\): " + message):
        run_batch(jobs, str(tmp_path / "out"), generate=_fake, progress=False)
    assert not (tmp_path / "out").exists()


def test_derived_seeds_and_item_count_are_bounded(tmp_path):
    jobs = _write(tmp_path / "jobs.jsonl", [{"prompt": "a", "seed": 2**64 - 2, "count": 3}])
    with pytest.raises(JobFileError, match="'seed' = 18446744073709551616 is out of range"):
        expand(load_jobs(jobs))
    jobs = _write(tmp_path / "jobs.jsonl", [{"prompt": "a", "count": 600}, {"prompt": "b", "count": 600}])
    with pytest.raises(JobFileError, match="more than 1000 items"):
        expand(load_jobs(jobs, limits={"items": 1000}), limits={"items": 1000})


def test_limits_can_be_overridden(tmp_path):
    assert B.parse_limits("steps=500,guidance=0:30") == {"steps": (1, 500), "guidance": (0, 30)}
    for bad in ("nope=3", "steps", "steps=abc", "steps=5:1"):
        with pytest.raises(ValueError, match="--limits"):
            B.parse_limits(bad)
    jobs = _write(tmp_path / "jobs.jsonl", [{"prompt": "a", "steps": 300}])
    with pytest.raises(JobFileError, match="allowed 1..200"):
        load_jobs(jobs)
    assert load_jobs(jobs, limits="steps=500")[0][0]["steps"] == 300
    assert B.LIMITS["steps"] == (1, 200)  # overrides never change the module defaults


# --- resume by content ------------------------------------------------------------------------------------
def test_edited_job_is_regenerated_and_the_old_file_kept_aside(tmp_path):
    out = tmp_path / "out"
    jobs = _write(tmp_path / "jobs.jsonl", [{"id": "x", "prompt": "a red circle", "seed": 1},
                                           {"id": "y", "prompt": "a blue square", "seed": 1}])
    assert run_batch(jobs, str(out), generate=_fake, progress=False).done == 2
    old_pixels = np.asarray(Image.open(out / "x-1.png"))
    old_hash = read_manifest(str(out))["x-1"]["hash"]
    _write(tmp_path / "jobs.jsonl", [{"id": "x", "prompt": "a green star", "seed": 1},
                                    {"id": "y", "prompt": "a blue square", "seed": 1}])
    summary = run_batch(jobs, str(out), generate=_fake, progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (1, 1, 0)
    assert summary.kept_aside == [("x-1.png", f"x-1~{old_hash}.png", "the job changed since it was generated")]
    assert np.array_equal(np.asarray(Image.open(out / f"x-1~{old_hash}.png")), old_pixels)  # nothing lost
    assert json.loads(Image.open(out / "x-1.png").text["dit_attn"])["prompt"] == "a green star"
    # a third run changes nothing; formatting-only edits (7 vs 7.0, key order) are the same content
    again = run_batch(jobs, str(out), generate=_fake, progress=False)
    assert (again.done, again.skipped, again.kept_aside) == (0, 2, [])
    entries = _strict_json_lines(out / "manifest.jsonl")
    assert [e["status"] for e in entries] == ["ok", "ok", "replaced", "ok"]


def test_equal_content_is_not_regenerated(tmp_path):
    out = tmp_path / "out"
    jobs = _write(tmp_path / "jobs.jsonl", [{"id": "x", "prompt": "a", "guidance": 7, "seed": 1}])
    run_batch(jobs, str(out), generate=_fake, progress=False)
    _write(tmp_path / "jobs.jsonl", [{"seed": 1, "guidance": 7.0, "prompt": "a", "id": "x", "count": 1}])
    assert run_batch(jobs, str(out), generate=_fake, progress=False).skipped == 1


def test_legacy_manifest_entries_are_hashed_from_their_params(tmp_path):
    out = tmp_path / "out"
    jobs = _write(tmp_path / "jobs.jsonl", [{"id": "x", "prompt": "a", "seed": 1}])
    run_batch(jobs, str(out), generate=_fake, progress=False)
    entries = _strict_json_lines(out / "manifest.jsonl")
    for e in entries:
        del e["hash"]  # as written before content hashes
    (out / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert run_batch(jobs, str(out), generate=_fake, progress=False).skipped == 1
    _write(tmp_path / "jobs.jsonl", [{"id": "x", "prompt": "b", "seed": 1}])
    summary = run_batch(jobs, str(out), generate=_fake, progress=False)
    assert summary.done == 1 and len(summary.kept_aside) == 1


def test_a_file_the_manifest_does_not_know_is_kept_aside(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(out / "x-1.png")  # e.g. a user's file with the same name
    jobs = _write(tmp_path / "jobs.jsonl", [{"id": "x", "prompt": "a", "seed": 1}])
    summary = run_batch(jobs, str(out), generate=_fake, progress=False)
    assert summary.done == 1 and summary.kept_aside[0][:2] == ("x-1.png", "x-1~untracked.png")
    assert np.asarray(Image.open(out / "x-1~untracked.png"))[0, 0].tolist() == [1, 2, 3]


# --- manifest ---------------------------------------------------------------------------------------------
def test_torn_and_foreign_manifest_lines_are_skipped_with_a_warning(tmp_path, caplog):
    out = tmp_path / "out"
    jobs = _write(tmp_path / "jobs.jsonl", [{"id": "x", "prompt": "a", "seeds": [1, 2, 3]}])
    run_batch(jobs, str(out), generate=_fake, progress=False)
    manifest = out / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    foreign = ["[1, 2]", "not json at all", '{"id": 3}', '"a string"', "null",
               '{"id": "x-9", "status": "ok", "files": ["../../etc/passwd"]}',
               '{"id": "x-9", "status": "ok", "files": "x-1.png"}']
    manifest.write_bytes(("\n".join([lines[0], *foreign]) + "\n").encode() + b"\xff\xfe not utf-8\n"
                         + (lines[1] + "\n" + lines[2][:25]).encode())  # a torn last line
    os.remove(out / "x-3.png")
    with caplog.at_level(logging.WARNING, logger="dit_attn"):
        done = read_manifest(str(out))
        summary = run_batch(jobs, str(out), generate=_fake, progress=False)
    assert set(done) == {"x-1", "x-2"}
    assert (summary.done, summary.skipped) == (1, 2)
    skipped = [r for r in caplog.records if "skipped a manifest line" in r.getMessage()]
    assert len(skipped) >= len(foreign) + 2
    # our line after the torn one is a line of its own: the next resume sees every item done
    assert set(read_manifest(str(out))) == {"x-1", "x-2", "x-3"}
    assert run_batch(jobs, str(out), generate=_fake, progress=False).skipped == 3


def test_manifest_is_strict_json_even_for_failures(tmp_path):
    out = tmp_path / "out"
    jobs = _write(tmp_path / "jobs.jsonl", [{"id": "x", "prompt": "a", "seeds": [1, 2]}])

    def nan_generate(item):
        if item.seed == 1:
            return "image", np.full((8, 8, 3), np.nan, dtype=np.float32)
        return "video", [np.zeros((8, 8, 3), np.float32), np.full((8, 8, 3), np.inf, np.float32)]

    summary = run_batch(jobs, str(out), generate=nan_generate, progress=False)
    assert (summary.done, summary.failed) == (0, 2)
    assert all("NaN/inf" in reason for _, reason in summary.failures)
    assert os.listdir(out) == ["manifest.jsonl"]  # no file for a non-finite output
    entries = _strict_json_lines(out / "manifest.jsonl")
    assert [e["status"] for e in entries] == ["failed", "failed"]
    assert B._append_manifest(str(out), {"id": "z", "status": "failed", "value": float("nan")}) is None
    assert _strict_json_lines(out / "manifest.jsonl")[-1]["value"] == "nan"


def test_nan_output_of_a_real_pipeline_is_a_failure_not_ok(tmp_path, capsys):
    out = tmp_path / "out"
    jobs = _write(tmp_path / "jobs.jsonl", [{"id": "x", "prompt": "a red circle", "guidance": 1e308, "steps": 2}])
    assert cli_main(["batch", jobs, "--out", str(out), "--quiet", "--limits", "guidance=1e308"]) == 1
    assert "NaN/inf" in capsys.readouterr().err
    assert os.listdir(out) == ["manifest.jsonl"]
    assert _strict_json_lines(out / "manifest.jsonl")[0]["status"] == "failed"
    png = tmp_path / "g.png"
    assert cli_main(["generate", "a red circle", "--steps", "2", "--guidance", "1e308", "--limits",
                     "guidance=1e308", "--out", str(png)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the output has") and err.count("\n") == 1 and not png.exists()


# --- the lock ---------------------------------------------------------------------------------------------
def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _fake_lock(out, pid):
    out.mkdir(exist_ok=True)
    (out / B.LOCK_NAME).write_text(json.dumps({"group": f"other:{pid}", "started": time.time(), "members": [
        {"host": B.socket.gethostname(), "pid": pid, "start": B._proc_start(pid)}]}))


def test_a_second_run_on_the_same_out_exits_with_a_message(tmp_path, capsys):
    out = tmp_path / "out"
    jobs = _write(tmp_path / "jobs.jsonl", [{"id": "x", "prompt": "a", "seed": 1}])
    other = _sleeper()
    try:
        _fake_lock(out, other.pid)
        with pytest.raises(BatchLockedError, match=rf"in use by another dit-attn batch \(pid {other.pid} .*--wait"):
            run_batch(jobs, str(out), generate=_fake, progress=False)
        assert cli_main(["batch", jobs, "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "in use by another dit-attn batch" in err and err.count("\n") == 1
        started = time.monotonic()
        with pytest.raises(BatchLockedError, match="gave up waiting"):
            run_batch(jobs, str(out), generate=_fake, progress=False, wait=0.6)
        assert time.monotonic() - started >= 0.5
        assert os.listdir(out) == [B.LOCK_NAME]  # nothing generated while locked
    finally:
        other.kill()
        other.wait()
    # --wait: the holder is gone (dead pid: a stale lock) -> taken over, the run goes on, the lock is released
    summary = run_batch(jobs, str(out), generate=_fake, progress=False, wait=float("inf"))
    assert summary.done == 1 and not (out / B.LOCK_NAME).exists()


def test_stale_and_garbage_locks_are_taken_over(tmp_path, caplog):
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _fake_lock(out, dead.pid)
    jobs = _write(tmp_path / "jobs.jsonl", [{"id": "x", "prompt": "a", "seed": 1}])
    with caplog.at_level(logging.WARNING, logger="dit_attn"):
        assert run_batch(jobs, str(out), generate=_fake, progress=False).done == 1
    assert any("took over a stale lock" in r.getMessage() for r in caplog.records)
    (out / B.LOCK_NAME).write_text("{torn")
    _write(tmp_path / "jobs.jsonl", [{"id": "x", "prompt": "a", "seed": 2}])
    assert run_batch(jobs, str(out), generate=_fake, progress=False).done == 1
    assert not (out / B.LOCK_NAME).exists()


def test_processes_of_one_launch_share_the_lock(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    first, second = BatchLock(str(out), group="launch:a"), BatchLock(str(out), group="launch:a")
    second.pid = first.pid + 10**7  # a second member (as if another rank)
    first.acquire()
    second.acquire()
    with pytest.raises(BatchLockedError):
        BatchLock(str(out), group="launch:b").acquire()
    first.release()
    assert (out / B.LOCK_NAME).exists()  # still held by the other member
    second.release()
    assert not (out / B.LOCK_NAME).exists()


_HOLDER = """
import sys, time
from PIL import Image
from dit_attn.pipelines.batch import run_batch

def slow(item):
    time.sleep(0.4)
    return "image", Image.new("RGB", (8, 8), (item.seed, 0, 0))

print(run_batch(sys.argv[1], sys.argv[2], generate=slow, progress=False))
"""


def test_two_concurrent_runs_do_not_both_generate(tmp_path):
    out = tmp_path / "out"
    jobs = _write(tmp_path / "jobs.jsonl", [{"id": "x", "prompt": "a", "seeds": list(range(1, 7))}])
    first = subprocess.Popen([sys.executable, "-c", _HOLDER, jobs, str(out)], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "manifest.jsonl").exists():
        time.sleep(0.05)
    with pytest.raises(BatchLockedError):
        run_batch(jobs, str(out), generate=_fake, progress=False)
    summary = run_batch(jobs, str(out), generate=_fake, progress=False, wait=120)  # queues behind the first
    assert first.wait(60) == 0 and "6 generated" in first.stdout.read()
    assert (summary.done, summary.skipped) == (0, 6)
    ok = [e["id"] for e in _strict_json_lines(out / "manifest.jsonl") if e["status"] == "ok"]
    assert sorted(ok) == [f"x-{i}" for i in range(1, 7)]


# --- CLI errors -------------------------------------------------------------------------------------------
def _one_error_line(capsys):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("argv, expected", [
    (["batch", "{tmp}/missing.jsonl"], "jobs file '{tmp}/missing.jsonl' does not exist"),
    (["batch", "{tmp}"], "is a folder"),
    (["generate", "a", "--config", "{tmp}/missing.yaml"], "--config file '{tmp}/missing.yaml' does not exist"),
    (["generate", "a", "--model", "{tmp}/no-such-folder"], "model folder '{tmp}/no-such-folder' does not exist"),
    (["generate", "a", "--model", "./no-such-folder"], "model folder './no-such-folder' does not exist"),
    (["generate", "a", "--model", "tiny:nonsense"], "unknown tiny model 'tiny:nonsense'"),
    (["generate", "a", "--guidance", "nan"], "'guidance' = nan is not a finite number"),
    (["generate", "a", "--steps", "1000000"], "'steps' = 1000000 is out of range"),
    (["generate", "a", "--width", "100000"], "'width' = 100000 is out of range"),
    (["batch", "{tmp}/bad.jsonl", "--out", "{tmp}/out"], "bad.jsonl:1: not valid JSON"),
    (["batch", "{tmp}/bad.jsonl", "--limits", "nope=1"], "--limits 'nope=1'"),
    (["generate"], "the following arguments are required: prompt"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, expected):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a",\n')
    argv = [a.format(tmp=tmp_path) for a in argv]
    try:
        rc = cli_main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    assert rc == 2
    assert expected.format(tmp=tmp_path) in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_offline_hub_id_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    argv = ["generate", "a cat", "--model", "dit-attn-tests/no-such-model", "--out", str(tmp_path / "x.png")]
    assert cli_main(argv) == 2
    err = _one_error_line(capsys)
    assert "could not load model 'dit-attn-tests/no-such-model'" in err and "Traceback" not in err
    with pytest.raises(B.ModelLoadError):
        cli_main(argv + ["--debug"])
    # in a batch the model fails its items (loaded once), one line each; the other jobs still run
    jobs = _write(tmp_path / "jobs.jsonl", [{"id": "hub", "prompt": "a", "model": "dit-attn-tests/no-such-model",
                                            "seeds": [1, 2]}, {"id": "tiny", "prompt": "b", "steps": 1}])
    assert cli_main(["batch", jobs, "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("  failed hub-") and "could not load model" in line for line in err)
    assert sorted(os.listdir(tmp_path / "out")) == ["manifest.jsonl", "tiny-2.png"]


def test_lock_message_from_the_command_line_and_bad_out(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    jobs = _write(tmp_path / "jobs.jsonl", [{"prompt": "a"}])
    assert cli_main(["batch", jobs, "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in _one_error_line(capsys)


# --- attach argument validation ---------------------------------------------------------------------------
def _image(pipe):
    from dit_attn.testing import tiny_call_kwargs

    return np.asarray(pipe(**tiny_call_kwargs("sd3", steps=2)).images)


@pytest.mark.parametrize("bad, message", [
    (None, r"control 1 is None \(NoneType\); expected a dit_attn.Control instance, e.g. one of: .*EntropyScale"),
    ("entropy", r"control 1 is 'entropy' \(str\).*controls_from_config"),
    (dit_attn.SoftPAG, r"control 1 is the class SoftPAG, not a control: pass an instance: SoftPAG\(...\)"),
    (dit_attn.PassThrough, r"pass an instance: PassThrough\(...\)"),
    ([dit_attn.PassThrough()], r"pass controls as separate arguments"),
    (3, r"control 1 is 3 \(int\)"),
])
def test_attach_rejects_non_controls_and_leaves_the_pipeline_untouched(bad, message):
    from dit_attn.testing import tiny_pipeline

    pipe = tiny_pipeline("sd3")
    stock = _image(pipe)
    processors = dict(pipe.transformer.attn_processors)
    forward = pipe.transformer.forward
    with pytest.raises(TypeError, match=message):
        dit_attn.attach(pipe, bad)
    with pytest.raises(TypeError, match="control 2"):
        dit_attn.attach(pipe, dit_attn.PassThrough(), bad)
    assert all(pipe.transformer.attn_processors[n] is p for n, p in processors.items())
    assert not hasattr(pipe.transformer, "_diffusers_hook") or pipe.transformer._diffusers_hook.get_hook(
        HOOK_NAME) is None
    assert pipe.transformer.forward == forward
    assert np.array_equal(_image(pipe), stock)  # a later plain call equals stock
    with dit_attn.attach(pipe, dit_attn.PassThrough()):  # and a later attach works
        assert torch.allclose(torch.from_numpy(_image(pipe)), torch.from_numpy(stock), atol=1e-6)
    assert np.array_equal(_image(pipe), stock)
