//! Element-wise f32 passes: `PupilAdd`, the sum of two tensors of one shape (a residual connection), and the
//! scan of a model's input for values that are not finite ([`first_non_finite`]).
//!
//! tract splits its element-wise ops across the model's thread pool and waits for it; for the activations of a
//! small CNN the pool's wake-up costs more than the sum: MobileNet's four residual `Add`s took 8 µs per run at
//! 1 thread and 92 µs at 2 (per-node profile), which made the whole model slower at 2 threads than at 1. One
//! pass here, vectorized (AVX-512 / AVX2 builds of the loop on x86-64, NEON by default on aarch64); from
//! [`MIN_SPLIT`] values it is shared with the pool the pupil way ([`super::team::share`]: the caller never waits
//! for a thread to wake). Alone, the sum would not need a second thread, but its operands come from layers the
//! two threads computed together: on one thread, the half the other core wrote crosses between the cores
//! (MobileNet's 48 × 48 × 16 sum: 3.1 µs at 1 thread, 9.4 µs at 2 without the split).

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::math::Add;

use super::qgemv::Isa;
use super::taps::Simd;
use super::team;

/// Values from which the sum is shared with the thread pool.
pub(crate) const MIN_SPLIT: usize = 16 * 1024;
/// Values per chunk of a shared sum at least (a few pages: each thread keeps to its part of the buffers).
const CHUNK: usize = 4096;

/// `a + b` for two f32 tensors of the same shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PupilAdd {
    isa: Isa,
}

impl PupilAdd {
    /// The instruction set level the operator was built for.
    pub fn isa(&self) -> Isa {
        self.isa
    }
}

impl Op for PupilAdd {
    fn name(&self) -> StaticName {
        "PupilAdd".into()
    }
    op_as_typed_op!();
}

impl EvalOp for PupilAdd {
    fn eval(&self, _ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (b, a) = (inputs.pop(), inputs.pop());
        let (Some(a), Some(b)) = (a, b) else { bail!("PupilAdd takes two inputs") };
        // Written into whichever operand no one else holds (f32 addition commutes exactly): a producer that keeps
        // its output for its next run (`KeptTensor`) still holds one of them.
        let (a, b) = if !a.is_exclusive() && b.is_exclusive() { (b, a) } else { (a, b) };
        ensure!(
            a.datum_type() == DatumType::F32 && b.datum_type() == DatumType::F32 && a.shape() == b.shape(),
            "PupilAdd expects two f32 tensors of one shape, got {:?} {:?} and {:?} {:?}",
            a.datum_type(),
            a.shape(),
            b.datum_type(),
            b.shape()
        );
        // That operand's buffer when no one else holds it (tract hands over the last use), else a copy.
        let mut out = a.into_tensor();
        {
            let mut dst = out.try_as_plain_ram_mut()?;
            let src = b.try_as_plain_ram()?;
            let executor = tract_linalg::multithread::current_tract_executor();
            let ok = add_shared(Simd::for_isa(self.isa), dst.as_slice_mut::<f32>()?, src.as_slice::<f32>()?, &executor);
            ensure!(ok, "a chunk of PupilAdd panicked");
        }
        Ok(tvec!(out.into_tvalue()))
    }
    op_out_of_plan!();
}

impl TypedOp for PupilAdd {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((Cost::FMA(DatumType::F32), inputs[0].shape.iter().product())))
    }
    as_op!();
}

/// [`add_assign`] in chunks shared with `executor`'s pool from [`MIN_SPLIT`] values; `false` when a chunk
/// panicked.
pub(crate) fn add_shared(
    simd: Simd,
    dst: &mut [f32],
    src: &[f32],
    executor: &tract_linalg::multithread::Executor,
) -> bool {
    let n = dst.len().min(src.len());
    let chunks = team::chunks(executor, n / CHUNK, n >= MIN_SPLIT);
    let out = team::Out::new(dst);
    team::share(executor, chunks, &|c| {
        let range = c * n / chunks..(c + 1) * n / chunks;
        // SAFETY: chunk `c` alone writes `range`, inside `dst`.
        let dst = unsafe { out.part(range.start, range.len()) };
        add_assign(simd, dst, &src[range]);
    })
}

/// `dst[i] += src[i]`, with the vector width of `simd`.
pub(crate) fn add_assign(simd: Simd, dst: &mut [f32], src: &[f32]) {
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
            // SAFETY: AVX-512F detected.
            unsafe { add_avx512(dst, src) }
        }
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2Fma | Simd::Avx512 if std::arch::is_x86_feature_detected!("avx2") => {
            // SAFETY: AVX2 detected.
            unsafe { add_avx2(dst, src) }
        }
        _ => add_plain(dst, src),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn add_avx512(dst: &mut [f32], src: &[f32]) {
    add_plain(dst, src)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn add_avx2(dst: &mut [f32], src: &[f32]) {
    add_plain(dst, src)
}

#[inline(always)]
fn add_plain(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// Values per block of [`first_non_finite`]'s branch-free pass.
const SCAN_BLOCK: usize = 64;

/// The index of the first value of `x` that is NaN or infinite, if any. One branch-free pass over blocks of
/// [`SCAN_BLOCK`] values (an exponent of all ones in any lane), built for AVX-512 and AVX2 on x86-64 (NEON is
/// the aarch64 baseline), then a search in the block that holds one. MobileNet's 27 648 inputs: the
/// baseline SSE2 build of this loop took 0.9% of a run (and the input was scanned twice per run).
pub(crate) fn first_non_finite(x: &[f32]) -> Option<usize> {
    let block = {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F detected.
                unsafe { bad_block_avx512(x) }
            } else if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 detected.
                unsafe { bad_block_avx2(x) }
            } else {
                bad_block(x)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        bad_block(x)
    }?;
    x[block * SCAN_BLOCK..].iter().position(|v| !v.is_finite()).map(|i| block * SCAN_BLOCK + i)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn bad_block_avx512(x: &[f32]) -> Option<usize> {
    bad_block(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn bad_block_avx2(x: &[f32]) -> Option<usize> {
    bad_block(x)
}

/// The first block of [`SCAN_BLOCK`] values (the last one may be shorter) that holds a NaN or an infinity.
#[inline(always)]
fn bad_block(x: &[f32]) -> Option<usize> {
    const EXPONENT: u32 = 0x7f80_0000;
    let bad = |c: &[f32]| c.iter().fold(0u32, |bad, v| bad | u32::from(v.to_bits() & EXPONENT == EXPONENT)) != 0;
    let mut blocks = x.chunks_exact(SCAN_BLOCK);
    let tail = blocks.remainder();
    let full = x.len() / SCAN_BLOCK;
    blocks.position(bad).or_else(|| (!tail.is_empty() && bad(tail)).then_some(full))
}

/// Builds the operator for a decluttered f32 `Add` of two computed (not constant) tensors of the same shape, or
/// `None` for any other node (a broadcast, a constant operand, another type: tract keeps those).
pub(crate) fn for_add(model: &TypedModel, node: &TypedNode, isa: Isa) -> TractResult<Option<PupilAdd>> {
    let Some(bin) = node.op_as::<TypedBinOp>() else { return Ok(None) };
    if !bin.0.is::<Add>() || bin.1.is_some() || node.inputs.len() != 2 || node.outputs.len() != 1 {
        return Ok(None);
    }
    let (a, b) = (model.outlet_fact(node.inputs[0])?, model.outlet_fact(node.inputs[1])?);
    let out = model.outlet_fact(OutletId::new(node.id, 0))?;
    let same = a.shape == b.shape && a.shape == out.shape;
    let f32s = [a.datum_type, b.datum_type, out.datum_type].iter().all(|dt| *dt == DatumType::F32);
    Ok((same && f32s && a.konst.is_none() && b.konst.is_none()).then_some(PupilAdd { isa }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::zoo::Rng;
    use proptest::prelude::*;

    proptest! {
        /// Lengths around the split threshold, on one thread and shared with a 2-thread pool: exactly the scalar
        /// sums, every value written once.
        #[test]
        fn a_shared_sum_is_the_elementwise_sum(n in (MIN_SPLIT - 5)..(3 * MIN_SPLIT + 7), seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let a: Vec<f32> = (0..n).map(|_| rng.sym(4.0)).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.sym(4.0)).collect();
            let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
            for executor in [&tract_linalg::multithread::Executor::SingleThread, crate::kernels::team::test_pool()] {
                let mut got = a.clone();
                prop_assert!(add_shared(Simd::Scalar, &mut got, &b, executor));
                prop_assert_eq!(&got, &want);
            }
        }

        /// Any length, with up to three NaNs / infinities (or none) anywhere, the largest finite values around:
        /// the index of the first one, as a plain search finds it.
        #[test]
        fn the_scan_finds_the_first_value_that_is_not_finite(
            n in 0usize..700, bad in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..3), 0..3),
            seed in any::<u64>(),
        ) {
            let mut rng = Rng::new(seed);
            let mut x: Vec<f32> = (0..n).map(|i| if i % 7 == 0 { f32::MAX } else { rng.sym(1e30) }).collect();
            for (at, kind) in &bad {
                if n > 0 {
                    x[at.index(n)] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][*kind];
                }
            }
            prop_assert_eq!(first_non_finite(&x), x.iter().position(|v| !v.is_finite()));
        }

        /// Every length (the vector loops' tails included), on every instruction set: exactly the scalar sums.
        #[test]
        fn add_assign_is_the_elementwise_sum(n in 0usize..300, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let a: Vec<f32> = (0..n).map(|_| rng.sym(100.0)).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.sym(100.0)).collect();
            for isa in Isa::available() {
                let mut got = a.clone();
                add_assign(Simd::for_isa(isa), &mut got, &b);
                for i in 0..n {
                    prop_assert_eq!(got[i].to_bits(), (a[i] + b[i]).to_bits(), "{} at {}", isa, i);
                }
            }
        }
    }
}
