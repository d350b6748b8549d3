//! Calibration: runs the f32 model on the calibration set with the tensors to quantize exposed as outputs, and
//! turns their value distributions into ranges (min/max, percentile, or KL-divergence threshold).

use std::collections::HashMap;

use tract_onnx::pb;
use tract_onnx::prelude::*;

use super::{CalibrationMethod, QuantizeError, QuantizeOptions};
use crate::error::{Error, Result};

/// Histogram resolution used by the percentile and entropy methods.
pub const BINS: usize = 2048;

/// Calibrated real range `(min, max)` per tensor name.
pub type Ranges = HashMap<String, (f32, f32)>;

/// Examples per tract run.
const CHUNK: usize = 128;

fn invalid(e: impl std::fmt::Display) -> Error {
    Error::InvalidModel { reason: format!("calibration: {e}") }
}

struct Runner {
    plan: std::sync::Arc<TypedRunnableModel>,
    names: Vec<String>,
    is_input: Vec<bool>,
    example_shape: Vec<usize>,
}

impl Runner {
    fn new(proto: &pb::ModelProto, example_shape: &[usize], wanted: &[String]) -> Result<Runner> {
        let mut model = tract_onnx::onnx().model_for_proto_model(proto).map_err(|e| invalid(format!("{e:#}")))?;
        let n = model.symbols.sym("N").to_dim();
        let dims: TVec<TDim> = std::iter::once(n).chain(example_shape.iter().map(|d| d.to_dim())).collect();
        model
            .set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), dims))
            .map_err(|e| invalid(format!("{e:#}")))?;
        let mut outlets = vec![];
        let mut names = vec![];
        let mut is_input = vec![];
        for name in wanted {
            if let Some(o) = model.find_outlet_label(name) {
                outlets.push(o);
                names.push(name.clone());
                is_input.push(false);
            } else if let Some(i) = model.input_outlets().map_err(|e| invalid(format!("{e:#}")))?.first()
                && model.node(i.node).name == *name
            {
                outlets.push(*i);
                names.push(name.clone());
                is_input.push(true);
            }
        }
        model.select_output_outlets(&outlets).map_err(|e| invalid(format!("{e:#}")))?;
        let typed = model.into_optimized().map_err(|e| invalid(format!("{e:#}")))?;
        let plan = typed.into_runnable().map_err(|e| invalid(format!("{e:#}")))?;
        Ok(Runner { plan, names, is_input, example_shape: example_shape.to_vec() })
    }

    /// Calls `f(tensor index, values)` for every exposed tensor on every chunk of the data.
    fn for_each(&self, data: &[f32], mut f: impl FnMut(usize, &[f32])) -> Result<()> {
        let per: usize = self.example_shape.iter().product();
        let n = data.len() / per;
        for start in (0..n).step_by(CHUNK) {
            let take = CHUNK.min(n - start);
            let shape: Vec<usize> = std::iter::once(take).chain(self.example_shape.iter().copied()).collect();
            let input = Tensor::from_shape(&shape, &data[start * per..(start + take) * per])
                .map_err(|e| invalid(format!("{e:#}")))?;
            let outputs = self.plan.run(tvec![input.into_tvalue()]).map_err(|e| invalid(format!("{e:#}")))?;
            for (i, out) in outputs.iter().enumerate() {
                if out.datum_type() != f32::datum_type() {
                    continue;
                }
                let plain = out.try_as_plain_ram().map_err(|e| invalid(format!("{e:#}")))?;
                let view = plain.as_slice::<f32>().map_err(|e| invalid(format!("{e:#}")))?;
                f(i, view);
            }
        }
        Ok(())
    }
}

/// Runs the f32 model over `data` with the `wanted` tensors exposed and calls `f(name, values)` for each of them
/// on every chunk of examples (the values of the chunk's examples one after another).
pub fn visit(
    proto: &pb::ModelProto,
    example_shape: &[usize],
    data: &[f32],
    wanted: &[String],
    mut f: impl FnMut(&str, &[f32]),
) -> Result<()> {
    let runner = Runner::new(proto, example_shape, wanted)?;
    runner.for_each(data, |i, v| f(&runner.names[i], v))
}

/// Calibrated ranges for the `wanted` tensors.
pub fn calibrate(
    proto: &pb::ModelProto,
    example_shape: &[usize],
    data: &[f32],
    wanted: &[String],
    options: &QuantizeOptions,
) -> Result<Ranges> {
    let runner = Runner::new(proto, example_shape, wanted)?;
    let k = runner.names.len();
    let mut minmax = vec![(f32::INFINITY, f32::NEG_INFINITY); k];
    runner.for_each(data, |i, v| {
        let (lo, hi) = &mut minmax[i];
        for &x in v {
            if x.is_finite() {
                *lo = lo.min(x);
                *hi = hi.max(x);
            }
        }
    })?;
    let mut ranges = Ranges::new();
    match options.calibration {
        CalibrationMethod::MinMax => {
            for (name, (lo, hi)) in runner.names.iter().zip(&minmax) {
                ranges.insert(name.clone(), (*lo, *hi));
            }
        }
        CalibrationMethod::Percentile => {
            if !(options.percentile > 50.0 && options.percentile <= 100.0) {
                return Err(QuantizeError::Unsupported {
                    reason: format!("percentile must be in (50, 100], got {}", options.percentile),
                }
                .into());
            }
            let mut hists = vec![Histogram::default(); k];
            for (h, (lo, hi)) in hists.iter_mut().zip(&minmax) {
                *h = Histogram::new(*lo, *hi);
            }
            runner.for_each(data, |i, v| hists[i].add(v))?;
            for (name, h) in runner.names.iter().zip(&hists) {
                ranges.insert(name.clone(), h.percentile_range(options.percentile as f64 / 100.0));
            }
        }
        CalibrationMethod::Entropy => {
            let mut hists = vec![Histogram::default(); k];
            for (h, (lo, hi)) in hists.iter_mut().zip(&minmax) {
                *h = Histogram::new(0.0, lo.abs().max(hi.abs()));
            }
            runner.for_each(data, |i, v| hists[i].add_abs(v))?;
            let levels = match options.activations {
                super::ActivationType::U8 | super::ActivationType::I8 => 128,
            };
            for (i, (name, (h, (lo, hi)))) in runner.names.iter().zip(hists.iter().zip(&minmax)).enumerate() {
                let graph = proto.graph.as_ref().expect("checked by decode_onnx");
                if runner.is_input[i] || graph.input.iter().any(|g| &g.name == name) {
                    // The model input is data with a known range, not an activation distribution: keep it whole.
                    ranges.insert(name.clone(), (*lo, *hi));
                    continue;
                }
                // Non-negative tensors (after ReLU) use all 256 levels on one side.
                let levels = if *lo >= 0.0 { levels * 2 } else { levels };
                let t = h.kl_threshold(levels);
                ranges.insert(name.clone(), (lo.max(-t), hi.min(t)));
            }
        }
    }
    Ok(ranges)
}

/// A fixed-range histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub lo: f32,
    pub hi: f32,
    pub counts: Vec<u64>,
}

impl Histogram {
    /// [`BINS`] bins over `[lo, hi]`.
    pub fn new(lo: f32, hi: f32) -> Histogram {
        let (lo, hi) = if lo.is_finite() && hi.is_finite() && lo <= hi { (lo, hi) } else { (0.0, 0.0) };
        Histogram { lo, hi, counts: vec![0; BINS] }
    }

    fn bin(&self, x: f32) -> usize {
        let width = self.hi - self.lo;
        if width <= 0.0 {
            return 0;
        }
        (((x - self.lo) / width * BINS as f32) as isize).clamp(0, BINS as isize - 1) as usize
    }

    /// Counts values.
    pub fn add(&mut self, values: &[f32]) {
        for &x in values {
            if x.is_finite() {
                let b = self.bin(x);
                self.counts[b] += 1;
            }
        }
    }

    /// Counts absolute values.
    pub fn add_abs(&mut self, values: &[f32]) {
        for &x in values {
            if x.is_finite() {
                let b = self.bin(x.abs());
                self.counts[b] += 1;
            }
        }
    }

    fn edge(&self, i: usize) -> f32 {
        self.lo + (self.hi - self.lo) * i as f32 / BINS as f32
    }

    /// The range between the `1 - p` and `p` quantiles (bin edges, conservative: the outer edge of the bin).
    pub fn percentile_range(&self, p: f64) -> (f32, f32) {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return (self.lo, self.hi);
        }
        let tail = ((1.0 - p) * total as f64).floor() as u64;
        let mut acc = 0;
        let mut lo_bin = 0;
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            if acc > tail {
                lo_bin = i;
                break;
            }
        }
        acc = 0;
        let mut hi_bin = BINS - 1;
        for (i, c) in self.counts.iter().enumerate().rev() {
            acc += c;
            if acc > tail {
                hi_bin = i;
                break;
            }
        }
        (self.edge(lo_bin), self.edge(hi_bin + 1))
    }

    /// TensorRT's entropy calibration on a histogram of absolute values: the threshold `T` such that clipping to
    /// `[0, T]` and quantizing to `levels` levels loses the least information (KL divergence).
    pub fn kl_threshold(&self, levels: usize) -> f32 {
        let total: u64 = self.counts.iter().sum();
        if total == 0 || self.hi <= self.lo {
            return self.hi;
        }
        // Exact zeros (ReLU outputs, image backgrounds) are represented exactly whatever the threshold: leaving
        // them in would drag the threshold towards 0.
        let mut h: Vec<f64> = self.counts.iter().map(|&c| c as f64).collect();
        h[0] = 0.0;
        if h.iter().sum::<f64>() <= 0.0 {
            return self.hi;
        }
        let mut best = (f64::INFINITY, BINS);
        for i in levels..=BINS {
            // Reference distribution: the first i bins, with the clipped outliers folded into the last one.
            let mut p: Vec<f64> = h[..i].to_vec();
            let outliers: f64 = h[i..].iter().sum();
            p[i - 1] += outliers;
            // Candidate: the first i bins merged into `levels` levels, spread back over their non-empty bins.
            let mut q = vec![0f64; i];
            for l in 0..levels {
                let start = l * i / levels;
                let end = ((l + 1) * i / levels).max(start + 1).min(i);
                let sum: f64 = h[start..end].iter().sum();
                let nonzero = h[start..end].iter().filter(|v| **v > 0.0).count();
                if nonzero > 0 {
                    for j in start..end {
                        if h[j] > 0.0 {
                            q[j] = sum / nonzero as f64;
                        }
                    }
                }
            }
            let ps: f64 = p.iter().sum();
            let qs: f64 = q.iter().sum();
            if qs <= 0.0 {
                continue;
            }
            let mut kl = 0.0;
            for j in 0..i {
                if p[j] > 0.0 {
                    let pj = p[j] / ps;
                    let qj = q[j] / qs;
                    kl += if qj > 0.0 { pj * (pj / qj).ln() } else { pj * (pj / 1e-12).ln() };
                }
            }
            if kl < best.0 {
                best = (kl, i);
            }
        }
        self.edge(best.1)
    }
}
