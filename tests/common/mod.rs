//! Shared fixtures for the end-to-end tests: real MNIST data and small real classifiers built without training.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use pupil_distill::{Dataset, Split, data::load_mnist};
use pupil_runtime::onnx::zoo;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn mnist(split: Split) -> Dataset {
    load_mnist(&root().join("data/mnist"), split).expect("MNIST is committed under data/mnist")
}

/// Per-class mean of `features(example)` over the first `n` training examples.
fn class_means(train: &Dataset, n: usize, features: &dyn Fn(&[f32]) -> Vec<f32>) -> Vec<Vec<f32>> {
    let labels = train.labels.as_ref().unwrap();
    let dim = features(train.example(0)).len();
    let mut sums = vec![vec![0f32; dim]; 10];
    let mut counts = [0f32; 10];
    for (i, &label) in labels.iter().enumerate().take(n.min(train.len())) {
        let f = features(train.example(i));
        let c = label as usize;
        counts[c] += 1.0;
        for (s, v) in sums[c].iter_mut().zip(&f) {
            *s += v;
        }
    }
    for (s, c) in sums.iter_mut().zip(counts) {
        s.iter_mut().for_each(|v| *v /= c);
    }
    sums
}

/// A nearest-class-mean classifier as an ONNX MLP 784-10-10: layer 1 scores x·m_c (non-negative, so the ReLU
/// keeps it), layer 2 subtracts ½‖m_c‖². Reaches ~80% on MNIST with no training.
pub struct Centroid {
    pub means: Vec<Vec<f32>>,
}

impl Centroid {
    pub fn fit(train: &Dataset) -> Self {
        Centroid { means: class_means(train, 20_000, &|x| x.to_vec()) }
    }
    pub fn logits(&self, x: &[f32]) -> Vec<f32> {
        self.means
            .iter()
            .map(|m| m.iter().zip(x).map(|(a, b)| a * b).sum::<f32>() - 0.5 * m.iter().map(|a| a * a).sum::<f32>())
            .collect()
    }
    pub fn onnx(&self) -> Vec<u8> {
        let w1: Vec<f32> = self.means.iter().flatten().copied().collect();
        let mut w2 = vec![0f32; 100];
        for c in 0..10 {
            w2[c * 10 + c] = 1.0;
        }
        let b2: Vec<f32> = self.means.iter().map(|m| -0.5 * m.iter().map(|a| a * a).sum::<f32>()).collect();
        zoo::mlp(&[784, 10, 10], &[w1, w2], &[vec![0.0; 10], b2]).to_bytes()
    }
}

/// 2×2 max-pooling of a 28×28 image.
pub fn pool2(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; 196];
    for y in 0..14 {
        for xx in 0..14 {
            let at = |dy: usize, dx: usize| x[(2 * y + dy) * 28 + 2 * xx + dx];
            out[y * 14 + xx] = at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
        }
    }
    out
}

/// The same idea as a CNN: an identity 3×3 conv, ReLU, 2×2 max-pool, then nearest mean of pooled images.
pub fn centroid_cnn(train: &Dataset) -> (Vec<u8>, Vec<Vec<f32>>) {
    let means = class_means(train, 20_000, &|x| pool2(x));
    let w: Vec<f32> = means.iter().flatten().copied().collect();
    let b: Vec<f32> = means.iter().map(|m| -0.5 * m.iter().map(|a| a * a).sum::<f32>()).collect();
    let bytes = zoo::cnn(28, &[1], 10, &mut |layer, i| match (layer, i) {
        (0, 4) => 1.0,
        (0, _) => 0.0,
        (_, i) if i >= 100_000 => b[i - 100_000],
        (_, i) => w[i],
    })
    .to_bytes();
    (bytes, means)
}

/// Runs the `pupil` binary; returns (exit code, stdout, stderr).
pub fn pupil(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pupil")).args(args).current_dir(root()).output().expect("run pupil");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}
