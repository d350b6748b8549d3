//! Test fixtures for the parity tests: real MNIST examples and deterministic classifiers built from them
//! (a nearest-class-mean linear classifier, ~80% accurate, and variants with known defects).
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};

use pupil_runtime::onnx::zoo;

/// The repository's `data/mnist`.
pub fn mnist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("data/mnist").is_dir())
        .expect("data/mnist")
        .join("data/mnist")
}

fn idx(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let mut bytes = vec![];
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("open MNIST"))
        .read_to_end(&mut bytes)
        .expect("gunzip MNIST");
    let ndim = bytes[3] as usize;
    let dims: Vec<usize> =
        (0..ndim).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    (dims, bytes[4 + 4 * ndim..].to_vec())
}

/// The first `n` examples of an MNIST split (`train` or `t10k`): pixels / 255, flat `[n, 784]`, and labels.
pub fn mnist(prefix: &str, n: usize) -> (Vec<f32>, Vec<u32>) {
    let dir = mnist_dir();
    let (dims, pixels) = idx(&dir.join(format!("{prefix}-images-idx3-ubyte.gz")));
    let (_, labels) = idx(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")));
    let n = n.min(dims[0]);
    (pixels[..n * 784].iter().map(|p| *p as f32 / 255.0).collect(), labels[..n].iter().map(|l| *l as u32).collect())
}

/// Mean image of each digit over the first `n` training examples: `[10][784]`.
pub fn class_means(n: usize) -> Vec<Vec<f32>> {
    let (x, y) = mnist("train", n);
    let mut sums = vec![vec![0f64; 784]; 10];
    let mut counts = [0usize; 10];
    for (img, &l) in x.chunks(784).zip(&y) {
        counts[l as usize] += 1;
        for (s, p) in sums[l as usize].iter_mut().zip(img) {
            *s += *p as f64;
        }
    }
    sums.iter().zip(counts).map(|(s, c)| s.iter().map(|v| (v / c as f64) as f32).collect()).collect()
}

/// Nearest-class-mean scores as a linear layer: `w_c = m_c`, `b_c = -|m_c|²/2` (argmax = nearest mean).
pub fn ncm_layer(means: &[Vec<f32>]) -> (Vec<f32>, Vec<f32>) {
    let w: Vec<f32> = means.iter().flatten().copied().collect();
    let b: Vec<f32> = means.iter().map(|m| -0.5 * m.iter().map(|v| v * v).sum::<f32>()).collect();
    (w, b)
}

/// A one-layer nearest-class-mean classifier `[N, 784] → [N, 10]`; `bias_delta` adds to one class's bias.
pub fn ncm_onnx(means: &[Vec<f32>], bias_delta: Option<(usize, f32)>) -> Vec<u8> {
    let (w, mut b) = ncm_layer(means);
    if let Some((c, d)) = bias_delta {
        b[c] += d;
    }
    zoo::mlp(&[784, 10], &[w], &[b]).to_bytes()
}

/// Rounds values to a symmetric 8-bit grid (per tensor), like an int8 weight quantizer.
pub fn fake_quant(v: &[f32]) -> Vec<f32> {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if max == 0.0 { 1.0 } else { max / 127.0 };
    v.iter().map(|x| (x / scale).round().clamp(-127.0, 127.0) * scale).collect()
}

/// The same nearest-class-mean classifier as three layers (`fc0 → relu0 → fc1 → relu1 → logits`):
/// fc0 computes the scores plus an offset that keeps them positive through the Relu, fc1 and the last layer are
/// identities (the last removes the offset). `corrupt_fc1` adds large deterministic noise to fc1's weights;
/// `quantize` rounds every weight to an 8-bit grid.
pub fn deep_ncm_onnx(means: &[Vec<f32>], corrupt_fc1: bool, quantize: bool) -> Vec<u8> {
    const OFFSET: f32 = 1000.0;
    let (w0, b0) = ncm_layer(means);
    let b0: Vec<f32> = b0.iter().map(|b| b + OFFSET).collect();
    let eye: Vec<f32> = (0..100).map(|i| if i / 10 == i % 10 { 1.0 } else { 0.0 }).collect();
    let mut w1 = eye.clone();
    if corrupt_fc1 {
        for (i, w) in w1.iter_mut().enumerate() {
            *w += 2.0 * (((i * 7919 + 13) % 97) as f32 / 97.0 - 0.5);
        }
    }
    let (mut w0, mut w1, mut w2) = (w0, w1, eye);
    if quantize {
        w0 = fake_quant(&w0);
        w1 = fake_quant(&w1);
        w2 = fake_quant(&w2);
    }
    zoo::mlp(&[784, 10, 10, 10], &[w0, w1, w2], &[b0, vec![0.0; 10], vec![-OFFSET; 10]]).to_bytes()
}
