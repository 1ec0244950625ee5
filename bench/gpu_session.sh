#!/usr/bin/env bash
# The GPU measurements in one command, for any machine with a CUDA GPU (bench/README.md: what to install, what it
# writes, how long it takes). It measures what no CPU can (the GPU numbers the docs call owed) and writes them to
# bench/results/<date>-<gpu>/, ready to commit:
#
#   * kernels:      our block-sparse kernel vs torch SDPA (cuDNN, flash) at the five real DiT shapes, dense and at
#                   densities 0.5 / 0.25 / 0.1, with the cost of the key bias and of the rectification epilogue;
#   * guidance:     SoftPAG vs CFG-only time per denoising step (and peak memory);
#   * conditions:   PKA vs concat (and cached-full) attention time and memory at 1, 2, 4, 8 and 16 conditions;
#   * emphasis:     the emphasis path (key bias) vs plain attention;
#   * sparse_speed: rectified sparse attention (selection + kernel) vs dense SDPA at real video shapes.
#
#   Run:          bash bench/gpu_session.sh                  # 8 minutes at most (DEADLINE_S=480), set-up included
#   Then:         git add bench/results/<date>-<gpu> && git commit   (the folder the last line names)
#   Also train:   PARTS=report,train DEADLINE_S=1200 bash bench/gpu_session.sh   (continues the ShapesWorld t2i model
#                 on the GPU; its model goes to outputs/gpu_session/, never into bench/results/)
#
# Settings (environment): PARTS (report; add train for the ShapesWorld run), DEADLINE_S (480: seconds this script
# may take in all, set-up included), REPORT_S (cap for the report: 300 when training follows, else all the time
# left), SECTIONS (report sections in the order they run, default guidance,conditions,emphasis,kernels,sparse_speed:
# the quick ones first, so that a run stopped at its deadline keeps them), RESULTS (default
# bench/results/<date>-<gpu>), TRAIN_KIND (t2i), TRAIN_BATCH (128), TRAIN_WORKERS (12), TRAIN_CACHE (the trainer's
# default), TRAIN_OUT (outputs/gpu_session), DEVICE (cuda), PYTHON (python3).
#
# A dry run on a CPU machine (checks the plumbing, not the numbers; GPU sections report that they need a GPU):
#   SECTIONS=guidance,conditions,kernels RESULTS=outputs/gpu_dry_run DEADLINE_S=240 PYTHON=.venv/bin/python \
#   bash bench/gpu_session.sh
set -uo pipefail

PARTS=${PARTS:-report}
DEADLINE_S=${DEADLINE_S:-480}
if [[ ",$PARTS," == *",train,"* ]]; then REPORT_S=${REPORT_S:-300}; else REPORT_S=${REPORT_S:-$DEADLINE_S}; fi
SECTIONS=${SECTIONS:-guidance,conditions,emphasis,kernels,sparse_speed}
TRAIN_KIND=${TRAIN_KIND:-t2i}
TRAIN_BATCH=${TRAIN_BATCH:-128}
TRAIN_WORKERS=${TRAIN_WORKERS:-12}
TRAIN_CACHE=${TRAIN_CACHE:-}
TRAIN_OUT=${TRAIN_OUT:-outputs/gpu_session}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

# The results folder is named after the date and the GPU ("cpu" on a dry run without one).
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
slug=$(echo "${gpu:-cpu}" | tr '[:upper:]' '[:lower:]' | sed -e 's/^nvidia //' -e 's/[^a-z0-9]\+/-/g' -e 's/^-//' -e 's/-$//')
RESULTS=${RESULTS:-bench/results/$(date -u +%Y-%m-%d)-$slug}
mkdir -p "$RESULTS"
LOG="$RESULTS/session.log"
say() { echo "[gpu_session +${SECONDS}s] $*" | tee -a "$LOG"; }
left() { local s=$((DEADLINE_S - SECONDS)); echo $((s > 1 ? s : 1)); }  # never 0: `timeout 0` would not stop

# 1. Set-up. With .whl/ holding wheels (an offline GPU machine, `make gpu-wheels`): those wheels and this checkout
#    into /tmp/site, without downloads. Otherwise, when this Python cannot import dit_attn yet: `pip install -e .`
#    (torch with CUDA is expected to be installed already; bench/README.md).
if ls .whl/*.whl >/dev/null 2>&1; then
    say "installing .whl/ and this checkout into /tmp/site (offline)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . \
        || { say "package install failed"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    # `python -m` puts the working directory first on sys.path, where ./dit_attn lacks the mapped subpackages
    # (dit_attn.pipelines lives in ./pipelines): import the installed package only.
    export PYTHONSAFEPATH=1
elif ! "$PY" -c "import dit_attn.bench.report" >/dev/null 2>&1; then
    say "installing this checkout (pip install -e .)"
    timeout -k 10 "$(left)" "$PY" -m pip install -q -e . >> "$LOG" 2>&1 || { say "package install failed"; exit 1; }
fi
{ nvidia-smi 2>&1 || echo "no nvidia-smi"; "$PY" - <<'EOF'
import platform, torch, diffusers, transformers, dit_attn.pipelines
print("dit_attn from", dit_attn.pipelines.__file__)
print("python", platform.python_version(), "| torch", torch.__version__, "| diffusers", diffusers.__version__,
      "| transformers", transformers.__version__, "| cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))
EOF
} > "$RESULTS/machine.txt" 2>&1
say "machine: $(tail -1 "$RESULTS/machine.txt")"

# 2. The benchmark report (dit_attn/bench/report.py), written into the results folder as it goes: a report stopped
#    at its budget keeps its finished sections.
if [[ ",$PARTS," == *",report,"* ]]; then
    budget=$(( $(left) < REPORT_S ? $(left) : REPORT_S ))
    say "report: up to ${budget}s, sections $SECTIONS"
    timeout -k 15 "$budget" "$PY" -m dit_attn.bench.report --out "$RESULTS/report" --only "$SECTIONS" \
        > "$RESULTS/report.log" 2>&1
    say "report: exit $? (124: stopped at its budget; finished sections are kept)"
fi

# 3. ShapesWorld training on the GPU (PARTS=report,train): continue the bundled model with the object-weighted
#    recipe for the time left (minus ~120 s for start-up, the final checkpoint, the evaluation of 200 + 200 prompts
#    and packing), then evaluate it. The model goes to $TRAIN_OUT; its evaluation scores to the results folder.
if [[ ",$PARTS," == *",train,"* ]]; then
    mkdir -p "$TRAIN_OUT"
    minutes=$(awk -v s="$(left)" 'BEGIN { m = (s - 120) / 60; if (m < 0) m = 0; printf "%.2f", m }')
    say "train $TRAIN_KIND on $DEVICE: $minutes minutes, batch $TRAIN_BATCH"
    extra=()
    if [[ -n $TRAIN_CACHE ]]; then extra=(--cache-size "$TRAIN_CACHE"); elif [[ $TRAIN_KIND == t2v ]]; then
        extra=(--cache-size 5000); fi
    timeout -k 15 $(( $(left) > 40 ? $(left) - 30 : 10 )) "$PY" -m dit_attn.pipelines.shapes.train --kind "$TRAIN_KIND" --device "$DEVICE" \
        --init-from "pipelines/shapes/models/$TRAIN_KIND" --fg-weight 4 --warmup 100 --batch "$TRAIN_BATCH" --precision bf16 \
        --workers "$TRAIN_WORKERS" --threads 4 --minutes "$minutes" --ckpt-minutes 1000 --eval-n 32 "${extra[@]}" \
        --work "$TRAIN_OUT/train_work" --out "$TRAIN_OUT/$TRAIN_KIND" > "$RESULTS/train.log" 2>&1
    say "train: exit $?"
    if [[ -d $TRAIN_OUT/$TRAIN_KIND ]]; then
        n=$([[ $TRAIN_KIND == t2v ]] && echo 100 || echo 200)
        timeout -k 10 $(( $(left) > 20 ? $(left) - 10 : 10 )) "$PY" -m dit_attn.pipelines.shapes.evaluate \
            --kind "$TRAIN_KIND" --model "$TRAIN_OUT/$TRAIN_KIND" --n "$n" --device "$DEVICE" --out "$RESULTS/eval" \
            > "$RESULTS/eval.log" 2>&1
        say "evaluate: exit $? $(grep -h 'heldout:' "$RESULTS/eval.log" | head -1)"
    fi
fi
say "done in ${SECONDS}s; results in $RESULTS: $(ls "$RESULTS" | tr '\n' ' ')"
