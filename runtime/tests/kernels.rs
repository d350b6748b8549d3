//! pupil's SIMD kernels against scalar references (proptest: odd sizes, edge values, zero points), and
//! end to end: models with pupil's operators give tract's own outputs.

use proptest::prelude::*;
use pupil_runtime::kernels::{self, Acceleration, Isa, PackedI8, WeightLayout, pupil_nodes, zoo};
use pupil_runtime::onnx::{GraphBuilder, dtype};
use pupil_runtime::spec::Dim;
use tract_onnx::prelude::*;

/// `Σ_k a[k] · w[k][n]` on the unpacked row-major `[K, N]` matrix.
fn reference(a: &[u8], w: &[i8], k: usize, n: usize) -> Vec<i32> {
    (0..n).map(|j| (0..k).map(|i| a[i] as i32 * w[i * n + j] as i32).sum()).collect()
}

fn run_all_isas(a: &[u8], w: &[i8], k: usize, n: usize) -> Vec<(Isa, Vec<i32>)> {
    let p = PackedI8::from_row_major(k, n, w);
    let mut padded = a.to_vec();
    padded.resize(p.k_padded(), 0);
    Isa::available()
        .into_iter()
        .map(|isa| {
            let mut out = vec![i32::MIN; p.n_padded()];
            p.gemv(isa, &padded, &mut out);
            out.truncate(n);
            (isa, out)
        })
        .collect()
}

fn edge_u8() -> impl Strategy<Value = u8> {
    prop_oneof![Just(0u8), Just(255u8), Just(128u8), Just(1u8), any::<u8>()]
}

fn edge_i8() -> impl Strategy<Value = i8> {
    prop_oneof![Just(-128i8), Just(127i8), Just(0i8), Just(-1i8), any::<i8>()]
}

fn gemv_case() -> impl Strategy<Value = (usize, usize, Vec<u8>, Vec<i8>)> {
    (1usize..200, 1usize..80).prop_flat_map(|(k, n)| {
        (Just(k), Just(n), proptest::collection::vec(edge_u8(), k), proptest::collection::vec(edge_i8(), k * n))
    })
}

/// [`gemv_case`] with whole quads of activations zeroed (the quads the VNNI kernel skips): none, all, or each
/// with a drawn probability, so that the live quads come in runs, alone, first, last, and in odd counts.
fn sparse_gemv_case() -> impl Strategy<Value = (usize, usize, Vec<u8>, Vec<i8>)> {
    (gemv_case(), prop_oneof![Just(0.0f64), Just(1.0f64), 0.0f64..1.0], proptest::collection::vec(0.0f64..1.0, 50))
        .prop_map(|((k, n, mut a, w), dead, draws)| {
            for (quad, draw) in a.chunks_mut(4).zip(draws.iter().cycle()) {
                if *draw < dead {
                    quad.fill(0);
                }
            }
            (k, n, a, w)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// With zero quads too (which the SIMD kernels skip, not mis-sum).
    #[test]
    fn every_isa_matches_the_scalar_reference((k, n, a, w) in sparse_gemv_case()) {
        let expected = reference(&a, &w, k, n);
        for (isa, got) in run_all_isas(&a, &w, k, n) {
            prop_assert_eq!(&got, &expected, "isa {} k {} n {}", isa, k, n);
        }
    }

    /// Any range of panels (how threads split a product) gives those panels' columns of the whole product.
    #[test]
    fn a_range_of_panels_gives_those_columns_of_the_whole_product(
        (k, n, a, w) in sparse_gemv_case(), cut in any::<(prop::sample::Index, prop::sample::Index)>(),
    ) {
        let p = PackedI8::from_row_major(k, n, &w);
        let mut padded = a.clone();
        padded.resize(p.k_padded(), 0);
        let (x, y) = (cut.0.index(p.panels() + 1), cut.1.index(p.panels() + 1));
        let panels = x.min(y)..x.max(y);
        for isa in Isa::available() {
            let mut whole = vec![0; p.n_padded()];
            p.gemv(isa, &padded, &mut whole);
            let mut part = vec![i32::MIN; panels.len() * 16];
            p.gemv_panels(isa, &padded, panels.clone(), &mut part);
            prop_assert_eq!(&part[..], &whole[panels.start * 16..panels.end * 16], "isa {} panels {:?}", isa, panels);
        }
    }

    #[test]
    fn column_sums_are_exact((k, n, _a, w) in gemv_case()) {
        let p = PackedI8::from_row_major(k, n, &w);
        let expected: Vec<i32> = (0..n).map(|j| (0..k).map(|i| w[i * n + j] as i32).sum()).collect();
        prop_assert_eq!(p.colsum(), &expected[..]);
    }

    /// A transposed `[N, K]` matrix (ONNX `Gemm` with `transB`) packs to exactly the panels and column sums of the
    /// same matrix given `[K, N]`.
    #[test]
    fn an_n_by_k_matrix_packs_like_its_k_by_n_transpose((k, n, _a, w) in gemv_case()) {
        let transposed: Vec<i8> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
        let by_rows = PackedI8::pack(k, n, &w, WeightLayout::KByN);
        let by_cols = PackedI8::pack(k, n, &transposed, WeightLayout::NByK);
        prop_assert_eq!(by_cols, by_rows);
    }
}

#[test]
fn extreme_values_over_a_long_k_do_not_overflow_or_saturate() {
    // 255 × −128 summed 4099 times: −133 799 360, far past i16 and the pairwise saturation of vpmaddubsw.
    let (k, n) = (4099, 33);
    let a = vec![255u8; k];
    let w: Vec<i8> = (0..k * n).map(|i| if i % 3 == 0 { 127 } else { -128 }).collect();
    let expected = reference(&a, &w, k, n);
    for (isa, got) in run_all_isas(&a, &w, k, n) {
        assert_eq!(got, expected, "isa {isa}");
    }
}

#[test]
fn a_cpu_part_names_tracts_core_kind() {
    let big_little = "processor : 0\nCPU part : 0xd05\nprocessor : 4\nCPU part : 0xd0a\n";
    assert_eq!(kernels::aarch64_kind_from_cpuinfo(big_little), Some("a75"));
    assert_eq!(kernels::aarch64_kind_from_cpuinfo("CPU part\t: 0xd03\n"), Some("a53"));
    assert_eq!(kernels::aarch64_kind_from_cpuinfo("CPU part : 0xd44\n"), Some("generic"));
    assert_eq!(kernels::aarch64_kind_from_cpuinfo("model name : Xeon\n"), None);
}

#[test]
fn isa_names_round_trip_and_scalar_is_always_there() {
    let available = Isa::available();
    assert_eq!(available[0], Isa::Scalar);
    for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Neon, Isa::NeonDotprod] {
        assert_eq!(Isa::parse(isa.name()), Some(isa));
    }
    assert_eq!(Isa::parse("sse9"), None);
}

fn optimized(bytes: &[u8], shape: &[usize], accel: Acceleration) -> (TypedModel, usize) {
    let mut m = tract_onnx::onnx().model_for_read(&mut &bytes[..]).unwrap();
    m.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape)).unwrap();
    let (typed, replaced) = kernels::optimize_with(m, accel).unwrap();
    (typed, replaced.len())
}

/// tract alone (pupil's kernels off, so it replaces nothing) on an `m × k` input drawn uniformly from
/// `±spread` with `seed`: the input and tract's outputs.
fn tract_alone(bytes: &[u8], (m, k): (usize, usize), seed: u64, spread: f32) -> (Tensor, Vec<f32>) {
    let (plain, none) = optimized(bytes, &[m, k], Acceleration::Off);
    assert_eq!(none, 0, "with the kernels off nothing is replaced");
    let mut rng = zoo::Rng::new(seed);
    let input: Vec<f32> = (0..m * k).map(|_| rng.sym(spread)).collect();
    let input = Tensor::from_shape(&[m, k], &input).unwrap();
    let expected = run(&plain, &input);
    (input, expected)
}

fn run(model: &TypedModel, input: &Tensor) -> Vec<f32> {
    let plan = model.clone().into_runnable().unwrap();
    let out = plan.run(tvec![input.clone().into_tvalue()]).unwrap();
    let out = out[0].clone().into_tensor();
    out.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
}

/// `f32 → QuantizeLinear → MatMulInteger → Cast f32`: integer all the way, so pupil must equal tract exactly.
#[allow(clippy::too_many_arguments)] // one argument per dimension / signedness / zero point of the case
fn matmul_integer_model(
    m: usize,
    k: usize,
    n: usize,
    a_signed: bool,
    w_signed: bool,
    az: i32,
    wz: i32,
    seed: u64,
) -> Vec<u8> {
    let mut rng = zoo::Rng::new(seed);
    let mut b = GraphBuilder::new("mmi");
    let x = b.input("input", &[Dim::Fixed(m), Dim::Fixed(k)]);
    let (adt, wdt) = (if a_signed { dtype::I8 } else { dtype::U8 }, if w_signed { dtype::I8 } else { dtype::U8 });
    let sx = b.init_f32("sx", &[], &[1.0 / 64.0]);
    let zx = b.init_raw("zx", &[], adt, vec![az as u8]);
    let w: Vec<u8> = (0..k * n).map(|_| rng.next_u64() as u8).collect();
    let w = b.init_raw("w", &[k, n], wdt, w);
    let zw = b.init_raw("zw", &[], wdt, vec![wz as u8]);
    let xq = b.op("QuantizeLinear", &[&x, &sx, &zx], &[]);
    let y = b.op("MatMulInteger", &[&xq, &w, &zx, &zw], &[]);
    b.node("Cast", &[&y], &["out"], &[("to", pupil_runtime::onnx::Attr::Int(dtype::F32 as i64))]);
    b.output("out", &[Dim::Fixed(m), Dim::Fixed(n)]);
    b.to_bytes()
}

#[test]
fn matmul_integer_is_exact_for_every_signedness_and_zero_point() {
    let cases = [
        (1, 37, 19, false, true, 128, 0),
        (1, 64, 16, false, true, 0, 0),
        (3, 101, 45, true, true, -128, 127),
        (2, 8, 3, false, false, 255, 1),
        (1, 333, 70, true, false, 5, 200),
        (1, 1, 1, true, true, 127, -128),
    ];
    for (i, &(m, k, n, a_s, w_s, az, wz)) in cases.iter().enumerate() {
        let bytes = matmul_integer_model(m, k, n, a_s, w_s, az, wz, i as u64);
        // Inputs spread over the whole quantized range, and past it (saturation).
        let (input, expected) = tract_alone(&bytes, (m, k), 100 + i as u64, 5.0);
        for isa in Isa::available() {
            let (fast, replaced) = optimized(&bytes, &[m, k], Acceleration::With(isa));
            assert_eq!(replaced, 1, "case {i}: the MatMulInteger should run on pupil's kernel");
            assert_eq!(pupil_nodes(&fast).len(), 1, "case {i}: the optimised plan keeps pupil's node");
            let got = run(&fast, &input);
            assert_eq!(
                got, expected,
                "case {i} ({m}x{k}x{n}, a signed {a_s}, w signed {w_s}, zero points {az}/{wz}) on {isa}"
            );
        }
    }
}

/// `f32 → QuantizeLinear → MatMulInteger → Add(i32 bias) → Cast f32 → Mul(scale)`: how pupil's quantizer ends
/// an int8 model in f32 logits, the scale one per column or one for all.
fn matmul_integer_logits_model(m: usize, k: usize, n: usize, per_column: bool, seed: u64) -> Vec<u8> {
    let mut rng = zoo::Rng::new(seed);
    let mut b = GraphBuilder::new("mmi-logits");
    let x = b.input("input", &[Dim::Fixed(m), Dim::Fixed(k)]);
    let sx = b.init_f32("sx", &[], &[1.0 / 50.0]);
    let zx = b.init_raw("zx", &[], dtype::U8, vec![117]);
    let w: Vec<u8> = (0..k * n).map(|_| rng.next_u64() as u8).collect();
    let w = b.init_raw("w", &[k, n], dtype::I8, w);
    let xq = b.op("QuantizeLinear", &[&x, &sx, &zx], &[]);
    let acc = b.op("MatMulInteger", &[&xq, &w, &zx], &[]);
    let bias: Vec<u8> = (0..n).flat_map(|_| ((rng.next_u64() % 40001) as i32 - 20000).to_le_bytes()).collect();
    let bias = b.init_raw("bias", &[n], dtype::I32, bias);
    let acc = b.op("Add", &[&acc, &bias], &[]);
    let y = b.op("Cast", &[&acc], &[("to", pupil_runtime::onnx::Attr::Int(dtype::F32 as i64))]);
    let scale: Vec<f32> = (0..if per_column { n } else { 1 }).map(|_| 1e-4 + rng.unit() * 1e-3).collect();
    let scale = b.init_f32("scale", &[scale.len()], &scale);
    b.node("Mul", &[&y, &scale], &["out"], &[]);
    b.output("out", &[Dim::Fixed(m), Dim::Fixed(n)]);
    b.to_bytes()
}

#[test]
fn an_int8_products_dequantization_folds_into_it_and_its_input_quantizes_on_pupils_loop_exactly() {
    for (i, &(m, k, n, per_column)) in [(1, 784, 10, true), (2, 37, 19, false), (1, 5, 33, true)].iter().enumerate() {
        let bytes = matmul_integer_logits_model(m, k, n, per_column, 40 + i as u64);
        // Inputs over the whole quantized range and past it (saturation), ties included by the grid of 1/50.
        let (input, expected) = tract_alone(&bytes, (m, k), 300 + i as u64, 4.0);
        for isa in Isa::available() {
            let (fast, replaced) = optimized(&bytes, &[m, k], Acceleration::With(isa));
            assert_eq!(replaced, 1, "case {i} on {isa}: the MatMulInteger should run on pupil's kernel");
            let ops: Vec<String> = fast.nodes().iter().map(|n| n.op.name().to_string()).collect();
            for gone in ["Add", "Cast", "Mul"] {
                assert!(!ops.iter().any(|o| o == gone), "case {i} on {isa}: {gone} left in {ops:?}");
            }
            assert_eq!(ops.iter().filter(|o| *o == "PupilQuantize").count(), 1, "case {i} on {isa}: {ops:?}");
            assert_eq!(run(&fast, &input), expected, "case {i} ({m}x{k}x{n}, per column {per_column}) on {isa}");
        }
    }
}

/// A product large enough to be split across threads (784 × 400 = 313 600 multiply-adds) gives, on a 2-thread
/// pool, exactly the outputs of one thread.
#[test]
fn an_int8_product_split_across_threads_equals_the_single_threaded_one() {
    use tract_linalg::multithread::{Executor, multithread_tract_scope};
    const { assert!(784 * 400 >= kernels::gemv::MIN_SPLIT_MACS) };
    let bytes = zoo::mlp_int8(&[784, 400, 10], 7, 8).to_bytes();
    let mut rng = zoo::Rng::new(8);
    for isa in Isa::available() {
        let (fast, replaced) = optimized(&bytes, &[1, 784], Acceleration::With(isa));
        assert_eq!(replaced, 2, "{isa}");
        let plan = fast.into_runnable().unwrap();
        for _ in 0..3 {
            let input: Vec<f32> = (0..784).map(|_| rng.unit()).collect();
            let input = Tensor::from_shape(&[1, 784], &input).unwrap();
            let go = || {
                let out = plan.run(tvec![input.clone().into_tvalue()]).unwrap();
                out[0].clone().into_tensor().try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
            };
            let one = go();
            let two = multithread_tract_scope(Executor::multithread(2), go);
            assert_eq!(one, two, "{isa}");
        }
    }
}

/// `f32 → QuantizeLinear → Reshape [M, K, H, W] → QLinearConv 1×1 → DequantizeLinear`, the form pupil's
/// quantizer gives a fully connected layer when `h = w = 1`: per-channel weight scales, a bias, zero points.
#[allow(clippy::too_many_arguments)] // one argument per dimension / signedness / zero point of the case
fn qlinear_conv_1x1_model(
    m: usize,
    k: usize,
    n: usize,
    hw: usize,
    signed: (bool, bool),
    xz: i32,
    wz: i32,
    seed: u64,
) -> Vec<u8> {
    let mut rng = zoo::Rng::new(seed);
    let mut b = GraphBuilder::new("qconv1x1");
    let x = b.input("input", &[Dim::Fixed(m), Dim::Fixed(k * hw * hw)]);
    let (xdt, wdt) = (if signed.0 { dtype::I8 } else { dtype::U8 }, if signed.1 { dtype::I8 } else { dtype::U8 });
    let sx = b.init_f32("sx", &[], &[1.0 / 32.0]);
    let zx = b.init_raw("zx", &[], xdt, vec![xz as u8]);
    let xq = b.op("QuantizeLinear", &[&x, &sx, &zx], &[]);
    let to_image = b.init_i64("to_image", &[4], &[m as i64, k as i64, hw as i64, hw as i64]);
    let xq = b.op("Reshape", &[&xq, &to_image], &[]);
    let w: Vec<u8> = (0..n * k).map(|_| rng.next_u64() as u8).collect();
    let w = b.init_raw("w", &[n, k, 1, 1], wdt, w);
    let sw: Vec<f32> = (0..n).map(|_| 0.002 + rng.unit() * 0.01).collect();
    let sw = b.init_f32("sw", &[n], &sw);
    let zw = b.init_raw("zw", &[], wdt, vec![wz as u8]);
    let sy = b.init_f32("sy", &[], &[0.25]);
    let zy = b.init_raw("zy", &[], xdt, vec![(xz / 2) as u8]);
    let bias: Vec<u8> = (0..n).flat_map(|_| ((rng.next_u64() % 20001) as i32 - 10000).to_le_bytes()).collect();
    let bias = b.init_raw("bias", &[n], dtype::I32, bias);
    let y = b.op("QLinearConv", &[&xq, &sx, &zx, &w, &sw, &zw, &sy, &zy, &bias], &[]);
    let to_rows = b.init_i64("to_rows", &[2], &[m as i64, (n * hw * hw) as i64]);
    let y = b.op("Reshape", &[&y, &to_rows], &[]);
    b.node("DequantizeLinear", &[&y, &sy, &zy], &["out"], &[]);
    b.output("out", &[Dim::Fixed(m), Dim::Fixed(n * hw * hw)]);
    b.to_bytes()
}

#[test]
fn a_pointwise_qlinear_conv_over_1x1_inputs_runs_on_pupils_product_like_tract() {
    // (m, k, n, (x signed, w signed), x zero point, w zero point)
    let cases = [
        (1, 784, 40, (false, true), 0, 0),
        (3, 37, 19, (false, false), 128, 3),
        (2, 101, 45, (true, true), -5, -128),
        (1, 8, 3, (true, false), 127, 255),
    ];
    for (i, &(m, k, n, signed, xz, wz)) in cases.iter().enumerate() {
        let bytes = qlinear_conv_1x1_model(m, k, n, 1, signed, xz, wz, i as u64);
        // Inputs over the whole quantized range and past it (saturation).
        let (input, expected) = tract_alone(&bytes, (m, k), 200 + i as u64, 6.0);
        for isa in Isa::available() {
            let (fast, replaced) = optimized(&bytes, &[m, k], Acceleration::With(isa));
            assert_eq!(replaced, 1, "case {i} on {isa}: the QLinearConv should run on pupil's product");
            let nodes = pupil_nodes(&fast);
            assert_eq!((nodes.len(), nodes[0].op, nodes[0].k, nodes[0].n), (1, "PupilQMatMul", k, n), "case {i}");
            let got = run(&fast, &input);
            // The requantization rounds in f32 where tract uses fixed point: one output step (0.25) at most.
            let steps: Vec<f32> = expected.iter().zip(&got).map(|(x, y)| ((x - y) / 0.25).abs()).collect();
            assert!(steps.iter().all(|&s| s <= 1.0 + 1e-4), "case {i} on {isa}: {expected:?} vs {got:?}");
            let exact = steps.iter().filter(|&&s| s < 1e-4).count();
            assert!(exact * 10 >= steps.len() * 9, "case {i} on {isa}: only {exact} of {} outputs equal", steps.len());
        }
    }
    // Over 2 × 2 images the same convolution is no longer a product of rows: pupil's product must leave it.
    let bytes = qlinear_conv_1x1_model(1, 16, 8, 2, (false, true), 3, 0, 9);
    let (plain, _) = optimized(&bytes, &[1, 64], Acceleration::Off);
    let input: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) / 10.0).collect();
    let input = Tensor::from_shape(&[1, 64], &input).unwrap();
    let expected = run(&plain, &input);
    for isa in Isa::available() {
        let (fast, _) = optimized(&bytes, &[1, 64], Acceleration::With(isa));
        assert!(pupil_nodes(&fast).iter().all(|r| r.op != "PupilQMatMul"), "{isa}: 2×2 images are not rows");
        assert_eq!(run(&fast, &input), expected, "{isa}");
    }
}

#[test]
fn int8_mlp_matches_tract_within_one_quantization_step() {
    let sizes = [784, 96, 50, 10];
    let bytes = zoo::mlp_int8(&sizes, 11, 8).to_bytes();
    let (plain, _) = optimized(&bytes, &[1, 784], Acceleration::Off);
    let mut rng = zoo::Rng::new(5);
    for isa in Isa::available() {
        let (fast, replaced) = optimized(&bytes, &[1, 784], Acceleration::With(isa));
        assert_eq!(replaced, 3, "every QLinearMatMul runs on pupil's kernel");
        for _ in 0..5 {
            let input: Vec<f32> = (0..784).map(|_| rng.unit()).collect();
            let input = Tensor::from_shape(&[1, 784], &input).unwrap();
            let a = run(&plain, &input);
            let b = run(&fast, &input);
            let range = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
            // The requantization rounds in f32 where tract uses fixed point: the u8 outputs may differ by
            // one step (1/255 of the layer's range), which can carry through the next layers a little.
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst <= 0.03 * range, "{isa}: max |Δ| {worst} for outputs up to {range}: {a:?} vs {b:?}");
        }
    }
}

#[test]
fn kernels_off_leaves_the_graph_to_tract() {
    let bytes = zoo::mlp_int8(&[20, 8, 4], 1, 2).to_bytes();
    let (typed, replaced) = optimized(&bytes, &[1, 20], Acceleration::Off);
    assert_eq!(replaced, 0);
    assert!(pupil_nodes(&typed).is_empty());
}

#[test]
fn the_model_api_uses_pupils_kernels_and_agrees_with_tract() {
    let bytes = zoo::mlp_int8(&[784, 64, 10], 3, 4).to_bytes();
    Acceleration::set_default(Some(Acceleration::Off));
    let plain = pupil_runtime::Model::from_bytes(&bytes, Default::default()).unwrap();
    Acceleration::set_default(Some(Acceleration::On));
    let fast = pupil_runtime::Model::from_bytes(&bytes, Default::default()).unwrap();
    Acceleration::set_default(None);
    assert!(pupil_nodes(plain.typed_model()).is_empty());
    assert_eq!(pupil_nodes(fast.typed_model()).len(), 2);
    let input: Vec<f32> = (0..784).map(|i| (i % 17) as f32 / 17.0).collect();
    let (a, b) = (plain.run(&input).unwrap(), fast.run(&input).unwrap());
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst < 0.05, "{a:?} vs {b:?}");
    assert_eq!(plain.predict(&input).unwrap().top[0].index, fast.predict(&input).unwrap().top[0].index);
}

/// What pupil's trainer exports: `[N, 1, 28, 28] → Flatten → Gemm → Relu → Gemm`. tract folds the Flatten into the
/// first product (K spread over two axes, `NabI,ObI->NO`); quantized by pupil, every product must still run on
/// pupil's kernels (the first layer holds ~90% of the MACs) and agree with tract, at batch 1 and batch 3.
#[test]
fn a_flatten_folded_into_the_first_layer_still_runs_on_pupils_kernels() {
    let mut rng = zoo::Rng::new(21);
    let mut g = GraphBuilder::new("image-mlp");
    let n = Dim::Symbol("N".into());
    let x = g.input("input", &[n.clone(), Dim::Fixed(1), Dim::Fixed(28), Dim::Fixed(28)]);
    let flat = g.op("Flatten", &[&x], &[]);
    let w0: Vec<f32> = (0..32 * 784).map(|_| rng.sym(0.05)).collect();
    let w0 = g.init_f32("w0", &[32, 784], &w0);
    let b0 = g.init_f32("b0", &[32], &[0.01; 32]);
    let h = g.op("Gemm", &[&flat, &w0, &b0], &[("transB", pupil_runtime::onnx::Attr::Int(1))]);
    let h = g.op("Relu", &[&h], &[]);
    let w1: Vec<f32> = (0..10 * 32).map(|_| rng.sym(0.2)).collect();
    let w1 = g.init_f32("w1", &[10, 32], &w1);
    let b1 = g.init_f32("b1", &[10], &[0.0; 10]);
    g.node("Gemm", &[&h, &w1, &b1], &["logits"], &[("transB", pupil_runtime::onnx::Attr::Int(1))]);
    g.output("logits", &[n, Dim::Fixed(10)]);
    let calib: Vec<f32> = (0..64 * 784).map(|_| rng.unit()).collect();
    let (q, _) =
        pupil_runtime::quantize::quantize(&g.to_bytes(), &Default::default(), Some(&calib)).expect("quantizes");
    for batch in [1, 3] {
        let shape = [batch, 1, 28, 28];
        let (plain, _) = optimized(&q, &shape, Acceleration::Off);
        let input: Vec<f32> = (0..batch * 784).map(|_| rng.unit()).collect();
        let input = Tensor::from_shape(&shape, &input).unwrap();
        let expected = run(&plain, &input);
        for isa in Isa::available() {
            let (fast, replaced) = optimized(&q, &shape, Acceleration::With(isa));
            assert_eq!(replaced, 2, "batch {batch}, {isa}: both products on pupil's kernels");
            assert_eq!(pupil_nodes(&fast)[0].k, 784, "K spans the folded 28×28 axes");
            let got = run(&fast, &input);
            let range = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
            let worst = expected.iter().zip(&got).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst <= 0.03 * range, "batch {batch}, {isa}: max |Δ| {worst} (outputs up to {range})");
        }
    }
}
