//! `pupil pipeline` end to end through the binary on a reduced recipe (784-64-10 `tiny`, 3,000 transfer examples):
//! the summary's invariants, the artifacts on disk, a cached re-run, resuming a killed run, the device bundle
//! verifying only against its own student, and errors found before any training.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pupil_runtime::onnx::{write_atomic, zoo};

fn pupil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pupil")).args(args).current_dir(common::root()).output().expect("run pupil")
}

fn teacher() -> String {
    common::root().join("models/mnist-teacher.onnx").display().to_string()
}

/// The reduced pipeline, as JSON.
fn reduced(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "pipeline",
        "--teacher",
        &teacher(),
        "--recipe",
        "tiny",
        "--limit",
        "3000",
        "--test-limit",
        "1000",
        "--calibration-examples",
        "500",
        "--bundle-examples",
        "64",
        "--runs",
        "20",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run_json(args: &[String]) -> serde_json::Value {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = pupil(&args);
    assert!(out.status.success(), "pipeline failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn file_len(p: &str) -> u64 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{p}: {e}")).len()
}

#[test]
fn reduced_pipeline_summary_holds_its_invariants_and_reruns_from_cache() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let s = run_json(&reduced(&out, &[]));
    let (t, st, q) = (&s["teacher"], &s["student"], &s["int8"]);
    let size = |v: &serde_json::Value| v["file_size"].as_u64().unwrap();
    let errors = |v: &serde_json::Value| v["test_errors"].as_u64().unwrap();

    // Sizes are the files on disk; the int8 student is much smaller than the f32 one, which is far below the teacher.
    for m in [t, st, q] {
        assert_eq!(size(m), file_len(m["path"].as_str().unwrap()), "{m}");
    }
    assert!(size(q) * 100 < size(st) * 35, "int8 {} vs f32 {}", size(q), size(st));
    assert!(size(st) * 10 < size(t), "student {} vs teacher {}", size(st), size(t));
    assert_eq!(s["quantize"]["integer_matmuls"], s["quantize"]["matmuls"], "every matrix product on integer kernels");
    assert!(s["quantize"]["matmuls"].as_u64().unwrap() >= 2);

    // Accuracy: the teacher is the trained one, the student learned from it, int8 follows the student.
    assert_eq!(t["test_examples"].as_u64().unwrap(), 1000);
    assert!(errors(t) < 40, "teacher errors {}", errors(t));
    assert!(errors(st) < 300, "student errors {} (chance would be ~900)", errors(st));
    let agree = st["top1_agreement_with_teacher"].as_f64().unwrap();
    assert!(agree > 0.75, "student/teacher agreement {agree}");
    let q_agree = s["int8_agreement_with_student"].as_f64().unwrap();
    assert!(q_agree >= 0.98, "int8/student agreement {q_agree}");
    assert!(t["top1_agreement_with_teacher"].is_null());
    // MACs of the 784-64-10 student, counted by hand.
    assert_eq!(st["macs_per_example"].as_u64().unwrap(), 784 * 64 + 64 * 10);
    for m in [t, st, q] {
        let (p50, p99) = (m["p50_ms"].as_f64().unwrap(), m["p99_ms"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= p99, "{m}");
    }

    // The bundle verifies against its own student, here and through `pupil verify`; the int8 model is refused.
    assert_eq!(s["bundle"]["verified"], true);
    assert_eq!(s["bundle"]["examples"].as_u64().unwrap(), 64);
    let bundle = s["bundle"]["path"].as_str().unwrap();
    let ok = pupil(&["verify", st["path"].as_str().unwrap(), bundle]);
    assert!(ok.status.success(), "verify failed: {}", String::from_utf8_lossy(&ok.stderr));
    let other = pupil(&["verify", q["path"].as_str().unwrap(), bundle]);
    assert!(!other.status.success(), "a bundle must not verify against another model");
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("sha256") || err.contains("made for"), "{err}");

    // Every artifact named is on disk, and summary.json is what was printed.
    for pair in s["artifacts"].as_array().unwrap() {
        let path = pair[1].as_str().unwrap();
        assert!(Path::new(path).exists(), "artifact {path} is missing");
    }
    for chart in ["summary.svg", "parity/parity-class-agreement.svg", "profile/student.int8.latency.svg"] {
        let text = std::fs::read_to_string(out.join(chart)).unwrap();
        assert!(text.contains("<svg"), "{chart} is not an SVG");
    }
    let on_disk: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(on_disk["student"]["sha256"], st["sha256"]);
    assert_eq!(s["distill"]["teacher_outputs_from_cache"], false);
    assert_eq!(s["passed"], true);

    // Run again: the teacher's outputs come from the cache and training resumes from the finished checkpoint, so
    // the student is the same bytes.
    let again = run_json(&reduced(&out, &[]));
    assert_eq!(again["distill"]["teacher_outputs_from_cache"], true);
    assert_eq!(again["distill"]["resumed_after_epoch"].as_u64(), Some(2));
    assert_eq!(again["student"]["sha256"], st["sha256"]);
}

#[test]
fn a_killed_pipeline_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // More epochs on more data so the run is still training when it is killed.
    let args = reduced(&out, &["--epochs", "6"]);
    let args: Vec<String> =
        args.iter().map(|a| if a == "3000" { "20000".to_string() } else { a.clone() }).collect::<Vec<_>>();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pupil"))
        .args(&args)
        .current_dir(common::root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = out.join("student.ckpt/state.json");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !state.exists() && Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().ok();
    child.wait().unwrap();
    assert!(state.exists(), "no checkpoint was written within the deadline");
    let s = run_json(&args);
    let resumed = s["distill"]["resumed_after_epoch"].as_u64().expect("the second run resumes");
    assert!((1..=6).contains(&resumed), "resumed after epoch {resumed}");
    assert_eq!(s["distill"]["epochs"].as_u64(), Some(6));
    assert_eq!(s["bundle"]["verified"], true);
}

#[test]
fn bad_inputs_fail_before_training_and_leave_earlier_artifacts_intact() {
    let dir = tempfile::tempdir().unwrap();

    // An output directory that cannot be created (its parent is a file).
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let out = pupil(&reduced(&blocker.join("out"), &[]).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot create the output directory"), "{err}");

    // A teacher with 5 outputs for a 10-class student recipe: named, before any training; the earlier student
    // in OUT is untouched.
    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let earlier = out_dir.join("student.onnx");
    std::fs::write(&earlier, b"earlier artifact").unwrap();
    let sizes = [784, 5];
    let w: Vec<Vec<f32>> = vec![(0..784 * 5).map(|i| (i % 7) as f32 / 700.0).collect()];
    let narrow: PathBuf = dir.path().join("narrow.onnx");
    write_atomic(&narrow, &zoo::mlp(&sizes, &w, &[vec![0.0; 5]]).to_bytes()).unwrap();
    let mut args = reduced(&out_dir, &[]);
    let i = args.iter().position(|a| a == "--teacher").unwrap();
    args[i + 1] = narrow.display().to_string();
    let started = Instant::now();
    let out = pupil(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("outputs 5 values") && err.contains("10 classes"), "{err}");
    assert_eq!(std::fs::read(&earlier).unwrap(), b"earlier artifact");
    assert!(!out_dir.join("student.ckpt").exists(), "no training may start");
    assert!(started.elapsed() < Duration::from_secs(60));

    // Zero calibration examples is refused before training, not after it.
    let mut args = reduced(&out_dir, &[]);
    let i = args.iter().position(|a| a == "--calibration-examples").unwrap();
    args[i + 1] = "0".into();
    let out = pupil(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--calibration-examples"));
    assert!(!out_dir.join("student.ckpt").exists(), "no training may start");

    // An unknown recipe is named.
    let mut args = reduced(&out_dir, &[]);
    let i = args.iter().position(|a| a == "tiny").unwrap();
    args[i] = "no-such-recipe".into();
    let out = pupil(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-recipe"));
}
