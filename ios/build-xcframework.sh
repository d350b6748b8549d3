#!/usr/bin/env bash
# Builds PupilBindingsFFI.xcframework: libpupil_bindings.a for iOS devices (aarch64-apple-ios) and the simulator
# (aarch64-apple-ios-sim + x86_64-apple-ios joined with lipo), with the generated C header and module map.
#
# Needs macOS with Xcode (xcodebuild, lipo) and
#   rustup target add aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios
# UNTESTED HERE: the machine this was written on is Linux without Xcode or a Swift toolchain.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
profile=mobile
lib=libpupil_bindings.a

export IPHONEOS_DEPLOYMENT_TARGET="${IPHONEOS_DEPLOYMENT_TARGET:-15.0}"
for t in aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios; do
    cargo build -p pupil-bindings --profile "$profile" --target "$t"
done

# The generated header and module map must be current (CI checks the committed ones are not stale).
"$root/bindings/scripts/generate.sh" --check

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/headers" "$work/sim"
cp "$here/include/PupilBindingsFFI.h" "$work/headers/"
cp "$here/include/module.modulemap" "$work/headers/module.modulemap"

lipo -create \
    "$target_dir/aarch64-apple-ios-sim/$profile/$lib" \
    "$target_dir/x86_64-apple-ios/$profile/$lib" \
    -output "$work/sim/$lib"

rm -rf "$here/PupilBindingsFFI.xcframework"
xcodebuild -create-xcframework \
    -library "$target_dir/aarch64-apple-ios/$profile/$lib" -headers "$work/headers" \
    -library "$work/sim/$lib" -headers "$work/headers" \
    -output "$here/PupilBindingsFFI.xcframework"

ls -l "$target_dir/aarch64-apple-ios/$profile/$lib" "$work/sim/$lib"
echo "built $here/PupilBindingsFFI.xcframework; now: (cd ios && swift build) or add the package in Xcode"
