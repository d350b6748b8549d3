//! Depthwise f32 convolutions with 16 channels in the lanes, on AVX-512: each block of 16 channel planes is
//! transposed channels-last into a zero-padded buffer (16 × 16 register transposes), every output position sums
//! its window as `k²` full-vector multiply-adds (no masks, no permutes, 16 independent accumulators), and each 16
//! positions × 16 channels are transposed back into the channels-first output planes. The row kernels
//! ([`super::rowconv`]) keep one channel per call and fill the lanes with a row's positions, which at stride 2
//! onto a 6-column row leaves 10 of 16 lanes empty; here no lane is wasted but the last block's. The transposes
//! cost about as much as the sums (a 16 × 16 transpose is 64 shuffles, two cycles each for 512 bits on Zen 4), so
//! the operator takes this kernel only for stride-2 rows of at most [`DwBlocks::MAX_COLUMNS`] outputs.

use super::scratch::Kept;
use super::taps::Window;
#[cfg(target_arch = "x86_64")]
use super::team;
use tract_linalg::multithread::Executor;

/// Channels per block: one AVX-512 vector of f32.
const LANES: usize = 16;

/// A depthwise convolution (one input and one output plane per channel) laid out for the channel blocks.
#[derive(Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // built only where AVX-512 can run it
pub(crate) struct DwBlocks {
    win: Window,
    c: usize,
    /// Rows and columns of the zero-padded channels-last buffer of one block: the image at `(pt, pl)`, room for
    /// every window.
    ph: usize,
    pw: usize,
    /// `[block][ky · k + kx][16]`, zero past `c`.
    w: Vec<f32>,
    /// `[block][16]`, zero past `c`.
    bias: Vec<f32>,
    lo: f32,
    hi: f32,
    /// One padded buffer per chunk of blocks, kept between runs (only the image cells are ever written, so the
    /// padding stays zero).
    buffers: Kept<Vec<Vec<f32>>>,
}

impl DwBlocks {
    /// Output columns up to which [`super::dwconv`] takes this kernel for a stride-2 depthwise convolution.
    pub(crate) const MAX_COLUMNS: usize = 8;

    /// The convolution of `win` over `c` channels with weights `w` (`[c][kh][kw]`) and `bias`, every output
    /// clamped to `(lo, hi)`; `None` when the CPU lacks AVX-512F or the window is not square 3×3 / 5×5 at equal
    /// stride 1 or 2, or the lengths are wrong.
    pub(crate) fn new(win: &Window, c: usize, w: &[f32], bias: &[f32], (lo, hi): (f32, f32)) -> Option<DwBlocks> {
        let k = win.kh;
        let supported = win.kw == k && matches!(k, 3 | 5) && win.sw == win.sh && matches!(win.sh, 1 | 2);
        if !supported || !super::avx512f() || c == 0 || w.len() != c * k * k || bias.len() != c {
            return None;
        }
        let blocks = c.div_ceil(LANES);
        let mut bw = vec![0f32; blocks * k * k * LANES];
        let mut bb = vec![0f32; blocks * LANES];
        for ch in 0..c {
            let (b, l) = (ch / LANES, ch % LANES);
            for t in 0..k * k {
                bw[(b * k * k + t) * LANES + l] = w[ch * k * k + t];
            }
            bb[b * LANES + l] = bias[ch];
        }
        let ph = ((win.oh - 1) * win.sh + k).max(win.pt + win.h);
        let pw = ((win.ow - 1) * win.sw + k).max(win.pl + win.w);
        Some(DwBlocks { win: win.clone(), c, ph, pw, w: bw, bias: bb, lo, hi, buffers: Kept::new() })
    }

    /// One image: `x` holds its `c` planes of `h × w`, `out` receives `c` planes of `oh × ow`. The blocks are
    /// shared with `executor`'s pool when `share` (each thread one run of consecutive blocks, with its own
    /// buffer). `false`, computing nothing, when the buffers are mis-sized or the CPU cannot run the kernel.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    pub(crate) fn run(&self, x: &[f32], out: &mut [f32], executor: &Executor, share: bool) -> bool {
        let win = &self.win;
        if x.len() != self.c * win.h * win.w || out.len() != self.c * win.oh * win.ow || !super::avx512f() {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let blocks = self.c.div_ceil(LANES);
            let chunks = if share { team::threads(executor).min(blocks) } else { 1 };
            let mut buffers = self.buffers.take_or(Vec::new);
            // One vector more than the cells, to start them on a 64-byte boundary (a vector load or store across
            // two cache lines costs two).
            buffers.resize_with(chunks.max(buffers.len()), || vec![0f32; (self.ph * self.pw + 1) * LANES]);
            let dst = team::Out::new(out);
            let bufs = team::Out::new(&mut buffers);
            let ok = team::share(executor, chunks, &|chunk| {
                // SAFETY: chunk `chunk` alone uses buffer `chunk` (`chunks ≤ buffers.len()`).
                let buf = unsafe { &mut bufs.part(chunk, 1)[0] };
                let start = buf.as_ptr().align_offset(64).min(LANES);
                let buf = &mut buf[start..][..self.ph * self.pw * LANES];
                for b in chunk * blocks / chunks..(chunk + 1) * blocks / chunks {
                    // SAFETY: AVX-512F detected; `x` and `out` are checked above, the buffer holds `ph × pw × 16`
                    // values; block `b` writes only the output planes of its channels.
                    unsafe {
                        match (win.kh, win.sh) {
                            (3, 1) => x86::block::<3, 1>(self, b, x, buf, dst.ptr()),
                            (3, _) => x86::block::<3, 2>(self, b, x, buf, dst.ptr()),
                            (5, 1) => x86::block::<5, 1>(self, b, x, buf, dst.ptr()),
                            _ => x86::block::<5, 2>(self, b, x, buf, dst.ptr()),
                        }
                    }
                }
            });
            self.buffers.keep(buffers);
            return ok;
        }
        #[allow(unreachable_code)]
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{DwBlocks, LANES};
    use crate::kernels::{cells_from_planes, first_lanes, transpose16};
    use std::arch::x86_64::*;

    /// Block `b` (channels `16b ..`): its planes transposed into `buf`'s image cells, then the outputs 16
    /// positions at a time, transposed back into the output planes.
    ///
    /// # Safety
    /// AVX-512F; `x` holds the `c` input planes, `out` points to the `c` output planes, `buf` holds
    /// `ph × pw × 16` values whose cells outside the image are zero; no other thread writes this block's planes.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block<const K: usize, const S: usize>(
        d: &DwBlocks,
        b: usize,
        x: &[f32],
        buf: &mut [f32],
        out: *mut f32,
    ) {
        let win = &d.win;
        let (h, w, pw) = (win.h, win.w, d.pw);
        let (c0, nc) = (b * LANES, (d.c - b * LANES).min(LANES));
        // SAFETY: `x` holds the `c` planes of `h × w`, and each tile reads the `n ≤ w − x0` values left in row `y`;
        // its cells `(y + pt, x0 + j + pl)`, `j < n`, lie inside the buffer's `ph × pw`.
        unsafe {
            let bp = buf.as_mut_ptr();
            for y in 0..h {
                for x0 in (0..w).step_by(LANES) {
                    let n = (w - x0).min(LANES);
                    let row = bp.add(((y + win.pt) * pw + x0 + win.pl) * LANES);
                    cells_from_planes(x, (d.c, h * w), c0, (y * w + x0, n), row, LANES);
                }
            }
        }
        let wv: [__m512; 25] = std::array::from_fn(|t| {
            // SAFETY: the block's `k²` weight vectors (`d.w` holds `k²` per block); only `t < K²` are read below.
            if t < K * K {
                unsafe { _mm512_loadu_ps(d.w.as_ptr().add((b * K * K + t) * LANES)) }
            } else {
                _mm512_setzero_ps()
            }
        });
        // SAFETY: `d.bias` holds 16 per block.
        let bias = unsafe { _mm512_loadu_ps(d.bias.as_ptr().add(b * LANES)) };
        let (lo, hi) = (_mm512_set1_ps(d.lo), _mm512_set1_ps(d.hi));
        let (ow, ohw) = (win.ow, win.oh * win.ow);
        let bp = buf.as_ptr();
        // The output position after `(oy, ox)`, in row order.
        let next = |(oy, ox): (usize, usize)| if ox + 1 == ow { (oy + 1, 0) } else { (oy, ox + 1) };
        let mut at = (0usize, 0usize);
        for p0 in (0..ohw).step_by(LANES) {
            let n = (ohw - p0).min(LANES);
            // Where each of the 16 positions' windows starts in the buffer (the last position repeated past the
            // end: computed, not stored).
            let mut base = [0usize; LANES];
            for (j, base) in base.iter_mut().enumerate() {
                *base = (at.0 * S * pw + at.1 * S) * LANES;
                if j + 1 < n {
                    at = next(at);
                }
            }
            // Step past the block's last position to the next block's first.
            if n == LANES {
                at = next(at);
            }
            let mut acc = [bias; LANES];
            // SAFETY: each window `base + (ky · pw + kx) · 16` lies inside the `ph × pw` cells (the buffer has room
            // for every output's window).
            unsafe {
                for ky in 0..K {
                    for kx in 0..K {
                        let (off, wt) = ((ky * pw + kx) * LANES, wv[ky * K + kx]);
                        for (a, &at) in acc.iter_mut().zip(&base) {
                            *a = _mm512_fmadd_ps(_mm512_loadu_ps(bp.add(at + off)), wt, *a);
                        }
                    }
                }
            }
            for a in acc.iter_mut() {
                *a = _mm512_min_ps(_mm512_max_ps(*a, lo), hi);
            }
            transpose16(&mut acc);
            // SAFETY: planes `c0 .. c0 + nc` of `ohw` values, positions `p0 .. p0 + n`.
            unsafe {
                let m = first_lanes(n);
                if nc == LANES {
                    for (i, a) in acc.iter().enumerate() {
                        _mm512_mask_storeu_ps(out.add((c0 + i) * ohw + p0), m, *a);
                    }
                } else {
                    for (i, a) in acc.iter().enumerate().take(nc) {
                        _mm512_mask_storeu_ps(out.add((c0 + i) * ohw + p0), m, *a);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::rowconv::definition;
    use crate::kernels::zoo::Rng;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(160))]

        /// 3×3 / 5×5 at stride 1 / 2, every padding below the kernel, 1..40 channels (whole and partial blocks),
        /// 1..30 × 1..30 planes, with and without a clamp, with and without a 2-thread pool, twice per convolution (the kept
        /// buffers' padding must stay zero): within `1e-5 · (1 + Σ|w·x|)` of the definition in f64. Without
        /// AVX-512F the kernel is refused.
        #[test]
        fn channel_blocks_match_the_definition(
            k in prop_oneof![Just(3usize), Just(5)], s in 1usize..=2, c in 1usize..40,
            (h, w) in (1usize..30, 1usize..30), pads in (0usize..5, 0usize..5, 0usize..5, 0usize..5),
            clamp in prop_oneof![Just((f32::NEG_INFINITY, f32::INFINITY)), Just((0.0f32, 0.5f32))],
            pool in any::<bool>(), seed in any::<u64>(),
        ) {
            let (pt, pb, pl, pr) = (pads.0 % k, pads.1 % k, pads.2 % k, pads.3 % k);
            prop_assume!(h + pt + pb >= k && w + pl + pr >= k);
            let (oh, ow) = ((h + pt + pb - k) / s + 1, (w + pl + pr - k) / s + 1);
            let win = Window::new((h, w), (k, k), (s, s), (pt, pl), (oh, ow)).expect("a window");
            let mut rng = Rng::new(seed);
            let wts: Vec<f32> = (0..c * k * k).map(|_| rng.sym(1.0)).collect();
            let bias: Vec<f32> = (0..c).map(|_| rng.sym(1.0)).collect();
            let Some(dw) = DwBlocks::new(&win, c, &wts, &bias, clamp) else {
                prop_assert!(!crate::kernels::avx512f(), "refused with AVX-512F");
                return Ok(());
            };
            let executor = if pool { crate::kernels::team::test_pool() } else { &Executor::SingleThread };
            for round in 0..2 {
                let x: Vec<f32> = (0..c * h * w).map(|_| rng.sym(1.0)).collect();
                let mut out = vec![f32::NAN; c * oh * ow];
                prop_assert!(dw.run(&x, &mut out, executor, true));
                for ch in 0..c {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let (x, w9) = (&x[ch * h * w..][..h * w], &wts[ch * k * k..][..k * k]);
                            let (exact, mag) = definition(x, w9, 1, (h, w), (k, k), s, (pt, pl), bias[ch], clamp, (oy, ox));
                            let got = out[(ch * oh + oy) * ow + ox] as f64;
                            prop_assert!((got - exact).abs() <= 1e-5 * (1.0 + mag),
                                "round {} channel {} ({}, {}): {} vs {}", round, ch, oy, ox, got, exact);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn other_windows_and_mis_sized_buffers_are_refused() {
        let win = |k, s| Window::new((8, 8), (k, k), (s, s), (1, 1), ((8 + 2 - k) / s + 1, (8 + 2 - k) / s + 1));
        let w9 = vec![0.5f32; 2 * 9];
        assert!(DwBlocks::new(&win(3, 3).unwrap(), 2, &w9, &[0.0; 2], (0.0, 1.0)).is_none(), "stride 3");
        assert!(DwBlocks::new(&win(2, 1).unwrap(), 2, &[0.0; 8], &[0.0; 2], (0.0, 1.0)).is_none(), "2×2");
        assert!(DwBlocks::new(&win(3, 1).unwrap(), 2, &w9[..17], &[0.0; 2], (0.0, 1.0)).is_none(), "short weights");
        assert!(DwBlocks::new(&win(3, 1).unwrap(), 2, &w9, &[0.0; 1], (0.0, 1.0)).is_none(), "short bias");
        let Some(dw) = DwBlocks::new(&win(3, 1).unwrap(), 2, &w9, &[0.0; 2], (0.0, 1.0)) else {
            assert!(!crate::kernels::avx512f(), "built with AVX-512F");
            return;
        };
        let executor = &Executor::SingleThread;
        assert!(!dw.run(&[0.0; 127], &mut [0.0; 128], executor, false), "short input");
        assert!(!dw.run(&[0.0; 128], &mut [0.0; 129], executor, false), "long output");
        let mut out = [0.0; 128];
        assert!(dw.run(&[1.0; 128], &mut out, executor, false));
        assert_eq!(out[9], 1.0, "an inner output: 9 · 0.5 clamped to 1");
        assert_eq!(out[0], 1.0, "a corner: 4 · 0.5 = 2 clamped to 1");
    }
}
