//! MNIST in its original IDX format, gzip-compressed (`train-images-idx3-ubyte.gz`, ...), pixels scaled to 0–1.

use std::io::Read;
use std::path::Path;

use super::{DataError, Dataset, Split, io_err};

fn read_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut bytes = vec![];
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::Format { path: path.to_path_buf(), reason: format!("not a gzip file: {e}") })?;
    Ok(bytes)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses an IDX file: returns the dims and the u8 payload.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bad = |reason: String| DataError::Format { path: path.to_path_buf(), reason };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("not an IDX file (bad magic)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!("IDX element type 0x{:02x}, expected 0x08 (unsigned byte)", bytes[2])));
    }
    let ndims = bytes[3] as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(bad(format!("truncated IDX header: {} bytes, expected at least {header}", bytes.len())));
    }
    let dims: Vec<usize> = (0..ndims).map(|i| be_u32(bytes, 4 + 4 * i) as usize).collect();
    let expected: usize = dims.iter().product();
    let payload = &bytes[header..];
    if payload.len() != expected {
        return Err(bad(format!("IDX payload has {} bytes, dims {dims:?} need {expected}", payload.len())));
    }
    Ok((dims, payload.to_vec()))
}

/// Loads one split of MNIST from `dir`.
pub fn load_mnist(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let img_path = dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
    let lbl_path = dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
    let (dims, pixels) = parse_idx(&read_gz(&img_path)?, &img_path)?;
    if dims.len() != 3 {
        return Err(DataError::Format { path: img_path, reason: format!("expected 3 dims, got {dims:?}") });
    }
    let (ldims, labels) = parse_idx(&read_gz(&lbl_path)?, &lbl_path)?;
    if ldims != [dims[0]] {
        return Err(DataError::Format {
            path: lbl_path,
            reason: format!("{} labels for {} images", ldims.first().copied().unwrap_or(0), dims[0]),
        });
    }
    Ok(Dataset {
        name: format!("mnist-{prefix}"),
        example_shape: vec![1, dims[1], dims[2]],
        inputs: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        labels: Some(labels.into_iter().map(u32::from).collect()),
        class_names: Some((0..10).map(|d| d.to_string()).collect()),
    })
}
