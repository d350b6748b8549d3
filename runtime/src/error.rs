//! The runtime's typed error: every way loading or running a model can fail, each naming what was expected and what was found.

use std::path::PathBuf;

/// Everything that can go wrong in `pupil-runtime`. No input of any kind panics: it becomes one of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model (or another file) could not be read from disk.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The bytes are not an ONNX model (protobuf decoding failed, or there is no graph).
    #[error("not an ONNX model: {reason}")]
    NotOnnx { reason: String },

    /// The graph uses an operator tract cannot run.
    #[error("unsupported operator `{op}` (domain `{domain}`) at node `{node}`")]
    UnsupportedOperator { op: String, domain: String, node: String },

    /// The graph is ONNX but tract could not analyse or optimise it (inconsistent shapes, bad attributes, ...).
    #[error("invalid model: {reason}")]
    InvalidModel { reason: String },

    /// A flat input buffer of the wrong length.
    #[error("wrong input length for `{input}`: expected {expected} values ({shape:?}), got {got}")]
    InputLength { input: String, expected: usize, got: usize, shape: Vec<usize> },

    /// An input tensor of the wrong shape.
    #[error("wrong input shape for `{input}`: expected {expected:?}, got {got:?}")]
    InputShape { input: String, expected: Vec<usize>, got: Vec<usize> },

    /// A NaN or infinite value in the input.
    #[error("non-finite input value {value} at index {index} of `{input}`")]
    NonFiniteInput { input: String, index: usize, value: f32 },

    /// The image bytes could not be decoded as PNG or JPEG.
    #[error("cannot decode image: {reason}")]
    UndecodableImage { reason: String },

    /// The image decodes, but its size is not what the model's preprocessing spec accepts.
    #[error(
        "wrong image size: expected {expected_width}x{expected_height}, got {got_width}x{got_height} (the preprocessing spec does not resize)"
    )]
    ImageSize { expected_width: u32, expected_height: u32, got_width: u32, got_height: u32 },

    /// The model carries no usable preprocessing spec, or one that contradicts its input shape.
    #[error("preprocessing spec: {reason}")]
    Preprocess { reason: String },

    /// Model metadata (labels, preprocessing, model card) is present but malformed.
    #[error("bad metadata `{key}`: {reason}")]
    Metadata { key: String, reason: String },

    /// The model's options ask for something the model cannot do.
    #[error("invalid options: {reason}")]
    Options { reason: String },

    /// A parity bundle is unreadable, tampered with, or made for another model.
    #[error("parity bundle: {reason}")]
    Bundle { reason: String },

    /// The model ran but failed inside tract.
    #[error("inference failed: {reason}")]
    Inference { reason: String },

    /// Writing a model (quantizer, exporter) failed.
    #[error("cannot write model: {reason}")]
    Write { reason: String },

    /// The quantizer refused its input (calibration data, an already quantized model, ...).
    #[error("quantization: {0}")]
    Quantize(crate::quantize::QuantizeError),

    /// A bug in pupil or tract: a panic caught at the boundary, never left to unwind into the caller.
    #[error("internal error (please report): {reason}")]
    Internal { reason: String },
}

/// The runtime's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// Runs `f`, turning a panic inside tract (or pupil) into [`Error::Internal`].
pub(crate) fn catch_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Internal { reason: format!("{what}: {msg}") })
        }
    }
}
