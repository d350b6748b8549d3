//! Training recipes: the TOML file that declares a student's architecture, optimizer, schedule and distillation
//! settings. Unknown keys are errors, so a typo never silently trains the wrong thing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DistillError;

/// A whole recipe, as read from TOML.
///
/// ```toml
/// name = "mnist-student-800"
/// seed = 1
///
/// [model]
/// kind = "mlp"
/// input = [1, 28, 28]
/// hidden = [800, 800]
/// classes = 10
///
/// [train]
/// epochs = 20
/// batch_size = 128
///
/// [optimizer]
/// kind = "sgd"
/// lr = 0.05
/// momentum = 0.9
///
/// [distill]
/// temperature = 20.0
/// alpha = 1.0
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// A short name, written into the model card.
    pub name: String,
    /// Seeds weight initialisation, shuffling, jitter and dropout: the same seed gives the same model.
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub model: Architecture,
    pub train: TrainSettings,
    pub optimizer: OptimizerSettings,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub distill: DistillSettings,
}

fn default_seed() -> u64 {
    1
}

/// The student network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Architecture {
    /// Fully connected: the input is flattened, then `hidden` ReLU layers, then a linear layer to `classes`.
    Mlp {
        /// Shape of one example, e.g. `[1, 28, 28]` (only the product matters to an MLP; jitter uses H and W).
        input: Vec<usize>,
        hidden: Vec<usize>,
        classes: usize,
    },
    /// Convolutional: for each entry of `channels` a 3×3 convolution (padding 1), optional BatchNorm, ReLU and a
    /// 2×2 pooling; then flatten, the `fc` ReLU layers and a linear layer to `classes`.
    Cnn {
        /// `[C, H, W]` of one example.
        input: Vec<usize>,
        channels: Vec<usize>,
        #[serde(default)]
        fc: Vec<usize>,
        classes: usize,
        #[serde(default = "yes")]
        batch_norm: bool,
        #[serde(default)]
        pool: Pool,
    },
}

fn yes() -> bool {
    true
}

/// Pooling after each convolution block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    #[default]
    Max,
    None,
}

impl Architecture {
    /// Shape of one input example.
    pub fn input_shape(&self) -> &[usize] {
        match self {
            Architecture::Mlp { input, .. } | Architecture::Cnn { input, .. } => input,
        }
    }
    /// Values per input example.
    pub fn input_len(&self) -> usize {
        self.input_shape().iter().product()
    }
    /// Number of output classes.
    pub fn classes(&self) -> usize {
        match self {
            Architecture::Mlp { classes, .. } | Architecture::Cnn { classes, .. } => *classes,
        }
    }
    /// A one-line description, e.g. `mlp 784-800-800-10`.
    pub fn describe(&self) -> String {
        match self {
            Architecture::Mlp { hidden, classes, .. } => {
                let mut parts = vec![self.input_len().to_string()];
                parts.extend(hidden.iter().map(|h| h.to_string()));
                parts.push(classes.to_string());
                format!("mlp {}", parts.join("-"))
            }
            Architecture::Cnn { input, channels, fc, classes, batch_norm, pool } => {
                let ch: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
                let fc: Vec<String> = fc.iter().map(|c| c.to_string()).collect();
                format!(
                    "cnn {:?} conv[{}]{}{} fc[{}] → {classes}",
                    input,
                    ch.join(","),
                    if *batch_norm { "+bn" } else { "" },
                    if *pool == Pool::Max { "+maxpool" } else { "" },
                    fc.join(",")
                )
            }
        }
    }
}

/// Epochs, batching, regularisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    pub epochs: usize,
    pub batch_size: usize,
    /// Dropout probability on hidden layers (0 = none).
    #[serde(default)]
    pub dropout: f64,
    /// Dropout probability on the input (Hinton's teacher uses 0.2).
    #[serde(default)]
    pub input_dropout: f64,
    /// Shift each training image by a random whole number of pixels in `[-jitter, jitter]` on both axes. When
    /// distilling, the teacher is run once on every shifted copy of the transfer set (each copy cached), so a
    /// shifted input is always paired with the teacher's outputs for that same shifted input.
    #[serde(default)]
    pub jitter: usize,
    /// Max-norm constraint: each hidden unit's incoming weight vector is rescaled to at most this L2 norm.
    #[serde(default)]
    pub max_norm: Option<f64>,
    /// Use at most this many training examples (the first ones); all when absent.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// The optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerSettings {
    /// Stochastic gradient descent with (optional) momentum.
    Sgd {
        lr: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        weight_decay: f64,
    },
    /// Adam.
    Adam {
        lr: f64,
        #[serde(default)]
        weight_decay: f64,
    },
}

impl OptimizerSettings {
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerSettings::Sgd { lr, .. } | OptimizerSettings::Adam { lr, .. } => *lr,
        }
    }
}

/// How the learning rate changes from epoch to epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// The same rate every epoch.
    #[default]
    Constant,
    /// `lr · gamma^epoch`.
    Exponential { gamma: f64 },
    /// `lr · gamma^(epoch / every)` (integer division).
    Step { every: usize, gamma: f64 },
    /// Cosine from `lr` down to `min_lr` over the run.
    Cosine {
        #[serde(default)]
        min_lr: f64,
    },
}

impl Schedule {
    /// The learning rate of `epoch` (0-based) out of `epochs`.
    pub fn lr(&self, base: f64, epoch: usize, epochs: usize) -> f64 {
        match self {
            Schedule::Constant => base,
            Schedule::Exponential { gamma } => base * gamma.powi(epoch as i32),
            Schedule::Step { every, gamma } => base * gamma.powi((epoch / (*every).max(1)) as i32),
            Schedule::Cosine { min_lr } => {
                let t = if epochs <= 1 { 0.0 } else { epoch as f64 / (epochs - 1) as f64 };
                min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// Knowledge-distillation settings (ignored by `pupil train`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSettings {
    /// Softmax temperature T for teacher and student.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Weight of the soft-target term; `1 − alpha` weighs the hard-label cross-entropy. Forced to 1 without labels.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Added to the student's output bias of these classes after training (Hinton's "raise the bias of the 3s").
    #[serde(default)]
    pub bias_shift: Vec<BiasShift>,
}

/// A constant added to one class's output bias after training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BiasShift {
    pub class: usize,
    pub shift: f32,
}

fn default_temperature() -> f64 {
    1.0
}
fn default_alpha() -> f64 {
    1.0
}

impl Default for DistillSettings {
    fn default() -> Self {
        DistillSettings { temperature: default_temperature(), alpha: default_alpha(), bias_shift: Vec::new() }
    }
}

impl Recipe {
    /// Parses a recipe from TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Recipe, DistillError> {
        let recipe: Recipe = toml::from_str(text)
            .map_err(|e| DistillError::Recipe { origin: origin.to_string(), reason: e.to_string() })?;
        recipe.validate(origin)?;
        Ok(recipe)
    }

    /// Reads a recipe: a path to a TOML file, or the name of a recipe shipped with pupil (`quick`, `tiny`,
    /// `mnist-teacher`, `mnist-student-800`, …).
    pub fn load(path_or_name: &str) -> Result<Recipe, DistillError> {
        if let Some(text) = builtin(path_or_name) {
            return Recipe::from_toml(text, path_or_name);
        }
        let path = Path::new(path_or_name);
        let text =
            std::fs::read_to_string(path).map_err(|source| DistillError::Io { path: path.to_path_buf(), source })?;
        Recipe::from_toml(&text, path_or_name)
    }

    /// The recipe as TOML (written into checkpoints and model cards).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a recipe always serialises")
    }

    /// Checks values serde cannot: positive sizes, probabilities in range, a positive temperature.
    pub fn validate(&self, origin: &str) -> Result<(), DistillError> {
        let bad = |reason: String| Err(DistillError::Recipe { origin: origin.to_string(), reason });
        let t = &self.train;
        if t.epochs == 0 {
            return bad("train.epochs must be at least 1".into());
        }
        if t.batch_size == 0 {
            return bad("train.batch_size must be at least 1".into());
        }
        for (k, p) in [("train.dropout", t.dropout), ("train.input_dropout", t.input_dropout)] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{k} must be in [0, 1), got {p}"));
            }
        }
        if let Some(m) = t.max_norm
            && !(m > 0.0 && m.is_finite())
        {
            return bad(format!("train.max_norm must be positive, got {m}"));
        }
        if self.optimizer.lr() <= 0.0 || !self.optimizer.lr().is_finite() {
            return bad(format!("optimizer.lr must be positive, got {}", self.optimizer.lr()));
        }
        let d = &self.distill;
        if d.temperature <= 0.0 || !d.temperature.is_finite() {
            return bad(format!("distill.temperature must be positive, got {}", d.temperature));
        }
        if !(0.0..=1.0).contains(&d.alpha) {
            return bad(format!("distill.alpha must be in [0, 1], got {}", d.alpha));
        }
        let classes = self.model.classes();
        if classes < 2 {
            return bad(format!("model.classes must be at least 2, got {classes}"));
        }
        if let Some(b) = d.bias_shift.iter().find(|b| b.class >= classes) {
            return bad(format!("distill.bias_shift names class {} but the model has {classes}", b.class));
        }
        let input = self.model.input_shape();
        if input.is_empty() || input.contains(&0) {
            return bad(format!("model.input must be a non-empty shape of positive sizes, got {input:?}"));
        }
        match &self.model {
            Architecture::Mlp { hidden, .. } => {
                if hidden.contains(&0) {
                    return bad("model.hidden sizes must be positive".into());
                }
            }
            Architecture::Cnn { input, channels, fc, pool, .. } => {
                if input.len() != 3 {
                    return bad(format!("a cnn's model.input must be [C, H, W], got {input:?}"));
                }
                if channels.is_empty() || channels.contains(&0) || fc.contains(&0) {
                    return bad("model.channels must be non-empty and positive, model.fc positive".into());
                }
                if *pool == Pool::Max && (input[1] >> channels.len() == 0 || input[2] >> channels.len() == 0) {
                    return bad(format!(
                        "{} 2×2 poolings shrink a {}×{} input to nothing",
                        channels.len(),
                        input[1],
                        input[2]
                    ));
                }
            }
        }
        if t.jitter > 0 && input.len() < 2 {
            return bad("train.jitter needs an image-shaped model.input ([C, H, W] or [H, W])".into());
        }
        Ok(())
    }
}

/// Recipes shipped with pupil, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("mnist-teacher", include_str!("../recipes/mnist-teacher.toml")),
    ("mnist-student-800", include_str!("../recipes/mnist-student-800.toml")),
    ("mnist-student-800-distill", include_str!("../recipes/mnist-student-800-distill.toml")),
    ("mnist-student-800-distill-jitter", include_str!("../recipes/mnist-student-800-distill-jitter.toml")),
    ("mnist-student-30", include_str!("../recipes/mnist-student-30.toml")),
    ("quick", include_str!("../recipes/quick.toml")),
    ("tiny", include_str!("../recipes/tiny.toml")),
    ("tiny-cnn", include_str!("../recipes/tiny-cnn.toml")),
];

/// The text of a shipped recipe.
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}
