//! `PupilQGridConv`: int8 convolutions with stride 1 and group 1 over at least [`MIN_INPUTS`] input channels (a
//! CNN's 32→64 3×3 layer, a MobileNet's 1×1 expand and project layers) on AVX-512 VNNI and on aarch64 NEON
//! dotprod, in the shifted-grid form of [`super::gridconv`] with u8 activations and i8 weights.
//!
//! The input is quantized once per run into padded planes of 4 interleaved channels (`[c_in / 4][PH · PW][4]`
//! bytes, padding = the input zero point), so that 16 consecutive grid positions of one tap and 4 channels are
//! 64 contiguous bytes: one `vpdpbusd` against the tap's 4 weights of one output channel (broadcast) adds 64
//! products to 16 accumulators, one per output position. 4 output channels × 64 positions are computed at a
//! time (16 accumulators). On aarch64, `sdot` (by element) multiplies 4 positions × 4 channels (16 bytes) by
//! the 4 weights of one of 4 output channels held in one register; it is i8 × i8, so the planes hold `x − 128`
//! and `128 · Σ w` is folded into the bias. The exact `i32` sums are requantized like ONNX Runtime's `QLinearConv` (`(Σ + bias) ·
//! sx · sw / sy`, clamped, rounded half to even, plus the output zero point), and written dequantized (the f32
//! graph around the operator carries the int8 model's activations as their f32 values, see [`super::qconv`]).
//! A portable version of the same arithmetic ([`Isa::Scalar`]) gives bitwise the same outputs; it is the
//! reference the tests hold the VNNI and dotprod kernels to, not a fast path (other CPUs keep the f32 kernels).

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

use super::dwconv::conv_parts;
use super::gridconv::Grid;
use super::matmul::following_bias;
use super::qconv::{Int8Conv, Int8Convs};
use super::qgemv::Isa;
use super::requant::{self, Stage};
use super::scratch::Kept;
use super::taps::Simd;
use super::team;
use tract_linalg::multithread::Executor;

/// Multiply-adds per image below which the product is not shared with the thread pool (about 3 µs of VNNI work).
const MIN_SPLIT_MACS: usize = 400_000;

/// Fewer input channels than this stay on the f32 direct kernel (a quad of 4 channels would be mostly padding).
pub(crate) const MIN_INPUTS: usize = 8;
/// Output channels per block of packed weights.
const R: usize = 4;
/// Grid positions per vector.
const LANES: usize = 16;

/// One int8 convolution packed for the kernel.
#[derive(Debug)]
pub(crate) struct QGridConv {
    g: Grid,
    c_out: usize,
    kh: usize,
    kw: usize,
    /// Per quad of terms (input-channel quad, tap): the cell it reads at grid position 0.
    offsets: Vec<usize>,
    /// Vectors of 16 grid positions covering the `oh · pw` grid.
    blocks: usize,
    /// Cells (4 bytes each) of the quantized planes, reads past the last plane included.
    cells: usize,
    /// `[c_out / R rounded up][quads][R]`: the 4 weights of one quad for one output channel, as one `i32`.
    w: Vec<i32>,
    /// `bias − x_zero · Σ w` per output channel (`+ 128 · Σ w` when the planes hold `x − 128`), padded like `w`.
    bias: Vec<i32>,
    /// `sx · sw / sy` per output channel (padded like `w`).
    mult: Vec<f32>,
    x_inv: f32,
    x_zero: u8,
    /// XORed into every quantized activation: `0x80` for the i8 × i8 `sdot` kernel (the planes hold `x − 128`).
    flip: u8,
    /// Requantized values are clamped to `[lo, hi]` (the u8 range less the output zero point).
    lo: f32,
    hi: f32,
    y_scale: f32,
    scratch: Kept<Scratch>,
}

/// The quantized planes and the output over the whole grid, kept between runs (the padding stays the zero
/// point: only the image's own cells are written).
#[derive(Debug)]
pub(crate) struct Scratch {
    x4: Vec<u8>,
    staged: Vec<f32>,
}

impl QGridConv {
    /// The packed form of `spec` (group 1) over `g` for `isa`'s kernel; `None` when the numbers disagree.
    pub(crate) fn new(spec: &Int8Conv, g: Grid, isa: Isa) -> Option<QGridConv> {
        let flip = if isa == Isa::NeonDotprod { 0x80 } else { 0 };
        let [c_out, c_in, kh, kw] = spec.dims;
        let positive = |s: f32| s.is_finite() && s > 0.0;
        if !positive(spec.x_scale)
            || !positive(spec.y_scale)
            || spec.group != 1
            || c_in != g.c_in
            || c_out == 0
            || spec.weight.len() != c_out * c_in * kh * kw
            || spec.w_scale.len() != c_out
            || spec.bias.len() != c_out
            || g.ph < g.oh + kh - 1
            || g.pw < g.ow + kw - 1
            || g.ph < g.pt + g.h
            || g.pw < g.pl + g.w
        {
            return None;
        }
        let cq = c_in.div_ceil(4);
        let mut offsets = Vec::with_capacity(cq * kh * kw);
        for q in 0..cq {
            for ky in 0..kh {
                for kx in 0..kw {
                    offsets.push(q * g.plane() + ky * g.pw + kx);
                }
            }
        }
        let quads = offsets.len();
        let blocks = (g.oh * g.pw).div_ceil(LANES);
        let cells = (offsets.iter().max().copied().unwrap_or(0) + blocks * LANES).max(cq * g.plane());
        let c_pad = c_out.div_ceil(R) * R;
        let wt = |o: usize, c: usize, y: usize, x: usize| -> i8 {
            if o < c_out && c < c_in { spec.weight[((o * c_in + c) * kh + y) * kw + x] } else { 0 }
        };
        let mut w = Vec::with_capacity(c_pad * quads);
        for ob in 0..c_pad / R {
            for q in 0..cq {
                for ky in 0..kh {
                    for kx in 0..kw {
                        for r in 0..R {
                            let o = ob * R + r;
                            let b: [u8; 4] = std::array::from_fn(|j| wt(o, q * 4 + j, ky, kx) as u8);
                            w.push(i32::from_le_bytes(b));
                        }
                    }
                }
            }
        }
        let mut bias = vec![0i32; c_pad];
        let mut mult = vec![0f32; c_pad];
        for o in 0..c_out {
            let sum: i32 = spec.weight[o * c_in * kh * kw..(o + 1) * c_in * kh * kw].iter().map(|&v| v as i32).sum();
            let shift = if flip == 0 { spec.x_zero as i32 } else { spec.x_zero as i32 - 128 };
            bias[o] = spec.bias[o].checked_sub(shift * sum)?;
            // ONNX Runtime's order: (sx · sw) / sy, in f32.
            mult[o] = spec.x_scale * spec.w_scale[o] / spec.y_scale;
        }
        Some(QGridConv {
            g,
            c_out,
            kh,
            kw,
            offsets,
            blocks,
            cells,
            w,
            bias,
            mult,
            x_inv: 1.0 / spec.x_scale,
            x_zero: spec.x_zero,
            flip,
            lo: -(spec.y_zero as f32),
            hi: 255.0 - spec.y_zero as f32,
            y_scale: spec.y_scale,
            scratch: Kept::new(),
        })
    }

    /// `c_in · kh · kw`: products summed per output value.
    fn terms(&self) -> usize {
        self.g.c_in * self.kh * self.kw
    }

    /// Whether the grid is the output itself (no columns to crop: a 1×1 convolution without padding).
    fn direct(&self) -> bool {
        self.g.pw == self.g.ow
    }

    /// This convolution's scratch: the kept one when no other run holds it, else a new one.
    pub(crate) fn take_scratch(&self) -> Scratch {
        self.scratch.take_or(|| Scratch {
            x4: vec![self.x_zero ^ self.flip; self.cells * 4],
            staged: if self.direct() { vec![] } else { vec![0f32; self.c_out * self.blocks * LANES] },
        })
    }

    /// Keeps `scratch` for the next run.
    pub(crate) fn keep_scratch(&self, scratch: Scratch) {
        self.scratch.keep(scratch)
    }

    /// One image `[c_in, h, w]` (f32 values on the input's int8 grid) into `out` `[c_out, oh, ow]` (the
    /// dequantized int8 outputs), on `isa`'s kernel: [`Isa::Avx512Vnni`] or [`Isa::NeonDotprod`] (what the builder
    /// accepts), any other runs the portable reference.
    ///
    /// `epilogue` (a requantization chain, see [`super::requant`]) then runs over each block of output channels
    /// while it is still in cache.
    pub(crate) fn run(
        &self,
        isa: Isa,
        x: &[f32],
        out: &mut [f32],
        s: &mut Scratch,
        epilogue: &[Stage],
        executor: &Executor,
    ) -> TractResult<()> {
        let g = &self.g;
        debug_assert_eq!(x.len(), g.c_in * g.h * g.w);
        debug_assert_eq!(out.len(), self.c_out * g.oh * g.ow);
        #[cfg(target_arch = "x86_64")]
        let vnni = isa == Isa::Avx512Vnni && vnni_available();
        #[cfg(not(target_arch = "x86_64"))]
        let vnni = false;
        #[cfg(target_arch = "aarch64")]
        let dotprod =
            isa == Isa::NeonDotprod && self.flip == 0x80 && std::arch::is_aarch64_feature_detected!("dotprod");
        #[cfg(not(target_arch = "aarch64"))]
        let dotprod = false;
        let simd = Simd::for_isa(isa);
        if vnni {
            // SAFETY: features checked; buffer sizes fixed by `new` and `take_scratch`.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                x86::quantize(self, x, &mut s.x4)
            };
        } else {
            self.quantize_scalar(x, &mut s.x4);
        }
        let (stride, direct) = if self.direct() { (g.oh * g.ow, true) } else { (self.blocks * LANES, false) };
        // Blocks of output channels, shared with the thread pool for the larger products.
        let blocks = self.c_out.div_ceil(R);
        let macs = self.c_out * self.offsets.len() * 4 * stride;
        let chunks = team::chunks(executor, blocks, macs >= MIN_SPLIT_MACS);
        let x4 = &s.x4[..];
        let dst = team::Out::new(if direct { &mut *out } else { &mut s.staged[..] });
        let ok = team::share(executor, chunks, &|chunk| {
            for ob in chunk * blocks / chunks..(chunk + 1) * blocks / chunks {
                if vnni {
                    // SAFETY: as above; the kernel writes only the rows of block `ob`, this chunk's. It runs the
                    // epilogue on its registers when it writes the output.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        x86::product(self, x4, dst.ptr(), stride, ob, if direct { epilogue } else { &[] })
                    };
                    continue;
                }
                if dotprod {
                    // SAFETY: dotprod checked; buffer sizes fixed by `new` and `take_scratch`; the kernel writes
                    // only the rows of block `ob`, this chunk's, and runs the epilogue on its registers.
                    #[cfg(target_arch = "aarch64")]
                    unsafe {
                        arm::product(self, x4, dst.ptr(), stride, ob, if direct { epilogue } else { &[] })
                    };
                    continue;
                }
                let rows = ob * R * stride..((ob + 1) * R).min(self.c_out) * stride;
                // SAFETY: block `ob`'s rows, inside the output (or staged grid), are this chunk's alone.
                let part = unsafe { dst.part(rows.start, rows.len()) };
                self.product_scalar(x4, part, stride, ob);
                if direct && !epilogue.is_empty() {
                    requant::run_in_place(simd, epilogue, part);
                }
            }
        });
        ensure!(ok, "a chunk of the int8 grid convolution panicked");
        if !direct {
            self.crop(out, &s.staged);
            if !epilogue.is_empty() {
                requant::run_in_place(simd, epilogue, out);
            }
        }
        Ok(())
    }

    /// Copies the output's columns out of the staged grid (nothing to do when the product wrote `out` itself).
    fn crop(&self, out: &mut [f32], staged: &[f32]) {
        let g = &self.g;
        if self.direct() {
            return;
        }
        for (o_plane, s_plane) in out.chunks_exact_mut(g.oh * g.ow).zip(staged.chunks_exact(self.blocks * LANES)) {
            for (o_row, s_row) in o_plane.chunks_exact_mut(g.ow).zip(s_plane.chunks_exact(g.pw)) {
                o_row.copy_from_slice(&s_row[..g.ow]);
            }
        }
    }

    fn quantize_value(&self, v: f32) -> u8 {
        (((v * self.x_inv).round_ties_even() + self.x_zero as f32).clamp(0.0, 255.0) as u8) ^ self.flip
    }

    /// The cell of channel quad `q`, image row `y`, column `x`.
    fn cell(&self, q: usize, y: usize, x: usize) -> usize {
        q * self.g.plane() + (y + self.g.pt) * self.g.pw + self.g.pl + x
    }

    fn quantize_scalar(&self, x: &[f32], x4: &mut [u8]) {
        let g = &self.g;
        for (c, plane) in x.chunks_exact(g.h * g.w).enumerate() {
            for (y, row) in plane.chunks_exact(g.w).enumerate() {
                let at = self.cell(c / 4, y, 0);
                for (i, &v) in row.iter().enumerate() {
                    x4[(at + i) * 4 + c % 4] = self.quantize_value(v);
                }
            }
        }
    }

    /// The requantized, dequantized output of one exact sum.
    fn requantize(&self, acc: i32, o: usize) -> f32 {
        let v = (acc.wrapping_add(self.bias[o]) as f32 * self.mult[o]).max(self.lo).min(self.hi);
        v.round_ties_even() * self.y_scale
    }

    /// `rows[(o − ob·R) · stride + p]` for the output channels `o` of block `ob` (whose rows `rows` holds) and the
    /// first `stride` grid positions.
    fn product_scalar(&self, x4: &[u8], rows: &mut [f32], stride: usize, ob: usize) {
        let quads = self.offsets.len();
        for o in ob * R..((ob + 1) * R).min(self.c_out) {
            let w = &self.w[(o / R) * quads * R..][..quads * R];
            for p in 0..stride.min(self.blocks * LANES) {
                let mut acc = 0i32;
                for (q, &off) in self.offsets.iter().enumerate() {
                    let wb = w[q * R + o % R].to_le_bytes();
                    let xb = &x4[(off + p) * 4..][..4];
                    for j in 0..4 {
                        let x = if self.flip == 0 { xb[j] as i32 } else { xb[j] as i8 as i32 };
                        acc += x * wb[j] as i8 as i32;
                    }
                }
                rows[(o - ob * R) * stride + p] = self.requantize(acc, o);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn vnni_available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{LANES, QGridConv, R, Stage};
    use crate::kernels::requant::stage_avx512 as stage;
    use std::arch::x86_64::*;

    /// Vectors of positions per register tile.
    const NB: usize = 4;

    /// The image's cells of the quantized planes (see [`QGridConv::quantize_scalar`]), 16 columns × 4 channels
    /// at a time, the last columns of a row with masked loads and a masked store (a plane 12 or 24 wide went
    /// through a scalar loop for all or a third of its values: int8 MobileNet 812 → 672 µs), and the planes of
    /// a 1×1 convolution, whose rows are contiguous cells, as one row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn quantize(c: &QGridConv, x: &[f32], x4: &mut [u8]) {
        let g = &c.g;
        let inv = _mm512_set1_ps(c.x_inv);
        let zero = _mm512_set1_epi32(c.x_zero as i32);
        let full = g.c_in / 4;
        // SAFETY (whole body): reads stay in `x` (c_in · h · w values), writes in `x4` (cells · 4 bytes, every
        // image cell below `cells`).
        unsafe {
            // Rows of the planes that are contiguous cells (no column padding: a 1×1 convolution) go as one run.
            let (rows, width) = if g.pw == g.w { (1, g.h * g.w) } else { (g.h, g.w) };
            for q in 0..full {
                for y in 0..rows {
                    let src = |j: usize| x.as_ptr().add((q * 4 + j) * g.h * g.w + y * width);
                    let dst = x4.as_mut_ptr().add(c.cell(q, y, 0) * 4);
                    let mut i = 0;
                    while i < width {
                        // The last vector of a run takes only its first `n` values (masked loads and store).
                        let n = (width - i).min(LANES);
                        let m16: __mmask16 = if n == LANES { !0 } else { (1 << n) - 1 };
                        let (a, b) = (q16(src(0).add(i), m16, inv, zero), q16(src(1).add(i), m16, inv, zero));
                        let (cc, d) = (q16(src(2).add(i), m16, inv, zero), q16(src(3).add(i), m16, inv, zero));
                        let (ab_lo, ab_hi) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b));
                        let (cd_lo, cd_hi) = (_mm_unpacklo_epi8(cc, d), _mm_unpackhi_epi8(cc, d));
                        let cells = _mm512_inserti32x4::<3>(
                            _mm512_inserti32x4::<2>(
                                _mm512_inserti32x4::<1>(
                                    _mm512_castsi128_si512(_mm_unpacklo_epi16(ab_lo, cd_lo)),
                                    _mm_unpackhi_epi16(ab_lo, cd_lo),
                                ),
                                _mm_unpacklo_epi16(ab_hi, cd_hi),
                            ),
                            _mm_unpackhi_epi16(ab_hi, cd_hi),
                        );
                        let m64: __mmask64 = if n == LANES { !0 } else { (1u64 << (4 * n)) - 1 };
                        _mm512_mask_storeu_epi8(dst.add(i * 4) as *mut _, m64, cells);
                        i += LANES;
                    }
                }
            }
            for ch in full * 4..g.c_in {
                for y in 0..g.h {
                    let at = c.cell(ch / 4, y, 0);
                    for i in 0..g.w {
                        x4[(at + i) * 4 + ch % 4] = c.quantize_value(x[(ch * g.h + y) * g.w + i]);
                    }
                }
            }
        }
    }

    /// Up to 16 values (the lanes of `mask`) quantized to u8: `clamp(round(v · inv) + zero, 0, 255)`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn q16(p: *const f32, mask: __mmask16, inv: __m512, zero: __m512i) -> __m128i {
        // SAFETY: the caller reads the lanes of `mask` at `p` (masked-off lanes are not read).
        let v = _mm512_cvtps_epi32(_mm512_mul_ps(unsafe { _mm512_maskz_loadu_ps(mask, p) }, inv));
        let v = _mm512_add_epi32(v, zero);
        _mm512_cvtepi32_epi8(_mm512_min_epi32(_mm512_max_epi32(v, _mm512_setzero_si512()), _mm512_set1_epi32(255)))
    }

    /// `dst[o · stride + p]` for the output channels of block `ob` and grid positions `p < stride` (see
    /// [`QGridConv::product_scalar`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn product(
        c: &QGridConv,
        x4: &[u8],
        dst: *mut f32,
        stride: usize,
        ob: usize,
        epilogue: &[Stage],
    ) {
        let quads = c.offsets.len();
        let positions = stride.min(c.blocks * LANES);
        // SAFETY: `tile` reads cells below `offsets[q] + blocks · 16 <= cells` and writes `dst` below
        // `c_out · stride` (masked past `positions`).
        unsafe {
            {
                let w = c.w.as_ptr().add(ob * quads * R);
                let mut p = 0;
                while p < positions {
                    let left = (positions - p).div_ceil(LANES);
                    match left {
                        1 => tile::<1>(c, x4, w, ob, p, dst, (stride, positions), epilogue),
                        2 => tile::<2>(c, x4, w, ob, p, dst, (stride, positions), epilogue),
                        3 => tile::<3>(c, x4, w, ob, p, dst, (stride, positions), epilogue),
                        _ => tile::<NB>(c, x4, w, ob, p, dst, (stride, positions), epilogue),
                    }
                    p += left.min(NB) * LANES;
                }
            }
        }
    }

    /// `R` output channels × `N` vectors of positions from `p0`.
    #[allow(clippy::too_many_arguments)] // the operands of one tile
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const N: usize>(
        c: &QGridConv,
        x4: &[u8],
        w: *const i32,
        ob: usize,
        p0: usize,
        dst: *mut f32,
        (stride, positions): (usize, usize),
        epilogue: &[Stage],
    ) {
        // SAFETY: see `product`.
        unsafe {
            let mut acc = [[_mm512_setzero_si512(); N]; R];
            let x = x4.as_ptr();
            for (q, &off) in c.offsets.iter().enumerate() {
                let base = x.add((off + p0) * 4);
                let xv: [__m512i; N] = std::array::from_fn(|b| _mm512_loadu_si512(base.add(b * 64) as *const _));
                let wq = w.add(q * R);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_epi32(*wq.add(r));
                    for b in 0..N {
                        acc[b] = _mm512_dpbusd_epi32(acc[b], xv[b], wv);
                    }
                }
            }
            let (lo, hi, ys) = (_mm512_set1_ps(c.lo), _mm512_set1_ps(c.hi), _mm512_set1_ps(c.y_scale));
            for (r, acc) in acc.iter().enumerate() {
                let o = ob * R + r;
                if o >= c.c_out {
                    break;
                }
                let (bias, mult) = (_mm512_set1_epi32(c.bias[o]), _mm512_set1_ps(c.mult[o]));
                for (b, acc) in acc.iter().enumerate() {
                    let p = p0 + b * LANES;
                    let v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(*acc, bias)), mult);
                    let v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
                    let v = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                    let mut v = _mm512_mul_ps(v, ys);
                    for st in epilogue {
                        v = stage(st, v);
                    }
                    let n = (positions - p).min(LANES);
                    let mask = crate::kernels::first_lanes(n);
                    _mm512_mask_storeu_ps(dst.add(o * stride + p), mask, v);
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{QGridConv, R, Stage};
    use crate::kernels::requant::stage_neon as stage;
    use std::arch::aarch64::*;

    /// Grid positions per tile: 4 vectors of 4.
    const TILE: usize = 16;

    /// `dst[o · stride + p]` for the output channels of block `ob` and grid positions `p < stride` (see
    /// [`QGridConv::product_scalar`]), then `epilogue`.
    #[target_feature(enable = "neon,dotprod")]
    pub(super) unsafe fn product(
        c: &QGridConv,
        x4: &[u8],
        dst: *mut f32,
        stride: usize,
        ob: usize,
        epilogue: &[Stage],
    ) {
        let quads = c.offsets.len();
        let positions = stride.min(c.blocks * super::LANES);
        let mut p = 0;
        // SAFETY: a tile reads cells below `offsets[q] + blocks · 16 <= cells` (tiles start below `positions`,
        // which is at most `blocks · 16`, and cover 16 positions) and writes `dst` below `c_out · stride`.
        unsafe {
            let w = c.w.as_ptr().add(ob * quads * R) as *const i8;
            while p < positions {
                tile(c, x4, w, ob, p, dst, (stride, positions), epilogue);
                p += TILE;
            }
        }
    }

    /// 4 output channels × 16 positions from `p0`.
    #[allow(clippy::too_many_arguments)] // the operands of one tile
    #[inline]
    #[target_feature(enable = "neon,dotprod")]
    unsafe fn tile(
        c: &QGridConv,
        x4: &[u8],
        w: *const i8,
        ob: usize,
        p0: usize,
        dst: *mut f32,
        (stride, positions): (usize, usize),
        epilogue: &[Stage],
    ) {
        // SAFETY: see `product`.
        unsafe {
            let mut acc = [[vdupq_n_s32(0); 4]; R];
            let x = x4.as_ptr() as *const i8;
            for (q, &off) in c.offsets.iter().enumerate() {
                let base = x.add((off + p0) * 4);
                let xv: [int8x16_t; 4] = std::array::from_fn(|b| vld1q_s8(base.add(b * 16)));
                let wv = vld1q_s8(w.add(q * R * 4));
                for (b, xv) in xv.iter().enumerate() {
                    std::arch::asm!(
                        "sdot {a0:v}.4s, {x:v}.16b, {w:v}.4b[0]",
                        "sdot {a1:v}.4s, {x:v}.16b, {w:v}.4b[1]",
                        "sdot {a2:v}.4s, {x:v}.16b, {w:v}.4b[2]",
                        "sdot {a3:v}.4s, {x:v}.16b, {w:v}.4b[3]",
                        a0 = inout(vreg) acc[0][b],
                        a1 = inout(vreg) acc[1][b],
                        a2 = inout(vreg) acc[2][b],
                        a3 = inout(vreg) acc[3][b],
                        x = in(vreg) *xv,
                        w = in(vreg) wv,
                        options(pure, nomem, nostack)
                    );
                }
            }
            let (lo, hi) = (vdupq_n_f32(c.lo), vdupq_n_f32(c.hi));
            for (r, acc) in acc.iter().enumerate() {
                let o = ob * R + r;
                if o >= c.c_out {
                    break;
                }
                let bias = vdupq_n_s32(c.bias[o]);
                for (b, acc) in acc.iter().enumerate() {
                    let p = p0 + b * 4;
                    if p >= positions {
                        break;
                    }
                    let v = vmulq_n_f32(vcvtq_f32_s32(vaddq_s32(*acc, bias)), c.mult[o]);
                    let mut v = vmulq_n_f32(vrndnq_f32(vminq_f32(vmaxq_f32(v, lo), hi)), c.y_scale);
                    for st in epilogue {
                        v = stage(st, v);
                    }
                    let out = dst.add(o * stride + p);
                    if p + 4 <= positions {
                        vst1q_f32(out, v);
                    } else {
                        let mut lanes = [0f32; 4];
                        vst1q_f32(lanes.as_mut_ptr(), v);
                        for (i, l) in lanes.iter().enumerate().take(positions - p) {
                            *out.add(i) = *l;
                        }
                    }
                }
            }
        }
    }
}

/// An int8 convolution (stride 1, group 1, channels first) on the VNNI or dotprod kernel; f32 in and out (see the
/// module documentation).
#[derive(Debug, Clone)]
pub struct PupilQGridConv {
    conv: Arc<QGridConv>,
    isa: Isa,
    out_shape: TVec<TDim>,
    /// The requantization chain after the convolution, run in its output loop (see [`Self::with_epilogue`]).
    epilogue: Vec<Stage>,
}

impl PartialEq for PupilQGridConv {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.conv, &other.conv)
            && self.isa == other.isa
            && self.out_shape == other.out_shape
            && self.epilogue == other.epilogue
    }
}
impl Eq for PupilQGridConv {}

impl PupilQGridConv {
    /// The instruction set level the operator was built for.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// `(c_in · kh · kw, output channels)`: products summed per output value, and outputs per position.
    pub fn dims(&self) -> (usize, usize) {
        (self.conv.terms(), self.conv.c_out)
    }

    /// This convolution followed by the requantization chain `stages` (appended to its epilogue). Leading grid
    /// stages that give back the convolution's own outputs (quantizing to its output grid, whose values it
    /// already writes) are dropped.
    pub(crate) fn with_epilogue(&self, stages: &[Stage]) -> PupilQGridConv {
        let c = &self.conv;
        let identity = |st: &Stage| match *st {
            Stage::Grid { mul, add, lo, hi, scale } => {
                add == 0.0 && lo <= c.lo && hi >= c.hi && scale == c.y_scale && (mul * scale - 1.0).abs() < 1e-6
            }
            Stage::Clamp { .. } => false,
        };
        let mut epilogue = self.epilogue.clone();
        let skip = if epilogue.is_empty() { stages.iter().take_while(|st| identity(st)).count() } else { 0 };
        epilogue.extend_from_slice(&stages[skip..]);
        PupilQGridConv { epilogue, ..self.clone() }
    }

    /// The requantization chain run after the convolution.
    pub fn epilogue(&self) -> &[Stage] {
        &self.epilogue
    }
}

impl Op for PupilQGridConv {
    fn name(&self) -> StaticName {
        "PupilQGridConv".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        let (g, c) = (&self.conv.g, &self.conv);
        Ok(vec![format!(
            "{}→{} channels, {}×{} kernel, {}×{} → {}×{} over a {}-wide grid, {}, {} requantization stages after",
            g.c_in,
            c.c_out,
            c.kh,
            c.kw,
            g.h,
            g.w,
            g.oh,
            g.ow,
            g.pw,
            self.isa,
            self.epilogue.len()
        )])
    }
    op_as_typed_op!();
}

impl EvalOp for PupilQGridConv {
    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (c, g) = (&self.conv, &self.conv.g);
        let mut scratch = c.take_scratch();
        let executor = tract_linalg::multithread::current_tract_executor();
        let out_len = c.c_out * g.oh * g.ow;
        let out = super::map_images(
            "PupilQGridConv",
            &inputs[0],
            (g.c_in, g.h, g.w),
            (&self.out_shape, out_len),
            ctx,
            |x, o| c.run(self.isa, x, o, &mut scratch, &self.epilogue, &executor),
        )?;
        c.keep_scratch(scratch);
        Ok(tvec!(out.into_tvalue()))
    }
    op_out_of_plan!();
}

impl TypedOp for PupilQGridConv {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.out_shape)))
    }
    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let shape = &inputs[0].shape;
        let batch: TDim = shape.iter().take(shape.len().saturating_sub(3)).product();
        let (c, g) = (&self.conv, &self.conv.g);
        let macs = c.c_out * g.oh * g.ow * c.terms();
        Ok(tvec!((Cost::FMA(DatumType::I8), batch * macs as i64)))
    }
    as_op!();
}

/// Builds the int8 operator for the f32 convolution [`super::qconv`] wrote for a `QLinearConv` (a `Conv` node,
/// or the `EinSum` tract declutters a 1×1 one to, with its bias `Add`), and the last node it replaces; `None`
/// unless `isa` is AVX-512 VNNI or NEON dotprod and the convolution has stride 1, group 1, channels first and at least
/// [`MIN_INPUTS`] input channels.
pub(crate) fn for_node(
    model: &TypedModel,
    node: &TypedNode,
    isa: Isa,
    int8: &Int8Convs,
) -> TractResult<Option<(PupilQGridConv, usize)>> {
    if !matches!(isa, Isa::Avx512Vnni | Isa::NeonDotprod) || int8.is_empty() {
        return Ok(None);
    }
    let key = node.name.strip_suffix(".einsum").unwrap_or(&node.name);
    let Some(spec) = int8.get(key) else { return Ok(None) };
    let [c_out, c_in, kh, kw] = spec.dims;
    if spec.group != 1 || c_in < MIN_INPUTS {
        return Ok(None);
    }
    let (grid, last) = if node.op_is::<EinSum>() {
        // A 1×1 convolution: `[.., c_in, h, w]` in, `[.., c_out, h, w]` out after the bias.
        let x = model.outlet_fact(node.inputs[0])?;
        let r = x.rank();
        if (kh, kw) != (1, 1) || r < 3 || x.datum_type != DatumType::F32 || x.shape[r - 3] != c_in.to_dim() {
            return Ok(None);
        }
        let (Ok(h), Ok(w)) = (x.shape[r - 2].to_usize(), x.shape[r - 1].to_usize()) else { return Ok(None) };
        let last = match following_bias(model, node, c_out, 2)? {
            Some((_, add)) => add,
            None if spec.bias.iter().all(|&b| b == 0) => node.id,
            None => return Ok(None),
        };
        let grid = Grid::padded(c_in, (h, w), (0, 0), (h, w), (1, 1));
        (grid, last)
    } else {
        let Some(parts) = conv_parts(model, node)? else { return Ok(None) };
        let w = &parts.win;
        if parts.group != 1 || parts.layout.channels_last || (w.sh, w.sw) != (1, 1) {
            return Ok(None);
        }
        if (parts.c_in, parts.c_out, w.kh, w.kw) != (c_in, c_out, kh, kw) {
            return Ok(None);
        }
        let grid = Grid::padded(c_in, (w.h, w.w), (w.pt, w.pl), (w.oh, w.ow), (kh, kw));
        (grid, node.id)
    };
    let out_fact = model.outlet_fact(OutletId::new(last, 0))?;
    let r = out_fact.rank();
    if out_fact.datum_type != DatumType::F32
        || r < 3
        || out_fact.shape[r - 3..] != [c_out.to_dim(), grid.oh.to_dim(), grid.ow.to_dim()]
    {
        return Ok(None);
    }
    let Some(conv) = QGridConv::new(spec, grid, isa) else { return Ok(None) };
    let out_shape = out_fact.shape.iter().cloned().collect();
    Ok(Some((PupilQGridConv { conv: Arc::new(conv), isa, out_shape, epilogue: vec![] }, last)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::zoo::Rng;
    use proptest::prelude::*;

    /// The ONNX definition of `QLinearConv` (stride 1, group 1), dequantized: `((Σ (x − zx) · w + b) · sx · sw /
    /// sy` rounded half to even, plus `zy`, saturated to u8, minus `zy`) · `sy`.
    fn reference(spec: &Int8Conv, g: &Grid, xq: &[u8]) -> Vec<f32> {
        let [c_out, c_in, kh, kw] = spec.dims;
        let mut out = vec![0f32; c_out * g.oh * g.ow];
        for o in 0..c_out {
            for y in 0..g.oh {
                for x in 0..g.ow {
                    let mut acc = spec.bias[o] as i64;
                    for c in 0..c_in {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let (iy, ix) = ((y + ky) as i64 - g.pt as i64, (x + kx) as i64 - g.pl as i64);
                                let v = if iy < 0 || ix < 0 || iy >= g.h as i64 || ix >= g.w as i64 {
                                    0
                                } else {
                                    xq[(c * g.h + iy as usize) * g.w + ix as usize] as i64 - spec.x_zero as i64
                                };
                                acc += v * spec.weight[((o * c_in + c) * kh + ky) * kw + kx] as i64;
                            }
                        }
                    }
                    let m = spec.x_scale * spec.w_scale[o] / spec.y_scale;
                    let q = ((acc as i32) as f32 * m).round_ties_even() + spec.y_zero as f32;
                    out[(o * g.oh + y) * g.ow + x] = (q.clamp(0.0, 255.0) - spec.y_zero as f32) * spec.y_scale;
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// 8..40 input and 1..24 output channels, images up to 17 × 17 (1 × 1 kernels without padding included),
        /// kernels 1..=5, every padding below the kernel size, zero points and scales anywhere, with and without a
        /// requantization chain after it: the scalar and the VNNI kernel give exactly the ONNX definition (then
        /// the chain), twice in a row (the kept scratch is checked too): on one thread, then with the larger
        /// products shared with a 2-thread pool.
        #[test]
        fn int8_grid_convolution_is_the_onnx_definition(
            (c_in, c_out) in (8usize..40, 1usize..24),
            (h, w) in (1usize..18, 1usize..18),
            (kh, kw) in (1usize..=5, 1usize..=5),
            pads in (0usize..5, 0usize..5, 0usize..5, 0usize..5),
            (x_zero, y_zero) in (any::<u8>(), any::<u8>()),
            with_epilogue in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let (pt, pb, pl, pr) = (pads.0 % kh, pads.1 % kh, pads.2 % kw, pads.3 % kw);
            prop_assume!(h + pt + pb >= kh && w + pl + pr >= kw);
            let (oh, ow) = (h + pt + pb - kh + 1, w + pl + pr - kw + 1);
            let mut rng = Rng::new(seed);
            let terms = c_in * kh * kw;
            let spec = Int8Conv {
                x_scale: 0.01 + rng.sym(1.0).abs() * 0.05,
                x_zero,
                y_scale: 0.05 + rng.sym(1.0).abs(),
                y_zero,
                dims: [c_out, c_in, kh, kw],
                group: 1,
                weight: (0..c_out * terms).map(|_| (rng.sym(127.5).round() as i32).clamp(-127, 127) as i8).collect(),
                w_scale: (0..c_out).map(|_| 0.001 + rng.sym(1.0).abs() * 0.01).collect(),
                bias: (0..c_out).map(|_| rng.sym(5000.0) as i32).collect(),
            };
            let g = Grid::padded(c_in, (h, w), (pt, pl), (oh, ow), (kh, kw));

            // A ReLU6-like clamp, then quantizing to another grid (what MobileNet's blocks leave after a conv).
            let epilogue = if with_epilogue {
                vec![Stage::Clamp { lo: 0.0, hi: 6.0 * spec.y_scale }, Stage::grid(1.0 / 0.07, 3, (0, 255), 0.07, 3)]
            } else {
                vec![]
            };
            // The scalar reference on both operand forms (u8 planes, and the i8 planes of `sdot`), then every
            // kernel this CPU has.
            let kernels = Isa::available().into_iter().filter(|i| matches!(i, Isa::Avx512Vnni | Isa::NeonDotprod));
            for (isa, form) in [(Isa::Scalar, Isa::Scalar), (Isa::Scalar, Isa::NeonDotprod)].into_iter().chain(kernels.map(|i| (i, i))) {
                let conv = QGridConv::new(&spec, g, form).expect("valid geometry");
                for executor in [&Executor::SingleThread, crate::kernels::team::test_pool()] {
                    let xq: Vec<u8> = (0..c_in * h * w).map(|_| (rng.sym(128.0) + 128.0).clamp(0.0, 255.0) as u8).collect();
                    // The f32 values the graph carries: the dequantized input.
                    let x: Vec<f32> = xq.iter().map(|&q| (q as i32 - x_zero as i32) as f32 * spec.x_scale).collect();
                    let want: Vec<f32> = reference(&spec, &g, &xq)
                        .into_iter()
                        .map(|v| epilogue.iter().fold(v, |v, st| st.apply(v)))
                        .collect();
                    let mut out = vec![f32::NAN; c_out * oh * ow];
                    let mut scratch = conv.take_scratch();
                    conv.run(isa, &x, &mut out, &mut scratch, &epilogue, executor).unwrap();
                    conv.keep_scratch(scratch);
                    for (i, (got, want)) in out.iter().zip(&want).enumerate() {
                        prop_assert!(got == want, "{} ({} form) at {}: {} vs {}", isa, form, i, got, want);
                    }
                }
            }
        }
    }
}
