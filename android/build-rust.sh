#!/usr/bin/env bash
# Builds libpupil_bindings.so for Android with cargo-ndk into pupil/src/main/jniLibs/<abi>/, 16 KB page-aligned,
# and copies the sample's assets (model, parity bundle, digit image).
#
# Needs: the Android NDK r27+ (ANDROID_NDK_HOME), `cargo install cargo-ndk`, and
#   rustup target add aarch64-linux-android armv7-linux-androideabi x86_64-linux-android
# UNTESTED HERE: the machine this was written on has no NDK (see README.md).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

# 16 KB pages (required for apps targeting Android 15+ on 16 KB devices): align every LOAD segment.
export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,-z,max-page-size=16384 -C link-arg=-Wl,-z,common-page-size=16384"

cargo ndk \
    -t arm64-v8a -t armeabi-v7a -t x86_64 \
    --platform 24 \
    -o "$here/pupil/src/main/jniLibs" \
    build -p pupil-bindings --profile mobile

for so in "$here"/pupil/src/main/jniLibs/*/libpupil_bindings.so; do
    # Check the alignment of every LOAD segment (2**14 = 16 KB).
    if command -v llvm-readelf >/dev/null; then
        if llvm-readelf -lW "$so" | awk '/LOAD/ {print $NF}' | grep -qv '0x4000'; then
            echo "error: $so has LOAD segments not aligned to 16 KB" >&2
            exit 1
        fi
    fi
    printf '%-70s %8d bytes\n' "$so" "$(stat -c %s "$so")"
done

assets="$here/sample/src/main/assets"
mkdir -p "$assets"
model="${PUPIL_SAMPLE_MODEL:-$root/models/mnist-student.onnx}"
bundle="${PUPIL_SAMPLE_BUNDLE:-$root/models/mnist-student.bundle}"
if [[ -f "$model" ]]; then cp "$model" "$assets/model.onnx"; else echo "warning: no $model for the sample app" >&2; fi
if [[ -f "$bundle" ]]; then cp "$bundle" "$assets/parity.bundle"; else echo "warning: no $bundle for the sample app" >&2; fi
echo "now: (cd android && ./gradlew :sample:assembleDebug)"
