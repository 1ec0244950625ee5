#!/usr/bin/env bash
# The GPU benchmarks and a ShapesWorld training run in one command, for any machine with a CUDA GPU
# (bench/README.md: what to install, what it writes, how long it takes). It measures what no CPU can (the GPU
# numbers the docs call owed) and continues the ShapesWorld t2i model on the GPU, leaving at most 5 files in $OUT.
#
#   Run:             bash bench/gpu_session.sh      # 9 minutes by default (DEADLINE_S=540)
#   In two parts:    PARTS=report DEADLINE_S=270 bash bench/gpu_session.sh, then PARTS=train DEADLINE_S=270 ...
#   Offline GPU:     make gpu-wheels on a machine with a package index, copy .whl/ along; the wheels and this
#                    checkout are then installed into /tmp/site without downloads
#   Afterwards:      unpack report.tgz into bench/results/<date>-<gpu>/ and commit it (bench/README.md).
#
# Settings (environment): PARTS (report,train), DEADLINE_S (540: seconds this script may take in all),
# REPORT_S (cap for the benchmark report: 180 when training follows, else all the time left),
# SECTIONS (bench_report sections, default all),
# TRAIN_KIND (t2i), TRAIN_BATCH (128), TRAIN_WORKERS (12), TRAIN_CACHE (the trainer's default: 30000 t2i, 5000 t2v),
# DEVICE (cuda), PYTHON (python3), OUT (outputs/gpu_session).
# A dry run on a CPU machine (checks the plumbing, not the numbers):
#   PARTS=report,train SECTIONS=overhead REPORT_S=60 DEVICE=cpu DEADLINE_S=240 TRAIN_BATCH=4 TRAIN_WORKERS=2 \
#   TRAIN_CACHE=64 PYTHON=.venv/bin/python bash bench/gpu_session.sh
set -uo pipefail

PARTS=${PARTS:-report,train}
DEADLINE_S=${DEADLINE_S:-540}
if [[ ",$PARTS," == *",train,"* ]]; then REPORT_S=${REPORT_S:-180}; else REPORT_S=${REPORT_S:-$DEADLINE_S}; fi
SECTIONS=${SECTIONS:-}
TRAIN_KIND=${TRAIN_KIND:-t2i}
TRAIN_BATCH=${TRAIN_BATCH:-128}
TRAIN_WORKERS=${TRAIN_WORKERS:-12}
TRAIN_CACHE=${TRAIN_CACHE:-}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
OUT=${OUT:-outputs/gpu_session}
export PYTHONUNBUFFERED=1

mkdir -p "$OUT"
WORK=$(mktemp -d)
LOG="$OUT/session.log"
say() { echo "[gpu_session +${SECONDS}s] $*" | tee -a "$LOG"; }
left() { local s=$((DEADLINE_S - SECONDS)); echo $((s > 1 ? s : 1)); }  # never 0: `timeout 0` would not stop

# 1. Packages, only when .whl/ holds wheels (an offline GPU machine): those wheels, then this checkout itself, into
#    /tmp/site, without downloads. Otherwise the Python environment already in use is used as it is.
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . \
        || { say "package install failed"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    # `python -m` puts the working directory first on sys.path, where ./dit_attn lacks the mapped subpackages
    # (dit_attn.pipelines lives in ./pipelines): import the installed package only.
    export PYTHONSAFEPATH=1
fi
{ nvidia-smi 2>&1 || echo "no nvidia-smi"; "$PY" - <<'EOF'
import platform, torch, diffusers, transformers, dit_attn.pipelines
print("dit_attn from", dit_attn.pipelines.__file__)
print("python", platform.python_version(), "| torch", torch.__version__, "| diffusers", diffusers.__version__,
      "| transformers", transformers.__version__, "| cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))
EOF
} > "$OUT/machine.txt" 2>&1
say "machine: $(tail -1 "$OUT/machine.txt")"

# 2. The benchmark report (every section this machine can run; see dit_attn/bench_report.py).
if [[ ",$PARTS," == *",report,"* ]]; then
    budget=$(( $(left) < REPORT_S ? $(left) : REPORT_S ))
    say "report: up to ${budget}s${SECTIONS:+ (sections $SECTIONS)}"
    timeout -k 15 "$budget" "$PY" -m dit_attn.bench_report --out "$WORK/report" ${SECTIONS:+--only "$SECTIONS"} \
        > "$WORK/report.log" 2>&1
    say "report: exit $? (124: stopped at its budget; finished sections are kept)"
    tar czf "$OUT/report.tgz" -C "$WORK" report report.log 2>/dev/null || tar czf "$OUT/report.tgz" -C "$WORK" report.log
fi

# 3. ShapesWorld training on the GPU: continue the bundled model with the object-weighted recipe for the time
#    left (minus ~120 s for start-up, the final checkpoint, the evaluation of 200 + 200 prompts and packing;
#    no intermediate checkpoints: each would evaluate 64 prompts and export outside the training budget).
if [[ ",$PARTS," == *",train,"* ]]; then
    minutes=$(awk -v s="$(left)" 'BEGIN { m = (s - 120) / 60; if (m < 0) m = 0; printf "%.2f", m }')
    say "train $TRAIN_KIND on $DEVICE: $minutes minutes, batch $TRAIN_BATCH"
    extra=()
    if [[ -n $TRAIN_CACHE ]]; then extra=(--cache-size "$TRAIN_CACHE"); elif [[ $TRAIN_KIND == t2v ]]; then
        extra=(--cache-size 5000); fi
    timeout -k 15 $(( $(left) > 40 ? $(left) - 30 : 10 )) "$PY" -m dit_attn.pipelines.shapes.train --kind "$TRAIN_KIND" --device "$DEVICE" \
        --init-from "pipelines/shapes/models/$TRAIN_KIND" --fg-weight 4 --warmup 100 --batch "$TRAIN_BATCH" --precision bf16 \
        --workers "$TRAIN_WORKERS" --threads 4 --minutes "$minutes" --ckpt-minutes 1000 --eval-n 32 "${extra[@]}" \
        --work "$WORK/train_work" --out "$WORK/$TRAIN_KIND" > "$WORK/train.log" 2>&1
    say "train: exit $?"
    if [[ -d $WORK/$TRAIN_KIND ]]; then
        n=$([[ $TRAIN_KIND == t2v ]] && echo 100 || echo 200)
        timeout -k 10 $(( $(left) > 20 ? $(left) - 10 : 10 )) "$PY" -m dit_attn.pipelines.shapes.evaluate \
            --kind "$TRAIN_KIND" --model "$WORK/$TRAIN_KIND" --n "$n" --device "$DEVICE" --out "$WORK/eval" \
            > "$WORK/eval.log" 2>&1
        say "evaluate: exit $? $(grep -h 'heldout:' "$WORK/eval.log" | head -1)"
    fi
    tar czf "$OUT/$TRAIN_KIND.tgz" -C "$WORK" $(cd "$WORK" && ls -d "$TRAIN_KIND" eval train.log eval.log 2>/dev/null)
fi
say "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
