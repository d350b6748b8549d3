//! Parity metrics and thresholds on real MNIST outputs: a student that never predicts class 3 is caught by the
//! per-class metric (and only by it), identical models pass, and the metric definitions hold on hand-made logits.

mod parity_common;

use parity_common::*;
use pupil_runtime::parity::{Gap, Metric, ThresholdSet, Thresholds, compare, metrics::SQNR_CAP_DB};
use pupil_runtime::{Batch, Model, ModelOptions};

fn symbolic() -> ModelOptions {
    ModelOptions { batch: Batch::Symbolic, ..Default::default() }
}

#[test]
fn student_blind_to_class_3_is_caught_by_per_class_agreement() {
    let means = class_means(6000);
    let reference = Model::from_bytes(&ncm_onnx(&means, None), symbolic()).unwrap();
    let blind = Model::from_bytes(&ncm_onnx(&means, Some((3, -1e4))), symbolic()).unwrap();
    let (x, y) = mnist("t10k", 1000);
    let r = reference.run_batch(&x).unwrap();
    let c = blind.run_batch(&x).unwrap();
    let cmp = compare(&r, &c, 10, Some(&y), 10).unwrap();

    // The reference is a real classifier: nearest class mean is ~80% accurate on MNIST.
    let ref_acc = cmp.reference_accuracy.unwrap();
    assert!((0.70..0.90).contains(&ref_acc), "reference accuracy {ref_acc}");
    // Class 3 is never predicted by the student: agreement 0 there, 100% for every other class.
    let c3 = &cmp.per_class[3];
    assert!(c3.examples > 50, "the reference predicts 3 on {} examples", c3.examples);
    assert_eq!(c3.agreed, 0);
    assert_eq!(c3.agreement, Some(0.0));
    for pc in cmp.per_class.iter().filter(|p| p.class != 3) {
        assert_eq!(pc.agreement, Some(1.0), "class {} should be untouched", pc.class);
    }
    assert_eq!(cmp.min_class_agreement(), Some((3, 0.0)));
    // Overall agreement hides it: it is still ~90%.
    let expected = 1.0 - c3.examples as f64 / 1000.0;
    assert!((cmp.top1_agreement - expected).abs() < 1e-12);
    assert!((cmp.flip_rate - c3.examples as f64 / 1000.0).abs() < 1e-12);
    // Every worst example is a reference-3 example moved elsewhere.
    assert!(cmp.worst.iter().all(|w| w.reference_class == 3 && w.candidate_class != 3));

    let t = Thresholds { min_top1_agreement: Some(0.85), min_class_agreement: Some(0.5), ..Default::default() };
    let failures = t.check(&cmp);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].metric, Metric::ClassAgreement);
    assert_eq!(failures[0].class, Some(3));
    assert!(failures[0].to_string().contains("class 3"), "{}", failures[0]);

    // Against itself the reference passes everything, with capped SQNR and zero KL.
    let same = compare(&r, &r, 10, Some(&y), 10).unwrap();
    assert_eq!(same.top1_agreement, 1.0);
    assert_eq!(same.sqnr_db, SQNR_CAP_DB);
    assert_eq!(same.kl_mean, 0.0);
    assert!(t.check(&same).is_empty());
}

#[test]
fn fake_int8_student_is_close_but_not_identical() {
    let means = class_means(6000);
    let f32m = Model::from_bytes(&deep_ncm_onnx(&means, false, false), symbolic()).unwrap();
    let q = Model::from_bytes(&deep_ncm_onnx(&means, false, true), symbolic()).unwrap();
    let (x, y) = mnist("t10k", 500);
    let cmp = compare(&f32m.run_batch(&x).unwrap(), &q.run_batch(&x).unwrap(), 10, Some(&y), 5).unwrap();
    assert!(cmp.top1_agreement > 0.97, "{}", cmp.top1_agreement);
    assert!(cmp.sqnr_db > 20.0 && cmp.sqnr_db < SQNR_CAP_DB, "{}", cmp.sqnr_db);
    assert!(cmp.max_abs_logit_diff > 0.0);
    assert!(cmp.kl_mean > 0.0 && cmp.kl_p99 > 0.0);
}

#[test]
fn metric_definitions_on_hand_made_logits() {
    // Example 0: same argmax; example 1: flipped (reference 1, candidate 2).
    let r = [2.0f32, 0.0, 0.0, 1.0, 3.0, 0.0];
    let c = [2.0f32, 0.0, 0.0, 2.0, 0.0, 3.0];
    let cmp = compare(&r, &c, 3, Some(&[0, 1]), 5).unwrap();
    assert_eq!(cmp.top1_agreement, 0.5);
    assert_eq!(cmp.top5_agreement, 1.0); // 3 classes: top-5 is everything
    assert_eq!(cmp.flip_rate, 0.5);
    assert_eq!(cmp.max_abs_logit_diff, 3.0);
    assert!((cmp.mean_abs_logit_diff - 7.0 / 6.0).abs() < 1e-12);
    // signal = 4+1+9 = 14, noise = 1+9+9 = 19
    assert!((cmp.sqnr_db - 10.0 * (14f64 / 19.0).log10()).abs() < 1e-9);
    assert_eq!(cmp.worst[0].index, 1);
    assert_eq!((cmp.worst[0].reference_class, cmp.worst[0].candidate_class), (1, 2));
    // KL of example 0 is 0, of example 1 positive: p99 is example 1's.
    assert!(cmp.kl_p99 > 0.0 && (cmp.kl_mean - cmp.kl_p99 / 2.0).abs() < 1e-12);
    assert_eq!(cmp.accuracy, Some(0.5));
    assert_eq!((cmp.flips_to_wrong, cmp.flips_to_right), (Some(1), Some(0)));
    let hist: usize = cmp.candidate_confidence_histogram.iter().sum();
    assert_eq!(hist, 2);
}

#[test]
fn bad_comparisons_are_typed_errors() {
    assert!(compare(&[1.0, 2.0], &[1.0], 2, None, 1).is_err());
    assert!(compare(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], 2, None, 1).is_err());
    assert!(compare(&[], &[], 2, None, 1).is_err());
    assert!(compare(&[1.0, f32::NAN], &[1.0, 2.0], 2, None, 1).is_err());
    let err = compare(&[1.0, 2.0], &[1.0, 2.0], 2, Some(&[2]), 1).unwrap_err();
    assert!(err.to_string().contains("label 2"), "{err}");
}

#[test]
fn threshold_files_override_per_gap_and_reject_typos() {
    let v = serde_json::json!({
        "min_top1_agreement": 0.9,
        "max_kl_p99": 0.05,
        "quantization": { "min_top1_agreement": 0.99 },
    });
    let set = ThresholdSet::from_flat(v).unwrap();
    assert_eq!(set.for_gap(Gap::Distillation).min_top1_agreement, Some(0.9));
    assert_eq!(set.for_gap(Gap::Quantization).min_top1_agreement, Some(0.99));
    assert_eq!(set.for_gap(Gap::Quantization).max_kl_p99, Some(0.05));
    let flags = Thresholds { min_top1_agreement: Some(0.5), ..Default::default() };
    assert_eq!(set.overridden_by(&flags).for_gap(Gap::Quantization).min_top1_agreement, Some(0.5));

    let typo = ThresholdSet::from_flat(serde_json::json!({ "min_top1_agrement": 0.9 })).unwrap_err();
    assert!(typo.to_string().contains("min_top1_agrement"), "{typo}");
    let range = ThresholdSet::from_flat(serde_json::json!({ "min_top1_agreement": 1.5 })).unwrap_err();
    assert!(range.to_string().contains("0..=1"), "{range}");
}
