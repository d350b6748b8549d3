//! `.npy` arrays (NumPy's format) of examples along the first axis, read and written with `npyz`.

use std::path::Path;

use super::{DataError, Dataset, io_err};

fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), DataError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let bad = |reason: String| DataError::Format { path: path.to_path_buf(), reason };
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| bad(format!("not a .npy file: {e}")))?;
    let shape: Vec<usize> = npy.shape().iter().map(|d| *d as usize).collect();
    if npy.order() == npyz::Order::Fortran {
        return Err(bad("Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into()));
    }
    let descr = npy.dtype().descr();
    // npyz renders the descriptor as a Python literal: `'<f4'`.
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let values: Vec<f32> = match descr {
        "<f4" => npy.into_vec::<f32>().map_err(|e| bad(e.to_string()))?,
        "<f8" => npy.into_vec::<f64>().map_err(|e| bad(e.to_string()))?.into_iter().map(|v| v as f32).collect(),
        "|u1" => npy.into_vec::<u8>().map_err(|e| bad(e.to_string()))?.into_iter().map(f32::from).collect(),
        "<i8" => npy.into_vec::<i64>().map_err(|e| bad(e.to_string()))?.into_iter().map(|v| v as f32).collect(),
        "<i4" => npy.into_vec::<i32>().map_err(|e| bad(e.to_string()))?.into_iter().map(|v| v as f32).collect(),
        other => return Err(bad(format!("element type `{other}` is not supported (f4, f8, u1, i4, i8 are)"))),
    };
    Ok((shape, values))
}

/// Loads examples (and optionally integer labels) from `.npy` files. A 1-D input array is one example.
pub fn load_npy(inputs: &Path, labels: Option<&Path>) -> Result<Dataset, DataError> {
    let (shape, values) = read_f32(inputs)?;
    let example_shape = if shape.len() <= 1 { shape.clone() } else { shape[1..].to_vec() };
    let n = if shape.len() <= 1 { 1 } else { shape[0] };
    let labels = match labels {
        None => None,
        Some(path) => {
            let (lshape, l) = read_f32(path)?;
            if lshape.iter().product::<usize>() != n {
                return Err(DataError::Format {
                    path: path.to_path_buf(),
                    reason: format!("{} labels for {n} examples", l.len()),
                });
            }
            if let Some((i, v)) = l.iter().enumerate().find(|(_, v)| **v < 0.0 || v.fract() != 0.0) {
                return Err(DataError::Format {
                    path: path.to_path_buf(),
                    reason: format!("label {v} at {i} is not a non-negative integer"),
                });
            }
            Some(l.into_iter().map(|v| v as u32).collect())
        }
    };
    Ok(Dataset { name: inputs.display().to_string(), example_shape, inputs: values, labels, class_names: None })
}

/// Writes an f32 array as `.npy`.
pub fn write_npy(path: &Path, shape: &[usize], values: &[f32]) -> Result<(), DataError> {
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    use npyz::WriterBuilder;
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape.iter().map(|d| *d as u64).collect::<Vec<_>>())
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .map_err(io_err(path))?;
    writer.extend(values.iter().copied()).map_err(io_err(path))?;
    writer.finish().map_err(io_err(path))?;
    Ok(())
}
