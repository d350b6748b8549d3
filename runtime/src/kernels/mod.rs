//! pupil's own SIMD kernels and their integration into tract graphs: after tract declutters a model, quantized
//! matrix products with constant weights are replaced by [`PupilQMatMul`] (weights packed once, at load),
//! dispatched at run time to AVX-512 VNNI / AVX2 / scalar on x86-64 and NEON dotprod / NEON on aarch64; f32
//! matrix products with constant weights over few rows (batch-1 dense layers) by [`PupilMatMul`] (split across
//! the model's threads when large enough to gain from it); f32 depthwise convolutions, convolutions over few input channels, 1×1
//! convolutions, stride-1 convolutions over more input channels and max pools are replaced by
//! [`PupilDepthwiseConv`], [`PupilDirectConv`], [`PupilPointwiseConv`], [`PupilGridConv`] and [`PupilMaxPool`]
//! (AVX-512 / AVX2 + FMA / NEON / scalar), and same-shape sums (residual connections) by [`PupilAdd`], on the
//! calling thread. int8 convolutions (`QLinearConv`) are rewritten before tract reads the file ([`qconv`]) so
//! that they run on those f32 kernels with the int8 model's activation grid, or, where the CPU has AVX-512 VNNI or
//! NEON dotprod, on [`PupilQGridConv`] with the int8 model's own arithmetic; the `QuantizeLinear →
//! DequantizeLinear` chains left between them (with their clamps) then run as one pass each ([`PupilRequant`],
//! [`requant`]) or in the int8 convolution's output loop. Also tunes tract's aarch64 CPU detection on Android, where tract cannot see the core kind.

mod channels_last;
mod direct;
mod dwblocks;
mod dwconv;
mod eltwise;
pub mod gemv;
mod gridconv;
mod lanes;
mod matmul;
mod op;
mod pages;
mod pointwise;
mod pool;
pub mod qconv;
pub mod qgemv;
mod qgridconv;
pub mod requant;
mod rowconv;
pub(crate) mod scratch;
mod taps;
mod team;
mod winograd;
pub mod zoo;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{DimLike, EvalContext, ensure};

pub use dwconv::{MAX_DIRECT_INPUTS, PupilConv, PupilDepthwiseConv, PupilDirectConv};
pub use eltwise::PupilAdd;
pub(crate) use eltwise::first_non_finite;
pub use gemv::{PackedF32, WeightLayout};
pub use gridconv::PupilGridConv;
pub use matmul::PupilMatMul;
pub use op::PupilQMatMul;
pub use pointwise::PupilPointwiseConv;
pub use pool::PupilMaxPool;
pub use qgemv::{Isa, PackedI8};
pub use qgridconv::PupilQGridConv;
pub use requant::{PupilQuantize, PupilRequant};

/// Whether pupil's kernels replace tract's where they can. Default: on, unless `PUPIL_KERNELS=off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceleration {
    /// Use pupil's kernels with the fastest instruction set of this CPU ([`Isa::best`]).
    On,
    /// Use pupil's kernels with this instruction set (it must be in [`Isa::available`]).
    With(Isa),
    /// Leave the graph to tract alone.
    Off,
}

static DEFAULT: std::sync::Mutex<Option<Acceleration>> = std::sync::Mutex::new(None);

impl Acceleration {
    /// What [`optimize`] uses: the value given to [`Acceleration::set_default`], else `PUPIL_KERNELS=off` from
    /// the environment turns pupil's kernels off, else [`Acceleration::On`].
    pub fn current() -> Acceleration {
        if let Some(a) = DEFAULT.lock().ok().and_then(|d| *d) {
            return a;
        }
        match std::env::var("PUPIL_KERNELS").as_deref() {
            Ok("off") | Ok("0") | Ok("false") => Acceleration::Off,
            _ => Acceleration::On,
        }
    }

    /// Sets the process-wide default for models loaded from now on (`None`: back to the environment).
    /// Used by benchmarks to load the same file with and without pupil's kernels.
    pub fn set_default(accel: Option<Acceleration>) {
        if let Ok(mut d) = DEFAULT.lock() {
            *d = accel;
        }
    }
}

/// One node pupil took over from tract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    pub node: String,
    /// The pupil operator: `PupilQMatMul`, `PupilMatMul`, `PupilDepthwiseConv`, `PupilDirectConv`,
    /// `PupilPointwiseConv`, `PupilGridConv`, `PupilQGridConv`, `PupilMaxPool` or `PupilAdd`.
    pub op: &'static str,
    /// Products summed per output value: K of a matrix product, `c_in / group · kh · kw` of a convolution,
    /// `kh · kw` of a pool, 2 for a sum.
    pub k: usize,
    /// Output columns of a matrix product, output channels of a convolution or pool.
    pub n: usize,
    pub isa: Isa,
}

impl Replacement {
    /// The kernel family that runs the operator, for reports: `pupil` and the instruction set, the integer one
    /// for the int8 operators (`pupil avx512vnni`), the f32 one for the others (`pupil avx512f`).
    pub fn kernel(&self) -> String {
        let isa = match self.op {
            "PupilQMatMul" | "PupilQGridConv" => self.isa.name(),
            _ => taps::Simd::for_isa(self.isa).name(),
        };
        format!("pupil {isa}")
    }

    /// What pupil replaces `op` by, if anything.
    pub(crate) fn of(op: &dyn TypedOp, node: &str) -> Option<Replacement> {
        let any = op.as_op();
        let (op, (k, n), isa) = if let Some(o) = any.downcast_ref::<PupilQMatMul>() {
            ("PupilQMatMul", o.dims(), o.isa())
        } else if let Some(o) = any.downcast_ref::<PupilMatMul>() {
            ("PupilMatMul", o.dims(), o.isa())
        } else if let Some(o) = any.downcast_ref::<PupilDepthwiseConv>() {
            ("PupilDepthwiseConv", o.dims(), o.isa())
        } else if let Some(o) = any.downcast_ref::<PupilDirectConv>() {
            ("PupilDirectConv", o.dims(), o.isa())
        } else if let Some(o) = any.downcast_ref::<PupilPointwiseConv>() {
            ("PupilPointwiseConv", o.dims(), o.isa())
        } else if let Some(o) = any.downcast_ref::<PupilGridConv>() {
            ("PupilGridConv", o.dims(), o.isa())
        } else if let Some(o) = any.downcast_ref::<PupilQGridConv>() {
            ("PupilQGridConv", o.dims(), o.isa())
        } else if let Some(o) = any.downcast_ref::<PupilMaxPool>() {
            ("PupilMaxPool", o.dims(), o.isa())
        } else if let Some(o) = any.downcast_ref::<PupilAdd>() {
            ("PupilAdd", (2, 1), o.isa())
        } else {
            return None;
        };
        Some(Replacement { node: node.to_string(), op, k, n, isa })
    }
}

/// Turns an ONNX inference model into an optimised tract plan graph with pupil's kernels in it:
/// `into_typed → declutter → requant::hoist_pools → accelerate → requant::fuse → requant::quantize_ops →
/// op::fold_dequantize → into_optimized`.
pub fn optimize(model: InferenceModel) -> TractResult<TypedModel> {
    optimize_with(model, Acceleration::current()).map(|(m, _)| m)
}

/// [`optimize`] with an explicit choice; also returns what was replaced.
pub fn optimize_with(model: InferenceModel, accel: Acceleration) -> TractResult<(TypedModel, Vec<Replacement>)> {
    optimize_int8(model, accel, &qconv::Int8Convs::new())
}

/// [`optimize_with`] for a model whose `QLinearConv`s [`qconv::to_f32_convolutions`] rewrote: the ones it kept
/// the int8 form of (`int8`) run on [`PupilQGridConv`] where that kernel takes them.
pub fn optimize_int8(
    model: InferenceModel,
    accel: Acceleration,
    int8: &qconv::Int8Convs,
) -> TractResult<(TypedModel, Vec<Replacement>)> {
    tune_tract_for_cpu();
    let isa = isa_for(accel)?;
    let mut typed = model.into_typed()?;
    let mut replaced = vec![];
    if let Some(isa) = isa {
        replaced = early(&mut typed, isa)?;
        // tract's declutter without its `ChangeAxes` pass: pupil's operators take the weights in the axis order
        // the file has (`WeightLayout`, unit axes of 1×1 convolutions included), so moving axes first only copies
        // the weight constants once more (MobileNet's cold start 46 -> 21 ms, the int8 student's optimisation
        // 11-14 -> 9-12 ms). `into_optimized` below declutters again, with `ChangeAxes`, what pupil left to tract.
        let mut declutter = tract_onnx::tract_core::optim::Optimizer::declutter();
        let passes = declutter.passes.len();
        declutter.passes.retain(|p| !format!("{p:?}").starts_with("ChangeAxes"));
        debug_assert_eq!(declutter.passes.len() + 1, passes, "tract's declutter has one ChangeAxes pass");
        declutter.session().optimize(&mut typed)?;
        requant::hoist_pools(&mut typed)?;
    } else {
        typed.declutter()?;
    }
    replaced.extend(accelerate_int8(&mut typed, accel, int8)?);
    if let Some(isa) = isa {
        requant::fuse(&mut typed, isa)?;
        requant::quantize_ops(&mut typed, isa)?;
        op::fold_dequantize(&mut typed)?;
    }
    Ok((typed.into_optimized()?, replaced))
}

/// The typed graph of an MLP read straight from the protobuf ([`direct`]: no tract parse or passes), with
/// pupil's kernels for `accel`: the int8 chain pupil's quantizer writes, or an f32 one at a fixed batch of a few
/// rows; `None` when the kernels are off or the graph is neither.
pub(crate) fn direct_mlp(
    graph: &tract_onnx::pb::GraphProto,
    input: &str,
    example_shape: &[usize],
    batch: crate::model::Batch,
    accel: Acceleration,
) -> TractResult<Option<TypedModel>> {
    let Some(isa) = isa_for(accel)? else { return Ok(None) };
    tune_tract_for_cpu();
    match direct::int8_mlp(graph, input, example_shape, batch, isa)? {
        Some(model) => Ok(Some(model)),
        None => direct::f32_mlp(graph, input, example_shape, batch, isa),
    }
}

/// Replaces, before tract's declutter, the quantized 1×1 convolutions over 1×1 inputs (an int8 student's fully
/// connected layers) by [`PupilQMatMul`] and the f32 dense layers by [`PupilMatMul`] (their bias and ReLU
/// folded in): packed from the weight constants as the file has them, where the declutter would first copy each
/// weight tensor to reshape it (twice for the int8 student, a third of its load; once for an f32 layer after a
/// `Flatten`, which the declutter folds into the weights).
fn early(model: &mut TypedModel, isa: Isa) -> TractResult<Vec<Replacement>> {
    let mut replaced = vec![];
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        if let Some(op) = op::for_pointwise_qconv(model, node, isa)? {
            replaced.extend(Replacement::of(&op, &node.name));
            replace(model, id, Box::new(op), id, None)?;
        } else if let Some((op, last)) = matmul::for_einsum(model, node, isa)? {
            replaced.extend(Replacement::of(&op, &node.name));
            replace(model, id, Box::new(op), last, None)?;
        }
    }
    Ok(replaced)
}

/// Wires `op` in place of node `id`, reading its activations (both operands of a [`PupilAdd`], the first input
/// of the others: their weights are packed inside them) and then `extra` (a folded residual's other operand),
/// its output standing for node `last`'s (a ReLU folded into a convolution).
fn replace(
    model: &mut TypedModel,
    id: usize,
    op: Box<dyn TypedOp>,
    last: usize,
    extra: Option<OutletId>,
) -> TractResult<()> {
    let node = &model.nodes()[id];
    let mut patch = TypedModelPatch::default();
    let reads = if op.as_op().is::<PupilAdd>() { 2 } else { 1 };
    let inputs = node.inputs[..reads]
        .iter()
        .chain(&extra)
        .map(|&i| patch.tap_model(model, i))
        .collect::<TractResult<TVec<_>>>()?;
    let out = patch.wire_node(&node.name, op, &inputs)?[0];
    patch.shunt_outside(model, OutletId::new(last, 0), out)?;
    patch.obliterate(id)?;
    patch.apply(model)
}

/// Replaces, in a decluttered graph, every quantized matrix product with constant weights by [`PupilQMatMul`],
/// every f32 matrix product with constant weights over at most `matmul::MAX_ROWS` rows (known at load) by
/// [`PupilMatMul`] (with the bias `Add` and ReLU after it), every f32 depthwise convolution by [`PupilDepthwiseConv`], every f32 convolution over at most
/// [`MAX_DIRECT_INPUTS`] input channels by [`PupilDirectConv`], every f32 1×1 convolution (tract's `EinSum` form of
/// it) by [`PupilPointwiseConv`], every other f32 stride-1 channels-first convolution by [`PupilGridConv`], every f32 max pool by [`PupilMaxPool`] and every
/// f32 sum of two computed tensors of one shape by [`PupilAdd`] (each when its shape is one the kernels handle;
/// tract keeps the others).
pub fn accelerate(model: &mut TypedModel, accel: Acceleration) -> TractResult<Vec<Replacement>> {
    accelerate_int8(model, accel, &qconv::Int8Convs::new())
}

/// [`accelerate`], with the f32 convolutions written for `QLinearConv`s whose int8 form is in `int8` run by
/// [`PupilQGridConv`] where it takes them.
fn accelerate_int8(
    model: &mut TypedModel,
    accel: Acceleration,
    int8: &qconv::Int8Convs,
) -> TractResult<Vec<Replacement>> {
    let Some(isa) = isa_for(accel)? else { return Ok(vec![]) };
    let mut replaced = vec![];
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        // The pupil operator, and the node whose output it replaces (a ReLU folded into a convolution).
        let mut extra = None;
        let op: Option<(Box<dyn TypedOp>, usize)> =
            if let Some((op, last)) = qgridconv::for_node(model, node, isa, int8)? {
                Some((Box::new(op), last))
            } else if let Some(op) = op::for_einsum(model, node, isa)? {
                Some((Box::new(op), id))
            } else if let Some((op, last)) = matmul::for_einsum(model, node, isa)? {
                Some((Box::new(op), last))
            } else if let Some((op, last)) = dwconv::for_conv(model, node, isa)? {
                match op {
                    dwconv::Direct::Depthwise(op) => Some((Box::new(op), last)),
                    dwconv::Direct::Dense(op) => Some((Box::new(op), last)),
                }
            } else if let Some((op, last, skip)) = pointwise::for_einsum(model, node, isa)? {
                extra = skip;
                Some((Box::new(op), last))
            } else if let Some((op, last)) = gridconv::for_conv(model, node, isa)? {
                Some((Box::new(op), last))
            } else if let Some(op) = pool::for_maxpool(model, node, isa)? {
                Some((Box::new(op), id))
            } else {
                eltwise::for_add(model, node, isa)?.map(|op| (Box::new(op) as Box<dyn TypedOp>, id))
            };
        if let Some((op, last)) = op {
            replaced.extend(Replacement::of(op.as_ref(), &node.name));
            replace(model, id, op, last, extra)?;
        }
    }
    if !replaced.is_empty() {
        *model = model.clone().into_compact()?;
    }
    Ok(replaced)
}

/// The mask of the first `n` of 16 lanes (all of them from `n ≥ 16`), for AVX-512 masked loads and stores of
/// row tails.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn first_lanes(n: usize) -> u16 {
    if n >= 16 { 0xffff } else { ((1u32 << n) - 1) as u16 }
}

/// The output of an operator over channels-first images: `run(image, out)` for every `[c, h, w]` image of
/// `input` (its leading axes are the batch) into a new f32 tensor of the declared `out_shape`, `out_len` values
/// per image.
pub(crate) fn map_images(
    op: &str,
    input: &TValue,
    (c, h, w): (usize, usize, usize),
    (out_shape, out_len): (&[TDim], usize),
    ctx: &EvalContext,
    mut run: impl FnMut(&[f32], &mut [f32]) -> TractResult<()>,
) -> TractResult<Tensor> {
    let shape = input.shape();
    ensure!(
        shape.len() >= 3 && shape[shape.len() - 3..] == [c, h, w],
        "{op} expects images of {:?}, got {shape:?}",
        [c, h, w]
    );
    let batch = input.len() / (c * h * w);
    let out_shape = output_shape(op, out_shape, ctx, batch * out_len)?;
    // SAFETY: f32 has no invalid bit patterns, and `run` writes every output value of each image.
    let mut out = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
    {
        let src = input.try_as_plain_ram()?;
        let mut dst = out.try_as_plain_ram_mut()?;
        let images = src.as_slice::<f32>()?.chunks_exact(c * h * w);
        for (x, o) in images.zip(dst.as_slice_mut::<f32>()?.chunks_exact_mut(out_len)) {
            run(x, o)?;
        }
    }
    Ok(out)
}

/// A pupil operator's declared output shape with the run's symbols (a symbolic batch) filled in, checked to hold
/// `values` values.
pub(crate) fn output_shape(op: &str, shape: &[TDim], ctx: &EvalContext, values: usize) -> TractResult<TVec<usize>> {
    let mut out: TVec<usize> = tvec![];
    for d in shape {
        out.push(d.eval(ctx.symbols).to_usize()?);
    }
    ensure!(out.iter().product::<usize>() == values, "{op}: output shape {out:?} does not hold {values} values");
    Ok(out)
}

/// The instruction set `accel` asks for (`None`: pupil's kernels off); an error when this CPU lacks it.
fn isa_for(accel: Acceleration) -> TractResult<Option<Isa>> {
    Ok(match accel {
        Acceleration::Off => None,
        Acceleration::On => Some(Isa::best()),
        Acceleration::With(isa) => {
            ensure!(Isa::available().contains(&isa), "{isa} kernels are not available on this CPU");
            Some(isa)
        }
    })
}

/// The pupil operators in an optimised graph: `(node name, operator, K, N, isa)`.
pub fn pupil_nodes(model: &TypedModel) -> Vec<Replacement> {
    model.nodes().iter().filter_map(|n| Replacement::of(n.op.as_ref(), &n.name)).collect()
}

/// On Android tract sees neither the core kind (it reads `/proc/cpuinfo` on Linux only) nor dotprod (its
/// detection is compiled for Linux, macOS and iOS). pupil reads the CPU part itself and sets tract's
/// `TRACT_CPU_AARCH64_KIND` knob (unless the user set it), once, before tract first asks. Dotprod cannot be
/// forced on through a knob; pupil's own int8 kernels detect it with `is_aarch64_feature_detected!` instead.
pub fn tune_tract_for_cpu() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if cfg!(all(target_arch = "aarch64", target_os = "android"))
            && std::env::var_os("TRACT_CPU_AARCH64_KIND").is_none()
            && let Ok(info) = std::fs::read_to_string("/proc/cpuinfo")
            && let Some(kind) = aarch64_kind_from_cpuinfo(&info)
        {
            tract_onnx::tract_core::knobs::set_str("TRACT_CPU_AARCH64_KIND", kind);
        }
    });
}

/// tract's aarch64 core kind for a `/proc/cpuinfo` text: the highest `CPU part` (the big cores), like tract on
/// Linux. `None` when no part is listed.
pub fn aarch64_kind_from_cpuinfo(cpuinfo: &str) -> Option<&'static str> {
    let part = cpuinfo
        .lines()
        .filter(|l| l.starts_with("CPU part"))
        .filter_map(|l| l.split_once(':'))
        .filter_map(|(_, v)| u32::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
        .max()?;
    Some(match part {
        0xd03 => "a53",
        0xd05 => "a55",
        0xd08 => "a72",
        0xd09 => "a73",
        0xd0a => "a75",
        0x0d0c | 0xd49 | 0xd8e | 0xd40 | 0xd4f | 0xd84 => "neoverse",
        _ => "generic",
    })
}

/// Whether this CPU has AVX-512F (never on other architectures): the AVX-512-only kernels (`lanes.rs`,
/// `winograd.rs`, `dwblocks.rs`, `pointwise.rs`'s channel lanes) check it before building or running.
pub(crate) fn avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One 16 × 16 tile of a channels-first → channels-last copy: values `at .. at + n` (`n ≤ 16`) of the 16 planes
/// `c0 .. c0 + 16` of `x` (`plane` values each; planes from `c` on read as zeros), transposed and stored as `n`
/// cells of 16 channels, `stride` values apart, from `dst` (Winograd's cells, the depthwise channel blocks).
///
/// # Safety
/// AVX-512F; the planes `c0 .. c` of `x` hold at least `at + n` values each; `dst` has room for
/// `(n − 1) · stride + 16` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn cells_from_planes(
    x: &[f32],
    (c, plane): (usize, usize),
    c0: usize,
    (at, n): (usize, usize),
    dst: *mut f32,
    stride: usize,
) {
    use std::arch::x86_64::*;
    let mask = first_lanes(n);
    // SAFETY: the contract above; loads are masked to the `n` values of each plane below `c`.
    unsafe {
        let mut r: [__m512; 16] = std::array::from_fn(|l| {
            if c0 + l < c {
                _mm512_maskz_loadu_ps(mask, x.as_ptr().add((c0 + l) * plane + at))
            } else {
                _mm512_setzero_ps()
            }
        });
        transpose16(&mut r);
        if n == 16 {
            for (j, v) in r.iter().enumerate() {
                _mm512_storeu_ps(dst.add(j * stride), *v);
            }
        } else {
            for (j, v) in r.iter().enumerate().take(n) {
                _mm512_storeu_ps(dst.add(j * stride), *v);
            }
        }
    }
}

/// Transposes 16 vectors of 16: lane `j` of vector `i` becomes lane `i` of vector `j`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn transpose16(r: &mut [std::arch::x86_64::__m512; 16]) {
    use std::arch::x86_64::*;
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for i in 0..4 {
        r[4 * i] = _mm512_shuffle_ps::<0x44>(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_shuffle_ps::<0xEE>(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_shuffle_ps::<0x44>(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_shuffle_ps::<0xEE>(t[4 * i + 1], t[4 * i + 3]);
    }
    for i in 0..2 {
        for j in 0..4 {
            t[8 * i + j] = _mm512_shuffle_f32x4::<0x88>(r[8 * i + j], r[8 * i + 4 + j]);
            t[8 * i + 4 + j] = _mm512_shuffle_f32x4::<0xDD>(r[8 * i + j], r[8 * i + 4 + j]);
        }
    }
    for j in 0..8 {
        r[j] = _mm512_shuffle_f32x4::<0x88>(t[j], t[j + 8]);
        r[j + 8] = _mm512_shuffle_f32x4::<0xDD>(t[j], t[j + 8]);
    }
}
