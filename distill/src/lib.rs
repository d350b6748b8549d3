//! pupil-distill: the host side of pupil. Datasets (MNIST IDX, image folders, `.npy`), teacher soft targets,
//! student training with burn (Flex CPU backend), checkpoints, and ONNX export with a parity self-check.
//!
//! The entry points are [`train`] (supervised, e.g. a teacher) and [`distill`] (knowledge distillation from any
//! ONNX teacher), both taking a [`Job`] and returning an [`Outcome`]:
//!
//! ```no_run
//! use pupil_distill::{Job, Progress, Recipe, DataSpec};
//! let recipe = Recipe::load("quick")?;
//! let train: DataSpec = "mnist:data/mnist:train".parse()?;
//! let mut job = Job::new(recipe, train.load(None)?.unlabeled(), "out/student.onnx");
//! job.heldout = Some("mnist:data/mnist:test".parse::<DataSpec>()?.load(None)?);
//! job.progress = Progress::Bars;
//! job.resume = true;
//! let outcome = pupil_distill::distill(&job, "models/mnist-teacher.onnx".as_ref())?;
//! println!("{} held-out errors", outcome.heldout.unwrap().errors);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod data;
mod engine;
pub mod error;
pub mod export;
pub mod net;
pub mod recipe;
pub mod teacher;

use std::path::{Path, PathBuf};

use pupil_runtime::PreprocessSpec;
use serde::{Deserialize, Serialize};

pub use data::{DataError, DataSpec, Dataset, Split};
pub use engine::eval_onnx;
pub use error::{DistillError, Result};
pub use recipe::Recipe;

/// Whether long work draws indicatif progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Progress {
    /// A bar per epoch (and for the teacher pass) on stderr.
    #[default]
    Bars,
    /// Nothing drawn (tests, JSON output); progress still goes to `tracing`.
    Hidden,
}

impl Progress {
    pub(crate) fn bar(self, len: u64, prefix: &str) -> indicatif::ProgressBar {
        match self {
            Progress::Hidden => indicatif::ProgressBar::hidden(),
            Progress::Bars => {
                let bar = indicatif::ProgressBar::new(len);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(prefix.to_string());
                bar
            }
        }
    }
}

/// One training or distillation run.
#[derive(Debug, Clone)]
pub struct Job {
    pub recipe: Recipe,
    /// Training examples (the transfer set when distilling). Labels are required by [`train`], optional for
    /// [`distill`] (used only when `recipe.distill.alpha < 1`).
    pub train: Dataset,
    /// Labelled examples for the held-out accuracy shown each epoch and written to the card.
    pub heldout: Option<Dataset>,
    /// Where the ONNX student goes; its model card is written beside it (`NAME.card.json`).
    pub out: PathBuf,
    /// Checkpoint directory (default: `<out dir>/<out stem>.ckpt`).
    pub checkpoints: Option<PathBuf>,
    /// Teacher-output cache directory (default: `out/cache`).
    pub cache: Option<PathBuf>,
    /// Continue from the last checkpoint if there is one (a fresh start otherwise).
    pub resume: bool,
    pub progress: Progress,
    /// Stop after this many epochs in total, leaving the checkpoint as a killed run would (for tests and for
    /// splitting a long run). No model is exported then.
    pub stop_after: Option<usize>,
    /// Written into the ONNX metadata and the card. Default: the teacher's, else MNIST's for 784-value inputs.
    pub preprocess: Option<PreprocessSpec>,
    /// Class names. Default: the data's, else the teacher's, else `0..classes`.
    pub labels: Option<Vec<String>>,
    /// How the data was specified (for the card), e.g. `mnist:data/mnist:train`.
    pub data_description: String,
    /// Examples used for the export parity check.
    pub parity_examples: usize,
}

impl Job {
    /// A job with defaults: bars shown, no resume, no held-out set.
    pub fn new(recipe: Recipe, train: Dataset, out: impl Into<PathBuf>) -> Job {
        Job {
            data_description: train.name.clone(),
            recipe,
            train,
            heldout: None,
            out: out.into(),
            checkpoints: None,
            cache: None,
            resume: false,
            progress: Progress::Bars,
            stop_after: None,
            preprocess: None,
            labels: None,
            parity_examples: 300,
        }
    }

    /// The checkpoint directory this job uses.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.checkpoints.clone().unwrap_or_else(|| {
            let stem = self.out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
            self.out.with_file_name(format!("{stem}.ckpt"))
        })
    }

    /// The teacher-output cache directory this job uses.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache.clone().unwrap_or_else(|| PathBuf::from("out/cache"))
    }
}

/// Accuracy on a labelled set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Eval {
    pub examples: usize,
    pub errors: usize,
    pub accuracy: f64,
}

/// What one epoch did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    pub lr: f64,
    /// Mean training loss.
    pub loss: f64,
    /// Accuracy on the training batches as trained (dropout and jitter on); `None` without labels.
    pub train_accuracy: Option<f64>,
    pub heldout: Option<Eval>,
    pub examples_per_sec: f64,
    pub seconds: f64,
}

/// The teacher a student was distilled from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherInfo {
    pub path: PathBuf,
    pub sha256: String,
    pub cache_file: PathBuf,
    pub from_cache: bool,
    /// The teacher's own accuracy on the held-out set (computed by pupil_runtime).
    pub heldout: Option<Eval>,
}

/// The result of [`train`] or [`distill`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The exported ONNX student (`None` when stopped early by `stop_after`).
    pub model: Option<PathBuf>,
    pub card: Option<PathBuf>,
    pub checkpoint_dir: PathBuf,
    /// Epochs completed in total (including those before a resume).
    pub epochs: usize,
    /// The epoch count the run resumed from, if it resumed.
    pub resumed_from: Option<usize>,
    pub history: Vec<EpochStats>,
    /// Held-out accuracy of the exported model (after any bias shift).
    pub heldout: Option<Eval>,
    /// Mean training throughput of the epochs this process ran.
    pub examples_per_sec: f64,
    /// Largest |ONNX − burn| logit difference found by the export check.
    pub parity_max_diff: Option<f32>,
    pub teacher: Option<TeacherInfo>,
    pub parameters: usize,
}

/// Supervised training on labelled data (how teachers are made). The recipe's `[distill]` section is ignored.
pub fn train(job: &Job) -> Result<Outcome> {
    engine::run(job, None)
}

/// Knowledge distillation: trains the recipe's student on the teacher's softened outputs over `job.train` (cached
/// on disk), mixing in hard labels when the recipe's `alpha < 1` and the data has them.
pub fn distill(job: &Job, teacher: &Path) -> Result<Outcome> {
    engine::run(job, Some(teacher))
}
