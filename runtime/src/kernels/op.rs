//! `PupilQMatMul`: the tract operator that runs a quantized matrix product (`QLinearMatMul`, `MatMulInteger`,
//! i.e. tract's `EinSum` with quantization parameters and a constant `i8`/`u8` weight) on pupil's packed kernels.

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

use super::gemv::WeightLayout;
use super::qgemv::{Isa, PANEL, PackedI8};
use super::scratch::{Kept, KeptTensor, exclusive};
use super::taps::Simd;
use tract_linalg::multithread::Executor;

/// A quantized `[.., M, K] × [K, N]` product with constant weights, requantized like tract's `EinSum`:
/// `c = round((Σ(a - a0)(b - b0) · sa · sb + bias · sa · sb) / sc + c0)`, clamped to the output type.
#[derive(Debug, Clone)]
pub struct PupilQMatMul {
    pub(crate) packed: Arc<PackedI8>,
    pub(crate) isa: Isa,
    /// The activations are i8: they are shifted to u8 (`a ^ 0x80`) and `a0` by +128.
    a_is_i8: bool,
    c_scale: f32,
    c0: f32,
    /// Output element type (i32 for `MatMulInteger`, u8 / i8 for `QLinearMatMul`).
    out_dt: DatumType,
    /// The output shape of the replaced node (rows × `n`, with tract's unit axes).
    out_shape: TVec<TDim>,
    /// How many trailing axes of the activations make up K (more than one when tract folded a Flatten in).
    k_dims: usize,
    /// The requantization's per-column constants (from the activation zero point `a0`, in the u8 domain, and
    /// the weights' zero points, `sa · sb` and biases).
    columns: Arc<Columns>,
    /// For an i32 product whose sums a dequantization reads (`Add(i32 bias) → Cast(f32) → Mul(scale)`, how
    /// pupil's quantizer ends an int8 model in f32 logits): that chain, folded in; the output is then f32.
    dequantize: Option<Arc<Dequantize>>,
    /// The buffers of one run, kept for the next (a copy of the operator shares them): at batch 1 the allocator
    /// took about a tenth of the int8 800-800 MLP's run when each run made its own.
    scratch: Arc<Kept<Scratch>>,
    /// The output tensor, reused by the next run once its consumers dropped it.
    output: Arc<KeptTensor>,
}

/// One run's buffers: the activation row (K padded), the integer sums (N padded), the rounded values and, for a
/// folded dequantization, the requantized sums (N each). Every run writes each value before it reads it, except
/// the row's padding past K, whose weights are zero.
#[derive(Debug)]
struct Scratch {
    row: Vec<u8>,
    acc: Vec<i32>,
    values: Vec<f32>,
    sums: Vec<i32>,
}

/// `out[j] = (sum[j] + bias[j]) as f32 · scale[j]` (wrapping i32 addition, then the f32 cast and product, as
/// tract's `Add`, `Cast` and `Mul` compute them).
#[derive(Debug, Clone, PartialEq)]
struct Dequantize {
    bias: Vec<i32>,
    scale: Vec<f32>,
}

impl PartialEq for PupilQMatMul {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.packed, &other.packed) && self.isa == other.isa && self.out_dt == other.out_dt
    }
}
impl Eq for PupilQMatMul {}

impl PupilQMatMul {
    /// The kernel's instruction set.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// `(K, N)` of the weights.
    pub fn dims(&self) -> (usize, usize) {
        (self.packed.k(), self.packed.n())
    }

    /// Runs the product on a contiguous `[M, K]` buffer of raw activation bytes.
    fn compute(&self, a: &[u8], m: usize, out: &mut Tensor) -> TractResult<()> {
        let p = &*self.packed;
        let (k, n) = (p.k(), p.n());
        let mut scratch = self.scratch.take_or(|| Scratch {
            row: vec![0; p.k_padded()],
            acc: vec![0; p.n_padded()],
            values: vec![0.0; n],
            sums: vec![0; if self.dequantize.is_some() { n } else { 0 }],
        });
        let Scratch { row, acc, values, sums } = &mut scratch;
        let (cols, simd) = (&*self.columns, Simd::for_isa(self.isa));
        let mut out_plain = out.try_as_plain_ram_mut()?;
        let executor = tract_linalg::multithread::current_tract_executor();
        for mi in 0..m {
            let src = &a[mi * k..(mi + 1) * k];
            if self.a_is_i8 {
                for (d, s) in row.iter_mut().zip(src) {
                    *d = s ^ 0x80;
                }
            } else {
                row[..k].copy_from_slice(src);
            }
            let rowsum: i32 = row[..k].iter().map(|&v| v as i32).sum();
            self.sums(row, acc, &executor)?;
            let q = Requant { cols, rowsum, c_scale: self.c_scale, c0: self.c0, simd };
            match self.out_dt.unquantized() {
                DatumType::U8 => {
                    let o = &mut out_plain.as_slice_mut::<u8>()?[mi * n..(mi + 1) * n];
                    q.run_bytes(&acc[..n], values, (0.0, 255.0), o);
                }
                DatumType::I8 => {
                    let o = &mut out_plain.as_slice_mut::<i8>()?[mi * n..(mi + 1) * n];
                    // An i8 is the low byte of `v as i32` as well.
                    q.run_bytes(&acc[..n], values, (-128.0, 127.0), bytemuck::cast_slice_mut(o));
                }
                DatumType::I32 => {
                    let o = &mut out_plain.as_slice_mut::<i32>()?[mi * n..(mi + 1) * n];
                    q.run(&acc[..n], values, |v, o: &mut i32| *o = v as i32, o);
                }
                DatumType::F32 => {
                    let Some(d) = &self.dequantize else { bail!("PupilQMatMul writes f32 only when dequantizing") };
                    q.run(&acc[..n], values, |v, o: &mut i32| *o = v as i32, sums);
                    let o = &mut out_plain.as_slice_mut::<f32>()?[mi * n..(mi + 1) * n];
                    for (((o, s), b), sc) in o.iter_mut().zip(sums.iter()).zip(&d.bias).zip(&d.scale) {
                        *o = s.wrapping_add(*b) as f32 * sc;
                    }
                }
                other => bail!("PupilQMatMul cannot produce {other:?}"),
            }
        }
        self.scratch.keep(scratch);
        Ok(())
    }

    /// The exact sums of one row `a` (K padded) into `acc` (N padded): on this thread, or, with a multithreaded
    /// `executor` and at least [`MIN_SPLIT_MACS`](super::gemv::MIN_SPLIT_MACS) multiply-adds, in chunks of
    /// whole panels claimed by this thread and the pool's (see `team::share`). Each core then streams part of
    /// the weights, and the int8 MLPs' (1.3 MB, more than one core's 1 MiB L2) mostly stay in the two L2s.
    fn sums(&self, a: &[u8], acc: &mut [i32], executor: &Executor) -> TractResult<()> {
        let p = &*self.packed;
        let panels = p.panels();
        let chunks = super::team::chunks(executor, panels, p.k() * p.n() >= super::gemv::MIN_SPLIT_MACS);
        if chunks < 2 {
            p.gemv(self.isa, a, acc);
            return Ok(());
        }
        let dst = super::team::Out::new(acc);
        let ok = super::team::share(executor, chunks, &|c| {
            let range = c * panels / chunks..(c + 1) * panels / chunks;
            // SAFETY: chunk `c` alone writes the sums of its panels, inside `acc` (all panels × PANEL).
            let o = unsafe { dst.part(range.start * PANEL, range.len() * PANEL) };
            p.gemv_panels(self.isa, a, range, o);
        });
        ensure!(ok, "a chunk of the int8 matrix-vector product panicked");
        Ok(())
    }
}

/// The requantization's per-column constants: `offset = a0 · Σ_k b − K · a0 · b0`, `b0`, `scale = sa · sb` and
/// `bias = bias · sa · sb`, so that column `j` of a row is
/// `round(((acc − offset − b0 · Σ_k a) · scale + bias) / c_scale + c0)` (the same operations, in the same order,
/// as the definition in [`PupilQMatMul`]).
#[derive(Debug, Clone)]
struct Columns {
    offset: Vec<i32>,
    b0: Vec<i32>,
    scale: Vec<f32>,
    bias: Vec<f32>,
}

impl Columns {
    /// The constants of the packed weights `p` with the activation zero point `a0`, and the weight zero points,
    /// scales and biases given once for all columns or per column.
    fn new(p: &PackedI8, a0: i32, (b0, scale, bias): (&[i32], &[f32], &[f32])) -> Columns {
        let (k, n) = (p.k() as i32, p.n());
        let mut c = Columns { offset: Vec::with_capacity(n), b0: Vec::with_capacity(n), scale: vec![], bias: vec![] };
        for (j, &sum) in p.colsum().iter().enumerate().take(n) {
            let (b0, s) = (per_col(b0, j), per_col(scale, j));
            c.offset.push((a0.wrapping_mul(sum)).wrapping_sub(k.wrapping_mul(a0).wrapping_mul(b0)));
            c.b0.push(b0);
            c.scale.push(s);
            c.bias.push(per_col(bias, j) * s);
        }
        c
    }
}

/// `v[n]`, or the single value of a parameter given once for all columns.
fn per_col<T: Copy>(v: &[T], n: usize) -> T {
    if v.len() == 1 { v[0] } else { v[n] }
}

/// One row's requantization.
struct Requant<'a> {
    cols: &'a Columns,
    rowsum: i32,
    c_scale: f32,
    c0: f32,
    /// The vector width the loops are compiled for (the operator's instruction set).
    simd: Simd,
}

impl Requant<'_> {
    /// `store(value, out)` for every column's rounded value; the loops are compiled for AVX-512 and AVX2 too,
    /// where they vectorize (rounding half away from zero, like `f32::round`, exactly).
    fn run<T>(&self, acc: &[i32], values: &mut [f32], store: impl Fn(f32, &mut T) + Copy, out: &mut [T]) {
        match self.simd {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
                // SAFETY: AVX-512F detected.
                unsafe { self.run_avx512(acc, values, store, out) }
            }
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2Fma | Simd::Avx512 if std::arch::is_x86_feature_detected!("avx2") => {
                // SAFETY: AVX2 detected.
                unsafe { self.run_avx2(acc, values, store, out) }
            }
            _ => self.run_plain(acc, values, store, out),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn run_avx512<T>(&self, acc: &[i32], values: &mut [f32], store: impl Fn(f32, &mut T) + Copy, out: &mut [T]) {
        self.run_plain(acc, values, store, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn run_avx2<T>(&self, acc: &[i32], values: &mut [f32], store: impl Fn(f32, &mut T) + Copy, out: &mut [T]) {
        self.run_plain(acc, values, store, out)
    }

    #[inline(always)]
    fn run_plain<T>(&self, acc: &[i32], values: &mut [f32], store: impl Fn(f32, &mut T) + Copy, out: &mut [T]) {
        let n = self.values(acc, values, out.len());
        for (v, o) in values[..n].iter().zip(out.iter_mut()) {
            store(*v, o);
        }
    }

    /// The rounded values of the first `limit` columns (fewer if `acc` or `values` is shorter); how many.
    #[inline(always)]
    fn values(&self, acc: &[i32], values: &mut [f32], limit: usize) -> usize {
        let c = self.cols;
        let n = acc.len().min(values.len()).min(limit).min(c.offset.len());
        let (acc, values) = (&acc[..n], &mut values[..n]);
        let (offset, b0, scale, bias) = (&c.offset[..n], &c.b0[..n], &c.scale[..n], &c.bias[..n]);
        for j in 0..n {
            let exact = acc[j].wrapping_sub(offset[j]).wrapping_sub(b0[j].wrapping_mul(self.rowsum));
            values[j] = ((exact as f32 * scale[j] + bias[j]) / self.c_scale + self.c0).round();
        }
        n
    }

    /// A `u8` or `i8` output (given as bytes): each value clamped to `[lo, hi]` and truncated to its low byte,
    /// `v.clamp(lo, hi) as i32 as u8`. That store does not vectorize on x86 (Rust's saturating `as i32` becomes a
    /// scalar convert and NaN test per value: 8% of the int8 student's run); on AVX-512 it is a min, a max, a
    /// truncating convert and a narrowing store per 16 values, with the same result for every input, NaN included
    /// (the min and max pass a NaN on, and its convert's low byte is 0, as `NaN as i32` is).
    fn run_bytes(&self, acc: &[i32], values: &mut [f32], (lo, hi): (f32, f32), out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if self.simd == Simd::Avx512 && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F detected.
            unsafe { self.run_bytes_avx512(acc, values, (lo, hi), out) };
            return;
        }
        self.run(acc, values, move |v, o: &mut u8| *o = v.clamp(lo, hi) as i32 as u8, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn run_bytes_avx512(&self, acc: &[i32], values: &mut [f32], (lo, hi): (f32, f32), out: &mut [u8]) {
        use std::arch::x86_64::*;
        let n = self.values(acc, values, out.len());
        let (values, out) = (&values[..n], &mut out[..n]);
        let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let mut blocks = out.chunks_exact_mut(16);
        for (o, v) in (&mut blocks).zip(values.chunks_exact(16)) {
            // SAFETY: 16 values read, 16 bytes written.
            unsafe {
                let v = _mm512_loadu_ps(v.as_ptr());
                let c = _mm512_min_ps(vhi, _mm512_max_ps(vlo, v));
                _mm_storeu_si128(o.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(c)));
            }
        }
        let done = n - blocks.into_remainder().len();
        for (o, v) in out[done..].iter_mut().zip(&values[done..]) {
            *o = v.clamp(lo, hi) as i32 as u8;
        }
    }
}

impl Op for PupilQMatMul {
    fn name(&self) -> StaticName {
        "PupilQMatMul".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{}x{} i8 weights packed for {}", self.packed.k(), self.packed.n(), self.isa)])
    }
    op_as_typed_op!();
}

impl EvalOp for PupilQMatMul {
    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let a = &inputs[0];
        let shape = a.shape();
        ensure!(shape.len() >= self.k_dims, "PupilQMatMul input of rank {} has no {} K axes", shape.len(), self.k_dims);
        let split = shape.len() - self.k_dims;
        let k: usize = shape[split..].iter().product();
        ensure!(k == self.packed.k(), "PupilQMatMul expected K = {}, got input shape {shape:?}", self.packed.k());
        let m: usize = shape[..split].iter().product();
        let out_shape = super::output_shape("PupilQMatMul", &self.out_shape, ctx, m * self.packed.n())?;
        // SAFETY: every element is written by `compute` below (m × n values).
        let mut out = unsafe { self.output.take(self.out_dt, &out_shape)? };
        let view = a.try_as_plain_ram()?;
        let bytes: &[u8] = if a.datum_type().unquantized() == DatumType::I8 {
            let s = view.as_slice::<i8>()?;
            // SAFETY: i8 and u8 have the same size and alignment.
            unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, s.len()) }
        } else {
            view.as_slice::<u8>()?
        };
        self.compute(bytes, m, exclusive(&mut out)?)?;
        Ok(tvec!(self.output.hand_on(out)))
    }
    op_out_of_plan!();
}

impl TypedOp for PupilQMatMul {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.out_dt.fact(&*self.out_shape)))
    }
    /// One i32 multiply-accumulate per (row, k, n), like tract's own quantized `EinSum`.
    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let shape = &inputs[0].shape;
        let rows: TDim = shape.iter().take(shape.len().saturating_sub(self.k_dims)).product();
        Ok(tvec!((Cost::FMA(DatumType::I32), rows * (self.packed.k() * self.packed.n()) as i64)))
    }
    as_op!();
}

/// Why an `EinSum` was left to tract.
fn konst(model: &TypedModel, outlet: OutletId) -> Option<Arc<Tensor>> {
    model.outlet_fact(outlet).ok()?.konst.clone()
}

fn floats(t: &Tensor) -> Option<Vec<f32>> {
    let t = t.cast_to::<f32>().ok()?;
    Some(t.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?.to_vec())
}

/// Builds the pupil operator for a quantized `EinSum` node, or `None` when the node has another shape
/// (non-constant weights, batched weights, per-row parameters...), which tract then keeps.
pub(crate) fn for_einsum(model: &TypedModel, node: &TypedNode, isa: Isa) -> TractResult<Option<PupilQMatMul>> {
    let Some(op) = node.op_as::<EinSum>() else { return Ok(None) };
    let Some(q) = op.q_params else { return Ok(None) };
    if node.inputs.len() != 9 || !matches!(q.unquantized(), DatumType::U8 | DatumType::I8 | DatumType::I32) {
        return Ok(None);
    }
    let Some(b) = konst(model, node.inputs[1]) else { return Ok(None) };
    let Some(layout) = product_layout(model, node, op, &b)? else { return Ok(None) };
    let axes = &op.axes;
    let n_axis_repr = layout.n_axis_repr;
    let per_column = |slot: usize| -> TractResult<bool> { Ok(axes.axis((InOut::In(slot), 0))?.repr == n_axis_repr) };
    build(model, node, isa, &b, &layout, konst, per_column)
}

/// Builds the pupil operator for a quantized 1×1 convolution (`QLinearConv`, tract's `Conv` before its
/// declutter) over inputs whose spatial axes are all 1: a `[N, C, 1, 1] × [O, C, 1, 1]` product, as pupil's
/// quantizer writes the fully connected layers of an int8 student. Taken before tract's declutter, which would
/// rewrite it into an `EinSum` over a reshaped copy of the weights (two copies of them per layer at load).
pub(crate) fn for_pointwise_qconv(model: &TypedModel, node: &TypedNode, isa: Isa) -> TractResult<Option<PupilQMatMul>> {
    use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec};
    use tract_onnx::tract_core::ops::nn::DataFormat;
    let Some(op) = node.op_as::<Conv>() else { return Ok(None) };
    let Some(q) = op.q_params else { return Ok(None) };
    let spec = &op.pool_spec;
    let unit = |v: &Option<TVec<usize>>| v.as_ref().is_none_or(|v| v.iter().all(|&s| s == 1));
    if node.inputs.len() != 9
        || !matches!(q.unquantized(), DatumType::U8 | DatumType::I8 | DatumType::I32)
        || op.group != 1
        || op.kernel_fmt != KernelFormat::OIHW
        || spec.data_format != DataFormat::NCHW
        || spec.kernel_shape.iter().any(|&k| k != 1)
        || !unit(&spec.strides)
        || !unit(&spec.dilations)
        || !matches!(spec.padding, PaddingSpec::Valid)
    {
        return Ok(None);
    }
    let a_fact = model.outlet_fact(node.inputs[0])?;
    let Some(b) = konst(model, node.inputs[1]) else { return Ok(None) };
    let spatial = b.rank().saturating_sub(2);
    if b.rank() < 3 || a_fact.rank() != b.rank() || !a_fact.shape.iter().skip(2).all(|d| d.is_one()) {
        return Ok(None);
    }
    let (n, k) = (b.shape()[0], b.shape()[1]);
    if a_fact.shape[1] != k.to_dim() {
        return Ok(None);
    }
    let layout = ProductLayout { k_dims: 1 + spatial, k_first: false, k, n, n_axis_repr: 'O' };
    // The bias, the weights' zero points and scales (the only parameters `build` lets vary) go with the output
    // channels when they have one value each.
    build(model, node, isa, &b, &layout, konst_through_casts, |_| Ok(true))
}

/// The constant at `outlet`, looking through `Cast`s that keep its values (to the same type, or integers to
/// floats: how tract wires a `QLinearConv`'s parameters before its declutter folds them).
fn konst_through_casts(model: &TypedModel, outlet: OutletId) -> Option<Arc<Tensor>> {
    use tract_onnx::tract_core::ops::cast::Cast;
    if let Some(t) = konst(model, outlet) {
        return Some(t);
    }
    let node = model.node(outlet.node);
    let cast = node.op_as::<Cast>()?;
    let from = model.outlet_fact(*node.inputs.first()?).ok()?.datum_type;
    if from != cast.to && !(from.is_integer() && cast.to.is_float()) {
        return None;
    }
    konst_through_casts(model, node.inputs[0])
}

/// The pupil operator for a quantized product `node` of weights `b` laid out as `layout`, its seven
/// quantization parameters (inputs 2..9: bias, a0, a_scale, b0, b_scale, c0, c_scale) read by `param`;
/// `per_column(slot)` says whether a parameter with one value per output column goes with the columns. `None`
/// for activations or weights of another type, or parameters that are not constants of one value (or one per
/// column for the bias, b0 and b_scale).
fn build(
    model: &TypedModel,
    node: &TypedNode,
    isa: Isa,
    b: &Tensor,
    layout: &ProductLayout,
    param: impl Fn(&TypedModel, OutletId) -> Option<Arc<Tensor>>,
    per_column: impl Fn(usize) -> TractResult<bool>,
) -> TractResult<Option<PupilQMatMul>> {
    let a_fact = model.outlet_fact(node.inputs[0])?;
    let a_dt = a_fact.datum_type.unquantized();
    if !matches!(a_dt, DatumType::U8 | DatumType::I8) || a_fact.konst.is_some() {
        return Ok(None);
    }
    let b_dt = b.datum_type().unquantized();
    if !matches!(b_dt, DatumType::U8 | DatumType::I8) {
        return Ok(None);
    }
    let out_fact = model.outlet_fact(OutletId::new(node.id, 0))?.clone();
    let &ProductLayout { k_dims, k_first, k, n, .. } = layout;
    // Every quantization parameter constant; only b0 and b_scale may vary, and then along n.
    let mut params = vec![];
    for slot in 2..9 {
        let Some(t) = param(model, node.inputs[slot]) else { return Ok(None) };
        let Some(v) = floats(&t) else { return Ok(None) };
        let per_column_ok = matches!(slot, 2 | 5 | 6) && v.len() == n && n > 1 && per_column(slot)?;
        if v.len() != 1 && !per_column_ok {
            return Ok(None);
        }
        params.push(v);
    }
    let Ok([bias, a0, a_scale, b0, b_scale, c0, c_scale]) = <[Vec<f32>; 7]>::try_from(params) else { unreachable!() };
    let q = QParams { bias, a0: a0[0], a_scale: a_scale[0], b0, b_scale, c0: c0[0], c_scale: c_scale[0] };
    let b_view = b.try_as_plain_ram()?;
    let weights = if b_dt == DatumType::U8 {
        Weights::U8(b_view.as_slice::<u8>()?)
    } else {
        Weights::I8(b_view.as_slice::<i8>()?)
    };
    let layout = if k_first { WeightLayout::KByN } else { WeightLayout::NByK };
    let shape = out_fact.shape.iter().cloned().collect();
    Ok(Some(PupilQMatMul::new(isa, weights, layout, (k, n), k_dims, a_dt, &q, (out_fact.datum_type, shape))))
}

/// A quantized product's parameters as plain values (inputs 2..9 of tract's quantized `EinSum`): one value
/// each, or one per output column for `bias`, `b0` and `b_scale`.
pub(crate) struct QParams {
    pub bias: Vec<f32>,
    pub a0: f32,
    pub a_scale: f32,
    pub b0: Vec<f32>,
    pub b_scale: Vec<f32>,
    pub c0: f32,
    pub c_scale: f32,
}

/// Constant weights of a quantized product.
pub(crate) enum Weights<'a> {
    I8(&'a [i8]),
    /// Shifted to i8 (and their zero point by −128) when packed.
    U8(&'a [u8]),
}

impl PupilQMatMul {
    /// The operator for `weights` (`[K, N]` or `[N, K]` as `layout` says) and activations of type `a_dt` (u8 or
    /// i8) over their trailing `k_dims` axes, requantized with `q`, its output of type and shape `out`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        isa: Isa,
        weights: Weights,
        layout: WeightLayout,
        (k, n): (usize, usize),
        k_dims: usize,
        a_dt: DatumType,
        q: &QParams,
        (out_dt, out_shape): (DatumType, TVec<TDim>),
    ) -> PupilQMatMul {
        // i8 weights are packed straight from the tensor; u8 ones are shifted to i8 first.
        let (packed, b_is_u8) = match weights {
            Weights::U8(w) => {
                let shifted: Vec<i8> = w.iter().map(|&v| (v as i32 - 128) as i8).collect();
                (PackedI8::pack(k, n, &shifted, layout), true)
            }
            Weights::I8(w) => (PackedI8::pack(k, n, w, layout), false),
        };
        let a0 = q.a0.round() as i32 + if a_dt == DatumType::I8 { 128 } else { 0 };
        let b0: Vec<i32> = q.b0.iter().map(|v| v.round() as i32 - if b_is_u8 { 128 } else { 0 }).collect();
        let scale: Vec<f32> = q.b_scale.iter().map(|bs| q.a_scale * bs).collect();
        let columns = Columns::new(&packed, a0, (&b0, &scale, &q.bias));
        PupilQMatMul {
            packed: Arc::new(packed),
            isa,
            a_is_i8: a_dt == DatumType::I8,
            c_scale: q.c_scale,
            c0: q.c0,
            out_dt,
            out_shape,
            k_dims,
            columns: Arc::new(columns),
            dequantize: None,
            scratch: Arc::new(Kept::new()),
            output: Arc::new(KeptTensor::new()),
        }
    }

    /// This i32 product followed by `(sum + bias) as f32 · scale` per column (one value, or one per column),
    /// its f32 output of shape `out_shape`; `None` when it does not write i32.
    pub(crate) fn dequantized(&self, bias: Vec<i32>, scale: Vec<f32>, out_shape: TVec<TDim>) -> Option<PupilQMatMul> {
        if self.out_dt != DatumType::I32 || self.dequantize.is_some() {
            return None;
        }
        let mut new = self.clone();
        new.dequantize = Some(Arc::new(Dequantize { bias, scale }));
        // Its buffers differ (the sums the dequantization reads): not shared with this operator's.
        new.scratch = Arc::new(Kept::new());
        new.output = Arc::new(KeptTensor::new());
        new.out_dt = DatumType::F32;
        new.out_shape = out_shape;
        Some(new)
    }
}

/// Folds into every [`PupilQMatMul`] with i32 sums the dequantization that alone reads them: an optional
/// `Add` of a constant i32 bias (one value, or one per column), a `Cast` to f32 and a `Mul` by a constant scale
/// (the same). Saves three passes and three tensors per run (2 µs of the int8 MLPs' 22). Returns how many.
pub(crate) fn fold_dequantize(model: &mut TypedModel) -> TractResult<usize> {
    use super::matmul::following_constant;
    use tract_onnx::tract_core::ops::cast::Cast;
    use tract_onnx::tract_core::ops::math::{Add, Mul};
    let mut folded = 0;
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        let Some(op) = node.op_as::<PupilQMatMul>() else { continue };
        if op.out_dt != DatumType::I32 || op.dequantize.is_some() {
            continue;
        }
        let n = op.packed.n();
        let (bias, last) = match following_constant::<i32, Add>(model, node, n, 0)? {
            Some((bias, add)) => (bias, add),
            None => (vec![0; n], id),
        };
        let last = &model.nodes()[last];
        let [succ] = last.outputs[0].successors.as_slice() else { continue };
        if model.output_outlets()?.contains(&OutletId::new(last.id, 0)) {
            continue; // the integers are an output too: they must stay
        }
        let cast = &model.nodes()[succ.node];
        if cast.op_as::<Cast>().is_none_or(|c| c.to != DatumType::F32)
            || model.outlet_fact(OutletId::new(cast.id, 0))?.datum_type != DatumType::F32
        {
            continue;
        }
        let Some((scale, mul)) = following_constant::<f32, Mul>(model, cast, n, 0)? else { continue };
        let shape = model.outlet_fact(OutletId::new(mul, 0))?.shape.iter().cloned().collect();
        let Some(new) = op.dequantized(bias, scale, shape) else { continue };
        let mut patch = TypedModelPatch::default();
        let inputs = patch.taps(model, &node.inputs)?;
        let out = patch.wire_node(&*node.name, new, &inputs)?[0];
        patch.shunt_outside(model, OutletId::new(mul, 0), out)?;
        patch.apply(model)?;
        folded += 1;
    }
    if folded > 0 {
        *model = model.clone().into_compact()?;
    }
    Ok(folded)
}

/// Where K and N sit in a matrix product `EinSum` with a constant weight `b`.
pub(crate) struct ProductLayout {
    /// How many trailing axes of the activations make up K (unit axes after it included).
    pub k_dims: usize,
    /// The weight is `[K.., N]` (else `[N, K..]`).
    pub k_first: bool,
    pub k: usize,
    pub n: usize,
    /// The einsum letter of the N axis.
    pub n_axis_repr: char,
}

/// The layout of an `EinSum` node as a `[.., M, K..] × [K.., N]` (or `[N, K..]`) product whose rows keep their
/// order in the output, or `None` for any other contraction.
pub(crate) fn product_layout(
    model: &TypedModel,
    node: &TypedNode,
    op: &EinSum,
    b: &Tensor,
) -> TractResult<Option<ProductLayout>> {
    let a_fact = model.outlet_fact(node.inputs[0])?;
    let rank = a_fact.rank();
    let out_fact = model.outlet_fact(OutletId::new(node.id, 0))?;
    let out_rank = out_fact.rank();
    if rank < 1 || out_rank < 1 {
        return Ok(None);
    }
    let axes = &op.axes;
    // a: [.., K₁, K₂, ..] (the trailing axes summed over; other axes: the rows), b: [K₁, K₂, .., n] or
    // [n, K₁, K₂, ..], c: [.., n]. tract folds a Flatten into the product (`NabI,ObI->O` for a first layer on
    // 1×28×28 images) and drops or adds unit axes (`mk,kn->n` at batch 1): fine while the rows keep their order.
    // A 1×1 convolution in this form keeps its unit H and W axes after K (`NIHW,OI->NOHW`, before tract's
    // `ChangeAxes` removes them): unit axes at the end of `a` that go straight to the end of the output change no
    // memory layout, so they count as part of K (a product of 1s).
    let mut units = 0;
    let mut rows = rank;
    while rows > 0 {
        let ax = axes.axis((InOut::In(0), rows - 1))?;
        if a_fact.shape[rows - 1].is_one()
            && ax.inputs[0].len() == 1
            && ax.inputs[1].is_empty()
            && out_rank > units + 1
            && ax.outputs[0].as_slice() == [out_rank - 1 - units]
        {
            units += 1;
            rows -= 1;
        } else {
            break;
        }
    }
    let mut k_pos_b = vec![];
    while rows > 0 {
        let ax = axes.axis((InOut::In(0), rows - 1))?;
        if ax.outputs[0].is_empty() && ax.inputs[0].len() == 1 && ax.inputs[1].len() == 1 {
            k_pos_b.push(ax.inputs[1][0]);
            rows -= 1;
        } else {
            break;
        }
    }
    k_pos_b.reverse();
    let k_dims = k_pos_b.len();
    if k_dims == 0 || b.rank() != k_dims + 1 || !k_pos_b.windows(2).all(|w| w[1] == w[0] + 1) {
        return Ok(None);
    }
    let (k_first, b_n_pos) = match k_pos_b[0] {
        0 => (true, k_dims),
        1 => (false, 0),
        _ => return Ok(None),
    };
    let n_axis = axes.axis((InOut::In(1), b_n_pos))?;
    if n_axis.outputs[0].as_slice() != [out_rank - 1 - units] || !n_axis.inputs[0].is_empty() {
        return Ok(None);
    }
    let mut last_out = None;
    for i in 0..rows {
        let ax = axes.axis((InOut::In(0), i))?;
        if !ax.inputs[1].is_empty() || ax.inputs[0].len() != 1 {
            return Ok(None);
        }
        match ax.outputs[0].as_slice() {
            [] if a_fact.shape[i].is_one() => {}
            [o] if last_out.is_none_or(|l| l < *o) => last_out = Some(*o),
            _ => return Ok(None),
        }
    }
    for o in 0..out_rank - 1 - units {
        let ax = axes.axis((InOut::Out(0), o))?;
        if ax.inputs[0].is_empty() && (!ax.inputs[1].is_empty() || !out_fact.shape[o].is_one()) {
            return Ok(None);
        }
    }
    let k: usize = k_pos_b.iter().map(|&p| b.shape()[p]).product();
    let n = b.shape()[b_n_pos];
    Ok(Some(ProductLayout { k_dims: k_dims + units, k_first, k, n, n_axis_repr: n_axis.repr }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Columns whose values run over and past the `u8` / `i8` ranges: `acc · scale / c_scale + c0`, with some
    /// scales, biases or a `c_scale` that give ±∞ and NaN.
    fn case() -> impl Strategy<Value = (Columns, Vec<i32>, i32, f32, f32)> {
        (0usize..70).prop_flat_map(|n| {
            let scale = prop_oneof![8 => -4f32..4f32, 1 => Just(f32::INFINITY), 1 => Just(f32::NAN)];
            (
                proptest::collection::vec((-500i32..500, -3i32..3, scale, -300f32..300f32), n),
                proptest::collection::vec(-100_000i32..100_000, n),
                -50i32..50,
                prop_oneof![8 => 0.05f32..4f32, 1 => Just(0f32)],
                -130f32..260f32,
            )
                .prop_map(|(cols, acc, rowsum, c_scale, c0)| {
                    let columns = Columns {
                        offset: cols.iter().map(|c| c.0).collect(),
                        b0: cols.iter().map(|c| c.1).collect(),
                        scale: cols.iter().map(|c| c.2).collect(),
                        bias: cols.iter().map(|c| c.3).collect(),
                    };
                    (columns, acc, rowsum, c_scale, c0)
                })
        })
    }

    proptest! {
        /// The byte store of every instruction set gives, for `u8` and `i8` outputs, exactly the bytes of
        /// `v.clamp(lo, hi) as i32 as u8` computed one column at a time: saturated values, ties, ±∞ and NaN,
        /// any length (the 16-value blocks and the tail).
        #[test]
        fn byte_outputs_are_the_plain_store_bit_for_bit((cols, acc, rowsum, c_scale, c0) in case()) {
            let n = acc.len();
            for isa in Isa::available() {
                let q = Requant { cols: &cols, rowsum, c_scale, c0, simd: Simd::for_isa(isa) };
                let plain = Requant { simd: Simd::Scalar, ..q };
                for (lo, hi) in [(0.0, 255.0), (-128.0, 127.0)] {
                    let (mut values, mut want) = (vec![0f32; n], vec![0u8; n]);
                    plain.run_plain(&acc, &mut values, |v, o: &mut u8| *o = v.clamp(lo, hi) as i32 as u8, &mut want);
                    let mut got = vec![0xAAu8; n];
                    q.run_bytes(&acc, &mut values, (lo, hi), &mut got);
                    prop_assert_eq!(&got, &want, "{} in [{}, {}]", isa, lo, hi);
                }
            }
        }
    }
}
