//! `pupil parity`: teacher vs f32 student vs quantized students on the same inputs — the distillation gap and
//! the quantization gap separately, per-class agreement, worst examples, thresholds, charts and per-layer divergence.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use indicatif::{ProgressBar, ProgressStyle};
use pupil_distill::{DataSpec, Dataset};
use pupil_runtime::parity::{
    Gap, GapReport, LayerReport, ThresholdSet, Thresholds, layer_divergence, metrics::accuracy, to_logits,
};
use pupil_runtime::{Batch, DeviceFingerprint, Model, ModelOptions};
use serde::Serialize;

use crate::output::{print_json, table};

/// Exit code when a threshold fails.
pub const EXIT_THRESHOLD: i32 = 2;

/// Thresholds from a TOML file and/or flags (flags win). Each applies to every comparison unless the file puts it
/// in a `[distillation]`, `[quantization]`, `[total]` or `[device]` table.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ThresholdArgs {
    /// TOML file of thresholds, e.g. `min_top1_agreement = 0.99` and `[quantization]` / `[distillation]` tables.
    #[arg(long, value_name = "FILE.toml")]
    pub thresholds: Option<PathBuf>,
    /// Minimum accuracy against labels.
    #[arg(long)]
    pub min_accuracy: Option<f64>,
    /// Maximum accuracy drop (reference accuracy minus candidate accuracy).
    #[arg(long)]
    pub max_accuracy_drop: Option<f64>,
    /// Minimum fraction of examples where both models pick the same class.
    #[arg(long)]
    pub min_top1_agreement: Option<f64>,
    /// Minimum fraction of examples where the reference's class is in the candidate's top 5.
    #[arg(long)]
    pub min_top5_agreement: Option<f64>,
    /// Maximum fraction of examples whose argmax changes.
    #[arg(long)]
    pub max_flip_rate: Option<f64>,
    /// Maximum mean KL(reference ‖ candidate), nats.
    #[arg(long)]
    pub max_kl_mean: Option<f64>,
    /// Maximum 99th percentile of KL(reference ‖ candidate), nats.
    #[arg(long)]
    pub max_kl_p99: Option<f64>,
    /// Maximum absolute logit difference.
    #[arg(long)]
    pub max_abs_logit_diff: Option<f64>,
    /// Maximum mean absolute logit difference.
    #[arg(long)]
    pub max_mean_abs_logit_diff: Option<f64>,
    /// Minimum SQNR of the logits, dB.
    #[arg(long, allow_negative_numbers = true)]
    pub min_sqnr_db: Option<f64>,
    /// Minimum agreement within every class the reference predicts.
    #[arg(long)]
    pub min_class_agreement: Option<f64>,
}

impl ThresholdArgs {
    fn flags(&self) -> Thresholds {
        Thresholds {
            min_accuracy: self.min_accuracy,
            max_accuracy_drop: self.max_accuracy_drop,
            min_top1_agreement: self.min_top1_agreement,
            min_top5_agreement: self.min_top5_agreement,
            max_flip_rate: self.max_flip_rate,
            max_kl_mean: self.max_kl_mean,
            max_kl_p99: self.max_kl_p99,
            max_abs_logit_diff: self.max_abs_logit_diff,
            max_mean_abs_logit_diff: self.max_mean_abs_logit_diff,
            min_sqnr_db: self.min_sqnr_db,
            min_class_agreement: self.min_class_agreement,
        }
    }

    /// The file's thresholds with the flags applied on top, validated.
    pub fn load(&self) -> anyhow::Result<ThresholdSet> {
        let base = match &self.thresholds {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                let value: serde_json::Value =
                    toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
                ThresholdSet::from_flat(value).with_context(|| format!("in {}", path.display()))?
            }
            None => ThresholdSet::default(),
        };
        let set = base.overridden_by(&self.flags());
        set.validate()?;
        Ok(set)
    }
}

/// Loads a model for batched runs (symbolic batch, or batch 1 when its batch dimension is fixed).
pub(crate) fn load_model(path: &Path, threads: usize) -> anyhow::Result<Model> {
    let options = ModelOptions { threads, batch: Batch::Symbolic, ..Default::default() };
    match Model::load(path, options.clone()) {
        Ok(m) => Ok(m),
        Err(pupil_runtime::Error::Options { .. }) => {
            Ok(Model::load(path, ModelOptions { batch: Batch::Fixed(1), ..options })?)
        }
        Err(e) => Err(e).with_context(|| format!("loading {}", path.display())),
    }
}

/// Runs every example through a model with a progress bar; returns logits `[n, classes]`.
pub(crate) fn run_logits(model: &Model, ds: &Dataset, name: &str) -> anyhow::Result<Vec<f32>> {
    ds.check_example_len(model.example_len()).with_context(|| format!("data for {name}"))?;
    let bar = ProgressBar::new(ds.len() as u64)
        .with_style(ProgressStyle::with_template("{msg:>24} {bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}]")?);
    bar.set_message(name.to_string());
    let per = ds.example_len();
    let mut out = Vec::with_capacity(ds.len() * model.classes());
    for start in (0..ds.len()).step_by(256) {
        let end = (start + 256).min(ds.len());
        let logits = model.run_batch(&ds.inputs[start * per..end * per]).with_context(|| format!("running {name}"))?;
        out.extend(to_logits(&logits, model.output_is_probability()));
        bar.set_position(end as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// A short display name for a model file.
pub(crate) fn short_name(path: &Path) -> String {
    path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The reference model (the teacher).
    #[arg(long)]
    pub teacher: PathBuf,
    /// A student; repeat for quantized versions (`--student s.onnx --student s.int8.onnx`). The first is compared
    /// with the teacher (distillation gap), each further one with the first (quantization gap) and the teacher.
    #[arg(long = "student", required = true, value_name = "STUDENT")]
    pub students: Vec<PathBuf>,
    /// Data: `mnist:DIR[:train|test]`, `npy:X.npy[:Y.npy]` or `images:DIR`.
    #[arg(long)]
    pub data: DataSpec,
    /// Use only the first N examples.
    #[arg(long, short = 'n')]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
    /// Worst examples kept per comparison.
    #[arg(long, default_value_t = 10)]
    pub worst: usize,
    /// Also report per-layer divergence (SQNR of every shared intermediate tensor) for each quantized student
    /// against the first student.
    #[arg(long)]
    pub layers: bool,
    /// Per-layer SQNR bar, dB: the first layer below it is flagged.
    #[arg(long, default_value_t = 20.0, allow_negative_numbers = true)]
    pub layer_min_sqnr_db: f64,
    /// Examples run for per-layer divergence.
    #[arg(long, default_value_t = 64)]
    pub layer_examples: usize,
    /// Directory for parity.json and the charts (parity-class-agreement.svg, parity-confidence.svg).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub load: super::LoadArgs,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// One model in the report.
#[derive(Debug, Serialize)]
pub struct ModelSummary {
    pub role: String,
    pub path: String,
    pub sha256: String,
    pub file_size: u64,
    pub parameters: u64,
    pub accuracy: Option<f64>,
}

/// Per-layer divergence of one quantized student against the f32 student.
#[derive(Debug, Serialize)]
pub struct LayerSection {
    pub reference: String,
    pub candidate: String,
    pub report: LayerReport,
}

/// Everything `pupil parity` found.
#[derive(Debug, Serialize)]
pub struct ParityCliReport {
    pub data: String,
    pub examples: usize,
    pub classes: usize,
    pub models: Vec<ModelSummary>,
    pub gaps: Vec<GapReport>,
    pub layers: Vec<LayerSection>,
    pub thresholds: ThresholdSet,
    pub passed: bool,
    /// Every failed threshold, readable.
    pub failures: Vec<String>,
    pub charts: Vec<String>,
    pub device: DeviceFingerprint,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let (report, labels) = compute(&args, args.thresholds.load()?)?;
    if args.json {
        print_json(&report)?;
    } else {
        print_report(&report, labels.as_deref());
    }
    Ok(if report.passed { 0 } else { EXIT_THRESHOLD })
}

/// Runs every comparison, writes `parity.json` and the charts when `--out` is given; returns the report and the
/// teacher's class labels.
pub(crate) fn compute(args: &Args, thresholds: ThresholdSet) -> anyhow::Result<(ParityCliReport, Option<Vec<String>>)> {
    let teacher = load_model(&args.teacher, args.load.threads)?;
    let students =
        args.students.iter().map(|p| load_model(p, args.load.threads)).collect::<anyhow::Result<Vec<_>>>()?;
    let classes = teacher.classes();
    for (s, p) in students.iter().zip(&args.students) {
        if s.classes() != classes {
            return Err(anyhow!(
                "{} has {} output classes, the teacher {} has {classes}: they cannot be compared",
                p.display(),
                s.classes(),
                args.teacher.display()
            ));
        }
    }
    let spec = teacher.meta().preprocess.as_ref().or(students[0].meta().preprocess.as_ref());
    let mut ds = args.data.load(spec)?;
    if let Some(n) = args.limit {
        ds = ds.take(n);
    }
    ds.check_labels(classes)?;
    let labels = ds.labels.clone();

    let mut names = vec![short_name(&args.teacher)];
    for p in &args.students {
        let mut n = short_name(p);
        while names.contains(&n) {
            n = p.display().to_string();
            if names.contains(&n) {
                n = format!("{n} #{}", names.len());
            }
        }
        names.push(n);
    }
    let t_logits = run_logits(&teacher, &ds, &names[0])?;
    let s_logits = students
        .iter()
        .enumerate()
        .map(|(i, s)| run_logits(s, &ds, &names[i + 1]))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let lab = labels.as_deref();
    let mut gaps = vec![GapReport::new(
        Gap::Distillation,
        (names[0].as_str(), t_logits.as_slice()),
        (names[1].as_str(), s_logits[0].as_slice()),
        classes,
        lab,
        thresholds.for_gap(Gap::Distillation),
        args.worst,
    )?];
    for i in 1..students.len() {
        gaps.push(GapReport::new(
            Gap::Quantization,
            (names[1].as_str(), s_logits[0].as_slice()),
            (names[i + 1].as_str(), s_logits[i].as_slice()),
            classes,
            lab,
            thresholds.for_gap(Gap::Quantization),
            args.worst,
        )?);
        gaps.push(GapReport::new(
            Gap::Total,
            (names[0].as_str(), t_logits.as_slice()),
            (names[i + 1].as_str(), s_logits[i].as_slice()),
            classes,
            lab,
            thresholds.for_gap(Gap::Total),
            args.worst,
        )?);
    }

    let mut layers = vec![];
    if args.layers {
        if students.len() < 2 {
            return Err(anyhow!("--layers compares quantized students with the first one: pass a second --student"));
        }
        let first =
            std::fs::read(&args.students[0]).with_context(|| format!("reading {}", args.students[0].display()))?;
        let sub = ds.take(args.layer_examples.max(1));
        for (i, p) in args.students.iter().enumerate().skip(1) {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            let report =
                layer_divergence(&first, &bytes, students[0].example_shape(), &sub.inputs, args.layer_min_sqnr_db)
                    .with_context(|| format!("per-layer divergence of {} against {}", names[i + 1], names[1]))?;
            layers.push(LayerSection { reference: names[1].clone(), candidate: names[i + 1].clone(), report });
        }
    }

    let mut models = vec![];
    let all_models: Vec<(&Model, &PathBuf, &Vec<f32>)> = std::iter::once((&teacher, &args.teacher, &t_logits))
        .chain(students.iter().zip(&args.students).zip(&s_logits).map(|((m, p), l)| (m, p, l)))
        .collect();
    for (i, (m, p, l)) in all_models.iter().enumerate() {
        models.push(ModelSummary {
            role: match i {
                0 => "teacher".into(),
                1 => "student".into(),
                _ => format!("student #{i}"),
            },
            path: p.display().to_string(),
            sha256: m.info().sha256.clone(),
            file_size: m.info().file_size,
            parameters: m.info().parameters,
            accuracy: lab.map(|y| accuracy(l, classes, y)),
        });
    }
    let failures: Vec<String> = gaps
        .iter()
        .flat_map(|g| g.failures.iter().map(move |f| format!("{} ({} → {}): {f}", g.gap, g.reference, g.candidate)))
        .collect();

    let mut charts = vec![];
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let bars = dir.join("parity-class-agreement.svg");
        crate::charts::parity_class_agreement(&bars, &gaps, teacher.labels())?;
        let hist = dir.join("parity-confidence.svg");
        crate::charts::parity_confidence_histogram(&hist, &gaps)?;
        charts = vec![bars.display().to_string(), hist.display().to_string()];
    }
    let report = ParityCliReport {
        data: args.data.to_string(),
        examples: ds.len(),
        classes,
        models,
        passed: failures.is_empty(),
        gaps,
        layers,
        thresholds,
        failures,
        charts,
        device: DeviceFingerprint::current(),
    };
    if let Some(dir) = &args.out {
        let path = dir.join("parity.json");
        pupil_runtime::onnx::write_atomic(&path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    Ok((report, teacher.labels().map(|l| l.to_vec())))
}

fn pct(v: f64) -> String {
    format!("{:.2}%", 100.0 * v)
}

fn opt_pct(v: Option<f64>) -> String {
    v.map(pct).unwrap_or_else(|| "-".into())
}

fn class_name(c: usize, labels: Option<&[String]>) -> String {
    labels.and_then(|l| l.get(c).cloned()).unwrap_or_else(|| c.to_string())
}

/// The metrics of each comparison, one row each.
pub(crate) fn gap_table(gaps: &[GapReport], labels: Option<&[String]>) -> comfy_table::Table {
    let mut t = table(&[
        "gap",
        "reference → candidate",
        "acc",
        "top-1 agr",
        "top-5 agr",
        "flips (→wrong/→right)",
        "KL mean",
        "KL p99",
        "max |Δlogit|",
        "mean |Δlogit|",
        "SQNR dB",
        "worst class",
        "status",
    ]);
    for g in gaps {
        let c = &g.comparison;
        let flips = (c.flip_rate * c.examples as f64).round() as usize;
        let flips = match (c.flips_to_wrong, c.flips_to_right) {
            (Some(w), Some(r)) => format!("{flips} ({w}/{r})"),
            _ => flips.to_string(),
        };
        let worst = c
            .min_class_agreement()
            .map(|(k, a)| format!("{} {}", class_name(k, labels), pct(a)))
            .unwrap_or_else(|| "-".into());
        let status = if g.failures.is_empty() {
            if g.thresholds.is_empty() { "no limits".to_string() } else { "PASS".to_string() }
        } else {
            format!("FAIL ({})", g.failures.len())
        };
        t.add_row(vec![
            g.gap.to_string(),
            format!("{} → {}", g.reference, g.candidate),
            opt_pct(c.accuracy),
            pct(c.top1_agreement),
            pct(c.top5_agreement),
            flips,
            format!("{:.5}", c.kl_mean),
            format!("{:.5}", c.kl_p99),
            format!("{:.4}", c.max_abs_logit_diff),
            format!("{:.4}", c.mean_abs_logit_diff),
            format!("{:.1}", c.sqnr_db),
            worst,
            status,
        ]);
    }
    t
}

/// Agreement per reference class, one column per comparison.
pub(crate) fn class_table(gaps: &[GapReport], labels: Option<&[String]>) -> comfy_table::Table {
    let mut header = vec!["class".to_string(), "examples".to_string()];
    header.extend(gaps.iter().map(|g| format!("{} → {}", g.reference, g.candidate)));
    let mut t = table(&header);
    let classes = gaps.first().map(|g| g.comparison.classes).unwrap_or(0);
    for c in 0..classes {
        let mut row = vec![class_name(c, labels), gaps[0].comparison.per_class[c].examples.to_string()];
        for g in gaps {
            let pc = &g.comparison.per_class[c];
            row.push(match pc.agreement {
                Some(a) => format!("{} ({}/{})", pct(a), pc.agreed, pc.examples),
                None => "-".into(),
            });
        }
        t.add_row(row);
    }
    t
}

/// The worst examples of one comparison.
pub(crate) fn worst_table(g: &GapReport, k: usize, labels: Option<&[String]>) -> comfy_table::Table {
    let mut t = table(&["example", "label", "reference class (p)", "candidate class (p)", "KL"]);
    for w in g.comparison.worst.iter().take(k) {
        t.add_row(vec![
            w.index.to_string(),
            w.label.map(|l| class_name(l as usize, labels)).unwrap_or_else(|| "-".into()),
            format!("{} ({:.3})", class_name(w.reference_class, labels), w.reference_confidence),
            format!("{} ({:.3})", class_name(w.candidate_class, labels), w.candidate_confidence),
            format!("{:.4}", w.kl),
        ]);
    }
    t
}

/// Per-layer divergence as a table.
pub(crate) fn layer_table(r: &LayerReport) -> comfy_table::Table {
    let mut t = table(&["#", "tensor", "op", "shape", "SQNR dB", "max |Δ|", "cosine", ""]);
    for (i, l) in r.layers.iter().enumerate() {
        let flag = if Some(i) == r.first_below {
            format!("◀ first below {} dB", r.min_sqnr_db)
        } else if l.below_bar {
            "below".into()
        } else {
            String::new()
        };
        t.add_row(vec![
            i.to_string(),
            l.name.clone(),
            l.op.clone(),
            format!("{:?}", l.shape),
            format!("{:.1}", l.sqnr_db),
            format!("{:.4}", l.max_abs_diff),
            format!("{:.5}", l.cosine),
            flag,
        ]);
    }
    t
}

fn print_report(r: &ParityCliReport, labels: Option<&[String]>) {
    println!("parity on {} ({} examples, {} classes)", r.data, r.examples, r.classes);
    let mut t = table(&["role", "model", "sha256", "parameters", "size", "accuracy"]);
    for m in &r.models {
        t.add_row(vec![
            m.role.clone(),
            m.path.clone(),
            m.sha256[..12.min(m.sha256.len())].to_string(),
            m.parameters.to_string(),
            crate::output::bytes(m.file_size),
            opt_pct(m.accuracy),
        ]);
    }
    println!("{t}");
    println!("{}", gap_table(&r.gaps, labels));
    println!("top-1 agreement per reference class:");
    println!("{}", class_table(&r.gaps, labels));
    for g in &r.gaps {
        if g.comparison.worst.iter().any(|w| w.reference_class != w.candidate_class) {
            println!("worst examples, {} → {}:", g.reference, g.candidate);
            println!("{}", worst_table(g, 5, labels));
        }
    }
    for l in &r.layers {
        println!(
            "per-layer divergence, {} → {} ({} examples, {} shared tensors):",
            l.reference,
            l.candidate,
            l.report.examples,
            l.report.layers.len()
        );
        println!("{}", layer_table(&l.report));
        match l.report.first_divergent() {
            Some(d) => {
                println!("first layer below {} dB: `{}` ({}), {:.1} dB", l.report.min_sqnr_db, d.name, d.op, d.sqnr_db)
            }
            None => println!("every shared layer stays above {} dB", l.report.min_sqnr_db),
        }
    }
    for c in &r.charts {
        println!("chart: {c}");
    }
    if r.thresholds.is_empty() {
        println!("no thresholds set (--thresholds FILE.toml or --min-top1-agreement ...): nothing to fail");
    } else if r.failures.is_empty() {
        println!("PASS: every threshold holds");
    } else {
        for f in &r.failures {
            println!("FAIL {f}");
        }
    }
}
