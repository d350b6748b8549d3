//! `PupilMaxPool`: the tract operator that runs an f32 NCHW max pool (any kernel, stride and padding that keep
//! every window on the image; no indices output, no ceil mode) on pupil's sliding-window kernels
//! ([`super::taps`]); the common 2×2 stride-2 pool straight from its rows (AVX-512, or loops the compiler
//! vectorizes).

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{MaxPool, PaddingSpec};

use super::channels_last;
use super::dwconv::{Layout, window_of};
use super::qgemv::Isa;
use super::scratch::Kept;
use super::taps::{self, Reduce, Simd, Tap, Window};

/// A 2-D max pool over every channel plane.
#[derive(Debug, Clone)]
pub struct PupilMaxPool {
    win: Arc<Window>,
    taps: Arc<Vec<Tap>>,
    channels: usize,
    isa: Isa,
    simd: Simd,
    layout: Layout,
    out_shape: TVec<TDim>,
    /// The phase-split plane (−∞ padding, written once) and the flat output run, kept between runs.
    scratch: Arc<Kept<(Vec<f32>, Vec<f32>)>>,
}

impl PartialEq for PupilMaxPool {
    fn eq(&self, other: &Self) -> bool {
        self.win == other.win && self.channels == other.channels && self.isa == other.isa && self.layout == other.layout
    }
}
impl Eq for PupilMaxPool {}

impl PupilMaxPool {
    pub(crate) fn new(win: Window, channels: usize, isa: Isa, layout: Layout, out_shape: TVec<TDim>) -> PupilMaxPool {
        let mut taps = Vec::with_capacity(win.kh * win.kw);
        for y in 0..win.kh {
            for x in 0..win.kw {
                taps.push(Tap { base: win.tap_base(y, x), w: 1.0 });
            }
        }
        PupilMaxPool {
            win: Arc::new(win),
            taps: Arc::new(taps),
            channels,
            isa,
            simd: Simd::for_isa(isa),
            layout,
            out_shape,
            scratch: Arc::new(Kept::new()),
        }
    }

    /// The instruction set level the operator was built for.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// `(window size kh · kw, channels)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.win.kh * self.win.kw, self.channels)
    }

    /// Pools `planes` planes of `input` into `out` (channels first), or `planes / channels` channels-last images.
    pub(crate) fn run(&self, input: &[f32], planes: usize, out: &mut [f32]) -> TractResult<()> {
        let win = &*self.win;
        let (plane, oplane) = (win.h * win.w, win.oh * win.ow);
        ensure!(input.len() == planes * plane && out.len() == planes * oplane);
        if self.layout.channels_last {
            let c = self.channels;
            for (x, o) in input.chunks_exact(plane * c).zip(out.chunks_exact_mut(oplane * c)) {
                ensure!(channels_last::max_pool(self.simd, win, c, x, o));
            }
            return Ok(());
        }
        // Windows wholly inside the plane: no padding on top or left, and none of the bottom or right padding read
        // (an odd height padded to an extra output row is not).
        if (win.kh, win.kw, win.sh, win.sw, win.pt, win.pl) == (2, 2, 2, 2, 0, 0)
            && 2 * win.oh <= win.h
            && 2 * win.ow <= win.w
        {
            for (src, dst) in input.chunks_exact(plane).zip(out.chunks_exact_mut(oplane)) {
                match self.simd {
                    #[cfg(target_arch = "x86_64")]
                    Simd::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
                        // SAFETY: AVX-512F detected; `src` is an `h × w` plane with 2·oh ≤ h and 2·ow ≤ w (checked
                        // above), `dst` an `oh × ow` one.
                        unsafe { x86::max_pool_2x2(src, win.w, win.ow, dst) }
                    }
                    _ => max_pool_2x2(src, win.w, win.ow, dst),
                }
            }
            return Ok(());
        }
        // −∞ padding: never the maximum of a window, which always holds at least one input value.
        let (mut buf, mut flat) =
            self.scratch.take_or(|| (vec![f32::NEG_INFINITY; win.buffer_len(1)], vec![0f32; win.flat_len()]));
        for (src, dst) in input.chunks_exact(plane).zip(out.chunks_exact_mut(oplane)) {
            win.scatter(self.simd, src, &mut buf[..win.plane_len()]);
            ensure!(taps::run(self.simd, Reduce::Max, &buf, &self.taps, &mut flat));
            win.gather(self.simd, &flat, dst);
        }
        self.scratch.keep((buf, flat));
        Ok(())
    }
}

/// The common 2×2, stride-2 pool without padding over one plane `w` wide, straight from its rows (the generic
/// sliding-window path costs a scatter and a gather per plane, as much as the pool itself on small planes).
/// Written so that the compiler vectorises it.
fn max_pool_2x2(src: &[f32], w: usize, ow: usize, dst: &mut [f32]) {
    for (y, out) in dst.chunks_exact_mut(ow).enumerate() {
        let (r0, r1) = (&src[2 * y * w..][..2 * ow], &src[(2 * y + 1) * w..][..2 * ow]);
        for ((o, a), b) in out.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
            *o = a[0].max(a[1]).max(b[0].max(b[1]));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::kernels::first_lanes;

    /// [`super::max_pool_2x2`] 16 outputs at a time: the larger of two rows' 32 values, then of each even / odd
    /// pair (two permutes); the row tail with masked loads and stores.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max_pool_2x2(src: &[f32], w: usize, ow: usize, dst: &mut [f32]) {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        for (y, out) in dst.chunks_exact_mut(ow).enumerate() {
            let (r0, r1) = (&src[2 * y * w..][..2 * ow], &src[(2 * y + 1) * w..][..2 * ow]);
            let mut x = 0;
            while x < ow {
                let n = ow - x;
                // SAFETY: the loads read `r0` / `r1` below `2·ow` (masked to the `2·n` values left), the store
                // writes `out` below `ow`.
                unsafe {
                    let (m0, m1) = (first_lanes(2 * n), first_lanes((2 * n).saturating_sub(16)));
                    let (a0, a1) = (r0.as_ptr().add(2 * x), r1.as_ptr().add(2 * x));
                    let lo = _mm512_max_ps(_mm512_maskz_loadu_ps(m0, a0), _mm512_maskz_loadu_ps(m0, a1));
                    let hi = _mm512_max_ps(
                        _mm512_maskz_loadu_ps(m1, a0.wrapping_add(16)),
                        _mm512_maskz_loadu_ps(m1, a1.wrapping_add(16)),
                    );
                    let v = _mm512_max_ps(_mm512_permutex2var_ps(lo, even, hi), _mm512_permutex2var_ps(lo, odd, hi));
                    _mm512_mask_storeu_ps(out.as_mut_ptr().add(x), first_lanes(n), v);
                }
                x += 16;
            }
        }
    }
}

impl Op for PupilMaxPool {
    fn name(&self) -> StaticName {
        "PupilMaxPool".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        let w = &self.win;
        Ok(vec![format!(
            "{} channels, kernel {}x{}, stride {}x{}, pad {}x{}, {}x{}→{}x{}, {:?}, {:?}",
            self.channels, w.kh, w.kw, w.sh, w.sw, w.pt, w.pl, w.h, w.w, w.oh, w.ow, self.layout, self.simd
        )])
    }
    op_as_typed_op!();
}

impl EvalOp for PupilMaxPool {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let shape = input.shape();
        let w = &*self.win;
        let split = self.layout.split(shape);
        let Some((batch, _)) = split.filter(|(_, chw)| *chw == [self.channels, w.h, w.w]) else {
            bail!(
                "PupilMaxPool expects {:?} images of {}×{}×{} (c×h×w), got input shape {shape:?}",
                self.layout,
                self.channels,
                w.h,
                w.w
            )
        };
        let out_shape = self.layout.shape(batch, self.channels, w.oh, w.ow);
        // SAFETY: f32 has no invalid bit patterns, and `run` writes every output value (each plane's
        // `oh × ow` values are copied out of its flat run) or fails, dropping the tensor unread.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
        let src = input.try_as_plain_ram()?;
        self.run(src.as_slice::<f32>()?, batch * self.channels, out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?)?;
        Ok(tvec!(out.into_tvalue()))
    }
    op_out_of_plan!();
}

impl TypedOp for PupilMaxPool {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.out_shape)))
    }
    as_op!();
}

/// Builds the pupil operator for a decluttered f32 `MaxPool` node, or `None` when it is one pupil leaves to
/// tract (indices output, ceil mode, another layout or type, a window that could lie in the padding).
pub(crate) fn for_maxpool(model: &TypedModel, node: &TypedNode, isa: Isa) -> TractResult<Option<PupilMaxPool>> {
    let Some(op) = node.op_as::<MaxPool>() else { return Ok(None) };
    if op.with_index_outputs.is_some() || node.inputs.len() != 1 || node.outputs.len() != 1 {
        return Ok(None);
    }
    if matches!(op.pool_spec.padding, PaddingSpec::ExplicitOnnxPool(_, _, true)) {
        return Ok(None);
    }
    let x = model.outlet_fact(node.inputs[0])?;
    let out_fact = model.outlet_fact(OutletId::new(node.id, 0))?;
    if x.datum_type != DatumType::F32 || out_fact.datum_type != DatumType::F32 {
        return Ok(None);
    }
    let Some((win, layout, channels)) = window_of(&op.pool_spec, &x.shape)? else { return Ok(None) };
    let expected = layout.shape(x.shape[0].clone(), channels.into(), win.oh.into(), win.ow.into());
    if out_fact.shape.iter().cloned().collect::<TVec<_>>() != expected {
        return Ok(None);
    }
    Ok(Some(PupilMaxPool::new(win, channels, isa, layout, out_fact.shape.iter().cloned().collect())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::zoo::Rng;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Max pools of kernels 1..5 (2×2 and 3×3 included), strides 1..3, paddings below the kernel size, on
        /// 1..20 planes of 1..24 × 1..40: equal to the definition on every instruction set (max is exact).
        #[test]
        fn max_pool_matches_the_definition_on_every_isa(
            planes in 1usize..=20, h in 1usize..=24, w in 1usize..=40,
            kh in 1usize..=5, kw in 1usize..=5, sh in 1usize..=3, sw in 1usize..=3,
            pads in (0usize..5, 0usize..5, 0usize..5, 0usize..5), seed in any::<u64>(),
        ) {
            let (pt, pb, pl, pr) = (pads.0 % kh, pads.1 % kh, pads.2 % kw, pads.3 % kw);
            prop_assume!(h + pt + pb >= kh && w + pl + pr >= kw);
            let (oh, ow) = ((h + pt + pb - kh) / sh + 1, (w + pl + pr - kw) / sw + 1);
            let mut rng = Rng::new(seed);
            // Negative values too: the padding must never win.
            let x: Vec<f32> = (0..planes * h * w).map(|_| rng.sym(10.0) - 20.0).collect();
            let mut expected = vec![];
            for p in 0..planes {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut m = f32::NEG_INFINITY;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let (y, xx) = ((oy * sh + ky) as isize - pt as isize, (ox * sw + kx) as isize - pl as isize);
                                if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w {
                                    m = m.max(x[(p * h + y as usize) * w + xx as usize]);
                                }
                            }
                        }
                        expected.push(m);
                    }
                }
            }
            let win = Window::new((h, w), (kh, kw), (sh, sw), (pt, pl), (oh, ow));
            prop_assert!(win.is_some());
            check_pool(&x, planes, win.unwrap(), &expected)?;
        }

        /// The 2×2 / stride-2 fast path (no padding), on odd and even planes: equal to the definition.
        #[test]
        fn two_by_two_max_pool_matches_the_definition(planes in 1usize..=20, h in 2usize..=30, w in 2usize..=40, seed in any::<u64>()) {
            let (oh, ow) = (h / 2, w / 2);
            let mut rng = Rng::new(seed);
            let x: Vec<f32> = (0..planes * h * w).map(|_| rng.sym(10.0) - 20.0).collect();
            let mut expected = vec![];
            for p in 0..planes {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let at = |y: usize, xx: usize| x[(p * h + 2 * oy + y) * w + 2 * ox + xx];
                        expected.push(at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1)));
                    }
                }
            }
            let win = Window::new((h, w), (2, 2), (2, 2), (0, 0), (oh, ow)).unwrap();
            check_pool(&x, planes, win, &expected)?;
        }
    }

    fn check_pool(x: &[f32], planes: usize, win: Window, expected: &[f32]) -> Result<(), TestCaseError> {
        let (h, w, kh, kw, sh, sw) = (win.h, win.w, win.kh, win.kw, win.sh, win.sw);
        for isa in Isa::available() {
            let layout = Layout { has_n: false, channels_last: false };
            let pool = PupilMaxPool::new(win.clone(), planes, isa, layout, tvec![]);
            // Twice: the second run reuses the scratch the first one kept (its −∞ padding must be intact).
            let mut out = vec![f32::NAN; expected.len()];
            pool.run(x, planes, &mut out).unwrap();
            out.fill(f32::NAN);
            pool.run(x, planes, &mut out).unwrap();
            prop_assert_eq!(
                &out[..],
                expected,
                "{} {}x{} k {}x{} s {}x{} pads {:?}",
                isa,
                h,
                w,
                kh,
                kw,
                sh,
                sw,
                (win.pt, win.pl)
            );
        }
        Ok(())
    }
}
