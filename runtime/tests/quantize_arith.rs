//! Property tests of the quantization arithmetic against a scalar f64 reference written from the ONNX spec.

use proptest::prelude::*;
use pupil_runtime::quantize::arith::{
    ActivationType, QParams, WEIGHT_QMAX, quantize_bias, quantize_weight, quantize_weights, symmetric_scale,
};

/// Round half to even in f64, written out by hand.
fn ref_round(x: f64) -> f64 {
    let f = x.floor();
    let d = x - f;
    let round_up = d > 0.5 || (d == 0.5 && f % 2.0 != 0.0);
    if round_up { f + 1.0 } else { f }
}

/// ONNX QuantizeLinear: saturate(round(x / scale) + zero_point).
fn ref_quantize(x: f32, scale: f32, zp: i32, lo: i32, hi: i32) -> i32 {
    let q = ref_round((x / scale) as f64) + zp as f64;
    q.clamp(lo as f64, hi as f64) as i32
}

fn act() -> impl Strategy<Value = ActivationType> {
    prop_oneof![Just(ActivationType::U8), Just(ActivationType::I8)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The chosen parameters cover the range, keep zero exact and keep the zero point inside the type.
    #[test]
    fn qparams_cover_the_range(lo in -100f32..0.0, hi in 0f32..100.0, dt in act()) {
        prop_assume!(hi - lo > 1e-3);
        let q = QParams::from_range(lo, hi, dt);
        let (qmin, qmax) = dt.range();
        prop_assert!(q.zero_point >= qmin && q.zero_point <= qmax);
        prop_assert!((q.scale - (hi - lo) / 255.0).abs() <= 1e-6 * q.scale.max(1.0));
        // zero is exactly representable
        prop_assert_eq!(q.dequantize(q.quantize(0.0)), 0.0);
        let (rlo, rhi) = q.real_range();
        prop_assert!(rlo <= lo + q.scale * 0.5 + 1e-4, "{} vs {}", rlo, lo);
        prop_assert!(rhi >= hi - q.scale * 0.5 - 1e-4, "{} vs {}", rhi, hi);
    }

    /// A one-sided range (after ReLU) puts the zero point at the bottom of the type.
    #[test]
    fn relu_range_uses_all_levels(hi in 0.01f32..100.0, dt in act()) {
        let q = QParams::from_range(0.0, hi, dt);
        prop_assert_eq!(q.zero_point, dt.range().0);
        prop_assert_eq!(q.quantize(-1.0), dt.range().0);
    }

    /// Quantization matches the scalar reference bit for bit, including ties and saturation.
    #[test]
    fn quantize_matches_reference(x in -1000f32..1000.0, scale in 0.001f32..10.0, zp_u in 0i32..=255, dt in act()) {
        let (qmin, qmax) = dt.range();
        let zp = match dt { ActivationType::U8 => zp_u, ActivationType::I8 => zp_u - 128 };
        let q = QParams { scale, zero_point: zp, dtype: dt };
        prop_assert_eq!(q.quantize(x), ref_quantize(x, scale, zp, qmin, qmax));
    }

    /// Exact ties round to even.
    #[test]
    fn ties_round_to_even(k in -200i32..200, dt in act()) {
        let q = QParams { scale: 1.0, zero_point: 0, dtype: dt };
        let (qmin, qmax) = dt.range();
        let x = k as f32 + 0.5;
        let expected = if k % 2 == 0 { k } else { k + 1 };
        prop_assert_eq!(q.quantize(x), expected.clamp(qmin, qmax));
    }

    /// Inside the range, the round trip is within half a step; outside it saturates.
    #[test]
    fn round_trip_error(lo in -10f32..0.0, hi in 0.01f32..10.0, t in 0f32..1.0, dt in act()) {
        let q = QParams::from_range(lo, hi, dt);
        let x = lo + (hi - lo) * t;
        let err = (q.dequantize(q.quantize(x)) - x).abs();
        prop_assert!(err <= q.scale * 0.5 + 1e-5, "error {} scale {}", err, q.scale);
        prop_assert_eq!(q.quantize(hi + 1000.0 * q.scale), dt.range().1);
        prop_assert_eq!(q.quantize(lo - 1000.0 * q.scale), dt.range().0);
    }

    /// Per-channel symmetric weights: each channel's largest weight maps to ±127, every weight within half a step,
    /// and the values equal the scalar reference.
    #[test]
    fn per_channel_weights(channels in 1usize..6, per in 1usize..20, seed in any::<u64>(), zero_channel in any::<bool>()) {
        let mut s = seed;
        let mut w: Vec<f32> = (0..channels * per).map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * ((s >> 20) % 7 + 1) as f32
        }).collect();
        if zero_channel { w[..per].iter_mut().for_each(|v| *v = 0.0); }
        let q = quantize_weights(&w, channels, true);
        prop_assert_eq!(q.scales.len(), channels);
        for c in 0..channels {
            let chunk = &w[c * per..(c + 1) * per];
            let absmax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = q.scales[c];
            if absmax == 0.0 {
                prop_assert_eq!(scale, 1.0);
            } else {
                prop_assert!((scale - absmax / 127.0).abs() <= 1e-7 * absmax.max(1.0));
                prop_assert_eq!(q.values[c * per..(c + 1) * per].iter().map(|v| (*v as i32).abs()).max().unwrap(), WEIGHT_QMAX);
            }
            for (i, v) in chunk.iter().enumerate() {
                let qv = q.values[c * per + i];
                prop_assert_eq!(qv as i32, ref_quantize(*v, scale, 0, -127, 127));
                prop_assert!((qv as f32 * scale - v).abs() <= scale * 0.5 + 1e-6);
            }
        }
        // per-tensor: one scale from the global max
        let t = quantize_weights(&w, channels, false);
        prop_assert_eq!(t.scales.len(), 1);
        let absmax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        prop_assert_eq!(t.scales[0], symmetric_scale(absmax));
        for (v, qv) in w.iter().zip(&t.values) {
            prop_assert_eq!(*qv, quantize_weight(*v, t.scales[0]));
        }
    }

    /// Bias quantization in the accumulator's scale, saturating to i32.
    #[test]
    fn bias_matches_reference(b in -1e4f32..1e4, sx in 1e-4f32..1.0, sw in 1e-5f32..1.0) {
        let expected = ref_round((b / (sx * sw)) as f64).clamp(i32::MIN as f64, i32::MAX as f64) as i32;
        prop_assert_eq!(quantize_bias(b, sx, sw), expected);
    }
}

#[test]
fn bias_saturates() {
    assert_eq!(quantize_bias(1e30, 1e-6, 1e-6), i32::MAX);
    assert_eq!(quantize_bias(-1e30, 1e-6, 1e-6), i32::MIN);
}

#[test]
fn degenerate_ranges_do_not_divide_by_zero() {
    let q = QParams::from_range(0.0, 0.0, ActivationType::U8);
    assert_eq!(q.scale, 1.0);
    assert_eq!(q.quantize(0.0), 0);
    let q = QParams::from_range(f32::NAN, f32::INFINITY, ActivationType::I8);
    assert!(q.scale.is_finite() && q.scale > 0.0);
    assert_eq!(q.quantize(f32::NAN), q.zero_point);
}
