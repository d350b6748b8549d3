//! `pupil parity`, `pupil bundle` and `pupil verify` end to end on real MNIST, with classifiers built from it:
//! a student blind to one class fails with exit code 2 naming the class, a three-way report separates the gaps
//! and writes JSON and charts, `--layers` finds a damaged layer, bundles verify only against their student.

#[path = "../runtime/tests/parity_common/mod.rs"]
mod parity_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use parity_common::*;

fn pupil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pupil")).args(args).output().expect("run pupil")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn data() -> String {
    format!("mnist:{}:test", mnist_dir().display())
}

struct Models {
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

impl Models {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let big = class_means(6000);
        let small = class_means(600);
        let write = |name: &str, bytes: Vec<u8>| std::fs::write(path.join(name), bytes).unwrap();
        write("teacher.onnx", ncm_onnx(&big, None));
        write("blind3.onnx", ncm_onnx(&big, Some((3, -1e4))));
        write("student.onnx", deep_ncm_onnx(&small, false, false));
        write("student.int8.onnx", deep_ncm_onnx(&small, false, true));
        write("student.broken.onnx", deep_ncm_onnx(&small, true, false));
        Models { _dir: dir, dir: path }
    }
    fn p(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

#[test]
fn student_blind_to_class_3_fails_with_exit_2_naming_the_class() {
    let m = Models::new();
    let d = data();
    let args =
        ["parity", "--teacher", &m.p("teacher.onnx"), "--student", &m.p("blind3.onnx"), "--data", &d, "-n", "1000"];
    let limits = ["--min-top1-agreement", "0.8", "--min-class-agreement", "0.5"];
    let o = pupil(&[&args[..], &limits[..]].concat());
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "stdout:\n{out}\nstderr:\n{err}");
    let fails: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), 1, "{out}");
    assert!(fails[0].contains("class_agreement of class 3 = 0.0000 < min 0.5"), "{}", fails[0]);

    let o = pupil(&[&args[..], &limits[..], &["--json"]].concat());
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["passed"], false);
    assert_eq!(v["gaps"][0]["gap"], "distillation");
    assert_eq!(v["gaps"][0]["comparison"]["per_class"][3]["agreement"], 0.0);
    assert_eq!(v["gaps"][0]["failures"][0]["metric"], "class_agreement");
    assert_eq!(v["gaps"][0]["failures"][0]["class"], 3);
    assert_eq!(v["examples"], 1000);

    // The same limits pass for a student identical to the teacher.
    let o = pupil(&[
        "parity",
        "--teacher",
        &m.p("teacher.onnx"),
        "--student",
        &m.p("teacher.onnx"),
        "--data",
        &d,
        "-n",
        "300",
        "--min-top1-agreement",
        "0.8",
        "--min-class-agreement",
        "0.5",
    ]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
}

#[test]
fn three_way_report_separates_the_gaps_and_writes_json_and_charts() {
    let m = Models::new();
    let out_dir = m.dir.join("report");
    let toml = m.dir.join("limits.toml");
    std::fs::write(&toml, "min_top1_agreement = 0.8\n\n[quantization]\nmin_top1_agreement = 0.97\nmin_sqnr_db = 20\n")
        .unwrap();
    let d = data();
    let o = pupil(&[
        "parity",
        "--teacher",
        &m.p("teacher.onnx"),
        "--student",
        &m.p("student.onnx"),
        "--student",
        &m.p("student.int8.onnx"),
        "--data",
        &d,
        "-n",
        "800",
        "--thresholds",
        &toml.display().to_string(),
        "--layers",
        "--out",
        &out_dir.display().to_string(),
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    println!("{out}"); // shown with --nocapture: what the report looks like
    assert!(out.contains("PASS: every threshold holds"), "{out}");
    assert!(out.contains("every shared layer stays above 20 dB"), "{out}");

    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(out_dir.join("parity.json")).unwrap()).unwrap();
    let gaps = v["gaps"].as_array().unwrap();
    let kinds: Vec<&str> = gaps.iter().map(|g| g["gap"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["distillation", "quantization", "total"]);
    assert_eq!(gaps[0]["reference"], "teacher.onnx");
    assert_eq!(gaps[1]["reference"], "student.onnx");
    assert_eq!(gaps[1]["candidate"], "student.int8.onnx");
    assert_eq!(gaps[0]["thresholds"]["min_top1_agreement"], 0.8);
    assert_eq!(gaps[1]["thresholds"]["min_top1_agreement"], 0.97);
    // The 8-bit copy is much closer to its f32 original than the small student is to the teacher.
    let sqnr = |g: &serde_json::Value| g["comparison"]["sqnr_db"].as_f64().unwrap();
    assert!(sqnr(&gaps[1]) > sqnr(&gaps[0]) + 10.0, "{} vs {}", sqnr(&gaps[1]), sqnr(&gaps[0]));
    assert_eq!(v["models"].as_array().unwrap().len(), 3);
    assert!(v["layers"][0]["report"]["first_below"].is_null());
    for chart in ["parity-class-agreement.svg", "parity-confidence.svg"] {
        let svg = std::fs::read_to_string(out_dir.join(chart)).unwrap();
        assert!(svg.starts_with("<svg"), "{chart}");
        assert!(svg.contains("student.int8.onnx"), "{chart} has no legend entry for the int8 student");
        assert!(svg.matches("<rect").count() > 20, "{chart} draws no bars");
    }
}

#[test]
fn layers_flag_names_the_damaged_layer() {
    let m = Models::new();
    let d = data();
    let o = pupil(&[
        "parity",
        "--teacher",
        &m.p("teacher.onnx"),
        "--student",
        &m.p("student.onnx"),
        "--student",
        &m.p("student.broken.onnx"),
        "--data",
        &d,
        "-n",
        "200",
        "--layers",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &v["layers"][0]["report"];
    let first = r["first_below"].as_u64().unwrap() as usize;
    assert_eq!(r["layers"][first]["name"], "fc1");
    assert_eq!(r["layers"][0]["name"], "fc0");

    let o = pupil(&[
        "parity",
        "--teacher",
        &m.p("teacher.onnx"),
        "--student",
        &m.p("student.onnx"),
        "--student",
        &m.p("student.broken.onnx"),
        "--data",
        &d,
        "-n",
        "200",
        "--layers",
    ]);
    let (out, _) = text(&o);
    println!("{out}");
    assert!(out.contains("first layer below 20 dB: `fc1` (Gemm)"), "{out}");
}

fn flip(path: &Path, at: usize) -> PathBuf {
    let mut b = std::fs::read(path).unwrap();
    let at = at.min(b.len() - 1);
    b[at] ^= 0x04;
    let out = path.with_extension(format!("flip{at}"));
    std::fs::write(&out, b).unwrap();
    out
}

#[test]
fn bundle_verifies_against_its_student_only_and_damage_is_rejected() {
    let m = Models::new();
    let d = data();
    let bundle = m.dir.join("student.parity");
    let b = bundle.display().to_string();
    let o = pupil(&[
        "bundle",
        "--teacher",
        &m.p("teacher.onnx"),
        "--student",
        &m.p("student.int8.onnx"),
        "--data",
        &d,
        "-n",
        "128",
        "-o",
        &b,
    ]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert!(bundle.is_file());

    let o = pupil(&["verify", &m.p("student.int8.onnx"), &b]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("PASS"), "{out}");
    let o = pupil(&["verify", &m.p("student.int8.onnx"), &b, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["passed"], true);
    assert_eq!(v["bundle"]["examples"], 128);
    assert_eq!(v["vs_host_student"]["comparison"]["top1_agreement"], 1.0);
    assert_eq!(v["device"]["arch"], std::env::consts::ARCH);

    // Another model: refused, naming both hashes.
    let o = pupil(&["verify", &m.p("student.onnx"), &b]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let sha = |p: &str| pupil_runtime::model::sha256_hex(&std::fs::read(p).unwrap());
    assert!(err.contains(&sha(&m.p("student.int8.onnx"))) && err.contains(&sha(&m.p("student.onnx"))), "{err}");

    // A flipped bit anywhere, or a truncated file: refused.
    let len = std::fs::metadata(&bundle).unwrap().len() as usize;
    for at in [3, 200, len / 2, len - 2] {
        let damaged = flip(&bundle, at);
        let o = pupil(&["verify", &m.p("student.int8.onnx"), &damaged.display().to_string()]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "flip at {at}: {err}");
        assert!(err.contains("parity bundle"), "{err}");
    }
    let bytes = std::fs::read(&bundle).unwrap();
    let short = m.dir.join("short.parity");
    std::fs::write(&short, &bytes[..bytes.len() - 100]).unwrap();
    let o = pupil(&["verify", &m.p("student.int8.onnx"), &short.display().to_string()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn misspelt_threshold_is_an_error_not_ignored() {
    let m = Models::new();
    let toml = m.dir.join("typo.toml");
    std::fs::write(&toml, "min_top1_agrement = 0.99\n").unwrap();
    let d = data();
    let o = pupil(&[
        "parity",
        "--teacher",
        &m.p("teacher.onnx"),
        "--student",
        &m.p("teacher.onnx"),
        "--data",
        &d,
        "-n",
        "10",
        "--thresholds",
        &toml.display().to_string(),
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("min_top1_agrement"), "{err}");
}
