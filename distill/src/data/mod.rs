//! Datasets: labelled or unlabelled examples in memory, and `DataSpec`, the typed form of `--data mnist:DIR`.

mod images;
mod mnist;
mod npy;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use pupil_runtime::PreprocessSpec;

pub use images::load_image_folder;
pub use mnist::load_mnist;
pub use npy::{load_npy, write_npy};

/// Errors reading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("the dataset `{name}` is empty")]
    Empty { name: String },
    #[error("examples of `{name}` have {got} values, the model expects {expected}")]
    Shape { name: String, expected: usize, got: usize },
    #[error("bad data spec `{spec}`: {reason}")]
    Spec { spec: String, reason: String },
    #[error("label {label} at example {index} is out of range for {classes} classes")]
    Label { index: usize, label: u32, classes: usize },
    #[error("image {path}: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: pupil_runtime::Error,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}

/// Which half of a dataset with a train/test split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

/// Where examples come from, parsed from the CLI's `--data` value.
///
/// | form | meaning |
/// |---|---|
/// | `mnist:DIR` / `mnist:DIR:train` | MNIST IDX gzip files in DIR, test split by default |
/// | `npy:INPUTS.npy` / `npy:INPUTS.npy:LABELS.npy` | a `.npy` array of examples (first axis), optional labels |
/// | `images:DIR` | PNG/JPEG files; class subfolders (sorted) give labels, a flat folder has none |
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DataSpec {
    Mnist { dir: PathBuf, split: Split },
    Npy { inputs: PathBuf, labels: Option<PathBuf> },
    Images { dir: PathBuf },
}

impl FromStr for DataSpec {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        let bad = |reason: &str| DataError::Spec { spec: s.to_string(), reason: reason.to_string() };
        let (kind, rest) =
            s.split_once(':').ok_or_else(|| bad("expected KIND:PATH with KIND one of mnist, npy, images"))?;
        if rest.is_empty() {
            return Err(bad("the path is empty"));
        }
        match kind {
            "mnist" => {
                let (dir, split) = match rest.rsplit_once(':') {
                    Some((d, "train")) => (d, Split::Train),
                    Some((d, "test")) => (d, Split::Test),
                    Some((_, other)) if !other.contains('/') => {
                        return Err(bad(&format!("unknown MNIST split `{other}`, expected train or test")));
                    }
                    _ => (rest, Split::Test),
                };
                Ok(DataSpec::Mnist { dir: dir.into(), split })
            }
            "npy" => {
                let (inputs, labels) = match rest.split_once(".npy:") {
                    Some((i, l)) => (format!("{i}.npy"), Some(PathBuf::from(l))),
                    None => (rest.to_string(), None),
                };
                Ok(DataSpec::Npy { inputs: inputs.into(), labels })
            }
            "images" => Ok(DataSpec::Images { dir: rest.into() }),
            other => Err(bad(&format!("unknown data kind `{other}`, expected mnist, npy or images"))),
        }
    }
}

impl std::fmt::Display for DataSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataSpec::Mnist { dir, split } => {
                let split = if *split == Split::Train { "train" } else { "test" };
                write!(f, "mnist:{}:{split}", dir.display())
            }
            DataSpec::Npy { inputs, labels: None } => write!(f, "npy:{}", inputs.display()),
            DataSpec::Npy { inputs, labels: Some(l) } => write!(f, "npy:{}:{}", inputs.display(), l.display()),
            DataSpec::Images { dir } => write!(f, "images:{}", dir.display()),
        }
    }
}

impl DataSpec {
    /// Reads the examples. Image folders are preprocessed with `spec` (MNIST's 28×28 gray when `None`).
    pub fn load(&self, spec: Option<&PreprocessSpec>) -> Result<Dataset, DataError> {
        let ds = match self {
            DataSpec::Mnist { dir, split } => load_mnist(dir, *split)?,
            DataSpec::Npy { inputs, labels } => load_npy(inputs, labels.as_deref())?,
            DataSpec::Images { dir } => {
                let default = PreprocessSpec::mnist(pupil_runtime::Layout::Nchw);
                load_image_folder(dir, spec.unwrap_or(&default))?
            }
        };
        if ds.is_empty() {
            return Err(DataError::Empty { name: self.to_string() });
        }
        Ok(ds)
    }
}

/// Examples in memory: `len()` examples of `example_shape` values each, flat, with optional labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub name: String,
    pub example_shape: Vec<usize>,
    pub inputs: Vec<f32>,
    pub labels: Option<Vec<u32>>,
    /// Class names, when the source has them (image-folder subfolders).
    pub class_names: Option<Vec<String>>,
}

impl Dataset {
    /// Values per example.
    pub fn example_len(&self) -> usize {
        self.example_shape.iter().product()
    }
    /// Number of examples.
    pub fn len(&self) -> usize {
        let per = self.example_len();
        self.inputs.len().checked_div(per).unwrap_or(0)
    }
    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The values of example `i`.
    pub fn example(&self, i: usize) -> &[f32] {
        let per = self.example_len();
        &self.inputs[i * per..(i + 1) * per]
    }
    /// The first `n` examples (all when `n` is larger).
    pub fn take(&self, n: usize) -> Dataset {
        self.select(&(0..n.min(self.len())).collect::<Vec<_>>())
    }
    /// The examples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let per = self.example_len();
        let mut inputs = Vec::with_capacity(indices.len() * per);
        for &i in indices {
            inputs.extend_from_slice(self.example(i));
        }
        Dataset {
            name: self.name.clone(),
            example_shape: self.example_shape.clone(),
            inputs,
            labels: self.labels.as_ref().map(|l| indices.iter().map(|&i| l[i]).collect()),
            class_names: self.class_names.clone(),
        }
    }
    /// Drops the labels (an unlabelled transfer set).
    pub fn unlabeled(mut self) -> Dataset {
        self.labels = None;
        self
    }
    /// Fails unless each example has exactly `expected` values.
    pub fn check_example_len(&self, expected: usize) -> Result<(), DataError> {
        if self.example_len() != expected {
            return Err(DataError::Shape { name: self.name.clone(), expected, got: self.example_len() });
        }
        Ok(())
    }
    /// Fails if a label is `>= classes`.
    pub fn check_labels(&self, classes: usize) -> Result<(), DataError> {
        if let Some(labels) = &self.labels
            && let Some((index, &label)) = labels.iter().enumerate().find(|(_, l)| **l as usize >= classes)
        {
            return Err(DataError::Label { index, label, classes });
        }
        Ok(())
    }
}
