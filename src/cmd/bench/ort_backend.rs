//! ONNX Runtime as the benchmark's reference, loaded at run time (`ort` with `load-dynamic`) from the library
//! `pip install onnxruntime` ships, found through `ORT_DYLIB_PATH` or the Python package's directory.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

static ENV: OnceLock<Result<(ort::environment::Environment, PathBuf), String>> = OnceLock::new();

/// Finds `libonnxruntime.so*`: `ORT_DYLIB_PATH` (a file or a directory), else the pip package's `capi/`.
pub fn find_library() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        if p.is_dir()
            && let Some(lib) = library_in(&p)
        {
            return Ok(lib);
        }
        return Err(format!("ORT_DYLIB_PATH={} is neither libonnxruntime nor a folder holding it", p.display()));
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime,os;print(os.path.dirname(onnxruntime.__file__))"])
        .output()
        .map_err(|e| format!("python3 not found ({e}); set ORT_DYLIB_PATH to libonnxruntime.so"))?;
    if !out.status.success() {
        return Err("the onnxruntime Python package is not installed (`pip install onnxruntime`), and ORT_DYLIB_PATH \
                    is not set"
            .into());
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("capi");
    library_in(&dir).ok_or_else(|| format!("no libonnxruntime.so* in {}", dir.display()))
}

fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut libs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            (name.starts_with("libonnxruntime.so") || name == "libonnxruntime.dylib" || name == "onnxruntime.dll")
                && !name.contains("providers")
        })
        .collect();
    libs.sort();
    libs.pop()
}

/// Loads ONNX Runtime once per process; the error says why it is unavailable.
pub fn init() -> Result<&'static Path, String> {
    let r = ENV.get_or_init(|| {
        let lib = find_library()?;
        let builder = ort::init_from(&lib).map_err(|e| format!("cannot load {}: {e}", lib.display()))?;
        let env = builder.with_name("pupil-bench").build().map_err(|e| format!("ONNX Runtime environment: {e}"))?;
        Ok((env, lib))
    });
    match r {
        Ok((_, lib)) => Ok(lib.as_path()),
        Err(e) => Err(e.clone()),
    }
}

/// ONNX Runtime's version string.
pub fn version() -> String {
    ort::info().to_string()
}

/// One ONNX Runtime session for a single-input model run at batch 1.
pub struct OrtModel {
    session: Session,
    shape: Vec<i64>,
}

impl OrtModel {
    /// Creates a session with `threads` intra-op threads and every graph optimisation on.
    pub fn load(bytes: &[u8], example_shape: &[usize], threads: usize) -> Result<OrtModel, String> {
        let (env, _) = ENV.get().and_then(|r| r.as_ref().ok()).ok_or("ONNX Runtime is not loaded")?;
        let err = |e: &dyn std::fmt::Display| format!("ONNX Runtime cannot load the model: {e}");
        let builder = Session::builder(env).map_err(|e| err(&e))?;
        let builder = builder.with_optimization_level(GraphOptimizationLevel::All).map_err(|e| err(&e))?;
        let builder = builder.with_intra_threads(threads).map_err(|e| err(&e))?;
        let mut builder = builder.with_inter_threads(1).map_err(|e| err(&e))?;
        let session = builder.commit_from_memory(bytes).map_err(|e| err(&e))?;
        let shape = std::iter::once(1).chain(example_shape.iter().map(|d| *d as i64)).collect();
        Ok(OrtModel { session, shape })
    }

    /// Runs one example; returns the first output.
    pub fn run(&mut self, input: &[f32]) -> Result<Vec<f32>, String> {
        let tensor = TensorRef::from_array_view((self.shape.clone(), input)).map_err(|e| e.to_string())?;
        let outputs = self.session.run(ort::inputs![tensor]).map_err(|e| format!("ONNX Runtime run: {e}"))?;
        let (_, out) = outputs[0].try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
        Ok(out.to_vec())
    }
}
