//! The parity bundle: inputs, the teacher's and the host student's outputs, labels and thresholds in one
//! safetensors file, checksummed, made for one student (by sha256) so a phone can check parity without the teacher.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::metrics::ThresholdSet;
use crate::device::DeviceFingerprint;
use crate::error::{Error, Result};

/// Version of the bundle layout this runtime reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// safetensors metadata key holding [`BundleMeta`] as JSON.
pub const META_KEY: &str = "pupil.parity";
/// safetensors metadata key holding the sha256 of the metadata JSON and every tensor.
pub const CHECKSUM_KEY: &str = "pupil.parity.checksum";

/// Tensor names inside the file.
pub mod tensors {
    pub const INPUTS: &str = "inputs";
    pub const TEACHER_LOGITS: &str = "teacher_logits";
    pub const STUDENT_LOGITS: &str = "student_logits";
    pub const LABELS: &str = "labels";
}

/// Who made a bundle, and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedBy {
    pub pupil_version: String,
    pub tract_version: String,
    pub device: DeviceFingerprint,
    /// Seconds since the Unix epoch.
    pub unix_time: u64,
}

impl CreatedBy {
    /// This program on this machine, now.
    pub fn here() -> Self {
        CreatedBy {
            pupil_version: crate::VERSION.into(),
            tract_version: crate::TRACT_VERSION.into(),
            device: DeviceFingerprint::current(),
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

/// What a bundle says about itself (stored as JSON in the safetensors metadata).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleMeta {
    pub format_version: u32,
    /// sha256 of the student ONNX file the bundle was made for.
    pub student_sha256: String,
    /// sha256 of the teacher ONNX file, for the record.
    pub teacher_sha256: Option<String>,
    pub examples: usize,
    /// Shape of one input example (no batch dimension).
    pub example_shape: Vec<usize>,
    pub classes: usize,
    /// Where the examples came from (a data spec such as `mnist:data/mnist:test`).
    pub data: String,
    pub thresholds: ThresholdSet,
    pub created_by: CreatedBy,
}

/// A parity bundle in memory. Build one on the host, [`Bundle::to_bytes`] it, and check a student against it with
/// [`crate::Model::verify_bundle`].
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    pub meta: BundleMeta,
    /// `[examples, example_shape...]`, flat.
    pub inputs: Vec<f32>,
    /// Teacher logits `[examples, classes]` (log-probabilities when the teacher ends in Softmax).
    pub teacher_logits: Vec<f32>,
    /// The student's logits on the host that made the bundle, `[examples, classes]`.
    pub student_logits: Vec<f32>,
    pub labels: Option<Vec<u32>>,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::Bundle { reason: reason.into() }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

/// sha256 over the metadata JSON and each tensor's name, dtype, shape and bytes, in a fixed order.
fn checksum(meta_json: &str, tensors: &[(&str, Dtype, Vec<usize>, &[u8])]) -> String {
    let mut h = Sha256::new();
    h.update((meta_json.len() as u64).to_le_bytes());
    h.update(meta_json.as_bytes());
    for (name, dtype, shape, data) in tensors {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        let d = dtype_name(*dtype);
        h.update((d.len() as u64).to_le_bytes());
        h.update(d.as_bytes());
        h.update((shape.len() as u64).to_le_bytes());
        for s in shape {
            h.update((*s as u64).to_le_bytes());
        }
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The tensor `name` if present, checked to be of `dtype`.
fn get<'a>(st: &SafeTensors<'a>, name: &str, dtype: Dtype) -> Result<Option<TensorView<'a>>> {
    match st.tensor(name) {
        Ok(t) if t.dtype() == dtype => Ok(Some(t)),
        Ok(t) => Err(bad(format!("tensor `{name}` is {:?}, expected {dtype:?}", t.dtype()))),
        Err(safetensors::SafeTensorError::TensorNotFound(_)) => Ok(None),
        Err(e) => Err(bad(format!("tensor `{name}`: {e}"))),
    }
}

/// The f32 tensor `name`, which must be present.
fn need<'a>(st: &SafeTensors<'a>, name: &str) -> Result<TensorView<'a>> {
    get(st, name, Dtype::F32)?.ok_or_else(|| bad(format!("the bundle has no `{name}` tensor")))
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Bundle {
    /// Checks that the parts are consistent: lengths match the declared shapes, labels are in range, values are
    /// finite, the student hash is a sha256.
    pub fn validate(&self) -> Result<()> {
        let m = &self.meta;
        if m.format_version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {} is not supported (this runtime reads version {FORMAT_VERSION})",
                m.format_version
            )));
        }
        if !is_sha256(&m.student_sha256) {
            return Err(bad(format!("student_sha256 `{}` is not a lowercase hex sha256", m.student_sha256)));
        }
        if m.examples == 0 {
            return Err(bad("the bundle holds no examples"));
        }
        if m.classes == 0 {
            return Err(bad("the bundle declares 0 classes"));
        }
        if m.example_shape.is_empty() || m.example_shape.contains(&0) {
            return Err(bad(format!("example shape {:?} is empty or has a zero dimension", m.example_shape)));
        }
        let per: usize = m.example_shape.iter().product();
        let check_len = |name: &str, got: usize, expected: usize| {
            if got != expected {
                Err(bad(format!("`{name}` has {got} values, expected {expected} for the declared shapes")))
            } else {
                Ok(())
            }
        };
        check_len(tensors::INPUTS, self.inputs.len(), m.examples * per)?;
        check_len(tensors::TEACHER_LOGITS, self.teacher_logits.len(), m.examples * m.classes)?;
        check_len(tensors::STUDENT_LOGITS, self.student_logits.len(), m.examples * m.classes)?;
        for (name, v) in [
            (tensors::INPUTS, &self.inputs),
            (tensors::TEACHER_LOGITS, &self.teacher_logits),
            (tensors::STUDENT_LOGITS, &self.student_logits),
        ] {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(bad(format!("`{name}` holds a non-finite value {} at index {i}", v[i])));
            }
        }
        if let Some(labels) = &self.labels {
            check_len(tensors::LABELS, labels.len(), m.examples)?;
            if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| **l as usize >= m.classes) {
                return Err(bad(format!("label {l} of example {i} is out of range for {} classes", m.classes)));
            }
        }
        m.thresholds.validate().map_err(|e| bad(format!("thresholds: {e}")))?;
        Ok(())
    }

    fn tensor_parts(&self) -> Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)> {
        let m = &self.meta;
        let mut shape = vec![m.examples];
        shape.extend(&m.example_shape);
        let mut parts = vec![
            (tensors::INPUTS, Dtype::F32, shape, f32_bytes(&self.inputs)),
            (tensors::TEACHER_LOGITS, Dtype::F32, vec![m.examples, m.classes], f32_bytes(&self.teacher_logits)),
            (tensors::STUDENT_LOGITS, Dtype::F32, vec![m.examples, m.classes], f32_bytes(&self.student_logits)),
        ];
        if let Some(l) = &self.labels {
            parts.push((tensors::LABELS, Dtype::U32, vec![m.examples], u32_bytes(l)));
        }
        parts
    }

    /// The bundle as safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let meta_json = serde_json::to_string(&self.meta).map_err(|e| bad(format!("cannot encode metadata: {e}")))?;
        let parts = self.tensor_parts();
        let sum = checksum(
            &meta_json,
            &parts.iter().map(|(n, d, s, b)| (*n, *d, s.clone(), b.as_slice())).collect::<Vec<_>>(),
        );
        let views = parts
            .iter()
            .map(|(n, d, s, b)| Ok((n.to_string(), TensorView::new(*d, s.clone(), b).map_err(|e| bad(e.to_string()))?)))
            .collect::<Result<Vec<_>>>()?;
        let metadata = HashMap::from([(META_KEY.to_string(), meta_json), (CHECKSUM_KEY.to_string(), sum)]);
        safetensors::serialize(views, Some(metadata)).map_err(|e| bad(format!("cannot encode the bundle: {e}")))
    }

    /// Writes the bundle atomically (temporary file, then rename).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::onnx::write_atomic(path.as_ref(), &self.to_bytes()?)
    }

    /// Reads a bundle file.
    pub fn read(path: impl AsRef<Path>) -> Result<Bundle> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes)
    }

    /// Parses and checks a bundle: a truncated, padded, bit-flipped or inconsistent file is an [`Error::Bundle`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Bundle> {
        crate::error::catch_panic("reading parity bundle", || Self::parse(bytes))
    }

    fn parse(bytes: &[u8]) -> Result<Bundle> {
        use safetensors::SafeTensorError as E;
        let st = SafeTensors::deserialize(bytes).map_err(|e| match e {
            E::MetadataIncompleteBuffer | E::InvalidHeaderLength | E::HeaderTooSmall => bad(format!(
                "the file is truncated or has trailing bytes ({} bytes do not match its header: {e})",
                bytes.len()
            )),
            other => bad(format!("not a readable safetensors file: {other}")),
        })?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let md = header.metadata().clone().unwrap_or_default();
        let meta_json =
            md.get(META_KEY).ok_or_else(|| bad(format!("no `{META_KEY}` metadata: not a pupil parity bundle")))?;
        let stored_sum = md.get(CHECKSUM_KEY).ok_or_else(|| bad(format!("no `{CHECKSUM_KEY}` metadata")))?;
        if let Some(extra) = md.keys().find(|k| *k != META_KEY && *k != CHECKSUM_KEY) {
            return Err(bad(format!("unexpected metadata key `{extra}`")));
        }
        let known = [tensors::INPUTS, tensors::TEACHER_LOGITS, tensors::STUDENT_LOGITS, tensors::LABELS];
        let names = st.names();
        if let Some(extra) = names.iter().find(|n| !known.contains(*n)) {
            return Err(bad(format!("unexpected tensor `{extra}`")));
        }
        let inputs = need(&st, tensors::INPUTS)?;
        let teacher = need(&st, tensors::TEACHER_LOGITS)?;
        let student = need(&st, tensors::STUDENT_LOGITS)?;
        let labels = get(&st, tensors::LABELS, Dtype::U32)?;
        let mut parts: Vec<(&str, Dtype, Vec<usize>, &[u8])> = vec![
            (tensors::INPUTS, Dtype::F32, inputs.shape().to_vec(), inputs.data()),
            (tensors::TEACHER_LOGITS, Dtype::F32, teacher.shape().to_vec(), teacher.data()),
            (tensors::STUDENT_LOGITS, Dtype::F32, student.shape().to_vec(), student.data()),
        ];
        if let Some(l) = &labels {
            parts.push((tensors::LABELS, Dtype::U32, l.shape().to_vec(), l.data()));
        }
        let computed = checksum(meta_json, &parts);
        if &computed != stored_sum {
            return Err(bad(format!(
                "checksum mismatch: the bundle was modified or corrupted (stored {stored_sum}, computed {computed})"
            )));
        }
        let meta: BundleMeta =
            serde_json::from_str(meta_json).map_err(|e| bad(format!("unreadable `{META_KEY}` metadata: {e}")))?;
        let mut shape = vec![meta.examples];
        shape.extend(&meta.example_shape);
        let expect_shape = |name: &str, got: &[usize], expected: &[usize]| {
            if got != expected {
                Err(bad(format!("tensor `{name}` has shape {got:?}, the metadata declares {expected:?}")))
            } else {
                Ok(())
            }
        };
        expect_shape(tensors::INPUTS, inputs.shape(), &shape)?;
        expect_shape(tensors::TEACHER_LOGITS, teacher.shape(), &[meta.examples, meta.classes])?;
        expect_shape(tensors::STUDENT_LOGITS, student.shape(), &[meta.examples, meta.classes])?;
        if let Some(l) = &labels {
            expect_shape(tensors::LABELS, l.shape(), &[meta.examples])?;
        }
        let floats =
            |t: &TensorView| t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let bundle = Bundle {
            inputs: floats(&inputs),
            teacher_logits: floats(&teacher),
            student_logits: floats(&student),
            labels: labels
                .map(|t| t.data().chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            meta,
        };
        bundle.validate()?;
        Ok(bundle)
    }
}
