//! How tensors cross the boundary: flat little-endian `f32` bytes (Kotlin `ByteArray`, Swift `Data`), one copy, no boxing.

use crate::error::PupilError;

/// Reads little-endian `f32` values from `bytes`, failing when the length is not a multiple of 4.
pub fn f32s_from_le_bytes(bytes: &[u8], what: &str) -> Result<Vec<f32>, PupilError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(PupilError::InputLength(format!(
            "{what} is {} bytes, which is not a whole number of little-endian f32 values (4 bytes each)",
            bytes.len()
        )));
    }
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Writes `values` as little-endian `f32` bytes.
pub fn f32s_to_le_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_every_bit() {
        let values = [0.0f32, -0.0, 1.5, f32::MIN_POSITIVE, -3.25e-7, 123456.79, f32::MAX];
        let bytes = f32s_to_le_bytes(&values);
        assert_eq!(bytes.len(), 28);
        assert_eq!(&bytes[8..12], &[0x00, 0x00, 0xc0, 0x3f]); // 1.5 little-endian
        let back = f32s_from_le_bytes(&bytes, "input").unwrap();
        assert_eq!(back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), values.map(f32::to_bits).to_vec());
    }

    #[test]
    fn ragged_bytes_are_an_input_length_error() {
        let err = f32s_from_le_bytes(&[0; 7], "input").unwrap_err();
        assert!(matches!(&err, PupilError::InputLength(m) if m.contains("7 bytes")), "{err:?}");
    }
}
