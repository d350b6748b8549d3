#!/usr/bin/env bash
# Installs what pupil's tests need on a fresh Debian machine (idempotent; fast when already installed).
set -euo pipefail
need_apt=()
for pkg in "$@"; do need_apt+=("$pkg"); done
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
[ -e /usr/share/java/jna.jar ] || need_apt+=(libjna-java)
command -v clang >/dev/null && command -v llvm-nm >/dev/null || need_apt+=(clang llvm)
command -v java >/dev/null || need_apt+=(openjdk-17-jdk-headless)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add aarch64-unknown-linux-gnu aarch64-linux-android >/dev/null
# ONNX Runtime (and numpy) for the cross-check that pupil's int8 files run in ORT too, and for `pupil bench`.
python3 -c "import onnxruntime, numpy" 2>/dev/null || python3 -m pip install -q onnxruntime numpy
