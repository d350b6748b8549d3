//! pupil's f32 matrix-vector kernel (`PupilMatMul`) against the definition (proptest: odd K and N, every
//! instruction set of this CPU, 1 and 2 threads), and end to end: f32 MLPs with pupil's kernels give tract's own
//! outputs, at batch 1, 2 and a symbolic batch (which tract keeps).

use proptest::prelude::*;
use pupil_runtime::kernels::{self, Acceleration, Isa, PackedF32, WeightLayout, gemv, pupil_nodes, zoo};
use pupil_runtime::onnx::GraphBuilder;
use pupil_runtime::spec::Dim;
use pupil_runtime::{Batch, Model, ModelOptions};
use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;

/// `|got − want| ≤ 1e-5 · Σ_k |a_k · w_kn| (+ |bias|)`: 1e-5 relative to the size of the terms summed, which is
/// what reordering an f32 sum can change.
fn assert_close(got: &[f32], want: &[f32], scale: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (j, ((g, w), s)) in got.iter().zip(want).zip(scale).enumerate() {
        assert!((g - w).abs() <= 1e-5 * s.max(1e-6), "{what}: column {j}: {g} vs {w} (terms up to {s})");
    }
}

fn magnitudes(a: &[f32], w: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
    let b = bias.map(abs);
    gemv::reference(&abs(a), &abs(w), n, b.as_deref())
}

/// `(k, n, m, a [m × k], w [k × n], bias)`.
type Case = (usize, usize, usize, Vec<f32>, Vec<f32>, Option<Vec<f32>>);

fn case() -> impl Strategy<Value = Case> {
    (1usize..300, 1usize..300, 1usize..4, any::<bool>()).prop_flat_map(|(k, n, m, with_bias)| {
        let v = |len| proptest::collection::vec(-2f32..2f32, len);
        (
            Just(k),
            Just(n),
            Just(m),
            v(m * k),
            v(k * n),
            if with_bias { v(n).prop_map(Some).boxed() } else { Just(None).boxed() },
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn f32_gemv_matches_the_definition_on_every_isa_and_thread_count((k, n, m, a, w, bias) in case()) {
        let p = PackedF32::from_row_major(k, n, &w, bias.as_deref());
        let executors = [Executor::SingleThread, Executor::multithread(2)];
        for isa in Isa::available() {
            for (t, executor) in executors.iter().enumerate() {
                let mut out = vec![f32::NAN; m * n];
                p.product(isa, &a, m, (f32::NEG_INFINITY, f32::INFINITY), &mut out, executor).unwrap();
                for (i, row) in a.chunks(k).enumerate() {
                    let want = gemv::reference(row, &w, n, bias.as_deref());
                    let scale = magnitudes(row, &w, n, bias.as_deref());
                    assert_close(&out[i * n..(i + 1) * n], &want, &scale, &format!("{isa}, {} threads, k {k} n {n} row {i}", t + 1));
                }
            }
        }
    }
}

/// [`case`] with activations zeroed (the ones the kernels skip): none, all, or each with a drawn probability.
fn sparse_case() -> impl Strategy<Value = Case> {
    (case(), prop_oneof![Just(0.0f64), Just(1.0f64), 0.0f64..1.0], proptest::collection::vec(0.0f64..1.0, 64)).prop_map(
        |((k, n, m, mut a, w, bias), dead, draws)| {
            for (x, draw) in a.iter_mut().zip(draws.iter().cycle()) {
                if *draw < dead {
                    *x = 0.0;
                }
            }
            (k, n, m, a, w, bias)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Zero activations are skipped, not mis-summed: the definition's sums on every ISA and thread count, and the
    /// same bits at 1 and 2 threads.
    #[test]
    fn zero_activations_give_the_definition_s_sums((k, n, m, a, w, bias) in sparse_case()) {
        let p = PackedF32::from_row_major(k, n, &w, bias.as_deref());
        for isa in Isa::available() {
            let mut one = vec![f32::NAN; m * n];
            p.product(isa, &a, m, (f32::NEG_INFINITY, f32::INFINITY), &mut one, &Executor::SingleThread).unwrap();
            let mut two = vec![f32::NAN; m * n];
            p.product(isa, &a, m, (f32::NEG_INFINITY, f32::INFINITY), &mut two, &Executor::multithread(2)).unwrap();
            prop_assert_eq!(&one, &two, "{} k {} n {}", isa, k, n);
            for (i, row) in a.chunks(k).enumerate() {
                let want = gemv::reference(row, &w, n, bias.as_deref());
                let scale = magnitudes(row, &w, n, bias.as_deref());
                assert_close(&one[i * n..(i + 1) * n], &want, &scale, &format!("{isa}, k {k} n {n} row {i}"));
            }
        }
    }

    /// A transposed `[N, K]` matrix (ONNX `Gemm` with `transB`) packs to exactly the panels of the same matrix
    /// given `[K, N]`.
    #[test]
    fn an_n_by_k_matrix_packs_like_its_k_by_n_transpose((k, n, _m, _a, w, bias) in case()) {
        let transposed: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
        let by_rows = PackedF32::pack(k, n, &w, WeightLayout::KByN, bias.as_deref());
        let by_cols = PackedF32::pack(k, n, &transposed, WeightLayout::NByK, bias.as_deref());
        prop_assert!(by_cols == by_rows, "k {k} n {n}");
    }
}

/// A zero activation is not skipped when a weight is not finite: `0 · ∞` is NaN, as in the definition.
#[test]
fn a_zero_activation_times_an_infinite_weight_is_nan() {
    let (k, n) = (6, 20);
    let mut w: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 - 3.0).collect();
    w[2 * n + 17] = f32::INFINITY;
    // Half zero: a row the kernels would otherwise read sparsely.
    let a = [1.0, 0.0, 0.0, -2.0, 0.0, 0.25];
    let want = gemv::reference(&a, &w, n, None);
    assert!(want[17].is_nan() && want.iter().filter(|v| v.is_nan()).count() == 1);
    let p = PackedF32::from_row_major(k, n, &w, None);
    for isa in Isa::available() {
        let mut out = vec![0.0; n];
        p.product(isa, &a, 1, (f32::NEG_INFINITY, f32::INFINITY), &mut out, &Executor::SingleThread).unwrap();
        // NaN, or −∞ once through the clamp (`f32::max` drops a NaN); skipping the zero would leave a finite sum.
        assert!(!out[17].is_finite(), "{isa}: {}", out[17]);
        for j in (0..n).filter(|&j| j != 17) {
            assert_eq!(out[j], want[j], "{isa} column {j}");
        }
    }
}

/// Big enough to be split across threads (past `MIN_SPLIT_MACS`), odd so the last share ends mid-panel; with a
/// ReLU-like clamp, and most activations zero (a ReLU layer's output), which the kernels skip.
#[test]
fn a_product_split_across_threads_equals_the_single_threaded_one() {
    let mut rng = zoo::Rng::new(5);
    let (k, n) = (2053, 1031);
    assert!(2 * k * n >= gemv::MIN_SPLIT_MACS);
    let a: Vec<f32> = (0..2 * k).map(|_| (rng.sym(1.0) - 0.25).max(0.0)).collect();
    assert!(a.chunks(k).all(|row| 2 * row.iter().filter(|&&x| x == 0.0).count() >= k));
    let w: Vec<f32> = (0..k * n).map(|_| rng.sym(0.1)).collect();
    let bias: Vec<f32> = (0..n).map(|_| rng.sym(0.5)).collect();
    let p = PackedF32::from_row_major(k, n, &w, Some(&bias));
    for isa in Isa::available() {
        let mut one = vec![f32::NAN; 2 * n];
        p.product(isa, &a, 2, (0.0, f32::INFINITY), &mut one, &Executor::SingleThread).unwrap();
        for threads in [2, 3] {
            let mut many = vec![f32::NAN; 2 * n];
            p.product(isa, &a, 2, (0.0, f32::INFINITY), &mut many, &Executor::multithread(threads)).unwrap();
            assert_eq!(one, many, "{isa}, {threads} threads: same panels, same sums");
        }
        for (i, row) in a.chunks(k).enumerate() {
            let want: Vec<f32> = gemv::reference(row, &w, n, Some(&bias)).iter().map(|v| v.max(0.0)).collect();
            assert_close(&one[i * n..(i + 1) * n], &want, &magnitudes(row, &w, n, Some(&bias)), &format!("{isa}"));
        }
    }
}

fn optimized(bytes: &[u8], shape: &[Dim], accel: Acceleration) -> (TypedModel, Vec<kernels::Replacement>) {
    let mut m = tract_onnx::onnx().model_for_read(&mut &bytes[..]).unwrap();
    let dims: TVec<TDim> = shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(v) => TDim::from(*v as i64),
            Dim::Symbol(s) => m.symbols.sym(s).into(),
        })
        .collect();
    m.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), dims)).unwrap();
    kernels::optimize_with(m, accel).unwrap()
}

fn run(model: &TypedModel, input: &Tensor, executor: Option<Executor>) -> Vec<f32> {
    let plan = model.clone().into_runnable().unwrap();
    let go = || plan.run(tvec![input.clone().into_tvalue()]).unwrap();
    let out = match executor {
        Some(e) => tract_linalg::multithread::multithread_tract_scope(e, go),
        None => go(),
    };
    let out = out[0].clone().into_tensor();
    out.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
}

fn assert_near(got: &[f32], want: &[f32], what: &str) {
    let range = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    let worst = got.iter().zip(want).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(got.len() == want.len() && worst <= 1e-5 * range, "{what}: max |Δ| {worst} (outputs up to {range})");
}

/// `Gemm → Relu → Gemm → Relu → Gemm`: each product, with its bias and ReLU, becomes one `PupilMatMul` at batch
/// 1 and 2 (on every instruction set, 1 and 2 threads) and agrees with tract; at a symbolic batch tract keeps them.
#[test]
fn an_f32_mlp_runs_on_pupils_matmul_and_agrees_with_tract() {
    let sizes = [784, 300, 100, 10];
    let bytes = zoo::mlp(&sizes, 11).to_bytes();
    let mut rng = zoo::Rng::new(3);
    for batch in [1usize, 2] {
        let shape = [Dim::Fixed(batch), Dim::Fixed(784)];
        let (plain, none) = optimized(&bytes, &shape, Acceleration::Off);
        assert!(none.is_empty() && pupil_nodes(&plain).is_empty());
        let input: Vec<f32> = (0..batch * 784).map(|_| rng.unit()).collect();
        let input = Tensor::from_shape(&[batch, 784], &input).unwrap();
        let expected = run(&plain, &input, None);
        for isa in Isa::available() {
            let (fast, replaced) = optimized(&bytes, &shape, Acceleration::With(isa));
            let dims: Vec<_> = replaced.iter().map(|r| (r.op, r.k, r.n, r.isa)).collect();
            let want: Vec<_> = sizes.windows(2).map(|s| ("PupilMatMul", s[0], s[1], isa)).collect();
            assert_eq!(dims, want, "batch {batch}, {isa}: every layer on pupil's kernel");
            assert_eq!(pupil_nodes(&fast), replaced, "batch {batch}, {isa}: the optimised plan keeps them");
            // Only the products and nothing of the bias adds and ReLUs is left to tract.
            assert!(
                fast.nodes().iter().all(|n| !["Add", "Max"].contains(&n.op.name().as_ref())),
                "batch {batch}, {isa}: {fast}"
            );
            for executor in [None, Some(Executor::multithread(2))] {
                let threads = if executor.is_some() { 2 } else { 1 };
                let got = run(&fast, &input, executor);
                assert_near(&got, &expected, &format!("batch {batch}, {isa}, {threads} threads"));
            }
        }
    }
    let n = Dim::Symbol("N".into());
    let (plain, _) = optimized(&bytes, &[n.clone(), Dim::Fixed(784)], Acceleration::Off);
    let (fast, replaced) = optimized(&bytes, &[n, Dim::Fixed(784)], Acceleration::On);
    assert!(replaced.is_empty() && pupil_nodes(&fast).is_empty(), "symbolic batch: left to tract's GEMM: {replaced:?}");
    for batch in [1usize, 2, 5] {
        let input: Vec<f32> = (0..batch * 784).map(|_| rng.unit()).collect();
        let input = Tensor::from_shape(&[batch, 784], &input).unwrap();
        assert_near(&run(&fast, &input, None), &run(&plain, &input, None), &format!("symbolic batch at {batch}"));
    }
}

/// More rows than pupil's kernel takes: tract's GEMM keeps the product.
#[test]
fn a_product_over_many_rows_is_left_to_tract() {
    let bytes = zoo::mlp(&[20, 8, 4], 2).to_bytes();
    let (_, replaced) = optimized(&bytes, &[Dim::Fixed(5), Dim::Fixed(20)], Acceleration::On);
    assert!(replaced.is_empty(), "{replaced:?}");
    let (_, replaced) = optimized(&bytes, &[Dim::Fixed(4), Dim::Fixed(20)], Acceleration::On);
    assert_eq!(replaced.len(), 2);
}

/// `[N, 1, 28, 28] → Flatten → Gemm`: the model API replaces the dense layers before tract's declutter (the
/// Flatten stays a reshape in front of the product); where the declutter ran first, it folds the Flatten into
/// the product's weights (K over two axes), and pupil's f32 kernel takes that product too. K = 784 either way,
/// tract's outputs either way, with 1 and 2 threads.
#[test]
fn the_model_api_runs_a_folded_flatten_on_pupils_matmul_with_its_threads() {
    let mut rng = zoo::Rng::new(8);
    let mut g = GraphBuilder::new("image-mlp");
    let n = Dim::Symbol("N".into());
    let x = g.input("input", &[n.clone(), Dim::Fixed(1), Dim::Fixed(28), Dim::Fixed(28)]);
    let flat = g.op("Flatten", &[&x], &[]);
    let w0: Vec<f32> = (0..96 * 784).map(|_| rng.sym(0.05)).collect();
    let w0 = g.init_f32("w0", &[96, 784], &w0);
    let b0 = g.init_f32("b0", &[96], &[0.01; 96]);
    let h = g.op("Gemm", &[&flat, &w0, &b0], &[("transB", pupil_runtime::onnx::Attr::Int(1))]);
    let h = g.op("Relu", &[&h], &[]);
    let w1: Vec<f32> = (0..10 * 96).map(|_| rng.sym(0.2)).collect();
    let w1 = g.init_f32("w1", &[10, 96], &w1);
    let b1 = g.init_f32("b1", &[10], &[0.0; 10]);
    g.node("Gemm", &[&h, &w1, &b1], &["logits"], &[("transB", pupil_runtime::onnx::Attr::Int(1))]);
    g.output("logits", &[n, Dim::Fixed(10)]);
    let bytes = g.to_bytes();
    let input: Vec<f32> = (0..784).map(|_| rng.unit()).collect();
    Acceleration::set_default(Some(Acceleration::Off));
    let plain = Model::from_bytes(&bytes, ModelOptions::default()).unwrap();
    Acceleration::set_default(None);
    let expected = plain.run(&input).unwrap();
    assert!(pupil_nodes(plain.typed_model()).is_empty());
    for threads in [1, 2] {
        let opts = ModelOptions::default().with_batch(Batch::Fixed(1)).with_threads(threads);
        let fast = Model::from_bytes(&bytes, opts).unwrap();
        let nodes = pupil_nodes(fast.typed_model());
        assert_eq!(
            nodes.iter().map(|r| (r.op, r.k, r.n)).collect::<Vec<_>>(),
            [("PupilMatMul", 784, 96), ("PupilMatMul", 96, 10)]
        );
        assert_near(&fast.run(&input).unwrap(), &expected, &format!("{threads} threads"));
    }
    // Decluttered first: the first product reads the image over two axes of K.
    let mut m = tract_onnx::onnx().model_for_read(&mut &bytes[..]).unwrap();
    m.set_input_fact(0, f32::fact([1, 1, 28, 28]).into()).unwrap();
    let mut folded = m.into_typed().unwrap().into_decluttered().unwrap();
    let rank_in = |model: &TypedModel| {
        let first = model.nodes().iter().find(|n| n.op.name().contains("EinSum")).expect("a product");
        model.outlet_fact(first.inputs[0]).unwrap().rank()
    };
    assert!(rank_in(&folded) > 2, "the declutter folds the Flatten: {folded}");
    let replaced = kernels::accelerate(&mut folded, Acceleration::On).unwrap();
    assert_eq!(
        replaced.iter().map(|r| (r.op, r.k, r.n)).collect::<Vec<_>>(),
        [("PupilMatMul", 784, 96), ("PupilMatMul", 96, 10)]
    );
    let image = Tensor::from_shape(&[1, 1, 28, 28], &input).unwrap();
    assert_near(&run(&folded.into_optimized().unwrap(), &image, None), &expected, "decluttered first");
}

#[test]
fn a_product_with_mis_sized_buffers_is_an_error_not_a_panic() {
    let p = PackedF32::pack(3, 2, &[1.0; 6], WeightLayout::KByN, None);
    let mut out = vec![0f32; 2];
    let err =
        p.product(Isa::Scalar, &[1.0; 2], 1, (f32::NEG_INFINITY, f32::INFINITY), &mut out, &Executor::SingleThread);
    assert!(err.unwrap_err().to_string().contains("expected 3 inputs"));
    p.product(Isa::Scalar, &[1.0; 3], 1, (f32::NEG_INFINITY, f32::INFINITY), &mut out, &Executor::SingleThread)
        .unwrap();
    assert_eq!(out, vec![3.0, 3.0]);
}
