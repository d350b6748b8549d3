//! Parity and profile reports for apps: compact uniffi records mirroring `pupil_runtime::parity::ParityReport` and
//! `pupil_runtime::profile::ProfileReport`, each with the full report as JSON for upload.

use pupil_runtime::parity::{Bundle, Gap, GapReport};
use pupil_runtime::profile::ProfileOptions;

use crate::error::{PupilError, guard};
use crate::predictor::{DeviceInfo, Predictor};

/// Which gap a parity comparison measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ParityGap {
    /// Teacher → f32 student.
    Distillation,
    /// f32 student → quantized student.
    Quantization,
    /// Teacher → quantized student.
    Total,
    /// The student on the host when the bundle was made → the same student on this device.
    Device,
}

impl From<Gap> for ParityGap {
    fn from(g: Gap) -> Self {
        match g {
            Gap::Distillation => ParityGap::Distillation,
            Gap::Quantization => ParityGap::Quantization,
            Gap::Total => ParityGap::Total,
            Gap::Device => ParityGap::Device,
        }
    }
}

/// One comparison of this device's outputs with recorded reference outputs.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct GapSummary {
    pub gap: ParityGap,
    pub reference: String,
    pub candidate: String,
    /// Fraction of examples where both pick the same class.
    pub top1_agreement: f64,
    pub top5_agreement: f64,
    pub flip_rate: f64,
    /// Mean KL(reference ‖ candidate), nats.
    pub kl_mean: f64,
    pub kl_p99: f64,
    pub max_abs_logit_diff: f64,
    pub mean_abs_logit_diff: f64,
    pub sqnr_db: f64,
    /// Candidate accuracy against the bundle's labels.
    pub accuracy: Option<f64>,
    /// Reference accuracy against the bundle's labels.
    pub reference_accuracy: Option<f64>,
    pub passed: bool,
    /// Each failed threshold, e.g. `top1_agreement = 0.9700 < min 0.99`.
    pub failures: Vec<String>,
}

impl From<&GapReport> for GapSummary {
    fn from(g: &GapReport) -> Self {
        let c = &g.comparison;
        GapSummary {
            gap: g.gap.into(),
            reference: g.reference.clone(),
            candidate: g.candidate.clone(),
            top1_agreement: c.top1_agreement,
            top5_agreement: c.top5_agreement,
            flip_rate: c.flip_rate,
            kl_mean: c.kl_mean,
            kl_p99: c.kl_p99,
            max_abs_logit_diff: c.max_abs_logit_diff,
            mean_abs_logit_diff: c.mean_abs_logit_diff,
            sqnr_db: c.sqnr_db,
            accuracy: c.accuracy,
            reference_accuracy: c.reference_accuracy,
            passed: g.passed(),
            failures: g.failures.iter().map(|f| f.to_string()).collect(),
        }
    }
}

/// The result of checking this model against a parity bundle on this device.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ParityReport {
    /// True when no threshold failed.
    pub passed: bool,
    pub student_sha256: String,
    pub examples: u32,
    pub classes: u32,
    /// Accuracy on this device against the bundle's labels.
    pub accuracy: Option<f64>,
    /// This device against the teacher's recorded outputs.
    pub vs_teacher: GapSummary,
    /// This device against the host student's recorded outputs.
    pub vs_host_student: GapSummary,
    pub device: DeviceInfo,
    /// A few human-readable lines (what the sample app shows).
    pub summary: String,
    /// The complete report (per-class agreement, worst examples, histograms) as JSON.
    pub json: String,
}

/// What [`Predictor::profile`] measured on this device.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ProfileReport {
    pub batch: u32,
    pub threads: u32,
    pub runs: u32,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Examples per second at this batch.
    pub throughput: f64,
    /// Multiply-accumulates per example (a lower bound when tract could not cost every node).
    pub macs_per_example: u64,
    /// Resident memory growth during inference, bytes, when the OS says.
    pub inference_memory_growth: Option<u64>,
    /// Slowest operator types, slowest first: `(op, share of node time in %)`.
    pub top_operators: Vec<OperatorShare>,
    pub device: DeviceInfo,
    /// The complete report (per-node timings, cold start phases, every latency sample) as JSON.
    pub json: String,
}

/// One operator type's share of the node time.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct OperatorShare {
    pub op: String,
    pub nodes: u32,
    pub mean_ms: f64,
    pub share_pct: f64,
}

fn gap_line(g: &GapSummary) -> String {
    format!(
        "{:?}: top1 {:.4}, KL {:.2e}, max |Δlogit| {:.3e}, SQNR {:.1} dB{}",
        g.gap,
        g.top1_agreement,
        g.kl_mean,
        g.max_abs_logit_diff,
        g.sqnr_db,
        if g.passed { String::new() } else { format!(" FAILED: {}", g.failures.join("; ")) }
    )
}

#[uniffi::export]
impl Predictor {
    /// Runs a parity bundle (written by `pupil bundle`) on this device and compares the outputs with the
    /// teacher's and the host student's. Fails with `Bundle` when the bundle is unreadable or made for another model.
    pub fn verify_bundle(&self, bundle: Vec<u8>) -> Result<ParityReport, PupilError> {
        guard("verify_bundle", || {
            let bundle = Bundle::from_bytes(&bundle)?;
            let r = self.model().verify_bundle(&bundle)?;
            let json = serde_json::to_string(&r).map_err(|e| PupilError::Internal(e.to_string()))?;
            let vs_teacher = GapSummary::from(&r.vs_teacher);
            let vs_host_student = GapSummary::from(&r.vs_host_student);
            let summary = format!(
                "parity {} on {} ({} examples{})\n{}\n{}",
                if r.passed { "PASSED" } else { "FAILED" },
                r.device.cpu,
                r.bundle.examples,
                r.accuracy.map(|a| format!(", accuracy {:.2}%", a * 100.0)).unwrap_or_default(),
                gap_line(&vs_teacher),
                gap_line(&vs_host_student),
            );
            Ok(ParityReport {
                passed: r.passed,
                student_sha256: r.student_sha256.clone(),
                examples: r.bundle.examples as u32,
                classes: r.bundle.classes as u32,
                accuracy: r.accuracy,
                vs_teacher,
                vs_host_student,
                device: r.device.clone().into(),
                summary,
                json,
            })
        })
    }

    /// Times `runs` predictions (after 10 warm-up runs) and, when `op_runs > 0`, each operator.
    pub fn profile(&self, runs: u32, op_runs: u32) -> Result<ProfileReport, PupilError> {
        guard("profile", || {
            let options =
                ProfileOptions { runs: runs as usize, op_runs: op_runs as usize, ..ProfileOptions::default() };
            let r = self.model().profile(&options)?;
            let json = serde_json::to_string(&r).map_err(|e| PupilError::Internal(e.to_string()))?;
            let top_operators = r
                .operators
                .as_ref()
                .map(|o| {
                    o.op_types
                        .iter()
                        .take(8)
                        .map(|t| OperatorShare {
                            op: t.op.clone(),
                            nodes: t.nodes as u32,
                            mean_ms: t.mean_ms,
                            share_pct: t.share_pct,
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok(ProfileReport {
                batch: r.batch as u32,
                threads: r.threads as u32,
                runs: r.latency.runs as u32,
                mean_ms: r.latency.mean_ms,
                p50_ms: r.latency.p50_ms,
                p90_ms: r.latency.p90_ms,
                p99_ms: r.latency.p99_ms,
                min_ms: r.latency.min_ms,
                max_ms: r.latency.max_ms,
                throughput: r.throughput,
                macs_per_example: r.macs.per_example,
                inference_memory_growth: r.memory.inference.as_ref().map(|m| m.rss_after.saturating_sub(m.rss_before)),
                top_operators,
                device: r.device.clone().into(),
                json,
            })
        })
    }
}
