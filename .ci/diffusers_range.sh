#!/usr/bin/env bash
# Test dit_attn against one diffusers release, in a throwaway venv beside the project's own.
#
#   .ci/diffusers_range.sh [DIFFUSERS_VERSION|newest] [extra pytest arguments...]
#
# DIFFUSERS_VERSION defaults to the lowest release dit_attn supports (0.35.0, the bound in pyproject.toml);
# "newest" is the newest release on the package index that pyproject.toml's diffusers requirement admits.
# The venv is ${TMPDIR:-/tmp}/dit_attn-diffusers-<version>; it is reused while its install line is unchanged
# (FRESH=1 rebuilds it). It gets the CPU torch wheel pinned in the Makefile (CPU_TORCH), that diffusers, the
# newest transformers (TRANSFORMERS=... overrides; every release from 0.35 on imports with transformers 5.x),
# the other runtime dependencies of pyproject.toml, pytest and hypothesis, and dit_attn itself with --no-deps -e.
#
# It runs tests/test_families.py and tests/test_attach.py. Families whose transformer or tiny-pipeline class the
# release lacks (e.g. Flux2, Z-Image and HunyuanVideo 1.5 before 0.36/0.37) are deselected by name with -k.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${1:-0.35.0}"
[ "$#" -gt 0 ] && shift
PYTHON="${PYTHON:-python3}"
if [ "$VERSION" = newest ]; then
    REQUIREMENT="$(grep -o '"diffusers[^"]*"' "$ROOT/pyproject.toml" | head -n 1 | tr -d '"')"
    VERSION="$("$PYTHON" -m pip index versions diffusers 2>/dev/null | sed -n 's/^Available versions: //p' | \
        "$PYTHON" -c '
import sys
from pip._vendor.packaging.requirements import Requirement
spec = Requirement(sys.argv[1]).specifier
print(next(v for v in sys.stdin.read().replace(",", " ").split() if spec.contains(v)))' "$REQUIREMENT")"
    echo "== newest diffusers on the index within $REQUIREMENT: $VERSION"
fi
CPU_TORCH="$(sed -n 's/^CPU_TORCH[[:space:]]*:=[[:space:]]*//p' "$ROOT/Makefile" | head -n 1)"
CPU_TORCH="${CPU_TORCH:-torch==2.13.0}"
# diffusers 0.35.0/0.35.1 import transformers.utils.FLAX_WEIGHTS_NAME unconditionally; transformers 4.57 dropped
# it (0.35.2 guards the import). Every later release imports with the newest transformers (5.x).
case "$VERSION" in
    0.35.0|0.35.1) DEFAULT_TRANSFORMERS="transformers>=4.51,<4.57" ;;
    *) DEFAULT_TRANSFORMERS="transformers>=4.51" ;;
esac
TRANSFORMERS="${TRANSFORMERS:-$DEFAULT_TRANSFORMERS}"
OTHERS=(tokenizers accelerate safetensors numpy pillow tqdm pyyaml peft pytest hypothesis)
VENV="${TMPDIR:-/tmp}/dit_attn-diffusers-${VERSION}"
STAMP="$VENV/.dit_attn-installed"
SPEC="$CPU_TORCH diffusers==$VERSION $TRANSFORMERS ${OTHERS[*]}"

start=$(date +%s)
if [ "${FRESH:-0}" = 1 ] || [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$SPEC" ]; then
    echo "== creating $VENV (diffusers $VERSION)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet "$CPU_TORCH"
    "$VENV/bin/pip" install --quiet "diffusers==$VERSION" "$TRANSFORMERS" "${OTHERS[@]}"
    echo "$SPEC" > "$STAMP"
fi
# Always re-link the checkout (cheap), so the venv tests this tree.
"$VENV/bin/pip" install --quiet --no-deps -e "$ROOT" >/dev/null 2>&1 || "$VENV/bin/pip" install --quiet --no-deps -e "$ROOT"
"$VENV/bin/pip" list 2>/dev/null | grep -iE '^(torch|diffusers|transformers|tokenizers|accelerate|peft) ' | tr -s ' ' | paste -sd ';' -

cd "$ROOT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TRITON_INTERPRET=1
# Families (as dit_attn.families names them; they are the test ids) whose classes this diffusers lacks.
MISSING="$("$VENV/bin/python" - <<'EOF' 2>/dev/null
import diffusers
from dit_attn import families, testing

plugins = getattr(testing, "_PLUGIN_FAMILIES", {})
missing = []
for name, family in families.FAMILIES.items():
    needed = [family.transformer_class]
    if name in plugins:
        try:
            needed.append(testing._plugin(name).PIPELINE_CLASS)
        except Exception:  # the tiny-pipeline module itself needs something this release lacks
            missing.append(name)
            continue
    if not all(hasattr(diffusers, cls) for cls in needed):
        missing.append(name)
print(" ".join(missing))
EOF
)"
DESELECT=""
for name in $MISSING; do DESELECT="${DESELECT:+$DESELECT and }not $name"; done
[ -n "$MISSING" ] && echo "== diffusers $VERSION lacks the classes of: $MISSING (deselected)"
set +e
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_families.py tests/test_attach.py \
    ${DESELECT:+-k "$DESELECT"} "$@"
rc=$?
set -e
echo "== diffusers $VERSION: pytest exit $rc in $(( $(date +%s) - start ))s"
exit $rc
