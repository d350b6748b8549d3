//! ONNX export of a trained student: written with `pupil_runtime::onnx::GraphBuilder` (Gemm, Conv with BatchNorm
//! folded in, Relu, MaxPool, Flatten; opset 13, symbolic batch `N`, `pupil.preprocess`/`pupil.labels` metadata),
//! then checked against the burn network through `pupil_runtime`.

use std::path::Path;

use pupil_runtime::onnx::{Attr, GraphBuilder};
use pupil_runtime::{Batch, Dim, Model, ModelOptions, PreprocessSpec};

use crate::error::{DistillError, Result};
use crate::net::NetWeights;

/// Largest |ONNX − burn| difference on a logit that export accepts.
pub const PARITY_TOLERANCE: f32 = 1e-4;

/// Builds the ONNX graph of `weights`: input `input` of shape `[N, …input_shape]`, output `logits` `[N, classes]`.
pub fn build_onnx(
    name: &str,
    weights: &NetWeights,
    input_shape: &[usize],
    preprocess: Option<&PreprocessSpec>,
    labels: Option<&[String]>,
) -> GraphBuilder {
    let mut b = GraphBuilder::new(name);
    let n = Dim::Symbol("N".into());
    let mut dims = vec![n.clone()];
    dims.extend(input_shape.iter().map(|d| Dim::Fixed(*d)));
    let mut x = b.input("input", &dims);
    for (l, conv) in weights.convs.iter().enumerate() {
        let [cout, cin, kh, kw] = conv.shape;
        let (mut w, mut bias) = (conv.weight.clone(), conv.bias.clone());
        if let Some(bn) = &conv.bn {
            // Fold the inference-mode BatchNorm into the convolution: w·s, (b − mean)·s + beta, s = gamma/√(var+eps).
            let per = cin * kh * kw;
            for o in 0..cout {
                let s = bn.gamma[o] / (bn.var[o] + bn.epsilon).sqrt();
                for v in &mut w[o * per..(o + 1) * per] {
                    *v *= s;
                }
                bias[o] = (bias[o] - bn.mean[o]) * s + bn.beta[o];
            }
        }
        let wn = b.init_f32(&format!("conv{l}.weight"), &[cout, cin, kh, kw], &w);
        let bn_ = b.init_f32(&format!("conv{l}.bias"), &[cout], &bias);
        let c = b.node(
            "Conv",
            &[&x, &wn, &bn_],
            &[&format!("conv{l}")],
            &[
                ("kernel_shape", Attr::Ints(vec![kh as i64, kw as i64])),
                ("pads", Attr::Ints(vec![1, 1, 1, 1])),
                ("strides", Attr::Ints(vec![1, 1])),
            ],
        );
        x = b.node("Relu", &[&c], &[&format!("conv{l}.relu")], &[]);
        if conv.pool {
            x = b.node(
                "MaxPool",
                &[&x],
                &[&format!("pool{l}")],
                &[("kernel_shape", Attr::Ints(vec![2, 2])), ("strides", Attr::Ints(vec![2, 2]))],
            );
        }
    }
    if dims.len() != 2 {
        x = b.node("Flatten", &[&x], &["flat"], &[("axis", Attr::Int(1))]);
    }
    let last = weights.fcs.len() - 1;
    for (i, fc) in weights.fcs.iter().enumerate() {
        let w = b.init_f32(&format!("fc{i}.weight"), &[fc.inputs, fc.outputs], &fc.weight);
        let bias = b.init_f32(&format!("fc{i}.bias"), &[fc.outputs], &fc.bias);
        let out = if i == last { "logits".to_string() } else { format!("fc{i}") };
        x = b.node("Gemm", &[&x, &w, &bias], &[&out], &[]);
        if i < last {
            x = b.node("Relu", &[&x], &[&format!("fc{i}.relu")], &[]);
        }
    }
    let classes = weights.fcs[last].outputs;
    b.output("logits", &[n, Dim::Fixed(classes)]);
    if let Some(spec) = preprocess {
        b.metadata(pupil_runtime::meta::PREPROCESS_KEY, &serde_json::to_string(spec).expect("spec serialises"));
    }
    if let Some(labels) = labels {
        b.metadata(pupil_runtime::meta::LABELS_KEY, &serde_json::to_string(labels).expect("labels serialise"));
    }
    b
}

/// Runs `onnx` through `pupil_runtime` on `inputs` (flat, `n` examples) and returns the largest absolute
/// difference from `expected` (the burn network's logits for the same inputs).
pub fn parity(onnx: &[u8], path: &Path, inputs: &[f32], expected: &[f32]) -> Result<f32> {
    let model = Model::from_bytes(onnx, ModelOptions { batch: Batch::Symbolic, threads: 1, top_k: 5 })
        .map_err(|source| DistillError::Export { path: path.to_path_buf(), source })?;
    let got = model.run_batch(inputs).map_err(|source| DistillError::Export { path: path.to_path_buf(), source })?;
    if got.len() != expected.len() {
        return Err(DistillError::Engine(format!(
            "the exported model returned {} values, the network {}",
            got.len(),
            expected.len()
        )));
    }
    Ok(got
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) }))
}
