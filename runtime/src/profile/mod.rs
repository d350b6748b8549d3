//! Profiling a loaded model: size, multiply-accumulates, cold start, latency percentiles, memory and per-operator
//! cost, as plain serialisable data ([`ProfileReport`]) that a phone app can produce and ship home.
//!
//! ```no_run
//! use pupil_runtime::{Model, ModelOptions, profile::ProfileOptions};
//! let model = Model::load("models/mnist-student.onnx", ModelOptions::default())?;
//! let report = model.profile(&ProfileOptions { runs: 200, ..Default::default() })?;
//! println!("p50 {:.3} ms, {} MACs", report.latency.p50_ms, report.macs.per_example);
//! # Ok::<(), pupil_runtime::Error>(())
//! ```
//!
//! How each number is measured:
//! - **size, parameters**: from the ONNX file ([`crate::ModelInfo`]); `file_size` is the byte length loaded.
//! - **MACs**: the sum of `Cost::FMA` over the nodes of tract's optimised graph (`TypedOp::cost`), at the batch.
//! - **cold start**: [`Model::load`] times its phases ([`LoadStats`]); the first inference is the first
//!   `run_batch` on the model (it allocates the execution state), timed by the profiler.
//! - **latency**: `warmup` untimed runs, then `runs` timed calls of `Model::run_batch` on one batch.
//! - **memory**: resident set size from the OS (see [`memory`]): growth during load, and during the profiler's
//!   inference runs, with the peak-RSS counter reset first where the OS allows.
//! - **operators**: `op_runs` more runs where every node's evaluation is timed (a closure around
//!   `tract_core::plan::eval`); shares are of the summed node time.

pub mod memory;
mod ops;
pub mod roofline;
pub mod stats;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tract_onnx::prelude::*;

use crate::device::DeviceFingerprint;
use crate::error::{Error, Result, catch_panic};
use crate::model::{Batch, Model};
use crate::spec::ElementType;
pub use memory::{MemoryGrowth, MemorySnapshot};
pub use stats::LatencyStats;

/// How to profile a model. `Default` is 10 warm-up runs, 100 timed runs, 20 per-operator runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProfileOptions {
    /// Timed runs (at least 1).
    pub runs: usize,
    /// Untimed runs before timing.
    pub warmup: usize,
    /// Runs of the per-operator timing pass (0 skips it).
    pub op_runs: usize,
    /// Examples per run. `None`: the model's fixed batch, or 1 for a model loaded with a symbolic batch.
    pub batch: Option<usize>,
    /// Reset the process's peak-RSS counter before measuring inference memory (Linux/Android only).
    pub reset_peak_memory: bool,
    /// One batch of input values (`batch × example_len`). `None`: deterministic pseudo-random values in [0, 1).
    pub input: Option<Vec<f32>>,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions { runs: 100, warmup: 10, op_runs: 20, batch: None, reset_peak_memory: true, input: None }
    }
}

/// What loading took, phase by phase, as recorded by [`Model::load`] / [`Model::from_bytes`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadStats {
    /// Reading the file and its model card (`None` when loaded from memory).
    pub read_ms: Option<f64>,
    /// Decoding the protobuf, checking operators and inputs, reading metadata.
    pub decode_ms: f64,
    /// tract: ONNX to its inference graph, with the input shape set.
    pub analyse_ms: f64,
    /// tract: type analysis, decluttering and optimisation (kernel selection, weight packing).
    pub optimise_ms: f64,
    /// tract: the runnable plan (execution order, executor).
    pub plan_ms: f64,
    /// Resident memory growth during the whole load (`None` where the OS does not say).
    pub memory: Option<MemoryGrowth>,
}

impl LoadStats {
    /// Everything before optimisation: read, decode, analyse.
    pub fn load_ms(&self) -> f64 {
        self.read_ms.unwrap_or(0.0) + self.decode_ms + self.analyse_ms
    }
    /// Optimisation and planning.
    pub fn optimise_total_ms(&self) -> f64 {
        self.optimise_ms + self.plan_ms
    }
}

/// Times the phases of a load (crate-internal: used by `Model::build`).
pub(crate) struct LoadClock {
    last: Instant,
    memory: Option<MemorySnapshot>,
    pub(crate) stats: LoadStats,
}

impl LoadClock {
    pub(crate) fn start() -> Self {
        LoadClock { memory: memory::snapshot(), last: Instant::now(), stats: LoadStats::default() }
    }
    /// Milliseconds since the previous lap (or the start).
    pub(crate) fn lap(&mut self) -> f64 {
        let now = Instant::now();
        let ms = ms(now - self.last);
        self.last = now;
        ms
    }
    pub(crate) fn finish(mut self) -> LoadStats {
        if let (Some(before), Some(after)) = (self.memory, memory::snapshot()) {
            self.stats.memory = Some(MemoryGrowth::between(before, after));
        }
        self.stats
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The file: size, parameters, graph size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFacts {
    pub sha256: String,
    /// Bytes of the ONNX model.
    pub file_size: u64,
    pub parameters: u64,
    /// Parameter bytes per element type.
    pub parameter_bytes: BTreeMap<ElementType, u64>,
    /// Nodes in the ONNX graph.
    pub onnx_nodes: usize,
    /// Nodes in tract's optimised graph (after fusion).
    pub optimised_nodes: usize,
    /// Shape of one example.
    pub example_shape: Vec<usize>,
    pub classes: usize,
}

/// Multiply-accumulates from tract's cost model (`Cost::FMA` summed over the optimised graph).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacCount {
    /// For one example (`per_run / batch`).
    pub per_example: u64,
    /// For one run of the whole batch.
    pub per_run: u64,
    /// Whether tract could cost every node (when false, the counts are lower bounds).
    pub complete: bool,
}

/// Time to the first prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColdStart {
    /// Read, decode and analyse ([`LoadStats::load_ms`]).
    pub load_ms: f64,
    /// Optimise and plan ([`LoadStats::optimise_total_ms`]).
    pub optimise_ms: f64,
    /// The first inference (allocates the execution state).
    pub first_inference_ms: f64,
    /// `load_ms + optimise_ms + first_inference_ms`.
    pub total_ms: f64,
    /// False when the model had already run before it was profiled (the first inference is then warm).
    pub first_inference_cold: bool,
    /// The load phases in detail.
    pub phases: LoadStats,
}

/// Resident memory, from the OS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryReport {
    /// Growth while loading the model.
    pub load: Option<MemoryGrowth>,
    /// Growth during the profiled inference runs (first, warm-up and timed).
    pub inference: Option<MemoryGrowth>,
    /// Whether the peak counter was reset right before inference and read back unraised by other threads (then
    /// `inference.peak_growth` is exact).
    pub peak_reset: bool,
    /// Where the numbers come from.
    pub source: String,
}

/// One node of the optimised graph, timed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorProfile {
    /// Node name (from the ONNX node it came from, with tract's suffixes).
    pub node: String,
    /// tract operator (`OptMatMul`, `Max`, `Softmax`, ...).
    pub op: String,
    /// For matrix products: the micro-kernel(s) tract picked (e.g. `avx512_mmm_f32_32x12`), or pupil's f32
    /// matrix-vector kernel (`pupil_gemv_f32_avx2_fma`, ...); for pupil's other operators, `pupil` and the
    /// instruction set they run (`pupil avx512vnni` for the int8 ones, `pupil avx512f`, ...).
    pub kernel: Option<String>,
    /// For matrix products: `m`, `k`, `n` at the profiled batch; for pupil's convolutions and pools, `k` (inputs
    /// summed per output value) and `n` (output channels).
    pub geometry: Option<String>,
    /// Multiply-accumulates per run (`None` when tract's cost model does not say).
    pub macs: Option<u64>,
    /// Mean time per run.
    pub mean_ms: f64,
    /// Percent of the summed node time.
    pub share_pct: f64,
}

/// Time per operator type (all nodes of one op summed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpTypeProfile {
    pub op: String,
    pub nodes: usize,
    pub macs: u64,
    pub mean_ms: f64,
    pub share_pct: f64,
}

/// Per-operator timing pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorTiming {
    /// Runs timed node by node.
    pub runs: usize,
    /// Every node, slowest first.
    pub nodes: Vec<OperatorProfile>,
    /// Per operator type, slowest first.
    pub op_types: Vec<OpTypeProfile>,
    /// Mean run time with per-node timing on (includes the timing overhead).
    pub run_mean_ms: f64,
    /// Mean time per run outside node evaluation (planning, buffer hand-over, the timer itself).
    pub overhead_ms: f64,
}

/// Accuracy on labelled data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub examples: usize,
    pub correct: usize,
    /// `correct / examples`, in [0, 1].
    pub accuracy: f64,
}

/// Everything the profiler measured about one model on one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileReport {
    /// A name for the model, set by the caller (the CLI puts the path here).
    pub label: Option<String>,
    pub model: ModelFacts,
    /// Examples per run.
    pub batch: usize,
    /// Worker threads.
    pub threads: usize,
    /// Untimed warm-up runs.
    pub warmup: usize,
    pub macs: MacCount,
    pub cold_start: ColdStart,
    /// Time per run of one batch, after warm-up.
    pub latency: LatencyStats,
    /// Examples per second at this batch (`batch / mean latency`).
    pub throughput: f64,
    pub memory: MemoryReport,
    /// `None` when `op_runs` was 0.
    pub operators: Option<OperatorTiming>,
    /// Set by the caller ([`Model::accuracy`]) when labelled data is at hand.
    pub accuracy: Option<Accuracy>,
    pub device: DeviceFingerprint,
}

/// Stages of a profile, for progress reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileStage {
    FirstInference,
    Warmup,
    Timing,
    Operators,
}

/// Deterministic pseudo-random values in [0, 1) (a 32-bit LCG): the default profiling input.
pub fn synthetic_input(len: usize) -> Vec<f32> {
    let mut x: u32 = 0x2545_f491;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 8) as f32 / (1u32 << 24) as f32
        })
        .collect()
}

impl Model {
    /// Profiles the model: see the [module docs](crate::profile) for what is measured and how.
    pub fn profile(&self, options: &ProfileOptions) -> Result<ProfileReport> {
        self.profile_with_progress(options, &mut |_, _, _| {})
    }

    /// [`Model::profile`], calling `progress(stage, done, total)` as runs complete.
    pub fn profile_with_progress(
        &self,
        options: &ProfileOptions,
        progress: &mut dyn FnMut(ProfileStage, usize, usize),
    ) -> Result<ProfileReport> {
        if options.runs == 0 {
            return Err(Error::Options { reason: "profile runs must be at least 1, got 0".into() });
        }
        let batch = match (self.options().batch, options.batch) {
            (_, Some(0)) => {
                return Err(Error::Options { reason: "profile batch must be at least 1, got 0".into() });
            }
            (Batch::Fixed(b), Some(asked)) if asked != b => {
                return Err(Error::Options {
                    reason: format!(
                        "the model was loaded with a fixed batch of {b}, the profile asks for batch {asked}"
                    ),
                });
            }
            (Batch::Fixed(b), _) => b,
            (Batch::Symbolic, asked) => asked.unwrap_or(1),
        };
        let len = batch * self.example_len();
        let input = match &options.input {
            Some(values) if values.len() != len => {
                return Err(Error::InputLength {
                    input: self.inputs()[0].name.clone(),
                    expected: len,
                    got: values.len(),
                    shape: std::iter::once(batch).chain(self.example_shape().iter().copied()).collect(),
                });
            }
            Some(values) => values.clone(),
            None => synthetic_input(len),
        };

        // Inference: first run, warm-up, timed runs, all inside one memory measurement.
        let cold = !self.has_run();
        let (peak_reset, before) =
            if options.reset_peak_memory { memory::reset_peak_and_snapshot() } else { (false, memory::snapshot()) };
        progress(ProfileStage::FirstInference, 0, 1);
        let t = Instant::now();
        self.run_batch(&input)?;
        let first_inference_ms = ms(t.elapsed());
        progress(ProfileStage::FirstInference, 1, 1);
        for i in 0..options.warmup {
            self.run_batch(&input)?;
            progress(ProfileStage::Warmup, i + 1, options.warmup);
        }
        let mut samples = Vec::with_capacity(options.runs);
        for i in 0..options.runs {
            let t = Instant::now();
            std::hint::black_box(self.run_batch(std::hint::black_box(&input))?);
            samples.push(ms(t.elapsed()));
            progress(ProfileStage::Timing, i + 1, options.runs);
        }
        let inference_memory = match (before, memory::snapshot()) {
            (Some(b), Some(a)) => Some(MemoryGrowth::between(b, a)),
            _ => None,
        };
        let latency = LatencyStats::from_samples(samples)
            .ok_or_else(|| Error::Internal { reason: "latency samples were empty or not finite".into() })?;

        // Static costs and per-node timing.
        let typed = self.typed_model();
        let facts = catch_panic("costing the graph", || Ok(ops::node_facts(typed, batch)))?;
        let complete = facts.iter().all(|f| f.macs.is_some());
        let per_run: u64 = facts.iter().filter_map(|f| f.macs).sum();
        let operators = if options.op_runs == 0 {
            None
        } else {
            let shape: Vec<usize> = std::iter::once(batch).chain(self.example_shape().iter().copied()).collect();
            let tensor = Tensor::from_shape(&shape, input.as_slice())
                .map_err(|e| Error::Inference { reason: format!("{e:#}") })?;
            progress(ProfileStage::Operators, 0, options.op_runs);
            let (times, wall) =
                catch_panic("timing operators", || ops::time_nodes(self.plan(), &tensor, options.op_runs))?;
            progress(ProfileStage::Operators, options.op_runs, options.op_runs);
            Some(operator_timing(&facts, &times, wall, options.op_runs))
        };

        let info = self.info();
        let load = self.load_stats().clone();
        let cold_start = ColdStart {
            load_ms: load.load_ms(),
            optimise_ms: load.optimise_total_ms(),
            first_inference_ms,
            total_ms: load.load_ms() + load.optimise_total_ms() + first_inference_ms,
            first_inference_cold: cold,
            phases: load.clone(),
        };
        Ok(ProfileReport {
            label: None,
            model: ModelFacts {
                sha256: info.sha256.clone(),
                file_size: info.file_size,
                parameters: info.parameters,
                parameter_bytes: info.parameter_bytes.clone(),
                onnx_nodes: info.node_count,
                optimised_nodes: typed.nodes().len(),
                example_shape: self.example_shape().to_vec(),
                classes: self.classes(),
            },
            batch,
            threads: self.options().threads,
            warmup: options.warmup,
            macs: MacCount { per_example: per_run / batch as u64, per_run, complete },
            throughput: batch as f64 * 1e3 / latency.mean_ms,
            latency,
            cold_start,
            memory: MemoryReport {
                load: load.memory,
                inference: inference_memory,
                peak_reset,
                source: memory_source().into(),
            },
            operators,
            accuracy: None,
            device: DeviceFingerprint::current(),
        })
    }

    /// Top-1 accuracy on labelled examples laid out one after another (`labels.len()` examples).
    pub fn accuracy(&self, inputs: &[f32], labels: &[u32]) -> Result<Accuracy> {
        let per = self.example_len();
        if labels.is_empty() || inputs.len() != labels.len() * per {
            return Err(Error::InputLength {
                input: self.inputs()[0].name.clone(),
                expected: labels.len().max(1) * per,
                got: inputs.len(),
                shape: std::iter::once(labels.len()).chain(self.example_shape().iter().copied()).collect(),
            });
        }
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= self.classes()) {
            return Err(Error::Options {
                reason: format!("label {bad} is out of range: the model has {} classes", self.classes()),
            });
        }
        let chunk = 512;
        let mut correct = 0;
        for (xs, ys) in inputs.chunks(chunk * per).zip(labels.chunks(chunk)) {
            let out = self.run_batch(xs)?;
            correct += out
                .chunks(self.classes())
                .zip(ys)
                .filter(|(o, y)| crate::prediction::argmax(o) == **y as usize)
                .count();
        }
        Ok(Accuracy { examples: labels.len(), correct, accuracy: correct as f64 / labels.len() as f64 })
    }
}

fn memory_source() -> &'static str {
    if cfg!(any(target_os = "linux", target_os = "android")) {
        "/proc/self/status VmRSS and VmHWM; peak reset by writing 5 to /proc/self/clear_refs"
    } else {
        "not available on this OS"
    }
}

fn operator_timing(facts: &[ops::NodeFacts], times: &[Duration], wall: Duration, runs: usize) -> OperatorTiming {
    let total: Duration = times.iter().sum();
    let total_s = total.as_secs_f64();
    let share = |d: f64| {
        if total_s > 0.0 { 100.0 * d / total_s } else { 0.0 }
    };
    let mut nodes: Vec<OperatorProfile> = facts
        .iter()
        .zip(times)
        .map(|(f, t)| OperatorProfile {
            node: f.name.clone(),
            op: f.op.clone(),
            kernel: f.kernel.clone(),
            geometry: f.geometry.clone(),
            macs: f.macs,
            mean_ms: ms(*t) / runs as f64,
            share_pct: share(t.as_secs_f64()),
        })
        .collect();
    nodes.sort_by(|a, b| b.mean_ms.total_cmp(&a.mean_ms));
    let mut by_type: BTreeMap<&str, (usize, u64, Duration)> = BTreeMap::new();
    for (f, t) in facts.iter().zip(times) {
        let e = by_type.entry(&f.op).or_default();
        e.0 += 1;
        e.1 += f.macs.unwrap_or(0);
        e.2 += *t;
    }
    let mut op_types: Vec<OpTypeProfile> = by_type
        .into_iter()
        .map(|(op, (n, macs, t))| OpTypeProfile {
            op: op.to_string(),
            nodes: n,
            macs,
            mean_ms: ms(t) / runs as f64,
            share_pct: share(t.as_secs_f64()),
        })
        .collect();
    op_types.sort_by(|a, b| b.mean_ms.total_cmp(&a.mean_ms));
    OperatorTiming {
        runs,
        nodes,
        op_types,
        run_mean_ms: ms(wall) / runs as f64,
        overhead_ms: ms(wall.saturating_sub(total)) / runs as f64,
    }
}

/// Two profiles side by side: `subject` (e.g. the student) against `reference` (e.g. the teacher).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// `reference.file_size / subject.file_size`: above 1, the subject is smaller.
    pub size_ratio: Option<f64>,
    /// `reference.parameters / subject.parameters`.
    pub parameters_ratio: Option<f64>,
    /// `reference.macs / subject.macs` (per example).
    pub macs_ratio: Option<f64>,
    /// `reference.p50 / subject.p50` (per example when batches differ): above 1, the subject is faster.
    pub speed_ratio: Option<f64>,
    /// `reference.cold_start.total / subject.cold_start.total`.
    pub cold_start_ratio: Option<f64>,
    /// `reference.inference peak growth / subject's`.
    pub memory_ratio: Option<f64>,
    /// `(subject.accuracy − reference.accuracy) × 100`, in percentage points, when both have one.
    pub accuracy_delta_pt: Option<f64>,
    /// One line: "8.1× smaller, 5.3× faster, −0.4 pt accuracy".
    pub summary: String,
}

/// `num / den` when both are positive (a zero, e.g. no measurable memory growth, has no meaningful ratio).
fn ratio(num: f64, den: f64) -> Option<f64> {
    let r = num / den;
    (den > 0.0 && num > 0.0 && r.is_finite()).then_some(r)
}

fn phrase(r: Option<f64>, more: &str, less: &str) -> Option<String> {
    let r = r?;
    Some(if r >= 1.0 { format!("{r:.1}× {more}") } else { format!("{:.1}× {less}", 1.0 / r) })
}

impl Comparison {
    /// Ratios of `reference` over `subject` (so "N× smaller" reads as the subject's gain).
    pub fn new(subject: &ProfileReport, reference: &ProfileReport) -> Self {
        let per_example = |r: &ProfileReport| r.latency.p50_ms / r.batch as f64;
        let size_ratio = ratio(reference.model.file_size as f64, subject.model.file_size as f64);
        let speed_ratio = ratio(per_example(reference), per_example(subject));
        let accuracy_delta_pt = match (&subject.accuracy, &reference.accuracy) {
            (Some(s), Some(r)) => Some((s.accuracy - r.accuracy) * 100.0),
            _ => None,
        };
        let mut parts: Vec<String> = [phrase(size_ratio, "smaller", "larger"), phrase(speed_ratio, "faster", "slower")]
            .into_iter()
            .flatten()
            .collect();
        if let Some(d) = accuracy_delta_pt {
            let sign = if d < 0.0 { "−" } else { "+" };
            parts.push(format!("{sign}{:.1} pt accuracy", d.abs()));
        }
        Comparison {
            size_ratio,
            parameters_ratio: ratio(reference.model.parameters as f64, subject.model.parameters as f64),
            macs_ratio: ratio(reference.macs.per_example as f64, subject.macs.per_example as f64),
            speed_ratio,
            cold_start_ratio: ratio(reference.cold_start.total_ms, subject.cold_start.total_ms),
            memory_ratio: match (&reference.memory.inference, &subject.memory.inference) {
                (Some(r), Some(s)) => ratio(r.peak_growth as f64, s.peak_growth as f64),
                _ => None,
            },
            accuracy_delta_pt,
            summary: parts.join(", "),
        }
    }
}

/// Two reports and their comparison: what `pupil profile --compare` prints as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileComparison {
    pub subject: ProfileReport,
    pub reference: ProfileReport,
    pub comparison: Comparison,
}

impl ProfileComparison {
    pub fn new(subject: ProfileReport, reference: ProfileReport) -> Self {
        let comparison = Comparison::new(&subject, &reference);
        ProfileComparison { subject, reference, comparison }
    }
}
