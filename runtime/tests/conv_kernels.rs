//! pupil's f32 sliding-window operators inside tract graphs: which `Conv` / `MaxPool` nodes they take over,
//! which they leave to tract, and that the benchmark's CNN and MobileNet give tract's own outputs with them.

use pupil_runtime::kernels::{self, Acceleration, Isa, pupil_nodes, zoo};
use pupil_runtime::onnx::{Attr, GraphBuilder};
use pupil_runtime::spec::Dim;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::nn::DataFormat;

/// Loads ONNX bytes with the input shape `shape` (`None` entries: the symbolic batch `N`).
fn optimized(bytes: &[u8], shape: &[Option<usize>], accel: Acceleration) -> (TypedModel, Vec<kernels::Replacement>) {
    let mut m = tract_onnx::onnx().model_for_read(&mut &bytes[..]).unwrap();
    let n = m.symbols.sym("N");
    let dims: TVec<TDim> = shape.iter().map(|d| d.map(TDim::from).unwrap_or_else(|| n.to_dim())).collect();
    m.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), dims)).unwrap();
    kernels::optimize_with(m, accel).unwrap()
}

fn run(model: &TypedModel, input: &Tensor) -> Vec<f32> {
    let plan = model.clone().into_runnable().unwrap();
    let out = plan.run(tvec![input.clone().into_tvalue()]).unwrap();
    out[0].clone().into_tensor().try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
}

fn random_input(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = zoo::Rng::new(seed);
    let values: Vec<f32> = (0..shape.iter().product()).map(|_| rng.sym(1.0)).collect();
    Tensor::from_shape(shape, &values).unwrap()
}

/// `max |a - b| <= tol · max |a|`.
fn assert_close(expected: &[f32], got: &[f32], tol: f32, what: &str) {
    assert_eq!(expected.len(), got.len(), "{what}: output sizes");
    let range = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = expected.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= tol * range, "{what}: max |Δ| {worst} for outputs up to {range}");
}

fn ops_of(replaced: &[kernels::Replacement]) -> Vec<&'static str> {
    let mut ops: Vec<&str> = replaced.iter().map(|r| r.op).collect();
    ops.sort();
    ops
}

/// How many 1×1 convolutions an ONNX file holds.
fn pointwise_convs(bytes: &[u8]) -> usize {
    use prost::Message;
    let proto = tract_onnx::pb::ModelProto::decode(bytes).unwrap();
    let graph = proto.graph.unwrap();
    graph
        .node
        .iter()
        .filter(|n| n.op_type == "Conv")
        .filter(|n| graph.initializer.iter().any(|t| t.name == n.input[1] && t.dims[2..] == [1, 1]))
        .count()
}

#[test]
fn mobilenet_runs_its_depthwise_convs_and_stem_on_pupils_kernels_with_tracts_outputs() {
    let bytes = zoo::mobilenet(4).to_bytes();
    let one_by_one = pointwise_convs(&bytes);
    assert!(one_by_one >= 8, "the MobileNet has {one_by_one} 1×1 convolutions");
    let residuals = {
        use prost::Message;
        let graph = tract_onnx::pb::ModelProto::decode(&bytes[..]).unwrap().graph.unwrap();
        graph.node.iter().filter(|n| n.op_type == "Add").count()
    };
    assert!(residuals >= 2, "the MobileNet has {residuals} residual connections");
    // Batch 1 (tract drops the batch axis: CHW), a fixed batch of 2 and a symbolic batch (NCHW).
    for (shape, batch) in [(Some(1), 1), (Some(2), 2), (None, 2)] {
        let dims = [shape, Some(3), Some(96), Some(96)];
        let input = random_input(&[batch, 3, 96, 96], 7);
        let (plain, none) = optimized(&bytes, &dims, Acceleration::Off);
        assert!(none.is_empty() && pupil_nodes(&plain).is_empty());
        let expected = run(&plain, &input);
        for isa in Isa::available() {
            let (fast, replaced) = optimized(&bytes, &dims, Acceleration::With(isa));
            let mut want = vec!["PupilDepthwiseConv"; 8];
            want.push("PupilDirectConv");
            // The 1×1 convolutions over channels-first images: all of them on x86-64; on aarch64 tract lays the
            // later blocks out channels-last, where a 1×1 convolution is a plain GEMM it keeps.
            let ops = ops_of(&replaced);
            let pointwise = ops.iter().filter(|o| **o == "PupilPointwiseConv").count();
            let least = if cfg!(target_arch = "x86_64") { one_by_one } else { 2 };
            assert!(
                pointwise >= least && pointwise <= one_by_one,
                "{isa}, batch {shape:?}: {pointwise} of {one_by_one} 1×1 convolutions replaced"
            );
            want.extend(vec!["PupilPointwiseConv"; pointwise]);
            // The classifier head, a matrix product over as many rows as the batch: pupil's when the batch is
            // known at load.
            if shape.is_some() {
                want.push("PupilMatMul");
            }
            // The residual connections: folded into the 1×1 convolution before them (each a block's linear
            // projection) where pupil runs it — all of them on x86-64 — else a sum of their own.
            let folded = fast
                .nodes()
                .iter()
                .filter(|n| n.op_as::<kernels::PupilPointwiseConv>().is_some_and(|o| o.residual()))
                .count();
            if cfg!(target_arch = "x86_64") {
                assert_eq!(folded, residuals, "{isa}, batch {shape:?}: every residual folded in");
            }
            want.extend(vec!["PupilAdd"; residuals - folded]);
            want.sort();
            assert_eq!(
                ops, want,
                "{isa}, batch {shape:?}: 8 depthwise convs, the 3-channel stem, 1×1 convolutions, sums"
            );
            let listed = pupil_nodes(&fast);
            assert_eq!(ops_of(&listed), want, "{isa}, batch {shape:?}: the optimised plan keeps them");
            let dw = listed.iter().find(|r| r.op == "PupilDepthwiseConv").unwrap();
            assert_eq!((dw.k, dw.isa), (9, isa), "a 3×3 window per channel");
            assert!(listed.iter().any(|r| r.op == "PupilDirectConv" && r.k == 27 && r.n == 16), "{listed:?}");
            // Every one of them is followed by a ReLU6 (`Clip(0, 6)`), folded into the operator.
            let clamps: Vec<(f32, f32)> = fast
                .nodes()
                .iter()
                .filter_map(|n| {
                    n.op_as::<kernels::PupilDepthwiseConv>()
                        .map(|o| o.clamp())
                        .or_else(|| n.op_as::<kernels::PupilDirectConv>().map(|o| o.clamp()))
                })
                .collect();
            assert_eq!(clamps, vec![(0.0, 6.0); 9], "{isa}, batch {shape:?}");
            // On AVX-512 the stride-2 depthwise onto 6 × 6 runs with the channels in the lanes, the others by rows.
            #[cfg(target_arch = "x86_64")]
            let avx512 = isa == Isa::Avx512Vnni && std::arch::is_x86_feature_detected!("avx512f");
            #[cfg(not(target_arch = "x86_64"))]
            let avx512 = false;
            let blocks = fast
                .nodes()
                .iter()
                .filter(|n| n.op_as::<kernels::PupilDepthwiseConv>().is_some_and(|o| o.channel_blocks()))
                .count();
            assert_eq!(blocks, avx512 as usize, "{isa}, batch {shape:?}: depthwise convolutions on channel blocks");
            assert!(
                fast.nodes().len() + 18 <= plain.nodes().len(),
                "{} vs {} nodes",
                fast.nodes().len(),
                plain.nodes().len()
            );
            assert_close(&expected, &run(&fast, &input), 1e-5, &format!("mobilenet {isa} batch {shape:?}"));
        }
    }
}

#[test]
fn the_cnn_runs_both_convs_and_both_max_pools_on_pupils_kernels_with_tracts_outputs() {
    let bytes = zoo::cnn(3).to_bytes();
    for batch in [1, 3] {
        let dims = [Some(batch), Some(1), Some(28), Some(28)];
        let input = random_input(&[batch, 1, 28, 28], 9);
        let (plain, _) = optimized(&bytes, &dims, Acceleration::Off);
        let expected = run(&plain, &input);
        for isa in Isa::available() {
            let (fast, replaced) = optimized(&bytes, &dims, Acceleration::With(isa));
            // The second conv (32 input channels, 3×3, stride 1) runs on the grid kernel, with its padding done
            // in its own copy and its ReLU folded in. The two dense layers (batch ≤ 4 rows) run on pupil's f32
            // matrix-vector kernel.
            assert_eq!(
                ops_of(&replaced),
                ["PupilDirectConv", "PupilGridConv", "PupilMatMul", "PupilMatMul", "PupilMaxPool", "PupilMaxPool"],
                "{isa} batch {batch}"
            );
            assert_eq!(pupil_nodes(&fast).len(), 6);
            let conv = fast.nodes().iter().find_map(|n| n.op_as::<kernels::PupilDirectConv>()).unwrap();
            assert_eq!(conv.clamp(), (0.0, f32::INFINITY), "the ReLU after the first conv is folded in");
            let grid = fast.nodes().iter().find_map(|n| n.op_as::<kernels::PupilGridConv>()).unwrap();
            assert_eq!(grid.dims(), (32 * 9, 64));
            // On AVX-512 as Winograd F(2×2, 3×3): the same outputs within the tolerance below.
            #[cfg(target_arch = "x86_64")]
            let avx512 = isa == Isa::Avx512Vnni && std::arch::is_x86_feature_detected!("avx512f");
            #[cfg(not(target_arch = "x86_64"))]
            let avx512 = false;
            assert_eq!(grid.winograd(), avx512, "{isa}");
            let left: Vec<String> = fast
                .nodes()
                .iter()
                .map(|n| n.op.name().to_string())
                .filter(|n| n.contains("Pad") || (n.contains("Max") && !n.contains("MaxPool")))
                .collect();
            assert!(left.is_empty(), "{isa}: a padding or ReLU node is left: {left:?}");
            assert_close(&expected, &run(&fast, &input), 1e-5, &format!("cnn {isa} batch {batch}"));
        }
    }
}

/// `[N, c, h, w] → one node → out [N, out.0, out.1, out.2]`; for a `Conv`, `conv` is `(c_out, group, k)` of
/// random weights and bias.
fn single(
    op: &str,
    c: usize,
    hw: (usize, usize),
    attrs: &[(&str, Attr)],
    conv: Option<(usize, usize, usize)>,
    out: (usize, usize, usize),
) -> Vec<u8> {
    let mut rng = zoo::Rng::new(c as u64 * 31 + hw.0 as u64);
    let mut b = GraphBuilder::new("single");
    let x = b.input("input", &[Dim::Symbol("N".into()), Dim::Fixed(c), Dim::Fixed(hw.0), Dim::Fixed(hw.1)]);
    let mut inputs = vec![x];
    if let Some((c_out, group, k)) = conv {
        let w: Vec<f32> = (0..c_out * c / group * k * k).map(|_| rng.sym(1.0)).collect();
        inputs.push(b.init_f32("w", &[c_out, c / group, k, k], &w));
        let bias: Vec<f32> = (0..c_out).map(|_| rng.sym(1.0)).collect();
        inputs.push(b.init_f32("b", &[c_out], &bias));
    }
    let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
    b.node(op, &refs, &["out"], attrs);
    b.output("out", &[Dim::Symbol("N".into()), Dim::Fixed(out.0), Dim::Fixed(out.1), Dim::Fixed(out.2)]);
    b.to_bytes()
}

fn ints(v: &[i64]) -> Attr {
    Attr::Ints(v.to_vec())
}

/// Depthwise convs and max pools of the shapes the brief names (3×3 / 5×5, stride 1 / 2, explicit and SAME
/// padding, odd sizes) are replaced and agree with tract; unusual ones are left to tract and still run.
#[test]
fn single_nodes_are_replaced_when_pupil_handles_them_and_left_to_tract_otherwise() {
    // (what, model, input [c, h, w], the pupil operator expected or None for tract's)
    type Case = (&'static str, Vec<u8>, (usize, usize, usize), Option<&'static str>);
    let cases: Vec<Case> = vec![
        (
            "depthwise 3x3/2 pad 1 on 11×17",
            single(
                "Conv",
                7,
                (11, 17),
                &[
                    ("kernel_shape", ints(&[3, 3])),
                    ("pads", ints(&[1, 1, 1, 1])),
                    ("strides", ints(&[2, 2])),
                    ("group", Attr::Int(7)),
                ],
                Some((7, 7, 3)),
                (7, 6, 9),
            ),
            (7, 11, 17),
            Some("PupilDepthwiseConv"),
        ),
        (
            "depthwise 5x5/1 SAME_UPPER on 9×13",
            single(
                "Conv",
                5,
                (9, 13),
                &[
                    ("kernel_shape", ints(&[5, 5])),
                    ("auto_pad", Attr::String("SAME_UPPER".into())),
                    ("group", Attr::Int(5)),
                ],
                Some((5, 5, 5)),
                (5, 9, 13),
            ),
            (5, 9, 13),
            Some("PupilDepthwiseConv"),
        ),
        (
            "depthwise 3x3/2 SAME_UPPER asymmetric on 8×8",
            single(
                "Conv",
                4,
                (8, 8),
                &[
                    ("kernel_shape", ints(&[3, 3])),
                    ("strides", ints(&[2, 2])),
                    ("auto_pad", Attr::String("SAME_UPPER".into())),
                    ("group", Attr::Int(4)),
                ],
                Some((4, 4, 3)),
                (4, 4, 4),
            ),
            (4, 8, 8),
            Some("PupilDepthwiseConv"),
        ),
        (
            "3-channel 3x3 stem conv, no padding",
            single("Conv", 3, (10, 12), &[("kernel_shape", ints(&[3, 3]))], Some((6, 1, 3)), (6, 8, 10)),
            (3, 10, 12),
            Some("PupilDirectConv"),
        ),
        (
            "maxpool 3x3/2 pad 1 on 15×15",
            single(
                "MaxPool",
                6,
                (15, 15),
                &[("kernel_shape", ints(&[3, 3])), ("strides", ints(&[2, 2])), ("pads", ints(&[1, 1, 1, 1]))],
                None,
                (6, 8, 8),
            ),
            (6, 15, 15),
            Some("PupilMaxPool"),
        ),
        (
            "maxpool 2x2/2 on an odd 9×7",
            single(
                "MaxPool",
                3,
                (9, 7),
                &[("kernel_shape", ints(&[2, 2])), ("strides", ints(&[2, 2]))],
                None,
                (3, 4, 3),
            ),
            (3, 9, 7),
            Some("PupilMaxPool"),
        ),
        (
            "maxpool ceil mode: tract's",
            single(
                "MaxPool",
                3,
                (9, 7),
                &[("kernel_shape", ints(&[2, 2])), ("strides", ints(&[2, 2])), ("ceil_mode", Attr::Int(1))],
                None,
                (3, 5, 4),
            ),
            (3, 9, 7),
            None,
        ),
        (
            "dilated depthwise conv: tract's",
            single(
                "Conv",
                4,
                (9, 9),
                &[("kernel_shape", ints(&[3, 3])), ("dilations", ints(&[2, 2])), ("group", Attr::Int(4))],
                Some((4, 4, 3)),
                (4, 5, 5),
            ),
            (4, 9, 9),
            None,
        ),
        (
            "grouped conv, 4 groups of 2 channels: tract's",
            single(
                "Conv",
                8,
                (6, 6),
                &[("kernel_shape", ints(&[3, 3])), ("group", Attr::Int(4))],
                Some((8, 4, 3)),
                (8, 4, 4),
            ),
            (8, 6, 6),
            None,
        ),
        (
            "regular conv over 8 channels, no padding",
            single("Conv", 8, (6, 6), &[("kernel_shape", ints(&[3, 3]))], Some((4, 1, 3)), (4, 4, 4)),
            (8, 6, 6),
            Some("PupilGridConv"),
        ),
        (
            "regular conv over 8 channels, SAME_UPPER on an odd 7×5",
            single(
                "Conv",
                8,
                (7, 5),
                &[("kernel_shape", ints(&[3, 3])), ("auto_pad", Attr::String("SAME_UPPER".into()))],
                Some((5, 1, 3)),
                (5, 7, 5),
            ),
            (8, 7, 5),
            Some("PupilGridConv"),
        ),
        (
            "strided regular conv over 8 channels: tract's",
            single(
                "Conv",
                8,
                (9, 9),
                &[("kernel_shape", ints(&[3, 3])), ("strides", ints(&[2, 2]))],
                Some((4, 1, 3)),
                (4, 4, 4),
            ),
            (8, 9, 9),
            None,
        ),
    ];
    for (what, bytes, (c, h, w), expect) in cases {
        for batch in [1, 2] {
            let dims = [Some(batch), Some(c), Some(h), Some(w)];
            let input = random_input(&[batch, c, h, w], batch as u64);
            let (plain, _) = optimized(&bytes, &dims, Acceleration::Off);
            let expected = run(&plain, &input);
            for isa in Isa::available() {
                let (fast, replaced) = optimized(&bytes, &dims, Acceleration::With(isa));
                assert_eq!(replaced.iter().map(|r| r.op).collect::<Vec<_>>(), Vec::from_iter(expect), "{what}, {isa}");
                assert_eq!(pupil_nodes(&fast).len(), replaced.len(), "{what}, {isa}");
                assert_close(&expected, &run(&fast, &input), 1e-5, &format!("{what}, {isa}, batch {batch}"));
            }
        }
    }
}

/// (An indices output nobody reads is dropped by tract's declutter; then the pool is a plain one and replaced.)
#[test]
fn a_max_pool_returning_indices_is_left_to_tract() {
    let mut b = GraphBuilder::new("pool-indices");
    let x = b.input("input", &[Dim::Fixed(1), Dim::Fixed(2), Dim::Fixed(6), Dim::Fixed(6)]);
    b.node("MaxPool", &[&x], &["out", "idx"], &[("kernel_shape", ints(&[2, 2])), ("strides", ints(&[2, 2]))]);
    b.node("Cast", &["idx"], &["idx_f32"], &[("to", Attr::Int(pupil_runtime::onnx::dtype::F32 as i64))]);
    b.output("out", &[Dim::Fixed(1), Dim::Fixed(2), Dim::Fixed(3), Dim::Fixed(3)]);
    b.output("idx_f32", &[Dim::Fixed(1), Dim::Fixed(2), Dim::Fixed(3), Dim::Fixed(3)]);
    let dims = [Some(1), Some(2), Some(6), Some(6)];
    let (plain, _) = optimized(&b.to_bytes(), &dims, Acceleration::Off);
    let (fast, replaced) = optimized(&b.to_bytes(), &dims, Acceleration::On);
    assert!(replaced.is_empty(), "{replaced:?}");
    let input = random_input(&[1, 2, 6, 6], 3);
    assert_eq!(run(&plain, &input), run(&fast, &input));
}

/// `depthwise conv → Relu → Clip(−1, 0.5)` with the Relu's result also a model output: the Relu is folded into
/// pupil's operator, the Clip (after a value the graph hands out) stays with tract, and both outputs are tract's.
#[test]
fn a_relu_is_folded_only_up_to_a_value_used_elsewhere() {
    let mut b = GraphBuilder::new("dw-relu-clip");
    let d = |n| Dim::Fixed(n);
    let x = b.input("input", &[d(1), d(4), d(9), d(9)]);
    let mut rng = zoo::Rng::new(4);
    let w: Vec<f32> = (0..4 * 9).map(|_| rng.sym(1.0)).collect();
    let w = b.init_f32("w", &[4, 1, 3, 3], &w);
    let bias = b.init_f32("b", &[4], &[0.1, -0.2, 0.3, 0.0]);
    let conv = b.op("Conv", &[&x, &w, &bias], &[("kernel_shape", ints(&[3, 3])), ("group", Attr::Int(4))]);
    b.node("Relu", &[&conv], &["relu"], &[]);
    let lo = b.init_f32("lo", &[], &[-1.0]);
    let hi = b.init_f32("hi", &[], &[0.5]);
    b.node("Clip", &["relu", &lo, &hi], &["clipped"], &[]);
    b.output("relu", &[d(1), d(4), d(7), d(7)]);
    b.output("clipped", &[d(1), d(4), d(7), d(7)]);
    let bytes = b.to_bytes();
    let dims = [Some(1), Some(4), Some(9), Some(9)];
    let input = random_input(&[1, 4, 9, 9], 5);
    let all = |m: &TypedModel| -> Vec<Vec<f32>> {
        let plan = m.clone().into_runnable().unwrap();
        let out = plan.run(tvec![input.clone().into_tvalue()]).unwrap();
        out.iter()
            .map(|t| t.clone().into_tensor().try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec())
            .collect()
    };
    let (plain, _) = optimized(&bytes, &dims, Acceleration::Off);
    let (fast, replaced) = optimized(&bytes, &dims, Acceleration::On);
    assert_eq!(ops_of(&replaced), ["PupilDepthwiseConv"]);
    let op = fast.nodes().iter().find_map(|n| n.op_as::<kernels::PupilDepthwiseConv>()).unwrap();
    assert_eq!(op.clamp(), (0.0, f32::INFINITY));
    let (want, got) = (all(&plain), all(&fast));
    assert_eq!(want.len(), 2);
    for (w, g) in want.iter().zip(&got) {
        assert_close(w, g, 1e-5, "dw-relu-clip");
    }
    assert!(got[1].iter().all(|v| (0.0..=0.5).contains(v)) && got[0].iter().any(|v| *v > 0.5));
}

/// A tract graph with one channels-last (HWC / NHWC) node, as tract's declutter makes them on aarch64: a depthwise
/// 3×3 conv followed by a ReLU, or a max pool.
fn channels_last_graph(
    format: DataFormat,
    batch: usize,
    (c, h, w): (usize, usize, usize),
    stride: usize,
    pool: bool,
) -> TypedModel {
    use tract_onnx::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PaddingSpec, PoolSpec};
    let mut m = TypedModel::default();
    let shape: Vec<usize> = if format.has_n() { vec![batch, h, w, c] } else { vec![h, w, c] };
    let x = m.add_source("input", f32::fact(&shape)).unwrap();
    let k = if pool { 2 } else { 3 };
    let pool_spec = PoolSpec {
        data_format: format,
        kernel_shape: tvec![k, k],
        padding: if pool { PaddingSpec::Valid } else { PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]) },
        dilations: None,
        strides: Some(tvec![stride, stride]),
        input_channels: c,
        output_channels: c,
    };
    let out = if pool {
        m.wire_node("pool", MaxPool { pool_spec, with_index_outputs: None }, &[x]).unwrap()[0]
    } else {
        let mut rng = zoo::Rng::new(c as u64);
        let wt: Vec<f32> = (0..c * 9).map(|_| rng.sym(1.0)).collect();
        let bias: Vec<f32> = (0..c).map(|_| rng.sym(0.5)).collect();
        let wt = m.add_const("w", Tensor::from_shape(&[c, 1, 3, 3], &wt).unwrap()).unwrap();
        let bias = m.add_const("b", Tensor::from_shape(&[c], &bias).unwrap()).unwrap();
        let conv = Conv { pool_spec, kernel_fmt: KernelFormat::OIHW, group: c, q_params: None };
        let y = m.wire_node("conv", conv, &[x, wt, bias]).unwrap()[0];
        let rank = m.outlet_fact(y).unwrap().rank();
        let zero = m.add_const("zero", Tensor::from_shape(&vec![1; rank], &[0f32]).unwrap()).unwrap();
        let relu = TypedBinOp(Box::new(tract_onnx::tract_core::ops::math::Max), None);
        m.wire_node("relu", relu, &[y, zero]).unwrap()[0]
    };
    m.select_output_outlets(&[out]).unwrap();
    m
}

#[test]
fn channels_last_depthwise_convs_and_pools_are_replaced_and_agree_with_tract() {
    for (format, batch) in [(DataFormat::HWC, 1), (DataFormat::NHWC, 2)] {
        for (c, h, w, stride) in [(96, 12, 12, 2), (20, 7, 9, 1), (144, 6, 6, 1), (3, 5, 4, 2)] {
            for pool in [false, true] {
                let what = format!("{format:?} batch {batch} {c}×{h}×{w} stride {stride} pool {pool}");
                let m = channels_last_graph(format, batch, (c, h, w), stride, pool);
                let shape: Vec<usize> = if format.has_n() { vec![batch, h, w, c] } else { vec![h, w, c] };
                let input = random_input(&shape, 11);
                let expected = run(&m.clone().into_optimized().unwrap(), &input);
                for isa in Isa::available() {
                    let mut fast = m.clone();
                    let replaced = kernels::accelerate(&mut fast, Acceleration::With(isa)).unwrap();
                    let want = if pool { "PupilMaxPool" } else { "PupilDepthwiseConv" };
                    assert_eq!(ops_of(&replaced), [want], "{what}, {isa}");
                    let fast = fast.into_optimized().unwrap();
                    if !pool {
                        let op = fast.nodes().iter().find_map(|n| n.op_as::<kernels::PupilDepthwiseConv>()).unwrap();
                        assert_eq!(op.clamp(), (0.0, f32::INFINITY), "{what}: the ReLU is folded in");
                    }
                    assert_close(&expected, &run(&fast, &input), 1e-5, &format!("{what}, {isa}"));
                }
            }
        }
    }
}
