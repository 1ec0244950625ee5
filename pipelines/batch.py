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

Safety (hostile or careless job files lose nothing and write nothing outside ``--out``):

* ``id`` must be a plain file name: no ``..``, path separators, absolute paths, control characters, ``~``, a
  leading ``.``, trailing dots/spaces or Windows device names (``CON``, ``NUL``, ``COM1``...); two jobs whose
  ids name the same file (``x`` and ``X``) are an error before anything runs.
* Every number is finite and inside :data:`LIMITS` (override with ``--limits steps=500,width=8192``).
* Resume is keyed by the item's content (a hash of the normalised parameters and seed): an edited job is
  regenerated and its old file kept aside as ``<item id>~<old hash>.png`` (reported, never deleted).
* ``--out`` is locked (``.dit_attn.lock``) for the run: a second run on it stops with a message (or waits with
  ``--wait``); a lock left by a dead process is taken over.
* Torn or foreign ``manifest.jsonl`` lines are skipped with a warning; only strict JSON is written.
* An output with NaN/inf values is a failure, never ``ok``, and no file is written for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import tempfile
import time
import traceback
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

logger = logging.getLogger("dit_attn")

JOB_FIELDS = {
    "id", "prompt", "negative_prompt", "seed", "seeds", "count", "width", "height", "steps", "guidance",
    "num_frames", "fps", "model", "controls",
}
OUTPUT_FIELDS = ("model", "prompt", "negative_prompt", "width", "height", "steps", "guidance", "num_frames",
                 "controls")
# What the content hash covers (besides the seed): everything that changes the written file.
CONTENT_FIELDS = OUTPUT_FIELDS + ("fps",)
# Settings left at None take the model's own defaults (dit_attn.pipelines.loading.model_defaults).
DEFAULTS = {"model": "shapes:t2i", "steps": None, "guidance": None, "negative_prompt": None, "width": None,
            "height": None, "num_frames": None, "fps": 8, "controls": {}, "count": 1, "base_seed": 0}

#: Allowed range ``(min, max)`` of every number a job (or ``dit-attn generate``) may give. ``count`` also bounds
#: the length of ``seeds``; ``controls`` bounds the absolute value of every number inside ``controls``;
#: ``items`` bounds the total number of outputs of one jobs file; ``prompt_chars`` the length of a prompt.
#: Override with ``--limits steps=500,width=8192`` (a maximum) or ``--limits guidance=0:30`` (min:max).
LIMITS: dict[str, tuple[float, float]] = {
    "steps": (1, 200),
    "count": (1, 1000),
    "width": (8, 4096),
    "height": (8, 4096),
    "num_frames": (1, 1024),
    "fps": (1, 240),
    "guidance": (0.0, 100.0),
    "seed": (0, 2**64 - 1),  # torch.Generator.manual_seed's range
    "controls": (-1e6, 1e6),
    "items": (1, 100_000),
    "prompt_chars": (1, 20_000),
}
_INT_FIELDS = ("steps", "width", "height", "num_frames", "count", "fps")

LOCK_NAME = ".dit_attn.lock"
MANIFEST = "manifest.jsonl"
MAX_ID_CHARS = 100
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
                    *(f"COM{i}" for i in "123456789¹²³"), *(f"LPT{i}" for i in "123456789¹²³")}
_FORBIDDEN_ID_CHARS = set('/\\:*?"<>|~')  # separators, Windows-illegal characters, and '~' (kept-aside files)


class JobFileError(ValueError):
    """A malformed jobs file; the message names the file, the line (or job index) and what is allowed."""


class BatchLockedError(RuntimeError):
    """``--out`` is in use by another running batch."""


class NonFiniteOutputError(RuntimeError):
    """The pipeline produced NaN or inf values; nothing is written for such an output."""


class ModelLoadError(ValueError):
    """A model could not be loaded (a missing folder, an unknown or unreachable hub id); the message is one line."""


def one_line(error: BaseException | str, limit: int = 500) -> str:
    """``error`` as a single line of text (for ``error: ...`` messages and the manifest)."""
    text = error if isinstance(error, str) else (str(error) or type(error).__name__)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Item:
    """One output to generate."""

    id: str
    job_index: int
    seed: int
    params: dict[str, Any]
    where: str  # "jobs.jsonl:3" — for messages

    @property
    def hash(self) -> str:
        """Hash of what the output depends on (normalised parameters and seed): resume skips only equal ones."""
        return content_hash(self.params, self.seed)


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list = field(default_factory=list)
    kept_aside: list = field(default_factory=list)  # (old file, new name, why)
    warnings: list = field(default_factory=list)

    def __str__(self) -> str:
        per = self.seconds / self.done if self.done else 0.0
        aside = f", {len(self.kept_aside)} old file(s) kept aside" if self.kept_aside else ""
        return (f"{self.done} generated, {self.skipped} already done, {self.failed} failed{aside}; "
                f"{self.seconds:.1f} s ({per:.2f} s per item)")


# --- limits -------------------------------------------------------------------------------------------------
def parse_limits(text: str | None) -> dict[str, tuple[float, float]]:
    """``"steps=500,width=8192,guidance=0:30"`` → overrides of :data:`LIMITS` (``name=max`` or ``name=min:max``)."""
    out: dict[str, tuple[float, float]] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or name not in LIMITS:
            raise ValueError(f"--limits {part!r}: expected name=max or name=min:max with name one of "
                             f"{', '.join(sorted(LIMITS))}")
        lo_text, colon, hi_text = value.partition(":")
        try:
            lo = _number(lo_text) if colon else LIMITS[name][0]
            hi = _number(hi_text if colon else lo_text)
        except ValueError:
            raise ValueError(f"--limits {part!r}: {value!r} is not a number (or min:max)") from None
        if math.isnan(lo) or math.isnan(hi) or lo > hi:
            raise ValueError(f"--limits {part!r}: need min <= max")
        out[name] = (lo, hi)
    return out


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        value = float(text)
        return int(value) if value.is_integer() and abs(value) < 2**53 else value


def resolve_limits(limits: dict | str | None) -> dict[str, tuple[float, float]]:
    """:data:`LIMITS` with ``limits`` (a dict of ``name: max`` / ``name: (min, max)``, or a ``--limits`` string)."""
    if isinstance(limits, str):
        limits = parse_limits(limits)
    merged = dict(LIMITS)
    for name, value in (limits or {}).items():
        if name not in LIMITS:
            raise ValueError(f"unknown limit {name!r}; known: {', '.join(sorted(LIMITS))}")
        merged[name] = tuple(value) if isinstance(value, (tuple, list)) else (LIMITS[name][0], value)
    return merged


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _check_range(value, name: str, limits: dict, where: str, field_name: str | None = None) -> None:
    lo, hi = limits[name]
    label = field_name or name
    if isinstance(value, float) and not math.isfinite(value):
        raise JobFileError(f"{where}: '{label}' = {value!r} is not a finite number; allowed {_fmt(lo)}..{_fmt(hi)}")
    if not lo <= value <= hi:
        raise JobFileError(f"{where}: '{label}' = {_fmt(value)} is out of range; allowed {_fmt(lo)}..{_fmt(hi)} "
                           f"(change the limit with --limits {name}=...)")


def _check_numbers(value, path: str, limits: dict, where: str) -> None:
    """Every number inside ``value`` (control fields, nested lists/objects) is finite and within ``controls``."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (int, float)):
        _check_range(value, "controls", limits, where, path)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(v, f"{path}.{k}", limits, where)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_numbers(v, f"{path}[{i}]", limits, where)


# --- ids ----------------------------------------------------------------------------------------------------
def check_id(job_id: Any, where: str) -> str:
    """``job_id`` if it is a safe plain file name, else a :class:`JobFileError` saying what is allowed."""
    allowed = (f"allowed: a plain file name of at most {MAX_ID_CHARS} characters (letters, digits, '-', '_', "
               f"'.', spaces...) without path separators, '..', a leading '.', control characters, "
               f"{''.join(sorted(_FORBIDDEN_ID_CHARS))}, trailing dots/spaces or Windows device names")
    if not isinstance(job_id, str):
        raise JobFileError(f"{where}: 'id' must be a string (e.g. \"id\": \"{job_id}\"); got {job_id!r}")
    problem = None
    stem = job_id.split(".")[0].strip().upper()
    if not job_id.strip():
        problem = "is empty"
    elif set(job_id) <= {"."}:
        problem = "is only dots"
    elif os.path.isabs(job_id) or job_id.startswith(("/", "\\")) or (len(job_id) > 1 and job_id[1] == ":"):
        problem = "is an absolute path"
    elif ".." in job_id:
        problem = "contains '..'"
    elif any(c in _FORBIDDEN_ID_CHARS for c in job_id) or (os.altsep and os.altsep in job_id):
        bad = sorted({c for c in job_id if c in _FORBIDDEN_ID_CHARS})
        problem = f"contains {' '.join(repr(c) for c in bad)}"
    elif any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in job_id):
        problem = "contains control characters"
    elif job_id.startswith("."):
        problem = "starts with '.' (hidden files and the batch's own temporary files start with '.')"
    elif job_id[-1] in ". " or job_id[0] == " ":
        problem = "starts or ends with a space or ends with '.'"
    elif stem in _WINDOWS_DEVICES:
        problem = f"is a reserved device name ({stem})"
    elif len(job_id) > MAX_ID_CHARS or len(job_id.encode("utf-8")) > 2 * MAX_ID_CHARS:
        problem = f"is longer than {MAX_ID_CHARS} characters"
    if problem:
        raise JobFileError(f"{where}: 'id' {job_id!r} {problem}; {allowed}")
    return job_id


def file_key(name: str) -> str:
    """How file systems compare names: case-insensitively (macOS, Windows) and after Unicode normalisation."""
    return unicodedata.normalize("NFC", name).casefold()


# --- reading jobs -------------------------------------------------------------------------------------------
def _check_job(job: Any, where: str, limits: dict | None = None) -> dict:
    limits = limits or LIMITS
    if not isinstance(job, dict):
        raise JobFileError(f"{where}: a job must be an object with at least a 'prompt'; got {type(job).__name__}")
    if "id" in job:
        where = f"{where} (job {job['id']!r})"
    unknown = set(job) - JOB_FIELDS
    if unknown:
        raise JobFileError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(JOB_FIELDS)}")
    if "id" in job:
        check_id(job["id"], where)
    if not isinstance(job.get("prompt"), str) or not job["prompt"].strip():
        raise JobFileError(f"{where}: 'prompt' must be a non-empty string")
    _check_range(len(job["prompt"]), "prompt_chars", limits, where, "prompt (characters)")
    if job.get("negative_prompt") is not None:
        if not isinstance(job["negative_prompt"], str):
            raise JobFileError(f"{where}: 'negative_prompt' must be a string")
        _check_range(len(job["negative_prompt"]), "prompt_chars", limits, where, "negative_prompt (characters)")
    for name in _INT_FIELDS:
        value = job.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise JobFileError(f"{where}: '{name}' must be a positive integer; got {value!r}")
        _check_range(value, name, limits, where)
    seed = job.get("seed")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise JobFileError(f"{where}: 'seed' must be an integer; got {seed!r}")
        _check_range(seed, "seed", limits, where)
    if job.get("seeds") is not None:
        seeds = job["seeds"]
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                for s in seeds):
            raise JobFileError(f"{where}: 'seeds' must be a non-empty list of integers")
        _check_range(len(seeds), "count", limits, where, "seeds (length)")
        for s in seeds:
            _check_range(s, "seed", limits, where, "seeds")
        if len(set(seeds)) != len(seeds):
            raise JobFileError(f"{where}: 'seeds' repeats a seed: {sorted({s for s in seeds if seeds.count(s) > 1})}")
    guidance = job.get("guidance")
    if guidance is not None:
        if not isinstance(guidance, (int, float)) or isinstance(guidance, bool):
            raise JobFileError(f"{where}: 'guidance' must be a number; got {guidance!r}")
        _check_range(guidance, "guidance", limits, where)
    model = job.get("model")
    if model is not None:
        _check_model(model, where)
    if not isinstance(job.get("controls", {}), dict):
        raise JobFileError(f"{where}: 'controls' must be an object mapping control names to their fields")
    _check_numbers(job.get("controls") or {}, "controls", limits, where)
    _check_prompt_syntax(job["prompt"], where)
    return job


def _check_model(model: Any, where: str) -> None:
    if not isinstance(model, str) or not model.strip():
        raise JobFileError(f"{where}: 'model' must be 'tiny:<family>', 'shapes:<kind>', a local folder or a hub id; "
                           f"got {model!r}")
    if looks_like_path(model) and not os.path.isdir(os.path.expanduser(model)):
        raise JobFileError(f"{where}: model folder {model!r} does not exist")


def looks_like_path(model: str) -> bool:
    """A local folder rather than a hub id (``owner/name``) or a ``tiny:``/``shapes:`` name."""
    return (model.startswith((".", "/", "~", "\\")) or os.path.isabs(model) or model.count("/") > 1
            or "\\" in model or os.path.isdir(model))


def _check_prompt_syntax(prompt: str, where: str) -> None:
    from dit_attn.prompt import PromptSyntaxError, parse_emphasis

    try:
        parse_emphasis(prompt)
    except PromptSyntaxError as e:
        raise JobFileError(f"{where}: prompt: {e}") from None


def check_params(params: dict, where: str = "command line", limits: dict | str | None = None) -> dict:
    """Validate one job's parameters (``None`` fields are left out) as a jobs file line would be."""
    return _check_job({k: v for k, v in params.items() if v is not None or k == "prompt"}, where,
                      resolve_limits(limits))


def load_jobs(path: str, limits: dict | str | None = None) -> list[tuple[dict, str]]:
    """Read a JSONL or YAML jobs file into ``[(job with defaults applied, "file:line")]``."""
    limits = resolve_limits(limits)
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise JobFileError(f"jobs file {path!r} does not exist") from None
    except IsADirectoryError:
        raise JobFileError(f"jobs file {path!r} is a folder; expected a .jsonl or .yaml file") from None
    except UnicodeDecodeError as e:
        raise JobFileError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise JobFileError(f"jobs file {path!r}: {e.strerror or e}") from None
    jobs: list[tuple[dict, str]] = []
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise JobFileError(f"{name}: not valid YAML: {one_line(e)}") from None
        defaults = {}
        if isinstance(data, dict):
            defaults = data.get("defaults") or {}
            if not isinstance(defaults, dict):
                raise JobFileError(f"{name}: 'defaults' must be a mapping")
            data = data.get("jobs")
        if not isinstance(data, list):
            raise JobFileError(f"{name}: expected a list of jobs or {{defaults: ..., jobs: [...]}}")
        for i, job in enumerate(data):
            where = f"{name}: job {i + 1}"
            if isinstance(job, dict):
                job = {**defaults, **job}
            jobs.append((_check_job(job, where, limits), where))
        if not jobs:
            raise JobFileError(f"{name}: no jobs found")
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
        except RecursionError:
            raise JobFileError(f"{where}: not valid JSON (nested too deeply)") from None
        if isinstance(obj, dict) and set(obj) == {"defaults"}:
            if not isinstance(obj["defaults"], dict):
                raise JobFileError(f"{where}: 'defaults' must be an object")
            defaults = obj["defaults"]
            continue
        if isinstance(obj, dict):
            obj = {**defaults, **obj}
        jobs.append((_check_job(obj, where, limits), where))
    if not jobs:
        raise JobFileError(f"{name}: no jobs found")
    return jobs


def _canonical(params: dict) -> str:
    return json.dumps({k: params.get(k) for k in OUTPUT_FIELDS}, sort_keys=True, separators=(",", ":"))


def _normalise(value):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 7 and 7.0 are the same guidance
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def content_hash(params: dict, seed: int) -> str:
    """12 hex digits of sha1 over the normalised output-affecting parameters and the seed."""
    data = {k: _normalise(params.get(k, DEFAULTS.get(k))) for k in CONTENT_FIELDS}
    data["seed"] = seed
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def expand(jobs: Iterable[tuple[dict, str]], base_seed: int = 0, limits: dict | str | None = None) -> list[Item]:
    """One :class:`Item` per (job, seed), with deterministic seeds and stable, file-safe ids.

    Raises :class:`JobFileError` before anything runs when two jobs' ids (or two items) name the same file, a
    derived seed leaves the allowed range, or there are more items than ``limits["items"]``."""
    limits = resolve_limits(limits)
    items: list[Item] = []
    explicit: dict[str, tuple[str, str]] = {}  # file key of an explicit job id -> (id, where)
    for index, (job, where) in enumerate(jobs):
        params = {**{k: v for k, v in DEFAULTS.items() if k != "base_seed"}, **job}
        if job.get("seeds") is not None:
            seeds = list(job["seeds"])
        elif job.get("seed") is not None:
            seeds = [job["seed"] + i for i in range(params["count"])]
        else:
            seeds = [base_seed + len(items) + i for i in range(params["count"])]
        if job.get("id") is not None:
            job_id = check_id(job["id"], where)
            key = file_key(job_id)
            if key in explicit:
                other_id, other_where = explicit[key]
                raise JobFileError(f"{where}: id {job_id!r} names the same files as id {other_id!r} of {other_where} "
                                   f"(ids are compared as file names: case-insensitively); give each job its own id")
            explicit[key] = (job_id, where)
            where = f"{where} (job {job_id!r})"
        else:
            job_id = hashlib.sha1(_canonical(params).encode()).hexdigest()[:12]
        for seed in seeds:
            _check_range(seed, "seed", limits, where)
            items.append(Item(f"{job_id}-{seed}", index, seed, params, where))
        if len(items) > limits["items"][1]:
            raise JobFileError(f"{where}: the jobs expand into more than {limits['items'][1]} items "
                               f"(change the limit with --limits items=...)")
    by_key: dict[str, Item] = {}
    dupes = []
    for item in items:
        other = by_key.setdefault(file_key(item.id), item)
        if other is not item:
            dupes.append(f"{item.id!r} ({other.where} and {item.where})")
    if dupes:
        raise JobFileError(f"duplicate item ids {', '.join(dupes[:5])}: give the jobs distinct ids or seeds")
    return items


# --- manifest -----------------------------------------------------------------------------------------------
def _safe_name(name: Any) -> bool:
    return (isinstance(name, str) and bool(name) and name not in (".", "..") and "/" not in name
            and "\\" not in name and "\0" not in name and not os.path.isabs(name))


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not an object"
    if not isinstance(entry.get("id"), str) or not entry["id"]:
        return "no 'id' string"
    if entry.get("status") == "ok":
        files = entry.get("files")
        if not isinstance(files, list) or not files or not all(_safe_name(f) for f in files):
            return "'files' is not a list of plain file names"
        if entry.get("seed") is not None and (not isinstance(entry["seed"], int) or isinstance(entry["seed"], bool)):
            return "'seed' is not an integer"
        if entry.get("params") is not None and not isinstance(entry["params"], dict):
            return "'params' is not an object"
    return None


def read_manifest(out_dir: str, warnings: list | None = None) -> dict[str, dict]:
    """Completed items (``id -> entry``) whose files exist; the last ``ok`` line of an id wins.

    Torn lines (a crash mid-write), lines that are not JSON and JSON lines that are not our entries are skipped
    with a warning on the ``dit_attn`` logger (also appended to ``warnings``); a resume never fails on them."""
    done: dict[str, dict] = {}
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        return done
    with open(path, "rb") as f:
        raw = f.read()
    skipped = 0
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        problem = None
        try:
            entry = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            entry, problem = None, "not valid JSON (a torn write or a foreign line)"
        else:
            problem = _entry_problem(entry)
        if problem:
            message = (f"{path}:{lineno}: skipped a manifest line: {problem}: "
                       f"{one_line(line.decode('utf-8', 'replace'), 80)}")
            skipped += 1
            if skipped <= 10:
                logger.warning(message)
            if warnings is not None:
                warnings.append(message)
            continue
        if entry.get("status") == "ok":
            if all(os.path.isfile(os.path.join(out_dir, p)) for p in entry["files"]):
                done[entry["id"]] = entry
            else:
                done.pop(entry["id"], None)
        elif entry.get("status") == "replaced":
            done.pop(entry["id"], None)
    if skipped > 10:
        logger.warning(f"{path}: skipped {skipped} manifest lines in all ({skipped - 10} not shown)")
    return done


def _entry_hash(entry: dict) -> str | None:
    """The content hash of a manifest entry (recomputed from its params and seed for entries written before
    hashes were recorded); ``None`` when it cannot be known."""
    if isinstance(entry.get("hash"), str):
        return entry["hash"]
    if isinstance(entry.get("params"), dict) and isinstance(entry.get("seed"), int):
        try:
            return content_hash(entry["params"], entry["seed"])
        except (TypeError, ValueError):
            return None
    return None


def _append_manifest(out_dir: str, entry: dict) -> None:
    try:
        text = json.dumps(entry, sort_keys=True, allow_nan=False)
    except ValueError:  # a NaN/inf slipped into the entry: write it as text, never as invalid JSON
        text = json.dumps(_jsonable(entry), sort_keys=True, allow_nan=False)
    line = (text + "\n").encode()
    path = os.path.join(out_dir, MANIFEST)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            os.lseek(fd, size - 1, os.SEEK_SET)
        if size and os.read(fd, 1) != b"\n":
            line = b"\n" + line  # a torn last line: end it so ours stays a line of its own
        os.write(fd, line)  # one write per line: appends from several processes do not interleave
        os.fsync(fd)
    finally:
        os.close(fd)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


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


# --- the lock on --out --------------------------------------------------------------------------------------
def _proc_start(pid: int) -> str | None:
    """The start time of ``pid`` (Linux), to tell a live process from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except (OSError, OverflowError, ValueError):
        return False
    return start is None or _proc_start(pid) in (None, start)


def launch_group() -> str | None:
    """The lock group shared by the processes of one ``accelerate launch``/``torchrun`` (``None`` otherwise)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE")) == os.environ.get("WORLD_SIZE"):
        return f"launch:{socket.gethostname()}:{os.getppid()}"  # one machine: the launcher is the common parent
    return (f"launch:{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}:"
            f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}")


class BatchLock:
    """``<out>/.dit_attn.lock``: one batch run per folder.

    The file records the run's group and its member processes (host, pid, start time). Processes of the same
    ``accelerate launch`` share it (same ``group``); the last one to leave removes it. A lock whose members are all
    dead processes of this host is stale and taken over. ``wait``: seconds to wait for a live lock
    (``float("inf")``: for ever; 0: fail at once with :class:`BatchLockedError`)."""

    def __init__(self, out_dir: str, group: str | None = None, wait: float = 0, poll: float = 0.5):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, LOCK_NAME)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.group = group or f"{self.host}:{self.pid}"
        self.wait = float(wait or 0)
        self.poll = poll
        self.started: float | None = None
        self.took_over: dict | None = None  # the stale lock taken over, for messages
        self.held = False

    @contextlib.contextmanager
    def _guard(self):
        """Serialise lock-file updates of local processes (flock on the folder; a no-op where unsupported)."""
        try:
            import fcntl

            fd = os.open(self.out_dir, os.O_RDONLY)
        except (ImportError, OSError):
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read(self) -> dict | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                info = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def _write(self, info: dict) -> None:
        tmp = f"{self.path}.{self.pid}.new"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(info, f)
        os.replace(tmp, self.path)

    def _stale(self, info: dict) -> bool:
        members = info.get("members")
        if not isinstance(members, list) or not members:
            return True  # unreadable or foreign: nobody can be holding it
        for m in members:
            if not (isinstance(m, dict) and isinstance(m.get("pid"), int)):
                continue
            if m.get("host") != self.host or _alive(m["pid"], m.get("start")):
                return False
        return True

    def describe(self, info: dict) -> str:
        members = info.get("members") or [{}]
        m = members[0] if isinstance(members[0], dict) else {}
        since = info.get("started")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
        return f"pid {m.get('pid', '?')} on {m.get('host', '?')}, since {when}"

    def _try(self) -> dict | None:
        """Take or join the lock; ``None`` on success, else the holder's info."""
        with self._guard():
            info = self._read()
            if info is not None and info.get("group") != self.group and not self._stale(info):
                return info
            if info is None or info.get("group") != self.group:
                if info is not None:
                    self.took_over = info
                info = {"group": self.group, "started": time.time(), "members": []}
            me = {"host": self.host, "pid": self.pid, "start": _proc_start(self.pid)}
            info["members"] = [m for m in info["members"] if m != me] + [me]
            self._write(info)
            self.started = info["started"]
            self.held = True
            return None

    def acquire(self) -> "BatchLock":
        deadline = time.monotonic() + self.wait
        said = False
        while True:
            holder = self._try()
            if holder is None:
                if self.took_over is not None:
                    logger.warning(f"{self.path}: took over a stale lock ({self.describe(self.took_over)}: "
                                   "no longer running)")
                return self
            if time.monotonic() >= deadline:
                hint = ("wait for it to finish, pass --wait to queue behind it, or delete "
                        f"{self.path} if that run is gone") if not self.wait else "gave up waiting (--wait)"
                raise BatchLockedError(f"{self.out_dir} is in use by another dit-attn batch "
                                       f"({self.describe(holder)}); {hint}")
            if not said:
                logger.warning(f"{self.out_dir} is in use by another dit-attn batch ({self.describe(holder)}); "
                               "waiting")
                said = True
            time.sleep(min(self.poll, max(0.0, deadline - time.monotonic())))

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        with self._guard():
            info = self._read()
            if not info or info.get("group") != self.group:
                return
            members = [m for m in info.get("members") or [] if not (isinstance(m, dict) and m.get("pid") == self.pid
                                                                      and m.get("host") == self.host)]
            if members:
                info["members"] = members
                self._write(info)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)

    def __enter__(self) -> "BatchLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --- outputs ------------------------------------------------------------------------------------------------
def a1111_parameters(item: Item) -> str:
    """An A1111-style ``parameters`` text (prompt, negative prompt, then a settings line)."""
    from dit_attn.pipelines.loading import model_defaults

    p = {**model_defaults(item.params.get("model") or ""), **{k: v for k, v in item.params.items() if v is not None}}
    settings = [f"Steps: {p.get('steps')}", f"Seed: {item.seed}"]
    if p.get("guidance") is not None:
        settings.append(f"CFG scale: {p['guidance']}")
    if p.get("width") and p.get("height"):
        settings.append(f"Size: {p['width']}x{p['height']}")
    settings.append(f"Model: {p['model']}")
    text = p["prompt"]
    if p.get("negative_prompt"):
        text += f"\nNegative prompt: {p['negative_prompt']}"
    return text + "\n" + ", ".join(settings)


def check_finite(media) -> None:
    """Raise :class:`NonFiniteOutputError` when an image, a video (frames) or an array holds NaN or inf."""
    import numpy as np

    frames = media if isinstance(media, (list, tuple)) else [media]
    bad = total = 0
    for frame in frames:
        if hasattr(frame, "detach"):  # a torch tensor
            frame = frame.detach().float().cpu().numpy()
        a = np.asarray(frame)
        if a.dtype.kind in "fc":
            bad += int(a.size - np.isfinite(a).sum())
        total += a.size
    if bad:
        raise NonFiniteOutputError(f"the output has {bad} NaN/inf values of {total} (numerical overflow: "
                                   "too high guidance or a broken model?); no file written")


def _to_pil(media):
    from PIL import Image

    if isinstance(media, Image.Image):
        return media
    if hasattr(media, "detach"):
        media = media.detach().float().cpu().numpy()
    return Image.fromarray(_to_uint8(media))


def save_image(image, path: str, item: Item) -> None:
    from PIL import PngImagePlugin

    image = _to_pil(image)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(item))
    info.add_text("dit_attn", json.dumps({"id": item.id, "seed": item.seed, "hash": item.hash, **item.params},
                                         sort_keys=True, allow_nan=False))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def save_video(frames, path: str, fps: int) -> list[str]:
    """MP4 (when imageio-ffmpeg is installed) and always a GIF preview. Returns the file names written."""
    pil = [_to_pil(f) for f in frames]
    written = []
    gif = os.path.splitext(path)[0] + ".gif"
    atomic_write(gif, lambda tmp: pil[0].save(tmp, format="GIF", save_all=True, append_images=pil[1:],
                                              duration=int(1000 / fps), loop=0))
    written.append(os.path.basename(gif))
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:  # MP4 needs the optional video extra; the GIF above is always written
        logger.warning("imageio-ffmpeg is not installed (pip install 'dit_attn[video]'): wrote %s only, no MP4",
                       os.path.basename(gif))
        return written
    from diffusers.utils import export_to_video

    atomic_write(path, lambda tmp: export_to_video(pil, tmp, fps=fps))
    written.insert(0, os.path.basename(path))
    return written


def _to_uint8(array):
    import numpy as np

    a = np.asarray(array)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    return a


def _np_to_pil(array):
    """diffusers' ``numpy_to_pil`` for one image ``[H, W, C]`` in [0, 1] (the same pixels as ``output_type="pil"``)."""
    import numpy as np
    from PIL import Image

    a = (np.asarray(array) * 255).round().astype("uint8")
    return Image.fromarray(a[..., 0], mode="L") if a.shape[-1] == 1 else Image.fromarray(a)


# --- running ------------------------------------------------------------------------------------------------
class Generator:
    """Loads pipelines once per model and generates one item (image or video) with its controls.

    The pipeline returns arrays (``output_type="np"``) that are checked for NaN/inf before they become images,
    so an overflowed generation is an error, never a black "ok" image. A model that fails to load fails every
    item that needs it with the same one-line :class:`ModelLoadError`, without retrying."""

    def __init__(self, device: str | None = None, context_parallel=None):
        self.device = device
        self.context_parallel = context_parallel  # a pipelines.context_parallel.ContextParallel, or None
        self._pipes: dict[str, Any] = {}
        self._failed: dict[str, ModelLoadError] = {}

    def pipeline(self, model: str):
        if model in self._failed:
            raise self._failed[model]
        if model not in self._pipes:
            try:
                pipe = self._load(model)
            except ModelLoadError as e:
                self._failed[model] = e
                raise
            self._pipes[model] = pipe
        return self._pipes[model]

    def _load(self, model: str):
        from .loading import load_pipeline

        if isinstance(model, str) and looks_like_path(model) and not os.path.isdir(os.path.expanduser(model)):
            raise ModelLoadError(f"model folder {model!r} does not exist")
        quiet = _quiet_hub_logging()
        try:
            pipe = load_pipeline(os.path.expanduser(model) if looks_like_path(model) else model)
        except ImportError as e:
            raise ModelLoadError(f"could not load model {model!r}: {one_line(e)}") from e
        except (OSError, ValueError) as e:
            if isinstance(e, ValueError) and not type(e).__module__.startswith("huggingface_hub"):
                raise ModelLoadError(one_line(e)) from e
            raise ModelLoadError(
                f"could not load model {model!r}: not a local folder, and not a hub id that is in the local "
                f"cache or downloadable now (offline, or no such repository); use 'tiny:<family>', "
                f"'shapes:<kind>', a folder saved with save_pretrained, or a reachable hub id") from e
        finally:
            quiet()
        if self.device:
            pipe.to(self.device)
        if self.context_parallel is not None:  # before dit_attn attaches (in __call__)
            from .context_parallel import enable

            try:
                enable(pipe, self.context_parallel)
            except ValueError as e:
                raise ModelLoadError(one_line(e)) from e
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def __call__(self, item: Item):
        import inspect

        import torch

        import dit_attn

        from .loading import call_kwargs

        controls = dit_attn.controls_from_config(item.params.get("controls") or {})
        pipe = self.pipeline(item.params["model"])
        kwargs = call_kwargs(pipe, item.params, torch.Generator("cpu").manual_seed(item.seed))
        if "output_type" in inspect.signature(pipe.__call__).parameters:
            kwargs["output_type"] = "np"  # arrays, checked for NaN/inf before they become images
        with dit_attn.attach(pipe, *controls):
            result = pipe(**kwargs)
        if hasattr(result, "frames"):
            frames = result.frames[0]
            check_finite(list(frames) if not isinstance(frames, list) else frames)
            return "video", [_np_to_pil(f) if not hasattr(f, "save") else f for f in frames]
        image = result.images[0]
        check_finite(image)
        return "image", image if hasattr(image, "save") else _np_to_pil(image)


def _quiet_hub_logging() -> Callable[[], None]:
    """Silence diffusers/huggingface_hub warnings ("Couldn't connect to the Hub...") during a load; returns undo."""
    loggers = [logging.getLogger(n) for n in ("diffusers", "huggingface_hub", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)

    def undo():
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    return undo


def _set_aside(out_dir: str, names: list[str], tag: str, item_id: str, why: str, summary: Summary) -> list[str]:
    """Rename ``names`` (files of ``out_dir``) to ``<stem>~<tag><ext>`` (``~<tag>-2`` ... if taken)."""
    moved = []
    for name in names:
        src = os.path.join(out_dir, name)
        if not _safe_name(name) or not os.path.lexists(src):
            continue
        stem, ext = os.path.splitext(name)
        n, new = 1, f"{stem}~{tag}{ext}"
        while os.path.lexists(os.path.join(out_dir, new)):
            n += 1
            new = f"{stem}~{tag}-{n}{ext}"
        os.replace(src, os.path.join(out_dir, new))
        moved.append(new)
        summary.kept_aside.append((name, new, why))
        logger.warning(f"{item_id}: kept {name} aside as {new} ({why})")
    return moved


def _png_hash(path: str) -> str | None:
    try:
        from PIL import Image

        with Image.open(path) as im:
            meta = json.loads(im.text.get("dit_attn", "null"))
        return meta.get("hash") or content_hash(meta, meta["seed"])
    except Exception:
        return None


#: Test-only switch: set to N, a batch process kills itself (SIGKILL) right after writing its N-th output file and
#: before that item's manifest line, the worst moment for a crash, so the resume test kills at a known point
#: instead of racing a poll loop.
TEST_SIGKILL_AFTER_OUTPUTS_ENV = "DIT_ATTN_TEST_SIGKILL_AFTER_OUTPUTS"


def _sigkill_if_a_test_asks(outputs_written: int) -> None:
    limit = os.environ.get(TEST_SIGKILL_AFTER_OUTPUTS_ENV)
    if limit and outputs_written >= int(limit):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _make_room(out_dir: str, item: Item, previous: dict | None, summary: Summary) -> None:
    """Before (re)generating ``item``: keep aside the files an earlier, different version of it left."""
    if previous is not None:
        old = _entry_hash(previous) or "old"
        moved = _set_aside(out_dir, previous["files"], old, item.id, "the job changed since it was generated",
                           summary)
        _append_manifest(out_dir, {"id": item.id, "status": "replaced", "hash": old, "files": moved,
                                   "job": item.where})
    # files with this item's names that no manifest line accounts for (a foreign file, a kill between the move
    # into place and the manifest line): kept unless they are this very output
    for name in (f"{item.id}.png", f"{item.id}.mp4", f"{item.id}.gif"):
        path = os.path.join(out_dir, name)
        if not os.path.lexists(path):
            continue
        found = _png_hash(path) if name.endswith(".png") else None
        if found == item.hash:
            continue  # the same content: overwriting it loses nothing
        _set_aside(out_dir, [name], found or "untracked", item.id, "a file not recorded in the manifest", summary)


def _todo(items: list[Item], done: dict, summary: Summary) -> list[tuple[Item, dict | None]]:
    """The items not yet done with the same content (each with its previous manifest entry, if any)."""
    todo = []
    for it in items:
        entry = done.get(it.id)
        if entry is not None and _entry_hash(entry) in (it.hash, None):
            summary.skipped += 1
        else:
            todo.append((it, entry))
    return todo


def _help_generate(items: list[Item], out_dir: str, generate) -> Summary:
    """A context-parallel helper process: run the generations process 0 runs (it reads the manifest before
    any of them, and process 0 cannot finish one without it), writing nothing."""
    summary = Summary()
    done = read_manifest(out_dir) if os.path.isdir(out_dir) else {}
    start = time.perf_counter()
    for item, _ in _todo(items, done, summary):
        try:
            generate(item)
            summary.done += 1
        except Exception as e:  # process 0 records the failure; the same inputs fail the same way here
            summary.failed += 1
            summary.failures.append((item.id, f"{type(e).__name__}: {one_line(e)}"))
    summary.seconds = time.perf_counter() - start
    return summary


def run_batch(jobs_path: str, out_dir: str, *, base_seed: int = 0, process_index: int = 0, num_processes: int = 1,
              generate: Callable[[Item], tuple[str, Any]] | None = None, progress: bool = True,
              limits: dict | str | None = None, wait: float = 0, lock_group: str | None = None,
              write: bool = True) -> Summary:
    """Run (or resume) the jobs of ``jobs_path`` into ``out_dir``; this process's share only.

    ``limits``: overrides of :data:`LIMITS`; ``wait``: seconds to wait for another run holding ``out_dir``;
    ``lock_group``: shared by the processes of one launch (default: :func:`launch_group` when
    ``num_processes > 1``); ``write=False``: a helper process of a context-parallel launch, which takes part in
    every generation process 0 runs and writes nothing (no lock, files or manifest)."""
    from tqdm.auto import tqdm

    limits = resolve_limits(limits)
    items = expand(load_jobs(jobs_path, limits), base_seed, limits)
    if not write:
        return _help_generate(items, out_dir, generate or Generator())
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise JobFileError(f"--out {out_dir!r} is a file, not a folder")
    os.makedirs(out_dir, exist_ok=True)
    if lock_group is None and num_processes > 1:
        lock_group = launch_group()
    summary = Summary()
    with BatchLock(out_dir, group=lock_group, wait=wait) as lock:
        if process_index == 0:  # temporary files of a killed run; their items are not in the manifest and get redone
            for name in os.listdir(out_dir):
                path = os.path.join(out_dir, name)
                if name.startswith(".tmp-") and os.path.getmtime(path) < (lock.started or 0):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
        mine = [it for i, it in enumerate(items) if i % num_processes == process_index]
        todo = _todo(mine, read_manifest(out_dir, summary.warnings), summary)
        generate = generate or Generator()
        start = time.perf_counter()
        for item, previous in tqdm(todo, desc=f"dit-attn batch [{process_index + 1}/{num_processes}]",
                                   disable=not progress):
            try:
                _make_room(out_dir, item, previous, summary)
                kind, media = generate(item)
                check_finite(media)
                if kind == "video":
                    files = save_video(media, os.path.join(out_dir, f"{item.id}.mp4"),
                                       item.params.get("fps") or 8)
                else:
                    save_image(media, os.path.join(out_dir, f"{item.id}.png"), item)
                    files = [f"{item.id}.png"]
                _sigkill_if_a_test_asks(outputs_written=summary.done + 1)
                _append_manifest(out_dir, {"id": item.id, "status": "ok", "files": files, "seed": item.seed,
                                           "hash": item.hash, "job": item.where, "params": item.params})
                summary.done += 1
            except Exception as e:  # one failing item never stops the rest
                reason = f"{type(e).__name__}: {one_line(e)}"
                _append_manifest(out_dir, {"id": item.id, "status": "failed", "error": reason, "job": item.where,
                                           "hash": item.hash, "trace": traceback.format_exc(limit=5)})
                summary.failed += 1
                summary.failures.append((item.id, reason))
        summary.seconds = time.perf_counter() - start
    return summary
