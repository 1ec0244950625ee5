"""``dit-attn``: the command line.

Examples::

    dit-attn generate "a red circle above a blue square" --model tiny:sd3 --seed 3 --out red.png
    dit-attn generate "a (red:1.6) circle" --control emphasis --control entropy:train_tokens=64
    dit-attn generate "a cat" --config controls.yaml --model ./my-saved-pipeline
    dit-attn batch jobs.jsonl --out outputs/batch
    dit-attn ui                                                   # http://127.0.0.1:7860
    accelerate launch -m dit_attn.cli batch jobs.jsonl --out outputs/batch      # data parallel
    dit-attn bench --out bench/report
    dit-attn heads search --model shapes:t2i --rounds 2 --top-k 3 --out heads/
    dit-attn train-conditions --help

Controls come from ``--control NAME[:field=value,...]`` flags (repeatable) or a YAML/JSON ``--config`` file
(``{controls: {name: {field: value}}}``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from dit_attn.pipelines.loading import quiet_loading


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_control_flag(flag: str) -> dict:
    """``"entropy:train_tokens=64"`` → ``{"entropy": {"train_tokens": 64}}``."""
    name, _, rest = flag.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"--control needs a name, e.g. 'entropy' or 'entropy:train_tokens=64'")
    fields = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise argparse.ArgumentTypeError(f"--control {flag!r}: expected field=value pairs after ':'")
        fields[key] = _parse_value(value)
    return {name: fields}


def _load_config(path: str) -> dict:
    if not os.path.isfile(path):
        raise ValueError(f"--config file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            if path.endswith((".yaml", ".yml")):
                import yaml

                data = yaml.safe_load(f)
            else:
                data = json.load(f)
    except (ValueError, OSError) as e:  # JSON and UTF-8 errors, unreadable files
        raise ValueError(f"--config {path}: cannot read it: {' '.join(str(e).split())}") from None
    except Exception as e:  # noqa: BLE001 - yaml.YAMLError
        raise ValueError(f"--config {path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict) or not isinstance(data.get("controls") or {}, dict):
        raise ValueError(f"{path}: expected an object with a 'controls' mapping")
    return data


def _generate(args) -> int:
    from dit_attn.pipelines.batch import Generator, Item, check_params, save_image, save_video

    controls = {}
    if args.config:
        controls.update(_load_config(args.config).get("controls") or {})
    for flag in args.control or []:
        controls.update(flag)
    params = {"model": args.model, "prompt": args.prompt, "negative_prompt": args.negative_prompt,
              "steps": args.steps, "guidance": args.guidance, "width": args.width, "height": args.height,
              "num_frames": args.num_frames, "fps": args.fps, "controls": controls}
    import dit_attn

    check_params({**params, "seed": args.seed}, "command line", args.limits)  # finite, within the limits
    dit_attn.controls_from_config(controls)  # validate before loading any model
    from dit_attn.testing import ALL_FAMILIES

    rank, device = 0, args.device
    if args.cp is not None:  # one generation split over the launch's processes; process 0 writes the file
        from dit_attn.pipelines.context_parallel import start

        rank, cp_device = start(args.cp)
        device = device or cp_device
    if rank == 0 and args.model.startswith("tiny:") and args.model[len("tiny:"):] in ALL_FAMILIES:
        print(f"note: {args.model} has random weights (for tests): the output is noise; the bundled trained "
              "models are shapes:t2i, shapes:t2v and shapes:flux", file=sys.stderr)
    item = Item("generate", 0, args.seed, params, "command line")
    kind, media = Generator(device=device, context_parallel=args.cp)(item)
    if rank != 0:
        return 0
    out = args.out or ("output.mp4" if kind == "video" else "output.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if kind == "video":
        files = save_video(media, out, args.fps)
        print("saved " + ", ".join(os.path.join(os.path.dirname(out), f) for f in files))
    else:
        save_image(media, out, item)
        print(f"saved {out}")
    return 0


def _batch(args) -> int:
    from dit_attn.pipelines.batch import Generator, JobFileError, run_batch

    process_index, num_processes, device = 0, 1, args.device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = 0
    if args.cp is not None:  # every process takes part in every generation; process 0 writes
        from dit_attn.pipelines.context_parallel import start

        rank, cp_device = start(args.cp)
        device = device or cp_device
    elif world > 1:  # started by `accelerate launch` (or torchrun): data parallel over the jobs
        from accelerate import PartialState

        state = PartialState()
        process_index, num_processes = state.process_index, state.num_processes
        if num_processes == 1:
            # accelerate sets up no process group without GPUs; the launcher's ranks still split the work.
            process_index, num_processes = int(os.environ.get("RANK", "0")), world
        elif state.device.type != "cpu" and device is None:
            device = str(state.device)
    try:
        summary = run_batch(args.jobs, args.out, base_seed=args.base_seed, process_index=process_index,
                            num_processes=num_processes, generate=Generator(device=device, context_parallel=args.cp),
                            progress=not args.quiet and rank == 0, limits=args.limits, write=rank == 0,
                            wait=(args.wait_timeout if args.wait_timeout is not None else float("inf"))
                            if args.wait else 0)
    except JobFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if rank != 0:
        return 0  # process 0 reports the run
    print(f"[process {process_index + 1}/{num_processes}] {summary}")
    for old, new, why in summary.kept_aside:
        print(f"  kept {old} aside as {new} ({why})")
    for item_id, reason in summary.failures:
        print(f"  failed {item_id}: {reason}", file=sys.stderr)
    return 1 if summary.failed else 0


def _bench(args) -> int:
    from dit_attn.bench.report import run_report

    run_report(args.out, quick=args.quick, only=args.only.split(",") if args.only else None)
    return 0


def _ui(args) -> int:
    from dit_attn.ui.app import default_models, launch

    launch(host=args.host, port=args.port, models=(args.model or []) + default_models())
    return 0


_LIMITS_HELP = ("override the allowed ranges of job numbers: name=max or name=min:max, comma separated "
                "(e.g. steps=500,width=8192); defaults: dit_attn.pipelines.batch.LIMITS")


def _parse_limits(text: str) -> dict:
    from dit_attn.pipelines.batch import parse_limits

    try:
        return parse_limits(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_CP_HELP = ("split each generation over N processes with diffusers' context parallelism: ulysses:N (every "
            "control exact) or ring:N (controls refused); launch with torchrun --nproc-per-node N")


def _parse_cp(text: str):
    from dit_attn.pipelines.context_parallel import ContextParallel

    try:
        return ContextParallel.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``error: ...`` line (exit code 2), like every other CLI error."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dit-attn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate one image or video with controls",
                         description="Generate one image or video. Example: dit-attn generate 'a red circle' "
                                     "--model tiny:sd3 --control entropy:train_tokens=64 --out red.png")
    gen.add_argument("prompt")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--model", default="shapes:t2i",
                     help="shapes:<kind> (bundled, trained), tiny:<family> (random weights: noise), a local folder, "
                          "or a hub id")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=None, help="default: the model's own (20 for shapes:*)")
    gen.add_argument("--guidance", type=float, default=None)
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--num-frames", type=int, default=None)
    gen.add_argument("--fps", type=int, default=8)
    gen.add_argument("--control", action="append", type=parse_control_flag,
                     help="NAME[:field=value,...], repeatable (e.g. entropy:train_tokens=64)")
    gen.add_argument("--config", help="YAML/JSON file with {controls: {name: {field: value}}}")
    gen.add_argument("--device", default=None)
    gen.add_argument("--cp", type=_parse_cp, default=None, metavar="KIND:N", help=_CP_HELP)
    gen.add_argument("--out", default=None, help="output file (.png for images, .mp4 for videos)")
    gen.add_argument("--limits", type=_parse_limits, default=None, help=_LIMITS_HELP)
    gen.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    gen.set_defaults(func=_generate)

    batch = sub.add_parser("batch", help="run a JSONL/YAML jobs file (resumable; data parallel with accelerate)",
                           description="Run a jobs file. Example: dit-attn batch jobs.jsonl --out outputs/batch; "
                                       "accelerate launch -m dit_attn.cli batch jobs.jsonl --out outputs/batch")
    batch.add_argument("jobs")
    batch.add_argument("--out", default="outputs/batch")
    batch.add_argument("--base-seed", type=int, default=0)
    batch.add_argument("--device", default=None)
    batch.add_argument("--cp", type=_parse_cp, default=None, metavar="KIND:N", help=_CP_HELP)
    batch.add_argument("--quiet", action="store_true")
    batch.add_argument("--limits", type=_parse_limits, default=None, help=_LIMITS_HELP)
    batch.add_argument("--wait", action="store_true",
                       help="when another run holds --out, wait for it to finish instead of exiting")
    batch.add_argument("--wait-timeout", type=float, default=None, metavar="SECONDS",
                       help="with --wait: give up after SECONDS (default: wait for ever)")
    batch.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    batch.set_defaults(func=_batch)

    ui = sub.add_parser("ui", help="the Gradio app (binds 127.0.0.1 unless --host says otherwise)",
                        description="Example: dit-attn ui --port 7860 --model ./my-saved-pipeline")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=None)
    ui.add_argument("--model", action="append", help="extra model choices (local folders or hub ids), repeatable")
    ui.set_defaults(func=_ui)

    bench = sub.add_parser("bench", help="run the benchmarks available on this machine",
                           description="Runs every benchmark this machine can run and writes one report (markdown + "
                                      "plots) naming the machine. Example: dit-attn bench --out bench/report --quick")
    bench.add_argument("--out", default="bench/report")
    bench.add_argument("--quick", action="store_true", help="fewer repeats and shapes (a smoke run)")
    bench.add_argument("--only", default=None, help="comma list of sections (see python -m dit_attn.bench.report -h)")
    bench.set_defaults(func=_bench)

    # Subcommands owned by the features' own modules (`heads search`, `train-conditions`): each module's
    # ``add_cli(subparsers)`` adds its parser with ``func`` set. They are part of every install, so an import error
    # here is a broken module and stops the command line rather than silently dropping a subcommand.
    from dit_attn.pipelines import head_search
    from dit_attn.pipelines.conditions import train

    head_search.add_cli(sub)
    train.add_cli(sub)
    return parser


def main(argv=None) -> int:
    """Run the CLI. Every error is one ``error: ...`` line on stderr and exit code 2 (``--debug``, or
    ``DIT_ATTN_DEBUG=1``, shows the traceback instead); ``batch`` exits 1 when some items failed."""
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("DIT_ATTN_DEBUG", "") not in ("", "0")
    try:
        quiet_loading()
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's top level: one line, not a traceback
        if debug:
            raise
        print(f"error: {_error_line(e)}", file=sys.stderr)
        return 2


def _error_line(e: BaseException) -> str:
    """One line for ``e``: files that are missing or unreadable, models that do not load, bad values."""
    if isinstance(e, FileNotFoundError) and e.filename:
        text = f"{e.filename}: no such file or folder"
    elif isinstance(e, PermissionError) and e.filename:
        text = f"{e.filename}: permission denied"
    elif isinstance(e, OSError) and e.filename:
        text = f"{e.filename}: {e.strerror or e}"
    elif isinstance(e, (ValueError, TypeError, KeyError, OSError, RuntimeError)) and str(e):
        text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        if not isinstance(e, ValueError) and not type(e).__module__.startswith("dit_attn"):
            text = f"{type(e).__name__}: {text}"
    else:
        text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    text = " ".join(text.split())
    expected = isinstance(e, (ValueError, FileNotFoundError, PermissionError)) or type(e).__module__.startswith(
        "dit_attn")
    hint = "" if expected else " (run with --debug for the traceback)"
    return (text if len(text) <= 600 else text[:597] + "...") + hint


if __name__ == "__main__":
    sys.exit(main())
