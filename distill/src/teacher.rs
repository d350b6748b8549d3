//! Teacher soft targets: any ONNX model run by `pupil_runtime` over the transfer set, its logits cached on disk
//! (safetensors) keyed by the teacher's sha256 and the data's sha256, so later runs reuse them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pupil_runtime::{Batch, Model, ModelOptions};
use sha2::{Digest, Sha256};

use crate::Progress;
use crate::data::Dataset;
use crate::error::{DistillError, Result, io};

/// The teacher's raw outputs over a data set.
#[derive(Debug, Clone)]
pub struct TeacherOutputs {
    pub teacher: PathBuf,
    pub teacher_sha256: String,
    /// sha256 of the data's example shape and values: the cache key's second half.
    pub data_sha256: String,
    /// `[n, classes]` row-major.
    pub logits: Vec<f32>,
    pub classes: usize,
    pub cache_file: PathBuf,
    /// True when read from the cache rather than computed.
    pub from_cache: bool,
}

/// A stable identity for the examples of `data` (shape and values; labels and name excluded).
pub fn data_sha256(data: &Dataset) -> String {
    let mut h = Sha256::new();
    for d in &data.example_shape {
        h.update((*d as u64).to_le_bytes());
    }
    for chunk in data.inputs.chunks(1 << 16) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
        h.update(&bytes);
    }
    format!("{:x}", h.finalize())
}

/// Loads the teacher, checks it fits `data` and `classes`, and returns its logits over every example of `data`
/// (from `cache_dir` when a previous run computed them).
pub fn soft_targets(
    teacher: &Path,
    data: &Dataset,
    classes: usize,
    cache_dir: &Path,
    progress: Progress,
) -> Result<TeacherOutputs> {
    soft_targets_keyed(teacher, data, data_sha256(data), || Ok(Cow::Borrowed(data)), classes, cache_dir, progress)
}

/// The teacher's logits over a variant of `data` (same example shape, e.g. every image shifted by a pixel) that
/// `derive` builds only when the cache has no outputs for it: the variant is keyed by `data_sha256` (the key of
/// `data`, which the caller already has) and `variant`, its name, so a cached variant is neither built nor hashed.
/// A built variant whose size differs from `data`'s is a [`DistillError::VariantShape`].
#[allow(clippy::too_many_arguments)]
pub fn soft_targets_of_variant(
    teacher: &Path,
    data: &Dataset,
    data_sha256: &str,
    variant: &str,
    derive: impl FnOnce() -> Dataset,
    classes: usize,
    cache_dir: &Path,
    progress: Progress,
) -> Result<TeacherOutputs> {
    let key =
        format!("{:x}", Sha256::new().chain_update(data_sha256).chain_update(b"\n").chain_update(variant).finalize());
    let build = || {
        let built = derive();
        if built.len() != data.len() || built.example_len() != data.example_len() {
            return Err(DistillError::VariantShape {
                data: data.name.clone(),
                variant: variant.to_string(),
                expected_len: data.len(),
                expected_values: data.example_len(),
                got_len: built.len(),
                got_values: built.example_len(),
            });
        }
        Ok(Cow::Owned(built))
    };
    soft_targets_keyed(teacher, data, key, build, classes, cache_dir, progress)
}

/// `soft_targets` with the data's cache key given, and the data itself built only on a cache miss; `like` has the
/// data's example shape (for the teacher's checks).
fn soft_targets_keyed<'a>(
    teacher: &Path,
    like: &Dataset,
    data_sha256: String,
    data: impl FnOnce() -> Result<Cow<'a, Dataset>>,
    classes: usize,
    cache_dir: &Path,
    progress: Progress,
) -> Result<TeacherOutputs> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4);
    let model = Model::load(teacher, ModelOptions { batch: Batch::Symbolic, threads, top_k: 1 })
        .map_err(|source| DistillError::Teacher { path: teacher.to_path_buf(), source })?;
    check_teacher(&model, teacher, like, classes)?;
    let teacher_sha256 = model.info().sha256.clone();
    let cache_file =
        cache_dir.join(format!("teacher-{}-data-{}.safetensors", &teacher_sha256[..16], &data_sha256[..16]));
    let n = like.len();
    if let Some(logits) = read_cache(&cache_file, n, classes) {
        tracing::info!("teacher outputs reused from {}", cache_file.display());
        return Ok(TeacherOutputs {
            teacher: teacher.to_path_buf(),
            teacher_sha256,
            data_sha256,
            logits,
            classes,
            cache_file,
            from_cache: true,
        });
    }
    let data = data()?;
    let bar = progress.bar(n as u64, "teacher");
    let per = data.example_len();
    let chunk = 512;
    let mut logits = Vec::with_capacity(n * classes);
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let out = model
            .run_batch(&data.inputs[start * per..end * per])
            .map_err(|source| DistillError::Teacher { path: teacher.to_path_buf(), source })?;
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(DistillError::TeacherNonFinite { path: teacher.to_path_buf(), index: start + i / classes });
        }
        logits.extend_from_slice(&out);
        bar.set_position(end as u64);
    }
    bar.finish_and_clear();
    write_cache(&cache_file, &logits, n, classes, &teacher_sha256, &data_sha256)?;
    Ok(TeacherOutputs {
        teacher: teacher.to_path_buf(),
        teacher_sha256,
        data_sha256,
        logits,
        classes,
        cache_file,
        from_cache: false,
    })
}

/// Fails with a typed error when the teacher's input or output width does not fit.
pub fn check_teacher(model: &Model, teacher: &Path, data: &Dataset, classes: usize) -> Result<()> {
    if model.example_len() != data.example_len() {
        return Err(DistillError::TeacherInput {
            teacher: teacher.to_path_buf(),
            data: data.name.clone(),
            expected: model.example_len(),
            got: data.example_len(),
        });
    }
    if model.classes() != classes {
        return Err(DistillError::TeacherClasses {
            teacher: teacher.to_path_buf(),
            expected: classes,
            got: model.classes(),
        });
    }
    Ok(())
}

fn read_cache(path: &Path, n: usize, classes: usize) -> Option<Vec<f32>> {
    let bytes = std::fs::read(path).ok()?;
    let st = safetensors::SafeTensors::deserialize(&bytes).ok()?;
    let t = st.tensor("logits").ok()?;
    if t.dtype() != safetensors::Dtype::F32 || t.shape() != [n, classes] {
        tracing::warn!("ignoring the teacher cache {}: unexpected shape {:?}", path.display(), t.shape());
        return None;
    }
    Some(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

fn write_cache(path: &Path, logits: &[f32], n: usize, classes: usize, teacher: &str, data: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n, classes], &bytes)
        .map_err(|e| DistillError::Engine(format!("teacher cache: {e}")))?;
    let meta = HashMap::from([
        ("teacher_sha256".to_string(), teacher.to_string()),
        ("data_sha256".to_string(), data.to_string()),
    ]);
    let out = safetensors::serialize([("logits", view)], Some(meta))
        .map_err(|e| DistillError::Engine(format!("teacher cache: {e}")))?;
    pupil_runtime::onnx::write_atomic(path, &out)
        .map_err(|source| DistillError::Export { path: path.to_path_buf(), source })
}

/// `softmax(logits / t)` and its log, row by row, in f64 for accuracy.
pub fn soften(logits: &[f32], classes: usize, t: f64) -> (Vec<f32>, Vec<f32>) {
    let mut p = Vec::with_capacity(logits.len());
    let mut logp = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(classes) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v as f64 / t));
        let sum: f64 = row.iter().map(|v| (*v as f64 / t - max).exp()).sum();
        let lse = max + sum.ln();
        for v in row {
            let lp = *v as f64 / t - lse;
            logp.push(lp as f32);
            p.push(lp.exp() as f32);
        }
    }
    (p, logp)
}
