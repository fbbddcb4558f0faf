#!/usr/bin/env bash
# Installs everything tff_feddst needs on a fresh Debian machine with Python 3.11:
# the Debian Fashion-MNIST package (real data, offline) and a virtualenv .venv
# holding the pinned TFF 0.87 stack. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

FASHION_MNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -e "$FASHION_MNIST" ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "install.sh: error: TFF 0.87 needs Python 3.11; $PYTHON is $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.11." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# --no-deps: the pins are a complete, resolved set, but TFF itself pins
# jaxlib==0.4.14, which the package index does not serve (0.4.13 works).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements.txt
.venv/bin/python -c 'import tensorflow_federated, tensorflow_model_optimization' 2>/dev/null
echo "install.sh: ready (.venv, Fashion-MNIST at $(dirname "$FASHION_MNIST"))."
