#!/usr/bin/env bash
# Create .venv and install eqserve. On a machine without CUDA, torch==2.13.0 is installed first so
# that pip takes its CPU build, not a multi-GB CUDA one.
#   ./scripts/setup.sh          the server
#   ./scripts/setup.sh --test   also the dev extras and the system programs the tests drive
#                               (Prometheus, Chromium and its driver, kubectl, from Debian's packages)
#                               and the extras deploy/ needs (Ray Serve, schema checkers)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install -q -e ".[dev,ray,deploy-test]"
  missing=()
  command -v prometheus >/dev/null || missing+=(prometheus)
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  command -v kubectl >/dev/null || missing+=(kubectl)  # tests/deploy: kubectl kustomize
  command -v ip >/dev/null || missing+=(iproute2)      # tests/deploy: Ray in its own network namespace
  if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
else
  .venv/bin/python -m pip install -q -e .
fi
