//! The quantizer on real MNIST: an MLP and a CNN with fitted weights (random features + a least-squares read-out,
//! deterministic, no training framework) quantized statically, dynamically and to f16, checked in tract for integer
//! kernels, top-1 agreement with f32, file size, and the refusals of bad input.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pupil_runtime::Error;
use pupil_runtime::onnx::zoo;
use pupil_runtime::prediction::argmax;
use pupil_runtime::quantize::{
    ActivationType, CalibrationMethod, FloatReason, Mode, NodeOutcome, QuantizeError, QuantizeOptions, QuantizeReport,
    quantize,
};
use pupil_runtime::{Batch, Model, ModelOptions};
use tract_onnx::prelude::*;

fn mnist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist")
}

fn idx(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut raw = vec![];
    flate2::read::GzDecoder::new(f).read_to_end(&mut raw).unwrap();
    let ndim = raw[3] as usize;
    let dims: Vec<usize> =
        (0..ndim).map(|i| u32::from_be_bytes(raw[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    (dims, raw[4 + 4 * ndim..].to_vec())
}

/// `n` MNIST examples scaled to [0, 1], and their labels.
fn mnist(prefix: &str, n: usize) -> (Vec<f32>, Vec<u32>) {
    let (_, pixels) = idx(&mnist_dir().join(format!("{prefix}-images-idx3-ubyte.gz")));
    let (_, labels) = idx(&mnist_dir().join(format!("{prefix}-labels-idx1-ubyte.gz")));
    (pixels[..n * 784].iter().map(|p| *p as f32 / 255.0).collect(), labels[..n].iter().map(|l| *l as u32).collect())
}

struct Data {
    train: (Vec<f32>, Vec<u32>),
    test: (Vec<f32>, Vec<u32>),
}

fn data() -> &'static Data {
    static D: OnceLock<Data> = OnceLock::new();
    D.get_or_init(|| Data { train: mnist("train", 4000), test: mnist("t10k", 2000) })
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal (sum of uniforms).
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.next()).sum::<f32>() - 2.0
    }
}

/// Ridge regression `W = (FᵀF + λI)⁻¹ FᵀY` for one-hot targets: weights `[classes, d]` row-major and biases.
fn ridge(features: &[f32], labels: &[u32], d: usize, classes: usize) -> (Vec<f32>, Vec<f32>) {
    let n = labels.len();
    let d1 = d + 1; // bias column
    let mut a = vec![0f64; d1 * d1];
    let mut b = vec![0f64; d1 * classes];
    let mut row = vec![0f64; d1];
    for i in 0..n {
        for j in 0..d {
            row[j] = features[i * d + j] as f64;
        }
        row[d] = 1.0;
        for p in 0..d1 {
            if row[p] == 0.0 {
                continue;
            }
            for q in 0..d1 {
                a[p * d1 + q] += row[p] * row[q];
            }
            b[p * classes + labels[i] as usize] += row[p];
        }
    }
    for p in 0..d1 {
        a[p * d1 + p] += 1.0;
    }
    // Cholesky solve.
    for j in 0..d1 {
        let mut s = a[j * d1 + j];
        for k in 0..j {
            s -= a[j * d1 + k] * a[j * d1 + k];
        }
        let l = s.sqrt();
        a[j * d1 + j] = l;
        for i in j + 1..d1 {
            let mut s = a[i * d1 + j];
            for k in 0..j {
                s -= a[i * d1 + k] * a[j * d1 + k];
            }
            a[i * d1 + j] = s / l;
        }
    }
    let mut w = vec![0f32; classes * d];
    let mut bias = vec![0f32; classes];
    for c in 0..classes {
        let mut y: Vec<f64> = (0..d1).map(|p| b[p * classes + c]).collect();
        for i in 0..d1 {
            for k in 0..i {
                y[i] -= a[i * d1 + k] * y[k];
            }
            y[i] /= a[i * d1 + i];
        }
        for i in (0..d1).rev() {
            for k in i + 1..d1 {
                y[i] -= a[k * d1 + i] * y[k];
            }
            y[i] /= a[i * d1 + i];
        }
        for j in 0..d {
            w[c * d + j] = y[j] as f32;
        }
        bias[c] = y[d] as f32;
    }
    (w, bias)
}

/// Runs ONNX bytes and returns the values of tensor `name` for the inputs (symbolic batch).
fn tensor_values(bytes: &[u8], name: &str, input: &[f32], shape: &[usize]) -> Vec<f32> {
    let proto = pupil_runtime::model::decode_onnx(bytes).unwrap();
    let mut model = tract_onnx::onnx().model_for_proto_model(&proto).unwrap();
    let outlet = model.find_outlet_label(name).unwrap();
    model.select_output_outlets(&[outlet]).unwrap();
    let dims: TVec<TDim> = shape.iter().map(|d| d.to_dim()).collect();
    model.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), dims)).unwrap();
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    let out = plan.run(tvec![Tensor::from_shape(shape, input).unwrap().into_tvalue()]).unwrap();
    out[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
}

/// MLP 784-256-128-10: two random-feature ReLU layers and a ridge-regression read-out fitted on MNIST train.
fn mlp_f32() -> &'static Vec<u8> {
    static M: OnceLock<Vec<u8>> = OnceLock::new();
    M.get_or_init(|| {
        let sizes = [784usize, 256, 128, 10];
        let mut rng = Lcg(7);
        let mut weights = vec![];
        let mut biases = vec![];
        for l in 0..2 {
            let (k, m) = (sizes[l], sizes[l + 1]);
            let scale = if l == 0 { 0.1 } else { 1.0 / (k as f32).sqrt() };
            weights.push((0..k * m).map(|_| rng.normal() * scale).collect::<Vec<f32>>());
            biases.push((0..m).map(|_| rng.normal() * 0.1).collect::<Vec<f32>>());
        }
        weights.push(vec![0.0; 128 * 10]);
        biases.push(vec![0.0; 10]);
        let bytes = zoo::mlp(&sizes, &weights, &biases).to_bytes();
        let d = data();
        let n = d.train.1.len();
        let feats = tensor_values(&bytes, "relu1", &d.train.0, &[n, 784]);
        let (w, b) = ridge(&feats, &d.train.1, 128, 10);
        weights[2] = w;
        biases[2] = b;
        zoo::mlp(&sizes, &weights, &biases).to_bytes()
    })
}

/// CNN conv8-conv16 (3×3, ReLU, max-pool) with random filters and a ridge-regression read-out.
fn cnn_f32() -> &'static Vec<u8> {
    static M: OnceLock<Vec<u8>> = OnceLock::new();
    M.get_or_init(|| {
        let channels = [16usize, 40];
        let features = 40 * 7 * 7;
        let mut rng = Lcg(11);
        let conv: Vec<Vec<f32>> = vec![
            (0..16 * 9).map(|_| rng.normal() * 0.5).collect(),
            (0..40 * 16 * 9).map(|_| rng.normal() * 0.15).collect(),
        ];
        let conv_bias: Vec<Vec<f32>> =
            vec![(0..16).map(|_| rng.normal() * 0.05).collect(), (0..40).map(|_| rng.normal() * 0.05).collect()];
        let build = |fc: &[f32], fc_bias: &[f32]| {
            let mut w = |l: usize, i: usize| -> f32 {
                if l < 2 {
                    if i >= 100_000 { conv_bias[l][i - 100_000] } else { conv[l][i] }
                } else if i >= 100_000 {
                    fc_bias[i - 100_000]
                } else {
                    fc[i]
                }
            };
            zoo::cnn(28, &channels, 10, &mut w).to_bytes()
        };
        let zero = build(&vec![0.0; 10 * features], &[0.0; 10]);
        let d = data();
        let n = 3000;
        let feats = tensor_values(&zero, "flat", &d.train.0[..n * 784], &[n, 1, 28, 28]);
        let (w, b) = ridge(&feats, &d.train.1[..n], features, 10);
        build(&w, &b)
    })
}

fn predictions(bytes: &[u8], input: &[f32]) -> Vec<usize> {
    let model = Model::from_bytes(bytes, ModelOptions::default().with_batch(Batch::Symbolic)).unwrap();
    model.run_batch(input).unwrap().chunks(model.classes()).map(argmax).collect()
}

fn agreement(a: &[usize], b: &[usize]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

fn accuracy(p: &[usize], labels: &[u32]) -> f64 {
    p.iter().zip(labels).filter(|(x, y)| **x == **y as usize).count() as f64 / p.len() as f64
}

/// Quantizes with `options` calibrating on 1000 train images; returns the bytes and report, after checking the
/// report's kernels: every integer product runs on an i32 kernel and nothing is recomputed from constants.
fn quantize_checked(f32_bytes: &[u8], options: &QuantizeOptions) -> (Vec<u8>, QuantizeReport) {
    let calib = &data().train.0[..1000 * 784];
    let (bytes, report) = quantize(f32_bytes, options, Some(calib)).unwrap();
    if !report.warnings.is_empty() {
        std::fs::write(std::env::temp_dir().join("quantize_failed.onnx"), &bytes).unwrap();
    }
    assert!(report.warnings.is_empty(), "warnings: {:?}", report.warnings);
    assert!(report.per_run_constant_ops.is_empty(), "{:?}", report.per_run_constant_ops);
    (bytes, report)
}

/// Integer kernels asserted from tract's optimised graph directly (not from the report): `integer` products on
/// i32 kernels and no other matrix product.
fn assert_integer_kernels(bytes: &[u8], integer: usize) {
    assert_kernels(bytes, integer, 0)
}

fn assert_kernels(bytes: &[u8], expected_integer: usize, expected_float: usize) {
    use tract_onnx::tract_core::ops::konst::Const;
    use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;
    let model = Model::from_bytes(bytes, ModelOptions::default()).unwrap();
    let typed = model.typed_model();
    let (mut integer, mut float) = (0, 0);
    for node in typed.nodes() {
        if let Some(mm) = node.op_as::<OptMatMul>() {
            if mm.mmm.iter().all(|k| k.internal_type() == i32::datum_type() && k.name().contains("i32")) {
                integer += 1;
            } else {
                float += 1;
            }
        }
        // pupil's own int8 GEMV (runtime/src/kernels) replaces some of tract's quantized matmuls.
        if node.op_as::<pupil_runtime::kernels::PupilQMatMul>().is_some() {
            integer += 1;
        }
        // ... and its f32 GEMV replaces tract's f32 matmuls at batch 1.
        if node.op_as::<pupil_runtime::kernels::PupilMatMul>().is_some() {
            float += 1;
        }
        // Nothing is recomputed from constants on every run (weights are pre-packed, never dequantized per run).
        if !node.op_is::<Const>() && !node.inputs.is_empty() {
            assert!(
                !node.inputs.iter().all(|i| typed.node(i.node).op_is::<Const>()),
                "per-run op on constants: {node}"
            );
        }
    }
    assert_eq!((integer, float), (expected_integer, expected_float), "(integer, f32) matrix products");
}

#[test]
fn mlp_static_int8_agrees_and_runs_on_integer_kernels() {
    let f32_bytes = mlp_f32();
    let d = data();
    let reference = predictions(f32_bytes, &d.test.0);
    let acc = accuracy(&reference, &d.test.1);
    eprintln!("MLP f32 test accuracy {acc}");
    assert!(acc > 0.7, "the fitted f32 MLP should be a real classifier, accuracy {acc}");
    let (bytes, report) = quantize_checked(f32_bytes, &QuantizeOptions::default());
    assert_integer_kernels(&bytes, 3);
    assert_eq!(report.quantized_nodes(), 3);
    assert_eq!(report.nodes.iter().filter(|n| matches!(n.outcome, NodeOutcome::Folded { .. })).count(), 2);
    assert!(report.kernels.iter().all(|k| k.expected_integer && k.integer), "{:#?}", report.kernels);
    let ops: Vec<String> = pupil_runtime::model::decode_onnx(&bytes)
        .unwrap()
        .graph
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type.clone())
        .collect();
    // One QuantizeLinear at the input, no float round trip between the layers, no DequantizeLinear at all.
    assert_eq!(ops.iter().filter(|o| *o == "QuantizeLinear").count(), 1, "{ops:?}");
    assert_eq!(ops.iter().filter(|o| *o == "DequantizeLinear").count(), 0, "{ops:?}");
    assert_eq!(ops.iter().filter(|o| *o == "QLinearConv").count(), 2, "{ops:?}");
    assert_eq!(ops.iter().filter(|o| *o == "MatMulInteger").count(), 1, "{ops:?}");
    let quantized = predictions(&bytes, &d.test.0);
    let agree = agreement(&reference, &quantized);
    assert!(agree >= 0.99, "top-1 agreement {agree}");
    assert!(report.size_ratio() <= 0.27, "size ratio {}", report.size_ratio());
    assert_eq!(report.size_after, bytes.len() as u64);
}

#[test]
fn cnn_static_int8_agrees_and_runs_its_dense_layer_on_integer_kernels_and_its_convolutions_on_pupils() {
    let f32_bytes = cnn_f32();
    let d = data();
    let reference = predictions(f32_bytes, &d.test.0);
    assert!(accuracy(&reference, &d.test.1) > 0.85, "accuracy {}", accuracy(&reference, &d.test.1));
    let (bytes, report) = quantize_checked(f32_bytes, &QuantizeOptions::default());
    // The dense layer on an i32 kernel; the 1-channel int8 convolution on pupil's f32 direct kernel with the int8
    // activation grid (`kernels::qconv`); the 16-channel one on pupil's int8 grid kernel where the CPU has AVX-512
    // VNNI or NEON dotprod, else on its f32 grid kernel. No matrix product is left in f32.
    assert_kernels(&bytes, 1, 0);
    use pupil_runtime::kernels::Isa;
    let int8_kernel = matches!(Isa::best(), Isa::Avx512Vnni | Isa::NeonDotprod);
    let model = Model::from_bytes(&bytes, ModelOptions::default()).unwrap();
    let ops: Vec<&str> = pupil_runtime::kernels::pupil_nodes(model.typed_model()).iter().map(|r| r.op).collect();
    let grid = if int8_kernel { "PupilQGridConv" } else { "PupilGridConv" };
    assert!(ops.contains(&"PupilDirectConv") && ops.contains(&grid), "{ops:?}");
    let on_f32: Vec<&pupil_runtime::quantize::KernelReport> =
        report.kernels.iter().filter(|k| k.op == "QLinearConv" && !k.expected_integer).collect();
    let want = if int8_kernel { 1 } else { 2 };
    assert_eq!(on_f32.len(), want, "convolutions the report lists as run in f32 by design: {:?}", report.kernels);
    let on_int8 = report.kernels.iter().filter(|k| k.op == "QLinearConv" && k.integer && k.accumulator == "i32");
    assert_eq!(on_int8.count(), 2 - want, "convolutions on pupil's int8 kernel: {:?}", report.kernels);
    let outcome = |op: &str| report.nodes.iter().filter(|n| n.op == op).map(|n| n.outcome.clone()).collect::<Vec<_>>();
    assert!(outcome("MaxPool").iter().all(|o| *o == NodeOutcome::PassThrough), "{:?}", outcome("MaxPool"));
    assert!(outcome("Relu").iter().all(|o| matches!(o, NodeOutcome::Folded { .. })));
    assert!(outcome("Conv").iter().all(|o| matches!(o, NodeOutcome::Quantized { .. })));
    let quantized = predictions(&bytes, &d.test.0);
    let agree = agreement(&reference, &quantized);
    assert!(agree >= 0.99, "top-1 agreement {agree}");
    // 25.5k parameters (102 KB, the size of a small CNN student): per-channel scales, zero points and names are
    // a small share, so the whole file is at most 0.27x; the weight payload itself is int8 (checked below).
    assert!(report.size_ratio() <= 0.27, "size ratio {}", report.size_ratio());
    let proto = pupil_runtime::model::decode_onnx(&bytes).unwrap();
    let weight_bytes: usize = proto
        .graph
        .unwrap()
        .initializer
        .iter()
        .filter(|t| t.data_type == pupil_runtime::onnx::dtype::F32 && t.dims.iter().product::<i64>() > 64)
        .map(|t| t.raw_data.len())
        .sum();
    assert_eq!(weight_bytes, 0, "no f32 weight tensor left");
}

#[test]
fn calibration_methods_and_options_all_agree() {
    let f32_bytes = mlp_f32();
    let d = data();
    let reference = predictions(f32_bytes, &d.test.0);
    let cases = [
        QuantizeOptions { calibration: CalibrationMethod::Percentile, ..Default::default() },
        QuantizeOptions { calibration: CalibrationMethod::Entropy, ..Default::default() },
        QuantizeOptions { activations: ActivationType::I8, ..Default::default() },
        QuantizeOptions { per_channel: false, ..Default::default() },
    ];
    for options in cases {
        let (bytes, report) = quantize_checked(f32_bytes, &options);
        assert_integer_kernels(&bytes, 3);
        assert_eq!(report.calibration, Some(options.calibration));
        let agree = agreement(&reference, &predictions(&bytes, &d.test.0));
        assert!(agree >= 0.98, "{options:?}: agreement {agree}");
    }
}

#[test]
fn dynamic_mode_needs_no_calibration() {
    let f32_bytes = mlp_f32();
    let d = data();
    let reference = predictions(f32_bytes, &d.test.0);
    let (bytes, report) = quantize(f32_bytes, &QuantizeOptions::dynamic(), None).unwrap();
    assert_eq!(report.mode, Mode::Dynamic);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_integer_kernels(&bytes, 3);
    let agree = agreement(&reference, &predictions(&bytes, &d.test.0));
    eprintln!("dynamic agreement {agree}");
    assert!(agree >= 0.98, "agreement {agree}");
    // The on-device path: quantized at load time from the f32 file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mlp.onnx");
    std::fs::write(&path, f32_bytes).unwrap();
    let model = pupil_runtime::quantize::load_dynamic(&path, ModelOptions::default()).unwrap();
    let x = &d.test.0[..784];
    assert_eq!(argmax(&model.run(x).unwrap()), quantized_first(&bytes, x));
}

fn quantized_first(bytes: &[u8], x: &[f32]) -> usize {
    argmax(&Model::from_bytes(bytes, ModelOptions::default()).unwrap().run(x).unwrap())
}

#[test]
fn f16_variant_halves_the_file_and_agrees() {
    for f32_bytes in [mlp_f32(), cnn_f32()] {
        let d = data();
        let reference = predictions(f32_bytes, &d.test.0[..500 * 784]);
        let (bytes, report) = quantize(f32_bytes, &QuantizeOptions::f16(), None).unwrap();
        assert!(report.size_ratio() <= 0.52, "ratio {}", report.size_ratio());
        assert!(
            report.nodes.iter().filter(|n| n.op == "Gemm" || n.op == "Conv").all(|n| n.outcome == NodeOutcome::Half)
        );
        let agree = agreement(&reference, &predictions(&bytes, &d.test.0[..500 * 784]));
        assert!(agree >= 0.995, "agreement {agree}");
    }
}

#[test]
fn keep_float_keeps_the_named_node_in_f32() {
    let f32_bytes = mlp_f32();
    let options = QuantizeOptions { keep_float: vec!["logits".into()], ..Default::default() };
    let (bytes, report) = quantize_checked(f32_bytes, &options);
    let last = report.nodes.iter().rfind(|n| n.op == "Gemm").unwrap();
    assert_eq!(last.outcome, NodeOutcome::KeptFloat { why: FloatReason::KeepFloat });
    assert_kernels(&bytes, 2, 1);
    let ops: Vec<String> = pupil_runtime::model::decode_onnx(&bytes)
        .unwrap()
        .graph
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type.clone())
        .collect();
    // fc0 stays requantized (fc1 consumes it in int8); fc1 feeds the f32 Gemm, so it accumulates in int32 and
    // rescales to f32 once.
    assert_eq!(ops.iter().filter(|o| *o == "Gemm").count(), 1, "{ops:?}");
    assert_eq!(ops.iter().filter(|o| *o == "QLinearConv").count(), 1, "{ops:?}");
    assert_eq!(ops.iter().filter(|o| *o == "MatMulInteger").count(), 1, "{ops:?}");
    let d = data();
    let agree = agreement(&predictions(f32_bytes, &d.test.0), &predictions(&bytes, &d.test.0));
    assert!(agree >= 0.99, "agreement {agree}");
}

#[test]
fn unsupported_operators_stay_float_and_are_reported() {
    // A Softmax at the end: no integer form, kept f32 and reported.
    let mut rng = Lcg(3);
    let w: Vec<Vec<f32>> =
        vec![(0..784 * 16).map(|_| rng.normal() * 0.1).collect(), (0..16 * 10).map(|_| rng.normal()).collect()];
    let b = vec![vec![0.0; 16], vec![0.0; 10]];
    let mut g = zoo::mlp(&[784, 16, 10], &w, &b);
    let mut proto = g.build();
    let graph = proto.graph.as_mut().unwrap();
    graph.node.last_mut().unwrap().output[0] = "pre".into();
    graph.node.push(tract_onnx::pb::NodeProto {
        name: "softmax".into(),
        op_type: "Softmax".into(),
        input: vec!["pre".into()],
        output: vec!["logits".into()],
        ..Default::default()
    });
    let bytes = pupil_runtime::onnx::encode(&proto);
    let _ = &mut g;
    let (q, report) = quantize_checked(&bytes, &QuantizeOptions::default());
    let softmax = report.nodes.iter().find(|n| n.op == "Softmax").unwrap();
    assert_eq!(softmax.outcome, NodeOutcome::KeptFloat { why: FloatReason::NoIntegerForm });
    let d = data();
    let agree = agreement(&predictions(&bytes, &d.test.0[..500 * 784]), &predictions(&q, &d.test.0[..500 * 784]));
    assert!(agree >= 0.99, "agreement {agree}");
}

fn quantize_err(bytes: &[u8], options: &QuantizeOptions, calib: Option<&[f32]>) -> QuantizeError {
    match quantize(bytes, options, calib) {
        Err(Error::Quantize(e)) => e,
        other => panic!("expected a quantization error, got {:?}", other.map(|r| r.1.nodes.len())),
    }
}

#[test]
fn bad_input_is_refused_with_typed_errors() {
    let f32_bytes = mlp_f32();
    let options = QuantizeOptions::default();
    assert_eq!(quantize_err(f32_bytes, &options, None), QuantizeError::MissingCalibration);
    assert_eq!(quantize_err(f32_bytes, &options, Some(&[])), QuantizeError::EmptyCalibration);
    assert_eq!(
        quantize_err(f32_bytes, &options, Some(&[0.5; 785])),
        QuantizeError::CalibrationShape { expected: 784, got: 785, example_shape: vec![784] }
    );
    let mut nan = vec![0.0; 784];
    nan[3] = f32::NAN;
    assert!(matches!(
        quantize_err(f32_bytes, &options, Some(&nan)),
        QuantizeError::NonFiniteCalibration { index: 3, .. }
    ));
    let (int8, _) = quantize(f32_bytes, &options, Some(&data().train.0[..100 * 784])).unwrap();
    assert!(matches!(
        quantize_err(&int8, &options, Some(&data().train.0[..784])),
        QuantizeError::AlreadyQuantized { .. }
    ));
    assert!(matches!(quantize_err(&int8, &QuantizeOptions::dynamic(), None), QuantizeError::AlreadyQuantized { .. }));
    let keep = QuantizeOptions { keep_float: vec!["no_such_node".into()], ..Default::default() };
    assert_eq!(
        quantize_err(f32_bytes, &keep, Some(&data().train.0[..784])),
        QuantizeError::UnknownKeepFloat { name: "no_such_node".into() }
    );
    assert!(matches!(quantize(b"not a model", &options, None), Err(Error::NotOnnx { .. })));
}

/// Runs a model on `input` (symbolic batch) and returns the raw bits of its outputs.
fn output_bits(bytes: &[u8], input: &[f32]) -> Vec<u32> {
    let model = Model::from_bytes(bytes, ModelOptions::default().with_batch(Batch::Symbolic)).unwrap();
    model.run_batch(input).unwrap().iter().map(|v| v.to_bits()).collect()
}

/// The int8 weights of `units` outputs × `k` inputs in `bytes` (the one initializer of that size), one vector of `k`
/// per unit, whichever of `[M, K, ...]` and `[K, M]` layouts the quantizer wrote.
fn unit_weights(bytes: &[u8], units: usize, k: usize) -> Vec<Vec<u8>> {
    let proto = pupil_runtime::model::decode_onnx(bytes).unwrap();
    let t = proto.graph.unwrap().initializer.into_iter().find(|t| t.raw_data.len() == units * k && t.data_type == 3);
    let t = t.expect("an int8 initializer of the layer's size");
    if t.dims[0] as usize == units {
        t.raw_data.chunks(k).map(|c| c.to_vec()).collect()
    } else {
        (0..units).map(|u| (0..k).map(|i| t.raw_data[i * units + u]).collect()).collect()
    }
}

#[test]
fn hidden_units_sorted_by_zero_rate_give_the_same_outputs_bit_for_bit() {
    let f32_bytes = mlp_f32();
    let test = &data().test.0[..500 * 784];
    let (kept, kept_report) =
        quantize_checked(f32_bytes, &QuantizeOptions { order_units: false, ..Default::default() });
    let (sorted, report) = quantize_checked(f32_bytes, &QuantizeOptions::default());
    assert!(kept_report.unit_order.is_empty());
    let tensors: Vec<(&str, usize)> = report.unit_order.iter().map(|u| (u.tensor.as_str(), u.units)).collect();
    assert_eq!(tensors, [("relu0", 256), ("relu1", 128)]);
    for u in &report.unit_order {
        assert!(u.reordered && u.zero_quads_after > u.zero_quads_before, "{u:?}");
    }
    // The first layer's int8 weights are the same rows in another order, and the model computes the same bits.
    let (mut a, mut b) = (unit_weights(&kept, 256, 784), unit_weights(&sorted, 256, 784));
    assert_ne!(a, b);
    a.sort();
    b.sort();
    assert_eq!(a, b);
    assert_eq!(output_bits(&kept, test), output_bits(&sorted, test));
}

#[test]
fn hidden_units_of_kn_weights_move_with_their_bias_and_the_next_layers_rows() {
    // Gemm with `[K, N]` weights (no transB, like burn's export) → Relu → MatMul: every other hidden unit has a
    // bias of -4 and is zero on nearly every image, so the model's own order leaves no quad all zero.
    let (k, m, n) = (784usize, 48usize, 10usize);
    let mut rng = Lcg(3);
    let w1: Vec<f32> = (0..k * m).map(|_| rng.normal() * 0.05).collect();
    let b1: Vec<f32> = (0..m).map(|u| if u % 2 == 0 { -4.0 } else { 0.1 + rng.next() }).collect();
    let w2: Vec<f32> = (0..m * n).map(|_| rng.normal()).collect();
    let mut g = pupil_runtime::onnx::GraphBuilder::new("kn");
    let batch = pupil_runtime::spec::Dim::Symbol("N".into());
    let x = g.input("input", &[batch.clone(), pupil_runtime::spec::Dim::Fixed(k)]);
    let (w1n, b1n) = (g.init_f32("w1", &[k, m], &w1), g.init_f32("b1", &[m], &b1));
    let w2n = g.init_f32("w2", &[m, n], &w2);
    g.node("Gemm", &[&x, &w1n, &b1n], &["h"], &[]);
    g.node("Relu", &["h"], &["h.relu"], &[]);
    g.node("MatMul", &["h.relu", &w2n], &["logits"], &[]);
    g.output("logits", &[batch, pupil_runtime::spec::Dim::Fixed(n)]);
    let f32_bytes = g.to_bytes();
    let (kept, _) = quantize_checked(&f32_bytes, &QuantizeOptions { order_units: false, ..Default::default() });
    let (sorted, report) = quantize_checked(&f32_bytes, &QuantizeOptions::default());
    let [u] = report.unit_order.as_slice() else { panic!("{:?}", report.unit_order) };
    assert_eq!((u.tensor.as_str(), u.units, u.reordered), ("h.relu", m, true));
    assert!(u.zero_quads_before < 0.05 && u.zero_quads_after > 0.45, "{u:?}");
    let test = &data().test.0[..500 * 784];
    assert_eq!(output_bits(&kept, test), output_bits(&sorted, test));
}
