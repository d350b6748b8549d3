//! Winograd F(2×2, 3×3) for f32 3×3 stride-1 convolutions over many channels (AVX-512), inside
//! [`super::gridconv`]: 16 multiply-adds per 2×2 output tile and channel pair instead of 36.
//!
//! The output is cut into 2×2 tiles; tile `t` reads the 4×4 window `d` of the zero-padded input at `(2·ty, 2·tx)`.
//! With `V = Bᵀ d B` (per input channel) and `U = G g Gᵀ` (per kernel `g`, at load), the tile is `Aᵀ M A` where
//! `M[ξ] = Σ_c U[ξ][c] · V[ξ][c]` for each of the 16 elements ξ of a transformed tile: 16 matrix products
//! (tiles × input channels by input channels × output channels) replace the convolution's sum.
//!
//! Everything runs with 16 channels in the lanes: the image is first copied channels-last into zero-padded cells
//! (16 channels × 16 columns at a time, transposed in registers; `cells` is kept between runs and only the image's
//! cells are written), each tile's 4 × 4 cells give its 16 `V` vectors per 16 input channels; the products take up to 6 tiles × 64 output channels per step (24 accumulators,
//! each `V` value broadcast against 4 vectors of `U`), keep the 16 ξ of the step's tiles on the stack and turn
//! them into outputs at once (`Aᵀ M A`, the bias, a following ReLU / ReLU6), written into the channels-first
//! output one value per lane (tiles past an odd edge cropped).
//!
//! The result differs from the direct sum by rounding only (the transforms add and subtract a few inputs, and
//! halve, before multiplying): the tests hold it to `1e-5 · (1 + Σ|w·x|)` of the definition. With more threads the
//! steps are shared ([`super::team::share`]) in one run of consecutive steps per thread, each step transforming
//! its own tiles' input first: one pass, so a pool thread that wakes late still finds whole steps to take.
//!
//! The CNN's 32→64 layer on 14 × 14 (3.6 M multiply-adds direct, 1.6 M here): 66 → 47 µs on one thread of an
//! AVX-512 Zen 4 core, its products at ~93% of the FMA peak.

use tract_linalg::multithread::Executor;

use super::gridconv::Grid;
use super::team;

/// Tiles per product step: 6 tiles × 4 vectors of output channels = 24 accumulators.
const TILES: usize = 6;
/// Vectors of 16 output channels per product step.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const VECS: usize = 4;

/// The transformed weights and the tiling of one convolution.
#[derive(Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Winograd {
    c_in: usize,
    c_out: usize,
    /// `c_in` and `c_out` rounded up to whole vectors of 16.
    cp: usize,
    op: usize,
    /// The image, its padding before it, the output.
    h: usize,
    w: usize,
    pt: usize,
    pl: usize,
    oh: usize,
    ow: usize,
    /// Tiles down and across (the output rounded up to even sizes, halved).
    ty: usize,
    tx: usize,
    /// `U = G g Gᵀ` as `[ξ][c][o]` (`16 × c_in × op`, output channels past `c_out` zero).
    u: Vec<f32>,
    /// Bias, `op` values (zero past `c_out`).
    bias: Vec<f32>,
    lo: f32,
    hi: f32,
}

impl Winograd {
    /// `weight(o, c, ky, kx)` of a 3×3, stride-1 convolution producing `c_out` channels over `grid` (its input
    /// channels, image, padding before it and output; its padded planes are not used: the transform keeps its
    /// own, channels last); the bias, and a clamp folded in.
    pub(crate) fn new(
        grid: &Grid,
        c_out: usize,
        weight: impl Fn(usize, usize, usize, usize) -> f32,
        bias: &[f32],
        (lo, hi): (f32, f32),
    ) -> Winograd {
        let &Grid { c_in, h, w, pt, pl, oh, ow, .. } = grid;
        let (cp, op) = (c_in.div_ceil(16) * 16, c_out.div_ceil(16) * 16);
        let (ty, tx) = (oh.div_ceil(2), ow.div_ceil(2));
        let mut u = vec![0f32; 16 * c_in * op];
        for o in 0..c_out {
            for c in 0..c_in {
                // G g: 4 rows of 3, then (G g) Gᵀ: 4 × 4.
                let mut gg = [[0f32; 3]; 4];
                for (x, col) in (0..3).map(|x| (x, [weight(o, c, 0, x), weight(o, c, 1, x), weight(o, c, 2, x)])) {
                    let [a, b, d] = col;
                    gg[0][x] = a;
                    gg[1][x] = (a + b + d) * 0.5;
                    gg[2][x] = (a - b + d) * 0.5;
                    gg[3][x] = d;
                }
                for (i, [a, b, d]) in gg.into_iter().enumerate() {
                    for (j, v) in [a, (a + b + d) * 0.5, (a - b + d) * 0.5, d].into_iter().enumerate() {
                        u[((i * 4 + j) * c_in + c) * op + o] = v;
                    }
                }
            }
        }
        let mut padded_bias = vec![0f32; op];
        padded_bias[..c_out].copy_from_slice(&bias[..c_out]);
        let conv = Winograd { c_in, c_out, cp, op, h, w, pt, pl, oh, ow, ty, tx, u, bias: padded_bias, lo, hi };
        debug_assert!(conv.rows() >= pt + h && conv.cols() >= pl + w, "the output covers the image");
        conv
    }

    fn tiles(&self) -> usize {
        self.ty * self.tx
    }

    /// Rows and columns of padded cells the tiles read: tiles of 4 starting every 2.
    fn rows(&self) -> usize {
        2 * self.ty + 2
    }
    fn cols(&self) -> usize {
        2 * self.tx + 2
    }

    /// Values of the padded cells (channels-last, `cp` per cell), zeroed once and kept between runs.
    pub(crate) fn cells_len(&self) -> usize {
        self.rows() * self.cols() * self.cp
    }

    /// Values of the transformed input (`16 × tiles × cp`).
    pub(crate) fn v_len(&self) -> usize {
        16 * self.tiles() * self.cp
    }

    /// Multiply-adds of one run's products.
    fn macs(&self) -> usize {
        16 * self.tiles() * self.c_in * self.c_out
    }

    /// One image `x` `[c_in, h, w]` into `out` `[c_out, oh, ow]`, with `cells` ([`Self::cells_len`], its padding
    /// zero: only the image's cells are ever written) and `v` ([`Self::v_len`]) as scratch. `false`, computing
    /// nothing, without AVX-512F or with mis-sized buffers.
    pub(crate) fn run(
        &self,
        x: &[f32],
        out: &mut [f32],
        cells: &mut [f32],
        v: &mut [f32],
        executor: &Executor,
    ) -> bool {
        if !super::avx512f()
            || x.len() != self.c_in * self.h * self.w
            || out.len() != self.c_out * self.oh * self.ow
            || cells.len() < self.cells_len()
            || v.len() < self.v_len()
        {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F checked above; `x` and `cells` are large enough.
        unsafe {
            x86::channels_last(self, x, cells)
        };
        // One job per step of tiles: its input transform, then its products and outputs, so that a pool thread
        // that wakes late still finds whole steps to take (a second pass over all tiles would wait for it again).
        // One chunk of consecutive steps per thread: a step writes 2 × 12 values of each of the 64 output planes,
        // so steps taken in turns by two threads kept writing into the same cache lines (the CNN's layer at 2
        // threads: 35–38 µs in 8 chunks, 28 µs in 2).
        let worth = self.macs() >= super::pointwise::MIN_SPLIT_MACS;
        let (tiles, cells) = (self.tiles(), &*cells);
        let steps = tiles.div_ceil(TILES);
        let chunks = if worth { team::threads(executor).min(steps) } else { 1 };
        let (vt, dst) = (team::Out::new(v), team::Out::new(out));
        team::share(executor, chunks, &|c| {
            for step in c * steps / chunks..(c + 1) * steps / chunks {
                let first = step * TILES;
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX-512F checked above; `cells` and `v` are large enough; the step writes the `V` vectors
                // and the outputs of its own tiles only, and reads only the `V` vectors it wrote.
                unsafe {
                    x86::input(self, cells.as_ptr(), vt.ptr(), first..(first + TILES).min(tiles));
                    for vec0 in (0..self.op / 16).step_by(VECS) {
                        x86::products(self, vt.ptr(), first, vec0, dst.ptr());
                    }
                };
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (first, cells, &vt, &dst);
            }
        })
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{TILES, VECS, Winograd};

    /// Copies the image `x` `[c_in, h, w]` channels-last into its cells (16 channels × 16 columns at a time,
    /// transposed in registers; channels past `c_in` are written as zeros).
    ///
    /// # Safety
    /// AVX-512F; `x` holds `c_in × h × w` values, `cells` [`Winograd::cells_len`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn channels_last(w: &Winograd, x: &[f32], cells: &mut [f32]) {
        let (hw, cp) = (w.h * w.w, w.cp);
        // SAFETY (whole body): loads read columns `x0 .. x0 + n ≤ w` of row `y` of channels `< c_in`; stores
        // write cells of the image (row `y + pt < rows`, column `x0 + pl + j < cols`), `cp` values each.
        unsafe {
            for y in 0..w.h {
                for x0 in (0..w.w).step_by(16) {
                    let n = (w.w - x0).min(16);
                    let row = cells.as_mut_ptr().add(((y + w.pt) * w.cols() + x0 + w.pl) * cp);
                    for cb in (0..cp).step_by(16) {
                        crate::kernels::cells_from_planes(x, (w.c_in, hw), cb, (y * w.w + x0, n), row.add(cb), cp);
                    }
                }
            }
        }
    }

    /// `V = Bᵀ d B` of the tiles `tiles`, every 16 input channels, into `v` `[ξ][tile][cp]`.
    ///
    /// # Safety
    /// AVX-512F; `cells` holds [`Winograd::cells_len`] values, `v` [`Winograd::v_len`]; the tiles exist.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn input(w: &Winograd, cells: *const f32, v: *mut f32, tiles: Range<usize>) {
        let (cp, nt) = (w.cp, w.tiles());
        // SAFETY (whole body): tile (ty, tx) reads cells (2ty + i, 2tx + j), i, j < 4, inside `rows × cols`;
        // stores go to tile `t`'s vectors.
        unsafe {
            for t in tiles {
                let base = cells.add((2 * (t / w.tx) * w.cols() + 2 * (t % w.tx)) * cp);
                for cv in (0..cp).step_by(16) {
                    let d: [[__m512; 4]; 4] = std::array::from_fn(|i| {
                        std::array::from_fn(|j| _mm512_loadu_ps(base.add((i * w.cols() + j) * cp + cv)))
                    });
                    // Bᵀ d, row by row.
                    let [d0, d1, d2, d3] = d;
                    let r: [[__m512; 4]; 4] = [
                        std::array::from_fn(|j| _mm512_sub_ps(d0[j], d2[j])),
                        std::array::from_fn(|j| _mm512_add_ps(d1[j], d2[j])),
                        std::array::from_fn(|j| _mm512_sub_ps(d2[j], d1[j])),
                        std::array::from_fn(|j| _mm512_sub_ps(d1[j], d3[j])),
                    ];
                    // (Bᵀ d) B.
                    for (i, [a, b, c, d]) in r.into_iter().enumerate() {
                        let row = [_mm512_sub_ps(a, c), _mm512_add_ps(b, c), _mm512_sub_ps(c, b), _mm512_sub_ps(b, d)];
                        for (j, value) in row.into_iter().enumerate() {
                            _mm512_storeu_ps(v.add(((i * 4 + j) * nt + t) * cp + cv), value);
                        }
                    }
                }
            }
        }
    }

    /// The outputs of tiles `first .. first + TILES` (fewer at the end) and of the vectors of output channels
    /// `vec0 .. vec0 + VECS` (fewer at the end): the 16 products, then `Aᵀ M A`, bias and clamp, into `out`.
    ///
    /// # Safety
    /// AVX-512F; `v` holds [`Winograd::v_len`] values; `out` points to `c_out × oh × ow` values of which this call
    /// writes only those of its tiles and channels.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn products(w: &Winograd, v: *const f32, first: usize, vec0: usize, out: *mut f32) {
        let tiles = (w.tiles() - first).min(TILES);
        let vecs = (w.op / 16 - vec0).min(VECS);
        // SAFETY: the contract above.
        unsafe {
            match (tiles, vecs) {
                (6, 4) => step::<6, 4>(w, v, first, vec0, out),
                (t, 4) => dispatch_rows::<4>(t, w, v, first, vec0, out),
                (t, 3) => dispatch_rows::<3>(t, w, v, first, vec0, out),
                (t, 2) => dispatch_rows::<2>(t, w, v, first, vec0, out),
                (t, _) => dispatch_rows::<1>(t, w, v, first, vec0, out),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn dispatch_rows<const NV: usize>(
        t: usize,
        w: &Winograd,
        v: *const f32,
        first: usize,
        vec0: usize,
        out: *mut f32,
    ) {
        // SAFETY: the contract of `products`.
        unsafe {
            match t {
                6 => step::<6, NV>(w, v, first, vec0, out),
                5 => step::<5, NV>(w, v, first, vec0, out),
                4 => step::<4, NV>(w, v, first, vec0, out),
                3 => step::<3, NV>(w, v, first, vec0, out),
                2 => step::<2, NV>(w, v, first, vec0, out),
                _ => step::<1, NV>(w, v, first, vec0, out),
            }
        }
    }

    /// [`products`] for `R` tiles and `NV` vectors of output channels.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)] // `r` and `k` index the inner axes of `m` (ξ is the outer one)
    unsafe fn step<const R: usize, const NV: usize>(
        w: &Winograd,
        v: *const f32,
        first: usize,
        vec0: usize,
        out: *mut f32,
    ) {
        let (cp, op, nt, c_in) = (w.cp, w.op, w.tiles(), w.c_in);
        // M of the step: [ξ][tile][vector].
        let mut m = [[[_mm512_setzero_ps(); NV]; R]; 16];
        // SAFETY (whole body): `V` rows `first .. first + R < tiles` of every ξ hold `cp ≥ c_in` values; `U` rows
        // hold `op` values, of which vectors `vec0 .. vec0 + NV ≤ op / 16` are read; outputs are written for
        // channels `< c_out` and positions `< oh × ow` of this step's tiles only.
        unsafe {
            for (xi, m) in m.iter_mut().enumerate() {
                let vx = v.add((xi * nt + first) * cp);
                let ux = w.u.as_ptr().add(xi * c_in * op + vec0 * 16);
                let mut acc = [[_mm512_setzero_ps(); NV]; R];
                for c in 0..c_in {
                    let uc: [__m512; NV] = std::array::from_fn(|k| _mm512_loadu_ps(ux.add(c * op + 16 * k)));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let x = _mm512_set1_ps(*vx.add(r * cp + c));
                        for (a, u) in acc.iter_mut().zip(&uc) {
                            *a = _mm512_fmadd_ps(x, *u, *a);
                        }
                    }
                }
                *m = acc;
            }
            let (lo, hi) = (_mm512_set1_ps(w.lo), _mm512_set1_ps(w.hi));
            let plane = w.oh * w.ow;
            for r in 0..R {
                let t = first + r;
                let (y0, x0) = (2 * (t / w.tx), 2 * (t % w.tx));
                let (ny, nx) = ((w.oh - y0).min(2), (w.ow - x0).min(2));
                for k in 0..NV {
                    let o0 = (vec0 + k) * 16;
                    let s = |i: usize, j: usize| m[i * 4 + j][r][k];
                    // Aᵀ M: two rows; then (Aᵀ M) A: two columns each.
                    let top: [__m512; 4] =
                        std::array::from_fn(|j| _mm512_add_ps(_mm512_add_ps(s(0, j), s(1, j)), s(2, j)));
                    let bottom: [__m512; 4] =
                        std::array::from_fn(|j| _mm512_sub_ps(_mm512_sub_ps(s(1, j), s(2, j)), s(3, j)));
                    let bias = _mm512_loadu_ps(w.bias.as_ptr().add(o0));
                    let mut y = [[0f32; 16]; 4];
                    for (q, row) in [top, bottom].into_iter().enumerate() {
                        let left = _mm512_add_ps(_mm512_add_ps(row[0], row[1]), row[2]);
                        let right = _mm512_sub_ps(_mm512_sub_ps(row[1], row[2]), row[3]);
                        for (p, value) in [left, right].into_iter().enumerate() {
                            let value = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(value, bias), lo), hi);
                            _mm512_storeu_ps(y[q * 2 + p].as_mut_ptr(), value);
                        }
                    }
                    for lane in 0..(w.c_out - o0.min(w.c_out)).min(16) {
                        let at = out.add((o0 + lane) * plane + y0 * w.ow + x0);
                        for dy in 0..ny {
                            for dx in 0..nx {
                                *at.add(dy * w.ow + dx) = y[dy * 2 + dx][lane];
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gridconv::definition;
    use crate::kernels::zoo::Rng;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// 1..40 input and 1..80 output channels (vectors of 16 filled or not), images 1..17 on a side (odd and even
        /// outputs: cropped tiles), padding 0..=2 on every side, with and without a clamp: within
        /// `1e-5 · (1 + Σ|w·x|)` of the definition in f64, on one thread and shared with a pool, twice per
        /// convolution (the kept cells' padding must stay zero).
        #[test]
        fn winograd_matches_the_definition(
            (c_in, c_out) in (1usize..40, 1usize..80),
            (h, w) in (1usize..18, 1usize..18),
            pads in (0usize..3, 0usize..3, 0usize..3, 0usize..3),
            clamp in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let (pt, pb, pl, pr) = pads;
            prop_assume!(h + pt + pb >= 3 && w + pl + pr >= 3);
            let (oh, ow) = (h + pt + pb - 2, w + pl + pr - 2);
            let mut rng = Rng::new(seed);
            let weights: Vec<f32> = (0..c_out * c_in * 9).map(|_| rng.sym(1.0)).collect();
            let bias: Vec<f32> = (0..c_out).map(|_| rng.sym(1.0)).collect();
            let wt = |o: usize, c: usize, y: usize, x: usize| weights[((o * c_in + c) * 3 + y) * 3 + x];
            let (lo, hi) = if clamp { (0.0, 1.5) } else { (f32::NEG_INFINITY, f32::INFINITY) };
            let grid = Grid::padded(c_in, (h, w), (pt, pl), (oh, ow), (3, 3));
            let conv = Winograd::new(&grid, c_out, wt, &bias, (lo, hi));
            let mut cells = vec![0f32; conv.cells_len()];
            let mut v = vec![f32::NAN; conv.v_len()];
            for executor in [&Executor::SingleThread, crate::kernels::team::test_pool()] {
                let x: Vec<f32> = (0..c_in * h * w).map(|_| rng.sym(2.0)).collect();
                let mut out = vec![f32::NAN; c_out * oh * ow];
                let ran = conv.run(&x, &mut out, &mut cells, &mut v, executor);
                prop_assert_eq!(ran, crate::kernels::avx512f());
                if !ran {
                    continue;
                }
                for o in 0..c_out {
                    for y in 0..oh {
                        for xo in 0..ow {
                            let image = (c_in, h, w, pt, pl);
                            let (exact, mag) = definition(&x, image, (3, 3), &wt, bias[o], (lo, hi), (o, y, xo));
                            let got = out[(o * oh + y) * ow + xo] as f64;
                            prop_assert!((got - exact).abs() <= 1e-5 * (1.0 + mag), "o {} y {} x {}: {} vs {}", o, y, xo, got, exact);
                        }
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sixteen_vectors_are_transposed() {
        if !crate::kernels::avx512f() {
            return;
        }
        let mut got = [[0f32; 16]; 16];
        // SAFETY: AVX-512F checked above.
        unsafe {
            use std::arch::x86_64::*;
            let mut r: [__m512; 16] = std::array::from_fn(|i| {
                let row: [f32; 16] = std::array::from_fn(|j| (i * 16 + j) as f32);
                _mm512_loadu_ps(row.as_ptr())
            });
            crate::kernels::transpose16(&mut r);
            for (g, v) in got.iter_mut().zip(&r) {
                _mm512_storeu_ps(g.as_mut_ptr(), *v);
            }
        }
        let want: [[f32; 16]; 16] = std::array::from_fn(|j| std::array::from_fn(|i| (i * 16 + j) as f32));
        assert_eq!(got, want);
    }

    #[test]
    fn mis_sized_buffers_are_refused() {
        let grid = Grid::padded(16, (4, 4), (1, 1), (4, 4), (3, 3));
        let conv = Winograd::new(&grid, 16, |_, _, _, _| 1.0, &[0.0; 16], (f32::MIN, f32::MAX));
        let (mut cells, mut v) = (vec![0f32; conv.cells_len()], vec![0f32; conv.v_len()]);
        let mut out = vec![0f32; 16 * 16];
        let e = &Executor::SingleThread;
        assert!(!conv.run(&[1.0; 255], &mut out, &mut cells, &mut v, e), "x one value short");
        assert!(!conv.run(&[1.0; 256], &mut out[..255], &mut cells, &mut v, e), "out one value short");
        assert!(!conv.run(&[1.0; 256], &mut out, &mut cells[..1], &mut v, e), "cells too short");
        if crate::kernels::avx512f() {
            assert!(conv.run(&[1.0; 256], &mut out, &mut cells, &mut v, e));
            // Each output sums the 16 channels over the window cells inside the image: 4 at a corner, 9 inside.
            assert_eq!((out[0], out[5]), (16.0 * 4.0, 16.0 * 9.0));
        }
    }
}
