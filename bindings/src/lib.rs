//! pupil-bindings: the mobile surface of pupil-runtime: Kotlin and Swift bindings (uniffi) plus a JNI fast path.
//!
//! Two ways into the same library (`libpupil_bindings.so` on Android, a static library in an XCFramework on iOS):
//!
//! * **uniffi** ([`Predictor`]): load a model from a path or from bytes, `predict`, `predict_image`, `top_k`,
//!   specs and labels. Tensors cross as bytes (little-endian `f32`, see [`tensor`]), never as lists of boxed floats;
//!   errors arrive as typed Kotlin exceptions / Swift `throws` ([`PupilError`]).
//! * **JNI** ([`jni_bridge`], Kotlin class `dev.pupil.NativePredictor`): `predictInto(input, output)` reads and
//!   writes direct `ByteBuffer`s in place, for apps that run a model per camera frame.
//!
//! No panic crosses the boundary: every exported call runs under `catch_unwind` (uniffi's scaffolding, our
//! [`error::guard`], and jni's `EnvUnowned::with_env`), and the mobile profile keeps `panic = "unwind"`.

uniffi::setup_scaffolding!("pupil");

pub mod error;
pub mod jni_bridge;
pub mod predictor;
pub mod reports;
pub mod tensor;

pub use error::PupilError;
pub use predictor::{
    ClassScore, DeviceInfo, ElementKind, ModelSummary, PredictionResult, Predictor, PredictorOptions, TensorDim,
    TensorInfo,
};
pub use reports::{GapSummary, OperatorShare, ParityGap, ParityReport, ProfileReport};

/// Versions of the library: pupil-runtime's and tract's.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Versions {
    pub pupil: String,
    pub tract: String,
}

/// The versions this library was built from.
#[uniffi::export]
pub fn versions() -> Versions {
    Versions { pupil: pupil_runtime::VERSION.to_string(), tract: pupil_runtime::TRACT_VERSION.to_string() }
}
