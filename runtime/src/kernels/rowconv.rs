//! Direct f32 convolutions read straight from the unpadded input planes on AVX-512, row by row: masked loads
//! stand in for the zero padding, so there is no phase-split copy of the input and no flat output run to copy
//! out (the two passes [`super::taps`] pays per plane). Square 3×3 and 5×5 kernels, stride 1 or 2 (even columns
//! picked by one permute), any padding a [`Window`] allows; other windows and instruction sets keep
//! [`super::taps`]. Planes narrower than a vector at stride 1 run [`Flat`]: the plane as one run of values, 16
//! outputs of several rows per vector.

use super::taps::Window;

/// Input planes summed into one output plane at most (a depthwise convolution reads one; a dense one, such as
/// an image stem, up to [`super::MAX_DIRECT_INPUTS`]).
pub(crate) const MAX_PLANES: usize = super::MAX_DIRECT_INPUTS;

/// Whether [`plane`] computes this window (given AVX-512F: the caller checks the CPU).
pub(crate) fn supports(win: &Window) -> bool {
    win.kh == win.kw && matches!(win.kh, 3 | 5) && win.sh == win.sw && matches!(win.sh, 1 | 2)
}

/// One output plane of a direct convolution:
/// `out[oy · ow + ox] = clamp(bias + Σ_i Σ_{ky,kx} w[(i · k + ky) · k + kx] · x_i[oy·s + ky − pt][ox·s + kx − pl])`
/// over the `x.len() / (h · w)` input planes laid one after another in `x`, reading 0 outside each plane;
/// `clamp` is `(lo, hi)`. Returns `false`, computing nothing, when the window is not [`supports`]ed, the CPU
/// lacks AVX-512F or the buffers are mis-sized.
pub(crate) fn plane(win: &Window, x: &[f32], w: &[f32], bias: f32, clamp: (f32, f32), out: &mut [f32]) -> bool {
    let (plane, k) = (win.h * win.w, win.kh);
    let planes = x.len() / plane.max(1);
    if !supports(win) || !(1..=MAX_PLANES).contains(&planes) || x.len() != planes * plane || w.len() != planes * k * k {
        return false;
    }
    if out.len() != win.oh * win.ow {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F detected; the lengths are checked above, and every load is masked to the lanes
        // inside its input row, every store to the lanes inside its output row.
        unsafe {
            macro_rules! planes {
                ($k:literal, $s:literal) => {
                    match planes {
                        1 => x86::plane::<$k, $s, 1>(win, x, w, bias, clamp, out),
                        2 => x86::plane::<$k, $s, 2>(win, x, w, bias, clamp, out),
                        3 => x86::plane::<$k, $s, 3>(win, x, w, bias, clamp, out),
                        _ => x86::plane::<$k, $s, 4>(win, x, w, bias, clamp, out),
                    }
                };
            }
            match (k, win.sh) {
                (3, 1) => planes!(3, 1),
                (3, _) => planes!(3, 2),
                (5, 1) => planes!(5, 1),
                _ => planes!(5, 2),
            }
        }
        return true;
    }
    let _ = (bias, clamp);
    false
}

/// Output planes of at most this many values (9 AVX-512 vectors: a 12 × 12 plane) may run [`Flat`].
pub(crate) const FLAT_MAX_OUTPUTS: usize = 144;

/// A stride-1 convolution over planes narrower than a vector (MobileNet's 6 × 6 and 12 × 12 depthwise layers;
/// the row kernels fill 6 of 16 lanes on a 6-wide plane) computed over each plane as one run of values: with
/// the output as wide as the input, output `o = oy · w + ox` reads `x[o + (ky − pt) · w + kx − pl]`, so each
/// tap is one masked load per 16 outputs of several rows, the mask dropping the lanes whose tap falls outside
/// the image (the padding).
#[derive(Debug, Clone)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // run only where AVX-512 can run it
pub(crate) struct Flat {
    /// Input planes summed into one output plane.
    planes: usize,
    /// Values of one input plane.
    plane: usize,
    outputs: usize,
    vectors: usize,
    /// Per tap (`[plane][ky][kx]`, the weights' order): the offset from an output's index to the value it reads.
    delta: Vec<isize>,
    /// Per tap, per vector of outputs: the lanes whose value is inside the image.
    masks: Vec<u16>,
}

impl Flat {
    /// The flat form of `win` over `planes` input planes per output, or `None` when the window is not stride 1,
    /// its output rows are not as wide as its input rows, rows are 16 wide or more, the plane has more than
    /// [`FLAT_MAX_OUTPUTS`] outputs or `planes` is not in `1..=MAX_PLANES`.
    pub(crate) fn new(win: &Window, planes: usize) -> Option<Flat> {
        let outputs = win.oh * win.ow;
        if !cfg!(target_arch = "x86_64")
            || win.sh != 1
            || win.sw != 1
            || win.ow != win.w
            || win.w >= 16
            || outputs > FLAT_MAX_OUTPUTS
            || !(1..=MAX_PLANES).contains(&planes)
        {
            return None;
        }
        let (h, w, kh, kw) = (win.h as isize, win.w as isize, win.kh, win.kw);
        let (pt, pl) = (win.pt as isize, win.pl as isize);
        let taps = planes * kh * kw;
        let vectors = outputs.div_ceil(16);
        let mut delta = Vec::with_capacity(taps);
        let mut masks = vec![0u16; taps * vectors];
        for t in 0..taps {
            let (i, ky, kx) = (t / (kh * kw), (t / kw % kh) as isize, (t % kw) as isize);
            delta.push((i * win.h * win.w) as isize + (ky - pt) * w + kx - pl);
            for o in 0..outputs {
                let (y, x) = ((o / win.ow) as isize + ky - pt, (o % win.ow) as isize + kx - pl);
                if (0..h).contains(&y) && (0..w).contains(&x) {
                    masks[t * vectors + o / 16] |= 1 << (o % 16);
                }
            }
        }
        Some(Flat { planes, plane: win.h * win.w, outputs, vectors, delta, masks })
    }

    /// Output planes `p < bias.len()`: `out[p][o] = clamp(bias[p] + Σ_t w[p][t] · x[p][o + delta[t]])` over the
    /// taps inside the image, where `x[p]` are the input planes of output plane `p` (`planes` of them, one after
    /// another; consecutive output planes read consecutive groups, as in a depthwise convolution) and `w[p]` its
    /// `planes · kh · kw` weights. Returns `false`, computing nothing, without AVX-512F or with mis-sized buffers.
    pub(crate) fn run(&self, x: &[f32], w: &[f32], bias: &[f32], clamp: (f32, f32), out: &mut [f32]) -> bool {
        let count = bias.len();
        if x.len() != count * self.planes * self.plane
            || w.len() != count * self.delta.len()
            || out.len() != count * self.outputs
        {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F detected, the lengths checked above; every load is masked to lanes whose value is
            // inside its output plane's input planes (`new`), every store to the plane's outputs.
            unsafe {
                match self.vectors {
                    1 => x86::flat::<1>(self, x, w, bias, clamp, out),
                    2 => x86::flat::<2>(self, x, w, bias, clamp, out),
                    3 => x86::flat::<3>(self, x, w, bias, clamp, out),
                    4 => x86::flat::<4>(self, x, w, bias, clamp, out),
                    5 => x86::flat::<5>(self, x, w, bias, clamp, out),
                    6 => x86::flat::<6>(self, x, w, bias, clamp, out),
                    7 => x86::flat::<7>(self, x, w, bias, clamp, out),
                    8 => x86::flat::<8>(self, x, w, bias, clamp, out),
                    _ => x86::flat::<9>(self, x, w, bias, clamp, out),
                }
            }
            return true;
        }
        let _ = clamp;
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Flat, Window};

    /// [`Flat::run`] for planes of `NV` vectors of outputs: every tap's weight broadcast once for all of them,
    /// the planes one after another in one loop (the next plane's loads overlap the last one's sums).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn flat<const NV: usize>(
        f: &Flat,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        (lo, hi): (f32, f32),
        out: &mut [f32],
    ) {
        let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let taps = f.delta.len();
        let planes = x.chunks_exact(f.planes * f.plane).zip(w.chunks_exact(taps));
        for ((x, w), (&b, out)) in planes.zip(bias.iter().zip(out.chunks_exact_mut(f.outputs))) {
            let mut acc = [_mm512_set1_ps(b); NV];
            for ((&d, masks), &wt) in f.delta.iter().zip(f.masks.chunks_exact(NV)).zip(w) {
                let wt = _mm512_set1_ps(wt);
                let base = x.as_ptr().wrapping_offset(d);
                for (v, (acc, &m)) in acc.iter_mut().zip(masks).enumerate() {
                    // SAFETY: the caller's contract: the lanes of `m` are inside `x`; the others are not read.
                    let xv = unsafe { _mm512_maskz_loadu_ps(m, base.wrapping_add(16 * v)) };
                    *acc = _mm512_fmadd_ps(xv, wt, *acc);
                }
            }
            for (v, acc) in acc.iter().enumerate() {
                let n = (f.outputs - 16 * v).min(16);
                // SAFETY: the first `n` lanes are outputs `16v..16v + n < outputs = out.len()`.
                unsafe {
                    _mm512_mask_storeu_ps(
                        out.as_mut_ptr().add(16 * v),
                        crate::kernels::first_lanes(n),
                        _mm512_min_ps(_mm512_max_ps(*acc, vlo), vhi),
                    )
                };
            }
        }
    }

    /// The lanes `j` of a 16-value load starting at column `s` of a row `w` values long with `0 ≤ s + j < w`.
    #[inline(always)]
    fn inside(s: isize, w: isize) -> __mmask16 {
        let from = if s >= 0 {
            0xffff
        } else if s <= -16 {
            0
        } else {
            0xffffu16 << -s
        };
        let n = (w - s).clamp(0, 16);
        let to = crate::kernels::first_lanes(n as usize);
        from & to
    }

    /// Where load `l` of a row starts, relative to the column block's first input column `s`: `s + l` at
    /// stride 1 (one load per tap `kx = l`); at stride 2, loads `2p` and `2p + 1` are the pair at `s + 2p` and
    /// `s + 2p + 16` that serves taps `2p` and `2p + 1`.
    #[inline(always)]
    fn load_at<const S: usize>(l: usize) -> isize {
        if S == 1 { l as isize } else { (l / 2 * 2 + l % 2 * 16) as isize }
    }

    /// The `K` vectors `x[s + kx + S·c(j)]` (`kx < K`, lanes `j < 16`) of one row, 0 outside it, from the loads'
    /// lane masks `masks` ([`load_at`]'s order; all zero for a row outside the image): `K` masked loads for
    /// stride 1 (`c(j) = j`); for stride 2 a pair of loads per two taps, split into even and odd values by
    /// in-lane shuffles (`vshufps`, cheaper than a two-source permute per tap: 48 → 24 × 96 34.0 → 31.7 µs),
    /// which leave column `c(j) = [0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15][j]` in lane `j`: the
    /// block's sums are put back in order by one permute ([`UNSHUFFLE`]) before their store.
    #[inline(always)]
    unsafe fn row_taps<const K: usize, const S: usize>(row: *const f32, s: isize, masks: &[__mmask16]) -> [__m512; K] {
        // SAFETY: the caller runs with AVX-512F; masked-off lanes are not read, so the (wrapping) pointers may
        // point outside the row.
        unsafe {
            let load = |l: usize| _mm512_maskz_loadu_ps(masks[l], row.wrapping_offset(s + load_at::<S>(l)));
            if S == 1 {
                std::array::from_fn(load)
            } else {
                let mut v = [_mm512_setzero_ps(); K];
                let mut kx = 0;
                while kx < K {
                    let (a, b) = (load(kx), load(kx + 1));
                    v[kx] = _mm512_shuffle_ps::<0x88>(a, b);
                    if kx + 1 < K {
                        v[kx + 1] = _mm512_shuffle_ps::<0xdd>(a, b);
                    }
                    kx += 2;
                }
                v
            }
        }
    }

    /// The taps of one input plane summed into the [`ROWS`] accumulators of a block: input row `y0 + t` feeds
    /// output row `r` through kernel row `t − r·S`. With `EDGE`, rows outside `0 ≤ y < h` are read through
    /// all-zero masks (stride 1) or skipped (stride 2); without, every row must be inside.
    #[inline(always)]
    unsafe fn rows<const K: usize, const S: usize, const EDGE: bool>(
        xp: *const f32,
        (y0, h, wd): (isize, isize, isize),
        s0: isize,
        masks: &[__mmask16; 6],
        wv: &[[__m512; K]; K],
        acc: &mut [__m512; ROWS],
    ) {
        let taps = |t: usize| {
            let y = y0 + t as isize;
            let keep = if !EDGE || (0..h).contains(&y) { 0xffff } else { 0 };
            let row_masks: [__mmask16; 6] = std::array::from_fn(|l| if EDGE { masks[l] & keep } else { masks[l] });
            // SAFETY: the caller's: the row is inside the plane, or (EDGE) read through all-zero masks.
            unsafe { row_taps::<K, S>(xp.wrapping_offset(y * wd), s0, &row_masks) }
        };
        if S == 1 {
            // Each input row loaded once for the (up to K) output rows it feeds.
            for t in 0..(ROWS - 1) * S + K {
                let v = taps(t);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let Some(ky) = t.checked_sub(r * S).filter(|ky| *ky < K) else { continue };
                    for kx in 0..K {
                        // SAFETY: the caller runs with AVX-512F.
                        *acc = unsafe { _mm512_fmadd_ps(v[kx], wv[ky][kx], *acc) };
                    }
                }
            }
        } else {
            // At stride 2 neighbouring output rows share one input row in three: loading it again costs less
            // than the registers its values would hold (in the row-major order the compiler spilled them).
            for (r, acc) in acc.iter_mut().enumerate() {
                for (ky, wv) in wv.iter().enumerate() {
                    let y = y0 + (r * S + ky) as isize;
                    if EDGE && !(0..h).contains(&y) {
                        continue;
                    }
                    // SAFETY: row `y` is inside the plane.
                    let v = unsafe { row_taps::<K, S>(xp.wrapping_offset(y * wd), s0, masks) };
                    for kx in 0..K {
                        // SAFETY: the caller runs with AVX-512F.
                        *acc = unsafe { _mm512_fmadd_ps(v[kx], wv[kx], *acc) };
                    }
                }
            }
        }
    }

    /// The lane of a stride-2 block's sums holding output column `j` of the block (the inverse of
    /// [`row_taps`]' column order).
    const UNSHUFFLE: [i32; 16] = [0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15];

    /// Output rows computed together: each input row loaded once serves every one of them its window covers,
    /// and their accumulators are independent chains.
    const ROWS: usize = 4;

    /// [`super::plane`] for a `K × K` kernel at stride `S` over `P` input planes:
    /// [`ROWS`] output rows by 16 columns at a time, each block summing every plane's taps in registers before
    /// one clamped store. Column blocks are the outer loop, so the loads' lane masks are computed once per
    /// column block and stay in mask registers down the plane (computed per block, they cost as much as the
    /// taps: 48 → 24 × 96 at stride 2 31.7 → 24.0 µs, 24 × 24 × 144 at stride 1 24.2 → 21.0 µs, 48 × 48 × 16
    /// 7.9 → 6.4 µs, kernel alone, min of 2000), and blocks whose rows all lie inside the image run without any
    /// row test (at stride 1 the inner loops then have no branches and constant trip counts: 24 × 24 × 144
    /// 39.6 → 33.9 µs, 48 × 48 × 16 12.5 → 9.2 µs; stride 2 unchanged).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn plane<const K: usize, const S: usize, const P: usize>(
        win: &Window,
        x: &[f32],
        w: &[f32],
        bias: f32,
        (lo, hi): (f32, f32),
        out: &mut [f32],
    ) {
        let (h, wd) = (win.h as isize, win.w as isize);
        let (pt, pl) = (win.pt as isize, win.pl as isize);
        let (oh, ow, plane) = (win.oh, win.ow, win.h * win.w);
        let (vbias, vlo, vhi) = (_mm512_set1_ps(bias), _mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let wv: [[[__m512; K]; K]; P] = std::array::from_fn(|i| {
            std::array::from_fn(|ky| std::array::from_fn(|kx| _mm512_set1_ps(w[(i * K + ky) * K + kx])))
        });
        // Loads per row: K at stride 1, K + 1 (pairs) at stride 2; at most 6 for K = 5.
        let loads = if S == 1 { K } else { K + 1 };
        let o = out.as_mut_ptr();
        // SAFETY: `UNSHUFFLE` is 16 `i32`, one vector.
        let unshuffle = unsafe { _mm512_loadu_si512(UNSHUFFLE.as_ptr().cast()) };
        // SAFETY (loop body): `x` holds `planes` planes of `h × w` and `out` one of `oh × ow` (checked by the
        // caller); rows outside `0 ≤ y < h` are loaded with all-zero masks (nothing read), other loads are
        // masked to their rows, stores to the lanes inside their output row (and nothing for the rows of a last
        // block past `oh`).
        unsafe {
            let mut ox0 = 0;
            while ox0 < ow {
                let n = (ow - ox0).min(16);
                let cols = crate::kernels::first_lanes(n);
                let s0 = (ox0 * S) as isize - pl;
                let mut masks = [0 as __mmask16; 6];
                for (l, m) in masks.iter_mut().enumerate().take(loads) {
                    *m = inside(s0 + load_at::<S>(l), wd);
                }
                for oy0 in (0..oh).step_by(ROWS) {
                    let y0 = (oy0 * S) as isize - pt;
                    let mut acc = [vbias; ROWS];
                    let inner = y0 >= 0 && y0 + ((ROWS - 1) * S + K) as isize <= h;
                    for (i, wv) in wv.iter().enumerate() {
                        let xp = x.as_ptr().add(i * plane);
                        if inner {
                            rows::<K, S, false>(xp, (y0, h, wd), s0, &masks, wv, &mut acc);
                        } else {
                            rows::<K, S, true>(xp, (y0, h, wd), s0, &masks, wv, &mut acc);
                        }
                    }
                    for (r, a) in acc.into_iter().enumerate().take(oh - oy0) {
                        let a = if S == 1 { a } else { _mm512_permutexvar_ps(unshuffle, a) };
                        let a = _mm512_min_ps(_mm512_max_ps(a, vlo), vhi);
                        _mm512_mask_storeu_ps(o.add((oy0 + r) * ow + ox0), cols, a);
                    }
                }
                ox0 += 16;
            }
        }
    }
}

/// Output `(oy, ox)` of a direct convolution over `planes` input planes by its definition, in f64, for the kernels'
/// tests: `(clamped value, Σ |terms|)` (the latter scales the tolerance).
#[cfg(test)]
#[allow(clippy::too_many_arguments)] // one argument per geometric quantity
pub(crate) fn definition(
    x: &[f32],
    wts: &[f32],
    planes: usize,
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    s: usize,
    (pt, pl): (usize, usize),
    bias: f32,
    clamp: (f32, f32),
    (oy, ox): (usize, usize),
) -> (f64, f64) {
    let (mut exact, mut mag) = (bias as f64, bias.abs() as f64);
    for i in 0..planes {
        for ky in 0..kh {
            for kx in 0..kw {
                let (y, xx) = ((oy * s + ky) as isize - pt as isize, (ox * s + kx) as isize - pl as isize);
                if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                    continue;
                }
                let v = x[(i * h + y as usize) * w + xx as usize] as f64 * wts[(i * kh + ky) * kw + kx] as f64;
                exact += v;
                mag += v.abs();
            }
        }
    }
    (exact.max(clamp.0 as f64).min(clamp.1 as f64), mag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::zoo::Rng;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every window the row kernels take (3×3 / 5×5, stride 1 / 2, every padding below the kernel size) over
        /// 1..=4 planes of 1..40 × 1..40, with a clamp: within
        /// `1e-5 · (1 + Σ|w·x|)` of the definition computed in f64.
        #[test]
        fn row_kernels_match_the_definition(
            k in prop_oneof![Just(3usize), Just(5)], s in 1usize..=2, planes in 1usize..=4,
            (h, w) in (1usize..40, 1usize..40), pads in (0usize..5, 0usize..5, 0usize..5, 0usize..5),
            clamp in prop_oneof![Just((f32::NEG_INFINITY, f32::INFINITY)), Just((0.0f32, 0.5f32))], seed in any::<u64>(),
        ) {
            let (pt, pb, pl, pr) = (pads.0 % k, pads.1 % k, pads.2 % k, pads.3 % k);
            prop_assume!(h + pt + pb >= k && w + pl + pr >= k);
            let (oh, ow) = ((h + pt + pb - k) / s + 1, (w + pl + pr - k) / s + 1);
            let win = Window::new((h, w), (k, k), (s, s), (pt, pl), (oh, ow)).expect("a window");
            let mut rng = Rng::new(seed);
            let x: Vec<f32> = (0..planes * h * w).map(|_| rng.sym(1.0)).collect();
            let wts: Vec<f32> = (0..planes * k * k).map(|_| rng.sym(1.0)).collect();
            let bias = rng.sym(1.0);
            let mut out = vec![f32::NAN; oh * ow];
            let ran = plane(&win, &x, &wts, bias, clamp, &mut out);
            prop_assert_eq!(ran, crate::kernels::avx512f());
            if !ran {
                return Ok(());
            }
            for oy in 0..oh {
                for ox in 0..ow {
                    let (exact, mag) = definition(&x, &wts, planes, (h, w), (k, k), s, (pt, pl), bias, clamp, (oy, ox));
                    let got = out[oy * ow + ox] as f64;
                    prop_assert!((got - exact).abs() <= 1e-5 * (1.0 + mag), "({}, {}): {} vs {}", oy, ox, got, exact);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every stride-1 window with outputs as wide as the inputs (1..16 columns, up to 144 outputs), kernels of
        /// 1..=5 × 1..=5, every padding that keeps the width, 1..=4 input planes per output, 1..=3 output planes,
        /// with a clamp: within `1e-5 · (1 + Σ|w·x|)` of the definition computed in f64.
        #[test]
        fn the_flat_kernel_matches_the_definition(
            (kh, kw) in (1usize..=5, 1usize..=5), planes in 1usize..=4, count in 1usize..=3, (h, w) in (1usize..20, 1usize..16),
            (pt, pb, pl) in (0usize..5, 0usize..5, 0usize..5),
            clamp in prop_oneof![Just((f32::NEG_INFINITY, f32::INFINITY)), Just((0.0f32, 0.5f32))], seed in any::<u64>(),
        ) {
            let (pt, pb, pl) = (pt % kh, pb % kh, pl % kw);
            prop_assume!(h + pt + pb >= kh);
            let (oh, ow) = (h + pt + pb - kh + 1, w);
            prop_assume!(oh * ow <= FLAT_MAX_OUTPUTS);
            let Some(win) = Window::new((h, w), (kh, kw), (1, 1), (pt, pl), (oh, ow)) else { return Ok(()) };
            // Built only on x86-64 (the kernel is AVX-512).
            let Some(flat) = Flat::new(&win, planes) else {
                prop_assert!(!cfg!(target_arch = "x86_64"), "a flat window");
                return Ok(());
            };
            let mut rng = Rng::new(seed);
            let x: Vec<f32> = (0..count * planes * h * w).map(|_| rng.sym(1.0)).collect();
            let wts: Vec<f32> = (0..count * planes * kh * kw).map(|_| rng.sym(1.0)).collect();
            let bias: Vec<f32> = (0..count).map(|_| rng.sym(1.0)).collect();
            let mut out = vec![f32::NAN; count * oh * ow];
            let ran = flat.run(&x, &wts, &bias, clamp, &mut out);
            prop_assert_eq!(ran, crate::kernels::avx512f());
            if !ran {
                return Ok(());
            }
            for p in 0..count {
                let (x, wts) = (&x[p * planes * h * w..], &wts[p * planes * kh * kw..]);
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (exact, mag) =
                            definition(x, wts, planes, (h, w), (kh, kw), 1, (pt, pl), bias[p], clamp, (oy, ox));
                        let got = out[(p * oh + oy) * ow + ox] as f64;
                        prop_assert!((got - exact).abs() <= 1e-5 * (1.0 + mag), "plane {} ({}, {}): {} vs {}", p, oy, ox, got, exact);
                    }
                }
            }
        }
    }

    #[test]
    fn flat_refuses_other_windows_and_mis_sized_buffers() {
        let win = |(h, w), s, (oh, ow)| Window::new((h, w), (3, 3), (s, s), (1, 1), (oh, ow)).unwrap();
        assert!(Flat::new(&win((6, 6), 2, (3, 3)), 1).is_none(), "stride 2");
        assert!(Flat::new(&win((16, 16), 1, (16, 16)), 1).is_none(), "16 wide");
        assert!(Flat::new(&win((15, 15), 1, (15, 15)), 1).is_none(), "225 outputs");
        assert!(Flat::new(&win((6, 6), 1, (6, 6)), 5).is_none(), "5 planes");
        let f = Flat::new(&win((6, 6), 1, (6, 6)), 1);
        assert_eq!(f.is_some(), cfg!(target_arch = "x86_64"), "6 × 6, stride 1: built on x86-64 only");
        let Some(f) = f else { return };
        assert!(!f.run(&[0.0; 71], &[0.0; 18], &[0.0; 2], (0.0, 1.0), &mut [0.0; 72]), "short input");
        assert!(!f.run(&[0.0; 72], &[0.0; 17], &[0.0; 2], (0.0, 1.0), &mut [0.0; 72]), "short weights");
        assert!(!f.run(&[0.0; 72], &[0.0; 18], &[0.0; 2], (0.0, 1.0), &mut [0.0; 71]), "short output");
    }

    #[test]
    fn unsupported_windows_and_mis_sized_buffers_are_refused() {
        let win3 = Window::new((4, 4), (3, 3), (3, 3), (0, 0), (1, 1)).unwrap();
        assert!(!plane(&win3, &[0.0; 16], &[0.0; 9], 0.0, (0.0, 1.0), &mut [0.0; 1]), "stride 3");
        let win = Window::new((4, 4), (3, 3), (1, 1), (1, 1), (4, 4)).unwrap();
        assert!(!plane(&win, &[0.0; 15], &[0.0; 9], 0.0, (0.0, 1.0), &mut [0.0; 16]), "short input");
        assert!(!plane(&win, &[0.0; 16], &[0.0; 8], 0.0, (0.0, 1.0), &mut [0.0; 16]), "short weights");
        assert!(!plane(&win, &[0.0; 16], &[0.0; 9], 0.0, (0.0, 1.0), &mut [0.0; 15]), "short output");
        assert!(!plane(&win, &[0.0; 80], &[0.0; 45], 0.0, (0.0, 1.0), &mut [0.0; 16]), "5 planes");
    }
}
