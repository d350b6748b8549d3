//! Every runtime error variant, triggered by a real bad input, with a message that names the problem.

use pupil_runtime::meta::{PREPROCESS_KEY, ResizeMode};
use pupil_runtime::onnx::{Attr, GraphBuilder, zoo};
use pupil_runtime::{Batch, Dim, Error, Layout, Model, ModelOptions, PreprocessSpec};

fn tiny_mlp() -> GraphBuilder {
    let sizes = [784, 16, 10];
    let w: Vec<Vec<f32>> = (0..2)
        .map(|l| (0..sizes[l] * sizes[l + 1]).map(|i| ((i * 7 + l) % 13) as f32 / 13.0 - 0.5).collect())
        .collect();
    let b: Vec<Vec<f32>> = (0..2).map(|l| vec![0.01; sizes[l + 1]]).collect();
    zoo::mlp(&sizes, &w, &b)
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::GrayImage::from_fn(width, height, |x, y| image::Luma([((x * 9 + y * 5) % 256) as u8]));
    let mut bytes = std::io::Cursor::new(vec![]);
    img.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

#[test]
fn unreadable_file_names_the_path() {
    let err = Model::load("/definitely/not/here.onnx", ModelOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("/definitely/not/here.onnx"), "{err}");
}

#[test]
fn random_bytes_are_not_onnx() {
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let err = Model::from_bytes(&bytes, ModelOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NotOnnx { .. }), "{err:?}");
    assert!(err.to_string().starts_with("not an ONNX model"), "{err}");
}

#[test]
fn truncated_file_is_rejected() {
    let bytes = tiny_mlp().to_bytes();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.onnx");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = Model::load(&path, ModelOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NotOnnx { .. }), "{err:?}");
    // Every prefix either fails cleanly or loads: never a panic.
    for cut in (0..bytes.len()).step_by(97) {
        let _ = Model::from_bytes(&bytes[..cut], ModelOptions::default());
    }
}

#[test]
fn unsupported_operator_is_named_with_its_node() {
    let mut b = GraphBuilder::new("bad");
    let x = b.input("input", &[Dim::Symbol("N".into()), Dim::Fixed(4)]);
    b.node("QGemm", &[&x], &["y"], &[("alpha", Attr::Float(1.0))]);
    b.output("y", &[Dim::Symbol("N".into()), Dim::Fixed(4)]);
    let mut model = b.build();
    model.graph.as_mut().unwrap().node[0].domain = "com.microsoft".into();
    model.graph.as_mut().unwrap().node[0].name = "the_gemm".into();
    let bytes = pupil_runtime::onnx::encode(&model);
    let err = Model::from_bytes(&bytes, ModelOptions::default()).unwrap_err();
    match &err {
        Error::UnsupportedOperator { op, domain, node } => {
            assert_eq!(op, "QGemm");
            assert_eq!(domain, "com.microsoft");
            assert_eq!(node, "the_gemm");
        }
        other => panic!("expected UnsupportedOperator, got {other:?}"),
    }
    assert!(err.to_string().contains("QGemm") && err.to_string().contains("the_gemm"), "{err}");
}

#[test]
fn wrong_input_length_says_expected_and_got() {
    let model = Model::from_bytes(&tiny_mlp().to_bytes(), ModelOptions::default()).unwrap();
    let err = model.predict(&vec![0.5; 783]).unwrap_err();
    assert!(matches!(err, Error::InputLength { expected: 784, got: 783, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("expected 784") && msg.contains("got 783"), "{msg}");
    // A batch that is not a whole number of examples.
    let err = model.run_batch(&vec![0.5; 784 * 2 + 1]).unwrap_err();
    assert!(matches!(err, Error::InputLength { got: 1569, .. }), "{err:?}");
}

#[test]
fn wrong_input_shape_says_expected_and_got() {
    let model = Model::from_bytes(&tiny_mlp().to_bytes(), ModelOptions::default()).unwrap();
    let err = model.run_shaped(&[1, 28, 28], &vec![0.5; 784]).unwrap_err();
    match &err {
        Error::InputShape { expected, got, .. } => {
            assert_eq!(expected, &vec![1, 784]);
            assert_eq!(got, &vec![1, 28, 28]);
        }
        other => panic!("expected InputShape, got {other:?}"),
    }
    assert!(err.to_string().contains("[1, 784]") && err.to_string().contains("[1, 28, 28]"), "{err}");
    assert_eq!(model.run_shaped(&[1, 784], &vec![0.5; 784]).unwrap().len(), 10);
}

#[test]
fn nan_input_is_refused_with_its_index() {
    let model = Model::from_bytes(&tiny_mlp().to_bytes(), ModelOptions::default()).unwrap();
    let mut x = vec![0.1; 784];
    x[5] = f32::NAN;
    let err = model.predict(&x).unwrap_err();
    assert!(matches!(err, Error::NonFiniteInput { index: 5, .. }), "{err:?}");
    x[5] = 0.0;
    x[700] = f32::INFINITY;
    let err = model.predict(&x).unwrap_err();
    assert!(err.to_string().contains("index 700"), "{err}");
    // In the last, partial block of 64 values, and one in the first block and one later: the first is named.
    x[700] = 0.0;
    x[783] = f32::NEG_INFINITY;
    assert!(matches!(model.predict(&x).unwrap_err(), Error::NonFiniteInput { index: 783, .. }));
    x[3] = f32::NAN;
    assert!(matches!(model.predict(&x).unwrap_err(), Error::NonFiniteInput { index: 3, .. }));
}

#[test]
fn garbage_image_is_undecodable() {
    let model = Model::from_bytes(&tiny_mlp().to_bytes(), ModelOptions::default()).unwrap();
    let err = model.predict_image(b"\x89PNG\r\n\x1a\nthis is not really a png").unwrap_err();
    assert!(matches!(err, Error::UndecodableImage { .. }), "{err:?}");
    assert!(err.to_string().starts_with("cannot decode image"), "{err}");
}

#[test]
fn png_of_the_wrong_size_is_refused_when_the_spec_is_exact() {
    let mut spec = PreprocessSpec::mnist(Layout::Nchw);
    spec.resize = ResizeMode::Exact;
    let mut b = tiny_mlp();
    b.metadata(PREPROCESS_KEY, &serde_json::to_string(&spec).unwrap());
    let model = Model::from_bytes(&b.to_bytes(), ModelOptions::default()).unwrap();
    let err = model.predict_image(&png(20, 17)).unwrap_err();
    match &err {
        Error::ImageSize { expected_width: 28, expected_height: 28, got_width: 20, got_height: 17 } => {}
        other => panic!("expected ImageSize, got {other:?}"),
    }
    assert!(err.to_string().contains("expected 28x28, got 20x17"), "{err}");
    assert_eq!(model.predict_image(&png(28, 28)).unwrap().probabilities.len(), 10);
}

#[test]
fn malformed_metadata_is_named() {
    let mut b = tiny_mlp();
    b.metadata(PREPROCESS_KEY, "{\"width\": 28}");
    let err = Model::from_bytes(&b.to_bytes(), ModelOptions::default()).unwrap_err();
    assert!(matches!(&err, Error::Metadata { key, .. } if key == PREPROCESS_KEY), "{err:?}");

    let mut b = tiny_mlp();
    b.metadata(pupil_runtime::meta::LABELS_KEY, "[\"only\", \"three\", \"labels\"]");
    let err = Model::from_bytes(&b.to_bytes(), ModelOptions::default()).unwrap_err();
    assert!(err.to_string().contains("expected 10 labels") && err.to_string().contains("got 3"), "{err}");
}

#[test]
fn impossible_options_are_refused() {
    let bytes = tiny_mlp().to_bytes();
    let err = Model::from_bytes(&bytes, ModelOptions { threads: 0, ..Default::default() }).unwrap_err();
    assert!(matches!(err, Error::Options { .. }), "{err:?}");
    let err = Model::from_bytes(&bytes, ModelOptions { batch: Batch::Fixed(0), ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("at least 1"), "{err}");
}
