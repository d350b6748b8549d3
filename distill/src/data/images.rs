//! A folder of PNG/JPEG images, preprocessed with a model's spec; class subfolders give labels.

use std::path::{Path, PathBuf};

use pupil_runtime::PreprocessSpec;
use pupil_runtime::preprocess::image_to_input;

use super::{DataError, Dataset, io_err};

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io_err(dir))?;
    v.sort();
    Ok(v)
}

/// Loads `dir/*.png` (unlabelled) or `dir/<class>/*.png` (labelled by sorted class folder).
pub fn load_image_folder(dir: &Path, spec: &PreprocessSpec) -> Result<Dataset, DataError> {
    let entries = sorted_entries(dir)?;
    let class_dirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    let mut inputs = vec![];
    let mut labels = vec![];
    let mut load = |path: &Path| -> Result<(), DataError> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let v = image_to_input(&bytes, spec).map_err(|source| DataError::Image { path: path.to_path_buf(), source })?;
        inputs.extend(v);
        Ok(())
    };
    let class_names = if class_dirs.is_empty() {
        for p in entries.iter().filter(|p| is_image(p)) {
            load(p)?;
        }
        None
    } else {
        let mut names = vec![];
        for (class, d) in class_dirs.iter().enumerate() {
            names.push(d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            for p in sorted_entries(d)?.iter().filter(|p| is_image(p)) {
                load(p)?;
                labels.push(class as u32);
            }
        }
        Some(names)
    };
    let c = spec.color.channels();
    let example_shape = match spec.layout {
        pupil_runtime::Layout::Nchw => vec![c, spec.height as usize, spec.width as usize],
        pupil_runtime::Layout::Nhwc => vec![spec.height as usize, spec.width as usize, c],
    };
    Ok(Dataset {
        name: dir.display().to_string(),
        example_shape,
        inputs,
        labels: class_names.as_ref().map(|_| labels),
        class_names,
    })
}
