//! `DistillError`: everything that can go wrong training, distilling or exporting a student, as typed errors.

use std::path::PathBuf;

use crate::data::DataError;

/// An error from `pupil-distill`. Input problems are reported before any training starts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistillError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("recipe {origin}: {reason}")]
    Recipe { origin: String, reason: String },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("the transfer set `{name}` is empty")]
    EmptyTransferSet { name: String },
    #[error("examples of `{data}` have {got} values but the recipe's model.input {shape:?} needs {expected}")]
    InputSize { data: String, shape: Vec<usize>, expected: usize, got: usize },
    #[error("the teacher {teacher} takes inputs of {expected} values but examples of `{data}` have {got}")]
    TeacherInput { teacher: PathBuf, data: String, expected: usize, got: usize },
    #[error("the teacher {teacher} outputs {got} values per example but the student recipe has {expected} classes")]
    TeacherClasses { teacher: PathBuf, expected: usize, got: usize },
    #[error("`{data}` has labels up to {max} but the recipe's model has {classes} classes")]
    LabelRange { data: String, max: u32, classes: usize },
    #[error("`pupil train` needs labels but `{data}` has none")]
    NoLabels { data: String },
    #[error("teacher {path}: {source}")]
    Teacher {
        path: PathBuf,
        #[source]
        source: pupil_runtime::Error,
    },
    #[error("the teacher {path} produced a non-finite output for example {index}")]
    TeacherNonFinite { path: PathBuf, index: usize },
    #[error(
        "the loss became {value} at epoch {epoch}, batch {batch}: training stopped; the last good checkpoint (epoch {last_good}) is kept in {checkpoint}"
    )]
    NonFiniteLoss { value: f32, epoch: usize, batch: usize, last_good: usize, checkpoint: PathBuf },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error(
        "the checkpoint in {path} was made by a different recipe or data set ({reason}); delete it or run without --resume"
    )]
    CheckpointMismatch { path: PathBuf, reason: String },
    #[error(
        "the exported ONNX {path} differs from the trained network by {max_diff:e} (allowed {tolerance:e}) on {examples} examples"
    )]
    ExportParity { path: PathBuf, max_diff: f32, tolerance: f32, examples: usize },
    #[error("exporting {path}: {source}")]
    Export {
        path: PathBuf,
        #[source]
        source: pupil_runtime::Error,
    },
    #[error(
        "the variant `{variant}` of `{data}` has {got_len} examples of {got_values} values, expected {expected_len} of {expected_values}"
    )]
    VariantShape {
        data: String,
        variant: String,
        expected_len: usize,
        expected_values: usize,
        got_len: usize,
        got_values: usize,
    },
    #[error("training engine: {0}")]
    Engine(String),
}

/// `Result` with a [`DistillError`].
pub type Result<T, E = DistillError> = std::result::Result<T, E>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DistillError {
    let path = path.into();
    move |source| DistillError::Io { path, source }
}
