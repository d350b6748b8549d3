//! The speed benchmark's model suite, generated (deterministic weights): MLPs 784-800-800-10 and
//! 784-1200-1200-10, a CNN conv32-conv64-fc128 on 28×28, and a MobileNet-style depthwise-separable CNN on
//! 96×96×3 with 8 inverted-residual blocks. Also a plain int8 variant of the MLPs (`QLinearMatMul`) for when
//! no calibrated quantizer output is at hand.

use crate::onnx::{Attr, GraphBuilder, dtype};
use crate::spec::Dim;

/// A small deterministic generator (splitmix64) so every run writes the same models.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in `[-a, a)`.
    pub fn sym(&mut self, a: f32) -> f32 {
        (self.unit() * 2.0 - 1.0) * a
    }
    /// `n` values uniform in `[-sqrt(6 / fan_in), +)` (He-uniform: activations keep their scale).
    pub fn he(&mut self, n: usize, fan_in: usize) -> Vec<f32> {
        let a = (6.0 / fan_in as f32).sqrt();
        (0..n).map(|_| self.sym(a)).collect()
    }
}

/// One generated model.
#[derive(Debug, Clone)]
pub struct SuiteModel {
    /// File stem, e.g. `mlp-784-800-800-10`.
    pub name: String,
    /// ONNX bytes.
    pub bytes: Vec<u8>,
}

fn batch() -> Dim {
    Dim::Symbol("N".into())
}

/// MLP with `Gemm` + `Relu` layers, He-uniform weights, small biases.
pub fn mlp(sizes: &[usize], seed: u64) -> GraphBuilder {
    let (w, b) = mlp_weights(sizes, seed);
    crate::onnx::zoo::mlp(sizes, &w, &b)
}

/// The weights [`mlp`] uses: `w[i]` is `[sizes[i+1], sizes[i]]` row-major.
pub fn mlp_weights(sizes: &[usize], seed: u64) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut rng = Rng::new(seed);
    let mut ws = vec![];
    let mut bs = vec![];
    for l in 0..sizes.len() - 1 {
        ws.push(rng.he(sizes[l] * sizes[l + 1], sizes[l]));
        bs.push((0..sizes[l + 1]).map(|_| rng.sym(0.05)).collect());
    }
    (ws, bs)
}

#[allow(clippy::too_many_arguments)] // one argument per Conv attribute of the graph being written
fn conv(
    b: &mut GraphBuilder,
    rng: &mut Rng,
    x: &str,
    name: &str,
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    group: usize,
) -> String {
    let fan_in = cin / group * kernel * kernel;
    let w = rng.he(cout * fan_in, fan_in);
    let bias: Vec<f32> = (0..cout).map(|_| rng.sym(0.05)).collect();
    let w = b.init_f32(&format!("{name}.weight"), &[cout, cin / group, kernel, kernel], &w);
    let bias = b.init_f32(&format!("{name}.bias"), &[cout], &bias);
    let pad = (kernel / 2) as i64;
    b.node(
        "Conv",
        &[x, &w, &bias],
        &[name],
        &[
            ("kernel_shape", Attr::Ints(vec![kernel as i64; 2])),
            ("pads", Attr::Ints(vec![pad; 4])),
            ("strides", Attr::Ints(vec![stride as i64; 2])),
            ("group", Attr::Int(group as i64)),
        ],
    )
}

fn gemm(b: &mut GraphBuilder, rng: &mut Rng, x: &str, name: &str, k: usize, n: usize) -> String {
    let w = rng.he(n * k, k);
    let bias: Vec<f32> = (0..n).map(|_| rng.sym(0.05)).collect();
    let w = b.init_f32(&format!("{name}.weight"), &[n, k], &w);
    let bias = b.init_f32(&format!("{name}.bias"), &[n], &bias);
    b.node("Gemm", &[x, &w, &bias], &[name], &[("transB", Attr::Int(1))])
}

/// CNN on `[N, 1, 28, 28]`: Conv3×3 32 → Relu → MaxPool2 → Conv3×3 64 → Relu → MaxPool2 → Flatten → Gemm 128
/// → Relu → Gemm 10.
pub fn cnn(seed: u64) -> GraphBuilder {
    let mut rng = Rng::new(seed);
    let mut b = GraphBuilder::new("cnn-conv32-conv64-fc128");
    let x = b.input("input", &[batch(), Dim::Fixed(1), Dim::Fixed(28), Dim::Fixed(28)]);
    let mut x = x;
    let mut cin = 1;
    for (l, cout) in [32usize, 64].into_iter().enumerate() {
        let c = conv(&mut b, &mut rng, &x, &format!("conv{l}"), cin, cout, 3, 1, 1);
        let r = b.op("Relu", &[&c], &[]);
        x = b.op("MaxPool", &[&r], &[("kernel_shape", Attr::Ints(vec![2, 2])), ("strides", Attr::Ints(vec![2, 2]))]);
        cin = cout;
    }
    let flat = b.op("Flatten", &[&x], &[("axis", Attr::Int(1))]);
    let h = gemm(&mut b, &mut rng, &flat, "fc0", 64 * 7 * 7, 128);
    let h = b.op("Relu", &[&h], &[]);
    let out = gemm(&mut b, &mut rng, &h, "logits", 128, 10);
    b.output(&out, &[batch(), Dim::Fixed(10)]);
    b
}

fn relu6(b: &mut GraphBuilder, x: &str) -> String {
    let lo = b.fresh("zero");
    let lo = b.init_f32(&lo, &[], &[0.0]);
    let hi = b.fresh("six");
    let hi = b.init_f32(&hi, &[], &[6.0]);
    b.op("Clip", &[x, &lo, &hi], &[])
}

/// MobileNet-v2-style CNN on `[N, 3, 96, 96]`: stem Conv3×3/2 16, eight inverted-residual blocks
/// (expand 1×1, depthwise 3×3, project 1×1, residual when shapes allow), Conv1×1 256, global average pool,
/// Gemm 10. ReLU6 is `Clip(0, 6)`.
pub fn mobilenet(seed: u64) -> GraphBuilder {
    let mut rng = Rng::new(seed);
    let mut b = GraphBuilder::new("mobilenet-96");
    let x = b.input("input", &[batch(), Dim::Fixed(3), Dim::Fixed(96), Dim::Fixed(96)]);
    let s = conv(&mut b, &mut rng, &x, "stem", 3, 16, 3, 2, 1);
    let mut x = relu6(&mut b, &s);
    let mut cin = 16;
    let blocks: [(usize, usize, usize); 8] =
        [(1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 64, 2), (6, 64, 1), (6, 96, 1)];
    for (i, (t, c, stride)) in blocks.into_iter().enumerate() {
        let hidden = cin * t;
        let mut h = x.clone();
        if t != 1 {
            let e = conv(&mut b, &mut rng, &h, &format!("block{i}.expand"), cin, hidden, 1, 1, 1);
            h = relu6(&mut b, &e);
        }
        let d = conv(&mut b, &mut rng, &h, &format!("block{i}.dw"), hidden, hidden, 3, stride, hidden);
        h = relu6(&mut b, &d);
        let p = conv(&mut b, &mut rng, &h, &format!("block{i}.project"), hidden, c, 1, 1, 1);
        x = if stride == 1 && cin == c { b.op("Add", &[&x, &p], &[]) } else { p };
        cin = c;
    }
    let h = conv(&mut b, &mut rng, &x, "head", cin, 256, 1, 1, 1);
    let h = relu6(&mut b, &h);
    let g = b.op("GlobalAveragePool", &[&h], &[]);
    let f = b.op("Flatten", &[&g], &[("axis", Attr::Int(1))]);
    let out = gemm(&mut b, &mut rng, &f, "logits", 256, 10);
    b.output(&out, &[batch(), Dim::Fixed(10)]);
    b
}

/// Symmetric per-tensor int8 quantization of a weight slice: `(values, scale)`.
fn quantize_symmetric(w: &[f32]) -> (Vec<i8>, f32) {
    let max = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let scale = max / 127.0;
    (w.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8).collect(), scale)
}

/// The int8 variant of [`mlp`]: every layer `QuantizeLinear(u8) → QLinearMatMul(i8 weights) →
/// DequantizeLinear → Add bias (→ Relu)`, activation ranges calibrated on `calibration` random inputs in
/// `[0, 1)` with a scalar f32 forward pass. Standard ONNX ops only, so ONNX Runtime runs the same file.
pub fn mlp_int8(sizes: &[usize], seed: u64, calibration: usize) -> GraphBuilder {
    let (ws, bs) = mlp_weights(sizes, seed);
    let layers = sizes.len() - 1;
    // Range (min, max) of each layer's input and output.
    let mut in_ranges = vec![(0f32, 0f32); layers];
    let mut out_ranges = vec![(0f32, 0f32); layers];
    let mut rng = Rng::new(seed ^ 0xC0FFEE);
    for _ in 0..calibration.max(1) {
        let mut x: Vec<f32> = (0..sizes[0]).map(|_| rng.unit()).collect();
        for l in 0..layers {
            let r = &mut in_ranges[l];
            for v in &x {
                r.0 = r.0.min(*v);
                r.1 = r.1.max(*v);
            }
            let (k, n) = (sizes[l], sizes[l + 1]);
            let mut y: Vec<f32> =
                (0..n).map(|j| bs[l][j] + (0..k).map(|i| ws[l][j * k + i] * x[i]).sum::<f32>()).collect();
            let r = &mut out_ranges[l];
            for v in &y {
                r.0 = r.0.min(*v);
                r.1 = r.1.max(*v);
            }
            if l + 1 < layers {
                y.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            x = y;
        }
    }
    let qparams = |(lo, hi): (f32, f32)| -> (f32, u8) {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let scale = ((hi - lo) / 255.0).max(1e-8);
        (scale, (-lo / scale).round().clamp(0.0, 255.0) as u8)
    };
    let mut b = GraphBuilder::new("mlp-int8");
    let mut x = b.input("input", &[batch(), Dim::Fixed(sizes[0])]);
    for l in 0..layers {
        let (k, n) = (sizes[l], sizes[l + 1]);
        let (sx, zx) = qparams(in_ranges[l]);
        let (sy, zy) = qparams(out_ranges[l]);
        // ONNX MatMul weights are [K, N]: transpose the Gemm's [N, K].
        let wt: Vec<f32> = (0..k * n).map(|i| ws[l][(i % n) * k + i / n]).collect();
        let (wq, sw) = quantize_symmetric(&wt);
        let sx_ = b.init_f32(&format!("fc{l}.x_scale"), &[], &[sx]);
        let zx_ = b.init_raw(&format!("fc{l}.x_zero"), &[], dtype::U8, vec![zx]);
        let w_ = b.init_raw(&format!("fc{l}.weight_q"), &[k, n], dtype::I8, wq.iter().map(|v| *v as u8).collect());
        let sw_ = b.init_f32(&format!("fc{l}.w_scale"), &[], &[sw]);
        let zw_ = b.init_raw(&format!("fc{l}.w_zero"), &[], dtype::I8, vec![0]);
        let sy_ = b.init_f32(&format!("fc{l}.y_scale"), &[], &[sy]);
        let zy_ = b.init_raw(&format!("fc{l}.y_zero"), &[], dtype::U8, vec![zy]);
        let bias = b.init_f32(&format!("fc{l}.bias"), &[n], &bs[l]);
        let xq = b.op("QuantizeLinear", &[&x, &sx_, &zx_], &[]);
        let yq = b.op("QLinearMatMul", &[&xq, &sx_, &zx_, &w_, &sw_, &zw_, &sy_, &zy_], &[]);
        let y = b.op("DequantizeLinear", &[&yq, &sy_, &zy_], &[]);
        let last = l + 1 == layers;
        let y = if last { b.node("Add", &[&y, &bias], &["logits"], &[]) } else { b.op("Add", &[&y, &bias], &[]) };
        x = if last { y } else { b.op("Relu", &[&y], &[]) };
    }
    b.output("logits", &[batch(), Dim::Fixed(sizes[layers])]);
    b
}

/// The benchmark suite, f32: `(name, model)`.
pub fn suite_f32() -> Vec<SuiteModel> {
    vec![
        SuiteModel { name: "mlp-784-800-800-10".into(), bytes: mlp(&[784, 800, 800, 10], 1).to_bytes() },
        SuiteModel { name: "mlp-784-1200-1200-10".into(), bytes: mlp(&[784, 1200, 1200, 10], 2).to_bytes() },
        SuiteModel { name: "cnn-conv32-conv64-fc128".into(), bytes: cnn(3).to_bytes() },
        SuiteModel { name: "mobilenet-96".into(), bytes: mobilenet(4).to_bytes() },
    ]
}

/// The int8 MLPs written without a calibrated quantizer (see [`mlp_int8`]).
pub fn suite_int8_standin() -> Vec<SuiteModel> {
    vec![
        SuiteModel { name: "mlp-784-800-800-10.int8".into(), bytes: mlp_int8(&[784, 800, 800, 10], 1, 16).to_bytes() },
        SuiteModel {
            name: "mlp-784-1200-1200-10.int8".into(),
            bytes: mlp_int8(&[784, 1200, 1200, 10], 2, 16).to_bytes(),
        },
    ]
}
