//! pupil-runtime: the lean on-device half of pupil. Loads an ONNX student with tract, runs it, and reads the
//! metadata apps need (preprocessing spec, labels). No training code, no CLI dependencies: this is what ships
//! inside a phone app.
//!
//! ```no_run
//! use pupil_runtime::{Model, ModelOptions};
//! let model = Model::load("models/mnist-student.onnx", ModelOptions::default())?;
//! let prediction = model.predict(&vec![0.0; 784])?;
//! println!("class {} with p = {}", prediction.top[0].index, prediction.top[0].probability);
//! # Ok::<(), pupil_runtime::Error>(())
//! ```

pub mod device;
mod digest;
pub mod error;
pub mod kernels;
pub mod meta;
pub mod model;
pub mod onnx;
pub mod parity;
pub mod prediction;
pub mod preprocess;
pub mod profile;
pub mod quantize;
pub mod spec;

pub use device::DeviceFingerprint;
pub use error::{Error, Result};
pub use meta::{ColorMode, Layout, ModelMeta, PreprocessSpec, ResizeMode};
pub use model::{Batch, Model, ModelInfo, ModelOptions};
pub use prediction::{Class, Prediction};
pub use profile::{ProfileOptions, ProfileReport};
pub use quantize::{QuantizeOptions, QuantizeReport};
pub use spec::{Dim, ElementType, TensorSpec};

/// Version of pupil-runtime.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Version of tract pupil-runtime is built on.
pub const TRACT_VERSION: &str = "0.23.9";
