//! `pupil bench` end to end on one generated model: the report's rows, the agreement of pupil with tract (and
//! ONNX Runtime when installed), the memory roofline at one thread, and clear errors for bad options.

mod common;

use common::pupil;
use serde_json::Value;

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

#[test]
fn bench_reports_pupil_tract_ort_and_the_memory_roofline_side_by_side() {
    let (code, out, err) = pupil(&[
        "bench",
        "--only",
        "mlp-784-800",
        "--threads",
        "1,2",
        "--runs",
        "12",
        "--warmup",
        "2",
        "--cold-loads",
        "1",
        "--settle-ms",
        "0",
        "--json",
    ]);
    assert_eq!(code, 0, "bench failed: {err}");
    let report: Value = serde_json::from_str(&out).expect("JSON report");
    let rows = report["rows"].as_array().expect("rows");
    let key = |r: &Value| (r["precision"].as_str().unwrap().to_string(), r["threads"].as_u64().unwrap());
    let mut keys: Vec<_> = rows.iter().map(key).collect();
    keys.sort();
    let expected: Vec<(String, u64)> =
        [("f32", 1), ("f32", 2), ("int8", 1), ("int8", 2)].iter().map(|&(p, t)| (p.to_string(), t)).collect();
    assert_eq!(keys, expected, "one row per precision and thread count of the one model --only kept");
    let ort = report["ort"].is_string();
    assert_eq!(ort, report["ort_skipped_because"].is_null(), "either ONNX Runtime ran or the report says why not");
    let mut parameter_bytes = std::collections::BTreeMap::new();
    for row in rows {
        assert_eq!(row["model"], "mlp-784-800-800-10");
        assert!(row["pupil_kernel_nodes"].as_u64().unwrap() >= 3, "pupil's kernels run every dense layer: {row}");
        let (p50, p90) = (f(&row["pupil"], "p50_us"), f(&row["pupil"], "p90_us"));
        assert!(p50 > 0.0 && p90 >= p50, "pupil percentiles in order: {row}");
        let int8 = row["precision"] == "int8";
        // pupil's int8 kernels compute tract's integers exactly; f32 differs by summation order only.
        let tolerance = if int8 { 1e-6 } else { 1e-4 };
        assert!(f(row, "max_abs_diff_vs_tract") <= tolerance, "pupil agrees with tract: {row}");
        if ort {
            let ratio = f(row, "ratio_pupil_ort");
            assert!((ratio - p50 / f(&row["ort"], "p50_us")).abs() < 1e-9, "the ratio is pupil p50 / ORT p50: {row}");
            // Rounding ties of the int8 requantization may differ by one step; f32 by summation order.
            assert!(f(row, "max_abs_diff_vs_ort") <= if int8 { 0.05 } else { 1e-4 }, "pupil agrees with ORT: {row}");
        } else {
            assert!(row["ratio_pupil_ort"].is_null());
        }
        let roofline = &row["roofline"];
        if row["threads"] == 1 {
            let (l2, own) = (f(&roofline["l2_read"], "p50_us"), f(&roofline["own_read"], "p50_us"));
            assert!(l2 > 0.0 && own > 0.0, "both reads timed: {roofline}");
            assert!((f(roofline, "ratio_pupil_l2_read") - p50 / l2).abs() < 1e-9, "{roofline}");
            assert!((f(roofline, "ratio_pupil_own_read") - p50 / own).abs() < 1e-9, "{roofline}");
            parameter_bytes.insert(row["precision"].as_str().unwrap().to_string(), f(roofline, "parameter_bytes"));
        } else {
            assert!(roofline.is_null(), "the roofline is a one-core bound, measured at 1 thread only: {row}");
        }
    }
    // 784·800 + 800·800 + 800·10 weights and 1 610 biases: 4 bytes each in f32; 1 byte per weight in int8 (its
    // scales, zero points and i32 biases add a few KiB).
    let weights = (784 * 800 + 800 * 800 + 800 * 10) as f64;
    assert_eq!(parameter_bytes["f32"], (weights + 1610.0) * 4.0);
    assert!(parameter_bytes["int8"] >= weights && parameter_bytes["int8"] < weights * 1.02, "{parameter_bytes:?}");
}

#[test]
fn bench_names_a_bad_thread_count_and_run_count() {
    let (code, _, err) = pupil(&["bench", "--threads", "0", "--no-ort"]);
    assert_ne!(code, 0);
    assert!(err.contains("--threads needs counts of at least 1, got [0]"), "{err}");
    let (code, _, err) = pupil(&["bench", "--runs", "0", "--no-ort"]);
    assert_ne!(code, 0);
    assert!(err.contains("--runs and --burst must be at least 1, got 0 and 4"), "{err}");
}
