#!/usr/bin/env bash
# Set up a virtual environment and run the whole test suite (the README's test command).
# torch is pinned to the CPU build for a fast, reproducible install; the package itself accepts
# any torch >= 2.2, so users with GPUs keep their CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]" $(ls -d plugins/*/ 2>/dev/null | sed 's/^/-e /')
.venv/bin/python -m pytest "$@"
