//! `PupilPointwiseConv`: f32 1×1 convolutions (stride 1, no padding, group 1, channels first), the expand and
//! project layers of a MobileNet, computed straight from the NCHW planes: no im2col and no per-run packing of
//! the activations (tract packs them on every run, which for the few input channels of these layers costs as
//! much as the product). The weights are packed once, at load, in blocks of 6 output channels, with the bias and
//! a following ReLU / ReLU6 folded in; AVX-512 (6 channels × 64 positions per step), AVX2 + FMA (× 16), NEON,
//! scalar. With fewer than 48 positions (MobileNet's 6 × 6
//! layers) on AVX-512 the output channels go in the lanes instead (6 positions × 64 channels per step, each
//! vector of 16 channels transposed into 16 runs of positions at the end): 36 positions filled two vectors and a
//! quarter of one, whose pass ran with a third of the accumulators (the 384→96 layer 33 → 25 µs).

use std::ops::Range;
use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

use super::dwconv::following_clamp;
use super::matmul::following_bias;
use super::qgemv::Isa;
use super::taps::Simd;
use super::team;
use tract_linalg::multithread::Executor;

/// Multiply-adds per image below which a product is not shared with the thread pool.
pub(crate) const MIN_SPLIT_MACS: usize = 200_000;

/// Output channels per block of packed weights (one accumulator row each): 6 rows × 2 AVX2 registers of pixels
/// keep 12 independent FMA chains in 15 of the 16 registers (4 × 3 spilled one).
const ROWS: usize = 6;

/// Positions per unit of the split by positions: one step of the AVX2 kernel.
const SLAB: usize = 16;

/// Positions per image below which, on AVX-512, the output channels go in the lanes instead of the positions
/// ([`ChannelLanes`]): MobileNet's 6 × 6 layers have 36, two vectors of positions and a quarter of one (the
/// quarter ran as its own pass with a third of the accumulators).
const FEW_POSITIONS: usize = 48;
/// Positions and vectors of 16 output channels per step of [`ChannelLanes`]: 24 accumulators.
#[cfg(target_arch = "x86_64")]
const LANE_ROWS: usize = 6;
#[cfg(target_arch = "x86_64")]
const LANE_VECS: usize = 4;

/// The weights of a product over few positions laid out for the output channels in the lanes, `[term][op]`
/// (`op`: `c_out` rounded up to vectors of 16, zero past `c_out`), and the bias padded alike.
#[derive(Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // built only where AVX-512 can run it
struct ChannelLanes {
    op: usize,
    w: Vec<f32>,
    bias: Vec<f32>,
}

/// The weights of a 1×1 convolution packed for the kernels; more generally, of any product
/// `out[o][p] = Σ_t w[o][t] · x[offset[t] + p]` over `hw` contiguous positions, whose terms read the input at
/// fixed offsets (a stride-1 convolution over a zero-padded input is one: see [`super::gridconv`]).
#[derive(Debug)]
pub(crate) struct Pointwise {
    /// Input channels (of a 1×1 convolution: the number of terms).
    c_in: usize,
    c_out: usize,
    /// Output positions per image (pixels of a 1×1 convolution).
    hw: usize,
    /// Where each term starts reading in the input (`t · hw` for a 1×1 convolution).
    offsets: Vec<usize>,
    /// Input values one image must hold: `max(offsets) + hw`.
    x_len: usize,
    /// `[c_out / ROWS (rounded up)][terms][ROWS]`, zero-padded past `c_out`.
    w: Vec<f32>,
    /// Padded like `w`.
    bias: Vec<f32>,
    lo: f32,
    hi: f32,
    /// The same weights for the output channels in the lanes, when there are fewer than [`FEW_POSITIONS`]
    /// positions and the product runs on AVX-512 (built for no other `Simd`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    channel_lanes: Option<ChannelLanes>,
}

impl Pointwise {
    /// A 1×1 convolution, to run on `simd` (the layout for the output channels in the lanes is built only for
    /// AVX-512).
    pub(crate) fn new(
        (c_in, c_out, hw): (usize, usize, usize),
        weight: impl Fn(usize, usize) -> f32,
        bias: &[f32],
        clamp: (f32, f32),
        simd: Simd,
    ) -> Pointwise {
        Pointwise::shifted((0..c_in).map(|i| i * hw).collect(), (c_out, hw), weight, bias, clamp, simd)
    }

    /// A product whose term `t` reads `x[offsets[t] + p]` for the positions `p < hw`, with weights `weight(o, t)`,
    /// to run on `simd`.
    pub(crate) fn shifted(
        offsets: Vec<usize>,
        (c_out, hw): (usize, usize),
        weight: impl Fn(usize, usize) -> f32,
        bias: &[f32],
        (lo, hi): (f32, f32),
        simd: Simd,
    ) -> Pointwise {
        let terms = offsets.len();
        let blocks = c_out.div_ceil(ROWS);
        let mut w = vec![0f32; blocks * terms * ROWS];
        let mut b = vec![0f32; blocks * ROWS];
        for o in 0..c_out {
            let (blk, r) = (o / ROWS, o % ROWS);
            for t in 0..terms {
                w[(blk * terms + t) * ROWS + r] = weight(o, t);
            }
            b[o] = bias[o];
        }
        let x_len = offsets.iter().max().map_or(0, |m| m + hw);
        let channel_lanes = (hw < FEW_POSITIONS && simd == Simd::Avx512 && super::avx512f()).then(|| {
            let op = c_out.div_ceil(16) * 16;
            let mut lw = vec![0f32; terms * op];
            for t in 0..terms {
                for (o, v) in lw[t * op..][..c_out].iter_mut().enumerate() {
                    *v = weight(o, t);
                }
            }
            let mut lb = vec![0f32; op];
            lb[..c_out].copy_from_slice(&bias[..c_out]);
            ChannelLanes { op, w: lw, bias: lb }
        });
        Pointwise { c_in: terms, c_out, hw, offsets, x_len, w, bias: b, lo, hi, channel_lanes }
    }

    /// Input values one image must hold.
    pub(crate) fn x_len(&self) -> usize {
        self.x_len
    }

    /// One image: `out[o·hw + p] = clamp(bias[o] + Σ_t w[o][t] · x[offset[t] + p], lo, hi) + skip[o·hw + p]`
    /// (a residual connection summed in while the outputs are in cache; none without `skip`). With a
    /// multithreaded `executor` and at least [`MIN_SPLIT_MACS`] multiply-adds, the blocks of output channels are
    /// shared with its pool ([`team::share`]).
    pub(crate) fn run(
        &self,
        simd: Simd,
        x: &[f32],
        out: &mut [f32],
        skip: Option<&[f32]>,
        executor: &Executor,
    ) -> TractResult<()> {
        ensure!(
            x.len() >= self.x_len && out.len() == self.c_out * self.hw,
            "pointwise product: expected {} inputs and {} outputs, got {} and {}",
            self.x_len,
            self.c_out * self.hw,
            x.len(),
            out.len()
        );
        if let Some(skip) = skip {
            ensure!(
                skip.len() == out.len(),
                "pointwise product: expected {} residual values, got {}",
                out.len(),
                skip.len()
            );
        }
        #[cfg(target_arch = "x86_64")]
        if let (Simd::Avx512, Some(cl)) = (simd, &self.channel_lanes) {
            let (steps, groups) = (self.hw.div_ceil(LANE_ROWS), cl.op.div_ceil(16 * LANE_VECS));
            let chunks = team::chunks(executor, steps * groups, self.worth_sharing());
            let dst = team::Out::new(out);
            let ok = team::share(executor, chunks, &|c| {
                for job in c * steps * groups / chunks..(c + 1) * steps * groups / chunks {
                    let (group, step) = (job / steps, job % steps);
                    // SAFETY: AVX-512F (`Simd::Avx512` is only chosen with it); `x` and `out` are checked above;
                    // the job writes only its positions of its channels.
                    unsafe { x86::channel_lanes(self, cl, x, skip, (step * LANE_ROWS, group * LANE_VECS), dst.ptr()) }
                }
            });
            ensure!(ok, "a chunk of the f32 pointwise product panicked");
            return Ok(());
        }
        let (blocks, slabs) = (self.c_out.div_ceil(ROWS), self.hw.div_ceil(SLAB));
        let (chunks, by_positions) = self.cut(executor);
        let dst = team::Out::new(out);
        let ok = team::share(executor, chunks, &|c| {
            let (blocks, positions) = if by_positions {
                let (from, to) = (c * slabs / chunks * SLAB, ((c + 1) * slabs / chunks * SLAB).min(self.hw));
                (0..blocks, from..to)
            } else {
                (c * blocks / chunks..(c + 1) * blocks / chunks, 0..self.hw)
            };
            // SAFETY: `x` and `out` are checked above; chunk `c` alone writes these positions of these blocks'
            // output rows.
            unsafe { self.tile(simd, x, skip, &dst, blocks, positions) }
        });
        ensure!(ok, "a chunk of the f32 pointwise product panicked");
        Ok(())
    }

    /// Whether the product is large enough ([`MIN_SPLIT_MACS`]) to share with a thread pool.
    fn worth_sharing(&self) -> bool {
        self.c_out * self.c_in * self.hw >= MIN_SPLIT_MACS
    }

    /// How [`Pointwise::run`] shares the product with `executor`'s pool: `(chunks, by_positions)`, by blocks of
    /// output channels, or, when there are too few blocks to give every thread the same share (a 16-channel
    /// layer has 3), by runs of [`SLAB`] positions (at 2 threads MobileNet's 96→16 layer 19.8 → 13.5 µs).
    fn cut(&self, executor: &Executor) -> (usize, bool) {
        let worth = self.worth_sharing();
        let by_blocks = team::chunks(executor, self.c_out.div_ceil(ROWS), worth);
        let by_positions = team::chunks(executor, self.hw.div_ceil(SLAB), worth);
        if by_blocks < by_positions { (by_positions, true) } else { (by_blocks, false) }
    }

    /// The outputs at `positions` of the channel blocks `blocks` (of [`ROWS`] channels), then their part of
    /// `skip` added.
    ///
    /// # Safety
    /// `x` holds at least `x_len` values, `out` was made from `c_out · hw` values and `skip` holds as many;
    /// `positions` lies within `0..hw`, and no other thread touches these positions of these blocks' rows
    /// meanwhile.
    unsafe fn tile(
        &self,
        simd: Simd,
        x: &[f32],
        skip: Option<&[f32]>,
        out: &team::Out<f32>,
        blocks: Range<usize>,
        positions: Range<usize>,
    ) {
        let channels = blocks.start * ROWS..(blocks.end * ROWS).min(self.c_out);
        let done = match simd {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 if super::avx512f() => {
                // SAFETY: AVX-512F detected; `x` checked by the caller, the tile is inside `out` and ours.
                unsafe { x86::avx512(self, x, out.ptr(), blocks, positions.clone()) }
            }
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2Fma
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") =>
            {
                // SAFETY: AVX2 and FMA detected; `x` checked by the caller, the tile is inside `out` and ours.
                unsafe { x86::avx2(self, x, out.ptr(), blocks, positions.clone()) }
            }
            #[cfg(target_arch = "aarch64")]
            Simd::Neon => {
                // SAFETY: NEON is part of the aarch64 baseline; lengths as above.
                unsafe { arm::neon(self, x, out.ptr(), blocks, positions.clone()) }
            }
            _ => positions.start,
        };
        for o in channels {
            // SAFETY: the caller's contract: these positions of row `o` are inside `out` and this call's alone.
            let row = unsafe { out.part(o * self.hw + positions.start, positions.len()) };
            self.scalar(x, o, done..positions.end, &mut row[done - positions.start..]);
            if let Some(skip) = skip {
                super::eltwise::add_assign(simd, row, &skip[o * self.hw + positions.start..][..positions.len()]);
            }
        }
    }

    /// The outputs of channel `o` at `positions` into `row` (as long), one at a time (the reference, and the
    /// tail of the vector loops).
    fn scalar(&self, x: &[f32], o: usize, positions: Range<usize>, row: &mut [f32]) {
        let (blk, r) = (o / ROWS, o % ROWS);
        for (p, y) in positions.zip(row) {
            let mut acc = self.bias[o];
            for (t, &off) in self.offsets.iter().enumerate() {
                acc += self.w[(blk * self.c_in + t) * ROWS + r] * x[off + p];
            }
            *y = acc.max(self.lo).min(self.hi);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{ChannelLanes, LANE_ROWS, LANE_VECS, Pointwise, ROWS};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// The outputs at positions `p0 .. p0 + LANE_ROWS` (fewer at the end) of the output channels in the vectors
    /// `vec0 .. vec0 + LANE_VECS` (fewer at the end): one accumulator per position and vector, each input value
    /// broadcast against the vectors of weights; then each vector of 16 channels is transposed to 16 runs of
    /// positions, `skip`'s values added, one masked store per channel.
    ///
    /// # Safety
    /// AVX-512F; `x` holds `x_len` values; `out` points to `c_out × hw` values of which this call writes only
    /// its positions of its channels, and `skip` holds as many.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn channel_lanes(
        pk: &Pointwise,
        cl: &ChannelLanes,
        x: &[f32],
        skip: Option<&[f32]>,
        (p0, vec0): (usize, usize),
        out: *mut f32,
    ) {
        let rows = (pk.hw - p0).min(LANE_ROWS);
        // SAFETY: the contract above.
        unsafe {
            macro_rules! rows {
                ($nv:literal) => {
                    match rows {
                        6 => lanes_step::<6, $nv>(pk, cl, x, skip, (p0, vec0), out),
                        5 => lanes_step::<5, $nv>(pk, cl, x, skip, (p0, vec0), out),
                        4 => lanes_step::<4, $nv>(pk, cl, x, skip, (p0, vec0), out),
                        3 => lanes_step::<3, $nv>(pk, cl, x, skip, (p0, vec0), out),
                        2 => lanes_step::<2, $nv>(pk, cl, x, skip, (p0, vec0), out),
                        _ => lanes_step::<1, $nv>(pk, cl, x, skip, (p0, vec0), out),
                    }
                };
            }
            match (cl.op / 16 - vec0).min(LANE_VECS) {
                4 => rows!(4),
                3 => rows!(3),
                2 => rows!(2),
                _ => rows!(1),
            }
        }
    }

    /// [`channel_lanes`] for `R` positions and `NV` vectors of channels.
    #[target_feature(enable = "avx512f")]
    unsafe fn lanes_step<const R: usize, const NV: usize>(
        pk: &Pointwise,
        cl: &ChannelLanes,
        x: &[f32],
        skip: Option<&[f32]>,
        (p0, vec0): (usize, usize),
        out: *mut f32,
    ) {
        // SAFETY (whole body): term `t` reads `x[offset + p0 + r]` with `p0 + r < hw`, `offset + hw ≤ x_len`, and
        // the weights of vectors `vec0 + k < op / 16`; stores go to channels `< c_out`, positions `p0 .. p0 + R`.
        unsafe {
            let bias: [__m512; NV] = std::array::from_fn(|k| _mm512_loadu_ps(cl.bias.as_ptr().add((vec0 + k) * 16)));
            let mut acc = [bias; R];
            for (t, &off) in pk.offsets.iter().enumerate() {
                let w = cl.w.as_ptr().add(t * cl.op + vec0 * 16);
                let wv: [__m512; NV] = std::array::from_fn(|k| _mm512_loadu_ps(w.add(16 * k)));
                let xp = x.as_ptr().add(off + p0);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xb = _mm512_set1_ps(*xp.add(r));
                    for (a, w) in acc.iter_mut().zip(&wv) {
                        *a = _mm512_fmadd_ps(xb, *w, *a);
                    }
                }
            }
            let (lo, hi) = (_mm512_set1_ps(pk.lo), _mm512_set1_ps(pk.hi));
            let positions = crate::kernels::first_lanes(R);
            for (k, o0) in (vec0 * 16..).step_by(16).take(NV).enumerate() {
                let mut m: [__m512; 16] = std::array::from_fn(|r| match acc.get(r) {
                    Some(acc) => _mm512_min_ps(_mm512_max_ps(acc[k], lo), hi),
                    None => _mm512_setzero_ps(),
                });
                crate::kernels::transpose16(&mut m);
                for (j, v) in m.iter().enumerate().take(pk.c_out.saturating_sub(o0).min(16)) {
                    let at = (o0 + j) * pk.hw + p0;
                    let v = match skip {
                        Some(s) => _mm512_add_ps(*v, _mm512_maskz_loadu_ps(positions, s.as_ptr().add(at))),
                        None => *v,
                    };
                    _mm512_mask_storeu_ps(out.add(at), positions, v);
                }
            }
        }
    }

    /// The positions `positions` of the channel blocks `blocks` into the `c_out × hw` outputs at `out`: in
    /// steps of 16, then 8 (6 output channels × 2 or 1 registers of accumulators), then the last 1–7 with
    /// masked loads and stores; returns where it stopped (the end: all of them).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(
        pk: &Pointwise,
        x: &[f32],
        out: *mut f32,
        blocks: Range<usize>,
        positions: Range<usize>,
    ) -> usize {
        let (p0, end) = (positions.start, positions.end);
        let (n16, n8) = (p0 + (end - p0) / 16 * 16, p0 + (end - p0) / 8 * 8);
        // SAFETY: blocks read x[offset + p .. + 8·V] and write out[o·hw + p .. + 8·V] with p + 8·V <= end <= hw
        // and offset + hw <= x_len <= x.len(); the masked block touches only the lanes below end − n8.
        unsafe {
            for p in (p0..n16).step_by(16) {
                for blk in blocks.clone() {
                    block::<2>(pk, blk, p, x, out, None);
                }
            }
            for p in (n16..n8).step_by(8) {
                for blk in blocks.clone() {
                    block::<1>(pk, blk, p, x, out, None);
                }
            }
            if n8 < end {
                let lanes: [i32; 8] = std::array::from_fn(|l| if l < end - n8 { -1 } else { 0 });
                let mask = _mm256_loadu_si256(lanes.as_ptr() as *const __m256i);
                for blk in blocks.clone() {
                    block::<1>(pk, blk, n8, x, out, Some(mask));
                }
            }
        }
        end
    }

    /// [`avx2`] on AVX-512 (32 registers): steps of 64 positions (6 output channels × 4 registers, 24
    /// accumulators: per input channel 4 loads and 6 broadcasts for 24 FMAs, where the AVX2 step has 8 for 12),
    /// then 32, 16, and a masked last 1–15. MobileNet's 1×1 layers (in one process against the AVX2 kernel,
    /// turns after 3 ms pauses): p50 5–7% less for the whole model at 1 thread, 7–8% at 2.
    ///
    /// # Safety
    /// AVX-512F; as [`avx2`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512(
        pk: &Pointwise,
        x: &[f32],
        out: *mut f32,
        blocks: Range<usize>,
        positions: Range<usize>,
    ) -> usize {
        let (mut p, end) = (positions.start, positions.end);
        // SAFETY: as in `avx2`: every step reads x[offset + p .. + 16·V] and writes out[o·hw + p .. + 16·V] with
        // p + 16·V <= end <= hw (the masked step only the lanes below end − p).
        unsafe {
            while p + 64 <= end {
                for blk in blocks.clone() {
                    block512::<4>(pk, blk, p, x, out, 0xffff);
                }
                p += 64;
            }
            if p + 32 <= end {
                for blk in blocks.clone() {
                    block512::<2>(pk, blk, p, x, out, 0xffff);
                }
                p += 32;
            }
            if p + 16 <= end {
                for blk in blocks.clone() {
                    block512::<1>(pk, blk, p, x, out, 0xffff);
                }
                p += 16;
            }
            if p < end {
                let mask = crate::kernels::first_lanes(end - p);
                for blk in blocks.clone() {
                    block512::<1>(pk, blk, p, x, out, mask);
                }
            }
        }
        end
    }

    /// The [`ROWS`] output channels of block `blk` at `V` vectors of 16 positions from `p`, the last vector's
    /// loads and stores masked to `mask`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block512<const V: usize>(
        pk: &Pointwise,
        blk: usize,
        p: usize,
        x: &[f32],
        out: *mut f32,
        mask: __mmask16,
    ) {
        let (hw, c_in) = (pk.hw, pk.c_in);
        let masked = |v: usize| v + 1 == V && mask != 0xffff;
        // SAFETY: see `avx512`; weights and biases hold whole blocks of ROWS.
        unsafe {
            let w = pk.w.as_ptr().add(blk * c_in * ROWS);
            let xp = x.as_ptr().add(p);
            let mut acc: [[__m512; V]; ROWS] =
                std::array::from_fn(|r| [_mm512_set1_ps(*pk.bias.get_unchecked(blk * ROWS + r)); V]);
            for (i, &off) in pk.offsets.iter().enumerate() {
                let xs: [__m512; V] = std::array::from_fn(|v| {
                    let src = xp.add(off + 16 * v);
                    if masked(v) { _mm512_maskz_loadu_ps(mask, src) } else { _mm512_loadu_ps(src) }
                });
                for (r, row) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*w.add(i * ROWS + r));
                    for (a, xv) in row.iter_mut().zip(&xs) {
                        *a = _mm512_fmadd_ps(wv, *xv, *a);
                    }
                }
            }
            let (lo, hi) = (_mm512_set1_ps(pk.lo), _mm512_set1_ps(pk.hi));
            for (r, row) in acc.iter().enumerate() {
                let o = blk * ROWS + r;
                if o >= pk.c_out {
                    break;
                }
                let dst = out.add(o * hw + p);
                for (v, a) in row.iter().enumerate() {
                    let y = _mm512_min_ps(_mm512_max_ps(*a, lo), hi);
                    if masked(v) {
                        _mm512_mask_storeu_ps(dst.add(16 * v), mask, y)
                    } else {
                        _mm512_storeu_ps(dst.add(16 * v), y)
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block<const V: usize>(
        pk: &Pointwise,
        blk: usize,
        p: usize,
        x: &[f32],
        out: *mut f32,
        mask: Option<__m256i>,
    ) {
        let (hw, c_in) = (pk.hw, pk.c_in);
        // SAFETY: see `avx2`; weights and biases hold whole blocks of ROWS.
        unsafe {
            let w = pk.w.as_ptr().add(blk * c_in * ROWS);
            let xp = x.as_ptr().add(p);
            let mut acc = [[_mm256_setzero_ps(); V]; ROWS];
            for (r, row) in acc.iter_mut().enumerate() {
                *row = [_mm256_set1_ps(*pk.bias.get_unchecked(blk * ROWS + r)); V];
            }
            for (i, &off) in pk.offsets.iter().enumerate() {
                let mut xs = [_mm256_setzero_ps(); V];
                for (v, xv) in xs.iter_mut().enumerate() {
                    let src = xp.add(off + 8 * v);
                    *xv = match mask {
                        Some(m) => _mm256_maskload_ps(src, m),
                        None => _mm256_loadu_ps(src),
                    };
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let wv = _mm256_broadcast_ss(&*w.add(i * ROWS + r));
                    for (a, xv) in row.iter_mut().zip(&xs) {
                        *a = _mm256_fmadd_ps(wv, *xv, *a);
                    }
                }
            }
            let (lo, hi) = (_mm256_set1_ps(pk.lo), _mm256_set1_ps(pk.hi));
            for (r, row) in acc.iter().enumerate() {
                let o = blk * ROWS + r;
                if o >= pk.c_out {
                    break;
                }
                let dst = out.add(o * hw + p);
                for (v, a) in row.iter().enumerate() {
                    let y = _mm256_min_ps(_mm256_max_ps(*a, lo), hi);
                    match mask {
                        Some(m) => _mm256_maskstore_ps(dst.add(8 * v), m, y),
                        None => _mm256_storeu_ps(dst.add(8 * v), y),
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{Pointwise, ROWS};
    use std::arch::aarch64::*;
    use std::ops::Range;

    /// The positions `positions` of the channel blocks `blocks` into the `c_out × hw` outputs at `out`, in
    /// steps of 16 then 4 (6 output channels × 4 or 1 registers of accumulators); returns where it stopped
    /// (the scalar loop does the last 1–3).
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn neon(
        pk: &Pointwise,
        x: &[f32],
        out: *mut f32,
        blocks: Range<usize>,
        positions: Range<usize>,
    ) -> usize {
        let (p0, end) = (positions.start, positions.end);
        let (n16, n4) = (p0 + (end - p0) / 16 * 16, p0 + (end - p0) / 4 * 4);
        // SAFETY: blocks read x[offset + p .. + 4·V] and write out[o·hw + p .. + 4·V] with p + 4·V <= n4 <= hw
        // and offset + hw <= x_len <= x.len().
        unsafe {
            for p in (p0..n16).step_by(16) {
                for blk in blocks.clone() {
                    block::<4>(pk, blk, p, x, out);
                }
            }
            for p in (n16..n4).step_by(4) {
                for blk in blocks.clone() {
                    block::<1>(pk, blk, p, x, out);
                }
            }
        }
        n4
    }

    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn block<const V: usize>(pk: &Pointwise, blk: usize, p: usize, x: &[f32], out: *mut f32) {
        let (hw, c_in) = (pk.hw, pk.c_in);
        // SAFETY: see `neon`; weights and biases hold whole blocks of ROWS.
        unsafe {
            let w = pk.w.as_ptr().add(blk * c_in * ROWS);
            let xp = x.as_ptr().add(p);
            let mut acc = [[vdupq_n_f32(0.0); V]; ROWS];
            for (r, row) in acc.iter_mut().enumerate() {
                *row = [vdupq_n_f32(*pk.bias.get_unchecked(blk * ROWS + r)); V];
            }
            for (i, &off) in pk.offsets.iter().enumerate() {
                let mut xs = [vdupq_n_f32(0.0); V];
                for (v, xv) in xs.iter_mut().enumerate() {
                    *xv = vld1q_f32(xp.add(off + 4 * v));
                }
                let (wq, wd) = (vld1q_f32(w.add(i * ROWS)), vld1_f32(w.add(i * ROWS + 4)));
                for (v, xv) in xs.iter().enumerate() {
                    acc[0][v] = vfmaq_laneq_f32::<0>(acc[0][v], *xv, wq);
                    acc[1][v] = vfmaq_laneq_f32::<1>(acc[1][v], *xv, wq);
                    acc[2][v] = vfmaq_laneq_f32::<2>(acc[2][v], *xv, wq);
                    acc[3][v] = vfmaq_laneq_f32::<3>(acc[3][v], *xv, wq);
                    acc[4][v] = vfmaq_lane_f32::<0>(acc[4][v], *xv, wd);
                    acc[5][v] = vfmaq_lane_f32::<1>(acc[5][v], *xv, wd);
                }
            }
            let (lo, hi) = (vdupq_n_f32(pk.lo), vdupq_n_f32(pk.hi));
            for (r, row) in acc.iter().enumerate() {
                let o = blk * ROWS + r;
                if o >= pk.c_out {
                    break;
                }
                let dst = out.add(o * hw + p);
                for (v, a) in row.iter().enumerate() {
                    vst1q_f32(dst.add(4 * v), vminq_f32(vmaxq_f32(*a, lo), hi));
                }
            }
        }
    }
}

/// A 1×1 f32 convolution over channels-first images (plus a residual connection: a second input of the output's
/// shape, summed in).
#[derive(Debug, Clone)]
pub struct PupilPointwiseConv {
    pk: Arc<Pointwise>,
    isa: Isa,
    simd: Simd,
    out_shape: TVec<TDim>,
    residual: bool,
}

impl PartialEq for PupilPointwiseConv {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.pk, &other.pk)
            && self.isa == other.isa
            && self.out_shape == other.out_shape
            && self.residual == other.residual
    }
}
impl Eq for PupilPointwiseConv {}

impl PupilPointwiseConv {
    /// The instruction set level the operator was built for.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// `(input channels, output channels)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.pk.c_in, self.pk.c_out)
    }
    /// Whether the residual `Add` after the convolution was folded in (its other operand is the second input).
    pub fn residual(&self) -> bool {
        self.residual
    }
}

impl Op for PupilPointwiseConv {
    fn name(&self) -> StaticName {
        "PupilPointwiseConv".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        let p = &self.pk;
        Ok(vec![format!(
            "{}→{} channels, {} pixels, clamp [{}, {}]{}, {:?}",
            p.c_in,
            p.c_out,
            p.hw,
            p.lo,
            p.hi,
            if self.residual { ", plus the residual" } else { "" },
            self.simd
        )])
    }
    op_as_typed_op!();
}

impl EvalOp for PupilPointwiseConv {
    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let p = &self.pk;
        let shape = input.shape();
        let image = p.c_in * p.hw;
        let fits = shape.len() >= 3
            && shape[shape.len() - 3] == p.c_in
            && shape[shape.len() - 2] * shape[shape.len() - 1] == p.hw;
        if !fits {
            bail!("PupilPointwiseConv expects images of {} channels × {} pixels, got {shape:?}", p.c_in, p.hw);
        }
        let batch = input.len() / image;
        let out_shape = super::output_shape("PupilPointwiseConv", &self.out_shape, ctx, batch * p.c_out * p.hw)?;
        // SAFETY: f32 has no invalid bit patterns, and `run` writes every output value.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
        let src = input.try_as_plain_ram()?;
        let src = src.as_slice::<f32>()?;
        let mut dst = out.try_as_plain_ram_mut()?;
        let dst = dst.as_slice_mut::<f32>()?;
        let executor = tract_linalg::multithread::current_tract_executor();
        let per = p.c_out * p.hw;
        let skip = match (self.residual, inputs.get(1)) {
            (false, _) => None,
            (true, Some(skip)) => {
                ensure!(
                    skip.datum_type() == DatumType::F32 && skip.len() == dst.len(),
                    "PupilPointwiseConv expects a residual of {} f32 values, got {:?} {:?}",
                    dst.len(),
                    skip.datum_type(),
                    skip.shape()
                );
                Some(skip.try_as_plain_ram()?)
            }
            (true, None) => bail!("PupilPointwiseConv with a residual takes two inputs"),
        };
        let skip = skip.as_ref().map(|s| s.as_slice::<f32>()).transpose()?;
        for (i, (x, o)) in src.chunks_exact(image).zip(dst.chunks_exact_mut(per)).enumerate() {
            p.run(self.simd, x, o, skip.map(|s| &s[i * per..(i + 1) * per]), &executor)?;
        }
        Ok(tvec!(out.into_tvalue()))
    }
    op_out_of_plan!();
}

impl TypedOp for PupilPointwiseConv {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.out_shape)))
    }
    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let shape = &inputs[0].shape;
        let batch: TDim = shape.iter().take(shape.len().saturating_sub(3)).product();
        let p = &self.pk;
        Ok(tvec!((Cost::FMA(DatumType::F32), batch * (p.c_in * p.c_out * p.hw) as i64)))
    }
    as_op!();
}

/// Builds the pupil operator for a decluttered 1×1 f32 convolution, which tract declutters to an `EinSum`
/// `NIHW,OI->NOHW` (or `IHW,OI->OHW`, or `NIHW,OI->OHW` for a batch of one) with constant weights, the last
/// node it replaces (the bias `Add`, a ReLU / Clip, then a residual `Add` folded in) and the other operand of
/// that residual `Add` (the operator's second input); `None` for any other product.
pub(crate) fn for_einsum(
    model: &TypedModel,
    node: &TypedNode,
    isa: Isa,
) -> TractResult<Option<(PupilPointwiseConv, usize, Option<OutletId>)>> {
    let Some(op) = node.op_as::<EinSum>() else { return Ok(None) };
    if op.q_params.is_some() || op.operating_dt != DatumType::F32 || node.inputs.len() != 2 {
        return Ok(None);
    }
    let x = model.outlet_fact(node.inputs[0])?;
    let Some(w) = model.outlet_fact(node.inputs[1])?.konst.clone() else { return Ok(None) };
    let out_fact = model.outlet_fact(OutletId::new(node.id, 0))?;
    if x.datum_type != DatumType::F32 || x.konst.is_some() || w.datum_type() != DatumType::F32 {
        return Ok(None);
    }
    if out_fact.datum_type != DatumType::F32 {
        return Ok(None);
    }
    let expr = op.axes.to_string();
    let Some((ins, out)) = expr.split_once("->") else { return Ok(None) };
    let Some((a, b)) = ins.split_once(',') else { return Ok(None) };
    let (a, b, out): (Vec<char>, Vec<char>, Vec<char>) =
        (a.chars().collect(), b.chars().collect(), out.chars().collect());
    // The weights: the output-channel axis (in the output) and the input-channel axis (in the activations).
    let [b0, b1] = b[..] else { return Ok(None) };
    let (o, i, o_first) = if out.contains(&b0) { (b0, b1, true) } else { (b1, b0, false) };
    let ([.., ai, h, w_], [.., oo, oh, ow]) = (&a[..], &out[..]) else { return Ok(None) };
    if a.len() < 3 || out.len() < 3 || *ai != i || *oo != o || (h, w_) != (oh, ow) || out.contains(&i) {
        return Ok(None);
    }
    // Leading (batch) axes: the same in both, or a batch of one summed away.
    let (lead_a, lead_o) = (&a[..a.len() - 3], &out[..out.len() - 3]);
    let batch_of_one = lead_o.is_empty() && lead_a.len() == 1 && x.shape[0] == 1.to_dim();
    if lead_a != lead_o && !batch_of_one {
        return Ok(None);
    }
    let r = x.rank();
    let (Ok(c_in), Ok(ih), Ok(iw)) = (x.shape[r - 3].to_usize(), x.shape[r - 2].to_usize(), x.shape[r - 1].to_usize())
    else {
        return Ok(None);
    };
    let c_out = if o_first { w.shape()[0] } else { w.shape().get(1).copied().unwrap_or(0) };
    if w.shape().len() != 2 || w.len() != c_in * c_out || c_in == 0 || c_out == 0 {
        return Ok(None);
    }
    let wv = w.try_as_plain_ram()?;
    let wv = wv.as_slice::<f32>()?;
    let weight = |oc: usize, ic: usize| if o_first { wv[oc * c_in + ic] } else { wv[ic * c_out + oc] };
    let (bias, mut last) = match following_bias(model, node, c_out, 2)? {
        Some((bias, add)) => (bias, add),
        None => (vec![0.0; c_out], node.id),
    };
    let (lo, hi, clamp_last) = following_clamp(model, &model.nodes()[last])?;
    last = clamp_last;
    // A residual `Add` of the result and another computed tensor of its shape, when nothing else reads the result:
    // the other operand cannot depend on this node then.
    let mut skip = None;
    if let [succ] = model.nodes()[last].outputs[0].successors.as_slice()
        && !model.output_outlets()?.contains(&OutletId::new(last, 0))
    {
        let add = &model.nodes()[succ.node];
        if super::eltwise::for_add(model, add, isa)?.is_some() {
            skip = Some(add.inputs[1 - succ.slot]);
            last = add.id;
        }
    }
    let simd = Simd::for_isa(isa);
    let pk = Pointwise::new((c_in, c_out, ih * iw), weight, &bias, (lo, hi), simd);
    let out_shape = model.outlet_fact(OutletId::new(last, 0))?.shape.iter().cloned().collect();
    let op = PupilPointwiseConv { pk: Arc::new(pk), isa, simd, out_shape, residual: skip.is_some() };
    Ok(Some((op, last, skip)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::zoo::Rng;
    use proptest::prelude::*;

    #[test]
    fn few_output_channels_are_shared_by_positions_and_match_one_thread() {
        let pool = crate::kernels::team::test_pool();
        let mut rng = Rng::new(7);
        let cases = [(96, 16, 48 * 48, true), (16, 96, 48 * 48, false), (24, 30, 397, true), (40, 48, 300, false)];
        for ((c_in, c_out, hw, by_positions), isa) in
            cases.into_iter().flat_map(|c| Isa::available().into_iter().map(move |i| (c, i)))
        {
            let simd = Simd::for_isa(isa);
            let w: Vec<f32> = (0..c_out * c_in).map(|_| rng.sym(1.0)).collect();
            let bias: Vec<f32> = (0..c_out).map(|_| rng.sym(1.0)).collect();
            let x: Vec<f32> = (0..c_in * hw).map(|_| rng.sym(2.0)).collect();
            let skip: Vec<f32> = (0..c_out * hw).map(|_| rng.sym(2.0)).collect();
            let pk = Pointwise::new((c_in, c_out, hw), |o, i| w[o * c_in + i], &bias, (0.0, 6.0), simd);
            assert_eq!(pk.cut(pool), (8, by_positions), "{c_in}→{c_out} over {hw}");
            let run = |executor| {
                let mut out = vec![f32::NAN; c_out * hw];
                pk.run(simd, &x, &mut out, Some(&skip), executor).unwrap();
                out
            };
            let (one, two) = (run(&Executor::SingleThread), run(pool));
            assert!(one.iter().zip(&two).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa} {c_in}→{c_out} over {hw}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// 1..40 input and 1..60 output channels over 1..400 pixels (half the cases fewer than 48: the output
        /// channels in the lanes on AVX-512), with and without a clamp and a residual: every instruction set, on one thread and shared with a 2-thread pool (the larger products), within
        /// `1e-5 · (1 + Σ|w·x|)` of the definition computed in f64.
        #[test]
        fn pointwise_matches_the_definition_on_every_isa(
            c_in in 1usize..40, c_out in 1usize..60, hw in prop_oneof![1usize..48, 1usize..400], clamp in any::<bool>(),
            residual in any::<bool>(), seed in any::<u64>(),
        ) {
            let mut rng = Rng::new(seed);
            let x: Vec<f32> = (0..c_in * hw).map(|_| rng.sym(2.0)).collect();
            let skip: Option<Vec<f32>> = residual.then(|| (0..c_out * hw).map(|_| rng.sym(2.0)).collect());
            let w: Vec<f32> = (0..c_out * c_in).map(|_| rng.sym(1.0)).collect();
            let bias: Vec<f32> = (0..c_out).map(|_| rng.sym(1.0)).collect();
            let (lo, hi) = if clamp { (0.0, 1.5) } else { (f32::NEG_INFINITY, f32::INFINITY) };
            let pool = crate::kernels::team::test_pool();
            for (isa, executor) in Isa::available().into_iter().flat_map(|i| [(i, &Executor::SingleThread), (i, pool)]) {
                let simd = Simd::for_isa(isa);
                let pk = Pointwise::new((c_in, c_out, hw), |o, i| w[o * c_in + i], &bias, (lo, hi), simd);
                let mut out = vec![f32::NAN; c_out * hw];
                pk.run(simd, &x, &mut out, skip.as_deref(), executor).unwrap();
                for o in 0..c_out {
                    for p in 0..hw {
                        let mut exact = bias[o] as f64;
                        let mut mag = bias[o].abs() as f64;
                        for i in 0..c_in {
                            exact += w[o * c_in + i] as f64 * x[i * hw + p] as f64;
                            mag += (w[o * c_in + i] * x[i * hw + p]).abs() as f64;
                        }
                        // The residual is added after the clamp (an `Add` after the ReLU).
                        let r = skip.as_ref().map_or(0.0, |s| s[o * hw + p] as f64);
                        let exact = exact.max(lo as f64).min(hi as f64) + r;
                        let got = out[o * hw + p] as f64;
                        prop_assert!((got - exact).abs() <= 1e-5 * (1.0 + mag + r.abs()), "{} o {} p {}: {} vs {}", isa, o, p, got, exact);
                    }
                }
            }
        }
    }
}
