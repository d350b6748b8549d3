//! int8 convolutions on pupil's f32 kernels (`kernels::qconv`): which `QLinearConv` nodes are rewritten, that
//! the rewritten graph gives the int8 graph's quantized values (at most one step apart, almost always equal),
//! and that the quantized benchmark CNN and MobileNet then run their convolutions on pupil's kernels.

use pupil_runtime::kernels::{self, Acceleration, Isa, qconv, zoo};
use pupil_runtime::onnx::{Attr, GraphBuilder, dtype};
use pupil_runtime::quantize::{ActivationType, QuantizeOptions, quantize};
use pupil_runtime::spec::Dim;
use tract_onnx::pb;
use tract_onnx::prelude::*;

fn decode(bytes: &[u8]) -> pb::ModelProto {
    use prost::Message;
    pb::ModelProto::decode(bytes).unwrap()
}

/// Optimises a protobuf with the input shape `shape`.
fn optimized(proto: &pb::ModelProto, shape: &[usize], accel: Acceleration) -> (TypedModel, Vec<kernels::Replacement>) {
    let mut m = tract_onnx::onnx().model_for_proto_model(proto).unwrap();
    let dims: TVec<TDim> = shape.iter().map(|d| TDim::from(*d)).collect();
    m.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), dims)).unwrap();
    kernels::optimize_with(m, accel).unwrap()
}

fn run(model: &TypedModel, input: &Tensor) -> Tensor {
    let plan = model.clone().into_runnable().unwrap();
    plan.run(tvec![input.clone().into_tvalue()]).unwrap().remove(0).into_tensor()
}

fn random_input(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = zoo::Rng::new(seed);
    let values: Vec<f32> = (0..shape.iter().product()).map(|_| rng.sym(1.0)).collect();
    Tensor::from_shape(shape, &values).unwrap()
}

/// The quantized integers of an int8 / uint8 output tensor.
fn integers(t: &Tensor) -> Vec<i32> {
    let t = t.cast_to::<i32>().unwrap();
    t.try_as_plain_ram().unwrap().as_slice::<i32>().unwrap().to_vec()
}

fn floats(t: &Tensor) -> Vec<f32> {
    t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
}

/// `QuantizeLinear → QLinearConv → (output stays quantized)`, weights per-channel or per-tensor, with or without
/// bias; the output is the quantized tensor itself so the comparison is in integer steps.
#[allow(clippy::too_many_arguments)] // one argument per geometry parameter of the convolution under test
fn single_qconv(
    c_in: usize,
    c_out: usize,
    group: usize,
    k: usize,
    stride: usize,
    hw: usize,
    act: i32,
    per_channel: bool,
    bias: bool,
) -> (Vec<u8>, [usize; 4]) {
    let mut rng = zoo::Rng::new((c_in * 131 + c_out * 7 + k) as u64);
    let mut b = GraphBuilder::new("qconv");
    let x = b.input("input", &[Dim::Symbol("N".into()), Dim::Fixed(c_in), Dim::Fixed(hw), Dim::Fixed(hw)]);
    let zp = |v: i64| if act == dtype::U8 { vec![v as u8] } else { vec![(v - 128) as i8 as u8] };
    let xs = b.init_f32("x_scale", &[], &[2.0 / 255.0]);
    let xz = b.init_raw("x_zero_point", &[], act, zp(128));
    let xq = b.op("QuantizeLinear", &[&x, &xs, &xz], &[]);
    let cig = c_in / group;
    let w: Vec<u8> = (0..c_out * cig * k * k).map(|_| (rng.sym(127.0) as i8) as u8).collect();
    let wq = b.init_raw("w", &[c_out, cig, k, k], dtype::I8, w);
    let nscale = if per_channel { c_out } else { 1 };
    let wscales: Vec<f32> = (0..nscale).map(|_| 0.002 + rng.unit() * 0.01).collect();
    let ws = if per_channel { b.init_f32("w_scale", &[c_out], &wscales) } else { b.init_f32("w_scale", &[], &wscales) };
    let wz = b.init_raw("w_zero_point", &[], dtype::I8, vec![0]);
    let ys = b.init_f32("y_scale", &[], &[0.02]);
    let yz = b.init_raw("y_zero_point", &[], act, zp(100));
    let mut inputs = vec![xq, xs, xz, wq, ws, wz, ys, yz];
    if bias {
        let bv: Vec<u8> = (0..c_out).flat_map(|_| (rng.sym(2000.0) as i32).to_le_bytes()).collect();
        inputs.push(b.init_raw("b", &[c_out], dtype::I32, bv));
    }
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let pad = (k / 2) as i64;
    let attrs = [
        ("kernel_shape", Attr::Ints(vec![k as i64, k as i64])),
        ("strides", Attr::Ints(vec![stride as i64; 2])),
        ("pads", Attr::Ints(vec![pad; 4])),
        ("group", Attr::Int(group as i64)),
    ];
    b.node("QLinearConv", &refs, &["out"], &attrs);
    let oh = (hw + 2 * k / 2 - k) / stride + 1;
    let out_dims = [Dim::Symbol("N".into()), Dim::Fixed(c_out), Dim::Fixed(oh), Dim::Fixed(oh)];
    b.output("out", &out_dims);
    let mut proto = b.build();
    // The builder declares f32 outputs; this one is the quantized tensor itself.
    let out = &mut proto.graph.as_mut().unwrap().output[0];
    if let Some(pb::type_proto::Value::TensorType(t)) = out.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.elem_type = act;
    }
    (pupil_runtime::onnx::encode(&proto), [2, c_in, hw, hw])
}

#[test]
fn a_rewritten_qlinearconv_gives_the_int8_nodes_quantized_values() {
    let cases = [
        // c_in, c_out, group, k, stride, hw
        (1, 8, 1, 3, 1, 12),
        (3, 16, 1, 3, 2, 17),
        (16, 16, 16, 3, 1, 15),
        (24, 24, 24, 5, 2, 19),
        (16, 32, 1, 1, 1, 9),
        (12, 20, 1, 3, 1, 10),
    ];
    for (c_in, c_out, group, k, stride, hw) in cases {
        for act in [dtype::U8, dtype::I8] {
            for (per_channel, bias) in [(true, true), (false, false)] {
                let what = format!(
                    "{c_in}→{c_out} g{group} {k}×{k}/{stride} on {hw}², act {act}, per-channel {per_channel}, bias {bias}"
                );
                let (bytes, shape) = single_qconv(c_in, c_out, group, k, stride, hw, act, per_channel, bias);
                let original = decode(&bytes);
                let mut rewritten = original.clone();
                assert_eq!(qconv::to_f32_convolutions(&mut rewritten).nodes.len(), 1, "{what}: one node rewritten");
                let ops: Vec<&str> =
                    rewritten.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_str()).collect();
                assert_eq!(ops, ["QuantizeLinear", "DequantizeLinear", "Conv", "QuantizeLinear"], "{what}");
                let names: Vec<&str> =
                    rewritten.graph.as_ref().unwrap().initializer.iter().map(|t| t.name.as_str()).collect();
                assert!(!names.contains(&"w") && !names.contains(&"b"), "{what}: int8 weights dropped, got {names:?}");
                let input = random_input(&shape, 11);
                let (int8, _) = optimized(&original, &shape, Acceleration::Off);
                let expected = integers(&run(&int8, &input));
                for isa in Isa::available() {
                    let (fast, _) = optimized(&rewritten, &shape, Acceleration::With(isa));
                    let got = integers(&run(&fast, &input));
                    assert_eq!(expected.len(), got.len(), "{what}");
                    let worst = expected.iter().zip(&got).map(|(a, b)| (a - b).abs()).max().unwrap();
                    let differ = expected.iter().zip(&got).filter(|(a, b)| a != b).count();
                    assert!(worst <= 1, "{what} {isa}: outputs {worst} quantization steps apart");
                    assert!(
                        differ * 100 <= expected.len(),
                        "{what} {isa}: {differ} of {} outputs differ (rounding ties only expected)",
                        expected.len()
                    );
                }
            }
        }
    }
}

#[test]
fn a_qlinearconv_reading_a_reshape_is_a_dense_layer_and_stays_int8() {
    // The quantizer writes int8 Gemm layers as Reshape → QLinearConv 1×1 → Reshape; pupil's int8 GEMV runs them.
    let bytes = zoo::mlp(&[64, 32, 10], 3).to_bytes();
    let calibration: Vec<f32> = (0..64 * 32).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let (int8, _) = quantize(&bytes, &QuantizeOptions::default(), Some(&calibration)).unwrap();
    let mut proto = decode(&int8);
    let qlinear = proto.graph.as_ref().unwrap().node.iter().filter(|n| n.op_type == "QLinearConv").count();
    assert!(qlinear >= 1, "the quantizer wrote the hidden layer as QLinearConv");
    let before = proto.clone();
    assert!(qconv::to_f32_convolutions(&mut proto).nodes.is_empty());
    assert_eq!(proto, before, "nothing changed");
}

/// The benchmark's CNN and MobileNet, quantized by pupil: with the rewrite every convolution pupil has a
/// kernel for runs on it, and the logits stay those of the int8 graph run by tract (within a few output
/// quantization steps, the argmax unchanged).
/// The benchmark CNN and MobileNet quantized with u8 and with i8 activations (quantized once, shared by the tests:
/// calibration is slow under emulation).
struct Quantized {
    name: &'static str,
    shape: Vec<usize>,
    act: ActivationType,
    int8: Vec<u8>,
}

fn quantized_zoo() -> &'static [Quantized] {
    static ZOO: std::sync::OnceLock<Vec<Quantized>> = std::sync::OnceLock::new();
    ZOO.get_or_init(|| {
        let mut out = vec![];
        for (name, model, shape) in
            [("cnn", zoo::cnn(5), vec![1usize, 1, 28, 28]), ("mobilenet", zoo::mobilenet(4), vec![1, 3, 96, 96])]
        {
            let calibration: Vec<f32> = (0..8).flat_map(|s| floats(&random_input(&shape, 100 + s))).collect();
            for act in [ActivationType::U8, ActivationType::I8] {
                let options = QuantizeOptions { activations: act, ..Default::default() };
                let (int8, _) = quantize(&model.to_bytes(), &options, Some(&calibration)).unwrap();
                out.push(Quantized { name, shape: shape.clone(), act, int8 });
            }
        }
        out
    })
}

#[test]
fn quantized_cnn_and_mobilenet_run_their_convolutions_on_pupils_kernels() {
    for q in quantized_zoo() {
        let (name, shape, act) = (q.name, &q.shape, q.act);
        let want = if name == "cnn" { vec!["PupilDirectConv", "PupilGridConv"] } else { vec!["PupilDepthwiseConv"; 8] };
        let original = decode(&q.int8);
        let mut rewritten = original.clone();
        let count = qconv::to_f32_convolutions(&mut rewritten).nodes.len();
        let convs = original.graph.as_ref().unwrap().node.iter().filter(|n| n.op_type == "QLinearConv").count();
        assert!(count >= 2 && count <= convs, "{name}: {count} of {convs} QLinearConv rewritten");
        let (plain, _) = optimized(&original, shape, Acceleration::Off);
        let (fast, replaced) = optimized(&rewritten, shape, Acceleration::On);
        let ops: Vec<&str> = replaced.iter().map(|r| r.op).filter(|op| op.contains("Conv")).collect();
        for w in &want {
            let need = want.iter().filter(|x| x == &w).count();
            let have = ops.iter().filter(|x| x == &w).count();
            assert!(have >= need, "{name} {act:?}: {have} {w}, expected at least {need}; got {ops:?}");
        }
        for seed in 0..4 {
            let input = random_input(shape, 200 + seed);
            let expected = floats(&run(&plain, &input));
            let got = floats(&run(&fast, &input));
            let range = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = expected.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= 0.05 * range, "{name} {act:?}: max |Δ| {worst} for logits up to {range}");
            let argmax = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
            assert_eq!(argmax(&expected), argmax(&got), "{name} {act:?}: predicted class");
        }
    }
}

/// The rewritten graph with and without pupil's requantization fusion (`kernels::requant`), both optimised.
fn with_and_without_requant(proto: &pb::ModelProto, shape: &[usize], isa: Isa) -> (TypedModel, TypedModel, usize) {
    let mut m = tract_onnx::onnx().model_for_proto_model(proto).unwrap();
    let dims: TVec<TDim> = shape.iter().map(|d| TDim::from(*d)).collect();
    m.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), dims)).unwrap();
    let mut typed = m.into_typed().unwrap().into_decluttered().unwrap();
    let mut fused = typed.clone();
    kernels::accelerate(&mut typed, Acceleration::With(isa)).unwrap();
    let pools = kernels::requant::hoist_pools(&mut fused).unwrap();
    kernels::accelerate(&mut fused, Acceleration::With(isa)).unwrap();
    let chains = kernels::requant::fuse(&mut fused, isa).unwrap();
    // The CNN's two max pools read quantized activations: both move in front of their quantization.
    let want_pools = if shape[1] == 1 { 2 } else { 0 };
    assert_eq!(pools, want_pools, "max pools moved in front of their quantization");
    (typed.into_optimized().unwrap(), fused.into_optimized().unwrap(), chains)
}

fn count_ops(model: &TypedModel, name: &str) -> usize {
    model.nodes().iter().filter(|n| n.op.name() == name).count()
}

/// Between the rewritten convolutions of the quantized CNN and MobileNet (u8 and i8 activations), every
/// `QuantizeLinear → DequantizeLinear` pair with the clamps between them becomes one `PupilRequant`, or runs on the
/// output planes of the depthwise or direct convolution it reads (the CNN's max pools first move in front of their
/// quantization), on every instruction set, and the logits are the unfused graph's bit for bit (each fused stage is
/// exact, and max commutes with quantizing).
#[test]
fn requantization_chains_fuse_into_one_pass_with_the_same_logits() {
    for q in quantized_zoo() {
        let (name, shape, act) = (q.name, &q.shape, q.act);
        let mut rewritten = decode(&q.int8);
        qconv::to_f32_convolutions(&mut rewritten);
        for isa in Isa::available() {
            let (plain, fused, chains) = with_and_without_requant(&rewritten, shape, isa);
            let quantize_nodes = |m: &TypedModel| count_ops(m, "QuantizeLinearU8") + count_ops(m, "QuantizeLinearI8");
            let (q_before, q_after) = (quantize_nodes(&plain), quantize_nodes(&fused));
            let requants = count_ops(&fused, "PupilRequant");
            // Chains that read a direct or depthwise convolution run on its output planes instead.
            let in_convs = fused
                .nodes()
                .iter()
                .filter(|n| {
                    n.op_as::<kernels::PupilDepthwiseConv>().is_some_and(|c| !c.epilogue().is_empty())
                        || n.op_as::<kernels::PupilDirectConv>().is_some_and(|c| !c.epilogue().is_empty())
                })
                .count();
            // Each of the CNN's convolutions has one; each of MobileNet's blocks at least one (after its depthwise
            // convolution, in it).
            let least = if name == "mobilenet" { 8 } else { 2 };
            assert!(
                chains >= least && requants + in_convs == chains,
                "{name} {act:?} {isa}: {chains} chains, {requants} nodes, {in_convs} in convolutions"
            );
            if name == "mobilenet" {
                assert!(in_convs >= 8, "{name} {act:?} {isa}: {in_convs} chains run in the depthwise convolutions");
            }
            assert!(
                q_after < q_before
                    && count_ops(&fused, "DequantizeLinearF32") < count_ops(&plain, "DequantizeLinearF32"),
                "{name} {act:?} {isa}: quantize nodes {q_before} → {q_after}"
            );
            if name == "cnn" {
                // Its pools run on f32, on pupil's kernel, before quantizing.
                assert_eq!(count_ops(&fused, "PupilMaxPool"), 2, "{name} {act:?} {isa}: f32 pools");
            } else {
                // Its ReLU6 clamps sit inside the chains.
                assert!(
                    count_ops(&fused, "OptBinChain(Max+Min)") < count_ops(&plain, "OptBinChain(Max+Min)"),
                    "{name} {act:?} {isa}: clamps not fused"
                );
            }
            for seed in 0..3 {
                let input = random_input(shape, 300 + seed);
                let (expected, got) = (floats(&run(&plain, &input)), floats(&run(&fused, &input)));
                assert_eq!(expected.len(), got.len());
                for (e, g) in expected.iter().zip(&got) {
                    assert_eq!(e.to_bits(), g.to_bits(), "{name} {act:?} {isa}: logits {expected:?} vs {got:?}");
                }
            }
        }
    }
}

/// The quantized CNN and MobileNet with their rewrite's int8 forms: with u8 activations every convolution over 8
/// or more channels with group 1 (the CNN's 3×3 one, MobileNet's 1×1 ones) runs on pupil's int8 kernel where the
/// CPU has AVX-512 VNNI or NEON dotprod (and none does elsewhere), the requantization chains after MobileNet's pointwise
/// convolutions run in their output loop (fewer `PupilRequant` passes), and the logits stay those of the int8
/// graph run by tract within a few output quantization steps, the argmax unchanged. With i8 activations no int8
/// form is kept (the kernel reads u8).
#[test]
fn int8_convolutions_run_on_the_int8_kernel_where_the_cpu_has_one() {
    let int8_kernel = matches!(Isa::best(), Isa::Avx512Vnni | Isa::NeonDotprod);
    for q in quantized_zoo() {
        let (name, shape, act) = (q.name, &q.shape, q.act);
        let original = decode(&q.int8);
        let mut rewritten = original.clone();
        let rewrite = qconv::to_f32_convolutions(&mut rewritten);
        if act == ActivationType::I8 {
            assert!(rewrite.int8.is_empty(), "{name} {act:?}: i8 activations keep no int8 form");
            continue;
        }
        assert_eq!(rewrite.int8.len(), rewrite.nodes.len(), "{name}: every rewritten convolution keeps its int8 form");
        assert_eq!(rewrite.convs.len(), rewrite.nodes.len(), "{name}: one f32 convolution per rewritten node");
        assert!(
            rewrite.convs.iter().all(|c| rewrite.int8.contains_key(c)),
            "{name}: int8 forms keyed by their f32 node"
        );
        let eligible = rewrite.int8.values().filter(|c| c.group == 1 && c.dims[1] >= 8).count();
        assert!(eligible >= 1, "{name}: {eligible} convolutions for the int8 kernel");
        let load = |int8: &qconv::Int8Convs| {
            let mut m = tract_onnx::onnx().model_for_proto_model(&rewritten).unwrap();
            let dims: TVec<TDim> = shape.iter().map(|d| TDim::from(*d)).collect();
            m.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), dims)).unwrap();
            kernels::optimize_int8(m, Acceleration::On, int8).unwrap()
        };
        let (fast, replaced) = load(&rewrite.int8);
        let (f32_only, _) = load(&qconv::Int8Convs::new());
        let on_int8 = replaced.iter().filter(|r| r.op == "PupilQGridConv").count();
        assert_eq!(on_int8, if int8_kernel { eligible } else { 0 }, "{name}: convolutions on the int8 kernel");
        assert_eq!(count_ops(&fast, "PupilQGridConv"), on_int8, "{name}: the optimised plan keeps them");
        if int8_kernel && name == "mobilenet" {
            let (with, without) = (count_ops(&fast, "PupilRequant"), count_ops(&f32_only, "PupilRequant"));
            assert!(with < without, "{name}: {with} requantization passes with the int8 kernel, {without} without");
        }
        let (plain, _) = optimized(&original, shape, Acceleration::Off);
        for seed in 0..4 {
            let input = random_input(shape, 400 + seed);
            let expected = floats(&run(&plain, &input));
            let got = floats(&run(&fast, &input));
            let range = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = expected.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= 0.05 * range, "{name}: max |Δ| {worst} for logits up to {range}");
            let argmax = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
            assert_eq!(argmax(&expected), argmax(&got), "{name}: predicted class");
        }
    }
}
