//! The f32 sliding-window engine behind pupil's direct convolutions and max pool: the 2-D window geometry, the
//! padded input plane split by stride phase (so that every window tap reads one contiguous run), and the tap
//! loops (multiply-add or max) for AVX-512, AVX2 + FMA, NEON and scalar.
//!
//! An input plane `H × W`, padded to `Hp × Wp` and read with strides `sh × sw`, is stored as `sh · sw` phase
//! planes of `ph × pw` values: padded row `py` and column `px` land in phase `(py % sh, px % sw)` at
//! `(py / sh, px / sw)`. Output `(oy, ox)` of tap `(ky, kx)` reads padded `(oy·sh + ky, ox·sw + kx)`, that is
//! phase `(ky % sh, kx % sw)` at `(oy + ky / sh, ox + kx / sw)`. With `pw = ow + (kw - 1) / sw`, the flat index
//! `j = oy · pw + ox` then reads `base(tap) + j` for every output: one 1-D loop over `oh · pw` values per tap,
//! whose `(kw - 1) / sw` extra values per row are computed and dropped when the rows are copied out.

use super::qgemv::Isa;

/// The flat output runs are computed in multiples of this many values (four AVX-512 registers).
pub(crate) const BLOCK: usize = 64;

/// The f32 instruction set a sliding-window kernel runs on, chosen from pupil's [`Isa`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Simd {
    Scalar,
    /// x86-64 AVX2 with FMA, 8 lanes.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2Fma,
    /// x86-64 AVX-512F, 16 lanes.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
    /// aarch64 NEON, 4 lanes.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    Neon,
}

impl Simd {
    /// The instruction set's name in reports: `scalar`, `avx2_fma`, `avx512f`, `neon`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Simd::Scalar => "scalar",
            Simd::Avx2Fma => "avx2_fma",
            Simd::Avx512 => "avx512f",
            Simd::Neon => "neon",
        }
    }

    /// The f32 kernels for an integer [`Isa`] level: AVX-512 VNNI → AVX-512F, AVX2 → AVX2 + FMA when the CPU has
    /// FMA (scalar otherwise), NEON / NEON dotprod → NEON.
    pub(crate) fn for_isa(isa: Isa) -> Simd {
        match isa {
            Isa::Scalar => Simd::Scalar,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") => {
                Simd::Avx2Fma
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni if std::arch::is_x86_feature_detected!("avx512f") => Simd::Avx512,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon | Isa::NeonDotprod => Simd::Neon,
            _ => Simd::Scalar,
        }
    }
}

/// The geometry of a 2-D sliding window over one `h × w` plane (dilation 1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Window {
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    /// Padding before the first row / column.
    pub pt: usize,
    pub pl: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Window {
    /// A window, or `None` when the numbers do not make one (zero sizes, an output row or column whose window
    /// lies entirely in the padding, or an output that reads past the padded input).
    #[allow(clippy::too_many_arguments)] // one argument per geometric quantity
    pub(crate) fn new(
        (h, w): (usize, usize),
        (kh, kw): (usize, usize),
        (sh, sw): (usize, usize),
        (pt, pl): (usize, usize),
        (oh, ow): (usize, usize),
    ) -> Option<Window> {
        if [h, w, kh, kw, sh, sw, oh, ow].contains(&0) || pt >= kh || pl >= kw {
            return None;
        }
        // The last window must start on or before the last input row / column.
        if (oh - 1) * sh > h - 1 + pt || (ow - 1) * sw > w - 1 + pl {
            return None;
        }
        Some(Window { h, w, kh, kw, sh, sw, pt, pl, oh, ow })
    }

    /// Rows of one phase plane.
    pub(crate) fn ph(&self) -> usize {
        self.oh + (self.kh - 1) / self.sh
    }
    /// Columns of one phase plane (also the row pitch of the flat output).
    pub(crate) fn pw(&self) -> usize {
        self.ow + (self.kw - 1) / self.sw
    }
    /// Values of the `sh · sw` phase planes of one input plane.
    pub(crate) fn plane_len(&self) -> usize {
        self.sh * self.sw * self.ph() * self.pw()
    }
    /// Length of the flat output run, rounded up to [`BLOCK`].
    pub(crate) fn flat_len(&self) -> usize {
        (self.oh * self.pw()).div_ceil(BLOCK) * BLOCK
    }
    /// Length of a buffer holding `planes` phase-split planes, with the slack the flat loops read past them.
    pub(crate) fn buffer_len(&self, planes: usize) -> usize {
        planes * self.plane_len() + (self.kw - 1) / self.sw + BLOCK
    }
    /// Start of tap `(ky, kx)` in a phase-split plane.
    pub(crate) fn tap_base(&self, ky: usize, kx: usize) -> usize {
        (((ky % self.sh) * self.sw + kx % self.sw) * self.ph() + ky / self.sh) * self.pw() + kx / self.sw
    }

    /// Writes the `h × w` plane `src` into the phase-split plane `dst` (of [`plane_len`](Self::plane_len)
    /// values), leaving the padding positions untouched: the caller fills them once per buffer (0 for a
    /// convolution, −∞ for a max pool) since they are the same for every plane.
    pub(crate) fn scatter(&self, simd: Simd, src: &[f32], dst: &mut [f32]) {
        match simd {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
                // SAFETY: AVX-512F detected.
                unsafe { x86::scatter_avx512(self, src, dst) }
            }
            _ => self.scatter_with(src, dst, |s, d| copy(simd, s, d), |s, e, o| deinterleave2(simd, s, e, o)),
        }
    }

    /// [`scatter`](Self::scatter) with the row moves given: `copy(src, dst)` on slices of equal lengths,
    /// `split(src, even, odd)` on `even` / `odd` of `⌈n / 2⌉` / `⌊n / 2⌋` values. Inlined into each caller so
    /// that the moves of an instruction set are compiled into the row loop.
    #[inline(always)]
    fn scatter_with(
        &self,
        src: &[f32],
        dst: &mut [f32],
        mut copy: impl FnMut(&[f32], &mut [f32]),
        mut split: impl FnMut(&[f32], &mut [f32], &mut [f32]),
    ) {
        let (ph, pw, sw) = (self.ph(), self.pw(), self.sw);
        // Input columns that reach the phase planes (columns past the last window are never read).
        let cols = self.w.min(pw * sw - self.pl);
        // Padded row `py = iy + pt` is row `r = py / sh` of row phase `rp = py % sh`, stepped without dividing.
        let (mut r, mut rp) = (self.pt / self.sh, self.pt % self.sh);
        for row in src.chunks_exact(self.w).take(self.h) {
            if r >= ph {
                break;
            }
            let first = (rp * sw * ph + r) * pw;
            rp += 1;
            if rp == self.sh {
                (r, rp) = (r + 1, 0);
            }
            let row = &row[..cols];
            match sw {
                1 => copy(row, &mut dst[first + self.pl..][..cols]),
                2 => {
                    // Input columns 2i and 2i + 1 land in the two column phases, in an order and at offsets
                    // set by the parity of the left padding.
                    let (phase0, phase1) = dst.split_at_mut(first + ph * pw);
                    let (phase0, phase1) = (&mut phase0[first..], &mut phase1[..pw]);
                    let (n_even, n_odd) = (cols.div_ceil(2), cols / 2);
                    let half = self.pl / 2;
                    let (even, odd) = if self.pl.is_multiple_of(2) {
                        (&mut phase0[half..half + n_even], &mut phase1[half..half + n_odd])
                    } else {
                        (&mut phase1[half..half + n_even], &mut phase0[half + 1..half + 1 + n_odd])
                    };
                    split(row, even, odd);
                }
                _ => {
                    for (ix, v) in row.iter().enumerate() {
                        let px = ix + self.pl;
                        dst[first + (px % sw) * ph * pw + px / sw] = *v;
                    }
                }
            }
        }
    }

    /// Copies the `oh × ow` outputs out of a flat run (row pitch [`pw`](Self::pw)).
    pub(crate) fn gather(&self, simd: Simd, flat: &[f32], out: &mut [f32]) {
        match simd {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
                // SAFETY: AVX-512F detected.
                unsafe { x86::gather_avx512(self, flat, out) }
            }
            _ => self.gather_with(flat, out, |s, d| copy(simd, s, d)),
        }
    }

    /// [`gather`](Self::gather) with the row copy given (see [`scatter_with`](Self::scatter_with)).
    #[inline(always)]
    fn gather_with(&self, flat: &[f32], out: &mut [f32], mut copy: impl FnMut(&[f32], &mut [f32])) {
        let pw = self.pw();
        for (oy, o) in out.chunks_exact_mut(self.ow).take(self.oh).enumerate() {
            copy(&flat[oy * pw..oy * pw + self.ow], o);
        }
    }
}

/// `dst.copy_from_slice(src)`, without a `memcpy` call for the short rows of a plane on AVX-512.
fn copy(simd: Simd, src: &[f32], dst: &mut [f32]) {
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 if src.len() == dst.len() && std::arch::is_x86_feature_detected!("avx512f") => {
            // SAFETY: AVX-512F detected; equal lengths checked.
            unsafe { x86::copy_avx512(src, dst) }
        }
        _ => dst.copy_from_slice(src),
    }
}

/// `even[i] = src[2i]`, `odd[i] = src[2i + 1]`, for `even` of `⌈n / 2⌉` and `odd` of `⌊n / 2⌋` values.
fn deinterleave2(simd: Simd, src: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let (even, odd) = (&mut even[..src.len().div_ceil(2)], &mut odd[..src.len() / 2]);
    let done = match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
            // SAFETY: AVX-512F detected; the lengths are checked by the slicing above.
            unsafe { x86::deinterleave2_avx512(src, even, odd) }
        }
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2Fma | Simd::Avx512 if std::arch::is_x86_feature_detected!("avx2") => {
            // SAFETY: AVX2 detected; the lengths are checked by the slicing above.
            unsafe { x86::deinterleave2_avx2(src, even, odd) }
        }
        #[cfg(target_arch = "aarch64")]
        Simd::Neon => {
            // SAFETY: NEON is part of the aarch64 baseline; the lengths are checked by the slicing above.
            unsafe { arm::deinterleave2_neon(src, even, odd) }
        }
        _ => 0,
    };
    // What the vector loop left (it handles whole blocks of input pairs).
    for i in done..even.len() {
        even[i] = src[2 * i];
        if let Some(o) = odd.get_mut(i) {
            *o = src[2 * i + 1];
        }
    }
}

/// One tap of a window: where its run starts in the phase-split buffer, and its weight (unused by max).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Tap {
    pub base: usize,
    pub w: f32,
}

/// What the tap loop computes at every flat position `j`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Reduce {
    /// `bias + Σ_t w_t · buf[base_t + j]`, then clamped: `min(max(·, lo), hi)` (±∞ for no clamp: a fused
    /// ReLU is `lo = 0`, a ReLU6 `lo = 0, hi = 6`).
    MulAdd { bias: f32, lo: f32, hi: f32 },
    /// `max_t buf[base_t + j]`.
    Max,
}

/// Runs the taps over the flat run `out` (a multiple of [`BLOCK`] long). Returns `false`, computing nothing,
/// when a tap would read past `buf` (the callers size the buffers so that this never happens).
pub(crate) fn run(simd: Simd, reduce: Reduce, buf: &[f32], taps: &[Tap], out: &mut [f32]) -> bool {
    let reach = taps.iter().map(|t| t.base).max().unwrap_or(0) + out.len();
    if taps.is_empty() || reach > buf.len() || !out.len().is_multiple_of(BLOCK) {
        return false;
    }
    match simd {
        Simd::Scalar => scalar(reduce, buf, taps, out),
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
            // SAFETY: AVX-512F detected; every tap reads `buf[base .. base + out.len()]`, checked above, and
            // `out.len()` is a multiple of BLOCK = 4 × 16 lanes.
            unsafe { x86::avx512(reduce, buf, taps, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2Fma if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") => {
            // SAFETY: AVX2 and FMA detected; reads checked above; `out.len()` is a multiple of 4 × 8 lanes.
            unsafe { x86::avx2(reduce, buf, taps, out) }
        }
        #[cfg(target_arch = "aarch64")]
        Simd::Neon => {
            // SAFETY: NEON is part of the aarch64 baseline; reads checked above; `out.len()` is a multiple of
            // 4 × 4 lanes.
            unsafe { arm::neon(reduce, buf, taps, out) }
        }
        _ => scalar(reduce, buf, taps, out),
    }
    true
}

/// The portable loop, also the reference for the vector ones (which may round differently: they use FMA).
fn scalar(reduce: Reduce, buf: &[f32], taps: &[Tap], out: &mut [f32]) {
    match reduce {
        Reduce::MulAdd { bias, lo, hi } => {
            out.fill(bias);
            for t in taps {
                for (o, x) in out.iter_mut().zip(&buf[t.base..]) {
                    *o += t.w * x;
                }
            }
            for o in out.iter_mut() {
                *o = o.max(lo).min(hi);
            }
        }
        Reduce::Max => {
            out.fill(f32::NEG_INFINITY);
            for t in taps {
                for (o, x) in out.iter_mut().zip(&buf[t.base..]) {
                    *o = o.max(*x);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Reduce, Tap, Window};
    use std::arch::x86_64::*;

    /// Four 16-lane accumulators per step of 64 outputs, all taps into them, then one store each.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512(reduce: Reduce, buf: &[f32], taps: &[Tap], out: &mut [f32]) {
        let (b, o) = (buf.as_ptr(), out.as_mut_ptr());
        let mut j = 0;
        // SAFETY (whole body): the caller checked `base + out.len() <= buf.len()` for every tap and that
        // `out.len()` is a multiple of 64, so every 16-lane load and store below is in bounds.
        unsafe {
            while j < out.len() {
                match reduce {
                    Reduce::MulAdd { bias, lo, hi } => {
                        let z = _mm512_set1_ps(bias);
                        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
                        for t in taps {
                            let w = _mm512_set1_ps(t.w);
                            let p = b.add(t.base + j);
                            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(p), w, a0);
                            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(p.add(16)), w, a1);
                            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(p.add(32)), w, a2);
                            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(p.add(48)), w, a3);
                        }
                        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
                        let clamp = |a| _mm512_min_ps(_mm512_max_ps(a, lo), hi);
                        let (a0, a1, a2, a3) = (clamp(a0), clamp(a1), clamp(a2), clamp(a3));
                        _mm512_storeu_ps(o.add(j), a0);
                        _mm512_storeu_ps(o.add(j + 16), a1);
                        _mm512_storeu_ps(o.add(j + 32), a2);
                        _mm512_storeu_ps(o.add(j + 48), a3);
                    }
                    Reduce::Max => {
                        let z = _mm512_set1_ps(f32::NEG_INFINITY);
                        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
                        for t in taps {
                            let p = b.add(t.base + j);
                            a0 = _mm512_max_ps(a0, _mm512_loadu_ps(p));
                            a1 = _mm512_max_ps(a1, _mm512_loadu_ps(p.add(16)));
                            a2 = _mm512_max_ps(a2, _mm512_loadu_ps(p.add(32)));
                            a3 = _mm512_max_ps(a3, _mm512_loadu_ps(p.add(48)));
                        }
                        _mm512_storeu_ps(o.add(j), a0);
                        _mm512_storeu_ps(o.add(j + 16), a1);
                        _mm512_storeu_ps(o.add(j + 32), a2);
                        _mm512_storeu_ps(o.add(j + 48), a3);
                    }
                }
                j += 64;
            }
        }
    }

    /// [`Window::scatter`] with AVX-512 row moves compiled into its loop.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scatter_avx512(win: &Window, src: &[f32], dst: &mut [f32]) {
        win.scatter_with(
            src,
            dst,
            // SAFETY (both): this function runs with AVX-512F, detected by its caller; `scatter_with` passes
            // equal lengths to `copy` and the ⌈n / 2⌉ / ⌊n / 2⌋ lengths `deinterleave2_avx512` needs.
            |s, d| unsafe { copy_avx512(s, d) },
            |s, e, o| {
                unsafe { deinterleave2_avx512(s, e, o) };
            },
        )
    }

    /// [`Window::gather`] with AVX-512 row copies compiled into its loop.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gather_avx512(win: &Window, flat: &[f32], out: &mut [f32]) {
        // SAFETY: AVX-512F detected by the caller; `gather_with` passes slices of equal lengths.
        win.gather_with(flat, out, |s, d| unsafe { copy_avx512(s, d) })
    }

    /// Deinterleaves all of `src` (`even` / `odd` of at least `⌈n / 2⌉` / `⌊n / 2⌋` values), the last partial
    /// block with masked loads and stores; returns `⌈n / 2⌉`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn deinterleave2_avx512(src: &[f32], even: &mut [f32], odd: &mut [f32]) -> usize {
        let n = src.len();
        let ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let (s, e, o) = (src.as_ptr(), even.as_mut_ptr(), odd.as_mut_ptr());
        let mut i = 0;
        // SAFETY: full blocks read src[i .. i + 32] and write even / odd[i / 2 .. i / 2 + 16], inside the
        // slices (`even` and `odd` hold ⌈n / 2⌉ and ⌊n / 2⌋ values); the last block only touches the lanes its
        // masks enable (masked-off lanes are neither read nor written, and do not fault).
        unsafe {
            while i + 32 <= n {
                let lo = _mm512_loadu_ps(s.add(i));
                let hi = _mm512_loadu_ps(s.add(i + 16));
                _mm512_storeu_ps(e.add(i / 2), _mm512_permutex2var_ps(lo, ie, hi));
                _mm512_storeu_ps(o.add(i / 2), _mm512_permutex2var_ps(lo, io, hi));
                i += 32;
            }
            let rem = n - i;
            if rem > 0 {
                let mask = |k: usize| ((1u32 << k.min(16)) - 1) as __mmask16;
                let lo = _mm512_maskz_loadu_ps(mask(rem), s.add(i));
                let hi = _mm512_maskz_loadu_ps(mask(rem.saturating_sub(16)), s.add(i + 16));
                _mm512_mask_storeu_ps(e.add(i / 2), mask(rem.div_ceil(2)), _mm512_permutex2var_ps(lo, ie, hi));
                _mm512_mask_storeu_ps(o.add(i / 2), mask(rem / 2), _mm512_permutex2var_ps(lo, io, hi));
            }
        }
        n.div_ceil(2)
    }

    /// `dst = src` (same lengths), the last partial vector with a masked load and store.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn copy_avx512(src: &[f32], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        // SAFETY: full vectors copy [i, i + 16) with i + 16 <= n; the last one only the lanes below n.
        unsafe {
            while i + 16 <= n {
                _mm512_storeu_ps(d.add(i), _mm512_loadu_ps(s.add(i)));
                i += 16;
            }
            if i < n {
                let mask = ((1u32 << (n - i)) - 1) as __mmask16;
                _mm512_mask_storeu_ps(d.add(i), mask, _mm512_maskz_loadu_ps(mask, s.add(i)));
            }
        }
    }

    /// Deinterleaves blocks of 16 inputs; returns how many output pairs it wrote.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn deinterleave2_avx2(src: &[f32], even: &mut [f32], odd: &mut [f32]) -> usize {
        let blocks = src.len() / 16;
        // SAFETY: block b reads src[16b .. 16b + 16] and writes even / odd[8b .. 8b + 8], inside the slices.
        unsafe {
            for b in 0..blocks {
                let lo = _mm256_loadu_ps(src.as_ptr().add(16 * b));
                let hi = _mm256_loadu_ps(src.as_ptr().add(16 * b + 8));
                // [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6] → 64-bit lanes 0 2 1 3: [lo0 lo2 lo4 lo6 hi0 hi2 hi4 hi6].
                let e = _mm256_castps_pd(_mm256_shuffle_ps::<0b10_00_10_00>(lo, hi));
                let o = _mm256_castps_pd(_mm256_shuffle_ps::<0b11_01_11_01>(lo, hi));
                let e = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(e));
                let o = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(o));
                _mm256_storeu_ps(even.as_mut_ptr().add(8 * b), e);
                _mm256_storeu_ps(odd.as_mut_ptr().add(8 * b), o);
            }
        }
        blocks * 8
    }

    /// Four 8-lane accumulators per step of 32 outputs.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(reduce: Reduce, buf: &[f32], taps: &[Tap], out: &mut [f32]) {
        let (b, o) = (buf.as_ptr(), out.as_mut_ptr());
        let mut j = 0;
        // SAFETY (whole body): as for `avx512`; `out.len()` is a multiple of 32.
        unsafe {
            while j < out.len() {
                match reduce {
                    Reduce::MulAdd { bias, lo, hi } => {
                        let z = _mm256_set1_ps(bias);
                        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
                        for t in taps {
                            let w = _mm256_set1_ps(t.w);
                            let p = b.add(t.base + j);
                            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p), w, a0);
                            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8)), w, a1);
                            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(16)), w, a2);
                            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(24)), w, a3);
                        }
                        let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
                        let clamp = |a| _mm256_min_ps(_mm256_max_ps(a, lo), hi);
                        let (a0, a1, a2, a3) = (clamp(a0), clamp(a1), clamp(a2), clamp(a3));
                        _mm256_storeu_ps(o.add(j), a0);
                        _mm256_storeu_ps(o.add(j + 8), a1);
                        _mm256_storeu_ps(o.add(j + 16), a2);
                        _mm256_storeu_ps(o.add(j + 24), a3);
                    }
                    Reduce::Max => {
                        let z = _mm256_set1_ps(f32::NEG_INFINITY);
                        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
                        for t in taps {
                            let p = b.add(t.base + j);
                            a0 = _mm256_max_ps(a0, _mm256_loadu_ps(p));
                            a1 = _mm256_max_ps(a1, _mm256_loadu_ps(p.add(8)));
                            a2 = _mm256_max_ps(a2, _mm256_loadu_ps(p.add(16)));
                            a3 = _mm256_max_ps(a3, _mm256_loadu_ps(p.add(24)));
                        }
                        _mm256_storeu_ps(o.add(j), a0);
                        _mm256_storeu_ps(o.add(j + 8), a1);
                        _mm256_storeu_ps(o.add(j + 16), a2);
                        _mm256_storeu_ps(o.add(j + 24), a3);
                    }
                }
                j += 32;
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{Reduce, Tap};
    use std::arch::aarch64::*;

    /// Deinterleaves blocks of 8 inputs (`ld2`); returns how many output pairs it wrote.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn deinterleave2_neon(src: &[f32], even: &mut [f32], odd: &mut [f32]) -> usize {
        let blocks = src.len() / 8;
        // SAFETY: block b reads src[8b .. 8b + 8] and writes even / odd[4b .. 4b + 4], inside the slices.
        unsafe {
            for b in 0..blocks {
                let v = vld2q_f32(src.as_ptr().add(8 * b));
                vst1q_f32(even.as_mut_ptr().add(4 * b), v.0);
                vst1q_f32(odd.as_mut_ptr().add(4 * b), v.1);
            }
        }
        blocks * 4
    }

    /// Four 4-lane accumulators per step of 16 outputs.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn neon(reduce: Reduce, buf: &[f32], taps: &[Tap], out: &mut [f32]) {
        let (b, o) = (buf.as_ptr(), out.as_mut_ptr());
        let mut j = 0;
        // SAFETY (whole body): the caller checked `base + out.len() <= buf.len()` for every tap and that
        // `out.len()` is a multiple of 16, so every 4-lane load and store below is in bounds.
        unsafe {
            while j < out.len() {
                match reduce {
                    Reduce::MulAdd { bias, lo, hi } => {
                        let z = vdupq_n_f32(bias);
                        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
                        for t in taps {
                            let w = vdupq_n_f32(t.w);
                            let p = b.add(t.base + j);
                            a0 = vfmaq_f32(a0, vld1q_f32(p), w);
                            a1 = vfmaq_f32(a1, vld1q_f32(p.add(4)), w);
                            a2 = vfmaq_f32(a2, vld1q_f32(p.add(8)), w);
                            a3 = vfmaq_f32(a3, vld1q_f32(p.add(12)), w);
                        }
                        let (lo, hi) = (vdupq_n_f32(lo), vdupq_n_f32(hi));
                        let clamp = |a| vminq_f32(vmaxq_f32(a, lo), hi);
                        let (a0, a1, a2, a3) = (clamp(a0), clamp(a1), clamp(a2), clamp(a3));
                        vst1q_f32(o.add(j), a0);
                        vst1q_f32(o.add(j + 4), a1);
                        vst1q_f32(o.add(j + 8), a2);
                        vst1q_f32(o.add(j + 12), a3);
                    }
                    Reduce::Max => {
                        let z = vdupq_n_f32(f32::NEG_INFINITY);
                        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
                        for t in taps {
                            let p = b.add(t.base + j);
                            a0 = vmaxq_f32(a0, vld1q_f32(p));
                            a1 = vmaxq_f32(a1, vld1q_f32(p.add(4)));
                            a2 = vmaxq_f32(a2, vld1q_f32(p.add(8)));
                            a3 = vmaxq_f32(a3, vld1q_f32(p.add(12)));
                        }
                        vst1q_f32(o.add(j), a0);
                        vst1q_f32(o.add(j + 4), a1);
                        vst1q_f32(o.add(j + 8), a2);
                        vst1q_f32(o.add(j + 12), a3);
                    }
                }
                j += 16;
            }
        }
    }
}
