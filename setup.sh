#!/usr/bin/env bash
# Set-up for DenseNAS: the Fashion-MNIST images (Debian's dataset-fashion-mnist, unless they are
# already somewhere search.py looks) and a virtual environment .venv with the pinned packages.
set -euo pipefail
cd "$(dirname "$0")"
have_fmnist() {
  for d in "${FASHION_MNIST_DIR:-}" data/fashion-mnist /usr/share/datasets/fashion-mnist; do
    [ -n "$d" ] && ls "$d"/train-images-idx3-ubyte* >/dev/null 2>&1 && return 0
  done
  return 1
}
if ! have_fmnist; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup: installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: no apt-get here; put Fashion-MNIST's four IDX files in data/fashion-mnist" \
         "(github.com/zalandoresearch/fashion-mnist) or set FASHION_MNIST_DIR" >&2
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
echo "setup: ready (.venv/bin/python)"
