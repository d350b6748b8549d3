//! The error apps see: [`PupilError`], one variant per way pupil-runtime can fail, and [`guard`], which keeps panics on the Rust side.

use pupil_runtime::Error;

/// Everything that can go wrong behind the bindings. Kotlin: `PupilException.<Variant>` (a `kotlin.Exception`
/// whose `message` is the text below); Swift: `PupilError.<variant>(message:)`, thrown.
///
/// Every message names what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum PupilError {
    /// The model file (or its card) could not be read.
    #[error("{0}")]
    Io(String),
    /// The bytes are not an ONNX model.
    #[error("{0}")]
    NotOnnx(String),
    /// The model uses an operator the runtime cannot run.
    #[error("{0}")]
    UnsupportedOperator(String),
    /// The model is ONNX but cannot be analysed or optimised.
    #[error("{0}")]
    InvalidModel(String),
    /// The input has the wrong number of values, or bytes that are not whole little-endian `f32`s.
    #[error("{0}")]
    InputLength(String),
    /// The input has the wrong shape.
    #[error("{0}")]
    InputShape(String),
    /// The input holds a NaN or an infinity.
    #[error("{0}")]
    NonFiniteInput(String),
    /// The image bytes are not a PNG or JPEG.
    #[error("{0}")]
    UndecodableImage(String),
    /// The image has a size the model's preprocessing does not accept.
    #[error("{0}")]
    ImageSize(String),
    /// The model has no usable preprocessing spec.
    #[error("{0}")]
    Preprocess(String),
    /// Model metadata (labels, preprocessing, card) is malformed.
    #[error("{0}")]
    Metadata(String),
    /// The options ask for something the model cannot do (threads 0, a batch the model does not have, k 0...).
    #[error("{0}")]
    Options(String),
    /// A parity bundle is unreadable, tampered with, or made for another model.
    #[error("{0}")]
    Bundle(String),
    /// The model ran but failed.
    #[error("{0}")]
    Inference(String),
    /// A bug: a panic caught at the boundary, or an error this version of the bindings does not know.
    #[error("{0}")]
    Internal(String),
}

impl From<Error> for PupilError {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::Io { .. } => PupilError::Io(msg),
            Error::NotOnnx { .. } => PupilError::NotOnnx(msg),
            Error::UnsupportedOperator { .. } => PupilError::UnsupportedOperator(msg),
            Error::InvalidModel { .. } => PupilError::InvalidModel(msg),
            Error::InputLength { .. } => PupilError::InputLength(msg),
            Error::InputShape { .. } => PupilError::InputShape(msg),
            Error::NonFiniteInput { .. } => PupilError::NonFiniteInput(msg),
            Error::UndecodableImage { .. } => PupilError::UndecodableImage(msg),
            Error::ImageSize { .. } => PupilError::ImageSize(msg),
            Error::Preprocess { .. } => PupilError::Preprocess(msg),
            Error::Metadata { .. } => PupilError::Metadata(msg),
            Error::Options { .. } => PupilError::Options(msg),
            Error::Bundle { .. } => PupilError::Bundle(msg),
            Error::Inference { .. } => PupilError::Inference(msg),
            Error::Write { .. } | Error::Internal { .. } => PupilError::Internal(msg),
            _ => PupilError::Internal(msg),
        }
    }
}

/// The message carried by a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `f`, turning a panic into [`PupilError::Internal`] naming `what` was being done.
pub(crate) fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, PupilError>) -> Result<T, PupilError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(PupilError::Internal(format!(
            "internal error (please report): {what}: {}",
            panic_message(payload.as_ref())
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_turns_a_panic_into_internal() {
        let r: Result<(), _> = guard("testing", || panic!("boom {}", 42));
        assert_eq!(r, Err(PupilError::Internal("internal error (please report): testing: boom 42".into())));
    }

    #[test]
    fn runtime_errors_keep_their_kind_and_message() {
        let e = Error::InputLength { input: "x".into(), expected: 784, got: 3, shape: vec![1, 784] };
        let msg = e.to_string();
        assert_eq!(PupilError::from(e), PupilError::InputLength(msg.clone()));
        assert!(msg.contains("784") && msg.contains('3'), "{msg}");
    }
}
