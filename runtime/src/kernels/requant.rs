//! `PupilRequant` and `PupilQuantize`: the element-wise quantization passes of an int8 graph. `PupilRequant` is
//! one f32 → f32 pass that replaces the chains an int8 graph leaves between its convolutions once they run on
//! f32 kernels ([`super::qconv`]): `QuantizeLinear → DequantizeLinear` pairs (round to the int8 grid and back),
//! with the constant clamps of a `Clip` / ReLU between them. `PupilQuantize` is a lone `QuantizeLinear` to the
//! u8 / i8 that an integer product reads.
//!
//! tract runs each of those as its own pass over the activations, its `QuantizeLinear` one value at a time; in
//! the quantized MobileNet they took a third of the time. pupil fuses each chain into one operator whose stages
//! run over L1-sized blocks with AVX2 / AVX-512 / NEON rounding (ties to even, as ONNX and tract round).
//!
//! A `QuantizeLinear(m, zq)` → `DequantizeLinear(s, zd)` pair is, value by value,
//! `(clamp(round(x·m) + zq, qmin, qmax) − zd) · s = clamp(round(x·m) + (zq − zd), qmin − zd, qmax − zd) · s`:
//! every intermediate is an integer held exactly in f32, so the fused stage gives tract's values bit for bit.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::MaxPool;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearI8, QuantizeLinearU8};

use super::dwconv::following_clamp;
use super::dwconv::{PupilDepthwiseConv, PupilDirectConv};
use super::qgemv::Isa;
use super::qgridconv::PupilQGridConv;
use super::scratch::{KeptTensor, exclusive};
use super::taps::Simd;

/// The axis methods of a `TypedOp` that maps every value to the value at the same place: any axis change
/// passes through it.
macro_rules! element_wise_axes {
    () => {
        fn axes_mapping(&self, inputs: &[&TypedFact], outputs: &[&TypedFact]) -> TractResult<AxesMapping> {
            AxesMapping::natural(inputs, outputs)
        }
        fn change_axes(
            &self,
            model: &TypedModel,
            node: &TypedNode,
            _io: InOut,
            change: &AxisOp,
        ) -> TractResult<Option<AxisChangeConsequence>> {
            Ok(Some(AxisChangeConsequence::new(model, node, None, change)))
        }
    };
}

/// One step of a fused chain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stage {
    /// A quantize / dequantize pair: `clamp(round_ties_even(x · mul) + add, lo, hi) · scale`.
    Grid { mul: f32, add: f32, lo: f32, hi: f32, scale: f32 },
    /// A constant clamp: `min(max(x, lo), hi)`.
    Clamp { lo: f32, hi: f32 },
}

impl Stage {
    /// The stage of `QuantizeLinear(mul = 1 / scale, zq)` over `[qmin, qmax]` followed by `DequantizeLinear(s, zd)`.
    pub fn grid(mul: f32, zq: i32, (qmin, qmax): (i32, i32), s: f32, zd: i32) -> Stage {
        Stage::Grid { mul, add: (zq - zd) as f32, lo: (qmin - zd) as f32, hi: (qmax - zd) as f32, scale: s }
    }

    /// The definition, one value at a time (the reference of the vector loops).
    pub fn apply(&self, x: f32) -> f32 {
        match *self {
            Stage::Grid { mul, add, lo, hi, scale } => ((x * mul).round_ties_even() + add).max(lo).min(hi) * scale,
            Stage::Clamp { lo, hi } => x.max(lo).min(hi),
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) use arm::stage_neon;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86::stage_avx512;

/// Values per block: each block goes through every stage while it sits in L1.
const BLOCK: usize = 1024;

/// Runs `stages` over `xs` into `out` (same length) on `simd`.
pub(crate) fn run(simd: Simd, stages: &[Stage], xs: &[f32], out: &mut [f32]) {
    debug_assert_eq!(xs.len(), out.len());
    for (x, o) in xs.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
        o.copy_from_slice(x);
        run_block(simd, stages, o);
    }
}

/// Runs `stages` over `buf` in place, block by block.
pub(crate) fn run_in_place(simd: Simd, stages: &[Stage], buf: &mut [f32]) {
    for o in buf.chunks_mut(BLOCK) {
        run_block(simd, stages, o);
    }
}

/// Every stage over one block.
fn run_block(simd: Simd, stages: &[Stage], o: &mut [f32]) {
    for st in stages {
        let done = match simd {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
                // SAFETY: AVX-512F detected; the kernel reads and writes `o` only.
                unsafe { x86::avx512(st, o) }
            }
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2Fma | Simd::Avx512 if std::arch::is_x86_feature_detected!("avx") => {
                // SAFETY: AVX detected; the kernel reads and writes `o` only.
                unsafe { x86::avx(st, o) }
            }
            #[cfg(target_arch = "aarch64")]
            Simd::Neon => {
                // SAFETY: NEON is part of the aarch64 baseline; the kernel reads and writes `o` only.
                unsafe { arm::neon(st, o) }
            }
            _ => 0,
        };
        for v in &mut o[done..] {
            *v = st.apply(*v);
        }
    }
}

/// A fused chain of [`Stage`]s over an f32 tensor of any shape.
#[derive(Debug, Clone, PartialEq)]
pub struct PupilRequant {
    stages: Vec<Stage>,
    isa: Isa,
    simd: Simd,
}

impl Eq for PupilRequant {}

impl PupilRequant {
    pub fn new(stages: Vec<Stage>, isa: Isa) -> PupilRequant {
        PupilRequant { stages, isa, simd: Simd::for_isa(isa) }
    }
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// Runs the chain over `xs` into `out` (same length).
    pub fn run(&self, xs: &[f32], out: &mut [f32]) {
        run(self.simd, &self.stages, xs, out)
    }
}

impl Op for PupilRequant {
    fn name(&self) -> StaticName {
        "PupilRequant".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(self.stages.iter().map(|s| format!("{s:?}")).chain([format!("{:?}", self.simd)]).collect())
    }
    op_as_typed_op!();
}

impl EvalOp for PupilRequant {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        ensure!(input.datum_type() == DatumType::F32, "PupilRequant expects f32, got {:?}", input.datum_type());
        // SAFETY: f32 has no invalid bit patterns, and `run` writes every output value.
        let mut out = unsafe { Tensor::uninitialized::<f32>(input.shape())? };
        let src = input.try_as_plain_ram()?;
        self.run(src.as_slice::<f32>()?, out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
        Ok(tvec!(out.into_tvalue()))
    }
    op_out_of_plan!();
}

impl TypedOp for PupilRequant {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
    element_wise_axes!();
    as_op!();
}

/// A `QuantizeLinear` of f32 values to `u8` / `i8` (where the int8 layer after it reads integers: the input of
/// an int8 dense layer) on the vector loops of [`Stage::Grid`]: `clamp(round_ties_even(x · mul) + zq, qmin, qmax)`,
/// tract's definition, which tract runs one value at a time (8 µs of the int8 CNN's 66, for 3 136 values).
#[derive(Debug, Clone)]
pub struct PupilQuantize {
    /// The grid stage with `scale` 1: its values are the integers themselves, held exactly in f32.
    stage: Stage,
    /// The replaced node's output type (`u8` or `i8`, with its quantization parameters).
    out_dt: DatumType,
    isa: Isa,
    simd: Simd,
    /// The output tensor, reused by the next run once its consumers dropped it.
    output: Arc<KeptTensor>,
}

impl PartialEq for PupilQuantize {
    fn eq(&self, other: &Self) -> bool {
        (self.stage, self.out_dt, self.isa) == (other.stage, other.out_dt, other.isa)
    }
}

impl Eq for PupilQuantize {}

impl PupilQuantize {
    /// Quantizes with `mul` (1 / scale), zero point `zq` onto `[qmin, qmax]` (`u8` or `i8` as `out_dt` says).
    pub fn new(mul: f32, zq: i32, range: (i32, i32), out_dt: DatumType, isa: Isa) -> TractResult<PupilQuantize> {
        let want = match out_dt.unquantized() {
            DatumType::U8 => (0, 255),
            DatumType::I8 => (-128, 127),
            other => bail!("PupilQuantize writes u8 or i8, not {other:?}"),
        };
        ensure!(range == want, "PupilQuantize to {out_dt:?}: expected the range {want:?}, got {range:?}");
        Ok(PupilQuantize {
            stage: Stage::grid(mul, zq, range, 1.0, 0),
            out_dt,
            isa,
            simd: Simd::for_isa(isa),
            output: Arc::new(KeptTensor::new()),
        })
    }
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Quantizes `xs` into `out` (same length).
    pub(crate) fn run<T: Narrow>(&self, xs: &[f32], out: &mut [T]) {
        debug_assert_eq!(xs.len(), out.len());
        #[cfg(target_arch = "x86_64")]
        if let Stage::Grid { mul, add, lo, hi, .. } = self.stage
            && self.simd == Simd::Avx512
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
        {
            let n = xs.len().min(out.len());
            // SAFETY: AVX-512F/BW detected; `out` holds n values of one byte each (`Narrow` is only u8 and i8).
            let done = unsafe { x86::quantize_avx512(mul, add, (lo, hi), &xs[..n], out.as_mut_ptr() as *mut u8) };
            let mut tail = [0f32; 16];
            let rest = &mut tail[..n - done];
            for (t, x) in rest.iter_mut().zip(&xs[done..n]) {
                *t = self.stage.apply(*x);
            }
            T::narrow(Simd::Scalar, rest, &mut out[done..n]);
            return;
        }
        let mut buf = [0f32; BLOCK];
        for (x, o) in xs.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
            let b = &mut buf[..x.len()];
            b.copy_from_slice(x);
            run_block(self.simd, std::slice::from_ref(&self.stage), b);
            T::narrow(self.simd, b, o);
        }
    }
}

/// An integer type that holds the values of a quantization grid: the f32 values (integers, clamped to its
/// range) convert exactly.
pub(crate) trait Narrow: Copy {
    fn narrow(simd: Simd, xs: &[f32], out: &mut [Self]);
}

macro_rules! narrow {
    ($t:ty) => {
        impl Narrow for $t {
            fn narrow(simd: Simd, xs: &[f32], out: &mut [$t]) {
                #[inline(always)]
                fn plain(xs: &[f32], out: &mut [$t]) {
                    for (o, x) in out.iter_mut().zip(xs) {
                        *o = *x as i32 as $t;
                    }
                }
                #[cfg(target_arch = "x86_64")]
                #[target_feature(enable = "avx512f,avx512bw")]
                fn avx512(xs: &[f32], out: &mut [$t]) {
                    plain(xs, out)
                }
                #[cfg(target_arch = "x86_64")]
                #[target_feature(enable = "avx2")]
                fn avx2(xs: &[f32], out: &mut [$t]) {
                    plain(xs, out)
                }
                match simd {
                    #[cfg(target_arch = "x86_64")]
                    Simd::Avx512
                        if std::arch::is_x86_feature_detected!("avx512f")
                            && std::arch::is_x86_feature_detected!("avx512bw") =>
                    {
                        // SAFETY: AVX-512F and BW detected.
                        unsafe { avx512(xs, out) }
                    }
                    #[cfg(target_arch = "x86_64")]
                    Simd::Avx512 | Simd::Avx2Fma if std::arch::is_x86_feature_detected!("avx2") => {
                        // SAFETY: AVX2 detected.
                        unsafe { avx2(xs, out) }
                    }
                    _ => plain(xs, out),
                }
            }
        }
    };
}
narrow!(u8);
narrow!(i8);

impl Op for PupilQuantize {
    fn name(&self) -> StaticName {
        "PupilQuantize".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?} to {:?}", self.stage, self.out_dt), format!("{:?}", self.simd)])
    }
    op_as_typed_op!();
}

impl EvalOp for PupilQuantize {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        ensure!(input.datum_type() == DatumType::F32, "PupilQuantize expects f32, got {:?}", input.datum_type());
        // SAFETY: `run` writes every output value, and every bit pattern is a valid u8 / i8.
        let mut out = unsafe { self.output.take(self.out_dt, input.shape())? };
        let src = input.try_as_plain_ram()?;
        let xs = src.as_slice::<f32>()?;
        {
            let mut dst = exclusive(&mut out)?.try_as_plain_ram_mut()?;
            match self.out_dt.unquantized() {
                DatumType::U8 => self.run(xs, dst.as_slice_mut::<u8>()?),
                DatumType::I8 => self.run(xs, dst.as_slice_mut::<i8>()?),
                other => bail!("PupilQuantize cannot write {other:?}"),
            }
        }
        Ok(tvec!(self.output.hand_on(out)))
    }
    op_out_of_plan!();
}

impl TypedOp for PupilQuantize {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.out_dt.fact(inputs[0].shape.clone())))
    }
    element_wise_axes!();
    as_op!();
}

/// Replaces every `QuantizeLinear` of f32 values that [`fuse`] left (those whose integers a quantized operator
/// reads) by a [`PupilQuantize`]. Returns how many.
pub fn quantize_ops(model: &mut TypedModel, isa: Isa) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        let Some((mul, zq, range)) = quantize_params(model, node)? else { continue };
        let out_dt = model.outlet_fact(OutletId::new(id, 0))?.datum_type;
        let op = PupilQuantize::new(mul, zq, range, out_dt, isa)?;
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs, op)?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

/// `(1 / scale, zero point, (qmin, qmax))` of a quantization.
type QuantizeParams = (f32, i32, (i32, i32));

/// The parameters of a tract `QuantizeLinear` node reading f32.
fn quantize_params(model: &TypedModel, node: &TypedNode) -> TractResult<Option<QuantizeParams>> {
    let Some(ew) = node.op_as::<ElementWiseOp>() else { return Ok(None) };
    if node.inputs.len() != 1 || model.outlet_fact(node.inputs[0])?.datum_type != DatumType::F32 {
        return Ok(None);
    }
    Ok(if let Some(q) = ew.0.downcast_ref::<QuantizeLinearU8>() {
        Some((q.scale, q.zero_point as i32, (0, 255)))
    } else {
        ew.0.downcast_ref::<QuantizeLinearI8>().map(|q| (q.scale, q.zero_point as i32, (-128, 127)))
    })
}

/// Moves every max pool that reads a `QuantizeLinear` of f32 values in front of it: `MaxPool(Q(x)) = Q(MaxPool(x))`
/// exactly, as quantizing never reorders values (and the padding, −∞ or the lowest integer, never wins). The
/// pool then runs on f32 (on [`super::PupilMaxPool`]) and the quantization on the pooled, smaller tensor, where
/// [`fuse`] can merge it with the `DequantizeLinear` after it. Returns how many pools moved.
pub fn hoist_pools(model: &mut TypedModel) -> TractResult<usize> {
    let mut moved = 0;
    for id in model.eval_order()? {
        let q = &model.nodes()[id];
        if quantize_params(model, q)?.is_none() {
            continue;
        }
        let Some(pool) = model.single_succ(id)? else { continue };
        let Some(op) = pool.op_as::<MaxPool>() else { continue };
        if op.with_index_outputs.is_some() || pool.outputs.len() != 1 {
            continue;
        }
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, q.inputs[0])?;
        let pooled = patch.wire_node(&*pool.name, op.clone(), &[x])?[0];
        let quantized = patch.wire_node(&*q.name, q.op.clone(), &[pooled])?[0];
        patch.shunt_outside(model, OutletId::new(pool.id, 0), quantized)?;
        patch.apply(model)?;
        moved += 1;
    }
    if moved > 0 {
        *model = model.clone().into_compact()?;
    }
    Ok(moved)
}

/// A chain found in the graph: it reads the input of node `reader`, and its value replaces the outputs of `ends`.
struct Chain {
    /// The node whose first input the chain reads (resolved when the chain is wired, as earlier chains move it).
    reader: usize,
    stages: Vec<Stage>,
    ends: Vec<usize>,
}

/// The `DequantizeLinear` successors of quantize node `q` when they all share one scale and zero point, and it
/// has no other: then one grid stage replaces them all.
fn shared_dequantize(model: &TypedModel, q: &TypedNode) -> Option<(f32, i32, Vec<usize>)> {
    let succ: Vec<&TypedNode> = q.outputs[0].successors.iter().map(|i| &model.nodes()[i.node]).collect();
    let first = succ.first()?.op_as::<DequantizeLinearF32>()?;
    let all = succ.iter().all(|n| n.op_as::<DequantizeLinearF32>().is_some_and(|d| d == first));
    all.then(|| (first.scale, first.zero_point, succ.iter().map(|n| n.id).collect()))
}

/// Replaces, in a decluttered graph, every `QuantizeLinear → DequantizeLinear` pair reading f32, with the
/// constant clamps right after it (`dwconv::following_clamp`, the same chain of `Max` / `Min` the
/// convolution kernels fold in) and the pairs those lead into, by one [`PupilRequant`] (or, for a chain that alone
/// reads an int8 convolution on [`PupilQGridConv`], by that convolution's output loop; for one that alone reads a
/// [`PupilDepthwiseConv`] or [`PupilDirectConv`], by a pass over that operator's output in place). Returns how
/// many chains were fused.
pub fn fuse(model: &mut TypedModel, isa: Isa) -> TractResult<usize> {
    let mut chains: Vec<Chain> = vec![];
    // Quantize nodes already inside a chain (so that none starts a second one).
    let mut taken = std::collections::HashSet::new();
    for id in model.eval_order()? {
        let q = &model.nodes()[id];
        if taken.contains(&id) {
            continue;
        }
        let Some((mul, zq, range)) = quantize_params(model, q)? else { continue };
        let Some((s, zd, ends)) = shared_dequantize(model, q) else { continue };
        let mut chain = Chain { reader: id, stages: vec![Stage::grid(mul, zq, range, s, zd)], ends };
        // Follow a single path forward: constant clamps, and quantize → dequantize pairs.
        while let [end] = chain.ends[..] {
            let (lo, hi, last) = following_clamp(model, &model.nodes()[end])?;
            if last != end {
                chain.stages.push(Stage::Clamp { lo, hi });
                chain.ends = vec![last];
                continue;
            }
            let Some(next) = model.single_succ(end)? else { break };
            let Some((mul, zq, range)) = quantize_params(model, next)? else { break };
            let Some((s, zd, ends)) = shared_dequantize(model, next) else { break };
            chain.stages.push(Stage::grid(mul, zq, range, s, zd));
            taken.insert(next.id);
            chain.ends = ends;
        }
        chains.push(chain);
    }
    let fused = chains.len();
    let outputs = model.output_outlets()?.to_vec();
    for chain in chains {
        let input = model.nodes()[chain.reader].inputs[0];
        let producer = &model.nodes()[input.node];
        // A chain right after a convolution runs in its output loop instead of as a pass of its own.
        let sole_reader =
            producer.outputs.len() == 1 && producer.outputs[0].successors.len() == 1 && !outputs.contains(&input);
        let fused: Option<Box<dyn TypedOp>> = if !sole_reader {
            None
        } else if let Some(conv) = producer.op_as::<PupilQGridConv>() {
            Some(Box::new(conv.with_epilogue(&chain.stages)))
        } else if let Some(conv) = producer.op_as::<PupilDepthwiseConv>() {
            Some(Box::new(conv.with_epilogue(&chain.stages)))
        } else {
            producer.op_as::<PupilDirectConv>().map(|conv| Box::new(conv.with_epilogue(&chain.stages)) as _)
        };
        if let Some(op) = fused {
            let mut patch = TypedModelPatch::default();
            let tapped = patch.tap_model(model, producer.inputs[0])?;
            let out = patch.wire_node(&*producer.name, op, &[tapped])?[0];
            for &end in &chain.ends {
                patch.shunt_outside(model, OutletId::new(end, 0), out)?;
            }
            patch.obliterate(producer.id)?;
            patch.apply(model)?;
            continue;
        }
        let name = format!("{}.requant", model.nodes()[chain.reader].name);
        let mut patch = TypedModelPatch::default();
        let tapped = patch.tap_model(model, input)?;
        let out = patch.wire_node(name, PupilRequant::new(chain.stages, isa), &[tapped])?[0];
        for &end in &chain.ends {
            patch.shunt_outside(model, OutletId::new(end, 0), out)?;
        }
        patch.apply(model)?;
    }
    if fused > 0 {
        *model = model.clone().into_compact()?;
    }
    Ok(fused)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Stage;
    use std::arch::x86_64::*;

    const ROUND: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

    /// `out[i] = clamp(round_ties_even(xs[i] · mul) + add, lo, hi)` as one byte (u8 or i8: the low byte of the
    /// integer), 16 lanes at a time, straight from `xs` to `out`; returns how many values it handled (the whole
    /// vectors: fewer than 16 are left). The clamp comes first, at `lo − add`, `hi − add`: with integer bounds,
    /// clamping before or after rounding gives the same integer.
    ///
    /// # Safety
    /// AVX-512F and BW; `out` valid for `xs.len()` bytes.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_avx512(mul: f32, add: f32, (lo, hi): (f32, f32), xs: &[f32], out: *mut u8) -> usize {
        let n = xs.len() / 16 * 16;
        let (m, l, h) = (_mm512_set1_ps(mul), _mm512_set1_ps(lo - add), _mm512_set1_ps(hi - add));
        let a = _mm512_set1_epi32(add as i32);
        let mut i = 0;
        // SAFETY: reads xs[i .. i + 16] and writes out[i .. i + 16] with i + 16 <= n <= xs.len().
        unsafe {
            while i < n {
                let v = _mm512_mul_ps(_mm512_loadu_ps(xs.as_ptr().add(i)), m);
                let v = _mm512_min_ps(_mm512_max_ps(v, l), h);
                let q = _mm512_add_epi32(_mm512_cvt_roundps_epi32::<ROUND>(v), a);
                _mm_storeu_si128(out.add(i) as *mut __m128i, _mm512_cvtepi32_epi8(q));
                i += 16;
            }
        }
        n
    }

    /// 8 lanes at a time; returns how many values it handled.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn avx(st: &Stage, o: &mut [f32]) -> usize {
        let n = o.len() / 8 * 8;
        let p = o.as_mut_ptr();
        // SAFETY: every access is to o[i .. i + 8] with i + 8 <= n <= o.len().
        unsafe {
            match *st {
                Stage::Grid { mul, add, lo, hi, scale } => {
                    let (m, a, l, h, s) = (
                        _mm256_set1_ps(mul),
                        _mm256_set1_ps(add),
                        _mm256_set1_ps(lo),
                        _mm256_set1_ps(hi),
                        _mm256_set1_ps(scale),
                    );
                    for i in (0..n).step_by(8) {
                        let r = _mm256_round_ps::<ROUND>(_mm256_mul_ps(_mm256_loadu_ps(p.add(i)), m));
                        let r = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(r, a), l), h);
                        _mm256_storeu_ps(p.add(i), _mm256_mul_ps(r, s));
                    }
                }
                Stage::Clamp { lo, hi } => {
                    let (l, h) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
                    for i in (0..n).step_by(8) {
                        _mm256_storeu_ps(p.add(i), _mm256_min_ps(_mm256_max_ps(_mm256_loadu_ps(p.add(i)), l), h));
                    }
                }
            }
        }
        n
    }

    /// 16 lanes at a time; returns how many values it handled.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512(st: &Stage, o: &mut [f32]) -> usize {
        let n = o.len() / 16 * 16;
        let p = o.as_mut_ptr();
        // SAFETY: every access is to o[i .. i + 16] with i + 16 <= n <= o.len().
        unsafe {
            for i in (0..n).step_by(16) {
                _mm512_storeu_ps(p.add(i), stage_avx512(st, _mm512_loadu_ps(p.add(i))));
            }
        }
        n
    }

    /// One stage on 16 values in a register (the vector form of [`Stage::apply`]); also the output loop of the
    /// int8 convolution kernel ([`crate::kernels::qgridconv`]).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn stage_avx512(st: &Stage, v: __m512) -> __m512 {
        match *st {
            Stage::Grid { mul, add, lo, hi, scale } => {
                let r = _mm512_roundscale_ps::<ROUND>(_mm512_mul_ps(v, _mm512_set1_ps(mul)));
                let r = _mm512_min_ps(
                    _mm512_max_ps(_mm512_add_ps(r, _mm512_set1_ps(add)), _mm512_set1_ps(lo)),
                    _mm512_set1_ps(hi),
                );
                _mm512_mul_ps(r, _mm512_set1_ps(scale))
            }
            Stage::Clamp { lo, hi } => _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(lo)), _mm512_set1_ps(hi)),
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::Stage;
    use std::arch::aarch64::*;

    /// 4 lanes at a time (`frintn`: round to nearest, ties to even); returns how many values it handled.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn neon(st: &Stage, o: &mut [f32]) -> usize {
        let n = o.len() / 4 * 4;
        let p = o.as_mut_ptr();
        // SAFETY: every access is to o[i .. i + 4] with i + 4 <= n <= o.len().
        unsafe {
            for i in (0..n).step_by(4) {
                vst1q_f32(p.add(i), stage_neon(st, vld1q_f32(p.add(i))));
            }
        }
        n
    }

    /// One stage on 4 values in a register (the vector form of [`Stage::apply`]); also the output loop of the
    /// int8 convolution kernel ([`crate::kernels::qgridconv`]).
    #[inline]
    #[target_feature(enable = "neon")]
    pub(crate) fn stage_neon(st: &Stage, v: float32x4_t) -> float32x4_t {
        match *st {
            Stage::Grid { mul, add, lo, hi, scale } => {
                let r = vrndnq_f32(vmulq_f32(v, vdupq_n_f32(mul)));
                let r = vminq_f32(vmaxq_f32(vaddq_f32(r, vdupq_n_f32(add)), vdupq_n_f32(lo)), vdupq_n_f32(hi));
                vmulq_f32(r, vdupq_n_f32(scale))
            }
            Stage::Clamp { lo, hi } => vminq_f32(vmaxq_f32(v, vdupq_n_f32(lo)), vdupq_n_f32(hi)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::zoo::Rng;
    use proptest::prelude::*;
    use tract_onnx::tract_core::ops::quant::{quantize_linear_f32_i8, quantize_linear_f32_u8};

    /// tract's own `QuantizeLinear` then `DequantizeLinear`, one value at a time.
    fn tract_pair(x: f32, mul: f32, zq: i32, u8: bool, s: f32, zd: i32) -> f32 {
        let q = if u8 { quantize_linear_f32_u8(x, mul, zq) as i32 } else { quantize_linear_f32_i8(x, mul, zq) as i32 };
        (q - zd) as f32 * s
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Chains of grid and clamp stages over 0..3000 values (odd lengths, ties at .5 steps, values far out
        /// of range): every instruction set gives tract's quantize-then-dequantize values bit for bit.
        #[test]
        fn requant_matches_tract_quantize_dequantize_on_every_isa(
            n in 0usize..3000, seed in any::<u64>(), u8 in any::<bool>(), zq in 0i32..256, zd in 0i32..256,
            step in 0.001f32..0.5, clamp_lo in -2.0f32..0.5, clamp_hi in 0.5f32..6.0,
        ) {
            let (zq, zd) = if u8 { (zq, zd) } else { (zq - 128, zd - 128) };
            let range = if u8 { (0, 255) } else { (-128, 127) };
            let mut rng = Rng::new(seed);
            // Ties: exact half steps of the grid, half of the values.
            let xs: Vec<f32> = (0..n)
                .map(|i| if i % 2 == 0 { rng.sym(400.0) * step } else { ((rng.sym(300.0)).round() + 0.5) * step })
                .collect();
            let mul = step.recip();
            let stages = vec![
                Stage::grid(mul, zq, range, step, zd),
                Stage::Clamp { lo: clamp_lo, hi: clamp_hi },
                Stage::grid(mul * 0.5, zq, range, step * 2.0, zq),
            ];
            let expected: Vec<f32> = xs
                .iter()
                .map(|&x| {
                    let a = tract_pair(x, mul, zq, u8, step, zd).max(clamp_lo).min(clamp_hi);
                    tract_pair(a, mul * 0.5, zq, u8, step * 2.0, zq)
                })
                .collect();
            for isa in Isa::available() {
                let op = PupilRequant::new(stages.clone(), isa);
                let mut out = vec![f32::NAN; n];
                op.run(&xs, &mut out);
                for (i, (o, e)) in out.iter().zip(&expected).enumerate() {
                    prop_assert_eq!(o.to_bits(), e.to_bits(), "{} at {}: x {} got {} expected {}", isa, i, xs[i], o, e);
                }
            }
        }

        /// `PupilQuantize` over 0..3000 values (whole vectors and tails, ties at .5 steps, values up to a
        /// million steps past the range) gives tract's `QuantizeLinear` integers exactly, to u8 and to i8, on
        /// every instruction set. (Past 2³¹ steps, ±∞ included, tract's `i32` sum with the zero point wraps
        /// around; pupil clamps to the end of the range.)
        #[test]
        fn quantize_matches_tract_quantize_linear_on_every_isa(
            n in 0usize..3000, seed in any::<u64>(), u8 in any::<bool>(), zq in 0i32..256, step in 0.001f32..0.5,
        ) {
            let zq = if u8 { zq } else { zq - 128 };
            let mut rng = Rng::new(seed);
            let xs: Vec<f32> = (0..n)
                .map(|i| match i % 7 {
                    0 => (rng.unit() * 1e6 + 300.0) * step,
                    1 => -(rng.unit() * 1e6 + 300.0) * step,
                    2 | 3 => ((rng.sym(300.0)).round() + 0.5) * step,
                    _ => rng.sym(400.0) * step,
                })
                .collect();
            let mul = step.recip();
            for isa in Isa::available() {
                if u8 {
                    let op = PupilQuantize::new(mul, zq, (0, 255), DatumType::U8, isa).unwrap();
                    let mut out = vec![0x5au8; n];
                    op.run(&xs, &mut out);
                    for (i, (o, x)) in out.iter().zip(&xs).enumerate() {
                        prop_assert_eq!(*o, quantize_linear_f32_u8(*x, mul, zq), "{} at {}: x {}", isa, i, x);
                    }
                } else {
                    let op = PupilQuantize::new(mul, zq, (-128, 127), DatumType::I8, isa).unwrap();
                    let mut out = vec![0x5ai8; n];
                    op.run(&xs, &mut out);
                    for (i, (o, x)) in out.iter().zip(&xs).enumerate() {
                        prop_assert_eq!(*o, quantize_linear_f32_i8(*x, mul, zq), "{} at {}: x {}", isa, i, x);
                    }
                }
            }
        }
    }

    #[test]
    fn quantize_refuses_other_types_and_ranges() {
        let isa = Isa::Scalar;
        let err = PupilQuantize::new(1.0, 0, (0, 255), DatumType::I32, isa).unwrap_err().to_string();
        assert!(err.contains("u8 or i8") && err.contains("I32"), "{err}");
        let err = PupilQuantize::new(1.0, 0, (-128, 127), DatumType::U8, isa).unwrap_err().to_string();
        assert!(err.contains("expected the range (0, 255), got (-128, 127)"), "{err}");
    }
}
