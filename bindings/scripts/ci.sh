#!/usr/bin/env bash
# Everything mobile, for .ci/run: Rust tests of the bindings, generated bindings up to date, host JVM tests of the
# Kotlin layer, and aarch64 under qemu (runtime tests, library size, Android static library). Prints the time
# each part took. Exits non-zero when any part fails.
#
#   bindings/scripts/ci.sh            all parts
#   PUPIL_SKIP_AARCH64=1 ...          skip the cross builds (e.g. on a machine without the cross toolchains)
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pupil/target}"
status=0
summary=()
part() {
    local name="$1"
    shift
    local t0=$SECONDS
    echo
    echo "######## mobile: $name"
    if "$@"; then
        summary+=("ok      $(printf '%4d' $((SECONDS - t0))) s  $name")
    else
        summary+=("FAILED  $(printf '%4d' $((SECONDS - t0))) s  $name")
        status=1
    fi
}
t_all=$SECONDS
part "cargo test -p pupil-bindings" cargo test -p pupil-bindings
part "generated Kotlin/Swift bindings up to date" "$here/generate.sh" --check
part "host JVM tests (Kotlin + JNI)" "$here/jvm-test.sh"
if [[ "${PUPIL_SKIP_AARCH64:-0}" != 1 ]]; then
    part "aarch64 under qemu + library size + Android staticlib" "$here/aarch64-test.sh"
fi
echo
echo "######## mobile summary ($((SECONDS - t_all)) s)"
printf '%s\n' "${summary[@]}"
exit $status
