//! Metadata a model carries for apps: the preprocessing spec and class labels, read from ONNX `metadata_props` or a model card beside the file.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// ONNX `metadata_props` key holding the [`PreprocessSpec`] as JSON.
pub const PREPROCESS_KEY: &str = "pupil.preprocess";
/// ONNX `metadata_props` key holding the class labels as a JSON array of strings.
pub const LABELS_KEY: &str = "pupil.labels";
/// Suffix of the model card that may sit beside a model (`student.onnx` → `student.card.json`).
pub const CARD_SUFFIX: &str = "card.json";

/// How an image's pixels are laid out in the model's input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[N, C, H, W]` (also used for flat `[N, C*H*W]` inputs, in that order).
    Nchw,
    /// `[N, H, W, C]`.
    Nhwc,
}

/// The colour model the network expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorMode {
    /// One channel, luma.
    Gray,
    /// Three channels, R, G, B.
    Rgb,
}

impl ColorMode {
    /// Number of channels.
    pub fn channels(self) -> usize {
        match self {
            ColorMode::Gray => 1,
            ColorMode::Rgb => 3,
        }
    }
}

/// What to do with an image whose size differs from the model's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Stretch to the model's size with a triangle (bilinear) filter.
    #[default]
    Stretch,
    /// Refuse any image that is not exactly the model's size.
    Exact,
}

/// How raw image bytes become the model's input: `value = (pixel · scale − mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    pub width: u32,
    pub height: u32,
    pub color: ColorMode,
    pub layout: Layout,
    #[serde(default)]
    pub resize: ResizeMode,
    /// Multiplies each 0–255 pixel first (1/255 maps to 0–1).
    pub scale: f32,
    /// Per-channel mean subtracted after scaling (one value applies to every channel).
    #[serde(default = "zero")]
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by last (one value applies to every channel).
    #[serde(default = "one")]
    pub std: Vec<f32>,
    /// Invert pixel intensities (255 − p) before scaling: MNIST digits are white on black, photos of ink are not.
    #[serde(default)]
    pub invert: bool,
}

fn zero() -> Vec<f32> {
    vec![0.0]
}
fn one() -> Vec<f32> {
    vec![1.0]
}

impl PreprocessSpec {
    /// The spec pupil uses for MNIST digits: 28×28 gray, scaled to 0–1.
    pub fn mnist(layout: Layout) -> Self {
        PreprocessSpec {
            width: 28,
            height: 28,
            color: ColorMode::Gray,
            layout,
            resize: ResizeMode::Stretch,
            scale: 1.0 / 255.0,
            mean: vec![0.0],
            std: vec![1.0],
            invert: false,
        }
    }

    /// Number of values one preprocessed image has.
    pub fn len(&self) -> usize {
        self.width as usize * self.height as usize * self.color.channels()
    }

    /// True when the spec describes an empty image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks internal consistency (positive size, mean/std lengths, no zero std).
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::Preprocess { reason });
        if self.width == 0 || self.height == 0 {
            return bad(format!("image size must be positive, got {}x{}", self.width, self.height));
        }
        let c = self.color.channels();
        for (name, v) in [("mean", &self.mean), ("std", &self.std)] {
            if v.len() != 1 && v.len() != c {
                return bad(format!("`{name}` needs 1 or {c} values, got {}", v.len()));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return bad(format!("`{name}` has a non-finite value"));
            }
        }
        if self.std.contains(&0.0) {
            return bad("`std` has a zero".into());
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return bad(format!("`scale` must be finite and non-zero, got {}", self.scale));
        }
        Ok(())
    }

    /// Infers a spec from an image-like input shape (`[N,C,H,W]`, `[N,H,W,C]` or `[N, H*W]` with a square H=W).
    pub fn infer_from_shape(shape: &[usize]) -> Option<Self> {
        let mut spec = PreprocessSpec::mnist(Layout::Nchw);
        match shape {
            [_, c @ (1 | 3), h, w] => {
                spec.color = if *c == 1 { ColorMode::Gray } else { ColorMode::Rgb };
                (spec.height, spec.width) = (*h as u32, *w as u32);
            }
            [_, h, w, c @ (1 | 3)] => {
                spec.layout = Layout::Nhwc;
                spec.color = if *c == 1 { ColorMode::Gray } else { ColorMode::Rgb };
                (spec.height, spec.width) = (*h as u32, *w as u32);
            }
            [_, n] => {
                let side = (*n as f64).sqrt().round() as usize;
                if side * side != *n {
                    return None;
                }
                (spec.height, spec.width) = (side as u32, side as u32);
            }
            _ => return None,
        }
        Some(spec)
    }
}

/// Where a model's preprocessing spec came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpecSource {
    /// ONNX `metadata_props`.
    Onnx,
    /// A model card JSON beside the model file.
    ModelCard,
    /// Guessed from the input shape (scale 1/255, no mean/std): embed a spec to be sure.
    Inferred,
}

/// The metadata an app needs, gathered from the model and its card.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub preprocess: Option<PreprocessSpec>,
    pub preprocess_source: Option<SpecSource>,
    pub labels: Option<Vec<String>>,
    /// Every `metadata_props` entry, as written.
    pub props: Vec<(String, String)>,
}

/// The parts of a model card JSON (written by `pupil distill`) the runtime reads; other fields are ignored here.
#[derive(Debug, Clone, Default, Deserialize)]
struct CardView {
    #[serde(default)]
    preprocess: Option<PreprocessSpec>,
    #[serde(default)]
    labels: Option<Vec<String>>,
}

impl ModelMeta {
    /// Reads the spec and labels from `metadata_props`.
    pub(crate) fn from_props(props: Vec<(String, String)>) -> Result<Self> {
        let mut meta = ModelMeta { props, ..Default::default() };
        for (k, v) in &meta.props {
            if k == PREPROCESS_KEY {
                let spec: PreprocessSpec =
                    serde_json::from_str(v).map_err(|e| Error::Metadata { key: k.clone(), reason: e.to_string() })?;
                spec.validate()?;
                meta.preprocess = Some(spec);
                meta.preprocess_source = Some(SpecSource::Onnx);
            } else if k == LABELS_KEY {
                let labels: Vec<String> =
                    serde_json::from_str(v).map_err(|e| Error::Metadata { key: k.clone(), reason: e.to_string() })?;
                meta.labels = Some(labels);
            }
        }
        Ok(meta)
    }

    /// Fills what the ONNX file lacks from a model card's JSON text.
    pub(crate) fn merge_card(&mut self, card_json: &str, card_name: &str) -> Result<()> {
        let card: CardView = serde_json::from_str(card_json)
            .map_err(|e| Error::Metadata { key: card_name.to_string(), reason: e.to_string() })?;
        if self.preprocess.is_none()
            && let Some(spec) = card.preprocess
        {
            spec.validate()?;
            self.preprocess = Some(spec);
            self.preprocess_source = Some(SpecSource::ModelCard);
        }
        if self.labels.is_none() {
            self.labels = card.labels;
        }
        Ok(())
    }
}

/// The model card path beside a model: `dir/name.onnx` → `dir/name.card.json`.
pub fn card_path(model: &std::path::Path) -> std::path::PathBuf {
    let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    model.with_file_name(format!("{stem}.{CARD_SUFFIX}"))
}
