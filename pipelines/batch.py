"""Scripted batch jobs: deterministic, resumable, data-parallel over processes with accelerate.

A jobs file is JSONL (one JSON object per line; a line ``{"defaults": {...}}`` fills missing fields of the lines
after it) or YAML (``{defaults: {...}, jobs: [...]}`` or a plain list). Each job names:

``prompt`` (emphasis syntax allowed), ``negative_prompt``, ``seed`` / ``seeds`` / ``count``, ``width``,
``height``, ``steps``, ``guidance``, ``num_frames``, ``fps``, ``model`` (``"tiny:<family>"``, a local folder or
a hub id), ``id`` and ``controls`` (``{"entropy": {"train_tokens": 4096}, "emphasis": {}, ...}``).

Every job expands into items, one per seed: an explicit seed, else ``base_seed + item index``. Item ids are
``<job id>-<seed>`` where the job id is given or ``sha1`` of the canonical JSON of the output-affecting fields.
Outputs are written to a temporary file and moved into place (``os.replace``), and only then is a line appended
to ``manifest.jsonl``; on start, items whose manifest line *and* file exist are skipped, so a killed job resumes
with nothing lost or duplicated. A failing item is recorded with its reason and never stops the rest.

With ``accelerate launch -m dit_attn.cli batch jobs.jsonl`` each process takes items ``i % num_processes ==
process_index``; seeds do not depend on the process count, so the files are the same as with one process.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

JOB_FIELDS = {
    "id", "prompt", "negative_prompt", "seed", "seeds", "count", "width", "height", "steps", "guidance",
    "num_frames", "fps", "model", "controls",
}
OUTPUT_FIELDS = ("model", "prompt", "negative_prompt", "width", "height", "steps", "guidance", "num_frames",
                 "controls")
DEFAULTS = {"model": "tiny:sd3", "steps": 4, "guidance": None, "negative_prompt": None, "width": None,
            "height": None, "num_frames": None, "fps": 8, "controls": {}, "count": 1, "base_seed": 0}


class JobFileError(ValueError):
    """A malformed jobs file; the message names the file, the line (or job index) and what is allowed."""


@dataclass
class Item:
    """One output to generate."""

    id: str
    job_index: int
    seed: int
    params: dict[str, Any]
    where: str  # "jobs.jsonl:3" — for messages


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list = field(default_factory=list)

    def __str__(self) -> str:
        per = self.seconds / self.done if self.done else 0.0
        return (f"{self.done} generated, {self.skipped} already done, {self.failed} failed; "
                f"{self.seconds:.1f} s ({per:.2f} s per item)")


# --- reading jobs -------------------------------------------------------------------------------------------
def _check_job(job: Any, where: str) -> dict:
    if not isinstance(job, dict):
        raise JobFileError(f"{where}: a job must be an object with at least a 'prompt'; got {type(job).__name__}")
    unknown = set(job) - JOB_FIELDS
    if unknown:
        raise JobFileError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(JOB_FIELDS)}")
    if not isinstance(job.get("prompt"), str) or not job["prompt"].strip():
        raise JobFileError(f"{where}: 'prompt' must be a non-empty string")
    for name in ("steps", "width", "height", "num_frames", "count", "fps"):
        value = job.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise JobFileError(f"{where}: '{name}' must be a positive integer; got {value!r}")
    if job.get("seed") is not None and (not isinstance(job["seed"], int) or isinstance(job["seed"], bool)):
        raise JobFileError(f"{where}: 'seed' must be an integer; got {job['seed']!r}")
    if job.get("seeds") is not None and (not isinstance(job["seeds"], list)
                                         or not all(isinstance(s, int) for s in job["seeds"])):
        raise JobFileError(f"{where}: 'seeds' must be a list of integers")
    if job.get("guidance") is not None and not isinstance(job["guidance"], (int, float)):
        raise JobFileError(f"{where}: 'guidance' must be a number; got {job['guidance']!r}")
    if not isinstance(job.get("controls", {}), dict):
        raise JobFileError(f"{where}: 'controls' must be an object mapping control names to their fields")
    _check_prompt_syntax(job["prompt"], where)
    return job


def _check_prompt_syntax(prompt: str, where: str) -> None:
    try:
        from dit_attn.prompt import PromptSyntaxError, parse_emphasis
    except ImportError:  # the emphasis parser is not part of this build yet
        return
    try:
        parse_emphasis(prompt)
    except PromptSyntaxError as e:
        raise JobFileError(f"{where}: prompt: {e}") from None


def load_jobs(path: str) -> list[tuple[dict, str]]:
    """Read a JSONL or YAML jobs file into ``[(job with defaults applied, "file:line")]``."""
    name = os.path.basename(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    jobs: list[tuple[dict, str]] = []
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise JobFileError(f"{name}: not valid YAML: {e}") from None
        defaults = {}
        if isinstance(data, dict):
            defaults = data.get("defaults") or {}
            data = data.get("jobs")
        if not isinstance(data, list):
            raise JobFileError(f"{name}: expected a list of jobs or {{defaults: ..., jobs: [...]}}")
        for i, job in enumerate(data):
            where = f"{name}: job {i + 1}"
            if isinstance(job, dict):
                job = {**defaults, **job}
            jobs.append((_check_job(job, where), where))
        return jobs
    defaults: dict = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{name}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise JobFileError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if isinstance(obj, dict) and set(obj) == {"defaults"}:
            if not isinstance(obj["defaults"], dict):
                raise JobFileError(f"{where}: 'defaults' must be an object")
            defaults = obj["defaults"]
            continue
        if isinstance(obj, dict):
            obj = {**defaults, **obj}
        jobs.append((_check_job(obj, where), where))
    if not jobs:
        raise JobFileError(f"{name}: no jobs found")
    return jobs


def _canonical(params: dict) -> str:
    return json.dumps({k: params.get(k) for k in OUTPUT_FIELDS}, sort_keys=True, separators=(",", ":"))


def expand(jobs: Iterable[tuple[dict, str]], base_seed: int = 0) -> list[Item]:
    """One :class:`Item` per (job, seed), with deterministic seeds and stable ids."""
    items = []
    for index, (job, where) in enumerate(jobs):
        params = {**{k: v for k, v in DEFAULTS.items() if k != "base_seed"}, **job}
        if job.get("seeds") is not None:
            seeds = list(job["seeds"])
        elif job.get("seed") is not None:
            seeds = [job["seed"] + i for i in range(params["count"])]
        else:
            seeds = [base_seed + len(items) + i for i in range(params["count"])]
        job_id = job.get("id") or hashlib.sha1(_canonical(params).encode()).hexdigest()[:12]
        for seed in seeds:
            items.append(Item(f"{job_id}-{seed}", index, seed, params, where))
    ids = [item.id for item in items]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise JobFileError(f"duplicate item ids {dupes[:5]}: give the jobs distinct ids or seeds")
    return items


# --- manifest -----------------------------------------------------------------------------------------------
def read_manifest(out_dir: str) -> dict[str, dict]:
    """Completed items whose file exists; torn or foreign lines (a crash mid-write) are ignored."""
    done = {}
    path = os.path.join(out_dir, "manifest.jsonl")
    if not os.path.exists(path):
        return done
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("status") == "ok" and all(os.path.exists(os.path.join(out_dir, p))
                                                   for p in entry.get("files", [])):
                done[entry["id"]] = entry
    return done


def _append_manifest(out_dir: str, entry: dict) -> None:
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(os.path.join(out_dir, "manifest.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write per line: appends from several processes do not interleave
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then move the file into place, so ``path`` is never half-written."""
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# --- outputs ------------------------------------------------------------------------------------------------
def a1111_parameters(item: Item) -> str:
    """An A1111-style ``parameters`` text (prompt, negative prompt, then a settings line)."""
    p = item.params
    settings = [f"Steps: {p['steps']}", f"Seed: {item.seed}"]
    if p.get("guidance") is not None:
        settings.append(f"CFG scale: {p['guidance']}")
    if p.get("width") and p.get("height"):
        settings.append(f"Size: {p['width']}x{p['height']}")
    settings.append(f"Model: {p['model']}")
    text = p["prompt"]
    if p.get("negative_prompt"):
        text += f"\nNegative prompt: {p['negative_prompt']}"
    return text + "\n" + ", ".join(settings)


def save_image(image, path: str, item: Item) -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(item))
    info.add_text("dit_attn", json.dumps({"id": item.id, "seed": item.seed, **item.params}, sort_keys=True))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def save_video(frames, path: str, fps: int) -> list[str]:
    """MP4 (when imageio-ffmpeg is installed) and always a GIF preview. Returns the file names written."""
    from PIL import Image

    pil = [f if isinstance(f, Image.Image) else Image.fromarray(_to_uint8(f)) for f in frames]
    written = []
    gif = os.path.splitext(path)[0] + ".gif"
    atomic_write(gif, lambda tmp: pil[0].save(tmp, format="GIF", save_all=True, append_images=pil[1:],
                                              duration=int(1000 / fps), loop=0))
    written.append(os.path.basename(gif))
    try:
        import imageio_ffmpeg  # noqa: F401
        from diffusers.utils import export_to_video
    except ImportError:
        return written
    atomic_write(path, lambda tmp: export_to_video(pil, tmp, fps=fps))
    written.insert(0, os.path.basename(path))
    return written


def _to_uint8(array):
    import numpy as np

    a = np.asarray(array)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    return a


# --- running ------------------------------------------------------------------------------------------------
class Generator:
    """Loads pipelines once per model and generates one item (image or video) with its controls."""

    def __init__(self, device: str | None = None):
        self.device = device
        self._pipes: dict[str, Any] = {}

    def pipeline(self, model: str):
        if model not in self._pipes:
            from .loading import load_pipeline

            pipe = load_pipeline(model)
            if self.device:
                pipe.to(self.device)
            pipe.set_progress_bar_config(disable=True)
            self._pipes[model] = pipe
        return self._pipes[model]

    def __call__(self, item: Item):
        import torch

        import dit_attn

        from .loading import call_kwargs

        pipe = self.pipeline(item.params["model"])
        kwargs = call_kwargs(pipe, item.params, torch.Generator("cpu").manual_seed(item.seed))
        controls = dit_attn.controls_from_config(item.params.get("controls") or {})
        with dit_attn.attach(pipe, *controls):
            result = pipe(**kwargs)
        if hasattr(result, "frames"):
            return "video", result.frames[0]
        return "image", result.images[0]


def run_batch(jobs_path: str, out_dir: str, *, base_seed: int = 0, process_index: int = 0, num_processes: int = 1,
              generate: Callable[[Item], tuple[str, Any]] | None = None, progress: bool = True) -> Summary:
    """Run (or resume) the jobs of ``jobs_path`` into ``out_dir``; this process's share only."""
    from tqdm.auto import tqdm

    items = expand(load_jobs(jobs_path), base_seed)
    os.makedirs(out_dir, exist_ok=True)
    if process_index == 0:  # temporary files of a killed run; their items are not in the manifest and get redone
        for name in os.listdir(out_dir):
            if name.startswith(".tmp-"):
                os.remove(os.path.join(out_dir, name))
    done = read_manifest(out_dir)
    mine = [it for i, it in enumerate(items) if i % num_processes == process_index]
    todo = [it for it in mine if it.id not in done]
    summary = Summary(skipped=len(mine) - len(todo))
    generate = generate or Generator()
    start = time.perf_counter()
    for item in tqdm(todo, desc=f"dit-attn batch [{process_index + 1}/{num_processes}]", disable=not progress):
        try:
            kind, media = generate(item)
            if kind == "video":
                files = save_video(media, os.path.join(out_dir, f"{item.id}.mp4"), item.params.get("fps") or 8)
            else:
                save_image(media, os.path.join(out_dir, f"{item.id}.png"), item)
                files = [f"{item.id}.png"]
            _append_manifest(out_dir, {"id": item.id, "status": "ok", "files": files, "seed": item.seed,
                                       "job": item.where, "params": item.params})
            summary.done += 1
        except Exception as e:  # one failing item never stops the rest
            reason = f"{type(e).__name__}: {e}"
            _append_manifest(out_dir, {"id": item.id, "status": "failed", "error": reason, "job": item.where,
                                       "trace": traceback.format_exc(limit=5)})
            summary.failed += 1
            summary.failures.append((item.id, reason))
    summary.seconds = time.perf_counter() - start
    return summary
