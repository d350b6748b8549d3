#!/usr/bin/env bash
# aarch64 proven under emulation:
#   1. cross-builds pupil-runtime's tests for aarch64-unknown-linux-gnu and runs them under qemu-aarch64
#      (tract's NEON kernels and pupil's own kernels on ARM);
#   2. builds libpupil_bindings.so for aarch64 with the `mobile` profile (fat LTO, strip) and reports its size
#      against the 3 MB goal;
#   3. builds the static library for aarch64-linux-android with Debian's clang as the assembler (no NDK; the
#      cdylib needs the NDK's linker and is not attempted). Skipped with PUPIL_SKIP_ANDROID=1.
#
# Needs: rustup targets aarch64-unknown-linux-gnu aarch64-linux-android; Debian gcc-aarch64-linux-gnu,
# libc6-dev-arm64-cross, qemu-user, clang, llvm. The cross settings are passed as environment variables here, not
# written into a cargo config, so nobody else's build changes.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pupil/target}"
target=aarch64-unknown-linux-gnu
budget_bytes=$((3 * 1024 * 1024))
t_start=$SECONDS

for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install gcc-aarch64-linux-gnu qemu-user)" >&2; exit 1; }
done

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# proptest: fewer cases under emulation (the host run keeps the full count).
export PROPTEST_CASES="${PROPTEST_CASES:-32}"

echo "== 1. pupil-runtime tests on $target under qemu-aarch64"
t0=$SECONDS
# The two quantizer tests built on the CNN fixture (a 2,000-feature ridge regression: ~9 minutes under emulation)
# run on the host only; the int8 MLP test (integer kernels selected on ARM) and the NEON kernel tests run here.
cargo test -p pupil-runtime --target "$target" --no-fail-fast -- --test-threads 2 \
    --skip cnn_static_int8_agrees --skip f16_variant_halves_the_file_and_agrees
echo "   (runtime tests on aarch64: $((SECONDS - t0)) s)"

echo "== 2. libpupil_bindings.so for $target, profile mobile"
t0=$SECONDS
cargo build -q -p pupil-bindings --target "$target" --profile mobile
so="$CARGO_TARGET_DIR/$target/mobile/libpupil_bindings.so"
size=$(stat -c %s "$so")
stripped="$CARGO_TARGET_DIR/$target/mobile/libpupil_bindings.stripped.so"
aarch64-linux-gnu-strip --strip-all -o "$stripped" "$so"
ssize=$(stat -c %s "$stripped")
mib() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }
echo "   $so: $size bytes ($(mib "$size") MiB); after strip --strip-all: $ssize bytes ($(mib "$ssize") MiB);" \
    "goal <= 3 MiB: $([[ $ssize -le $budget_bytes ]] && echo met || echo MISSED)  ($((SECONDS - t0)) s)"
# The library must export the uniffi scaffolding and the JNI entry points.
# (nm's output is read whole first: `nm | grep -q` fails under pipefail when grep stops reading early.)
exported=$(aarch64-linux-gnu-nm -D --defined-only "$stripped")
for sym in Java_dev_pupil_NativePredictor_nativePredictInto uniffi_pupil_bindings_fn_constructor_predictor_from_bytes; do
    if ! grep -q " $sym\$" <<<"$exported"; then
        echo "error: $sym is not exported by $stripped" >&2
        exit 1
    fi
done
echo "   exports: JNI and uniffi symbols present"
# The size goal is reported, not gated: today's library is far over it (see README, "What is not tested here").
if [[ $ssize -gt $budget_bytes ]]; then
    echo "   note: the stripped aarch64 library is over the 3 MiB goal"
fi

if [[ "${PUPIL_SKIP_ANDROID:-0}" != 1 ]]; then
    echo "== 3. libpupil_bindings.a for aarch64-linux-android (Debian clang as assembler, no NDK)"
    t0=$SECONDS
    export CC_aarch64_linux_android=clang
    export CFLAGS_aarch64_linux_android="--target=aarch64-linux-android24"
    export AR_aarch64_linux_android=llvm-ar
    # Only the static library: linking the cdylib needs the NDK's sysroot and linker.
    cargo rustc -q -p pupil-bindings --lib --target aarch64-linux-android --profile mobile --crate-type staticlib
    a="$CARGO_TARGET_DIR/aarch64-linux-android/mobile/libpupil_bindings.a"
    printf '   %s: %d bytes (static archive, unlinked: not comparable with the .so)  (%d s)\n' "$a" "$(stat -c %s "$a")" "$((SECONDS - t0))"
    archive_syms=$(llvm-nm "$a" 2>/dev/null || true)
    if ! grep -q "T Java_dev_pupil_NativePredictor_nativePredictInto" <<<"$archive_syms"; then
        echo "error: the Android static library lacks the JNI entry points" >&2
        exit 1
    fi
fi
echo "== aarch64 checks done in $((SECONDS - t_start)) s"
