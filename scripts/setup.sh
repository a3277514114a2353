#!/usr/bin/env bash
# Create .venv and install saesteer into it. Idempotent: a second run only checks.
#   scripts/setup.sh          runtime dependencies and the map extra (umap-learn, for `features map`)
#   scripts/setup.sh --dev    plus test tools, and delphi's wheel for the tests that run its code
# torch: if the venv has none yet we install $SAESTEER_TORCH (default torch==2.13.0).
# On a machine with a local CPU wheel that is what pip picks; elsewhere it is the
# normal PyPI build (CUDA on Linux). Any torch already present is kept as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
case "${1:-}" in
    "") dev="" ;;
    --dev) dev="-dev" ;;
    *) echo "scripts/setup.sh: unknown argument '$1'; run it with none (runtime) or --dev (plus test tools)" >&2
       exit 2 ;;
esac
extras="[map]"
[ -n "$dev" ] && extras="[dev]"  # dev holds umap-learn too
stamp=".venv/.saesteer-setup${dev}"
delphi_pin="eai-delphi==0.1.3"
delphi_wheel=".venv/wheels/eai_delphi-0.1.3-py3-none-any.whl"  # where the tests look for it

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PY --version)"
    $PY -m venv .venv
fi
if [ -n "$dev" ] && [ ! -f "$delphi_wheel" ]; then
    # EleutherAI delphi's own code, read by tests/test_user_paths12.py (its metrics, its file names).
    # Only the wheel, never installed: its requirements (vllm, another torch) are not wanted here.
    echo "[setup] downloading $delphi_pin's wheel into $(dirname "$delphi_wheel")/ (not installed)"
    .venv/bin/pip download --quiet --no-deps --only-binary=:all: -d "$(dirname "$delphi_wheel")" "$delphi_pin"
fi
# done already, unless what decides what is installed changed since (this script included: a stamp
# from an older setup.sh may stand for other extras)
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/constraints.txt ] \
    && [ "$stamp" -nt scripts/interop-libraries.txt ] && [ "$stamp" -nt scripts/setup.sh ]; then
    exit 0
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "[setup] installing ${SAESTEER_TORCH:-torch==2.13.0}"
    .venv/bin/pip install --quiet "${SAESTEER_TORCH:-torch==2.13.0}"
fi
echo "[setup] installing saesteer${extras} and its dependencies"
.venv/bin/pip install --quiet -c scripts/constraints.txt -e ".${extras}"
if [ -n "$dev" ]; then
    echo "[setup] installing the other SAE libraries the interop tests compare with (no dependencies)"
    .venv/bin/pip install --quiet --no-deps -r scripts/interop-libraries.txt
fi
touch "$stamp"
