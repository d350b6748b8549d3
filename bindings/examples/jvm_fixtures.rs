//! Writes the reference data the Kotlin (JVM) tests compare against, computed by pupil-runtime directly in Rust.
//!
//! `cargo run -p pupil-bindings --example jvm_fixtures -- OUT_DIR [--model FILE.onnx] [--mnist DIR] [--count N]`
//!
//! Writes into OUT_DIR:
//! * `model.onnx`: the model under test (a copy of `--model`, or a deterministic CNN from `onnx::zoo` with labels);
//! * `inputs.bin`: N real MNIST test digits, preprocessed by the runtime, little-endian f32, one after another;
//! * `logits.bin`, `probabilities.bin`: `Model::predict` for each input (LE f32, `classes` per input);
//! * `run.bin`: `Model::run` raw outputs for each input (what the JNI `predictInto` must reproduce);
//! * `digit.png`: the first digit as a PNG, and `digit_logits.bin`: `Model::predict_image` on it;
//! * `unsupported.onnx`: a model with an operator the runtime refuses;
//! * `fixtures.properties`: counts, shapes, labels and the expected top classes.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};

use pupil_runtime::onnx::{GraphBuilder, write_atomic, zoo};
use pupil_runtime::spec::Dim;
use pupil_runtime::{Model, ModelOptions};

fn usage() -> ! {
    eprintln!("usage: jvm_fixtures OUT_DIR [--model FILE.onnx] [--mnist DIR] [--count N]");
    std::process::exit(2)
}

fn read_idx_gz(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut bytes = vec![];
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot gunzip {}: {e}", path.display()))?;
    Ok(bytes)
}

/// The first `count` MNIST test images (28x28, u8) and their labels.
fn mnist_test(dir: &Path, count: usize) -> Result<(Vec<Vec<u8>>, Vec<u8>), String> {
    let images = read_idx_gz(&dir.join("t10k-images-idx3-ubyte.gz"))?;
    let labels = read_idx_gz(&dir.join("t10k-labels-idx1-ubyte.gz"))?;
    if images.len() < 16 || images[..4] != [0, 0, 8, 3] || labels.len() < 8 || labels[..4] != [0, 0, 8, 1] {
        return Err(format!("{} does not hold MNIST IDX files", dir.display()));
    }
    let n = u32::from_be_bytes([images[4], images[5], images[6], images[7]]) as usize;
    if n < count || images.len() < 16 + count * 784 || labels.len() < 8 + count {
        return Err(format!("MNIST test set has {n} images, {count} asked for"));
    }
    let imgs = (0..count).map(|i| images[16 + i * 784..16 + (i + 1) * 784].to_vec()).collect();
    Ok((imgs, labels[8..8 + count].to_vec()))
}

/// A deterministic small CNN on `[N, 1, 28, 28]` with digit labels: conv kernels on NEON/AVX, real ops.
fn zoo_model() -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut weight = |_layer: usize, _i: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.4
    };
    let mut b: GraphBuilder = zoo::cnn(28, &[4, 8], 10, &mut weight);
    let labels: Vec<String> =
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"].map(String::from).to_vec();
    b.metadata(pupil_runtime::meta::LABELS_KEY, &serde_json::to_string(&labels).expect("labels serialise"));
    b.to_bytes()
}

/// A model whose only node is an operator no runtime knows.
fn unsupported_model() -> Vec<u8> {
    let mut b = GraphBuilder::new("unsupported");
    let x = b.input("input", &[Dim::Symbol("N".into()), Dim::Fixed(4)]);
    b.node("FancyOp", &[&x], &["y"], &[]);
    b.output("y", &[Dim::Symbol("N".into()), Dim::Fixed(4)]);
    b.to_bytes()
}

fn le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let out: PathBuf = args.next().map(PathBuf::from).unwrap_or_else(|| usage());
    let mut model_path: Option<PathBuf> = None;
    let mut mnist = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist"));
    let mut count = 64usize;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model_path = Some(args.next().unwrap_or_else(|| usage()).into()),
            "--mnist" => mnist = args.next().unwrap_or_else(|| usage()).into(),
            "--count" => count = args.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| usage()),
            _ => usage(),
        }
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let model_bytes = match &model_path {
        Some(p) => std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
        None => zoo_model(),
    };
    let w = |name: &str, bytes: &[u8]| write_atomic(&out.join(name), bytes).map_err(|e| e.to_string());
    w("model.onnx", &model_bytes)?;
    w("unsupported.onnx", &unsupported_model())?;
    let model = Model::from_bytes(&model_bytes, ModelOptions::default()).map_err(|e| e.to_string())?;
    let (images, digits) = mnist_test(&mnist, count)?;

    let mut inputs = vec![];
    let mut logits = vec![];
    let mut probabilities = vec![];
    let mut raw = vec![];
    let mut props = String::new();
    for (i, img) in images.iter().enumerate() {
        let mut png = vec![];
        image::GrayImage::from_raw(28, 28, img.clone())
            .ok_or("28x28 buffer")?
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| e.to_string())?;
        let x = model.preprocess_image(&png).map_err(|e| e.to_string())?;
        let p = model.predict(&x).map_err(|e| e.to_string())?;
        let r = model.run(&x).map_err(|e| e.to_string())?;
        inputs.extend(le(&x));
        logits.extend(le(&p.logits));
        probabilities.extend(le(&p.probabilities));
        raw.extend(le(&r));
        let top: Vec<String> = p.top.iter().map(|c| c.index.to_string()).collect();
        writeln!(props, "top.{i}={}", top.join(",")).ok();
        writeln!(props, "digit.{i}={}", digits[i]).ok();
        if i == 0 {
            w("digit.png", &png)?;
            let pi = model.predict_image(&png).map_err(|e| e.to_string())?;
            w("digit_logits.bin", &le(&pi.logits))?;
        }
    }
    w("inputs.bin", &inputs)?;
    w("logits.bin", &logits)?;
    w("probabilities.bin", &probabilities)?;
    w("run.bin", &raw)?;
    writeln!(props, "count={count}").ok();
    writeln!(props, "example_len={}", model.example_len()).ok();
    writeln!(props, "classes={}", model.classes()).ok();
    writeln!(props, "top_k={}", model.options().top_k.min(model.classes())).ok();
    writeln!(props, "input_shape={}", model.inputs()[0].shape_string()).ok();
    writeln!(props, "input_name={}", model.inputs()[0].name).ok();
    writeln!(props, "labels={}", model.labels().map(|l| l.join(",")).unwrap_or_default()).ok();
    writeln!(props, "sha256={}", model.info().sha256).ok();
    w("fixtures.properties", props.as_bytes())?;
    println!("wrote {count} reference predictions to {}", out.display());
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("jvm_fixtures: {e}");
        std::process::exit(1);
    }
}
