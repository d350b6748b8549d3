//! Parity bundles: a host-made bundle verifies against its student and is refused by any other model; every
//! single-bit flip and every truncation of a bundle is rejected with a typed error; inconsistent bundles too.

mod parity_common;

use parity_common::*;
use pupil_runtime::parity::bundle::FORMAT_VERSION;
use pupil_runtime::parity::{Bundle, BundleMeta, CreatedBy, Gap, ThresholdSet, Thresholds, to_logits};
use pupil_runtime::{Batch, Error, Model, ModelOptions};

fn symbolic() -> ModelOptions {
    ModelOptions { batch: Batch::Symbolic, ..Default::default() }
}

fn thresholds() -> ThresholdSet {
    ThresholdSet {
        all: Thresholds::default(),
        distillation: Some(Thresholds { min_top1_agreement: Some(0.9), ..Default::default() }),
        device: Some(Thresholds { min_top1_agreement: Some(0.99), min_sqnr_db: Some(30.0), ..Default::default() }),
        ..Default::default()
    }
}

/// Runs `teacher` and `student` on `x` and records a bundle for the student.
fn make_bundle(teacher: &Model, student: &Model, x: &[f32], y: &[u32]) -> Bundle {
    Bundle {
        meta: BundleMeta {
            format_version: FORMAT_VERSION,
            student_sha256: student.info().sha256.clone(),
            teacher_sha256: Some(teacher.info().sha256.clone()),
            examples: y.len(),
            example_shape: student.example_shape().to_vec(),
            classes: student.classes(),
            data: "mnist:data/mnist:test".into(),
            thresholds: thresholds(),
            created_by: CreatedBy::here(),
        },
        inputs: x.to_vec(),
        teacher_logits: to_logits(&teacher.run_batch(x).unwrap(), teacher.output_is_probability()),
        student_logits: to_logits(&student.run_batch(x).unwrap(), student.output_is_probability()),
        labels: Some(y.to_vec()),
    }
}

fn bundle_error(r: Result<Bundle, Error>) -> String {
    match r {
        Err(Error::Bundle { reason }) => reason,
        Err(other) => panic!("expected Error::Bundle, got {other:?}"),
        Ok(_) => panic!("a damaged bundle was accepted"),
    }
}

/// The reason `to_bytes` refuses an inconsistent bundle.
fn refused(b: &Bundle) -> String {
    match b.to_bytes() {
        Err(Error::Bundle { reason }) => reason,
        Err(other) => panic!("expected Error::Bundle, got {other:?}"),
        Ok(_) => panic!("an inconsistent bundle was written"),
    }
}

#[test]
fn host_bundle_verifies_against_its_student_and_not_another() {
    let means = class_means(6000);
    // Teacher: the 3-layer classifier; student: the 8-bit-rounded copy (a stand-in for an int8 student).
    let teacher = Model::from_bytes(&deep_ncm_onnx(&means, false, false), symbolic()).unwrap();
    let student_bytes = deep_ncm_onnx(&means, false, true);
    let student = Model::from_bytes(&student_bytes, symbolic()).unwrap();
    let (x, y) = mnist("t10k", 256);
    let bundle = make_bundle(&teacher, &student, &x, &y);
    let bytes = bundle.to_bytes().unwrap();
    let read = Bundle::from_bytes(&bytes).unwrap();
    assert_eq!(read, bundle);

    // The device would load the student with its own options (batch 1 here): same outputs, passes.
    let on_device = Model::from_bytes(&student_bytes, ModelOptions::default()).unwrap();
    let report = on_device.verify_bundle(&read).unwrap();
    assert!(report.passed, "{:?}", report.failures());
    assert_eq!(report.student_sha256, student.info().sha256);
    assert_eq!(report.vs_host_student.gap, Gap::Device);
    assert_eq!(report.vs_host_student.comparison.top1_agreement, 1.0);
    assert!(report.vs_host_student.comparison.sqnr_db > 100.0);
    assert!(report.vs_teacher.comparison.top1_agreement > 0.95);
    let acc = report.accuracy.unwrap();
    assert!((0.7..0.95).contains(&acc), "accuracy {acc}");
    assert_eq!(report.device.arch, std::env::consts::ARCH);
    assert_eq!(report.vs_teacher.thresholds.min_top1_agreement, Some(0.9));
    // Plain data: JSON round trip.
    let json = serde_json::to_string(&report).unwrap();
    let back: pupil_runtime::parity::ParityReport = serde_json::from_str(&json).unwrap();
    assert_eq!((back.passed, &back.device, &back.bundle), (report.passed, &report.device, &report.bundle));
    assert_eq!(back.vs_teacher.comparison.per_class, report.vs_teacher.comparison.per_class);
    // serde_json may round the last bit of a float.
    assert!((back.vs_teacher.comparison.kl_mean - report.vs_teacher.comparison.kl_mean).abs() < 1e-15);

    // Another model (the f32 teacher, and a one-layer classifier) is refused, naming both hashes.
    for other in [&teacher, &Model::from_bytes(&ncm_onnx(&means, None), symbolic()).unwrap()] {
        let err = other.verify_bundle(&read).unwrap_err();
        let Error::Bundle { reason } = &err else { panic!("expected Error::Bundle, got {err:?}") };
        assert!(reason.contains(&student.info().sha256), "{reason}");
        assert!(reason.contains(&other.info().sha256), "{reason}");
    }
}

#[test]
fn a_student_that_drifted_on_the_device_fails_its_thresholds() {
    // Record a bundle with a student, then pretend the device computes something else by editing the recorded
    // host outputs for class 3 (as a broken kernel would): the device gap thresholds fail.
    let means = class_means(3000);
    let student = Model::from_bytes(&ncm_onnx(&means, None), symbolic()).unwrap();
    let (x, y) = mnist("t10k", 200);
    let mut bundle = make_bundle(&student, &student, &x, &y);
    for row in bundle.student_logits.chunks_mut(10) {
        row[3] += 50.0;
    }
    let report = student.verify_bundle(&Bundle::from_bytes(&bundle.to_bytes().unwrap()).unwrap()).unwrap();
    assert!(!report.passed);
    let failed: Vec<_> = report.failures().iter().map(|(g, f)| (*g, f.metric)).collect();
    assert!(failed.iter().all(|(g, _)| *g == Gap::Device), "{failed:?}");
    assert!(failed.iter().any(|(_, m)| *m == pupil_runtime::parity::Metric::Top1Agreement), "{failed:?}");
}

fn small_bundle() -> Bundle {
    let classes = 3;
    let n = 4;
    Bundle {
        meta: BundleMeta {
            format_version: FORMAT_VERSION,
            student_sha256: "ab".repeat(32),
            teacher_sha256: None,
            examples: n,
            example_shape: vec![2, 2],
            classes,
            data: "npy:x.npy".into(),
            thresholds: thresholds(),
            created_by: CreatedBy::here(),
        },
        inputs: (0..16).map(|i| i as f32 * 0.25).collect(),
        teacher_logits: (0..12).map(|i| (i % 5) as f32 - 1.5).collect(),
        student_logits: (0..12).map(|i| (i % 4) as f32 - 1.0).collect(),
        labels: Some(vec![0, 1, 2, 1]),
    }
}

#[test]
fn every_single_bit_flip_is_rejected() {
    let bytes = small_bundle().to_bytes().unwrap();
    assert!(Bundle::from_bytes(&bytes).is_ok());
    let mut reasons = std::collections::BTreeSet::new();
    for byte in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[byte] ^= 1 << bit;
            let reason = bundle_error(Bundle::from_bytes(&b));
            reasons.insert(reason.split(':').next().unwrap_or("").to_string());
        }
    }
    // Flips in the tensor payload are caught by the checksum, flips in the header by the parser.
    assert!(reasons.iter().any(|r| r.starts_with("checksum mismatch")), "{reasons:?}");
}

#[test]
fn bit_flips_in_an_mnist_bundle_are_rejected() {
    let means = class_means(1000);
    let m = Model::from_bytes(&ncm_onnx(&means, None), symbolic()).unwrap();
    let (x, y) = mnist("t10k", 64);
    let bytes = make_bundle(&m, &m, &x, &y).to_bytes().unwrap();
    // Spread over the whole file: header, inputs, logits, labels (the last bytes).
    let len = bytes.len();
    for k in 0..300usize {
        let pos = if k < 20 { len - 1 - k } else { (k * 7_919_u64 as usize * 31 + 17) % len };
        let mut b = bytes.clone();
        b[pos] ^= 1 << (k % 8);
        let reason = bundle_error(Bundle::from_bytes(&b));
        assert!(!reason.is_empty());
    }
    // A flip in a pixel specifically: the checksum names the problem.
    let mut b = bytes.clone();
    b[len / 2] ^= 0x10;
    assert!(bundle_error(Bundle::from_bytes(&b)).starts_with("checksum mismatch"));
}

#[test]
fn every_truncation_and_trailing_garbage_is_rejected() {
    let bytes = small_bundle().to_bytes().unwrap();
    for len in 0..bytes.len() {
        let reason = bundle_error(Bundle::from_bytes(&bytes[..len]));
        assert!(!reason.is_empty());
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(bundle_error(Bundle::from_bytes(&longer)).contains("truncated or has trailing bytes"));
    assert!(bundle_error(Bundle::from_bytes(&bytes[..bytes.len() - 3])).contains("truncated"));
    assert!(bundle_error(Bundle::from_bytes(b"")).contains("truncated"));
}

#[test]
fn inconsistent_bundles_are_refused_before_running() {
    // Labels out of range.
    let mut b = small_bundle();
    b.labels = Some(vec![0, 1, 3, 1]);
    let reason = refused(&b);
    assert!(reason.contains("label 3 of example 2 is out of range for 3 classes"), "{reason}");
    // Lengths that contradict the declared shapes.
    let mut b = small_bundle();
    b.inputs.pop();
    assert!(refused(&b).contains("`inputs` has 15 values, expected 16"));
    // Non-finite logits.
    let mut b = small_bundle();
    b.teacher_logits[4] = f32::INFINITY;
    assert!(refused(&b).contains("non-finite"));
    // A newer format.
    let mut b = small_bundle();
    b.meta.format_version = 99;
    assert!(refused(&b).contains("format version 99"));
    // Not a bundle at all.
    assert!(!bundle_error(Bundle::from_bytes(b"hello world, this is not a bundle")).is_empty());
}

#[test]
fn bundle_whose_shapes_do_not_fit_the_model_is_refused() {
    let means = class_means(500);
    let m = Model::from_bytes(&ncm_onnx(&means, None), symbolic()).unwrap();
    // Right hash, wrong example shape.
    let mut b = small_bundle();
    b.meta.student_sha256 = m.info().sha256.clone();
    let err = m.verify_bundle(&b).unwrap_err();
    let Error::Bundle { reason } = err else { panic!("{err:?}") };
    assert!(reason.contains("[2, 2]") && reason.contains("[784]"), "{reason}");
    // Right hash and example shape, wrong class count.
    let mut b = small_bundle();
    b.meta.student_sha256 = m.info().sha256.clone();
    b.meta.example_shape = vec![784];
    b.inputs = vec![0.5; 4 * 784];
    let err = m.verify_bundle(&b).unwrap_err();
    let Error::Bundle { reason } = err else { panic!("{err:?}") };
    assert!(reason.contains("3 classes") && reason.contains("outputs 10"), "{reason}");
}
