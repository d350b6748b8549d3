//! Cross-check: the quantized files are plain ONNX that ONNX Runtime runs too, with the same predictions as tract.
//! Skipped (with a message) when `python3` with `onnxruntime` and `numpy` is not installed.

use std::process::Command;

use pupil_runtime::onnx::zoo;
use pupil_runtime::prediction::argmax;
use pupil_runtime::quantize::{QuantizeOptions, quantize};
use pupil_runtime::{Batch, Model, ModelOptions};

const SCRIPT: &str = r#"
import sys, numpy as np, onnxruntime as ort
model, data, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
inp = s.get_inputs()[0]
x = np.fromfile(data, dtype=np.float32).reshape([n] + list(inp.shape[1:]))
y = s.run(None, {inp.name: x})[0]
print(" ".join(str(int(v)) for v in y.argmax(axis=1)))
"#;

fn ort_available() -> bool {
    Command::new("python3")
        .args(["-c", "import onnxruntime, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
}

fn agreement(a: &[usize], b: &[usize]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
}

/// Whether ONNX Runtime's int8 products are exact on the CPU it runs on: x86-64 only with VNNI (see the test).
/// Asked of the Python that runs ONNX Runtime, which runs natively even when this test runs under qemu.
fn ort_u8s8_is_exact() -> bool {
    const PROBE: &str = r#"
import platform
flags = open("/proc/cpuinfo").read() if platform.machine() in ("x86_64", "AMD64") else "avx512_vnni"
print("exact" if ("avx512_vnni" in flags or "avx_vnni" in flags) else "saturating")
"#;
    Command::new("python3")
        .args(["-c", PROBE])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() != "saturating")
        .unwrap_or(true)
}

fn int8(tag: &str) -> bool {
    tag != "f16"
}

#[test]
fn onnx_runtime_runs_the_quantized_models_with_the_same_predictions() {
    if !ort_available() {
        eprintln!("SKIPPED: python3 with onnxruntime and numpy not found (pip install onnxruntime numpy)");
        return;
    }
    let mut s = 5u64;
    let sizes = [64usize, 48, 32, 10];
    let w: Vec<Vec<f32>> = (0..3).map(|l| (0..sizes[l] * sizes[l + 1]).map(|_| lcg(&mut s) * 0.5).collect()).collect();
    let b: Vec<Vec<f32>> = (0..3).map(|l| (0..sizes[l + 1]).map(|_| lcg(&mut s) * 0.1).collect()).collect();
    let mlp = zoo::mlp(&sizes, &w, &b).to_bytes();
    let mut wf = |_l: usize, _i: usize| lcg(&mut s) * 0.4;
    let cnn = zoo::cnn(12, &[4, 8], 10, &mut wf).to_bytes();
    let dir = tempfile::tempdir().unwrap();
    for (name, f32_bytes, len) in [("mlp", &mlp, 64usize), ("cnn", &cnn, 144)] {
        let n = 200;
        let input: Vec<f32> = (0..n * len).map(|_| lcg(&mut s) + 0.5).collect();
        let calib: Vec<f32> = (0..300 * len).map(|_| lcg(&mut s) + 0.5).collect();
        let data = dir.path().join(format!("{name}.f32"));
        std::fs::write(&data, input.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        for (tag, options, calibration) in [
            ("static", QuantizeOptions::default(), Some(calib.as_slice())),
            ("dynamic", QuantizeOptions::dynamic(), None),
            ("f16", QuantizeOptions::f16(), None),
        ] {
            let (bytes, _) = quantize(f32_bytes, &options, calibration).unwrap();
            let path = dir.path().join(format!("{name}.{tag}.onnx"));
            std::fs::write(&path, &bytes).unwrap();
            let out = Command::new("python3")
                .args(["-c", SCRIPT, path.to_str().unwrap(), data.to_str().unwrap(), &n.to_string()])
                .output()
                .unwrap();
            if tag == "f16" && !out.status.success() {
                // ONNX Runtime's CPU provider lacks f16 kernels for some operators (e.g. MaxPool, Gemm on x86).
                eprintln!(
                    "{name} {tag}: ONNX Runtime refused: {}",
                    String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
                );
                continue;
            }
            assert!(out.status.success(), "{name} {tag}: onnxruntime failed: {}", String::from_utf8_lossy(&out.stderr));
            let ort: Vec<usize> =
                String::from_utf8_lossy(&out.stdout).split_whitespace().map(|v| v.parse().unwrap()).collect();
            let model = Model::from_bytes(&bytes, ModelOptions::default().with_batch(Batch::Symbolic)).unwrap();
            let tract: Vec<usize> = model.run_batch(&input).unwrap().chunks(10).map(argmax).collect();
            let agree = agreement(&tract, &ort);
            eprintln!("{name} {tag}: tract/ORT top-1 agreement {agree}");
            if agree >= 0.97 {
                continue;
            }
            // Without VNNI, ONNX Runtime's x86 u8×s8 kernel adds pairs of products in saturating int16
            // (`vpmaddubsw`), so its int8 results drift from exact integer arithmetic; pupil's stay exact. Then
            // the test asks that pupil be at least as close to the f32 model as ONNX Runtime is.
            assert!(!ort_u8s8_is_exact() && int8(tag), "{name} {tag}: tract and ONNX Runtime agree on only {agree}");
            let f32_model = Model::from_bytes(f32_bytes, ModelOptions::default().with_batch(Batch::Symbolic)).unwrap();
            let reference: Vec<usize> = f32_model.run_batch(&input).unwrap().chunks(10).map(argmax).collect();
            let (pupil_f32, ort_f32) = (agreement(&tract, &reference), agreement(&ort, &reference));
            eprintln!("{name} {tag}: agreement with the f32 model: pupil {pupil_f32}, ORT {ort_f32}");
            assert!(
                agree >= 0.9 && pupil_f32 >= ort_f32,
                "{name} {tag}: tract/ORT agreement {agree}; with the f32 model pupil {pupil_f32} vs ORT {ort_f32}"
            );
        }
    }
}
