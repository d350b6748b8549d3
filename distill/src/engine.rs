//! The training loop: checks inputs, batches (with jitter), computes the distillation/cross-entropy loss with burn
//! autodiff on the Flex CPU backend, steps the optimizer, checkpoints every epoch, exports and self-checks.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bytes, Device, Tensor, TensorData};
use pupil_runtime::{Layout, PreprocessSpec};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DistillError, Result, io};
use crate::net::Net;
use crate::recipe::{OptimizerSettings, Recipe};
use crate::{EpochStats, Eval, Job, Outcome, TeacherInfo, export, teacher};

/// What `state.json` in a checkpoint directory records; written last, so it always names complete files.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    /// Epochs completed.
    epochs: usize,
    /// Subdirectory holding `model.bpk` and `optim.bpk` of that epoch.
    dir: String,
    recipe_toml: String,
    data_sha256: String,
    teacher_sha256: Option<String>,
    history: Vec<EpochStats>,
}

/// The teacher's softened outputs, for every shift of the transfer set that jitter can produce.
struct Soft {
    /// `p[s]`, `logp[s]`: `[n, classes]` for the shift `s` (see [`Shifts`]).
    p: Vec<Vec<f32>>,
    logp: Vec<Vec<f32>>,
    t: f64,
}

/// The whole-pixel shifts `(dy, dx)` in `[-k, k]²`, numbered row by row; `k = 0` gives only `(0, 0)`.
struct Shifts {
    k: i64,
}

impl Shifts {
    fn all(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        (-self.k..=self.k).flat_map(move |dy| (-self.k..=self.k).map(move |dx| (dy, dx)))
    }
    fn index(&self, dy: i64, dx: i64) -> usize {
        ((dy + self.k) * (2 * self.k + 1) + dx + self.k) as usize
    }
}

pub(crate) fn run(job: &Job, teacher_path: Option<&Path>) -> Result<Outcome> {
    let recipe = &job.recipe;
    recipe.validate(&recipe.name)?;
    let classes = recipe.model.classes();
    let input_len = recipe.model.input_len();

    // ---- Check every input before any training.
    let mut data = job.train.clone();
    if let Some(limit) = recipe.train.limit {
        data = data.take(limit);
    }
    if data.is_empty() {
        return Err(DistillError::EmptyTransferSet { name: data.name.clone() });
    }
    if data.example_len() != input_len {
        return Err(DistillError::InputSize {
            data: data.name.clone(),
            shape: recipe.model.input_shape().to_vec(),
            expected: input_len,
            got: data.example_len(),
        });
    }
    check_label_range(&data, classes)?;
    if let Some(h) = &job.heldout {
        if h.example_len() != input_len {
            return Err(DistillError::InputSize {
                data: h.name.clone(),
                shape: recipe.model.input_shape().to_vec(),
                expected: input_len,
                got: h.example_len(),
            });
        }
        check_label_range(h, classes)?;
    }
    if teacher_path.is_none() && data.labels.is_none() {
        return Err(DistillError::NoLabels { data: data.name.clone() });
    }
    let image = image_hw(recipe);
    // With jitter, the teacher is run on every shifted copy of the transfer set, so that each shifted input the
    // student sees is paired with the teacher's outputs for that same input (each copy cached on its own).
    let shifts = Shifts { k: if image.is_some() { recipe.train.jitter as i64 } else { 0 } };

    // ---- Teacher soft targets (cached).
    let mut teacher_info = None;
    let mut teacher_meta = None;
    let soft = match teacher_path {
        None => None,
        Some(path) => {
            let outs = teacher::soft_targets(path, &data, classes, &job.cache_dir(), job.progress)?;
            let heldout = match &job.heldout {
                Some(h) => Some(eval_onnx(path, h)?),
                None => None,
            };
            let model = pupil_runtime::Model::load(path, Default::default()).ok();
            teacher_meta = model.map(|m| m.meta().clone());
            teacher_info = Some(TeacherInfo {
                path: path.to_path_buf(),
                sha256: outs.teacher_sha256.clone(),
                cache_file: outs.cache_file.clone(),
                from_cache: outs.from_cache,
                heldout,
            });
            let t = recipe.distill.temperature;
            let mut soft = Soft { p: vec![], logp: vec![], t };
            for (dy, dx) in shifts.all() {
                let (p, logp) = if (dy, dx) == (0, 0) {
                    teacher::soften(&outs.logits, classes, t)
                } else {
                    let (c, h, w) = image.expect("shifts exist only for image-shaped inputs");
                    let variant = format!("shifted by ({dy}, {dx}) px");
                    let derive = || {
                        let mut inputs = Vec::with_capacity(data.inputs.len());
                        for i in 0..data.len() {
                            shift(data.example(i), c, h, w, dy, dx, &mut inputs);
                        }
                        crate::Dataset {
                            name: format!("{} {variant}", data.name),
                            example_shape: data.example_shape.clone(),
                            inputs,
                            labels: None,
                            class_names: None,
                        }
                    };
                    let logits = teacher::soft_targets_of_variant(
                        path,
                        &data,
                        &outs.data_sha256,
                        &variant,
                        derive,
                        classes,
                        &job.cache_dir(),
                        job.progress,
                    )?
                    .logits;
                    teacher::soften(&logits, classes, t)
                };
                soft.p.push(p);
                soft.logp.push(logp);
            }
            Some(soft)
        }
    };
    let alpha = match (&soft, &data.labels) {
        (None, _) => 0.0,
        (Some(_), None) => 1.0,
        (Some(_), Some(_)) => recipe.distill.alpha,
    };

    let data_sha = teacher::data_sha256(&data);
    let teacher_sha = teacher_info.as_ref().map(|t| t.sha256.clone());
    let recipe_toml = recipe.to_toml();

    // ---- Model, optimizer, maybe resume.
    let device = Device::flex().autodiff();
    let mut net = Net::new(recipe, &device);
    let mut optim = make_optimizer(&recipe.optimizer);
    let ckpt_dir = job.checkpoint_dir();
    let mut history: Vec<EpochStats> = Vec::new();
    let mut start = 0;
    let mut resumed_from = None;
    let state_path = ckpt_dir.join("state.json");
    if job.resume && state_path.exists() {
        let state: CheckpointState = serde_json::from_slice(&std::fs::read(&state_path).map_err(io(&state_path))?)
            .map_err(|e| DistillError::Checkpoint { path: state_path.clone(), reason: e.to_string() })?;
        let mismatch =
            |reason: &str| DistillError::CheckpointMismatch { path: ckpt_dir.clone(), reason: reason.into() };
        if state.recipe_toml != recipe_toml {
            return Err(mismatch("the recipe differs"));
        }
        if state.data_sha256 != data_sha {
            return Err(mismatch("the training data differs"));
        }
        if state.teacher_sha256 != teacher_sha {
            return Err(mismatch("the teacher differs"));
        }
        let dir = ckpt_dir.join(&state.dir);
        net = load_module(net, &dir.join("model.bpk"))?;
        let optim_path = dir.join("optim.bpk");
        let bytes = std::fs::read(&optim_path).map_err(io(&optim_path))?;
        optim = optim
            .from_bytes(Bytes::from_bytes_vec(bytes))
            .map_err(|e| DistillError::Checkpoint { path: optim_path.clone(), reason: e.to_string() })?;
        start = state.epochs;
        history = state.history;
        resumed_from = Some(start);
        tracing::info!("resuming {} after epoch {start}", recipe.name);
    } else if !job.resume && ckpt_dir.exists() {
        std::fs::remove_dir_all(&ckpt_dir).map_err(io(&ckpt_dir))?;
    }

    // ---- Train.
    let epochs = recipe.train.epochs;
    let end = job.stop_after.map(|s| s.min(epochs)).unwrap_or(epochs);
    let n = data.len();
    let per = data.example_len();
    let bs = recipe.train.batch_size;
    let mut speeds = Vec::new();
    for epoch in start..end {
        let lr = recipe.schedule.lr(recipe.optimizer.lr(), epoch, epochs);
        let seed = recipe.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(epoch as u64 + 1);
        device.seed(seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let bar = job.progress.bar(n as u64, &format!("epoch {}/{epochs}", epoch + 1));
        let t0 = Instant::now();
        let (mut loss_sum, mut loss_n, mut correct) = (0.0f64, 0usize, 0usize);
        for (b, idx) in order.chunks(bs).enumerate() {
            let m = idx.len();
            let mut x = Vec::with_capacity(m * per);
            // (example, shift) of every row of the batch.
            let mut rows = Vec::with_capacity(m);
            for &i in idx {
                let ex = data.example(i);
                match image {
                    Some((c, h, w)) if shifts.k > 0 => {
                        let k = shifts.k;
                        let (dy, dx) = (rng.random_range(-k..=k), rng.random_range(-k..=k));
                        shift(ex, c, h, w, dy, dx, &mut x);
                        rows.push((i, shifts.index(dy, dx)));
                    }
                    _ => {
                        x.extend_from_slice(ex);
                        rows.push((i, 0));
                    }
                }
            }
            let xt = Tensor::<2>::from_data(TensorData::new(x, [m, per]), &device);
            let logits = net.forward(xt);
            let mut loss: Option<Tensor<1>> = None;
            if let Some(s) = &soft {
                let (p, lp) = gather(s, &rows, classes);
                let p = Tensor::<2>::from_data(TensorData::new(p, [m, classes]), &device);
                let lp = Tensor::<2>::from_data(TensorData::new(lp, [m, classes]), &device);
                let ls = log_softmax(logits.clone().div_scalar(s.t), 1);
                let kl = (p * (lp - ls)).sum_dim(1).mean();
                loss = Some(kl.mul_scalar(alpha * s.t * s.t));
            }
            if alpha < 1.0
                && let Some(labels) = &data.labels
            {
                let mut onehot = vec![0.0f32; m * classes];
                for (r, &i) in idx.iter().enumerate() {
                    onehot[r * classes + labels[i] as usize] = 1.0;
                }
                let y = Tensor::<2>::from_data(TensorData::new(onehot, [m, classes]), &device);
                let ce = (y * log_softmax(logits.clone(), 1)).sum_dim(1).mean().neg().mul_scalar(1.0 - alpha);
                loss = Some(match loss {
                    Some(l) => l + ce,
                    None => ce,
                });
            }
            let loss = loss.expect("a loss term always exists");
            let value: f32 = loss.clone().into_scalar();
            if !value.is_finite() {
                bar.abandon();
                return Err(DistillError::NonFiniteLoss {
                    value,
                    epoch: epoch + 1,
                    batch: b + 1,
                    last_good: epoch,
                    checkpoint: ckpt_dir.clone(),
                });
            }
            if let Some(labels) = &data.labels {
                let l = logits.detach().into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
                correct += idx
                    .iter()
                    .enumerate()
                    .filter(|(r, i)| argmax(&l[r * classes..(r + 1) * classes]) == labels[**i] as usize)
                    .count();
            }
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(lr, net, grads);
            if let Some(c) = recipe.train.max_norm {
                net = net.apply_max_norm(c);
            }
            loss_sum += value as f64 * m as f64;
            loss_n += m;
            bar.inc(m as u64);
            if b % 10 == 0 {
                let mut msg = format!("loss {:.4}", loss_sum / loss_n as f64);
                if data.labels.is_some() {
                    msg += &format!(" train acc {:.2}%", 100.0 * correct as f64 / loss_n as f64);
                }
                bar.set_message(msg);
            }
        }
        let seconds = t0.elapsed().as_secs_f64();
        let speed = n as f64 / seconds.max(1e-9);
        speeds.push(speed);
        let heldout = job.heldout.as_ref().map(|h| evaluate(&net, h));
        let stats = EpochStats {
            epoch: epoch + 1,
            lr,
            loss: loss_sum / loss_n.max(1) as f64,
            train_accuracy: data.labels.as_ref().map(|_| correct as f64 / n as f64),
            heldout,
            examples_per_sec: speed,
            seconds,
        };
        let mut msg = format!("loss {:.4}", stats.loss);
        if let Some(a) = stats.train_accuracy {
            msg += &format!(" train acc {:.2}%", 100.0 * a);
        }
        if let Some(h) = &stats.heldout {
            msg += &format!(" held-out acc {:.2}% ({} errors)", 100.0 * h.accuracy, h.errors);
        }
        msg += &format!(" {speed:.0} ex/s");
        bar.finish_with_message(msg.clone());
        tracing::info!("{} epoch {}/{epochs}: {msg}", recipe.name, epoch + 1);
        history.push(stats);
        save_checkpoint(
            &ckpt_dir,
            &net,
            &optim,
            CheckpointState {
                epochs: epoch + 1,
                dir: format!("epoch-{:04}", epoch + 1),
                recipe_toml: recipe_toml.clone(),
                data_sha256: data_sha.clone(),
                teacher_sha256: teacher_sha.clone(),
                history: history.clone(),
            },
        )?;
    }
    let examples_per_sec = if speeds.is_empty() { 0.0 } else { speeds.iter().sum::<f64>() / speeds.len() as f64 };
    let parameters = net.num_params();
    if end < epochs {
        return Ok(Outcome {
            model: None,
            card: None,
            checkpoint_dir: ckpt_dir,
            epochs: end,
            resumed_from,
            history,
            heldout: None,
            examples_per_sec,
            parity_max_diff: None,
            teacher: teacher_info,
            parameters,
        });
    }

    // ---- Finish: bias shifts, export, parity, card.
    let mut net = net;
    for s in &recipe.distill.bias_shift {
        net = net.shift_output_bias(s.class, s.shift);
    }
    let heldout = job.heldout.as_ref().map(|h| evaluate(&net, h));
    let preprocess = job
        .preprocess
        .clone()
        .or_else(|| teacher_meta.as_ref().and_then(|m| m.preprocess.clone()))
        .or_else(|| (input_len == 784).then(|| PreprocessSpec::mnist(Layout::Nchw)));
    let labels = job
        .labels
        .clone()
        .or_else(|| data.class_names.clone().filter(|c| c.len() == classes))
        .or_else(|| teacher_meta.as_ref().and_then(|m| m.labels.clone()).filter(|c| c.len() == classes))
        .unwrap_or_else(|| (0..classes).map(|c| c.to_string()).collect());
    let weights = net.valid().weights();
    let graph =
        export::build_onnx(&recipe.name, &weights, recipe.model.input_shape(), preprocess.as_ref(), Some(&labels));
    let bytes = graph.to_bytes();
    let check = job.heldout.as_ref().unwrap_or(&data);
    let k = job.parity_examples.min(check.len()).max(1);
    let sample = check.take(k);
    let expected = infer(&net, &sample.inputs, per);
    let max_diff = export::parity(&bytes, &job.out, &sample.inputs, &expected)?;
    if max_diff > export::PARITY_TOLERANCE {
        return Err(DistillError::ExportParity {
            path: job.out.clone(),
            max_diff,
            tolerance: export::PARITY_TOLERANCE,
            examples: k,
        });
    }
    if let Some(dir) = job.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    pupil_runtime::onnx::write_atomic(&job.out, &bytes)
        .map_err(|source| DistillError::Export { path: job.out.clone(), source })?;
    let card_path = pupil_runtime::meta::card_path(&job.out);
    let outcome = Outcome {
        model: Some(job.out.clone()),
        card: Some(card_path.clone()),
        checkpoint_dir: ckpt_dir,
        epochs: end,
        resumed_from,
        history,
        heldout,
        examples_per_sec,
        parity_max_diff: Some(max_diff),
        teacher: teacher_info,
        parameters,
    };
    let card = serde_json::json!({
        "name": recipe.name,
        "architecture": recipe.model.describe(),
        "parameters": parameters,
        "sha256": pupil_runtime::model::sha256_hex(&bytes),
        "recipe": recipe,
        "recipe_toml": recipe_toml,
        "mode": if teacher_path.is_some() { "distill" } else { "train" },
        "alpha_used": if teacher_path.is_some() { Some(alpha) } else { None },
        "teacher": outcome.teacher,
        "data": {
            "train": job.data_description,
            "train_examples": n,
            "train_sha256": data_sha,
            "labels_used": teacher_path.is_none() || alpha < 1.0,
            "heldout": job.heldout.as_ref().map(|h| h.name.clone()),
        },
        "metrics": {
            "heldout": outcome.heldout,
            "epochs": outcome.epochs,
            "final_loss": outcome.history.last().map(|h| h.loss),
            "final_train_accuracy": outcome.history.last().and_then(|h| h.train_accuracy),
            "examples_per_sec": examples_per_sec,
            "parity_max_abs_diff": max_diff,
            "history": outcome.history,
        },
        "preprocess": preprocess,
        "labels": labels,
        "created_by": format!("pupil-distill {}", env!("CARGO_PKG_VERSION")),
    });
    let text = serde_json::to_string_pretty(&card).expect("card serialises");
    pupil_runtime::onnx::write_atomic(&card_path, text.as_bytes())
        .map_err(|source| DistillError::Export { path: card_path.clone(), source })?;
    Ok(outcome)
}

fn check_label_range(data: &crate::Dataset, classes: usize) -> Result<()> {
    if let Some(labels) = &data.labels
        && let Some(&max) = labels.iter().max()
        && max as usize >= classes
    {
        return Err(DistillError::LabelRange { data: data.name.clone(), max, classes });
    }
    Ok(())
}

fn make_optimizer(o: &OptimizerSettings) -> ModuleOptimizer {
    match o {
        OptimizerSettings::Sgd { momentum, weight_decay, .. } => {
            let mut c = SgdConfig::new();
            if *momentum > 0.0 {
                c = c.with_momentum(Some(MomentumConfig { momentum: *momentum, dampening: 0.0, nesterov: false }));
            }
            if *weight_decay > 0.0 {
                c = c.with_weight_decay(Some(WeightDecayConfig { penalty: *weight_decay as f32 }));
            }
            c.init()
        }
        OptimizerSettings::Adam { weight_decay, .. } => {
            let mut c = AdamConfig::new().with_epsilon(1e-8);
            if *weight_decay > 0.0 {
                c = c.with_weight_decay(Some(WeightDecayConfig { penalty: *weight_decay as f32 }));
            }
            c.init()
        }
    }
}

/// `(C, H, W)` of the recipe's input when it is image shaped.
fn image_hw(recipe: &Recipe) -> Option<(usize, usize, usize)> {
    match recipe.model.input_shape() {
        [c, h, w] => Some((*c, *h, *w)),
        [h, w] => Some((1, *h, *w)),
        _ => None,
    }
}

/// Appends `ex` (C×H×W) shifted by (dy, dx) pixels with zero fill.
fn shift(ex: &[f32], c: usize, h: usize, w: usize, dy: i64, dx: i64, out: &mut Vec<f32>) {
    let base = out.len();
    out.resize(base + c * h * w, 0.0);
    for ch in 0..c {
        for y in 0..h as i64 {
            let sy = y - dy;
            if sy < 0 || sy >= h as i64 {
                continue;
            }
            for x in 0..w as i64 {
                let sx = x - dx;
                if sx < 0 || sx >= w as i64 {
                    continue;
                }
                out[base + ch * h * w + y as usize * w + x as usize] = ex[ch * h * w + sy as usize * w + sx as usize];
            }
        }
    }
}

/// The teacher's probabilities and log-probabilities for the `(example, shift)` rows of a batch.
fn gather(soft: &Soft, rows: &[(usize, usize)], classes: usize) -> (Vec<f32>, Vec<f32>) {
    let mut a = Vec::with_capacity(rows.len() * classes);
    let mut b = Vec::with_capacity(rows.len() * classes);
    for &(i, s) in rows {
        a.extend_from_slice(&soft.p[s][i * classes..(i + 1) * classes]);
        b.extend_from_slice(&soft.logp[s][i * classes..(i + 1) * classes]);
    }
    (a, b)
}

pub(crate) fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// Inference-mode logits of `net` for flat `inputs`.
pub(crate) fn infer(net: &Net, inputs: &[f32], per: usize) -> Vec<f32> {
    let device = Device::flex();
    let valid = net.valid();
    let n = inputs.len() / per;
    let mut out = Vec::new();
    for start in (0..n).step_by(1000) {
        let end = (start + 1000).min(n);
        let x = Tensor::<2>::from_data(
            TensorData::new(inputs[start * per..end * per].to_vec(), [end - start, per]),
            &device,
        );
        let y = valid.forward(x);
        out.extend(y.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 logits"));
    }
    out
}

fn evaluate(net: &Net, data: &crate::Dataset) -> Eval {
    let per = data.example_len();
    let logits = infer(net, &data.inputs, per);
    score(&logits, data)
}

fn score(logits: &[f32], data: &crate::Dataset) -> Eval {
    let n = data.len();
    let classes = logits.len() / n.max(1);
    let errors = match &data.labels {
        Some(labels) => {
            (0..n).filter(|&i| argmax(&logits[i * classes..(i + 1) * classes]) != labels[i] as usize).count()
        }
        None => 0,
    };
    Eval { examples: n, errors, accuracy: 1.0 - errors as f64 / n.max(1) as f64 }
}

/// Accuracy of an ONNX model (e.g. the teacher) on labelled data, through pupil_runtime.
pub fn eval_onnx(path: &Path, data: &crate::Dataset) -> Result<Eval> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4);
    let model = pupil_runtime::Model::load(
        path,
        pupil_runtime::ModelOptions { batch: pupil_runtime::Batch::Symbolic, threads, top_k: 1 },
    )
    .map_err(|source| DistillError::Teacher { path: path.to_path_buf(), source })?;
    let per = data.example_len();
    let mut logits = Vec::new();
    for chunk in data.inputs.chunks(per * 1000) {
        logits.extend(
            model.run_batch(chunk).map_err(|source| DistillError::Teacher { path: path.to_path_buf(), source })?,
        );
    }
    Ok(score(&logits, data))
}

fn load_module(net: Net, path: &Path) -> Result<Net> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let record = burn::store::ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(|e| DistillError::Checkpoint { path: path.to_path_buf(), reason: e.to_string() })?;
    net.try_load_record(record)
        .map_err(|e| DistillError::Checkpoint { path: path.to_path_buf(), reason: e.to_string() })
}

/// Writes `epoch-NNNN/{model,optim}.bpk`, then `state.json` atomically, then removes older epoch directories.
fn save_checkpoint(dir: &Path, net: &Net, optim: &ModuleOptimizer, state: CheckpointState) -> Result<()> {
    let sub = dir.join(&state.dir);
    std::fs::create_dir_all(&sub).map_err(io(&sub))?;
    let ck = |path: PathBuf, e: String| DistillError::Checkpoint { path, reason: e };
    let model = net.clone().into_record().into_bytes().map_err(|e| ck(sub.join("model.bpk"), e.to_string()))?;
    write(&sub.join("model.bpk"), &model)?;
    let opt = optim.into_bytes().map_err(|e| ck(sub.join("optim.bpk"), e.to_string()))?;
    write(&sub.join("optim.bpk"), &opt)?;
    let json = serde_json::to_vec_pretty(&state).expect("state serialises");
    write(&dir.join("state.json"), &json)?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("epoch-") && name != state.dir {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    pupil_runtime::onnx::write_atomic(path, bytes)
        .map_err(|e| DistillError::Checkpoint { path: path.to_path_buf(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The teacher outputs are stored in `Shifts::all` order and looked up by `Shifts::index`: the two must agree.
    #[test]
    fn shifts_are_numbered_in_the_order_they_are_listed() {
        for k in 0..4 {
            let shifts = Shifts { k };
            let all: Vec<_> = shifts.all().collect();
            assert_eq!(all.len(), ((2 * k + 1) * (2 * k + 1)) as usize);
            for (n, &(dy, dx)) in all.iter().enumerate() {
                assert!(dy.abs() <= k && dx.abs() <= k);
                assert_eq!(shifts.index(dy, dx), n, "k {k} shift ({dy}, {dx})");
            }
        }
    }

    /// A shifted copy moves every pixel by (dy, dx) and fills what comes in with zeros.
    #[test]
    fn shift_moves_pixels_and_zero_fills() {
        let ex: Vec<f32> = (1..=9).map(|v| v as f32).collect(); // 1 × 3 × 3
        let mut out = vec![];
        shift(&ex, 1, 3, 3, 1, -1, &mut out);
        assert_eq!(out, vec![0.0, 0.0, 0.0, 2.0, 3.0, 0.0, 5.0, 6.0, 0.0]);
    }
}
