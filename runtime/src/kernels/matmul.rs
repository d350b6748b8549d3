//! `PupilMatMul`: the tract operator that runs an f32 matrix product with constant weights over few rows (a
//! batch-1 dense layer: tract's `EinSum` after declutter) on pupil's packed f32 matrix-vector kernel, with the
//! bias `Add` and a ReLU / clip that follow it folded in, split across the model's thread pool when the model
//! was loaded with more than one thread and the product is large enough ([`super::gemv::MIN_SPLIT_MACS`]).

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::Add;

use super::dwconv::following_clamp;
use super::gemv::{PackedF32, WeightLayout};
use super::op::{ProductLayout, product_layout};
use super::qgemv::Isa;
use super::scratch::{KeptTensor, exclusive};
use super::taps::Simd;

/// Products with more rows than this are left to tract, whose matrix-matrix kernels are better there.
pub const MAX_ROWS: usize = 4;

/// An f32 `[.., M, K] × [K, N] (+ bias) → clamp` with constant weights.
#[derive(Debug, Clone)]
pub struct PupilMatMul {
    pub(crate) packed: Arc<PackedF32>,
    pub(crate) isa: Isa,
    clamp: (f32, f32),
    /// The output shape of the replaced node (rows × `n`, with tract's unit axes).
    out_shape: TVec<TDim>,
    /// How many trailing axes of the activations make up K (more than one when tract folded a Flatten in).
    k_dims: usize,
    /// The output tensor, reused by the next run once its consumers dropped it.
    output: Arc<KeptTensor>,
}

impl PartialEq for PupilMatMul {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.packed, &other.packed) && self.isa == other.isa && self.clamp == other.clamp
    }
}
impl Eq for PupilMatMul {}

impl PupilMatMul {
    /// The operator for the packed weights (bias folded in) over the activations' trailing `k_dims` axes, its
    /// sums clamped to `clamp` (`(lo, hi)`, ±∞ for none), its output of shape `out_shape`.
    pub(crate) fn new(packed: PackedF32, isa: Isa, clamp: (f32, f32), out_shape: TVec<TDim>, k_dims: usize) -> Self {
        let output = Arc::new(KeptTensor::new());
        PupilMatMul { packed: Arc::new(packed), isa, clamp, out_shape, k_dims, output }
    }

    /// The kernel's instruction set.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// `(K, N)` of the weights.
    pub fn dims(&self) -> (usize, usize) {
        (self.packed.k(), self.packed.n())
    }
    /// The kernel that runs, for profiles: `pupil_gemv_f32_` and the f32 instruction set.
    pub fn kernel_name(&self) -> &'static str {
        match Simd::for_isa(self.isa) {
            Simd::Scalar => "pupil_gemv_f32_scalar",
            Simd::Avx2Fma => "pupil_gemv_f32_avx2_fma",
            Simd::Avx512 => "pupil_gemv_f32_avx512f",
            Simd::Neon => "pupil_gemv_f32_neon",
        }
    }
}

impl Op for PupilMatMul {
    fn name(&self) -> StaticName {
        "PupilMatMul".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{}x{} f32 weights packed for {}, clamp {:?}",
            self.packed.k(),
            self.packed.n(),
            self.isa,
            self.clamp
        )])
    }
    op_as_typed_op!();
}

impl EvalOp for PupilMatMul {
    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let a = &inputs[0];
        let shape = a.shape();
        ensure!(shape.len() >= self.k_dims, "PupilMatMul input of rank {} has no {} K axes", shape.len(), self.k_dims);
        let split = shape.len() - self.k_dims;
        let k: usize = shape[split..].iter().product();
        ensure!(k == self.packed.k(), "PupilMatMul expected K = {}, got input shape {shape:?}", self.packed.k());
        let m: usize = shape[..split].iter().product();
        let out_shape = super::output_shape("PupilMatMul", &self.out_shape, ctx, m * self.packed.n())?;
        // SAFETY: `product` writes all m × n values.
        let mut out = unsafe { self.output.take(DatumType::F32, &out_shape)? };
        let view = a.try_as_plain_ram()?;
        let executor = tract_linalg::multithread::current_tract_executor();
        {
            let mut out_plain = exclusive(&mut out)?.try_as_plain_ram_mut()?;
            let o = out_plain.as_slice_mut::<f32>()?;
            self.packed.product(self.isa, view.as_slice::<f32>()?, m, self.clamp, o, &executor)?;
        }
        Ok(tvec!(self.output.hand_on(out)))
    }
    op_out_of_plan!();
}

impl TypedOp for PupilMatMul {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.out_shape)))
    }
    /// One f32 multiply-accumulate per (row, k, n), like tract's own `EinSum`.
    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let shape = &inputs[0].shape;
        let rows: TDim = shape.iter().take(shape.len().saturating_sub(self.k_dims)).product();
        Ok(tvec!((Cost::FMA(DatumType::F32), rows * (self.packed.k() * self.packed.n()) as i64)))
    }
    as_op!();
}

/// The constant bias that an f32 `Add` right after `node` (its only consumer) adds along one axis, `axis` places
/// from the last (`n` values, or one for all; every other axis of the constant is 1), and that node; `None` when
/// the next node is something else. A dense layer's bias runs along the last axis (0), a 1×1 convolution's along
/// the channels of `[.., O, H, W]` (2).
pub(crate) fn following_bias(
    model: &TypedModel,
    node: &TypedNode,
    n: usize,
    axis: usize,
) -> TractResult<Option<(Vec<f32>, usize)>> {
    following_constant::<f32, Add>(model, node, n, axis)
}

/// The constant that a binary operator `B` on `T` right after `node` (its only consumer) applies along one
/// axis, as [`following_bias`] says, and that node.
pub(crate) fn following_constant<T: Datum + Copy, B: BinMiniOp>(
    model: &TypedModel,
    node: &TypedNode,
    n: usize,
    axis: usize,
) -> TractResult<Option<(Vec<T>, usize)>> {
    let outputs = model.output_outlets()?;
    let [succ] = node.outputs[0].successors.as_slice() else { return Ok(None) };
    if node.outputs.len() != 1 || outputs.contains(&OutletId::new(node.id, 0)) {
        return Ok(None);
    }
    let next = &model.nodes()[succ.node];
    let Some(bin) = next.op_as::<TypedBinOp>() else { return Ok(None) };
    if !bin.0.is::<B>() || bin.1.is_some() || next.inputs.len() != 2 || next.outputs.len() != 1 {
        return Ok(None);
    }
    let shape = &model.outlet_fact(OutletId::new(node.id, 0))?.shape;
    let out = model.outlet_fact(OutletId::new(next.id, 0))?;
    if out.datum_type != T::datum_type() || &out.shape != shape {
        return Ok(None);
    }
    let Some(b) = constant(model, next.inputs[1 - succ.slot], 3)? else { return Ok(None) };
    if b.datum_type() != T::datum_type() {
        return Ok(None);
    }
    // Right-aligned against the output: 1 everywhere but (optionally) along `axis`; a rank-0 constant is left
    // to tract.
    let dims = b.shape();
    let along = !dims.is_empty() && dims.iter().rev().enumerate().all(|(j, &d)| d == 1 || (j == axis && d == n));
    if !along || dims.len() > shape.len() {
        return Ok(None);
    }
    let v = b.try_as_plain_ram()?.as_slice::<T>()?.to_vec();
    Ok(Some((if v.len() == n { v } else { vec![v[0]; n] }, next.id)))
}

/// The value of `outlet` when it is known at load: its constant, or (before tract's declutter has folded the
/// constants, where an ONNX `Gemm`'s bias is still a broadcast and a multiply by `beta`) the value of a node
/// evaluated from small constants, up to `depth` nodes back. `None` when it depends on the input.
pub(crate) fn constant(model: &TypedModel, outlet: OutletId, depth: usize) -> TractResult<Option<Arc<Tensor>>> {
    /// Computed operands larger than this are left to tract's own constant folding.
    const MAX_BYTES: usize = 1 << 16;
    let fact = model.outlet_fact(outlet)?;
    if let Some(k) = &fact.konst {
        return Ok(Some(k.clone()));
    }
    let node = &model.nodes()[outlet.node];
    if depth == 0 || node.inputs.is_empty() || fact.mem_size().to_usize().is_ok_and(|b| b > MAX_BYTES) {
        return Ok(None);
    }
    let mut inputs = tvec![];
    for &i in &node.inputs {
        match constant(model, i, depth - 1)? {
            Some(t) if t.len() * t.datum_type().size_of() <= MAX_BYTES => inputs.push(t.into_tvalue()),
            _ => return Ok(None),
        }
    }
    Ok(node.op.eval_out_of_plan(inputs).ok().flatten().map(|mut out| out.swap_remove(outlet.slot).into_arc_tensor()))
}

/// Builds the pupil operator for an f32 `EinSum` node with constant weights and at most [`MAX_ROWS`] rows, and
/// the last node it replaces (a bias `Add` and a clamp folded in); `None` for other products, which tract keeps.
pub(crate) fn for_einsum(model: &TypedModel, node: &TypedNode, isa: Isa) -> TractResult<Option<(PupilMatMul, usize)>> {
    let Some(op) = node.op_as::<EinSum>() else { return Ok(None) };
    if op.q_params.is_some() || op.operating_dt != DatumType::F32 || node.inputs.len() != 2 {
        return Ok(None);
    }
    let a_fact = model.outlet_fact(node.inputs[0])?;
    if a_fact.datum_type != DatumType::F32 || a_fact.konst.is_some() {
        return Ok(None);
    }
    let Some(b) = model.outlet_fact(node.inputs[1])?.konst.clone() else { return Ok(None) };
    if b.datum_type() != DatumType::F32 {
        return Ok(None);
    }
    let out_fact = model.outlet_fact(OutletId::new(node.id, 0))?.clone();
    if out_fact.datum_type != DatumType::F32 {
        return Ok(None);
    }
    let Some(ProductLayout { k_dims, k_first, k, n, .. }) = product_layout(model, node, op, &b)? else {
        return Ok(None);
    };
    // Few rows, known at load: a symbolic batch may be large, and tract's GEMM is better there.
    let rows = a_fact.shape.iter().take(a_fact.rank() - k_dims).product::<TDim>();
    if !rows.to_usize().is_ok_and(|m| m <= MAX_ROWS) || k == 0 || n == 0 {
        return Ok(None);
    }
    let (bias, mut last) = match following_bias(model, node, n, 0)? {
        Some((bias, add)) => (Some(bias), add),
        None => (None, node.id),
    };
    let (lo, hi, clamp_last) = following_clamp(model, &model.nodes()[last])?;
    last = clamp_last;
    let w = b.try_as_plain_ram()?;
    let w = w.as_slice::<f32>()?;
    let layout = if k_first { WeightLayout::KByN } else { WeightLayout::NByK };
    let packed = PackedF32::pack(k, n, w, layout, bias.as_deref());
    let out_shape = model.outlet_fact(OutletId::new(last, 0))?.shape.iter().cloned().collect();
    Ok(Some((PupilMatMul::new(packed, isa, (lo, hi), out_shape, k_dims), last)))
}
