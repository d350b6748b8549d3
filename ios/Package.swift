// swift-tools-version:5.9
// pupil for iOS: the Rust library as an XCFramework (built by build-xcframework.sh) plus the generated uniffi
// Swift bindings and a small async wrapper. UNTESTED HERE: no Swift toolchain on the machine that wrote this.
import PackageDescription

let package = Package(
    name: "Pupil",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "Pupil", targets: ["Pupil"]),
    ],
    targets: [
        // libpupil_bindings.a for device, simulator (arm64 + x86_64 fat) and the C header + module map of the
        // `PupilBindingsFFI` module the generated Swift imports.
        .binaryTarget(name: "PupilBindingsFFI", path: "PupilBindingsFFI.xcframework"),
        // Generated (Sources/Pupil/Pupil.swift, by bindings/scripts/generate.sh) + hand-written (PupilModel.swift).
        .target(
            name: "Pupil",
            dependencies: ["PupilBindingsFFI"],
            path: "Sources/Pupil"
        ),
        .testTarget(name: "PupilTests", dependencies: ["Pupil"], path: "Tests/PupilTests"),
    ]
)
