//! `PupilGridConv`: f32 convolutions with stride 1, group 1 and more input channels than the direct kernel takes
//! (a CNN's 32→64 3×3 layer), computed as one product over the zero-padded input instead of tract's im2col +
//! matrix product.
//!
//! Output row `y`, column `x` is computed at position `y·PW + x` of a grid as wide as the padded input (`PW`
//! columns). Every (input channel `c`, kernel row `ky`, column `kx`) term then reads the padded planes at the
//! fixed offset `c·PH·PW + ky·PW + kx` from the position, so the whole convolution is the pointwise kernel's
//! product (6 output channels × 16 positions per block, [`super::pointwise`]) with `C·KH·KW` terms. The `KW − 1`
//! positions of each grid row past the output width are computed and dropped; bias and a following ReLU / ReLU6
//! are folded in. Per run: one copy of the input into the padded planes and one crop of the grid. On AVX-512 the
//! same terms run as a product with the output channels in the lanes over the output columns only
//! ([`super::lanes`]), written straight into the output (no crop), and 3×3 kernels over at least 16 input and
//! output channels as Winograd F(2×2, 3×3) ([`super::winograd`]: 16 multiply-adds per 4 outputs instead of 36).

use std::sync::Arc;

use tract_linalg::multithread::Executor;
use tract_onnx::tract_core::internal::*;

use super::dwconv::{MAX_DIRECT_INPUTS, conv_parts, following_clamp};
use super::lanes::Lanes;
use super::pointwise::Pointwise;
use super::qgemv::Isa;
use super::scratch::Kept;
use super::taps::Simd;
use super::winograd::Winograd;

/// Where the image goes in the padded planes, and the grid the product runs over (also the geometry of the int8
/// grid convolution, [`super::qgridconv`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grid {
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    /// Zero rows above and columns left of the image.
    pub pt: usize,
    pub pl: usize,
    /// Padded plane height and width.
    pub ph: usize,
    pub pw: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Grid {
    /// The grid of a stride-1 `kh × kw` convolution producing `oh × ow` from `c_in` planes of `h × w` with `pt`
    /// rows and `pl` columns of padding before the image: planes large enough to hold the image and every window
    /// the output reads.
    pub(crate) fn padded(
        c_in: usize,
        (h, w): (usize, usize),
        (pt, pl): (usize, usize),
        (oh, ow): (usize, usize),
        (kh, kw): (usize, usize),
    ) -> Grid {
        Grid::strided(c_in, (h, w), (pt, pl), (oh, ow), (kh, kw), (1, 1))
    }

    /// The padded planes of [`Grid::padded`] for a convolution of any stride `(sh, sw)` (windows `sh` rows and
    /// `sw` columns apart): the last window starts at row `(oh − 1)·sh`.
    pub(crate) fn strided(
        c_in: usize,
        (h, w): (usize, usize),
        (pt, pl): (usize, usize),
        (oh, ow): (usize, usize),
        (kh, kw): (usize, usize),
        (sh, sw): (usize, usize),
    ) -> Grid {
        let (ph, pw) = ((pt + h).max((oh - 1) * sh + kh), (pl + w).max((ow - 1) * sw + kw));
        Grid { c_in, h, w, pt, pl, ph, pw, oh, ow }
    }

    /// Values (or cells) of one padded plane.
    pub(crate) fn plane(&self) -> usize {
        self.ph * self.pw
    }

    /// Copies the image `[c_in, h, w]` into the padded planes `padded` at `(pt, pl)` of each; the cells around it
    /// (the padding) are left as they are: zero in a buffer made zeroed and only ever written here.
    pub(crate) fn fill(&self, x: &[f32], padded: &mut [f32]) {
        for (c, plane) in x.chunks_exact(self.h * self.w).enumerate() {
            for (y, row) in plane.chunks_exact(self.w).enumerate() {
                let at = c * self.plane() + (y + self.pt) * self.pw + self.pl;
                padded[at..at + self.w].copy_from_slice(row);
            }
        }
    }

    /// Whether cell `j` of the padded planes lies outside the image (the padding [`Grid::fill`] leaves at zero).
    pub(crate) fn is_padding(&self, j: usize) -> bool {
        let (y, x) = (j % self.plane() / self.pw, j % self.pw);
        y < self.pt || y >= self.pt + self.h || x < self.pl || x >= self.pl + self.w
    }
}

/// The convolution's weights as a shifted product, and its geometry.
#[derive(Debug)]
pub(crate) struct GridConv {
    grid: Grid,
    c_out: usize,
    /// `c_in · kh · kw`: multiply-adds per output value.
    terms: usize,
    product: Product,
    /// The `padded` and `staged` buffers of the last run, kept for the next one (`run`'s padding stays zero, so
    /// they are reused as they are); a run that finds them taken by a concurrent one allocates its own.
    scratch: Kept<Scratch>,
}

/// The product a grid convolution runs on.
#[derive(Debug)]
enum Product {
    /// The pointwise kernel over the whole grid (positions in the lanes), cropped into the output.
    Grid(Pointwise),
    /// The output channels in the lanes, over the output columns only, straight into the output (AVX-512; see
    /// [`super::lanes`]).
    Lanes(Lanes),
    /// 3×3 kernels over at least [`WINOGRAD_CHANNELS`] input and output channels: Winograd F(2×2, 3×3) (AVX-512;
    /// see [`super::winograd`]); `padded` holds the image channels-last, `staged` the transformed tiles.
    Winograd(Winograd),
}

/// Input and output channels from which a 3×3 convolution runs as [`Product::Winograd`] (a vector of 16 channels in
/// both: chosen, not tuned; the CNN's layer has 32 → 64).
const WINOGRAD_CHANNELS: usize = 16;

/// The zero-padded input planes and the product's output over the whole grid (empty for [`Product::Lanes`]),
/// for one image.
#[derive(Debug)]
struct Scratch {
    padded: Vec<f32>,
    staged: Vec<f32>,
}

impl GridConv {
    /// `weight(o, c, ky, kx)` of a `kh × kw` convolution, stride 1, over `grid`, to run on `simd`.
    fn new(
        grid: Grid,
        (c_out, kh, kw): (usize, usize, usize),
        weight: impl Fn(usize, usize, usize, usize) -> f32,
        bias: &[f32],
        clamp: (f32, f32),
        simd: Simd,
    ) -> GridConv {
        let mut offsets = Vec::with_capacity(grid.c_in * kh * kw);
        for c in 0..grid.c_in {
            for ky in 0..kh {
                for kx in 0..kw {
                    offsets.push(c * grid.plane() + ky * grid.pw + kx);
                }
            }
        }
        let term = |o: usize, t: usize| weight(o, t / (kh * kw), t / kw % kh, t % kw);
        let winograd = (kh, kw) == (3, 3) && grid.c_in.min(c_out) >= WINOGRAD_CHANNELS;
        let product = if simd == Simd::Avx512 && winograd && super::avx512f() {
            Product::Winograd(Winograd::new(&grid, c_out, &weight, bias, clamp))
        } else if simd == Simd::Avx512 && Lanes::available() {
            let positions: Vec<usize> = (0..grid.oh).flat_map(|y| (0..grid.ow).map(move |x| y * grid.pw + x)).collect();
            Product::Lanes(Lanes::new(offsets, &positions, c_out, term, bias, clamp, |j| grid.is_padding(j)))
        } else {
            Product::Grid(Pointwise::shifted(offsets, (c_out, grid.oh * grid.pw), term, bias, clamp, simd))
        };
        GridConv { grid, c_out, terms: grid.c_in * kh * kw, product, scratch: Kept::new() }
    }

    /// One image `[c_in, h, w]` into `out` `[c_out, oh, ow]`, with `padded` and `staged` as scratch (their
    /// padding stays zero between calls: only the image's own cells are written).
    fn run(
        &self,
        simd: Simd,
        x: &[f32],
        out: &mut [f32],
        (padded, staged): (&mut [f32], &mut [f32]),
        executor: &Executor,
    ) -> TractResult<()> {
        let g = &self.grid;
        let pk = match &self.product {
            Product::Winograd(w) => {
                let ran = w.run(x, out, padded, staged, executor);
                ensure!(ran, "PupilGridConv: the Winograd transform refused its buffers");
                return Ok(());
            }
            Product::Lanes(l) => {
                g.fill(x, padded);
                ensure!(l.run(padded, out, executor), "PupilGridConv: the lanes product refused its buffers");
                return Ok(());
            }
            Product::Grid(pk) => {
                g.fill(x, padded);
                pk
            }
        };
        pk.run(simd, padded, staged, None, executor)?;
        for (o_plane, s_plane) in out.chunks_exact_mut(g.oh * g.ow).zip(staged.chunks_exact(g.oh * g.pw)) {
            for (o_row, s_row) in o_plane.chunks_exact_mut(g.ow).zip(s_plane.chunks_exact(g.pw)) {
                o_row.copy_from_slice(&s_row[..g.ow]);
            }
        }
        Ok(())
    }

    /// This convolution's scratch buffers: the kept ones when no other run holds them, else new zeroed ones.
    fn take_scratch(&self) -> Scratch {
        self.scratch.take_or(|| Scratch {
            padded: vec![0f32; self.padded_len()],
            staged: match &self.product {
                Product::Grid(_) => vec![0f32; self.c_out * self.grid.oh * self.grid.pw],
                Product::Lanes(_) => vec![],
                Product::Winograd(w) => vec![0f32; w.v_len()],
            },
        })
    }

    /// Keeps `scratch` for the next run.
    fn keep_scratch(&self, scratch: Scratch) {
        self.scratch.keep(scratch)
    }

    fn padded_len(&self) -> usize {
        let reads = match &self.product {
            Product::Grid(pk) => pk.x_len(),
            Product::Lanes(l) => l.x_len(),
            Product::Winograd(w) => return w.cells_len(),
        };
        reads.max(self.grid.c_in * self.grid.plane())
    }
}

/// A stride-1, group-1 f32 convolution over channels-first images, on the shifted-product kernel.
#[derive(Debug, Clone)]
pub struct PupilGridConv {
    conv: Arc<GridConv>,
    isa: Isa,
    simd: Simd,
    out_shape: TVec<TDim>,
}

impl PartialEq for PupilGridConv {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.conv, &other.conv) && self.isa == other.isa && self.out_shape == other.out_shape
    }
}
impl Eq for PupilGridConv {}

impl PupilGridConv {
    /// The instruction set level the operator was built for.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// `(c_in · kh · kw, output channels)`: products summed per output value, and outputs per position.
    pub fn dims(&self) -> (usize, usize) {
        (self.conv.terms, self.conv.c_out)
    }
    /// Whether it runs as Winograd F(2×2, 3×3) (3×3 kernels over at least 16 input and output channels, AVX-512).
    pub fn winograd(&self) -> bool {
        matches!(self.conv.product, Product::Winograd(_))
    }
}

impl Op for PupilGridConv {
    fn name(&self) -> StaticName {
        "PupilGridConv".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        let (g, c) = (&self.conv.grid, &self.conv);
        Ok(vec![format!(
            "{}→{} channels, {}×{} → {}×{} over a {}-wide grid, {:?}",
            g.c_in, c.c_out, g.h, g.w, g.oh, g.ow, g.pw, self.simd
        )])
    }
    op_as_typed_op!();
}

impl EvalOp for PupilGridConv {
    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (c, g) = (&self.conv, &self.conv.grid);
        let mut scratch = c.take_scratch();
        let executor = tract_linalg::multithread::current_tract_executor();
        let out_len = c.c_out * g.oh * g.ow;
        let out = super::map_images(
            "PupilGridConv",
            &inputs[0],
            (g.c_in, g.h, g.w),
            (&self.out_shape, out_len),
            ctx,
            |x, o| c.run(self.simd, x, o, (&mut scratch.padded, &mut scratch.staged), &executor),
        )?;
        c.keep_scratch(scratch);
        Ok(tvec!(out.into_tvalue()))
    }
    op_out_of_plan!();
}

impl TypedOp for PupilGridConv {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.out_shape)))
    }
    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let shape = &inputs[0].shape;
        let batch: TDim = shape.iter().take(shape.len().saturating_sub(3)).product();
        let (c, g) = (&self.conv, &self.conv.grid);
        let macs = c.c_out * g.oh * g.ow * c.terms;
        Ok(tvec!((Cost::FMA(DatumType::F32), batch * macs as i64)))
    }
    as_op!();
}

/// Builds the pupil operator for a decluttered f32 `Conv` node with stride 1, group 1, channels first and more
/// than [`MAX_DIRECT_INPUTS`] input channels (fewer go to the direct kernel), and the last node it replaces (a
/// ReLU / Clip folded in); `None` for any other convolution.
pub(crate) fn for_conv(model: &TypedModel, node: &TypedNode, isa: Isa) -> TractResult<Option<(PupilGridConv, usize)>> {
    let Some(parts) = conv_parts(model, node)? else { return Ok(None) };
    let w = parts.win.clone();
    if parts.group != 1 || parts.c_in <= MAX_DIRECT_INPUTS || parts.layout.channels_last || (w.sh, w.sw) != (1, 1) {
        return Ok(None);
    }
    // The padded planes hold the image at (pt, pl) and every window the output reads.
    let grid = Grid::padded(parts.c_in, (w.h, w.w), (w.pt, w.pl), (w.oh, w.ow), (w.kh, w.kw));
    let (lo, hi, last) = following_clamp(model, node)?;
    let simd = Simd::for_isa(isa);
    let weight = |o, c, y, x| parts.weight(o, c, y, x);
    let conv = GridConv::new(grid, (parts.c_out, w.kh, w.kw), weight, &parts.bias, (lo, hi), simd);
    let out_shape = model.outlet_fact(OutletId::new(last, 0))?.shape.iter().cloned().collect();
    Ok(Some((PupilGridConv { conv: Arc::new(conv), isa, simd, out_shape }, last)))
}

/// Output `(o, y, x)` of a stride-1 convolution by its definition, in f64, for the kernels' tests: the image
/// `x` `[c_in, h, w]` read with `(pt, pl)` rows and columns of zeros before it, `weight(o, c, ky, kx)`, the bias and
/// the clamp; returns `(value, Σ |terms|)` (the latter scales the tolerance).
#[cfg(test)]
pub(crate) fn definition(
    x: &[f32],
    (c_in, h, w, pt, pl): (usize, usize, usize, usize, usize),
    (kh, kw): (usize, usize),
    weight: &dyn Fn(usize, usize, usize, usize) -> f32,
    bias: f32,
    (lo, hi): (f32, f32),
    (o, y, xo): (usize, usize, usize),
) -> (f64, f64) {
    let (mut exact, mut mag) = (bias as f64, bias.abs() as f64);
    for c in 0..c_in {
        for ky in 0..kh {
            for kx in 0..kw {
                let (iy, ix) = ((y + ky) as i64 - pt as i64, (xo + kx) as i64 - pl as i64);
                if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                    continue;
                }
                let v = x[(c * h + iy as usize) * w + ix as usize] as f64 * weight(o, c, ky, kx) as f64;
                exact += v;
                mag += v.abs();
            }
        }
    }
    (exact.max(lo as f64).min(hi as f64), mag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::zoo::Rng;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// 5..24 input and 1..20 output channels, images up to 17 × 17, kernels 1..=5 (not always square), every
        /// padding below the kernel size, with and without a clamp: every instruction set within
        /// `1e-5 · (1 + Σ|w·x|)` of the definition computed in f64 (run twice, so the reused scratch is checked too).
        #[test]
        fn grid_convolution_matches_the_definition_on_every_isa(
            (c_in, c_out) in (5usize..24, 1usize..20),
            (h, w) in (1usize..18, 1usize..18),
            (kh, kw) in (1usize..=5, 1usize..=5),
            pads in (0usize..5, 0usize..5, 0usize..5, 0usize..5),
            clamp in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let (pt, pb, pl, pr) = (pads.0 % kh, pads.1 % kh, pads.2 % kw, pads.3 % kw);
            prop_assume!(h + pt + pb >= kh && w + pl + pr >= kw);
            let (oh, ow) = (h + pt + pb - kh + 1, w + pl + pr - kw + 1);
            let mut rng = Rng::new(seed);
            let weights: Vec<f32> = (0..c_out * c_in * kh * kw).map(|_| rng.sym(1.0)).collect();
            let bias: Vec<f32> = (0..c_out).map(|_| rng.sym(1.0)).collect();
            let wt = |o: usize, c: usize, y: usize, x: usize| weights[((o * c_in + c) * kh + y) * kw + x];
            let (lo, hi) = if clamp { (0.0, 1.5) } else { (f32::NEG_INFINITY, f32::INFINITY) };
            let grid = Grid::padded(c_in, (h, w), (pt, pl), (oh, ow), (kh, kw));
            for isa in Isa::available() {
                let conv = GridConv::new(grid, (c_out, kh, kw), wt, &bias, (lo, hi), Simd::for_isa(isa));
                // Two images per ISA, on the scratch the op keeps between runs (its padding must stay zero): on one
                // thread, then shared with a 2-thread pool.
                for executor in [&Executor::SingleThread, crate::kernels::team::test_pool()] {
                    let x: Vec<f32> = (0..c_in * h * w).map(|_| rng.sym(2.0)).collect();
                    let mut out = vec![f32::NAN; c_out * oh * ow];
                    let mut scratch = conv.take_scratch();
                    let scratches = (&mut scratch.padded[..], &mut scratch.staged[..]);
                    conv.run(Simd::for_isa(isa), &x, &mut out, scratches, executor).unwrap();
                    conv.keep_scratch(scratch);
                    for o in 0..c_out {
                        for y in 0..oh {
                            for xo in 0..ow {
                                let image = (c_in, h, w, pt, pl);
                                let (exact, mag) = definition(&x, image, (kh, kw), &wt, bias[o], (lo, hi), (o, y, xo));
                                let got = out[(o * oh + y) * ow + xo] as f64;
                                prop_assert!((got - exact).abs() <= 1e-5 * (1.0 + mag), "{} o {} y {} x {}: {} vs {}", isa, o, y, xo, got, exact);
                            }
                        }
                    }
                }
            }
        }
    }
}
