//! The profiler's report: structure and invariants (sizes, MACs against a hand count, ordered percentiles,
//! operator shares, JSON round trip, comparison ratios). Never timings.

use pupil_runtime::onnx::{write_atomic, zoo};
use pupil_runtime::profile::{Comparison, ProfileComparison, ProfileOptions, ProfileReport};
use pupil_runtime::{Batch, Error, Model, ModelOptions};

/// Deterministic weights for an MLP with these layer sizes.
fn mlp_bytes(sizes: &[usize]) -> Vec<u8> {
    let mut seed = 7u32;
    let mut next = || {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        ((seed >> 9) as f32 / (1u32 << 23) as f32 - 0.5) * 0.2
    };
    let weights: Vec<Vec<f32>> = sizes.windows(2).map(|w| (0..w[0] * w[1]).map(|_| next()).collect()).collect();
    let biases: Vec<Vec<f32>> = sizes[1..].iter().map(|&n| (0..n).map(|_| next()).collect()).collect();
    zoo::mlp(sizes, &weights, &biases).to_bytes()
}

/// Multiply-accumulates of a dense network, by hand: one per weight, per example.
fn hand_macs(sizes: &[usize]) -> u64 {
    sizes.windows(2).map(|w| (w[0] * w[1]) as u64).sum()
}

fn quick() -> ProfileOptions {
    ProfileOptions { runs: 30, warmup: 3, op_runs: 5, ..Default::default() }
}

fn write_model(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.path().join(name);
    write_atomic(&path, bytes).unwrap();
    path
}

#[test]
fn sizes_and_parameters_match_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [20, 32, 16, 5];
    let path = write_model(&dir, "mlp.onnx", &mlp_bytes(&sizes));
    let model = Model::load(&path, ModelOptions::default()).unwrap();
    let r = model.profile(&quick()).unwrap();
    assert_eq!(r.model.file_size, std::fs::metadata(&path).unwrap().len());
    let params: u64 = sizes.windows(2).map(|w| (w[0] * w[1] + w[1]) as u64).sum();
    assert_eq!(r.model.parameters, params);
    assert_eq!(r.model.parameter_bytes.values().sum::<u64>(), params * 4);
    assert_eq!(r.model.example_shape, vec![20]);
    assert_eq!(r.model.classes, 5);
    assert_eq!(r.batch, 1);
    assert_eq!(r.device.arch, std::env::consts::ARCH);
    assert!(r.model.optimised_nodes >= 1);
}

#[test]
fn macs_equal_a_hand_count_at_every_batch() {
    let sizes = [64, 48, 24, 10];
    let bytes = mlp_bytes(&sizes);
    for batch in [1usize, 3, 8] {
        let model = Model::from_bytes(&bytes, ModelOptions::default().with_batch(Batch::Fixed(batch))).unwrap();
        let r = model.profile(&ProfileOptions { op_runs: 2, ..quick() }).unwrap();
        assert_eq!(r.batch, batch);
        assert!(r.macs.complete, "tract costed every node");
        assert_eq!(r.macs.per_example, hand_macs(&sizes), "batch {batch}");
        assert_eq!(r.macs.per_run, hand_macs(&sizes) * batch as u64, "batch {batch}");
        // Per-node MACs add up to the total.
        let ops = r.operators.as_ref().unwrap();
        assert_eq!(ops.nodes.iter().filter_map(|n| n.macs).sum::<u64>(), r.macs.per_run);
    }
}

#[test]
fn symbolic_batch_is_resolved_to_the_profiled_batch() {
    let sizes = [12, 7, 3];
    let model = Model::from_bytes(&mlp_bytes(&sizes), ModelOptions::default().with_batch(Batch::Symbolic)).unwrap();
    let r = model.profile(&ProfileOptions { batch: Some(4), ..quick() }).unwrap();
    assert_eq!(r.batch, 4);
    assert_eq!(r.macs.per_run, 4 * hand_macs(&sizes));
    let r = model.profile(&quick()).unwrap();
    assert_eq!(r.batch, 1, "a symbolic model profiles batch 1 by default");
}

#[test]
fn cnn_macs_equal_a_hand_count() {
    // Conv 3x3 pad 1 on 8x8x1 -> 4 channels, pool to 4x4, conv -> 6 channels, pool to 2x2, Gemm 24 -> 3.
    let bytes = zoo::cnn(8, &[4, 6], 3, &mut |l, i| ((l * 31 + i) % 17) as f32 / 17.0 - 0.5).to_bytes();
    let model = Model::from_bytes(&bytes, ModelOptions::default()).unwrap();
    let r = model.profile(&quick()).unwrap();
    let conv1 = 8 * 8 * 4 * 9;
    let conv2 = 4 * 4 * 6 * 4 * 9;
    let fc = 24 * 3;
    assert_eq!(r.macs.per_example, (conv1 + conv2 + fc) as u64);
}

#[test]
fn latency_is_ordered_and_consistent() {
    let model = Model::from_bytes(&mlp_bytes(&[30, 20, 4]), ModelOptions::default()).unwrap();
    let r = model.profile(&ProfileOptions { runs: 57, ..quick() }).unwrap();
    let l = &r.latency;
    assert_eq!(l.runs, 57);
    assert_eq!(l.samples_ms.len(), 57);
    assert!(l.min_ms > 0.0);
    assert!(l.min_ms <= l.p50_ms && l.p50_ms <= l.p90_ms && l.p90_ms <= l.p99_ms && l.p99_ms <= l.max_ms);
    assert!(l.min_ms <= l.mean_ms && l.mean_ms <= l.max_ms);
    assert!(l.std_ms >= 0.0 && l.std_ms <= l.max_ms - l.min_ms);
    let min = l.samples_ms.iter().copied().fold(f64::INFINITY, f64::min);
    let max = l.samples_ms.iter().copied().fold(0.0, f64::max);
    assert_eq!((l.min_ms, l.max_ms), (min, max));
    assert!((r.throughput - r.batch as f64 * 1e3 / l.mean_ms).abs() < 1e-9 * r.throughput);
    assert_eq!(r.warmup, 3);
}

#[test]
fn cold_start_splits_into_its_parts() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_model(&dir, "m.onnx", &mlp_bytes(&[16, 8, 2]));
    let model = Model::load(&path, ModelOptions::default()).unwrap();
    let stats = model.load_stats().clone();
    assert!(stats.read_ms.is_some(), "a model loaded from a file records the read");
    let r = model.profile(&quick()).unwrap();
    let c = &r.cold_start;
    assert!(c.first_inference_cold, "the profile's first run is the model's first");
    assert_eq!(c.phases, stats);
    let parts = c.load_ms + c.optimise_ms + c.first_inference_ms;
    assert!((c.total_ms - parts).abs() < 1e-9);
    let phases = stats.read_ms.unwrap() + stats.decode_ms + stats.analyse_ms + stats.optimise_ms + stats.plan_ms;
    assert!((c.load_ms + c.optimise_ms - phases).abs() < 1e-9);
    assert!(c.optimise_ms > 0.0 && c.first_inference_ms > 0.0);
    // A second profile of the same model: its first inference is no longer cold.
    let again = model.profile(&quick()).unwrap();
    assert!(!again.cold_start.first_inference_cold);
    // From memory: no read phase.
    let m = Model::from_bytes(&mlp_bytes(&[16, 8, 2]), ModelOptions::default()).unwrap();
    assert_eq!(m.load_stats().read_ms, None);
}

#[test]
fn operator_shares_sum_to_one_hundred_and_matmuls_name_their_kernel() {
    let model = Model::from_bytes(&mlp_bytes(&[128, 64, 32, 10]), ModelOptions::default()).unwrap();
    let r = model.profile(&ProfileOptions { op_runs: 10, ..quick() }).unwrap();
    let ops = r.operators.as_ref().expect("op_runs > 0 times operators");
    assert_eq!(ops.runs, 10);
    let sum: f64 = ops.nodes.iter().map(|n| n.share_pct).sum();
    assert!((sum - 100.0).abs() < 1e-6, "node shares sum to {sum}");
    let sum: f64 = ops.op_types.iter().map(|n| n.share_pct).sum();
    assert!((sum - 100.0).abs() < 1e-6, "op-type shares sum to {sum}");
    assert_eq!(ops.op_types.iter().map(|t| t.nodes).sum::<usize>(), ops.nodes.len());
    assert_eq!(ops.nodes.len(), r.model.optimised_nodes);
    assert!(ops.nodes.windows(2).all(|w| w[0].mean_ms >= w[1].mean_ms), "slowest first");
    assert!(ops.overhead_ms >= 0.0 && ops.run_mean_ms >= ops.overhead_ms);
    // Three dense layers: three matrix products (at batch 1 on pupil's f32 matrix-vector kernel), each with the
    // kernel that runs it and its geometry.
    let matmuls: Vec<_> = ops.nodes.iter().filter(|n| n.kernel.is_some()).collect();
    assert_eq!(matmuls.len(), 3, "{:#?}", ops.nodes);
    for m in &matmuls {
        let k = m.kernel.as_deref().unwrap();
        assert!(!k.is_empty() && k.is_ascii(), "kernel name {k:?}");
        assert!(m.macs.unwrap_or(0) > 0);
        let g = m.geometry.as_deref().unwrap();
        // m × k × n is the MAC count of the product.
        let dims: Vec<u64> = g.split(' ').map(|kv| kv.split('=').nth(1).unwrap().parse().unwrap()).collect();
        assert_eq!(dims.iter().product::<u64>(), m.macs.unwrap(), "{g}");
    }
    let off = model.profile(&ProfileOptions { op_runs: 0, ..quick() }).unwrap();
    assert!(off.operators.is_none());
}

/// An int8 MLP from pupil's quantizer: its products run on pupil's integer kernel, and each names its
/// instruction set and a geometry whose m × k × n is its multiply-accumulates.
#[test]
fn int8_products_name_their_kernel_and_geometry() {
    let calibration: Vec<f32> = (0..64 * 128).map(|i| ((i * 37) % 101) as f32 / 101.0).collect();
    let options = pupil_runtime::QuantizeOptions::default();
    let (int8, _) =
        pupil_runtime::quantize::quantize(&mlp_bytes(&[128, 64, 32, 10]), &options, Some(&calibration)).unwrap();
    let model = Model::from_bytes(&int8, ModelOptions::default()).unwrap();
    let r = model.profile(&quick()).unwrap();
    let ops = r.operators.as_ref().unwrap();
    let products: Vec<_> = ops.nodes.iter().filter(|n| n.op == "PupilQMatMul").collect();
    assert_eq!(products.len(), 3, "{:#?}", ops.nodes);
    for p in products {
        let kernel = p.kernel.as_deref().unwrap_or_default();
        assert!(kernel.starts_with("pupil ") && kernel.len() > 6, "{kernel:?}");
        let g = p.geometry.as_deref().unwrap();
        let dims: Vec<u64> = g.split(' ').map(|kv| kv.split('=').nth(1).unwrap().parse().unwrap()).collect();
        assert_eq!(dims.len(), 3, "{g}");
        assert_eq!(dims.iter().product::<u64>(), p.macs.unwrap(), "{g}");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn memory_comes_from_the_os_on_linux() {
    let model = Model::from_bytes(&mlp_bytes(&[256, 256, 10]), ModelOptions::default()).unwrap();
    let load = model.load_stats().memory.expect("linux reports load memory");
    assert!(load.peak_growth >= load.retained());
    let r = model.profile(&quick()).unwrap();
    let inf = r.memory.inference.expect("linux reports inference memory");
    assert!(inf.peak_growth >= inf.retained());
    assert!(inf.rss_before > 0 && inf.rss_after > 0);
    if r.memory.peak_reset {
        assert!(inf.exact, "after a reset the peak is exact");
    }
    assert!(r.memory.source.contains("/proc/self/status"));
}

/// Compares two JSON values, floats to 1e-12 relative (serde_json may round the last bit).
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::*;
    match (a, b) {
        (Number(x), Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
            _ => x == y,
        },
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b)),
        (Object(x), Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn report_round_trips_through_json() {
    let model = Model::from_bytes(&mlp_bytes(&[10, 6, 3]), ModelOptions::default()).unwrap();
    let mut r = model.profile(&quick()).unwrap();
    r.label = Some("mlp".into());
    let json = serde_json::to_string(&r).unwrap();
    let back: ProfileReport = serde_json::from_str(&json).unwrap();
    assert!(same_json(&serde_json::to_value(&r).unwrap(), &serde_json::to_value(&back).unwrap()));
    assert_eq!(back.macs, r.macs);
    assert_eq!(back.model, r.model);
    assert_eq!(back.device, r.device);
    // Plain data: the keys the bindings rely on are there.
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    for key in ["model", "macs", "cold_start", "latency", "throughput", "memory", "operators", "device"] {
        assert!(v.get(key).is_some(), "missing `{key}`");
    }
    assert!(v["model"]["parameter_bytes"]["f32"].is_u64());
    // ProfileOptions deserialise with defaults for what is missing.
    let o: ProfileOptions = serde_json::from_str(r#"{"runs": 7}"#).unwrap();
    assert_eq!((o.runs, o.warmup, o.op_runs), (7, ProfileOptions::default().warmup, ProfileOptions::default().op_runs));
}

#[test]
fn comparison_ratios_are_consistent() {
    let small = Model::from_bytes(&mlp_bytes(&[64, 16, 10]), ModelOptions::default()).unwrap();
    let big = Model::from_bytes(&mlp_bytes(&[64, 512, 256, 10]), ModelOptions::default()).unwrap();
    let mut s = small.profile(&quick()).unwrap();
    let mut b = big.profile(&quick()).unwrap();
    s.accuracy = Some(pupil_runtime::profile::Accuracy { examples: 1000, correct: 975, accuracy: 0.975 });
    b.accuracy = Some(pupil_runtime::profile::Accuracy { examples: 1000, correct: 979, accuracy: 0.979 });
    let c = Comparison::new(&s, &b);
    let size = b.model.file_size as f64 / s.model.file_size as f64;
    assert!((c.size_ratio.unwrap() - size).abs() < 1e-12);
    assert!(size > 10.0, "the big MLP is more than 10× the file");
    let speed = b.latency.p50_ms / s.latency.p50_ms;
    assert!((c.speed_ratio.unwrap() - speed).abs() < 1e-9 * speed);
    let macs = (64 * 512 + 512 * 256 + 256 * 10) as f64 / (64 * 16 + 16 * 10) as f64;
    assert!((c.macs_ratio.unwrap() - macs).abs() < 1e-12);
    assert!((c.parameters_ratio.unwrap() - b.model.parameters as f64 / s.model.parameters as f64).abs() < 1e-12);
    assert!((c.accuracy_delta_pt.unwrap() - -0.4).abs() < 1e-9);
    assert!(c.summary.starts_with(&format!("{size:.1}× smaller, ")), "{}", c.summary);
    let speed_word = if speed >= 1.0 { format!("{speed:.1}× faster") } else { format!("{:.1}× slower", 1.0 / speed) };
    assert!(c.summary.contains(&speed_word), "{}", c.summary);
    assert!(c.summary.ends_with("−0.4 pt accuracy"), "{}", c.summary);
    // Swapping the sides inverts every ratio.
    let back = Comparison::new(&b, &s);
    assert!((back.size_ratio.unwrap() * c.size_ratio.unwrap() - 1.0).abs() < 1e-12);
    assert!((back.speed_ratio.unwrap() * c.speed_ratio.unwrap() - 1.0).abs() < 1e-12);
    assert!(back.summary.starts_with(&format!("{size:.1}× larger")), "{}", back.summary);
    assert!(back.summary.ends_with("+0.4 pt accuracy"), "{}", back.summary);
    let pc = ProfileComparison::new(s.clone(), b.clone());
    assert_eq!(pc.comparison, c);
    // No accuracy on either side: no accuracy phrase.
    s.accuracy = None;
    assert!(Comparison::new(&s, &b).accuracy_delta_pt.is_none());
    assert!(!Comparison::new(&s, &b).summary.contains("accuracy"));
}

#[test]
fn accuracy_counts_top1_hits() {
    // Identity-like 3-class network: logits = input, so argmax(input) is the prediction.
    let eye: Vec<f32> = (0..9).map(|i| if i % 4 == 0 { 1.0 } else { 0.0 }).collect();
    let bytes = zoo::mlp(&[3, 3], &[eye], &[vec![0.0; 3]]).to_bytes();
    let model = Model::from_bytes(&bytes, ModelOptions::default().with_batch(Batch::Symbolic)).unwrap();
    let inputs = [1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 5.0, 0.0, 0.0];
    let a = model.accuracy(&inputs, &[0, 1, 2, 1]).unwrap();
    assert_eq!((a.examples, a.correct), (4, 3));
    assert!((a.accuracy - 0.75).abs() < 1e-12);
    assert!(matches!(model.accuracy(&inputs, &[0, 1, 2]), Err(Error::InputLength { expected: 9, got: 12, .. })));
    assert!(matches!(model.accuracy(&inputs, &[0, 1, 2, 3]), Err(Error::Options { .. })));
}

#[test]
fn bad_options_are_typed_errors() {
    let model = Model::from_bytes(&mlp_bytes(&[10, 4]), ModelOptions::default().with_batch(Batch::Fixed(2))).unwrap();
    let err = model.profile(&ProfileOptions { runs: 0, ..quick() }).unwrap_err();
    assert!(matches!(err, Error::Options { .. }) && err.to_string().contains("got 0"), "{err}");
    let err = model.profile(&ProfileOptions { batch: Some(3), ..quick() }).unwrap_err();
    assert!(matches!(err, Error::Options { .. }) && err.to_string().contains("batch of 2"), "{err}");
    let err = model.profile(&ProfileOptions { input: Some(vec![0.5; 7]), ..quick() }).unwrap_err();
    assert!(matches!(err, Error::InputLength { expected: 20, got: 7, .. }), "{err}");
    let err = model.profile(&ProfileOptions { input: Some(vec![f32::NAN; 20]), ..quick() }).unwrap_err();
    assert!(matches!(err, Error::NonFiniteInput { .. }), "{err}");
    // Given input is what runs.
    let r = model.profile(&ProfileOptions { input: Some(vec![0.25; 20]), ..quick() }).unwrap();
    assert_eq!(r.batch, 2);
}

/// An int8 student runs on pupil's kernels (`PupilQMatMul`), which report their multiply-accumulates to tract's
/// cost model: their count is the f32 network's hand count, at batch 1 and 3.
#[test]
fn int8_macs_on_pupils_kernels_equal_the_hand_count() {
    let sizes = [64, 48, 24, 10];
    let f32_bytes = mlp_bytes(&sizes);
    let calibration: Vec<f32> = (0..32 * 64).map(|i| ((i * 37) % 101) as f32 / 101.0).collect();
    let (int8, _) = pupil_runtime::quantize::quantize(&f32_bytes, &Default::default(), Some(&calibration)).unwrap();
    for batch in [1usize, 3] {
        let model = Model::from_bytes(&int8, ModelOptions::default().with_batch(Batch::Fixed(batch))).unwrap();
        assert_eq!(
            pupil_runtime::kernels::pupil_nodes(model.typed_model()).len(),
            3,
            "every product on pupil's kernels"
        );
        let r = model.profile(&ProfileOptions { op_runs: 2, ..quick() }).unwrap();
        let nodes = &r.operators.as_ref().unwrap().nodes;
        let on_pupil: u64 = nodes.iter().filter(|n| n.op == "PupilQMatMul").filter_map(|n| n.macs).sum();
        assert_eq!(on_pupil, hand_macs(&sizes) * batch as u64, "batch {batch}");
        // The output layer's f32 rescale (a `Mul` tract's cost model would count, one per logit) is folded into
        // pupil's product: nothing else is counted.
        assert_eq!(r.macs.per_run, hand_macs(&sizes) * batch as u64, "batch {batch}");
    }
}
