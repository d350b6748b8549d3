//! Loading and running models: specs, batching modes, threads, preprocessing and labels, on MLP and CNN graphs.

use pupil_runtime::meta::{LABELS_KEY, PREPROCESS_KEY, SpecSource};
use pupil_runtime::onnx::zoo;
use pupil_runtime::prediction::{argmax, softmax};
use pupil_runtime::{Batch, ColorMode, Dim, ElementType, Layout, Model, ModelOptions, PreprocessSpec};

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
}

/// A random MLP and a plain-Rust reference forward pass for it.
struct Mlp {
    sizes: Vec<usize>,
    w: Vec<Vec<f32>>,
    b: Vec<Vec<f32>>,
}

impl Mlp {
    fn new(sizes: &[usize], seed: u64) -> Self {
        let mut s = seed;
        let w =
            (0..sizes.len() - 1).map(|l| (0..sizes[l] * sizes[l + 1]).map(|_| lcg(&mut s) * 0.2).collect()).collect();
        let b = (0..sizes.len() - 1).map(|l| (0..sizes[l + 1]).map(|_| lcg(&mut s) * 0.1).collect()).collect();
        Mlp { sizes: sizes.to_vec(), w, b }
    }
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let mut a = x.to_vec();
        for l in 0..self.w.len() {
            let (i, o) = (self.sizes[l], self.sizes[l + 1]);
            let mut next = vec![0f32; o];
            for (j, v) in next.iter_mut().enumerate() {
                *v = self.b[l][j] + (0..i).map(|k| self.w[l][j * i + k] * a[k]).sum::<f32>();
                if l + 1 < self.w.len() {
                    *v = v.max(0.0);
                }
            }
            a = next;
        }
        a
    }
    fn bytes(&self) -> Vec<u8> {
        zoo::mlp(&self.sizes, &self.w, &self.b).to_bytes()
    }
}

fn input(n: usize, len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n * len).map(|_| lcg(&mut s) + 0.5).collect()
}

#[test]
fn mlp_matches_a_reference_forward_pass() {
    let mlp = Mlp::new(&[64, 32, 16, 5], 1);
    let model = Model::from_bytes(&mlp.bytes(), ModelOptions::default()).unwrap();
    assert_eq!(model.classes(), 5);
    assert_eq!(model.example_shape(), &[64]);
    let x = input(1, 64, 2);
    let got = model.run(&x).unwrap();
    let want = mlp.forward(&x);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-4, "{got:?} vs {want:?}");
    }
    let p = model.predict(&x).unwrap();
    assert_eq!(p.class(), argmax(&want));
    let sm = softmax(&want);
    assert!((p.probabilities[p.class()] - sm[argmax(&want)]).abs() < 1e-5);
}

#[test]
fn specs_are_read_from_the_file() {
    let mlp = Mlp::new(&[784, 20, 10], 3);
    let model = Model::from_bytes(&mlp.bytes(), ModelOptions::default()).unwrap();
    let i = &model.inputs()[0];
    assert_eq!(i.name, "input");
    assert_eq!(i.shape, vec![Dim::Symbol("N".into()), Dim::Fixed(784)]);
    assert_eq!(i.dtype, ElementType::F32);
    assert_eq!(model.outputs()[0].name, "logits");
    let info = model.info();
    assert_eq!(info.parameters, (784 * 20 + 20 + 20 * 10 + 10) as u64);
    assert_eq!(info.operators.get("Gemm"), Some(&2));
    assert_eq!(info.operators.get("Relu"), Some(&1));
    assert_eq!(info.file_size, mlp.bytes().len() as u64);
    // Hashed on a helper thread while the graph loads: still the hash of exactly these bytes.
    assert_eq!(info.sha256, pupil_runtime::model::sha256_hex(&mlp.bytes()));
    assert_eq!(info.sha256.len(), 64);
    // 784 = 28*28: the spec is inferred, and says so.
    assert_eq!(model.meta().preprocess_source, Some(SpecSource::Inferred));
}

#[test]
fn batch_modes_and_threads_agree() {
    let mlp = Mlp::new(&[100, 50, 7], 4);
    let x = input(37, 100, 5);
    let reference: Vec<f32> = x.chunks(100).flat_map(|e| mlp.forward(e)).collect();
    for options in [
        ModelOptions::default(),
        ModelOptions::default().with_batch(Batch::Fixed(8)),
        ModelOptions::default().with_batch(Batch::Symbolic),
        ModelOptions::default().with_batch(Batch::Symbolic).with_threads(2),
    ] {
        let model = Model::from_bytes(&mlp.bytes(), options.clone()).unwrap();
        let got = model.run_batch(&x).unwrap();
        assert_eq!(got.len(), 37 * 7, "{options:?}");
        for (g, w) in got.iter().zip(&reference) {
            assert!((g - w).abs() < 1e-4, "{options:?}: {g} vs {w}");
        }
        let preds = model.predict_batch(&x).unwrap();
        assert_eq!(preds.len(), 37);
        assert_eq!(preds[3].class(), argmax(&reference[21..28]));
    }
}

#[test]
fn a_model_shared_across_threads_gives_the_same_answers() {
    let mlp = Mlp::new(&[64, 32, 4], 6);
    let model = std::sync::Arc::new(Model::from_bytes(&mlp.bytes(), ModelOptions::default()).unwrap());
    let x = input(1, 64, 7);
    let want = model.run(&x).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (m, x) = (model.clone(), x.clone());
            std::thread::spawn(move || (0..200).map(|_| m.run(&x).unwrap()).collect::<Vec<_>>())
        })
        .collect();
    for h in handles {
        for got in h.join().unwrap() {
            assert_eq!(got, want);
        }
    }
}

#[test]
fn cnn_runs_with_nchw_input() {
    let mut s = 11u64;
    let bytes = zoo::cnn(28, &[4, 8], 10, &mut |_, _| lcg(&mut s) * 0.3).to_bytes();
    let model = Model::from_bytes(&bytes, ModelOptions::default().with_batch(Batch::Symbolic)).unwrap();
    assert_eq!(model.example_shape(), &[1, 28, 28]);
    assert_eq!(model.classes(), 10);
    assert_eq!(model.info().operators.get("Conv"), Some(&2));
    let x = input(3, 784, 12);
    let out = model.run_batch(&x).unwrap();
    assert_eq!(out.len(), 30);
    // Batch of 3 equals three single runs.
    let single = Model::from_bytes(&bytes, ModelOptions::default()).unwrap();
    for i in 0..3 {
        let one = single.run(&x[i * 784..(i + 1) * 784]).unwrap();
        for (a, b) in one.iter().zip(&out[i * 10..(i + 1) * 10]) {
            assert!((a - b).abs() < 1e-4);
        }
    }
}

#[test]
fn embedded_preprocessing_and_labels_drive_predict_image() {
    let mlp = Mlp::new(&[12, 3], 8);
    // A 4x3 image (w=4, h=3), gray, inverted, normalised with mean 0.5 / std 0.25.
    let spec = PreprocessSpec {
        width: 4,
        height: 3,
        color: ColorMode::Gray,
        layout: Layout::Nchw,
        resize: Default::default(),
        scale: 1.0 / 255.0,
        mean: vec![0.5],
        std: vec![0.25],
        invert: true,
    };
    let mut b = zoo::mlp(&mlp.sizes, &mlp.w, &mlp.b);
    b.metadata(PREPROCESS_KEY, &serde_json::to_string(&spec).unwrap());
    b.metadata(LABELS_KEY, "[\"cat\", \"dog\", \"bird\"]");
    let model = Model::from_bytes(&b.to_bytes(), ModelOptions::default()).unwrap();
    assert_eq!(model.meta().preprocess_source, Some(SpecSource::Onnx));

    let img = image::RgbImage::from_fn(8, 6, |x, y| image::Rgb([(x * 30) as u8, (y * 40) as u8, 200]));
    let mut png = std::io::Cursor::new(vec![]);
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let png = png.into_inner();

    // Reference preprocessing done by hand: gray, resize 8x6 → 4x3, invert, normalise.
    let gray = image::DynamicImage::ImageRgb8(img).resize_exact(4, 3, image::imageops::FilterType::Triangle).to_luma8();
    let want: Vec<f32> = gray.pixels().map(|p| ((255.0 - p.0[0] as f32) / 255.0 - 0.5) / 0.25).collect();
    let got = model.preprocess_image(&png).unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }

    let pred = model.predict_image(&png).unwrap();
    let logits = mlp.forward(&want);
    assert_eq!(pred.class(), argmax(&logits));
    assert_eq!(pred.top[0].label.as_deref(), Some(["cat", "dog", "bird"][argmax(&logits)]));
    assert_eq!(pred.top.len(), 3);
}

#[test]
fn model_card_beside_the_file_supplies_labels() {
    let mlp = Mlp::new(&[16, 2], 9);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.onnx");
    std::fs::write(&path, mlp.bytes()).unwrap();
    std::fs::write(dir.path().join("tiny.card.json"), r#"{"labels": ["no", "yes"], "recipe": {"ignored": true}}"#)
        .unwrap();
    let model = Model::load(&path, ModelOptions::default()).unwrap();
    assert_eq!(model.labels().unwrap(), &["no".to_string(), "yes".to_string()]);
    let p = model.predict(&[0.3; 16]).unwrap();
    assert!(p.top[0].label.is_some());
}

#[test]
fn fixed_batch_model_refuses_symbolic_options() {
    let mut b = pupil_runtime::onnx::GraphBuilder::new("fixed");
    let x = b.input("x", &[Dim::Fixed(1), Dim::Fixed(4)]);
    b.node("Relu", &[&x], &["y"], &[]);
    b.output("y", &[Dim::Fixed(1), Dim::Fixed(4)]);
    let bytes = b.to_bytes();
    let err = Model::from_bytes(&bytes, ModelOptions::default().with_batch(Batch::Symbolic)).unwrap_err();
    assert!(err.to_string().contains("fixed at 1"), "{err}");
    let model = Model::from_bytes(&bytes, ModelOptions::default()).unwrap();
    assert_eq!(model.run(&[-1.0, 2.0, -3.0, 4.0]).unwrap(), vec![0.0, 2.0, 0.0, 4.0]);
}

/// A model whose output is an image (one depthwise 3×3 convolution, `[N, 3, 5, 4]`) runs: each example gives its
/// `3 · 5 · 4` values, computed as the convolution's definition says, in one batch and one by one.
#[test]
fn a_model_with_an_image_output_runs_and_returns_every_value() {
    use pupil_runtime::onnx::{Attr, GraphBuilder};
    let (c, h, w) = (3usize, 5usize, 4usize);
    let mut s = 5u64;
    let wts: Vec<f32> = (0..c * 9).map(|_| lcg(&mut s)).collect();
    let mut b = GraphBuilder::new("depthwise");
    let x = b.input("x", &[Dim::Symbol("N".into()), Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(w)]);
    let wn = b.init_f32("w", &[c, 1, 3, 3], &wts);
    let attrs = [("group", Attr::Int(c as i64)), ("pads", Attr::Ints(vec![1; 4]))];
    b.node("Conv", &[&x, &wn], &["y"], &attrs);
    b.output("y", &[Dim::Symbol("N".into()), Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(w)]);
    let model = Model::from_bytes(&b.to_bytes(), ModelOptions::default().with_batch(Batch::Symbolic)).unwrap();
    assert_eq!(model.classes(), c * h * w, "values per example: the output's axes after the batch axis");
    let xs = input(2, c * h * w, 3);
    let out = model.run_batch(&xs).unwrap();
    assert_eq!(out.len(), 2 * c * h * w);
    for n in 0..2 {
        let one = model.run(&xs[n * c * h * w..][..c * h * w]).unwrap();
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let mut want = 0f32;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = (y as isize + ky as isize - 1, xx as isize + kx as isize - 1);
                            if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                                let v = xs[n * c * h * w + (ch * h + iy as usize) * w + ix as usize];
                                want += wts[ch * 9 + ky * 3 + kx] * v;
                            }
                        }
                    }
                    let at = (ch * h + y) * w + xx;
                    assert!((out[n * c * h * w + at] - want).abs() < 1e-4, "batch: image {n} {ch},{y},{xx}");
                    assert!((one[at] - want).abs() < 1e-4, "single: image {n} {ch},{y},{xx}");
                }
            }
        }
    }
}

mod decode {
    use proptest::prelude::*;
    use prost::Message;
    use pupil_runtime::model::decode_onnx;
    use tract_onnx::pb;

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// `decode_onnx` lends the input's runs of bytes to prost instead of copying them twice: every `bytes`
        /// field (a tensor's raw data and strings, an attribute's string and strings) decodes to what prost's own
        /// decoding of the same file gives, whatever their sizes and order.
        #[test]
        fn decoding_gives_what_prost_gives(
            raws in proptest::collection::vec(bytes(3000), 1..5),
            strings in proptest::collection::vec(bytes(40), 0..4),
            s in bytes(64),
        ) {
            let initializer = raws
                .iter()
                .enumerate()
                .map(|(i, raw)| pb::TensorProto {
                    name: format!("t{i}"),
                    dims: vec![raw.len() as i64],
                    data_type: 2,
                    raw_data: raw.clone(),
                    string_data: strings.clone(),
                    ..Default::default()
                })
                .collect();
            let attribute = pb::AttributeProto { name: "a".into(), s: s.clone(), strings: strings.clone(), ..Default::default() };
            let node = pb::NodeProto { op_type: "Identity".into(), attribute: vec![attribute], ..Default::default() };
            let graph = pb::GraphProto { node: vec![node], initializer, ..Default::default() };
            let file = pb::ModelProto { ir_version: 8, graph: Some(graph), ..Default::default() }.encode_to_vec();
            let lent = decode_onnx(&file).unwrap();
            let copied = pb::ModelProto::decode(&file[..]).unwrap();
            prop_assert_eq!(&lent, &copied);
            let graph = lent.graph.unwrap();
            for (t, raw) in graph.initializer.iter().zip(&raws) {
                prop_assert_eq!(&t.raw_data, raw);
            }
            prop_assert_eq!(&graph.node[0].attribute[0].s, &s);
        }
    }
}
