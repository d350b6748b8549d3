//! Quantization arithmetic: choosing scales and zero points, rounding, saturation, per-channel weight quantization.
//! Exactly the ONNX `QuantizeLinear` / `DequantizeLinear` semantics (round half to even, saturate).

use serde::{Deserialize, Serialize};

/// The integer type of quantized activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ActivationType {
    /// Unsigned 8-bit, zero point in `0..=255` (what ONNX Runtime prefers on x86).
    #[default]
    U8,
    /// Signed 8-bit, zero point in `-128..=127`.
    I8,
}

impl ActivationType {
    /// The smallest and largest integer of the type.
    pub fn range(self) -> (i32, i32) {
        match self {
            ActivationType::U8 => (0, 255),
            ActivationType::I8 => (-128, 127),
        }
    }
}

impl std::fmt::Display for ActivationType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ActivationType::U8 => "u8",
            ActivationType::I8 => "i8",
        })
    }
}

/// Scale and zero point of an affine quantization: `real = scale * (q - zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i32,
    pub dtype: ActivationType,
}

/// Rounds half to even, like ONNX `QuantizeLinear` (and numpy's `rint`).
pub fn round_half_even(x: f32) -> f32 {
    x.round_ties_even()
}

impl QParams {
    /// Asymmetric parameters covering `[min, max]`, widened to include 0 so that 0 is exactly representable
    /// (zero padding, ReLU). A degenerate or non-finite range gets scale 1.
    pub fn from_range(min: f32, max: f32, dtype: ActivationType) -> QParams {
        let (qmin, qmax) = dtype.range();
        let min = if min.is_finite() { min.min(0.0) } else { 0.0 };
        let max = if max.is_finite() { max.max(0.0) } else { 0.0 };
        let mut scale = (max - min) / (qmax - qmin) as f32;
        if !(scale.is_finite() && scale > f32::MIN_POSITIVE) {
            scale = 1.0;
        }
        let zero_point = (qmin as f32 - min / scale).round_ties_even().clamp(qmin as f32, qmax as f32) as i32;
        QParams { scale, zero_point, dtype }
    }

    /// Quantizes one value: `saturate(round_half_even(x / scale) + zero_point)`.
    pub fn quantize(&self, x: f32) -> i32 {
        let (qmin, qmax) = self.dtype.range();
        let q = round_half_even(x / self.scale) + self.zero_point as f32;
        if q.is_nan() { self.zero_point } else { q.clamp(qmin as f32, qmax as f32) as i32 }
    }

    /// Dequantizes one value.
    pub fn dequantize(&self, q: i32) -> f32 {
        (q - self.zero_point) as f32 * self.scale
    }

    /// The real interval this quantization represents.
    pub fn real_range(&self) -> (f32, f32) {
        let (qmin, qmax) = self.dtype.range();
        (self.dequantize(qmin), self.dequantize(qmax))
    }

    /// The zero point as the one raw byte ONNX stores.
    pub fn zero_point_byte(&self) -> u8 {
        match self.dtype {
            ActivationType::U8 => self.zero_point as u8,
            ActivationType::I8 => (self.zero_point as i8) as u8,
        }
    }
}

/// Symmetric int8 weights: `w ≈ scale[c] * q` with `q` in `-127..=127` and zero point 0.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeights {
    /// One scale per channel (or a single one when per-tensor).
    pub scales: Vec<f32>,
    /// Row-major like the input, one byte per weight.
    pub values: Vec<i8>,
}

/// Largest magnitude of a symmetric int8 weight (−128 is left out so that the range is symmetric).
pub const WEIGHT_QMAX: i32 = 127;

/// Scale that maps `absmax` onto 127 (1 for an all-zero channel, so that dequantizing gives zeros).
pub fn symmetric_scale(absmax: f32) -> f32 {
    let s = absmax / WEIGHT_QMAX as f32;
    if s.is_finite() && s > f32::MIN_POSITIVE { s } else { 1.0 }
}

/// Quantizes one weight with a symmetric scale.
pub fn quantize_weight(w: f32, scale: f32) -> i8 {
    let q = round_half_even(w / scale);
    if q.is_nan() { 0 } else { q.clamp(-(WEIGHT_QMAX as f32), WEIGHT_QMAX as f32) as i8 }
}

/// Quantizes a `[channels, per_channel]` row-major weight tensor symmetrically, one scale per channel
/// (`per_channel = true`) or one for the whole tensor.
pub fn quantize_weights(w: &[f32], channels: usize, per_channel: bool) -> QuantizedWeights {
    assert!(
        channels > 0 && w.len().is_multiple_of(channels),
        "weights of {} values do not split in {channels} channels",
        w.len()
    );
    let per = w.len() / channels;
    let absmax = |s: &[f32]| s.iter().fold(0f32, |m, v| if v.is_finite() { m.max(v.abs()) } else { m });
    let scales: Vec<f32> = if per_channel {
        w.chunks(per).map(|c| symmetric_scale(absmax(c))).collect()
    } else {
        vec![symmetric_scale(absmax(w))]
    };
    let values = w
        .iter()
        .enumerate()
        .map(|(i, v)| quantize_weight(*v, if per_channel { scales[i / per] } else { scales[0] }))
        .collect();
    QuantizedWeights { scales, values }
}

/// A bias in the int32 accumulator's scale: `round_half_even(b / (input_scale * weight_scale))`, saturated.
pub fn quantize_bias(b: f32, input_scale: f32, weight_scale: f32) -> i32 {
    let q = round_half_even(b / (input_scale * weight_scale)) as f64;
    if q.is_nan() { 0 } else { q.clamp(i32::MIN as f64, i32::MAX as f64) as i32 }
}

/// IEEE half precision bits of an f32 (round to nearest even), for the f16 variant.
pub fn f16_bits(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}
