#!/usr/bin/env bash
# Host JVM tests of pupil's Kotlin layer (generated uniffi Kotlin + dev.pupil wrapper + JNI NativePredictor)
# against the host build of libpupil_bindings, compared bit for bit with pupil-runtime's outputs in Rust.
#
#   bindings/scripts/jvm-test.sh [STRESS_PREDICTIONS]      (default 100000)
#
# Needs Java 17, Debian's libjna-java (/usr/share/java/jna.jar) and pip (for the Kotlin compiler, which ships
# inside the PyPI package kotlin-jupyter-kernel; cached in ~/.cache/pupil/kotlin). Prints "N passed, M failed"
# and exits non-zero on any failure.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pupil/target}"
stress="${1:-100000}"
kjk_version=0.19.0.944
kdir="$HOME/.cache/pupil/kotlin"
compiler="$kdir/kotlin-jupyter-kernel-0.19.0-944-all.jar"
stdlib="$kdir/kotlin-stdlib-2.3.10-RC.jar"
coroutines="$kdir/kotlinx-coroutines-core.jar"
jna="${JNA_JAR:-/usr/share/java/jna.jar}"

if [[ ! -f "$jna" ]]; then
    echo "error: $jna not found: apt-get install -y libjna-java (or set JNA_JAR)" >&2
    exit 1
fi
if [[ ! -f "$compiler" || ! -f "$stdlib" || ! -f "$coroutines" ]]; then
    echo "== fetching the Kotlin compiler (PyPI kotlin-jupyter-kernel==$kjk_version) into $kdir"
    mkdir -p "$kdir"
    tmp="$(mktemp -d)"
    python3 -m pip download -q --no-deps -d "$tmp" "kotlin-jupyter-kernel==$kjk_version"
    (cd "$tmp" && unzip -q -o ./*.whl 'run_kotlin_kernel/jars/*')
    cp "$tmp/run_kotlin_kernel/jars/$(basename "$compiler")" "$tmp/run_kotlin_kernel/jars/$(basename "$stdlib")" "$kdir/"
    # kotlinx-coroutines (for the wrapper's suspend functions) is inside the kernel jar: take it out on its own.
    mkdir -p "$tmp/co"
    (cd "$tmp/co" && unzip -q -o "$compiler" 'kotlinx/coroutines/*' 'META-INF/kotlinx-coroutines-core.kotlin_module' \
        && jar cf "$coroutines.tmp" . && mv "$coroutines.tmp" "$coroutines")
    rm -rf "$tmp"
fi

echo "== building libpupil_bindings (host) and the Rust reference outputs"
cargo build -q -p pupil-bindings
libdir="$CARGO_TARGET_DIR/debug"
fixtures="$CARGO_TARGET_DIR/jvm-fixtures"
model_args=()
if [[ -f "$root/models/mnist-student.onnx" ]]; then
    model_args=(--model "$root/models/mnist-student.onnx")
fi
cargo run -q -p pupil-bindings --example jvm_fixtures -- "$fixtures" "${model_args[@]}"

sources=(
    android/pupil/src/main/kotlin/dev/pupil/ffi/pupil.kt
    android/pupil/src/main/kotlin/dev/pupil/Tensors.kt
    android/pupil/src/main/kotlin/dev/pupil/PupilModel.kt
    android/pupil/src/main/kotlin/dev/pupil/NativePredictor.kt
    bindings/tests/kotlin/PupilJvmTest.kt
)
classes="$CARGO_TARGET_DIR/jvm-test-classes"
stamp="$(cat "${sources[@]}" | sha256sum | cut -c1-16)"
if [[ "$(cat "$classes/.stamp" 2>/dev/null)" != "$stamp" ]]; then
    echo "== compiling ${#sources[@]} Kotlin files with K2JVMCompiler"
    rm -rf "$classes"
    mkdir -p "$classes"
    java -cp "$compiler" org.jetbrains.kotlin.cli.jvm.K2JVMCompiler \
        -no-stdlib -no-reflect -jvm-target 17 -nowarn \
        -cp "$stdlib:$coroutines:$jna" -d "$classes" "${sources[@]}"
    echo "$stamp" > "$classes/.stamp"
else
    echo "== Kotlin classes up to date"
fi

echo "== running the JVM tests"
# The heap is fully committed and touched up front, so RSS growth during the test is native memory, not heap growth.
java -Xms256m -Xmx256m -XX:+AlwaysPreTouch -Xss4m \
    -Djna.library.path="$libdir" -Djava.library.path="$libdir" \
    -cp "$classes:$stdlib:$coroutines:$jna" dev.pupil.test.PupilJvmTestKt "$fixtures" "$stress"
