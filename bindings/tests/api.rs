//! The bindings' Rust API over a real (deterministic) model: bytes in, the runtime's exact numbers out, typed errors.

use pupil_bindings::{Predictor, PredictorOptions, PupilError, TensorDim};
use pupil_runtime::onnx::zoo;
use pupil_runtime::{Model, ModelOptions};

fn model_bytes() -> Vec<u8> {
    let mut i = 0u32;
    let mut weight = |_l: usize, _k: usize| {
        i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        ((i >> 16) as f32 / 65_536.0 - 0.5) * 0.3
    };
    zoo::cnn(12, &[3], 4, &mut weight).to_bytes()
}

fn le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn input(seed: usize) -> Vec<f32> {
    (0..144).map(|k| ((k * 7 + seed * 13) % 17) as f32 / 17.0).collect()
}

#[test]
fn predict_equals_the_runtime_bit_for_bit() {
    let bytes = model_bytes();
    let p = Predictor::from_bytes(bytes.clone(), PredictorOptions::default()).unwrap();
    let m = Model::from_bytes(&bytes, ModelOptions::default()).unwrap();
    assert_eq!(p.example_len(), 144);
    assert_eq!(p.classes(), 4);
    assert_eq!(p.example_shape(), vec![1, 12, 12]);
    assert_eq!(p.input_spec().shape_text, "[N, 1, 12, 12]");
    assert!(matches!(p.input_spec().shape[0], TensorDim::Symbol { ref name } if name == "N"));
    assert!(p.labels().is_empty());
    for seed in 0..5 {
        let x = input(seed);
        let want = m.predict(&x).unwrap();
        let got = p.predict(le(&x)).unwrap();
        assert_eq!(got.logits, le(&want.logits), "seed {seed}");
        assert_eq!(got.probabilities, le(&want.probabilities));
        assert_eq!(got.class_index as usize, want.top[0].index);
        assert_eq!(got.top.len(), 4, "top_k 5 is capped at the 4 classes");
        assert_eq!(p.run(le(&x)).unwrap(), le(&m.run(&x).unwrap()));
        let top2 = p.top_k(le(&x), 2).unwrap();
        assert_eq!(
            top2.iter().map(|c| c.index as usize).collect::<Vec<_>>(),
            vec![want.top[0].index, want.top[1].index]
        );
    }
    let batch: Vec<f32> = (0..3).flat_map(input).collect();
    let results = p.predict_batch(le(&batch)).unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[2].logits, le(&m.predict(&input(2)).unwrap().logits));
}

#[test]
fn bad_inputs_are_typed_errors_naming_the_problem() {
    let p = Predictor::from_bytes(model_bytes(), PredictorOptions::default()).unwrap();
    match p.predict(vec![0; 7]) {
        Err(PupilError::InputLength(m)) => assert!(m.contains("7 bytes"), "{m}"),
        other => panic!("{other:?}"),
    }
    match p.predict(le(&[1.0; 10])) {
        Err(PupilError::InputLength(m)) => assert!(m.contains("expected 144") && m.contains("got 10"), "{m}"),
        other => panic!("{other:?}"),
    }
    let mut x = input(0);
    x[9] = f32::INFINITY;
    assert!(matches!(p.predict(le(&x)), Err(PupilError::NonFiniteInput(m)) if m.contains("index 9")));
    assert!(matches!(p.top_k(le(&input(0)), 0), Err(PupilError::Options(_))));
    assert!(matches!(p.predict_image(vec![1, 2, 3]), Err(PupilError::UndecodableImage(_))));
    match p.predict_rgba(vec![0; 12], 2, 2) {
        Err(PupilError::ImageSize(m)) => assert!(m.contains("16 bytes") && m.contains("got 12"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Predictor::from_bytes(b"nope".to_vec(), PredictorOptions::default()),
        Err(PupilError::NotOnnx(_))
    ));
    let zero = PredictorOptions { threads: 0, ..PredictorOptions::default() };
    assert!(matches!(Predictor::from_bytes(model_bytes(), zero), Err(PupilError::Options(m)) if m.contains("threads")));
    let fixed3 = PredictorOptions { batch: Some(0), ..PredictorOptions::default() };
    assert!(matches!(Predictor::from_bytes(model_bytes(), fixed3), Err(PupilError::Options(_))));
    match Predictor::from_path("/nonexistent/model.onnx".into(), PredictorOptions::default()) {
        Err(PupilError::Io(m)) => assert!(m.contains("/nonexistent/model.onnx"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rgba_pixels_match_the_same_image_as_png() {
    // A model with an explicit 12x12 gray spec (inferred from the shape) takes RGBA and PNG alike.
    let p = Predictor::from_bytes(model_bytes(), PredictorOptions::default()).unwrap();
    let gray: Vec<u8> = (0..144u32).map(|i| (i * 37 % 256) as u8).collect();
    let mut png = vec![];
    image::GrayImage::from_raw(12, 12, gray.clone())
        .unwrap()
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let rgba: Vec<u8> = gray.iter().flat_map(|&g| [g, g, g, 255]).collect();
    let from_png = p.preprocess_image(png).unwrap();
    let from_rgba = p.preprocess_rgba(rgba.clone(), 12, 12).unwrap();
    assert_eq!(from_png, from_rgba);
    assert_eq!(p.predict_rgba(rgba, 12, 12).unwrap().logits, p.predict(from_png).unwrap().logits);
}
