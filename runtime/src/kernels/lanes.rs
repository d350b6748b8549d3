//! f32 shifted products with the output channels in the vector lanes (AVX-512): `out[o][i] = clamp(bias[o] +
//! Σ_t w[o][t] · x[offset[t] + position[i]])`. Each step multiplies 4 registers of 16 channels' weights by 6
//! broadcast inputs (24 accumulators, 10 loads per 24 multiply-adds), and only the listed positions are
//! computed: a grid convolution's output columns, not the padded grid's (see [`super::gridconv`], whose
//! positions-in-the-lanes product wastes the `KW − 1` columns past each output row). Terms that read only
//! padding (zeros) for every position of a step are skipped: positions are grouped by the terms they read, so
//! the steps along an edge of the image skip the kernel row or column that falls outside it (a 14 × 14 3×3
//! convolution: 8% fewer multiply-adds). The 6 × 64 results of a step are written to the channels-first output
//! through a small tile. With at most 16 output channels the roles turn: 16 positions per step in the lanes and
//! one accumulator per channel, so each channel's 16 outputs are one store.

use super::team;

/// Output channels per block: 4 AVX-512 registers.
const BLOCK: usize = 64;
/// Positions per step (broadcast inputs).
const PX: usize = 6;

/// The weights packed by blocks of [`BLOCK`] output channels, and the positions to compute.
#[derive(Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // built only where AVX-512 can run it
pub(crate) struct Lanes {
    c_out: usize,
    offsets: Vec<usize>,
    /// Input positions in the order the steps take them (grouped by the terms they read), padded to a multiple
    /// of [`PX`] by repeating the last one.
    positions: Vec<usize>,
    /// The output each of `positions` is (its index in the caller's list).
    index: Vec<usize>,
    /// Per step: the range of `step_terms` listing the terms it computes.
    steps: Vec<(usize, usize)>,
    /// Term lists of the steps, ascending (steps reading the same terms share one).
    step_terms: Vec<u32>,
    /// Positions per step: [`PX`], or 16 for at most 16 output channels (`x86::step_gather`).
    px: usize,
    /// `positions` as `i32` gather indices (16 positions per step only; empty otherwise).
    gather: Vec<i32>,
    /// Per step of 16 positions: their stride when they are evenly spaced 1 or 2 apart (read by one or two
    /// loads instead of a gather), else 0.
    stride: Vec<u8>,
    /// Outputs per channel (the positions before padding).
    outputs: usize,
    /// Per block `b` (`min(64, c_out − 64b)` channels, rounded up to 16): `[terms][width]`, zero-padded.
    w: Vec<f32>,
    /// Zero-padded to whole blocks.
    bias: Vec<f32>,
    lo: f32,
    hi: f32,
    /// Input values a run reads: `max(offsets) + max(positions) + 1`.
    x_len: usize,
}

impl Lanes {
    /// Output `i` of channel `o` reads term `t` at `x[offsets[t] + positions[i]]`, weighted `weight(o, t)`;
    /// `zero(j)` says that `x[j]` is always 0 (padding), so terms reading it may be skipped.
    pub(crate) fn new(
        offsets: Vec<usize>,
        positions: &[usize],
        c_out: usize,
        weight: impl Fn(usize, usize) -> f32,
        bias: &[f32],
        (lo, hi): (f32, f32),
        zero: impl Fn(usize) -> bool,
    ) -> Lanes {
        let terms = offsets.len();
        assert!(u32::try_from(terms).is_ok(), "at most 2³² terms");
        // Whether term `t` at position `p` reads the image (not the padding).
        let reads = |t: usize, p: usize| !zero(offsets[t] + p);
        // At most 16 output channels: steps of 16 positions in the lanes (loaded, or gathered when not evenly
        // spaced), in the caller's order (consecutive outputs: one store per channel), with the output channels in
        // 16 registers. Otherwise the positions are grouped by the terms they read, largest group first, so a step
        // mostly holds positions that skip the same terms.
        let x_len = offsets.iter().max().copied().unwrap_or(0) + positions.iter().max().copied().unwrap_or(0) + 1;
        let px = if c_out <= 16 && i32::try_from(x_len).is_ok() { 16 } else { PX };
        let mut index: Vec<usize> = (0..positions.len()).collect();
        if px == PX {
            // The terms each position reads, to group the positions by them.
            let read: Vec<Vec<u32>> =
                positions.iter().map(|&p| (0..terms).filter(|&t| reads(t, p)).map(|t| t as u32).collect()).collect();
            let mut group_of: std::collections::HashMap<&[u32], usize> = Default::default();
            let mut sizes = vec![];
            let group: Vec<usize> = read
                .iter()
                .map(|r| {
                    let g = *group_of.entry(r.as_slice()).or_insert(sizes.len());
                    if g == sizes.len() {
                        sizes.push(0);
                    }
                    sizes[g] += 1;
                    g
                })
                .collect();
            index.sort_by_key(|&i| (std::cmp::Reverse(sizes[group[i]]), group[i]));
        }
        // Each step computes the terms any of its positions reads (found term by term, stopping at the first
        // position that reads it; building every position's list first, 2,304 stem positions × 27 terms, made
        // MobileNet's whole load 13.5–15.8 ms where it now takes 10.2–12.8, medians of 39 loads).
        let (mut steps, mut step_terms, mut interned) = (vec![], vec![], std::collections::HashMap::new());
        for chunk in index.chunks(px) {
            let union: Vec<u32> =
                (0..terms).filter(|&t| chunk.iter().any(|&i| reads(t, positions[i]))).map(|t| t as u32).collect();
            let range = *interned.entry(union.clone()).or_insert_with(|| {
                step_terms.extend(&union);
                (step_terms.len() - union.len(), union.len())
            });
            steps.push(range);
        }
        let mut pos: Vec<usize> = index.iter().map(|&i| positions[i]).collect();
        let mut w = Vec::with_capacity(c_out.div_ceil(16) * 16 * terms);
        for b in 0..c_out.div_ceil(BLOCK) {
            let width = block_width(c_out, b);
            for t in 0..terms {
                w.extend((0..width).map(|l| if b * BLOCK + l < c_out { weight(b * BLOCK + l, t) } else { 0.0 }));
            }
        }
        let mut padded_bias = bias.to_vec();
        padded_bias.resize(c_out.div_ceil(BLOCK) * BLOCK, 0.0);
        if let Some(&last) = pos.last() {
            pos.resize(positions.len().div_ceil(px) * px, last);
        }
        let gather: Vec<i32> = if px == PX { vec![] } else { pos.iter().map(|&p| p as i32).collect() };
        let stride = gather
            .chunks_exact(16)
            .map(|c| match c[1] - c[0] {
                s @ (1 | 2) if c.windows(2).all(|w| w[1] - w[0] == s) => s as u8,
                _ => 0,
            })
            .collect();
        Lanes {
            c_out,
            offsets,
            positions: pos,
            index,
            steps,
            step_terms,
            px,
            gather,
            stride,
            outputs: positions.len(),
            w,
            bias: padded_bias,
            lo,
            hi,
            x_len,
        }
    }

    /// Input values one run reads.
    pub(crate) fn x_len(&self) -> usize {
        self.x_len
    }

    /// Whether this CPU runs the product (AVX-512F).
    pub(crate) fn available() -> bool {
        super::avx512f()
    }

    /// `out` (`c_out × outputs`, channels first) for one input `x`; the steps of positions are shared with the
    /// executor's pool when it has more than one thread. `false`, computing nothing, without AVX-512F or with
    /// mis-sized buffers.
    pub(crate) fn run(&self, x: &[f32], out: &mut [f32], executor: &tract_linalg::multithread::Executor) -> bool {
        if !Self::available() || x.len() < self.x_len || out.len() != self.c_out * self.outputs {
            return false;
        }
        let steps = self.positions.len() / self.px;
        let blocks = self.c_out.div_ceil(BLOCK);
        let chunks = team::chunks(executor, steps * blocks, true);
        let dst = team::Out::new(out);
        team::share(executor, chunks, &|c| {
            for job in c * steps * blocks / chunks..(c + 1) * steps * blocks / chunks {
                let (b, s) = (job / steps, job % steps);
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX-512F checked above; `x` holds `x_len` values; the step writes only its outputs of
                // block `b`'s channels, which no other job writes.
                unsafe {
                    x86::step(self, b, s * self.px, x, dst.ptr())
                };
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (b, s, &dst);
            }
        })
    }
}

/// Lanes of block `b`: its channels rounded up to whole registers.
fn block_width(c_out: usize, b: usize) -> usize {
    (c_out - b * BLOCK).min(BLOCK).div_ceil(16) * 16
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BLOCK, Lanes, PX, block_width};

    /// The outputs `first .. first + PX` (of the padded position list) of block `b`.
    ///
    /// # Safety
    /// AVX-512F; `x` holds `x_len` values; `out` points to `c_out × outputs` values of which this call writes
    /// only its outputs of block `b`'s channels.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn step(l: &Lanes, b: usize, first: usize, x: &[f32], out: *mut f32) {
        // SAFETY: the contract above.
        unsafe {
            if l.px == 16 {
                return step_gather(l, first, x, out);
            }
            match block_width(l.c_out, b) / 16 {
                4 => step_n::<4>(l, b, first, x, out),
                3 => step_n::<3>(l, b, first, x, out),
                2 => step_n::<2>(l, b, first, x, out),
                _ => step_n::<1>(l, b, first, x, out),
            }
        }
    }

    /// The outputs `first .. first + 16` of a product of at most 16 output channels (a single block): the 16
    /// positions in the lanes, gathered once per term, and one accumulator per output channel, so each channel's
    /// 16 outputs (consecutive: this order is the caller's) are one store.
    #[target_feature(enable = "avx512f")]
    unsafe fn step_gather(l: &Lanes, first: usize, x: &[f32], out: *mut f32) {
        // SAFETY: the contract of `step`.
        unsafe {
            match l.stride[first / 16] {
                1 => step_16::<1>(l, first, x, out),
                2 => step_16::<2>(l, first, x, out),
                _ => step_16::<0>(l, first, x, out),
            }
        }
    }

    /// [`step_gather`] for positions `S` apart (1 or 2: one load, or two and a permute), or anywhere (`S` = 0: a
    /// gather).
    #[target_feature(enable = "avx512f")]
    unsafe fn step_16<const S: usize>(l: &Lanes, first: usize, x: &[f32], out: *mut f32) {
        // SAFETY (whole body): the positions are valid `i32` indices with `offset + position < x_len ≤ x.len()`
        // (the 16 positions of a stride-2 step span 31 values, the second load is masked to 15); weights hold 16
        // values per term; stores are to outputs `first .. first + n < outputs` of channels `< c_out`.
        unsafe {
            let idx = _mm512_loadu_si512(l.gather.as_ptr().add(first).cast());
            let p0 = l.gather[first] as usize;
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let mut acc: [__m512; 16] = std::array::from_fn(|c| _mm512_set1_ps(l.bias[c]));
            let (start, len) = l.steps[first / 16];
            for &t in &l.step_terms[start..start + len] {
                let t = t as usize;
                let base = x.as_ptr().add(*l.offsets.get_unchecked(t));
                let xv = match S {
                    1 => _mm512_loadu_ps(base.add(p0)),
                    2 => {
                        let (a, b) = (_mm512_loadu_ps(base.add(p0)), _mm512_maskz_loadu_ps(0x7fff, base.add(p0 + 16)));
                        _mm512_permutex2var_ps(a, even, b)
                    }
                    _ => _mm512_i32gather_ps::<4>(idx, base),
                };
                let w = l.w.as_ptr().add(t * 16);
                for (c, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(xv, _mm512_set1_ps(*w.add(c)), *acc);
                }
            }
            let (lo, hi) = (_mm512_set1_ps(l.lo), _mm512_set1_ps(l.hi));
            let mask = crate::kernels::first_lanes(l.outputs - first);
            for (c, acc) in acc.iter().enumerate().take(l.c_out) {
                _mm512_mask_storeu_ps(out.add(c * l.outputs + first), mask, _mm512_min_ps(_mm512_max_ps(*acc, lo), hi));
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn step_n<const NV: usize>(l: &Lanes, b: usize, first: usize, x: &[f32], out: *mut f32) {
        let terms = l.offsets.len();
        let width = NV * 16;
        // Blocks before `b` are all BLOCK wide.
        // SAFETY (whole body): weights hold `terms × width` values for block `b`; every read is
        // `x[offset + position] < x_len`; stores are to outputs `< outputs` of channels `< c_out`.
        unsafe {
            let w = l.w.as_ptr().add(b * BLOCK * terms);
            let xs: [*const f32; PX] = std::array::from_fn(|j| x.as_ptr().add(l.positions[first + j]));
            let bias: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(l.bias.as_ptr().add(b * BLOCK + 16 * v)));
            let mut acc = [bias; PX];
            let (start, len) = l.steps[first / PX];
            for &t in &l.step_terms[start..start + len] {
                let t = t as usize;
                let off = *l.offsets.get_unchecked(t);
                let wv: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(w.add(t * width + 16 * v)));
                for (j, acc) in acc.iter_mut().enumerate() {
                    let xb = _mm512_set1_ps(*xs[j].add(off));
                    for (a, wv) in acc.iter_mut().zip(&wv) {
                        *a = _mm512_fmadd_ps(xb, *wv, *a);
                    }
                }
            }
            let (lo, hi) = (_mm512_set1_ps(l.lo), _mm512_set1_ps(l.hi));
            let mut tile = [[0f32; BLOCK]; PX];
            for (row, acc) in tile.iter_mut().zip(&acc) {
                for (v, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(row.as_mut_ptr().add(16 * v), _mm512_min_ps(_mm512_max_ps(*a, lo), hi));
                }
            }
            let channels = (l.c_out - b * BLOCK).min(BLOCK);
            let n = (l.outputs - first).min(PX);
            let index = &l.index[first..first + n];
            for (ch, o) in (b * BLOCK..b * BLOCK + channels).enumerate() {
                let dst = out.add(o * l.outputs);
                for (&i, row) in index.iter().zip(&tile) {
                    *dst.add(i) = row[ch];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::zoo::Rng;
    use proptest::prelude::*;
    use tract_linalg::multithread::Executor;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// 1..150 output channels (every block width, tails), 1..300 terms at scattered offsets, 1..50 positions
        /// in any order, with and without a clamp, with none to nearly all of the input declared zero padding
        /// (terms reading only it skipped), on one thread and on a 2-thread pool: within `1e-5 · (1 + Σ|w·x|)` of
        /// the definition computed in f64.
        #[test]
        fn lanes_product_matches_the_definition(
            c_out in prop_oneof![1usize..=16, 1usize..150], terms in 1usize..300, outputs in 1usize..50,
            spacing in 0usize..=3, clamp in any::<bool>(), padding in 0.0f32..0.98, seed in any::<u64>(),
        ) {
            let mut rng = Rng::new(seed);
            let pad: Vec<bool> = (0..2000).map(|_| rng.unit() < padding).collect();
            let x: Vec<f32> = pad.iter().map(|&p| if p { 0.0 } else { rng.sym(2.0) }).collect();
            let offsets: Vec<usize> = (0..terms).map(|_| (rng.unit() * 1000.0) as usize).collect();
            // Positions anywhere, or evenly spaced 1, 2 or 3 apart (one load, two loads, a gather per term at most
            // 16 channels).
            let start = (rng.unit() * 800.0) as usize;
            let positions: Vec<usize> = (0..outputs)
                .map(|i| if spacing == 0 { (rng.unit() * 999.0) as usize } else { start + spacing * i })
                .collect();
            let w: Vec<f32> = (0..c_out * terms).map(|_| rng.sym(1.0)).collect();
            let bias: Vec<f32> = (0..c_out).map(|_| rng.sym(1.0)).collect();
            let (lo, hi) = if clamp { (0.0, 1.5) } else { (f32::NEG_INFINITY, f32::INFINITY) };
            let l = Lanes::new(offsets.clone(), &positions, c_out, |o, t| w[o * terms + t], &bias, (lo, hi), |j| pad[j]);
            for executor in [&Executor::SingleThread, crate::kernels::team::test_pool()] {
                let mut out = vec![f32::NAN; c_out * outputs];
                // Refused, computing nothing, without AVX-512.
                prop_assert_eq!(l.run(&x, &mut out, executor), Lanes::available());
                if !Lanes::available() {
                    prop_assert!(out.iter().all(|v| v.is_nan()));
                    continue;
                }
                for o in 0..c_out {
                    for (i, &p) in positions.iter().enumerate() {
                        let (mut exact, mut mag) = (bias[o] as f64, bias[o].abs() as f64);
                        for (t, &off) in offsets.iter().enumerate() {
                            exact += w[o * terms + t] as f64 * x[off + p] as f64;
                            mag += (w[o * terms + t] * x[off + p]).abs() as f64;
                        }
                        let exact = exact.max(lo as f64).min(hi as f64);
                        let got = out[o * outputs + i] as f64;
                        prop_assert!((got - exact).abs() <= 1e-5 * (1.0 + mag), "o {} i {}: {} vs {}", o, i, got, exact);
                    }
                }
            }
        }
    }

    #[test]
    fn mis_sized_buffers_are_refused() {
        let any = (f32::NEG_INFINITY, f32::INFINITY);
        let l = Lanes::new(vec![0, 5], &[0, 1, 2], 3, |_, _| 1.0, &[0.0; 3], any, |_| false);
        let mut out = vec![0f32; 9];
        assert!(!l.run(&[1.0; 7], &mut out, &Executor::SingleThread), "x too short: reads x[5 + 2]");
        assert!(!l.run(&[1.0; 8], &mut out[..8], &Executor::SingleThread), "out too short");
        if Lanes::available() {
            assert!(l.run(&[1.0; 8], &mut out, &Executor::SingleThread));
            assert_eq!(out, vec![2.0; 9]);
        }
    }
}
