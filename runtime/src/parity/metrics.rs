//! Parity metrics: how far a candidate model's outputs are from a reference's on the same inputs, and the
//! thresholds that decide whether that distance is acceptable.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::prediction::{argmax, top_k};

/// SQNR reported when the candidate reproduces the reference exactly (no noise at all). A finite cap keeps
/// reports plain JSON numbers; f32 rounding alone already sits far below it (~150 dB).
pub const SQNR_CAP_DB: f64 = 200.0;

/// Bins of the confidence histograms (each 1/20 = 0.05 wide).
pub const CONFIDENCE_BINS: usize = 20;

fn confidence_bin(p: f64) -> usize {
    ((p * CONFIDENCE_BINS as f64) as usize).min(CONFIDENCE_BINS - 1)
}

/// Which gap a comparison measures. Thresholds can differ per gap (a distilled student is allowed to disagree
/// with its teacher more than an int8 student with its f32 original).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gap {
    /// Teacher → f32 student.
    Distillation,
    /// f32 student → quantized student.
    Quantization,
    /// Teacher → quantized student (both gaps at once).
    Total,
    /// The student as run on the host when the bundle was made → the same student on this device.
    Device,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Gap::Distillation => "distillation",
            Gap::Quantization => "quantization",
            Gap::Total => "total",
            Gap::Device => "device",
        })
    }
}

/// Agreement on the examples whose reference class is `class`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassAgreement {
    pub class: usize,
    /// Examples the reference puts in this class.
    pub examples: usize,
    /// Of those, how many the candidate also puts in this class.
    pub agreed: usize,
    /// `agreed / examples`; `None` when the reference never predicts this class.
    pub agreement: Option<f64>,
}

/// One example where the candidate departs most from the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorstExample {
    /// Index of the example in the compared set.
    pub index: usize,
    pub reference_class: usize,
    pub candidate_class: usize,
    /// The reference's probability for its own class.
    pub reference_confidence: f64,
    /// The candidate's probability for its own class.
    pub candidate_confidence: f64,
    /// KL(reference ‖ candidate) on this example, in nats.
    pub kl: f64,
    pub label: Option<u32>,
}

/// The distance between a candidate's outputs and a reference's on the same examples.
///
/// Logits are raw model outputs (log-probabilities for models ending in Softmax); KL and confidences use their
/// softmax.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub examples: usize,
    pub classes: usize,
    /// Candidate accuracy against the labels, when there are labels.
    pub accuracy: Option<f64>,
    /// Reference accuracy against the labels, when there are labels.
    pub reference_accuracy: Option<f64>,
    /// Fraction of examples where both pick the same class.
    pub top1_agreement: f64,
    /// Fraction of examples where the reference's class is among the candidate's top 5 (top `classes` if fewer).
    pub top5_agreement: f64,
    /// Fraction of examples whose argmax changes (`1 - top1_agreement`).
    pub flip_rate: f64,
    /// With labels: flips that turn a right answer wrong.
    pub flips_to_wrong: Option<usize>,
    /// With labels: flips that turn a wrong answer right.
    pub flips_to_right: Option<usize>,
    /// Mean over examples of KL(reference ‖ candidate), nats.
    pub kl_mean: f64,
    /// 99th percentile over examples of KL(reference ‖ candidate), nats.
    pub kl_p99: f64,
    pub max_abs_logit_diff: f64,
    pub mean_abs_logit_diff: f64,
    /// Signal-to-quantization-noise ratio of the logits: `10 log10(Σ ref² / Σ (ref - cand)²)`, capped at
    /// [`SQNR_CAP_DB`].
    pub sqnr_db: f64,
    /// Per reference class.
    pub per_class: Vec<ClassAgreement>,
    /// The examples that differ most: disagreements first, then by KL, largest first.
    pub worst: Vec<WorstExample>,
    /// Histogram of the reference's top-1 probability: [`CONFIDENCE_BINS`] equal bins over 0..=1.
    pub reference_confidence_histogram: Vec<usize>,
    /// Histogram of the candidate's top-1 probability, same bins.
    pub candidate_confidence_histogram: Vec<usize>,
}

impl Comparison {
    /// The lowest per-class agreement and its class, over classes the reference predicts.
    pub fn min_class_agreement(&self) -> Option<(usize, f64)> {
        self.per_class.iter().filter_map(|c| c.agreement.map(|a| (c.class, a))).min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().map(|v| *v as f64).fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = x.iter().map(|v| (*v as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    x.iter().map(|v| *v as f64 - lse).collect()
}

/// Turns raw model outputs into logits: outputs of a model ending in Softmax become log-probabilities.
pub fn to_logits(outputs: &[f32], output_is_probability: bool) -> Vec<f32> {
    if output_is_probability {
        outputs.iter().map(|p| p.max(f32::MIN_POSITIVE).ln()).collect()
    } else {
        outputs.to_vec()
    }
}

/// SQNR in dB of `candidate` against `reference` (any two equally long signals), capped at [`SQNR_CAP_DB`].
pub fn sqnr_db(reference: &[f32], candidate: &[f32]) -> f64 {
    let mut signal = 0f64;
    let mut noise = 0f64;
    for (r, c) in reference.iter().zip(candidate) {
        let (r, c) = (*r as f64, *c as f64);
        signal += r * r;
        noise += (r - c) * (r - c);
    }
    if noise == 0.0 {
        return SQNR_CAP_DB;
    }
    if signal == 0.0 {
        return -SQNR_CAP_DB;
    }
    (10.0 * (signal / noise).log10()).clamp(-SQNR_CAP_DB, SQNR_CAP_DB)
}

/// The `q` quantile (0..=1) of some values, by the nearest-rank method; 0 for none.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Compares `candidate` outputs with `reference` outputs, both flat `[n, classes]` logits of the same examples,
/// keeping the `worst_k` most divergent examples.
pub fn compare(
    reference: &[f32],
    candidate: &[f32],
    classes: usize,
    labels: Option<&[u32]>,
    worst_k: usize,
) -> Result<Comparison> {
    let bad = |reason: String| Error::Options { reason };
    if classes == 0 {
        return Err(bad("cannot compare outputs with 0 classes".into()));
    }
    if reference.len() != candidate.len() {
        return Err(bad(format!(
            "reference has {} output values, candidate {}: they must cover the same examples and classes",
            reference.len(),
            candidate.len()
        )));
    }
    if reference.is_empty() || !reference.len().is_multiple_of(classes) {
        return Err(bad(format!("{} output values is not a whole number of {classes}-class rows", reference.len())));
    }
    let n = reference.len() / classes;
    if let Some(i) = reference.iter().chain(candidate).position(|v| !v.is_finite()) {
        let (which, i) = if i < reference.len() { ("reference", i) } else { ("candidate", i - reference.len()) };
        return Err(Error::Inference {
            reason: format!(
                "the {which} produced a non-finite output at example {}, class {}",
                i / classes,
                i % classes
            ),
        });
    }
    if let Some(labels) = labels {
        if labels.len() != n {
            return Err(bad(format!("{} labels for {n} examples", labels.len())));
        }
        if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| **l as usize >= classes) {
            return Err(bad(format!("label {l} at example {i} is out of range for {classes} classes")));
        }
    }
    let k5 = 5.min(classes);
    let mut agree = 0usize;
    let mut top5 = 0usize;
    let mut kls = Vec::with_capacity(n);
    let mut abs_sum = 0f64;
    let mut abs_max = 0f64;
    let mut per_class = vec![(0usize, 0usize); classes];
    let mut right = (0usize, 0usize);
    let mut flips = (0usize, 0usize);
    let mut rows = Vec::with_capacity(n);
    let mut ref_hist = vec![0usize; CONFIDENCE_BINS];
    let mut cand_hist = vec![0usize; CONFIDENCE_BINS];
    for i in 0..n {
        let r = &reference[i * classes..(i + 1) * classes];
        let c = &candidate[i * classes..(i + 1) * classes];
        let (rc, cc) = (argmax(r), argmax(c));
        let (lr, lc) = (log_softmax(r), log_softmax(c));
        let kl: f64 = lr.iter().zip(&lc).map(|(a, b)| a.exp() * (a - b)).sum::<f64>().max(0.0);
        kls.push(kl);
        for (a, b) in r.iter().zip(c) {
            let d = (*a as f64 - *b as f64).abs();
            abs_sum += d;
            abs_max = abs_max.max(d);
        }
        per_class[rc].0 += 1;
        if rc == cc {
            agree += 1;
            per_class[rc].1 += 1;
        }
        if top_k(c, k5).contains(&rc) {
            top5 += 1;
        }
        let label = labels.map(|l| l[i]);
        if let Some(l) = label {
            let (r_ok, c_ok) = (rc == l as usize, cc == l as usize);
            right.0 += r_ok as usize;
            right.1 += c_ok as usize;
            flips.0 += (r_ok && !c_ok) as usize;
            flips.1 += (!r_ok && c_ok) as usize;
        }
        ref_hist[confidence_bin(lr[rc].exp())] += 1;
        cand_hist[confidence_bin(lc[cc].exp())] += 1;
        rows.push(WorstExample {
            index: i,
            reference_class: rc,
            candidate_class: cc,
            reference_confidence: lr[rc].exp(),
            candidate_confidence: lc[cc].exp(),
            kl,
            label,
        });
    }
    rows.sort_by(|a, b| {
        let da = a.reference_class != a.candidate_class;
        let db = b.reference_class != b.candidate_class;
        db.cmp(&da).then(b.kl.total_cmp(&a.kl)).then(a.index.cmp(&b.index))
    });
    rows.truncate(worst_k);
    let nf = n as f64;
    Ok(Comparison {
        examples: n,
        classes,
        accuracy: labels.map(|_| right.1 as f64 / nf),
        reference_accuracy: labels.map(|_| right.0 as f64 / nf),
        top1_agreement: agree as f64 / nf,
        top5_agreement: top5 as f64 / nf,
        flip_rate: (n - agree) as f64 / nf,
        flips_to_wrong: labels.map(|_| flips.0),
        flips_to_right: labels.map(|_| flips.1),
        kl_mean: kls.iter().sum::<f64>() / nf,
        kl_p99: quantile(&kls, 0.99),
        max_abs_logit_diff: abs_max,
        mean_abs_logit_diff: abs_sum / reference.len() as f64,
        sqnr_db: sqnr_db(reference, candidate),
        per_class: per_class
            .iter()
            .enumerate()
            .map(|(class, &(examples, agreed))| ClassAgreement {
                class,
                examples,
                agreed,
                agreement: (examples > 0).then(|| agreed as f64 / examples as f64),
            })
            .collect(),
        worst: rows,
        reference_confidence_histogram: ref_hist,
        candidate_confidence_histogram: cand_hist,
    })
}

/// Accuracy of flat `[n, classes]` outputs against labels.
pub fn accuracy(outputs: &[f32], classes: usize, labels: &[u32]) -> f64 {
    if labels.is_empty() || classes == 0 {
        return 0.0;
    }
    let right = outputs.chunks(classes).zip(labels).filter(|(o, l)| argmax(o) == **l as usize).count();
    right as f64 / labels.len() as f64
}

/// A metric a threshold can bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Accuracy,
    AccuracyDrop,
    Top1Agreement,
    Top5Agreement,
    FlipRate,
    KlMean,
    KlP99,
    MaxAbsLogitDiff,
    MeanAbsLogitDiff,
    SqnrDb,
    ClassAgreement,
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        f.write_str(&s)
    }
}

/// Limits on a comparison's metrics. Every field is optional; unset limits are not checked.
/// Read from TOML (`min_top1_agreement = 0.99`) or JSON with the same keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Candidate accuracy against labels (skipped without labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_accuracy: Option<f64>,
    /// Reference accuracy minus candidate accuracy (skipped without labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_accuracy_drop: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_top1_agreement: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_top5_agreement: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_flip_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_kl_mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_kl_p99: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_abs_logit_diff: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mean_abs_logit_diff: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_sqnr_db: Option<f64>,
    /// Every class the reference predicts must keep at least this agreement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_class_agreement: Option<f64>,
}

/// One threshold a comparison did not meet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdFailure {
    pub metric: Metric,
    /// The class, for per-class limits.
    pub class: Option<usize>,
    pub actual: f64,
    pub limit: f64,
    /// Whether `limit` is a minimum (`true`) or a maximum.
    pub is_minimum: bool,
}

impl std::fmt::Display for ThresholdFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (op, word) = if self.is_minimum { ("<", "min") } else { (">", "max") };
        match self.class {
            Some(c) => {
                write!(f, "{} of class {c} = {:.4} {op} {word} {}", self.metric, self.actual, op_limit(self.limit))
            }
            None => write!(f, "{} = {:.4} {op} {word} {}", self.metric, self.actual, op_limit(self.limit)),
        }
    }
}

fn op_limit(l: f64) -> String {
    format!("{l}")
}

impl Thresholds {
    /// True when no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Thresholds::default()
    }

    /// `self` with every limit set in `over` replaced by it.
    pub fn overridden_by(&self, over: &Thresholds) -> Thresholds {
        macro_rules! pick {
            ($($f:ident),*) => { Thresholds { $($f: over.$f.or(self.$f)),* } };
        }
        pick!(
            min_accuracy,
            max_accuracy_drop,
            min_top1_agreement,
            min_top5_agreement,
            max_flip_rate,
            max_kl_mean,
            max_kl_p99,
            max_abs_logit_diff,
            max_mean_abs_logit_diff,
            min_sqnr_db,
            min_class_agreement
        )
    }

    /// Fails on limits that are NaN or out of their range (agreements and accuracies in 0..=1, KL ≥ 0, ...).
    pub fn validate(&self) -> Result<()> {
        let unit = [
            ("min_accuracy", self.min_accuracy),
            ("max_accuracy_drop", self.max_accuracy_drop),
            ("min_top1_agreement", self.min_top1_agreement),
            ("min_top5_agreement", self.min_top5_agreement),
            ("max_flip_rate", self.max_flip_rate),
            ("min_class_agreement", self.min_class_agreement),
        ];
        for (name, v) in unit {
            if let Some(v) = v
                && !(0.0..=1.0).contains(&v)
            {
                return Err(Error::Options { reason: format!("threshold {name} must be within 0..=1, got {v}") });
            }
        }
        let non_negative = [
            ("max_kl_mean", self.max_kl_mean),
            ("max_kl_p99", self.max_kl_p99),
            ("max_abs_logit_diff", self.max_abs_logit_diff),
            ("max_mean_abs_logit_diff", self.max_mean_abs_logit_diff),
        ];
        for (name, v) in non_negative {
            if let Some(v) = v
                && !(v >= 0.0 && v.is_finite())
            {
                return Err(Error::Options {
                    reason: format!("threshold {name} must be a finite value >= 0, got {v}"),
                });
            }
        }
        if let Some(v) = self.min_sqnr_db
            && !v.is_finite()
        {
            return Err(Error::Options { reason: format!("threshold min_sqnr_db must be finite, got {v}") });
        }
        Ok(())
    }

    /// The limits `c` does not meet (empty when it passes).
    pub fn check(&self, c: &Comparison) -> Vec<ThresholdFailure> {
        let mut out = vec![];
        let mut min = |metric, actual: f64, limit: Option<f64>, class| {
            if let Some(limit) = limit
                && actual < limit
            {
                out.push(ThresholdFailure { metric, class, actual, limit, is_minimum: true });
            }
        };
        if let Some(acc) = c.accuracy {
            min(Metric::Accuracy, acc, self.min_accuracy, None);
        }
        min(Metric::Top1Agreement, c.top1_agreement, self.min_top1_agreement, None);
        min(Metric::Top5Agreement, c.top5_agreement, self.min_top5_agreement, None);
        min(Metric::SqnrDb, c.sqnr_db, self.min_sqnr_db, None);
        if self.min_class_agreement.is_some() {
            for pc in &c.per_class {
                if let Some(a) = pc.agreement {
                    min(Metric::ClassAgreement, a, self.min_class_agreement, Some(pc.class));
                }
            }
        }
        let mut max = |metric, actual: f64, limit: Option<f64>| {
            if let Some(limit) = limit
                && actual > limit
            {
                out.push(ThresholdFailure { metric, class: None, actual, limit, is_minimum: false });
            }
        };
        if let (Some(acc), Some(ref_acc)) = (c.accuracy, c.reference_accuracy) {
            max(Metric::AccuracyDrop, ref_acc - acc, self.max_accuracy_drop);
        }
        max(Metric::FlipRate, c.flip_rate, self.max_flip_rate);
        max(Metric::KlMean, c.kl_mean, self.max_kl_mean);
        max(Metric::KlP99, c.kl_p99, self.max_kl_p99);
        max(Metric::MaxAbsLogitDiff, c.max_abs_logit_diff, self.max_abs_logit_diff);
        max(Metric::MeanAbsLogitDiff, c.mean_abs_logit_diff, self.max_mean_abs_logit_diff);
        out
    }
}

/// Thresholds for every gap: `all` applies everywhere, a gap's own table overrides it.
/// In TOML: top-level keys, then optional `[distillation]`, `[quantization]`, `[total]` and `[device]` tables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdSet {
    #[serde(default)]
    pub all: Thresholds,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation: Option<Thresholds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Thresholds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Thresholds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Thresholds>,
}

impl ThresholdSet {
    /// The same limits for every gap.
    pub fn uniform(all: Thresholds) -> Self {
        ThresholdSet { all, ..Default::default() }
    }

    /// The limits that apply to one gap.
    pub fn for_gap(&self, gap: Gap) -> Thresholds {
        let own = match gap {
            Gap::Distillation => &self.distillation,
            Gap::Quantization => &self.quantization,
            Gap::Total => &self.total,
            Gap::Device => &self.device,
        };
        match own {
            Some(t) => self.all.overridden_by(t),
            None => self.all.clone(),
        }
    }

    /// Applies `over` on top of every gap's limits (command-line flags win over a file).
    pub fn overridden_by(&self, over: &Thresholds) -> ThresholdSet {
        let o = |t: &Option<Thresholds>| t.as_ref().map(|t| t.overridden_by(over));
        ThresholdSet {
            all: self.all.overridden_by(over),
            distillation: o(&self.distillation),
            quantization: o(&self.quantization),
            total: o(&self.total),
            device: o(&self.device),
        }
    }

    /// Reads the file form: top-level limits for every gap, plus optional tables named after a [`Gap`]
    /// (`{"min_top1_agreement": 0.9, "quantization": {"min_top1_agreement": 0.99}}`). Unknown keys are errors,
    /// so a misspelt limit is never silently ignored. (The CLI turns TOML into this JSON value.)
    pub fn from_flat(value: serde_json::Value) -> Result<ThresholdSet> {
        let bad = |e: serde_json::Error| Error::Options { reason: format!("bad thresholds: {e}") };
        let serde_json::Value::Object(mut map) = value else {
            return Err(Error::Options { reason: "thresholds must be a table of limits".into() });
        };
        let mut gap = |name: &str| -> Result<Option<Thresholds>> {
            map.remove(name).map(|v| serde_json::from_value(v).map_err(bad)).transpose()
        };
        let set = ThresholdSet {
            distillation: gap("distillation")?,
            quantization: gap("quantization")?,
            total: gap("total")?,
            device: gap("device")?,
            all: Thresholds::default(),
        };
        let set = ThresholdSet { all: serde_json::from_value(serde_json::Value::Object(map)).map_err(bad)?, ..set };
        set.validate()?;
        Ok(set)
    }

    /// Validates every table.
    pub fn validate(&self) -> Result<()> {
        self.all.validate()?;
        for t in [&self.distillation, &self.quantization, &self.total, &self.device].into_iter().flatten() {
            t.validate()?;
        }
        Ok(())
    }

    /// True when no limit is set anywhere.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
            && [&self.distillation, &self.quantization, &self.total, &self.device]
                .into_iter()
                .all(|t| t.as_ref().is_none_or(Thresholds::is_empty))
    }
}
