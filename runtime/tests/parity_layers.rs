//! Per-layer divergence finds the layer that was damaged, and stays quiet for an 8-bit-rounded copy.

mod parity_common;

use parity_common::*;
use pupil_runtime::onnx::zoo;
use pupil_runtime::parity::{layer_divergence, metrics::SQNR_CAP_DB};

#[test]
fn corrupted_middle_layer_of_an_mlp_is_the_first_flagged() {
    let means = class_means(3000);
    let good = deep_ncm_onnx(&means, false, false);
    let bad = deep_ncm_onnx(&means, true, false);
    let (x, _) = mnist("t10k", 32);
    let r = layer_divergence(&good, &bad, &[784], &x, 20.0).unwrap();
    let names: Vec<&str> = r.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["fc0", "relu0", "fc1", "relu1", "logits"]);
    assert_eq!(r.examples, 32);
    // Before the damage: bit-identical.
    assert_eq!(r.layers[0].sqnr_db, SQNR_CAP_DB);
    assert_eq!(r.layers[1].sqnr_db, SQNR_CAP_DB);
    let first = r.first_divergent().expect("a layer below the bar");
    assert_eq!(first.name, "fc1");
    assert_eq!(first.op, "Gemm");
    assert_eq!(first.shape, vec![32, 10]);
    assert!(r.layers[4].below_bar);
}

#[test]
fn eight_bit_rounded_copy_stays_above_the_bar() {
    let means = class_means(3000);
    let good = deep_ncm_onnx(&means, false, false);
    let q = deep_ncm_onnx(&means, false, true);
    let (x, _) = mnist("t10k", 32);
    let r = layer_divergence(&good, &q, &[784], &x, 20.0).unwrap();
    assert_eq!(r.first_below, None, "{:#?}", r.layers);
    // Rounding did change something: SQNR is finite, not the identical-output cap.
    assert!(r.layers.iter().any(|l| l.sqnr_db < SQNR_CAP_DB - 1.0));
}

#[test]
fn corrupted_second_conv_of_a_cnn_is_the_first_flagged() {
    let w = |l: usize, i: usize| ((i * 2654435761usize + l * 97) % 1000) as f32 / 1000.0 - 0.5;
    let good = zoo::cnn(28, &[4, 8], 10, &mut |l, i| w(l, i)).to_bytes();
    let bad = zoo::cnn(28, &[4, 8], 10, &mut |l, i| if l == 1 { -w(l, i) + 0.05 } else { w(l, i) }).to_bytes();
    let (x, _) = mnist("t10k", 8);
    let r = layer_divergence(&good, &bad, &[1, 28, 28], &x, 20.0).unwrap();
    let first = r.first_divergent().expect("flagged");
    assert_eq!(first.name, "conv1", "{:#?}", r.layers);
    let conv0 = r.layers.iter().find(|l| l.name == "conv0").unwrap();
    assert_eq!(conv0.sqnr_db, SQNR_CAP_DB);
}

#[test]
fn unrelated_models_and_bad_inputs_are_typed_errors() {
    let means = class_means(1000);
    let mlp = deep_ncm_onnx(&means, false, false);
    let (x, _) = mnist("t10k", 2);
    assert!(layer_divergence(&mlp, b"not onnx", &[784], &x, 20.0).is_err());
    assert!(layer_divergence(&mlp, &mlp, &[784], &x[..100], 20.0).is_err());
    let mut nan = x.clone();
    nan[5] = f32::NAN;
    assert!(layer_divergence(&mlp, &mlp, &[784], &nan, 20.0).is_err());
    let other = zoo::mlp(&[784, 10], &[vec![0.0; 7840]], &[vec![0.0; 10]]);
    // A model whose tensors have other names shares only `logits` — still comparable at the output.
    let r = layer_divergence(&mlp, &other.to_bytes(), &[784], &x, 20.0).unwrap();
    assert_eq!(r.layers.len(), 1);
}

/// Against its int8 version made by pupil's quantizer, the float model's hidden layers are matched with their
/// 8-bit forms (`relu0.q`, dequantized with their own scale and zero point), not only the input and the logits;
/// an int8 copy of a damaged model is caught at the damaged layer.
#[test]
fn int8_model_from_pupils_quantizer_is_compared_layer_by_layer() {
    let means = class_means(3000);
    let good = deep_ncm_onnx(&means, false, false);
    let bad = deep_ncm_onnx(&means, true, false);
    let (calibration, _) = mnist("train", 256);
    let quantize = |bytes: &[u8]| {
        pupil_runtime::quantize::quantize(bytes, &Default::default(), Some(&calibration)).expect("quantizes").0
    };
    let (x, _) = mnist("t10k", 32);

    let r = layer_divergence(&good, &quantize(&good), &[784], &x, 20.0).unwrap();
    let names: Vec<&str> = r.layers.iter().map(|l| l.name.as_str()).collect();
    assert!(names.contains(&"relu0") && names.contains(&"relu1"), "hidden layers matched: {names:?}");
    assert_eq!(r.first_below, None, "int8 rounding stays above 20 dB: {:#?}", r.layers);
    let relu0 = r.layers.iter().find(|l| l.name == "relu0").unwrap();
    assert!(relu0.sqnr_db < SQNR_CAP_DB - 1.0 && relu0.sqnr_db > 25.0, "relu0 SQNR {}", relu0.sqnr_db);

    let r = layer_divergence(&good, &quantize(&bad), &[784], &x, 20.0).unwrap();
    let first = r.first_divergent().expect("the damaged layer is flagged");
    assert!(["fc1", "relu1"].contains(&first.name.as_str()), "first flagged: {first:?}");
    let relu0 = r.layers.iter().find(|l| l.name == "relu0").unwrap();
    assert!(!relu0.below_bar, "the layer before the damage stays above the bar");
}
