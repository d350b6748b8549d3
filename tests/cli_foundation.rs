//! `pupil inspect`, `pupil run` and `pupil eval` end to end, on an ONNX MLP and an ONNX CNN built from real MNIST.

mod common;

use common::*;
use pupil_distill::{Split, data::write_npy};
use pupil_runtime::prediction::argmax;

#[test]
fn inspect_reports_structure_as_json_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let train = mnist(Split::Train);
    let model = write(dir.path(), "mlp.onnx", &Centroid::fit(&train).onnx());
    let (code, out, err) = pupil(&["inspect", model.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["info"]["parameters"], 784 * 10 + 10 + 100 + 10);
    assert_eq!(v["info"]["operators"]["Gemm"], 2);
    assert_eq!(v["info"]["file_size"], std::fs::metadata(&model).unwrap().len());
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!(["N", 784]));
    assert_eq!(v["classes"], 10);
    assert_eq!(v["meta"]["preprocess_source"], "inferred");

    let (code, out, _) = pupil(&["inspect", model.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("Gemm") && out.contains("[N, 784]") && out.contains("parameters"), "{out}");
}

#[test]
fn run_predicts_the_digit_of_a_png_and_an_npy() {
    let dir = tempfile::tempdir().unwrap();
    let train = mnist(Split::Train);
    let test = mnist(Split::Test);
    let centroid = Centroid::fit(&train);
    let model = write(dir.path(), "mlp.onnx", &centroid.onnx());
    let labels = test.labels.as_ref().unwrap();
    // Three test digits the reference classifier gets right.
    let picks: Vec<usize> =
        (0..200).filter(|&i| argmax(&centroid.logits(test.example(i))) == labels[i] as usize).take(3).collect();
    for &i in &picks {
        let px: Vec<u8> = test.example(i).iter().map(|v| (v * 255.0).round() as u8).collect();
        let img = image::GrayImage::from_raw(28, 28, px).unwrap();
        let png = dir.path().join(format!("digit{i}.png"));
        img.save(&png).unwrap();
        let (code, out, err) = pupil(&["run", model.to_str().unwrap(), "--input", png.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["top"][0]["index"], labels[i], "example {i}");

        let npy = dir.path().join(format!("digit{i}.npy"));
        write_npy(&npy, &[1, 784], test.example(i)).unwrap();
        let (code, out, err) = pupil(&["run", model.to_str().unwrap(), "--input", npy.to_str().unwrap(), "--top", "3"]);
        assert_eq!(code, 0, "{err}");
        let first = out.lines().find(|l| l.contains(" 1 ")).unwrap_or_default().to_string();
        assert!(first.contains(&format!(" {} ", labels[i])), "{out}");
    }
}

#[test]
fn eval_counts_errors_like_the_reference_on_mlp_and_cnn() {
    let dir = tempfile::tempdir().unwrap();
    let train = mnist(Split::Train);
    let test = mnist(Split::Test).take(2000);
    let labels = test.labels.clone().unwrap();
    let centroid = Centroid::fit(&train);
    let mlp = write(dir.path(), "mlp.onnx", &centroid.onnx());
    let (cnn_bytes, pooled_means) = centroid_cnn(&train);
    let cnn = write(dir.path(), "cnn.onnx", &cnn_bytes);

    let ref_errors = |logits: &dyn Fn(&[f32]) -> Vec<f32>| {
        (0..test.len()).filter(|&i| argmax(&logits(test.example(i))) != labels[i] as usize).count()
    };
    let mlp_errors = ref_errors(&|x| centroid.logits(x));
    let cnn_errors = ref_errors(&|x| {
        let p = pool2(x);
        pooled_means
            .iter()
            .map(|m| m.iter().zip(&p).map(|(a, b)| a * b).sum::<f32>() - 0.5 * m.iter().map(|a| a * a).sum::<f32>())
            .collect()
    });

    for (model, want) in [(&mlp, mlp_errors), (&cnn, cnn_errors)] {
        let (code, out, err) =
            pupil(&["eval", model.to_str().unwrap(), "--data", "mnist:data/mnist", "--limit", "2000", "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["examples"], 2000);
        let errors = v["errors"].as_u64().unwrap() as i64;
        // Float summation order differs from tract's: allow a couple of near-ties to flip.
        assert!((errors - want as i64).abs() <= 3, "{}: pupil {errors} errors, reference {want}", model.display());
        assert!(v["accuracy"].as_f64().unwrap() > 0.75, "{out}");
        let per_class: u64 = v["per_class"].as_array().unwrap().iter().map(|c| c[0].as_u64().unwrap()).sum();
        assert_eq!(per_class, 2000);
    }
}

#[test]
fn bad_cli_inputs_fail_with_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let train = mnist(Split::Train);
    let model = write(dir.path(), "mlp.onnx", &Centroid::fit(&train).onnx());
    let m = model.to_str().unwrap();

    let (code, _, err) = pupil(&["inspect", "no/such/model.onnx"]);
    assert_ne!(code, 0);
    assert!(err.contains("no/such/model.onnx"), "{err}");
    // The OS reason is said once, although the runtime's error both quotes it and chains it as its source.
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");

    let junk = write(dir.path(), "junk.onnx", b"definitely not protobuf \xff\xff\xff");
    let (code, _, err) = pupil(&["inspect", junk.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("not an ONNX model"), "{err}");

    // Unlabelled data cannot be evaluated.
    let npy = dir.path().join("x.npy");
    write_npy(&npy, &[4, 784], &vec![0.0; 4 * 784]).unwrap();
    let (code, _, err) = pupil(&["eval", m, "--data", &format!("npy:{}", npy.display())]);
    assert_ne!(code, 0);
    assert!(err.contains("has no labels"), "{err}");

    // Examples of the wrong size.
    let small = dir.path().join("small.npy");
    write_npy(&small, &[2, 100], &vec![0.0; 200]).unwrap();
    let (code, _, err) = pupil(&["run", m, "--input", small.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("100 values") && err.contains("784"), "{err}");

    let (code, _, err) = pupil(&["eval", m, "--data", "parquet:foo"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown data kind `parquet`"), "{err}");

    let txt = write(dir.path(), "note.png", b"not an image");
    let (code, _, err) = pupil(&["run", m, "--input", txt.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot decode image"), "{err}");
}
