//! [`Predictor`]: the uniffi object apps hold (Kotlin `dev.pupil.ffi.Predictor`, Swift `Predictor`), and the compact records it returns.

use std::collections::HashMap;
use std::sync::Arc;

use pupil_runtime::{Batch, Dim, ElementType, Model, ModelOptions, Prediction, TensorSpec};

use crate::error::{PupilError, guard};
use crate::tensor::{f32s_from_le_bytes, f32s_to_le_bytes};

/// How to load a model. Every field has a default, so `PredictorOptions()` in Kotlin / Swift is the usual choice.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PredictorOptions {
    /// Worker threads for matrix products (phones usually want 1 or 2).
    #[uniffi(default = 1)]
    pub threads: u32,
    /// The batch size the model is compiled for; `null`/`nil` compiles a symbolic batch (any size per call,
    /// slower for single examples).
    #[uniffi(default = Some(1))]
    pub batch: Option<u32>,
    /// Classes returned in `PredictionResult.top`.
    #[uniffi(default = 5)]
    pub top_k: u32,
}

impl Default for PredictorOptions {
    fn default() -> Self {
        PredictorOptions { threads: 1, batch: Some(1), top_k: 5 }
    }
}

impl PredictorOptions {
    /// The runtime's options, or an [`PupilError::Options`] naming the bad field.
    pub fn to_model_options(&self) -> Result<ModelOptions, PupilError> {
        if self.threads == 0 {
            return Err(PupilError::Options("threads must be at least 1, got 0".into()));
        }
        if self.top_k == 0 {
            return Err(PupilError::Options("top_k must be at least 1, got 0".into()));
        }
        let batch = match self.batch {
            Some(0) => return Err(PupilError::Options("a fixed batch must be at least 1, got 0".into())),
            Some(n) => Batch::Fixed(n as usize),
            None => Batch::Symbolic,
        };
        Ok(ModelOptions { batch, threads: self.threads as usize, top_k: self.top_k as usize })
    }
}

/// One ranked class.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ClassScore {
    pub index: u32,
    pub label: Option<String>,
    pub probability: f32,
    pub logit: f32,
}

/// The result of one prediction, compact: the winner as plain fields, the top-k as a short list, and the full
/// logits and probabilities as little-endian `f32` bytes (`classes * 4` bytes each; read them with
/// `ByteBuffer.wrap(b).order(LITTLE_ENDIAN).asFloatBuffer()` in Kotlin, `withUnsafeBytes` in Swift).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct PredictionResult {
    /// Index of the most probable class.
    pub class_index: u32,
    /// Its label, when the model has labels.
    pub label: Option<String>,
    /// Its probability.
    pub probability: f32,
    /// The `top_k` most probable classes, most probable first.
    pub top: Vec<ClassScore>,
    /// Raw outputs (log-probabilities when the model ends in Softmax), little-endian `f32`.
    pub logits: Vec<u8>,
    /// Softmax of the logits, little-endian `f32`.
    pub probabilities: Vec<u8>,
}

impl PredictionResult {
    fn from_prediction(p: Prediction) -> Self {
        let first = p.top.first();
        PredictionResult {
            class_index: first.map(|c| c.index as u32).unwrap_or(0),
            label: first.and_then(|c| c.label.clone()),
            probability: first.map(|c| c.probability).unwrap_or(0.0),
            top: p.top.iter().map(class_score).collect(),
            logits: f32s_to_le_bytes(&p.logits),
            probabilities: f32s_to_le_bytes(&p.probabilities),
        }
    }
}

fn class_score(c: &pupil_runtime::Class) -> ClassScore {
    ClassScore { index: c.index as u32, label: c.label.clone(), probability: c.probability, logit: c.logit }
}

/// One dimension of a tensor.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum TensorDim {
    Fixed {
        size: u64,
    },
    /// A symbolic dimension such as the batch size `N`.
    Symbol {
        name: String,
    },
}

/// Element types a tensor may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ElementKind {
    F32,
    F16,
    F64,
    Bf16,
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    Bool,
    String,
    Other,
}

impl From<ElementType> for ElementKind {
    fn from(t: ElementType) -> Self {
        match t {
            ElementType::F32 => ElementKind::F32,
            ElementType::F16 => ElementKind::F16,
            ElementType::F64 => ElementKind::F64,
            ElementType::Bf16 => ElementKind::Bf16,
            ElementType::I8 => ElementKind::I8,
            ElementType::U8 => ElementKind::U8,
            ElementType::I16 => ElementKind::I16,
            ElementType::U16 => ElementKind::U16,
            ElementType::I32 => ElementKind::I32,
            ElementType::U32 => ElementKind::U32,
            ElementType::I64 => ElementKind::I64,
            ElementType::U64 => ElementKind::U64,
            ElementType::Bool => ElementKind::Bool,
            ElementType::String => ElementKind::String,
            ElementType::Other => ElementKind::Other,
        }
    }
}

/// A named tensor the model takes or returns, as declared in the file.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<TensorDim>,
    pub dtype: ElementKind,
    /// The shape written like `[N, 1, 28, 28]`.
    pub shape_text: String,
}

impl From<&TensorSpec> for TensorInfo {
    fn from(t: &TensorSpec) -> Self {
        TensorInfo {
            name: t.name.clone(),
            shape: t
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => TensorDim::Fixed { size: *n as u64 },
                    Dim::Symbol(s) => TensorDim::Symbol { name: s.clone() },
                })
                .collect(),
            dtype: t.dtype.into(),
            shape_text: t.shape_string(),
        }
    }
}

/// Facts about the loaded model file.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ModelSummary {
    /// sha256 of the model bytes, lowercase hex.
    pub sha256: String,
    pub file_size: u64,
    pub opset: i64,
    pub producer: String,
    pub parameters: u64,
    pub node_count: u64,
    /// Node count per operator.
    pub operators: HashMap<String, u64>,
}

/// The device a report was made on.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DeviceInfo {
    pub cpu: String,
    pub arch: String,
    pub cores: u32,
    pub simd: Vec<String>,
    pub os: String,
    pub pupil_version: String,
    pub tract_version: String,
}

impl From<pupil_runtime::DeviceFingerprint> for DeviceInfo {
    fn from(d: pupil_runtime::DeviceFingerprint) -> Self {
        DeviceInfo {
            cpu: d.cpu,
            arch: d.arch,
            cores: d.cores as u32,
            simd: d.simd,
            os: d.os,
            pupil_version: d.pupil_version,
            tract_version: d.tract_version,
        }
    }
}

/// The device this code runs on.
#[uniffi::export]
pub fn device_info() -> DeviceInfo {
    pupil_runtime::DeviceFingerprint::current().into()
}

/// A loaded, optimised model. Thread-safe: one `Predictor` may serve many threads at once.
#[derive(Debug, uniffi::Object)]
pub struct Predictor {
    model: Arc<Model>,
}

impl Predictor {
    /// The runtime model behind this predictor (shared with the JNI fast path).
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    fn input(&self, bytes: &[u8]) -> Result<Vec<f32>, PupilError> {
        f32s_from_le_bytes(bytes, "the input")
    }

    /// RGBA pixels → model input, following the model's preprocessing spec like `Model::preprocess_image`.
    fn rgba_input(&self, pixels: Vec<u8>, width: u32, height: u32) -> Result<Vec<f32>, PupilError> {
        use image::imageops::FilterType;
        use pupil_runtime::{ColorMode, ResizeMode};
        let spec = self.model.meta().preprocess.as_ref().ok_or_else(|| {
            PupilError::Preprocess(format!(
                "preprocessing spec: the model has none and its input shape {} does not look like an image",
                self.model.inputs()[0].shape_string()
            ))
        })?;
        if spec.len() != self.model.example_len() {
            return Err(PupilError::Preprocess(format!(
                "preprocessing spec: it makes {} values but the model takes {} per example",
                spec.len(),
                self.model.example_len()
            )));
        }
        let expected = width as usize * height as usize * 4;
        if width == 0 || height == 0 || pixels.len() != expected {
            return Err(PupilError::ImageSize(format!(
                "RGBA pixels for a {width}x{height} image must be {expected} bytes (4 per pixel), got {}",
                pixels.len()
            )));
        }
        if (width, height) != (spec.width, spec.height) && spec.resize == ResizeMode::Exact {
            return Err(PupilError::ImageSize(format!(
                "wrong image size: expected {}x{}, got {width}x{height} (the preprocessing spec does not resize)",
                spec.width, spec.height
            )));
        }
        let rgba = image::RgbaImage::from_raw(width, height, pixels)
            .ok_or_else(|| PupilError::Internal("RGBA buffer size checked above".into()))?;
        let mut img = image::DynamicImage::ImageRgba8(rgba);
        if (width, height) != (spec.width, spec.height) {
            img = img.resize_exact(spec.width, spec.height, FilterType::Triangle);
        }
        let (pixels, channels) = match spec.color {
            ColorMode::Gray => (img.to_luma8().into_raw(), 1),
            ColorMode::Rgb => (img.to_rgb8().into_raw(), 3),
        };
        Ok(pupil_runtime::preprocess::pixels_to_input(&pixels, spec, channels))
    }
}

#[uniffi::export]
impl Predictor {
    /// Loads a model file (and its `NAME.card.json` when one sits beside it).
    #[uniffi::constructor]
    pub fn from_path(path: String, options: PredictorOptions) -> Result<Arc<Self>, PupilError> {
        guard("loading a model", || {
            let model = Model::load(&path, options.to_model_options()?)?;
            Ok(Arc::new(Predictor { model: Arc::new(model) }))
        })
    }

    /// Loads a model from memory (an app asset).
    #[uniffi::constructor]
    pub fn from_bytes(model: Vec<u8>, options: PredictorOptions) -> Result<Arc<Self>, PupilError> {
        guard("loading a model", || {
            let model = Model::from_bytes(&model, options.to_model_options()?)?;
            Ok(Arc::new(Predictor { model: Arc::new(model) }))
        })
    }

    /// Loads a model from memory with its model card's JSON (labels, preprocessing).
    #[uniffi::constructor]
    pub fn from_bytes_with_card(
        model: Vec<u8>,
        card_json: String,
        options: PredictorOptions,
    ) -> Result<Arc<Self>, PupilError> {
        guard("loading a model", || {
            let model = Model::from_bytes_with_card(&model, &card_json, options.to_model_options()?)?;
            Ok(Arc::new(Predictor { model: Arc::new(model) }))
        })
    }

    /// Predicts one example given as `example_len() * 4` bytes of little-endian `f32`.
    pub fn predict(&self, input: Vec<u8>) -> Result<PredictionResult, PupilError> {
        guard("predict", || {
            let input = self.input(&input)?;
            Ok(PredictionResult::from_prediction(self.model.predict(&input)?))
        })
    }

    /// Predicts `n` examples laid out one after another; one result per example.
    pub fn predict_batch(&self, input: Vec<u8>) -> Result<Vec<PredictionResult>, PupilError> {
        guard("predict_batch", || {
            let input = self.input(&input)?;
            Ok(self.model.predict_batch(&input)?.into_iter().map(PredictionResult::from_prediction).collect())
        })
    }

    /// Runs one example and returns the raw outputs (`classes() * 4` bytes, little-endian `f32`).
    pub fn run(&self, input: Vec<u8>) -> Result<Vec<u8>, PupilError> {
        guard("run", || {
            let input = self.input(&input)?;
            Ok(f32s_to_le_bytes(&self.model.run(&input)?))
        })
    }

    /// Decodes a PNG or JPEG, preprocesses it with the model's spec and predicts.
    pub fn predict_image(&self, image: Vec<u8>) -> Result<PredictionResult, PupilError> {
        guard("predict_image", || Ok(PredictionResult::from_prediction(self.model.predict_image(&image)?)))
    }

    /// Decodes and preprocesses an image into the model's input (little-endian `f32` bytes), without running it.
    pub fn preprocess_image(&self, image: Vec<u8>) -> Result<Vec<u8>, PupilError> {
        guard("preprocess_image", || Ok(f32s_to_le_bytes(&self.model.preprocess_image(&image)?)))
    }

    /// Predicts from raw RGBA pixels (8 bits per channel, row-major, `width * height * 4` bytes: what Android's
    /// `Bitmap.copyPixelsToBuffer` gives for `ARGB_8888`, or a `CGContext` with `premultipliedLast`), converted,
    /// resized and normalised by the model's preprocessing spec exactly as `predict_image` would.
    pub fn predict_rgba(&self, pixels: Vec<u8>, width: u32, height: u32) -> Result<PredictionResult, PupilError> {
        guard("predict_rgba", || {
            let input = self.rgba_input(pixels, width, height)?;
            Ok(PredictionResult::from_prediction(self.model.predict(&input)?))
        })
    }

    /// Preprocesses raw RGBA pixels into the model's input (little-endian `f32` bytes), without running it.
    pub fn preprocess_rgba(&self, pixels: Vec<u8>, width: u32, height: u32) -> Result<Vec<u8>, PupilError> {
        guard("preprocess_rgba", || Ok(f32s_to_le_bytes(&self.rgba_input(pixels, width, height)?)))
    }

    /// The `k` most probable classes for one example, most probable first.
    pub fn top_k(&self, input: Vec<u8>, k: u32) -> Result<Vec<ClassScore>, PupilError> {
        guard("top_k", || {
            if k == 0 {
                return Err(PupilError::Options("k must be at least 1, got 0".into()));
            }
            let input = self.input(&input)?;
            let out = self.model.run(&input)?;
            let p = Prediction::from_outputs(
                &out,
                self.model.output_is_probability(),
                self.model.labels(),
                (k as usize).min(self.model.classes()),
            );
            Ok(p.top.iter().map(class_score).collect())
        })
    }

    /// The model's input, as declared in the file.
    pub fn input_spec(&self) -> TensorInfo {
        (&self.model.inputs()[0]).into()
    }

    /// The model's outputs, as declared in the file (the first one holds the class scores).
    pub fn output_specs(&self) -> Vec<TensorInfo> {
        self.model.outputs().iter().map(TensorInfo::from).collect()
    }

    /// Shape of one example (the input shape without its batch dimension).
    pub fn example_shape(&self) -> Vec<u32> {
        self.model.example_shape().iter().map(|&d| d as u32).collect()
    }

    /// Values in one example (`predict` takes four times as many bytes).
    pub fn example_len(&self) -> u32 {
        self.model.example_len() as u32
    }

    /// Number of classes (values `run` returns per example).
    pub fn classes(&self) -> u32 {
        self.model.classes() as u32
    }

    /// Class labels, empty when the model has none.
    pub fn labels(&self) -> Vec<String> {
        self.model.labels().map(<[String]>::to_vec).unwrap_or_default()
    }

    /// Facts about the model file.
    pub fn summary(&self) -> ModelSummary {
        let info = self.model.info();
        ModelSummary {
            sha256: info.sha256.clone(),
            file_size: info.file_size,
            opset: info.opset,
            producer: info.producer.clone(),
            parameters: info.parameters,
            node_count: info.node_count as u64,
            operators: info.operators.iter().map(|(k, v)| (k.clone(), *v as u64)).collect(),
        }
    }
}
