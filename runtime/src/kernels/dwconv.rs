//! `PupilDepthwiseConv` and `PupilDirectConv`: the tract operators that run f32 convolutions with few input
//! channels per group (depthwise convolutions, and regular convolutions over at most [`MAX_DIRECT_INPUTS`]
//! input channels such as an image stem) directly, with the weights laid out once, at load: on AVX-512 from the
//! unpadded planes with masked loads ([`super::rowconv`]; a dense stem of many taps as a channels-in-the-lanes
//! product, [`super::lanes`]), elsewhere on the sliding-window kernels ([`super::taps`] for channels-first
//! images, [`super::channels_last`] for channels-last depthwise ones).

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::KernelFormat;
use tract_onnx::tract_core::ops::cnn::conv::Conv;
use tract_onnx::tract_core::ops::math::{Max, Min};
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::channels_last;
use super::dwblocks::DwBlocks;
use super::gridconv::Grid;
use super::lanes::Lanes;
use super::qgemv::Isa;
use super::requant::{self, Stage};
use super::rowconv;
use super::scratch::Kept;
use super::taps::{self, Reduce, Simd, Tap, Window};
use super::team;

/// How tract lays out the images a node reads: with or without the batch axis, channels first (NCHW / CHW) or
/// last (NHWC / HWC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Layout {
    pub has_n: bool,
    pub channels_last: bool,
}

impl Layout {
    /// The shape of a `[c, h, w]` image batch in this layout (`n` is dropped without a batch axis).
    pub(crate) fn shape<D: Clone>(&self, n: D, c: D, h: D, w: D) -> TVec<D> {
        let image = if self.channels_last { tvec![h, w, c] } else { tvec![c, h, w] };
        if self.has_n { std::iter::once(n).chain(image).collect() } else { image }
    }

    /// `(batch, [c, h, w])` of a concrete input shape, or `None` when it has the wrong rank.
    pub(crate) fn split(&self, shape: &[usize]) -> Option<(usize, [usize; 3])> {
        let (n, image) = match (self.has_n, shape) {
            (true, [n, a, b, c]) => (*n, [*a, *b, *c]),
            (false, [a, b, c]) => (1, [*a, *b, *c]),
            _ => return None,
        };
        Some((n, if self.channels_last { [image[2], image[0], image[1]] } else { image }))
    }
}

/// A regular (group 1) convolution is computed directly when it has at most this many input channels;
/// with more, tract's im2col + matrix product is the better algorithm.
pub const MAX_DIRECT_INPUTS: usize = 4;

/// Taps per output from which a dense direct convolution runs on the channels-in-the-lanes product (see
/// [`DirectConv::with_lanes`]).
const LANES_MIN_TAPS: usize = 18;

/// Multiply-adds per run below which the output planes are not shared with the thread pool.
const MIN_SPLIT_MACS: usize = 50_000;

/// The shared part of both operators: geometry, taps (weights) and biases.
#[derive(Debug)]
pub(crate) struct DirectConv {
    win: Window,
    c_in: usize,
    c_out: usize,
    group: usize,
    /// `c_out × (c_in / group · kh · kw)` taps, bases relative to the buffer of one group's input planes.
    taps: Vec<Tap>,
    /// The same weights as `taps`, `[c_out][c_in / group][kh][kw]`, for [`rowconv`] and [`Lanes`].
    weights: Vec<f32>,
    bias: Vec<f32>,
    /// Clamp applied to every output (a ReLU or ReLU6 that followed the convolution), ±∞ for none.
    lo: f32,
    hi: f32,
    /// Channels-last images (depthwise with one output per channel only): the weights as `[kh · kw][c]`, used
    /// instead of `taps`.
    channels_last: Option<Vec<f32>>,
    /// The phase-split input planes of one group and the flat output run, kept between runs (the padding stays
    /// zero: only the interiors are written).
    scratch: Kept<(Vec<f32>, Vec<f32>)>,
    /// A dense convolution of many taps per output (an image stem: 3 channels × 3 × 3) as a channels-in-the-lanes
    /// product over the zero-padded input, on AVX-512 (see [`DirectConv::with_lanes`]).
    lanes: Option<Padded>,
    /// Planes narrower than a vector at stride 1, computed as one run of values each on AVX-512 (6 × 6 and
    /// 12 × 12 depthwise layers).
    flat: Option<rowconv::Flat>,
    /// A depthwise convolution with 16 channels in the lanes, on AVX-512 ([`DwBlocks`]).
    blocks: Option<DwBlocks>,
}

/// The zero-padded input planes of a dense convolution and its [`Lanes`] product over them.
#[derive(Debug)]
struct Padded {
    lanes: Lanes,
    /// Where the image sits in the padded planes.
    grid: Grid,
    /// The padded planes, kept between runs (the padding stays zero: only the image is written).
    planes: Kept<Vec<f32>>,
}

impl DirectConv {
    /// Lays out OIHW weights `[c_out, c_in / group, kh, kw]` as taps, every output clamped to `[lo, hi]` (a
    /// ReLU / ReLU6 folded in; ±∞ for none). The caller checks that `group` divides both channel counts and that
    /// `weights` and `bias` have the right lengths.
    pub(crate) fn new(
        win: Window,
        (c_in, c_out, group): (usize, usize, usize),
        weights: impl Fn(usize, usize, usize, usize) -> f32,
        bias: Vec<f32>,
        (lo, hi): (f32, f32),
    ) -> DirectConv {
        let cig = c_in / group;
        let plane_len = win.plane_len();
        let mut taps = Vec::with_capacity(c_out * cig * win.kh * win.kw);
        for o in 0..c_out {
            for i in 0..cig {
                for y in 0..win.kh {
                    for x in 0..win.kw {
                        taps.push(Tap { base: i * plane_len + win.tap_base(y, x), w: weights(o, i, y, x) });
                    }
                }
            }
        }
        let weights: Vec<f32> = taps.iter().map(|t| t.w).collect();
        let flat = rowconv::Flat::new(&win, cig);
        // Depthwise at stride 2 onto rows of at most 8 columns (the row kernels fill at most half their lanes):
        // MobileNet's 12 × 12 → 6 × 6 layer over 192 channels 14.3 → 8.9 µs (kernel alone, min of 1500),
        // MobileNet 559.6–566.9 → 553.9–558.1 µs (min of 1500, three alternated runs). On the 24 × 24 → 12 × 12
        // one the rows stay faster (16.5 vs 20.4 µs: the transposes in and out cost more than the lanes gained).
        let blocks = if group == c_in && group == c_out && win.sh == 2 && win.ow <= DwBlocks::MAX_COLUMNS {
            DwBlocks::new(&win, c_out, &weights, &bias, (lo, hi))
        } else {
            None
        };
        DirectConv {
            win,
            c_in,
            c_out,
            group,
            taps,
            weights,
            bias,
            lo,
            hi,
            channels_last: None,
            scratch: Kept::new(),
            lanes: None,
            flat,
            blocks,
        }
        .with_lanes()
    }

    /// With the [`Lanes`] product of a dense convolution of at least [`LANES_MIN_TAPS`] taps per output whose
    /// output channels fill whole AVX-512 registers, on a CPU that has AVX-512 (the row kernels recompute each
    /// input row's taps for every output channel; here each input value is loaded once per 16–64 channels:
    /// MobileNet with its 3 → 16 stride-2 stem on it, f32 633 → 619 µs, int8 579 → 561–572 µs, min of 500 runs,
    /// alternated).
    fn with_lanes(mut self) -> DirectConv {
        let win = &self.win;
        let terms = self.taps_per_output();
        if self.group != 1 || terms < LANES_MIN_TAPS || !self.c_out.is_multiple_of(16) || !Lanes::available() {
            return self;
        }
        let grid = Grid::strided(
            self.c_in,
            (win.h, win.w),
            (win.pt, win.pl),
            (win.oh, win.ow),
            (win.kh, win.kw),
            (win.sh, win.sw),
        );
        let mut offsets = Vec::with_capacity(terms);
        for c in 0..self.c_in {
            for ky in 0..win.kh {
                for kx in 0..win.kw {
                    offsets.push(c * grid.plane() + ky * grid.pw + kx);
                }
            }
        }
        let pw = grid.pw;
        let positions: Vec<usize> =
            (0..win.oh).flat_map(|y| (0..win.ow).map(move |x| y * win.sh * pw + x * win.sw)).collect();
        let w = &self.weights;
        let (bias, clamp) = (&self.bias, (self.lo, self.hi));
        let weight = |o, t| w[o * terms + t];
        let lanes = Lanes::new(offsets, &positions, self.c_out, weight, bias, clamp, |j| grid.is_padding(j));
        self.lanes = Some(Padded { lanes, grid, planes: Kept::new() });
        self
    }

    /// A depthwise convolution (one output per channel) over channels-last images, weights given as
    /// `weights(channel, ky, kx)`, clamped like [`DirectConv::new`].
    pub(crate) fn channels_last(
        win: Window,
        c: usize,
        weights: impl Fn(usize, usize, usize) -> f32,
        bias: Vec<f32>,
        (lo, hi): (f32, f32),
    ) -> DirectConv {
        let mut w = Vec::with_capacity(win.kh * win.kw * c);
        for y in 0..win.kh {
            for x in 0..win.kw {
                w.extend((0..c).map(|ch| weights(ch, y, x)));
            }
        }
        DirectConv {
            win,
            c_in: c,
            c_out: c,
            group: c,
            taps: vec![],
            weights: vec![],
            bias,
            lo,
            hi,
            channels_last: Some(w),
            scratch: Kept::new(),
            lanes: None,
            flat: None,
            blocks: None,
        }
    }

    fn taps_per_output(&self) -> usize {
        self.c_in / self.group * self.win.kh * self.win.kw
    }

    /// Convolves `batch` images `[c_in, h, w]` into `out` (`batch × [c_out, oh, ow]`), or `[h, w, c]` into
    /// `[oh, ow, c]` for a channels-last convolution; then runs `epilogue` (a requantization chain, see
    /// [`super::requant`]) over the output, in place. (Run on each plane right after it is computed instead, the
    /// chain made int8 MobileNet slower, 835 → 860 µs; over the whole output it saves the separate pass's
    /// allocation and copy, 840 → 811 µs.)
    pub(crate) fn run(
        &self,
        simd: Simd,
        input: &[f32],
        batch: usize,
        out: &mut [f32],
        epilogue: &[Stage],
    ) -> TractResult<()> {
        let win = &self.win;
        let (plane, oplane, plane_len) = (win.h * win.w, win.oh * win.ow, win.plane_len());
        let (cig, cog) = (self.c_in / self.group, self.c_out / self.group);
        ensure!(input.len() == batch * self.c_in * plane && out.len() == batch * self.c_out * oplane);
        if let Some(w) = &self.channels_last {
            let c = self.c_in;
            for (x, o) in input.chunks_exact(plane * c).zip(out.chunks_exact_mut(oplane * c)) {
                ensure!(channels_last::depthwise(simd, win, c, w, &self.bias, (self.lo, self.hi), x, o));
                if !epilogue.is_empty() {
                    requant::run_in_place(simd, epilogue, o);
                }
            }
            return Ok(());
        }
        let tpo = self.taps_per_output();
        if let (Simd::Avx512, Some(p)) = (simd, &self.lanes) {
            let executor = tract_linalg::multithread::current_tract_executor();
            let mut planes = p.planes.take_or(|| vec![0f32; self.c_in * p.grid.plane()]);
            let mut ran = true;
            for (x, o) in input.chunks_exact(self.c_in * plane).zip(out.chunks_exact_mut(self.c_out * oplane)) {
                p.grid.fill(x, &mut planes);
                ran &= p.lanes.run(&planes, o, &executor);
                if !epilogue.is_empty() {
                    requant::run_in_place(simd, epilogue, o);
                }
            }
            p.planes.keep(planes);
            ensure!(ran, "the lanes product refused a direct convolution");
            return Ok(());
        }
        if let (Simd::Avx512, Some(blocks)) = (simd, &self.blocks) {
            let executor = tract_linalg::multithread::current_tract_executor();
            let share = self.c_out * oplane * tpo >= MIN_SPLIT_MACS;
            for (x, o) in input.chunks_exact(self.c_in * plane).zip(out.chunks_exact_mut(self.c_out * oplane)) {
                ensure!(blocks.run(x, o, &executor, share), "the channel-block kernel refused a depthwise convolution");
                if !epilogue.is_empty() {
                    requant::run_in_place(simd, epilogue, o);
                }
            }
            return Ok(());
        }
        if simd == Simd::Avx512 && (self.flat.is_some() || rowconv::supports(win)) {
            // Output planes shared with the thread pool in chunks of whole planes (no scratch to share).
            let planes = batch * self.c_out;
            let executor = tract_linalg::multithread::current_tract_executor();
            let macs = planes * oplane * tpo;
            let chunks = team::chunks(&executor, planes, macs >= MIN_SPLIT_MACS);
            let dst = team::Out::new(out);
            let refused = std::sync::atomic::AtomicBool::new(false);
            let ok = team::share(&executor, chunks, &|c| {
                let (first, last) = (c * planes / chunks, (c + 1) * planes / chunks);
                let clamp = (self.lo, self.hi);
                let mut p = first;
                while p < last {
                    let (n, oc) = (p / self.c_out, p % self.c_out);
                    // Output planes computed by one call: a depthwise convolution's consecutive channels of one
                    // image read consecutive input planes (one flat-kernel call), others one plane at a time.
                    let count =
                        if cig == 1 && cog == 1 && self.flat.is_some() { (last - p).min(self.c_out - oc) } else { 1 };
                    let x = &input[(n * self.c_in + oc / cog * cig) * plane..][..count * cig * plane];
                    // SAFETY: planes `p .. p + count` of `out` (checked above) are written by this chunk alone.
                    let o = unsafe { dst.part(p * oplane, count * oplane) };
                    let w = &self.weights[oc * tpo..][..count * tpo];
                    let bias = &self.bias[oc..oc + count];
                    let ran = match &self.flat {
                        Some(flat) => flat.run(x, w, bias, clamp, o),
                        None => rowconv::plane(win, x, w, bias[0], clamp, o),
                    };
                    if !ran {
                        refused.store(true, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                    p += count;
                }
                if !epilogue.is_empty() {
                    // Once over the chunk's planes (per plane, the calls cost more than the work on 6 × 6 planes).
                    // SAFETY: planes `first..last` are this chunk's alone.
                    requant::run_in_place(simd, epilogue, unsafe { dst.part(first * oplane, (last - first) * oplane) });
                }
            });
            ensure!(ok, "a chunk of a direct convolution panicked");
            ensure!(!refused.into_inner(), "the row kernel refused a direct convolution's plane");
            return Ok(());
        }
        // Zero padding: written once, the interiors are overwritten plane after plane.
        let (mut buf, mut flat) =
            self.scratch.take_or(|| (vec![0f32; win.buffer_len(cig)], vec![0f32; win.flat_len()]));
        for n in 0..batch {
            for g in 0..self.group {
                for i in 0..cig {
                    let ci = n * self.c_in + g * cig + i;
                    win.scatter(simd, &input[ci * plane..][..plane], &mut buf[i * plane_len..][..plane_len]);
                }
                for oc in g * cog..(g + 1) * cog {
                    let reduce = Reduce::MulAdd { bias: self.bias[oc], lo: self.lo, hi: self.hi };
                    ensure!(taps::run(simd, reduce, &buf, &self.taps[oc * tpo..][..tpo], &mut flat));
                    win.gather(simd, &flat, &mut out[(n * self.c_out + oc) * oplane..][..oplane]);
                }
            }
        }
        self.scratch.keep((buf, flat));
        if !epilogue.is_empty() {
            requant::run_in_place(simd, epilogue, out);
        }
        Ok(())
    }
}

/// An f32 convolution computed directly; `DEPTHWISE` tells the two kinds apart (see [`PupilDepthwiseConv`],
/// [`PupilDirectConv`]).
#[derive(Debug, Clone)]
pub struct PupilConv<const DEPTHWISE: bool> {
    conv: Arc<DirectConv>,
    isa: Isa,
    simd: Simd,
    layout: Layout,
    out_shape: TVec<TDim>,
    /// The requantization chain after the convolution (int8 graphs), run over its output in place (see
    /// [`Self::with_epilogue`]).
    epilogue: Vec<Stage>,
}

/// A depthwise convolution (`group` = input channels > 1; usually also = output channels): one window per channel.
pub type PupilDepthwiseConv = PupilConv<true>;
/// A regular convolution over at most [`MAX_DIRECT_INPUTS`] input channels.
pub type PupilDirectConv = PupilConv<false>;

impl<const D: bool> PartialEq for PupilConv<D> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.conv, &other.conv)
            && self.isa == other.isa
            && self.layout == other.layout
            && self.epilogue == other.epilogue
    }
}
impl<const D: bool> Eq for PupilConv<D> {}

impl<const D: bool> PupilConv<D> {
    /// The instruction set level the operator was built for.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// `(taps per output value, output channels)`: `c_in / group · kh · kw` and `c_out`.
    pub fn dims(&self) -> (usize, usize) {
        (self.conv.taps_per_output(), self.conv.c_out)
    }
    /// The clamp applied to the outputs, `(lo, hi)`: a ReLU / ReLU6 (`Clip`) that followed the convolution in the
    /// graph and was folded into it; `(−∞, +∞)` when there was none.
    pub fn clamp(&self) -> (f32, f32) {
        (self.conv.lo, self.conv.hi)
    }
    /// This convolution followed by the requantization chain `stages` (appended to its epilogue).
    pub(crate) fn with_epilogue(&self, stages: &[Stage]) -> Self {
        let mut epilogue = self.epilogue.clone();
        epilogue.extend_from_slice(stages);
        PupilConv { epilogue, ..self.clone() }
    }
    /// Whether it runs with 16 channels in the lanes ([`super::dwblocks`]: a stride-2 depthwise convolution onto
    /// rows of at most 8 columns, on AVX-512).
    pub fn channel_blocks(&self) -> bool {
        self.simd == Simd::Avx512 && self.conv.blocks.is_some()
    }
    /// The requantization chain run over the output.
    pub fn epilogue(&self) -> &[Stage] {
        &self.epilogue
    }
    fn macs_per_image(&self) -> usize {
        self.conv.c_out * self.conv.win.oh * self.conv.win.ow * self.conv.taps_per_output()
    }
}

impl<const D: bool> Op for PupilConv<D> {
    fn name(&self) -> StaticName {
        if D { "PupilDepthwiseConv".into() } else { "PupilDirectConv".into() }
    }
    fn info(&self) -> TractResult<Vec<String>> {
        let c = &self.conv;
        let w = &c.win;
        Ok(vec![format!(
            "{}→{} channels, group {}, kernel {}x{}, stride {}x{}, pad {}x{}, {}x{}→{}x{}, clamp [{}, {}], {:?}, {:?}",
            c.c_in,
            c.c_out,
            c.group,
            w.kh,
            w.kw,
            w.sh,
            w.sw,
            w.pt,
            w.pl,
            w.h,
            w.w,
            w.oh,
            w.ow,
            c.lo,
            c.hi,
            self.layout,
            self.simd
        )])
    }
    op_as_typed_op!();
}

impl<const D: bool> EvalOp for PupilConv<D> {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let c = &self.conv;
        let shape = input.shape();
        let split = self.layout.split(shape);
        let Some((batch, _)) = split.filter(|(_, chw)| *chw == [c.c_in, c.win.h, c.win.w]) else {
            bail!(
                "{} expects {:?} images of {}×{}×{} (c×h×w), got input shape {shape:?}",
                self.name(),
                self.layout,
                c.c_in,
                c.win.h,
                c.win.w
            )
        };
        let out_shape = self.layout.shape(batch, c.c_out, c.win.oh, c.win.ow);
        // SAFETY: f32 has no invalid bit patterns, and `run` writes every output value (the row kernels and the
        // lanes product store each one; the sliding-window path copies each plane's `oh × ow` values out of its
        // flat run) or fails, dropping the tensor unread.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
        let src = input.try_as_plain_ram()?;
        let dst = &mut out.try_as_plain_ram_mut()?;
        c.run(self.simd, src.as_slice::<f32>()?, batch, dst.as_slice_mut::<f32>()?, &self.epilogue)?;
        Ok(tvec!(out.into_tvalue()))
    }
    op_out_of_plan!();
}

impl<const D: bool> TypedOp for PupilConv<D> {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.out_shape)))
    }
    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let batch = if self.layout.has_n { inputs[0].shape[0].clone() } else { TDim::from(1) };
        Ok(tvec!((Cost::FMA(DatumType::F32), batch * self.macs_per_image() as i64)))
    }
    as_op!();
}

/// What [`for_conv`] built.
#[derive(Debug)]
pub(crate) enum Direct {
    Depthwise(PupilDepthwiseConv),
    Dense(PupilDirectConv),
}

/// The clamp that a chain of f32 `Max` / `Min` with a constant scalar right after `node` applies (tract's
/// declutter form of ReLU and Clip), and the last node of the chain (`node` itself when there is none). The
/// chain stops at a result used more than once or by the model's outputs.
pub(crate) fn following_clamp(model: &TypedModel, node: &TypedNode) -> TractResult<(f32, f32, usize)> {
    let (mut lo, mut hi, mut last) = (f32::NEG_INFINITY, f32::INFINITY, node.id);
    let shape = &model.outlet_fact(OutletId::new(node.id, 0))?.shape;
    let outputs = model.output_outlets()?;
    loop {
        let here = &model.nodes()[last];
        let [succ] = here.outputs.first().map(|o| o.successors.as_slice()).unwrap_or_default() else { break };
        if here.outputs.len() != 1 || outputs.contains(&OutletId::new(last, 0)) {
            break;
        }
        let next = &model.nodes()[succ.node];
        let Some(bin) = next.op_as::<TypedBinOp>() else { break };
        let is_max = bin.0.is::<Max>();
        if (!is_max && !bin.0.is::<Min>()) || bin.1.is_some() || next.inputs.len() != 2 || next.outputs.len() != 1 {
            break;
        }
        let out = model.outlet_fact(OutletId::new(next.id, 0))?;
        if out.datum_type != DatumType::F32 || &out.shape != shape {
            break;
        }
        let other = model.outlet_fact(next.inputs[1 - succ.slot])?;
        let Some(k) = &other.konst else { break };
        if k.datum_type() != DatumType::F32 || k.len() != 1 {
            break;
        }
        let c = k.try_as_plain_ram()?.as_slice::<f32>()?[0];
        if c.is_nan() {
            break;
        }
        // max(clamp(x, lo, hi), c) = clamp(x, max(lo, c), max(hi, c)); min likewise.
        (lo, hi) = if is_max { (lo.max(c), hi.max(c)) } else { (lo.min(c), hi.min(c)) };
        last = next.id;
    }
    Ok((lo, hi, last))
}

fn konst_f32(model: &TypedModel, outlet: OutletId) -> TractResult<Option<Vec<f32>>> {
    let fact = model.outlet_fact(outlet)?;
    let Some(t) = &fact.konst else { return Ok(None) };
    if t.datum_type() != DatumType::F32 {
        return Ok(None);
    }
    Ok(Some(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()))
}

/// The sliding window of a tract `PoolSpec` over a concrete input shape, or `None` when it is not a plain 2-D
/// window pupil handles (dilation, symbolic image sizes, padding past a window). Also returns the layout and
/// the channel count.
pub(crate) fn window_of(
    spec: &tract_onnx::tract_core::ops::cnn::PoolSpec,
    input_shape: &[TDim],
) -> TractResult<Option<(Window, Layout, usize)>> {
    let (has_n, channels_last) = match spec.data_format {
        DataFormat::NCHW => (true, false),
        DataFormat::CHW => (false, false),
        DataFormat::NHWC => (true, true),
        DataFormat::HWC => (false, true),
    };
    let layout = Layout { has_n, channels_last };
    if spec.rank() != 2 || spec.dilations().iter().any(|&d| d != 1) || input_shape.len() != 3 + has_n as usize {
        return Ok(None);
    }
    let image = &input_shape[has_n as usize..];
    let Some(dims) = image.iter().map(|d| d.to_usize().ok()).collect::<Option<Vec<usize>>>() else { return Ok(None) };
    let (c, h, w) = if channels_last { (dims[2], dims[0], dims[1]) } else { (dims[0], dims[1], dims[2]) };
    let padded = spec.computed_padding(&[h, w]);
    let strides = spec.strides();
    let k = &spec.kernel_shape;
    let window = Window::new(
        (h, w),
        (k[0], k[1]),
        (strides[0], strides[1]),
        (padded[0].pad_before, padded[1].pad_before),
        (padded[0].convoluted, padded[1].convoluted),
    );
    Ok(window.map(|w| (w, layout, c)))
}

/// A decluttered f32 `Conv` node (no dilation, constant weights and bias, concrete image sizes) read into plain
/// numbers: what every pupil convolution operator is built from.
pub(crate) struct ConvParts {
    pub win: Window,
    pub layout: Layout,
    pub c_in: usize,
    pub c_out: usize,
    pub group: usize,
    /// The weights as `[c_out][c_in / group][kh][kw]` (OIHW), whatever format the node had.
    pub kernel: Vec<f32>,
    /// One bias per output channel.
    pub bias: Vec<f32>,
    /// The node's output shape.
    pub out_shape: TVec<TDim>,
}

impl ConvParts {
    /// Input channels per group.
    pub fn cig(&self) -> usize {
        self.c_in / self.group
    }
    /// The weight of output channel `o`, input channel `i` (within its group), kernel row `y`, column `x`.
    pub fn weight(&self, o: usize, i: usize, y: usize, x: usize) -> f32 {
        self.kernel[((o * self.cig() + i) * self.win.kh + y) * self.win.kw + x]
    }
}

/// The [`ConvParts`] of `node`, or `None` when it is not an f32 `Conv` pupil can read (tract keeps it).
pub(crate) fn conv_parts(model: &TypedModel, node: &TypedNode) -> TractResult<Option<ConvParts>> {
    let Some(op) = node.op_as::<Conv>() else { return Ok(None) };
    if op.q_params.is_some() || node.inputs.len() != 3 {
        return Ok(None);
    }
    let x = model.outlet_fact(node.inputs[0])?;
    let out_fact = model.outlet_fact(OutletId::new(node.id, 0))?;
    if x.datum_type != DatumType::F32 || out_fact.datum_type != DatumType::F32 {
        return Ok(None);
    }
    let Some((win, layout, c_in)) = window_of(&op.pool_spec, &x.shape)? else { return Ok(None) };
    let (c_out, group) = (op.output_channels(), op.group);
    if c_in != op.input_channels() || group == 0 || c_in % group != 0 || c_out % group != 0 {
        return Ok(None);
    }
    let cig = c_in / group;
    // The output the node declares must be the one the window computes.
    let expected = layout.shape(x.shape[0].clone(), c_out.into(), win.oh.into(), win.ow.into());
    let out_shape: TVec<TDim> = out_fact.shape.iter().cloned().collect();
    if out_shape != expected {
        return Ok(None);
    }
    let (Some(kernel), Some(bias)) = (konst_f32(model, node.inputs[1])?, konst_f32(model, node.inputs[2])?) else {
        return Ok(None);
    };
    let kshape: TVec<usize> =
        model.outlet_fact(node.inputs[1])?.shape.as_concrete().map(|s| s.into()).unwrap_or_default();
    let (kh, kw) = (win.kh, win.kw);
    let expected_kshape: [usize; 4] = match op.kernel_fmt {
        KernelFormat::OIHW => [c_out, cig, kh, kw],
        KernelFormat::OHWI => [c_out, kh, kw, cig],
        KernelFormat::HWIO => [kh, kw, cig, c_out],
    };
    if kshape.as_slice() != expected_kshape || kernel.len() != c_out * cig * kh * kw {
        return Ok(None);
    }
    if bias.len() != 1 && bias.len() != c_out {
        return Ok(None);
    }
    let mut oihw = Vec::with_capacity(kernel.len());
    for o in 0..c_out {
        for i in 0..cig {
            for y in 0..kh {
                for x in 0..kw {
                    oihw.push(
                        kernel[match op.kernel_fmt {
                            KernelFormat::OIHW => ((o * cig + i) * kh + y) * kw + x,
                            KernelFormat::OHWI => ((o * kh + y) * kw + x) * cig + i,
                            KernelFormat::HWIO => ((y * kw + x) * cig + i) * c_out + o,
                        }],
                    );
                }
            }
        }
    }
    let bias = if bias.len() == 1 { vec![bias[0]; c_out] } else { bias };
    Ok(Some(ConvParts { win, layout, c_in, c_out, group, kernel: oihw, bias, out_shape }))
}

/// Builds the pupil operator for a decluttered f32 `Conv` node with constant weights and bias, when it is
/// depthwise or has at most [`MAX_DIRECT_INPUTS`] input channels; `None` otherwise (tract keeps the node).
/// A ReLU / Clip right after the node is folded in: the operator replaces the output of the returned node.
pub(crate) fn for_conv(model: &TypedModel, node: &TypedNode, isa: Isa) -> TractResult<Option<(Direct, usize)>> {
    let Some(parts) = conv_parts(model, node)? else { return Ok(None) };
    let (c_in, c_out, group, win, layout) = (parts.c_in, parts.c_out, parts.group, parts.win.clone(), parts.layout);
    // One input channel per group; a single-channel image (group 1) is a regular convolution.
    let depthwise = parts.cig() == 1 && group > 1;
    if !(depthwise || (group == 1 && c_in <= MAX_DIRECT_INPUTS)) {
        return Ok(None);
    }
    // Channels last: depthwise with one output per channel and windows up to 7×7 only.
    if layout.channels_last && !(depthwise && c_out == c_in && win.kh * win.kw <= channels_last::MAX_TAPS) {
        return Ok(None);
    }
    let (lo, hi, last) = following_clamp(model, node)?;
    let conv = if layout.channels_last {
        DirectConv::channels_last(win, c_in, |c, y, x| parts.weight(c, 0, y, x), parts.bias.clone(), (lo, hi))
    } else {
        let weight = |o, i, y, x| parts.weight(o, i, y, x);
        DirectConv::new(win, (c_in, c_out, group), weight, parts.bias.clone(), (lo, hi))
    };
    let conv = Arc::new(conv);
    let out_shape = parts.out_shape;
    let simd = Simd::for_isa(isa);
    let op = if depthwise {
        Direct::Depthwise(PupilConv { conv, isa, simd, layout, out_shape, epilogue: vec![] })
    } else {
        Direct::Dense(PupilConv { conv, isa, simd, layout, out_shape, epilogue: vec![] })
    };
    Ok(Some((op, last)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::zoo::Rng;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Case {
        batch: usize,
        c_in: usize,
        c_out: usize,
        group: usize,
        h: usize,
        w: usize,
        k: (usize, usize),
        s: (usize, usize),
        /// top, bottom, left, right
        pads: (usize, usize, usize, usize),
        /// A fused ReLU-like clamp `[lo, hi]`.
        clamp: (f32, f32),
        seed: u64,
    }

    impl Case {
        fn out_hw(&self) -> (usize, usize) {
            let (pt, pb, pl, pr) = self.pads;
            ((self.h + pt + pb - self.k.0) / self.s.0 + 1, (self.w + pl + pr - self.k.1) / self.s.1 + 1)
        }
    }

    /// Depthwise (multiplier 1 or 2) or dense over 1..=4 input channels; widths 1..40, kernels 1/3/5 (not
    /// always square), strides 1..3, every padding below the kernel size, batch 1..3.
    fn case() -> impl Strategy<Value = Case> {
        let k = || prop_oneof![Just(1usize), Just(3), Just(5)];
        (
            (1usize..=3, 1usize..=20, 0usize..3),
            (1usize..=24, 1usize..=40),
            (k(), k(), 1usize..=3, 1usize..=3),
            (0usize..5, 0usize..5, 0usize..5, 0usize..5),
            prop_oneof![
                Just((f32::NEG_INFINITY, f32::INFINITY)),
                Just((0.0, f32::INFINITY)),
                Just((0.0, 0.5)),
                Just((-0.25, 0.25))
            ],
            any::<u64>(),
        )
            .prop_map(|((batch, c, kind), (h, w), (kh, kw, sh, sw), (pt, pb, pl, pr), clamp, seed)| {
                let (c_in, c_out, group) = match kind {
                    0 => (c, c, c),
                    1 => (c, 2 * c, c),
                    _ => (1 + c % MAX_DIRECT_INPUTS, c, 1),
                };
                let pads = (pt % kh, pb % kh, pl % kw, pr % kw);
                Case { batch, c_in, c_out, group, h, w, k: (kh, kw), s: (sh, sw), pads, clamp, seed }
            })
            .prop_filter("the padded image holds a window", |c| {
                c.h + c.pads.0 + c.pads.1 >= c.k.0 && c.w + c.pads.2 + c.pads.3 >= c.k.1
            })
    }

    /// The convolution by its definition, in f64: `(outputs, Σ |products| per output)`.
    fn reference(c: &Case, x: &[f32], wts: &[f32], bias: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (oh, ow) = c.out_hw();
        let (cig, cog) = (c.c_in / c.group, c.c_out / c.group);
        let (mut out, mut mag) = (vec![], vec![]);
        for n in 0..c.batch {
            for o in 0..c.c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (mut acc, mut abs) = (bias[o] as f64, bias[o].abs() as f64);
                        for i in 0..cig {
                            let ci = o / cog * cig + i;
                            for ky in 0..c.k.0 {
                                for kx in 0..c.k.1 {
                                    let y = (oy * c.s.0 + ky) as isize - c.pads.0 as isize;
                                    let xx = (ox * c.s.1 + kx) as isize - c.pads.2 as isize;
                                    if y < 0 || xx < 0 || y >= c.h as isize || xx >= c.w as isize {
                                        continue;
                                    }
                                    let v = x[((n * c.c_in + ci) * c.h + y as usize) * c.w + xx as usize] as f64;
                                    let wv = wts[((o * cig + i) * c.k.0 + ky) * c.k.1 + kx] as f64;
                                    acc += v * wv;
                                    abs += (v * wv).abs();
                                }
                            }
                        }
                        out.push(acc.max(c.clamp.0 as f64).min(c.clamp.1 as f64));
                        mag.push(abs);
                    }
                }
            }
        }
        (out, mag)
    }

    /// Dense convolutions the channels-in-the-lanes product takes on AVX-512: 2..=4 input channels, 16, 32 or 48
    /// output channels, 3×3 or 5×5 (not always square), strides 1..3, every padding below the kernel size.
    fn lanes_case() -> impl Strategy<Value = Case> {
        (case(), 2usize..=4, 1usize..=3, prop_oneof![Just(3usize), Just(5)], prop_oneof![Just(3usize), Just(5)])
            .prop_map(|(c, c_in, blocks, kh, kw)| {
                let (pt, pb, pl, pr) = c.pads;
                Case {
                    c_in,
                    c_out: 16 * blocks,
                    group: 1,
                    k: (kh, kw),
                    pads: (pt % kh, pb % kh, pl % kw, pr % kw),
                    ..c
                }
            })
            .prop_filter("the padded image holds a window", |c| {
                c.h + c.pads.0 + c.pads.1 >= c.k.0 && c.w + c.pads.2 + c.pads.3 >= c.k.1
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn direct_conv_matches_the_definition_on_every_isa(c in case()) {
            check(c)?;
        }

        #[test]
        fn dense_convs_of_many_taps_match_the_definition_on_every_isa(c in lanes_case()) {
            check(c)?;
        }
    }

    /// [`DirectConv::run`] on every instruction set, on one thread and on a 2-thread pool, with a requantization
    /// chain after it on odd seeds: within `1e-5 · (1 + Σ|w·x|)` of the definition (one grid step with a chain).
    fn check(c: Case) -> Result<(), TestCaseError> {
        let mut rng = Rng::new(c.seed);
        let x: Vec<f32> = (0..c.batch * c.c_in * c.h * c.w).map(|_| rng.sym(1.0)).collect();
        let (cig, (kh, kw)) = (c.c_in / c.group, c.k);
        let wts: Vec<f32> = (0..c.c_out * cig * kh * kw).map(|_| rng.sym(1.0)).collect();
        let bias: Vec<f32> = (0..c.c_out).map(|_| rng.sym(1.0)).collect();
        let (oh, ow) = c.out_hw();
        let win = Window::new((c.h, c.w), c.k, c.s, (c.pads.0, c.pads.2), (oh, ow));
        prop_assert!(win.is_some(), "padding below the kernel size always makes a window");
        let conv = DirectConv::new(
            win.unwrap(),
            (c.c_in, c.c_out, c.group),
            |o, i, y, xx| wts[((o * cig + i) * kh + y) * kw + xx],
            bias.clone(),
            c.clamp,
        );
        let (expected, mag) = reference(&c, &x, &wts, &bias);
        // A requantization chain after it (an int8 graph's), on odd seeds: a ReLU6-like clamp, then a grid.
        let epilogue = if c.seed % 2 == 1 {
            vec![Stage::Clamp { lo: 0.0, hi: 0.6 }, Stage::grid(1.0 / 0.07, 3, (0, 255), 0.07, 3)]
        } else {
            vec![]
        };
        let step = if epilogue.is_empty() { 0.0 } else { 0.07 };
        // Twice per instruction set: the second run reuses the scratch the first one kept, and runs with the
        // larger convolutions shared with a 2-thread pool.
        for isa in Isa::available() {
            for pooled in [false, true] {
                let simd = Simd::for_isa(isa);
                let mut out = vec![f32::NAN; expected.len()];
                let mut run = || conv.run(simd, &x, c.batch, &mut out, &epilogue);
                if pooled {
                    tract_linalg::multithread::multithread_tract_scope(team::test_pool().clone(), run)
                } else {
                    run()
                }
                .unwrap();
                for (j, ((got, want), m)) in out.iter().zip(&expected).zip(&mag).enumerate() {
                    // The chain on the exact value; one grid step of slack where f32 rounding crossed a tie.
                    let want = epilogue.iter().fold(*want as f32, |v, st| st.apply(v)) as f64;
                    prop_assert!(
                        (*got as f64 - want).abs() <= 1e-5 * (1.0 + m) + step * 1.001,
                        "{:?} pooled {} ({:?}) output {}: {} vs {}",
                        simd,
                        pooled,
                        c,
                        j,
                        got,
                        want
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn windows_that_could_lie_in_the_padding_are_refused() {
        assert!(Window::new((4, 4), (3, 3), (1, 1), (3, 0), (4, 2)).is_none(), "pad = kernel");
        assert!(Window::new((4, 4), (2, 2), (2, 2), (0, 0), (3, 2)).is_none(), "a third row past the image");
        assert!(Window::new((0, 4), (1, 1), (1, 1), (0, 0), (1, 4)).is_none(), "an empty image");
        assert!(Window::new((4, 4), (2, 2), (2, 2), (0, 0), (2, 2)).is_some());
    }

    #[test]
    fn a_mis_sized_buffer_is_an_error_not_a_panic() {
        let win = Window::new((5, 5), (3, 3), (1, 1), (1, 1), (5, 5)).unwrap();
        let conv = DirectConv::new(win, (2, 2, 2), |_, _, _, _| 1.0, vec![0.0; 2], (f32::NEG_INFINITY, f32::INFINITY));
        let mut out = vec![0f32; 50];
        assert!(conv.run(Simd::Scalar, &[0f32; 49], 1, &mut out, &[]).is_err());
        assert!(conv.run(Simd::Scalar, &[1f32; 50], 1, &mut out, &[]).is_ok());
        // A 3×3 box sum of ones: 9 inside, 4 in the corners.
        assert_eq!((out[12], out[0], out[4 * 5 + 4]), (9.0, 4.0, 4.0));
    }
}
