//! Parity: how far a student (f32 or quantized, on the host or on a phone) is from its teacher — metrics and
//! thresholds, the parity bundle format, `Model::verify_bundle` and per-layer divergence.
//!
//! ```no_run
//! use pupil_runtime::{Model, ModelOptions, parity::Bundle};
//! let model = Model::load("models/mnist-student.onnx", ModelOptions::default())?;
//! let bundle = Bundle::from_bytes(&std::fs::read("student.parity").unwrap())?;
//! let report = model.verify_bundle(&bundle)?;
//! println!("top-1 agreement with the teacher: {:.3}", report.vs_teacher.comparison.top1_agreement);
//! # Ok::<(), pupil_runtime::Error>(())
//! ```

pub mod bundle;
pub mod layers;
pub mod metrics;
pub mod verify;

pub use bundle::{Bundle, BundleMeta, CreatedBy};
pub use layers::{LayerDivergence, LayerReport, layer_divergence};
pub use metrics::{
    ClassAgreement, Comparison, Gap, Metric, ThresholdFailure, ThresholdSet, Thresholds, WorstExample, compare,
    to_logits,
};
pub use verify::{BundleSummary, GapReport, ParityReport};
