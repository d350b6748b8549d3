#!/usr/bin/env bash
# Generates pupil's Kotlin and Swift bindings from the host build of libpupil_bindings with the workspace's
# uniffi-bindgen, into the committed locations:
#   android/pupil/src/main/kotlin/dev/pupil/ffi/pupil.kt      (Kotlin, package dev.pupil.ffi)
#   ios/Sources/Pupil/Pupil.swift                              (Swift)
#   ios/include/PupilBindingsFFI.h, ios/include/module.modulemap (C header + module map for the XCFramework)
#
#   bindings/scripts/generate.sh           regenerate and overwrite
#   bindings/scripts/generate.sh --check   regenerate into a temp dir; exit 1 if the committed files are stale
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pupil/target}"
check=0
[[ "${1:-}" == "--check" ]] && check=1

# Two invocations: building them together would unify features and rebuild tract in another variant.
cargo build -q -p pupil-bindings
cargo build -q -p uniffi-bindgen
lib="$CARGO_TARGET_DIR/debug/libpupil_bindings.so"
bindgen="$CARGO_TARGET_DIR/debug/uniffi-bindgen"

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$bindgen" generate --library --metadata-no-deps --no-format --language kotlin --out-dir "$out/kotlin" "$lib" >/dev/null
"$bindgen" generate --library --metadata-no-deps --no-format --language swift --out-dir "$out/swift" "$lib" >/dev/null

declare -A files=(
    ["$out/kotlin/dev/pupil/ffi/pupil.kt"]="android/pupil/src/main/kotlin/dev/pupil/ffi/pupil.kt"
    ["$out/swift/Pupil.swift"]="ios/Sources/Pupil/Pupil.swift"
    ["$out/swift/PupilBindingsFFI.h"]="ios/include/PupilBindingsFFI.h"
    ["$out/swift/PupilBindingsFFI.modulemap"]="ios/include/module.modulemap"
)
stale=0
for src in "${!files[@]}"; do
    dst="${files[$src]}"
    if [[ ! -f "$src" ]]; then
        echo "error: uniffi-bindgen did not write $src" >&2
        ls -R "$out" >&2
        exit 1
    fi
    if (( check )); then
        if ! cmp -s "$src" "$dst"; then
            echo "STALE: $dst differs from freshly generated bindings" >&2
            diff -u "$dst" "$src" | head -40 >&2 || true
            stale=1
        fi
    else
        mkdir -p "$(dirname "$dst")"
        cp "$src" "$dst"
        echo "wrote $dst"
    fi
done
if (( check )); then
    if (( stale )); then
        echo "generated bindings are stale: run bindings/scripts/generate.sh and commit the result" >&2
        exit 1
    fi
    echo "generated Kotlin and Swift bindings are up to date"
fi
