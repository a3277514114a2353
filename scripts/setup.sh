#!/usr/bin/env bash
# Create .venv and install saesteer into it. Idempotent: a second run only checks.
#   scripts/setup.sh          runtime dependencies
#   scripts/setup.sh --dev    plus test tools
# torch: if the venv has none yet we install $SAESTEER_TORCH (default torch==2.13.0).
# On a machine with a local CPU wheel that is what pip picks; elsewhere it is the
# normal PyPI build (CUDA on Linux). Any torch already present is kept as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
stamp=".venv/.saesteer-setup${extras:+-dev}"

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PY --version)"
    $PY -m venv .venv
fi
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/constraints.txt ] \
    && [ "$stamp" -nt scripts/interop-libraries.txt ]; then
    exit 0
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "[setup] installing ${SAESTEER_TORCH:-torch==2.13.0}"
    .venv/bin/pip install --quiet "${SAESTEER_TORCH:-torch==2.13.0}"
fi
echo "[setup] installing saesteer${extras} and its dependencies"
.venv/bin/pip install --quiet -c scripts/constraints.txt -e ".${extras}"
if [ -n "$extras" ]; then
    echo "[setup] installing the other SAE libraries the interop tests compare with (no dependencies)"
    .venv/bin/pip install --quiet --no-deps -r scripts/interop-libraries.txt
fi
touch "$stamp"
