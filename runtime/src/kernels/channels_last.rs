//! The f32 depthwise convolution and max pool over channels-last images (`[h, w, c]`, tract's HWC / NHWC, which
//! its declutter picks for depthwise convolutions on aarch64): vectorised along the channels, borders handled by
//! skipping the taps that fall in the padding. The loops are plain Rust compiled once per instruction set
//! (AVX-512, AVX2 + FMA, NEON, scalar), where the compiler turns them into vector code.

use super::taps::{Simd, Window};

/// Channels per register block: the accumulators stay in registers (4 AVX-512, 8 AVX2, 16 NEON registers).
const CB: usize = 64;

/// Windows up to this many taps (7 × 7) take the fast path; larger kernels are refused by the builder.
pub(crate) const MAX_TAPS: usize = 49;

/// `out[oy, ox, c] = clamp(bias[c] + Σ_{ky, kx} w[(ky · kw + kx) · c_n + c] · x[oy·sh + ky − pt, ox·sw + kx − pl, c])`
/// for one image; `w` holds the taps channel-minor (`[kh · kw][c_n]`). `false` (nothing computed) for a window
/// of more than [`MAX_TAPS`] taps or mis-sized buffers.
#[allow(clippy::too_many_arguments)] // the operands of one convolution
pub(crate) fn depthwise(
    simd: Simd,
    win: &Window,
    c_n: usize,
    w: &[f32],
    bias: &[f32],
    (lo, hi): (f32, f32),
    x: &[f32],
    out: &mut [f32],
) -> bool {
    if win.kh * win.kw > MAX_TAPS
        || w.len() != win.kh * win.kw * c_n
        || bias.len() != c_n
        || x.len() != win.h * win.w * c_n
        || out.len() != win.oh * win.ow * c_n
    {
        return false;
    }
    let args = (win, c_n, w, bias, (lo, hi), x, out);
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") =>
        {
            // SAFETY: AVX-512F and FMA detected.
            unsafe { x86::depthwise_avx512(args) }
        }
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2Fma if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") => {
            // SAFETY: AVX2 and FMA detected.
            unsafe { x86::depthwise_avx2(args) }
        }
        // NEON is part of the aarch64 baseline, FMA included: the plain build is the NEON build.
        Simd::Neon => depthwise_with::<true>(args),
        _ => depthwise_with::<false>(args),
    }
    true
}

/// `out[oy, ox, c] = max_{ky, kx} x[oy·sh + ky − pt, ox·sw + kx − pl, c]` over the taps inside the image, for one
/// image.
pub(crate) fn max_pool(simd: Simd, win: &Window, c_n: usize, x: &[f32], out: &mut [f32]) -> bool {
    if x.len() != win.h * win.w * c_n || out.len() != win.oh * win.ow * c_n {
        return false;
    }
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
            // SAFETY: AVX-512F detected.
            unsafe { x86::max_pool_avx512(win, c_n, x, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2Fma if std::arch::is_x86_feature_detected!("avx2") => {
            // SAFETY: AVX2 detected.
            unsafe { x86::max_pool_avx2(win, c_n, x, out) }
        }
        _ => max_pool_with(win, c_n, x, out),
    }
    true
}

type DwArgs<'a> = (&'a Window, usize, &'a [f32], &'a [f32], (f32, f32), &'a [f32], &'a mut [f32]);

/// The taps of output `(oy, ox)` that fall inside the image: `(ky range, kx range, top-left input row / column)`.
#[inline(always)]
fn valid_taps(win: &Window, oy: usize, ox: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>, isize, isize) {
    let y0 = (oy * win.sh) as isize - win.pt as isize;
    let x0 = (ox * win.sw) as isize - win.pl as isize;
    let ky = (-y0).max(0) as usize..(win.h as isize - y0).clamp(0, win.kh as isize) as usize;
    let kx = (-x0).max(0) as usize..(win.w as isize - x0).clamp(0, win.kw as isize) as usize;
    (ky, kx, y0, x0)
}

/// `a · b + c`, fused when `FMA` (the instruction sets that have it), else plainly (no slow software fma).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

#[inline(always)]
fn depthwise_with<const FMA: bool>((win, c_n, w, bias, (lo, hi), x, out): DwArgs<'_>) {
    for oy in 0..win.oh {
        for ox in 0..win.ow {
            let (kys, kxs, y0, x0) = valid_taps(win, oy, ox);
            let o = &mut out[(oy * win.ow + ox) * c_n..][..c_n];
            // The input offset of every tap inside the image, and its weights' offset.
            let mut taps = [(0usize, 0usize); MAX_TAPS];
            let mut n_taps = 0;
            for ky in kys {
                let row = (y0 + ky as isize) as usize * win.w;
                for kx in kxs.clone() {
                    if n_taps < MAX_TAPS {
                        taps[n_taps] = ((row as isize + x0 + kx as isize) as usize * c_n, (ky * win.kw + kx) * c_n);
                    }
                    n_taps += 1;
                }
            }
            let taps = &taps[..n_taps.min(MAX_TAPS)];
            let mut cb = 0;
            // Blocks of CB, then 16 channels accumulated in registers, then the rest.
            while cb + CB <= c_n {
                block::<CB, FMA>(taps, cb, w, bias, x, &mut o[cb..cb + CB], (lo, hi));
                cb += CB;
            }
            while cb + 16 <= c_n {
                block::<16, FMA>(taps, cb, w, bias, x, &mut o[cb..cb + 16], (lo, hi));
                cb += 16;
            }
            for (i, o) in o.iter_mut().enumerate().skip(cb) {
                let mut a = bias[i];
                for &(xi, wi) in taps {
                    a = madd::<FMA>(w[wi + i], x[xi + i], a);
                }
                *o = a.max(lo).min(hi);
            }
        }
    }
}

/// `N` channels from `cb` of one output pixel, over the given `(input offset, weight offset)` taps.
#[inline(always)]
fn block<const N: usize, const FMA: bool>(
    taps: &[(usize, usize)],
    cb: usize,
    w: &[f32],
    bias: &[f32],
    x: &[f32],
    o: &mut [f32],
    (lo, hi): (f32, f32),
) {
    let mut acc = [0f32; N];
    acc.copy_from_slice(&bias[cb..cb + N]);
    for &(xi, wi) in taps {
        let (xs, ws) = (&x[xi + cb..xi + cb + N], &w[wi + cb..wi + cb + N]);
        for i in 0..N {
            acc[i] = madd::<FMA>(ws[i], xs[i], acc[i]);
        }
    }
    for (o, a) in o.iter_mut().zip(&acc) {
        *o = a.max(lo).min(hi);
    }
}

#[inline(always)]
fn max_pool_with(win: &Window, c_n: usize, x: &[f32], out: &mut [f32]) {
    for oy in 0..win.oh {
        for ox in 0..win.ow {
            let (kys, kxs, y0, x0) = valid_taps(win, oy, ox);
            let o = &mut out[(oy * win.ow + ox) * c_n..][..c_n];
            o.fill(f32::NEG_INFINITY);
            for ky in kys {
                let row = ((y0 + ky as isize) as usize * win.w) as isize;
                for kx in kxs.clone() {
                    let xi = (row + x0 + kx as isize) as usize * c_n;
                    for (o, v) in o.iter_mut().zip(&x[xi..xi + c_n]) {
                        *o = o.max(*v);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{DwArgs, Window, depthwise_with, max_pool_with};

    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn depthwise_avx512(args: DwArgs<'_>) {
        depthwise_with::<true>(args)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn depthwise_avx2(args: DwArgs<'_>) {
        depthwise_with::<true>(args)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max_pool_avx512(win: &Window, c_n: usize, x: &[f32], out: &mut [f32]) {
        max_pool_with(win, c_n, x, out)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn max_pool_avx2(win: &Window, c_n: usize, x: &[f32], out: &mut [f32]) {
        max_pool_with(win, c_n, x, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::qgemv::Isa;
    use crate::kernels::zoo::Rng;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Channels-last depthwise convolution (with a clamp) and max pool against their definitions on every ISA:
        /// channels 1..150 (so both the 64-channel blocks and the rest), sizes 1..20, kernels 1..5, strides 1..3.
        #[test]
        fn channels_last_kernels_match_the_definition_on_every_isa(
            c_n in 1usize..150, h in 1usize..20, w in 1usize..20,
            kh in 1usize..=5, kw in 1usize..=5, sh in 1usize..=3, sw in 1usize..=3,
            pads in (0usize..5, 0usize..5, 0usize..5, 0usize..5), relu6 in any::<bool>(), seed in any::<u64>(),
        ) {
            let (pt, pb, pl, pr) = (pads.0 % kh, pads.1 % kh, pads.2 % kw, pads.3 % kw);
            prop_assume!(h + pt + pb >= kh && w + pl + pr >= kw);
            let (oh, ow) = ((h + pt + pb - kh) / sh + 1, (w + pl + pr - kw) / sw + 1);
            let win = Window::new((h, w), (kh, kw), (sh, sw), (pt, pl), (oh, ow));
            prop_assert!(win.is_some());
            let win = win.unwrap();
            let mut rng = Rng::new(seed);
            let x: Vec<f32> = (0..h * w * c_n).map(|_| rng.sym(2.0)).collect();
            let wt: Vec<f32> = (0..kh * kw * c_n).map(|_| rng.sym(1.0)).collect();
            let bias: Vec<f32> = (0..c_n).map(|_| rng.sym(1.0)).collect();
            let (lo, hi) = if relu6 { (0.0, 6.0) } else { (f32::NEG_INFINITY, f32::INFINITY) };
            let (mut conv, mut mag, mut pool) = (vec![], vec![], vec![]);
            for oy in 0..oh {
                for ox in 0..ow {
                    for c in 0..c_n {
                        let (mut acc, mut abs, mut m) = (bias[c] as f64, bias[c].abs() as f64, f32::NEG_INFINITY);
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let (y, xx) = ((oy * sh + ky) as isize - pt as isize, (ox * sw + kx) as isize - pl as isize);
                                if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w {
                                    let v = x[((y as usize) * w + xx as usize) * c_n + c];
                                    let p = v as f64 * wt[(ky * kw + kx) * c_n + c] as f64;
                                    acc += p;
                                    abs += p.abs();
                                    m = m.max(v);
                                }
                            }
                        }
                        conv.push(acc.max(lo as f64).min(hi as f64));
                        mag.push(abs);
                        pool.push(m);
                    }
                }
            }
            for isa in Isa::available() {
                let simd = Simd::for_isa(isa);
                let mut out = vec![f32::NAN; conv.len()];
                prop_assert!(depthwise(simd, &win, c_n, &wt, &bias, (lo, hi), &x, &mut out));
                for (j, ((got, want), m)) in out.iter().zip(&conv).zip(&mag).enumerate() {
                    prop_assert!((*got as f64 - want).abs() <= 1e-5 * (1.0 + m), "{:?} conv output {}: {} vs {}", simd, j, got, want);
                }
                let mut out = vec![f32::NAN; pool.len()];
                prop_assert!(max_pool(simd, &win, c_n, &x, &mut out));
                prop_assert_eq!(&out, &pool, "{:?} pool", simd);
                prop_assert!(!depthwise(simd, &win, c_n, &wt[1..], &bias, (lo, hi), &x, &mut out), "short weights refused");
            }
        }
    }
}
