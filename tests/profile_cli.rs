//! `pupil profile` end to end through the binary: JSON structure, charts written beside the JSON, `--compare`
//! ratios consistent with the two reports, typed errors. Never timings.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pupil_runtime::onnx::{write_atomic, zoo};

fn pupil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pupil")).args(args).output().expect("run pupil")
}

fn mlp(dir: &Path, name: &str, sizes: &[usize]) -> PathBuf {
    let weights: Vec<Vec<f32>> =
        sizes.windows(2).map(|w| (0..w[0] * w[1]).map(|i| ((i % 13) as f32 - 6.0) / 60.0).collect()).collect();
    let biases: Vec<Vec<f32>> = sizes[1..].iter().map(|&n| vec![0.01; n]).collect();
    let path = dir.join(name);
    write_atomic(&path, &zoo::mlp(sizes, &weights, &biases).to_bytes()).unwrap();
    path
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "pupil failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

const QUICK: [&str; 6] = ["--runs", "25", "--warmup", "2", "--op-runs", "4"];

#[test]
fn json_report_describes_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = mlp(dir.path(), "m.onnx", &[40, 24, 6]);
    let p = path.to_str().unwrap();
    let v = json(&pupil(&[&["profile", p, "--json"][..], &QUICK].concat()));
    assert_eq!(v["model"]["file_size"].as_u64().unwrap(), std::fs::metadata(&path).unwrap().len());
    assert_eq!(v["macs"]["per_example"].as_u64().unwrap(), 40 * 24 + 24 * 6);
    assert_eq!(v["label"].as_str().unwrap(), p);
    let l = &v["latency"];
    let get = |k: &str| l[k].as_f64().unwrap();
    assert_eq!(l["runs"].as_u64(), Some(25));
    assert!(get("min_ms") <= get("p50_ms") && get("p50_ms") <= get("p90_ms"));
    assert!(get("p90_ms") <= get("p99_ms") && get("p99_ms") <= get("max_ms"));
    let shares: f64 =
        v["operators"]["nodes"].as_array().unwrap().iter().map(|n| n["share_pct"].as_f64().unwrap()).sum();
    assert!((shares - 100.0).abs() < 1e-6);
    assert!(v["device"]["cpu"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(v["cold_start"]["total_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn table_names_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = mlp(dir.path(), "m.onnx", &[16, 8, 4]);
    let out = pupil(&[&["profile", path.to_str().unwrap()][..], &QUICK].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "file size",
        "MACs / example",
        "160",
        "cold start",
        "first inference",
        "latency p50",
        "p99",
        "throughput",
        "memory: inference",
        "top operators",
        "share",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
}

#[test]
fn out_dir_holds_json_and_charts() {
    let dir = tempfile::tempdir().unwrap();
    let path = mlp(dir.path(), "net.onnx", &[32, 16, 4]);
    let out_dir = dir.path().join("report");
    let out = pupil(&[&["profile", path.to_str().unwrap(), "--out", out_dir.to_str().unwrap()][..], &QUICK].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: pupil_runtime::ProfileReport =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("profile.json")).unwrap()).unwrap();
    assert_eq!(report.macs.per_example, 32 * 16 + 16 * 4);
    for chart in ["net.latency.svg", "net.operators.svg"] {
        let svg = std::fs::read_to_string(out_dir.join(chart)).unwrap();
        assert!(svg.contains("<svg") && svg.contains("</svg>"), "{chart} is not SVG");
        assert!(svg.contains("<rect"), "{chart} has no bars");
    }
    let lat = std::fs::read_to_string(out_dir.join("net.latency.svg")).unwrap();
    assert!(lat.contains("p50") && lat.contains("p99"), "percentiles are marked");
    let ops = std::fs::read_to_string(out_dir.join("net.operators.svg")).unwrap();
    let slowest = &report.operators.as_ref().unwrap().nodes[0];
    assert!(ops.contains(&slowest.op), "the slowest op `{}` is labelled", slowest.op);
}

#[test]
fn compare_puts_two_models_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let student = mlp(dir.path(), "student.onnx", &[64, 16, 10]);
    let teacher = mlp(dir.path(), "teacher.onnx", &[64, 256, 128, 10]);
    let (s, t) = (student.to_str().unwrap(), teacher.to_str().unwrap());
    let v = json(&pupil(&[&["profile", s, "--compare", t, "--json"][..], &QUICK].concat()));
    let (sub, refr, c) = (&v["subject"], &v["reference"], &v["comparison"]);
    assert_eq!(sub["label"].as_str(), Some(s));
    assert_eq!(refr["label"].as_str(), Some(t));
    let size = refr["model"]["file_size"].as_f64().unwrap() / sub["model"]["file_size"].as_f64().unwrap();
    assert!((c["size_ratio"].as_f64().unwrap() - size).abs() < 1e-9 * size);
    let speed = refr["latency"]["p50_ms"].as_f64().unwrap() / sub["latency"]["p50_ms"].as_f64().unwrap();
    assert!((c["speed_ratio"].as_f64().unwrap() - speed).abs() < 1e-9 * speed);
    let macs = refr["macs"]["per_example"].as_f64().unwrap() / sub["macs"]["per_example"].as_f64().unwrap();
    assert!((c["macs_ratio"].as_f64().unwrap() - macs).abs() < 1e-12 * macs);
    assert!(c["summary"].as_str().unwrap().starts_with(&format!("{size:.1}× smaller")));
    assert!(c["accuracy_delta_pt"].is_null(), "no --data, no accuracy");

    // The table shows the summary line and a ratio column.
    let out = pupil(&[&["profile", s, "--compare", t][..], &QUICK].concat());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{size:.1}× smaller")), "{text}");
    assert!(text.contains("ratio") && text.contains("fewer"), "{text}");
}

#[test]
fn compare_with_data_reports_accuracy_difference() {
    // Two untrained MNIST-shaped MLPs on the first 50 MNIST test digits: accuracies are whatever they are, the
    // report must be consistent about them.
    let dir = tempfile::tempdir().unwrap();
    let a = mlp(dir.path(), "a.onnx", &[784, 16, 10]);
    let b = mlp(dir.path(), "b.onnx", &[784, 10]);
    let data = format!("mnist:{}/data/mnist:test", env!("CARGO_MANIFEST_DIR"));
    let args =
        ["profile", a.to_str().unwrap(), "--compare", b.to_str().unwrap(), "--data", &data, "--limit", "50", "--json"];
    let v = json(&pupil(&[&args[..], &QUICK].concat()));
    let acc = |side: &str| {
        let a = &v[side]["accuracy"];
        assert_eq!(a["examples"].as_u64(), Some(50), "{side}");
        let correct = a["correct"].as_u64().unwrap();
        assert!(correct <= 50);
        let acc = a["accuracy"].as_f64().unwrap();
        assert!((acc - correct as f64 / 50.0).abs() < 1e-12);
        acc
    };
    let delta = (acc("subject") - acc("reference")) * 100.0;
    assert!((v["comparison"]["accuracy_delta_pt"].as_f64().unwrap() - delta).abs() < 1e-9);
    let sign = if delta < 0.0 { "−" } else { "+" };
    let summary = v["comparison"]["summary"].as_str().unwrap();
    assert!(summary.ends_with(&format!("{sign}{:.1} pt accuracy", delta.abs())), "{summary}");
}

#[test]
fn bad_input_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.onnx");
    let out = pupil(&["profile", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.onnx"), "{err}");

    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"definitely not protobuf \xff\xff\xff").unwrap();
    let out = pupil(&["profile", garbage.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an ONNX model"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let m = mlp(dir.path(), "m.onnx", &[4, 2]);
    let out = pupil(&["profile", m.to_str().unwrap(), "--runs", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--runs"), "{}", String::from_utf8_lossy(&out.stderr));
}
