#!/usr/bin/env bash
# Do the lower bounds in pyproject.toml hold? Builds a venv with the lowest version of every
# dependency (scripts/lowest-deps.txt, equal to pyproject's bounds), then runs a slice of the
# tests and the demo in it. Not part of `make test`: it installs packages (about 1 GB, a few minutes).
#   scripts/check_lowest_deps.sh [VENV [PYTEST ARGS...]]     default VENV: /tmp/saesteer-lowest
# torch is not lowered: $SAESTEER_TORCH (default torch==2.13.0, the local CPU wheel on the CI
# machines) is installed as setup.sh does; torch's own bound (2.6) is not checked here.
# Python: the python3 on PATH ($PYTHON to choose); requires-python's 3.10 needs a 3.10 to check.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/saesteer-lowest}
[ $# -gt 0 ] && shift
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || $PY -m venv "$VENV"
"$VENV/bin/pip" install --quiet "${SAESTEER_TORCH:-torch==2.13.0}" uv
torch_pin=$(mktemp)
trap 'rm -f "$torch_pin"' EXIT
"$VENV/bin/python" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$torch_pin"
find_links=()
[ -n "${PIP_FIND_LINKS:-}" ] && find_links=(--find-links "$PIP_FIND_LINKS")  # uv reads no pip config
# exact pins, so no resolver's taste decides; the newest test tools (greenlet: nnsight, thus
# dictionary_learning, imports it; CI gets it with playwright) and the interop libraries
"$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" "${find_links[@]}" -c "$torch_pin" \
    -c scripts/lowest-deps.txt -e . pytest pytest-timeout hypothesis greenlet
"$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" "${find_links[@]}" --no-deps -r scripts/interop-libraries.txt
echo "[lowest] installed:"
"$VENV/bin/uv" pip freeze --python "$VENV/bin/python" | grep -iE "^($(sed -n 's/==.*//p' scripts/lowest-deps.txt | grep -v '^#' | paste -sd'|')|torch)=="
export WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 SAESTEER_CI=1 PYTHONPATH=$PWD
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_real_chain.py tests/test_api_openai.py \
    tests/test_judge_protocols.py tests/test_saes_formats.py tests/test_saes_interop.py tests/test_cache_text.py \
    tests/test_steering_engine.py tests/test_web_api.py tests/test_datareal_chat_dataset.py \
    tests/test_evalreal_saelens.py tests/test_lowest_deps.py "$@"
demo=$(mktemp -d)
(cd "$demo" && "$VENV/bin/python" -m saesteer demo --fresh --no-serve --no-progress)
rm -rf "$demo"
echo "[lowest] the lowest versions pass"
