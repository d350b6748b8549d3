//! `pupil pipeline` (and `pupil` with no arguments): the whole path from a teacher to a verified, profiled
//! student — distill, quantize, parity + device bundle, profile — with one summary table and every artifact under
//! `out/`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use indicatif::{ProgressBar, ProgressStyle};
use pupil_distill::{DataSpec, DistillError, Job, Outcome, Progress, Recipe};
use pupil_runtime::parity::{Bundle, ThresholdSet, Thresholds};
use pupil_runtime::profile::ProfileReport;
use pupil_runtime::quantize::{QuantizeOptions, QuantizeReport, quantize};
use pupil_runtime::{Model, ModelOptions};
use serde::Serialize;

use super::{LoadArgs, bundle, parity, profile};
use crate::charts::{Series, grouped_bars};
use crate::output::{bytes, print_json, table};

/// The shipped teacher the default run distills from.
pub const DEFAULT_TEACHER: &str = "models/mnist-teacher.onnx";
/// The default transfer set (its labels are dropped: distillation needs none).
pub const DEFAULT_DATA: &str = "mnist:data/mnist:train";
/// The default labelled test set for errors and parity.
pub const DEFAULT_TEST: &str = "mnist:data/mnist:test";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The teacher: any ONNX classifier.
    #[arg(long, default_value = DEFAULT_TEACHER)]
    pub teacher: PathBuf,
    /// The transfer set (labels, if any, are ignored): `mnist:DIR[:train|test]`, `npy:X.npy` or `images:DIR`.
    #[arg(long, default_value = DEFAULT_DATA)]
    pub data: DataSpec,
    /// Labelled test data for errors, parity and the device bundle.
    #[arg(long, default_value = DEFAULT_TEST)]
    pub test: DataSpec,
    /// The student's recipe: a TOML file or a shipped recipe name (quick, tiny, mnist-student-800-distill, …).
    #[arg(long, default_value = "quick")]
    pub recipe: String,
    /// Override the recipe's number of epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Where every artifact goes.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Use only the first N transfer examples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Use only the first N test examples.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Transfer examples used to calibrate int8 activation ranges.
    #[arg(long, default_value_t = 1000)]
    pub calibration_examples: usize,
    /// Test examples recorded in the device parity bundle.
    #[arg(long, default_value_t = 256)]
    pub bundle_examples: usize,
    /// Minimum top-1 agreement of the int8 student with the f32 student (the run fails below it).
    #[arg(long, default_value_t = 0.99)]
    pub min_int8_agreement: f64,
    /// Timed runs per model when profiling.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// Start over: ignore checkpoints from an earlier run (cached teacher outputs are still reused).
    #[arg(long)]
    pub fresh: bool,
    #[command(flatten)]
    pub load: LoadArgs,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Print the summary as JSON (no progress bars).
    #[arg(long)]
    pub json: bool,
}

/// `Args` with every default, for `pupil` run without a command.
#[derive(Debug, clap::Parser)]
struct Defaults {
    #[command(flatten)]
    args: Args,
}

impl Args {
    /// The shipped defaults (what `pupil` with no arguments runs).
    pub fn defaults() -> Args {
        <Defaults as clap::Parser>::parse_from(["pupil"]).args
    }
}

/// One model's line in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRow {
    pub path: String,
    pub sha256: String,
    pub file_size: u64,
    pub parameters: u64,
    pub test_examples: usize,
    pub test_errors: Option<usize>,
    /// Top-1 agreement with the teacher on the test set (None for the teacher itself).
    pub top1_agreement_with_teacher: Option<f64>,
    pub macs_per_example: u64,
    pub cold_start_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct DistillSummary {
    pub recipe: String,
    pub epochs: usize,
    pub resumed_after_epoch: Option<usize>,
    pub transfer_examples: usize,
    pub teacher_outputs_from_cache: bool,
    pub teacher_outputs_cache: String,
    pub examples_per_sec: f64,
    pub export_max_abs_diff: Option<f32>,
}

#[derive(Debug, Serialize)]
pub struct QuantizeSummary {
    pub calibration_examples: usize,
    pub quantized_nodes: usize,
    pub nodes: usize,
    pub integer_matmuls: usize,
    pub matmuls: usize,
    pub size_ratio: f64,
    /// The hidden layers whose units the quantizer grouped by when they are zero.
    pub unit_order: Vec<pupil_runtime::quantize::UnitOrder>,
}

#[derive(Debug, Serialize)]
pub struct BundleSummary {
    pub path: String,
    pub examples: usize,
    pub bytes: u64,
    /// `verify_bundle` on this machine, against the student it was made for.
    pub verified: bool,
}

/// Everything one pipeline run produced.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub teacher: ModelRow,
    pub student: ModelRow,
    pub int8: ModelRow,
    pub distill: DistillSummary,
    pub quantize: QuantizeSummary,
    pub int8_agreement_with_student: f64,
    pub parity_passed: bool,
    pub parity_failures: Vec<String>,
    pub bundle: BundleSummary,
    /// What was written where.
    pub artifacts: Vec<(String, String)>,
    pub seconds: f64,
    pub passed: bool,
}

/// Resolves a default path: as given when it exists, else relative to the source tree the binary was built from
/// (so `pupil` run from another directory still finds the shipped models and data).
fn locate(path: &Path) -> PathBuf {
    if path.is_relative() && !path.exists() {
        let candidate = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        if candidate.exists() {
            return candidate;
        }
    }
    path.to_path_buf()
}

fn locate_spec(spec: &DataSpec) -> DataSpec {
    match spec {
        DataSpec::Mnist { dir, split } => DataSpec::Mnist { dir: locate(dir), split: *split },
        other => other.clone(),
    }
}

/// Prints a step header (hidden with `--json`).
struct Steps {
    quiet: bool,
    started: Instant,
}

impl Steps {
    fn begin(&self, n: usize, what: &str) {
        if !self.quiet {
            println!("[{n}/5] {what}");
        }
    }
    fn done(&self, what: &str) {
        if !self.quiet {
            println!("      {what}  ({:.0} s so far)", self.started.elapsed().as_secs_f64());
        }
    }
    /// One more line about the step just done.
    fn note(&self, what: &str) {
        if !self.quiet {
            println!("      {what}");
        }
    }
}

/// Fails early, before any work, when `dir` cannot be written (earlier artifacts stay untouched).
fn check_writable(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the output directory {}", dir.display()))?;
    let probe = dir.join(".pupil-write-probe");
    std::fs::write(&probe, b"pupil").with_context(|| {
        format!("cannot write into the output directory {} (earlier artifacts there are untouched)", dir.display())
    })?;
    std::fs::remove_file(&probe).ok();
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let summary = execute(&args)?;
    if args.json {
        print_json(&summary)?;
    } else {
        print_summary(&summary);
    }
    Ok(if summary.passed { 0 } else { parity::EXIT_THRESHOLD })
}

/// Runs the five steps; returns the summary (also written to `OUT/summary.json`).
pub fn execute(args: &Args) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let quiet = args.quiet || args.json;
    let steps = Steps { quiet, started };
    let out = args.out.clone();
    let teacher_path = locate(&args.teacher);
    let data_spec = locate_spec(&args.data);
    let test_spec = locate_spec(&args.test);

    // ---- Preflight: everything that can be wrong is found before training starts.
    if args.calibration_examples == 0 || args.bundle_examples == 0 {
        return Err(anyhow!(
            "--calibration-examples and --bundle-examples must be at least 1 (got {} and {})",
            args.calibration_examples,
            args.bundle_examples
        ));
    }
    check_writable(&out)?;
    let teacher_model = Model::load(&teacher_path, ModelOptions::default())
        .with_context(|| format!("loading the teacher {}", teacher_path.display()))?;
    let mut recipe = Recipe::load(&args.recipe)?;
    if let Some(e) = args.epochs {
        recipe.train.epochs = e;
    }
    let classes = recipe.model.classes();
    let preprocess = teacher_model.meta().preprocess.clone();
    let mut transfer = data_spec.load(preprocess.as_ref()).with_context(|| format!("loading {data_spec}"))?;
    if let Some(n) = args.limit {
        transfer = transfer.take(n);
    }
    let transfer = transfer.unlabeled();
    // The distiller's own check (input width against the data, output width against the recipe), run now so a
    // mismatch is named before the test data is read.
    pupil_distill::teacher::check_teacher(&teacher_model, &teacher_path, &transfer, classes)?;
    let mut test = test_spec.load(preprocess.as_ref()).with_context(|| format!("loading {test_spec}"))?;
    if let Some(n) = args.test_limit {
        test = test.take(n);
    }
    if test.labels.is_none() {
        return Err(anyhow!("the test data `{test_spec}` has no labels: errors and parity need them"));
    }
    test.check_labels(classes)?;
    drop(teacher_model);

    // ---- 1. Distill.
    let student_path = out.join("student.onnx");
    steps.begin(
        1,
        &format!(
            "distill: recipe `{}` from {} on {} unlabelled examples ({} epochs)",
            recipe.name,
            teacher_path.display(),
            transfer.len(),
            recipe.train.epochs
        ),
    );
    let mut job = Job::new(recipe, transfer.clone(), &student_path);
    job.heldout = Some(test.clone());
    job.cache = Some(out.join("cache"));
    job.checkpoints = Some(out.join("student.ckpt"));
    job.resume = !args.fresh;
    job.progress = if quiet { Progress::Hidden } else { Progress::Bars };
    job.data_description = data_spec.to_string();
    job.preprocess = preprocess.clone();
    let outcome: Outcome = match pupil_distill::distill(&job, &teacher_path) {
        Err(DistillError::CheckpointMismatch { path, reason }) => {
            if !quiet {
                println!("      the checkpoint in {} is for another run ({reason}): starting over", path.display());
            }
            job.resume = false;
            pupil_distill::distill(&job, &teacher_path)?
        }
        r => r?,
    };
    let teacher_info = outcome.teacher.clone().ok_or_else(|| anyhow!("distillation reported no teacher"))?;
    steps.done(&format!(
        "student: {} epochs{}, {} held-out errors; teacher outputs {} ({})",
        outcome.epochs,
        outcome.resumed_from.map(|e| format!(" (resumed after epoch {e})")).unwrap_or_default(),
        outcome.heldout.map(|e| e.errors.to_string()).unwrap_or_else(|| "–".into()),
        if teacher_info.from_cache { "reused from cache" } else { "computed and cached" },
        teacher_info.cache_file.display()
    ));

    // ---- 2. Quantize.
    let int8_path = out.join("student.int8.onnx");
    steps.begin(2, &format!("quantize: static int8, calibrated on {} transfer examples", args.calibration_examples));
    let qreport = quantize_student(&student_path, &int8_path, &transfer.inputs, transfer.example_len(), args, quiet)?;
    let integer = qreport.kernels.iter().filter(|k| k.integer).count();
    steps.done(&format!(
        "{} → {} ({:.3}×), {}/{} matrix products on integer kernels",
        bytes(qreport.size_before),
        bytes(qreport.size_after),
        qreport.size_ratio(),
        integer,
        qreport.kernels.len()
    ));
    for u in qreport.unit_order.iter().filter(|u| u.reordered) {
        steps.note(&format!(
            "hidden units of `{}` grouped by when they are zero: quads of 4 all zero {:.1}% → {:.1}%",
            u.tensor,
            100.0 * u.zero_quads_before,
            100.0 * u.zero_quads_after
        ));
    }

    // ---- 3. Parity + device bundle.
    let parity_dir = out.join("parity");
    let bundle_path = out.join("student.bundle");
    steps.begin(3, &format!("parity: teacher → student → int8 on {} test examples; device bundle", test.len()));
    let thresholds = ThresholdSet {
        quantization: Some(Thresholds { min_top1_agreement: Some(args.min_int8_agreement), ..Default::default() }),
        ..Default::default()
    };
    let pargs = parity::Args {
        teacher: teacher_path.clone(),
        students: vec![student_path.clone(), int8_path.clone()],
        data: test_spec.clone(),
        limit: args.test_limit,
        thresholds: Default::default(),
        worst: 10,
        layers: false,
        layer_min_sqnr_db: 20.0,
        layer_examples: 64,
        out: Some(parity_dir.clone()),
        load: args.load.clone(),
        json: quiet,
    };
    let (preport, _) = parity::compute(&pargs, thresholds)?;
    let bargs = bundle::Args {
        teacher: teacher_path.clone(),
        student: student_path.clone(),
        data: test_spec.clone(),
        examples: args.bundle_examples,
        output: bundle_path.clone(),
        thresholds: Default::default(),
        load: args.load.clone(),
        json: quiet,
    };
    let breport = bundle::compute(&bargs)?;
    let student_model = parity::load_model(&student_path, args.load.threads)?;
    let verified = student_model.verify_bundle(&Bundle::read(&bundle_path)?)?;
    let gap = |i: usize| preport.gaps.get(i).map(|g| g.comparison.top1_agreement).unwrap_or(f64::NAN);
    steps.done(&format!(
        "student/teacher agreement {:.2}%, int8/student {:.2}%; bundle {} verifies: {}",
        100.0 * gap(0),
        100.0 * gap(1),
        bundle_path.display(),
        if verified.passed { "yes" } else { "NO" }
    ));

    // ---- 4. Profile.
    let profile_dir = out.join("profile");
    steps.begin(4, "profile: teacher, student, int8 student (batch 1)");
    let prof_args = profile::Args {
        model: student_path.clone(),
        compare: None,
        runs: args.runs,
        warmup: 20,
        op_runs: 30,
        batch: 1,
        load: args.load.clone(),
        data: None,
        limit: None,
        top: 10,
        json: quiet,
        out: None,
    };
    let mut reports = Vec::new();
    for (stem, path) in [("teacher", &teacher_path), ("student", &student_path), ("student.int8", &int8_path)] {
        // Every model is profiled on the first test image (the students share the teacher's preprocessing).
        let model = profile::load(path, &prof_args)?;
        let first = test.inputs[..model.example_len()].to_vec();
        reports.push((stem, profile::profile_loaded(path, &model, Some(first), &prof_args)?));
    }
    std::fs::create_dir_all(&profile_dir)?;
    for (stem, r) in &reports {
        crate::charts_profile::latency_histogram(
            r,
            &format!("{stem}: latency"),
            &profile_dir.join(format!("{stem}.latency.svg")),
        )?;
        crate::charts_profile::operator_bars(
            r,
            &format!("{stem}: top operators by time"),
            10,
            &profile_dir.join(format!("{stem}.operators.svg")),
        )?;
    }
    let by_name: std::collections::BTreeMap<&str, &ProfileReport> = reports.iter().map(|(s, r)| (*s, r)).collect();
    pupil_runtime::onnx::write_atomic(
        &profile_dir.join("profile.json"),
        serde_json::to_string_pretty(&by_name)?.as_bytes(),
    )?;
    steps.done(&format!(
        "p50 latency: teacher {}, student {}, int8 {}",
        ms(reports[0].1.latency.p50_ms),
        ms(reports[1].1.latency.p50_ms),
        ms(reports[2].1.latency.p50_ms)
    ));

    // ---- 5. Summary.
    steps.begin(5, "summary");
    let model = |i: usize, path: &Path, agreement: Option<f64>| -> ModelRow {
        let m = &preport.models[i];
        let r = &reports[i].1;
        ModelRow {
            path: path.display().to_string(),
            sha256: m.sha256.clone(),
            file_size: m.file_size,
            parameters: m.parameters,
            test_examples: preport.examples,
            test_errors: m.accuracy.map(|a| ((1.0 - a) * preport.examples as f64).round() as usize),
            top1_agreement_with_teacher: agreement,
            macs_per_example: r.macs.per_example,
            cold_start_ms: r.cold_start.total_ms,
            p50_ms: r.latency.p50_ms,
            p99_ms: r.latency.p99_ms,
        }
    };
    let teacher_row = model(0, &teacher_path, None);
    let student_row = model(1, &student_path, Some(gap(0)));
    let int8_row = model(2, &int8_path, Some(gap(2)));
    let chart = out.join("summary.svg");
    summary_chart(&chart, &teacher_row, &student_row, &int8_row)?;
    let mut artifacts: Vec<(String, String)> = vec![
        ("student (f32 ONNX) + model card".into(), student_path.display().to_string()),
        ("student (int8 ONNX) + model card".into(), int8_path.display().to_string()),
        ("training checkpoints".into(), out.join("student.ckpt").display().to_string()),
        ("cached teacher outputs".into(), teacher_info.cache_file.display().to_string()),
        ("device parity bundle".into(), bundle_path.display().to_string()),
        ("parity report + charts".into(), parity_dir.display().to_string()),
        ("profiles + charts".into(), profile_dir.display().to_string()),
        ("summary chart".into(), chart.display().to_string()),
    ];
    let summary_path = out.join("summary.json");
    artifacts.push(("this summary (JSON)".into(), summary_path.display().to_string()));
    let passed = preport.passed && verified.passed;
    let summary = Summary {
        teacher: teacher_row,
        student: student_row,
        int8: int8_row,
        distill: DistillSummary {
            recipe: job.recipe.name.clone(),
            epochs: outcome.epochs,
            resumed_after_epoch: outcome.resumed_from,
            transfer_examples: transfer.len(),
            teacher_outputs_from_cache: teacher_info.from_cache,
            teacher_outputs_cache: teacher_info.cache_file.display().to_string(),
            examples_per_sec: outcome.examples_per_sec,
            export_max_abs_diff: outcome.parity_max_diff,
        },
        quantize: QuantizeSummary {
            calibration_examples: qreport.calibration_examples,
            quantized_nodes: qreport.quantized_nodes(),
            nodes: qreport.nodes.len(),
            integer_matmuls: integer,
            matmuls: qreport.kernels.len(),
            size_ratio: qreport.size_ratio(),
            unit_order: qreport.unit_order.clone(),
        },
        int8_agreement_with_student: gap(1),
        parity_passed: preport.passed,
        parity_failures: preport.failures.clone(),
        bundle: BundleSummary {
            path: breport.output.clone(),
            examples: breport.examples,
            bytes: breport.bytes,
            verified: verified.passed,
        },
        artifacts,
        seconds: started.elapsed().as_secs_f64(),
        passed,
    };
    pupil_runtime::onnx::write_atomic(&summary_path, serde_json::to_string_pretty(&summary)?.as_bytes())?;
    Ok(summary)
}

/// Static int8 quantization of the student, calibrated on the first transfer examples; copies the model card.
fn quantize_student(
    student: &Path,
    out: &Path,
    inputs: &[f32],
    per: usize,
    args: &Args,
    quiet: bool,
) -> anyhow::Result<QuantizeReport> {
    let bytes = std::fs::read(student).with_context(|| format!("reading {}", student.display()))?;
    let n = args.calibration_examples.min(inputs.len() / per.max(1));
    if n == 0 {
        return Err(anyhow!("--calibration-examples must be at least 1"));
    }
    let spinner = if quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    spinner.set_style(ProgressStyle::with_template("      {spinner} {msg} [{elapsed}]")?);
    spinner.set_message("calibrating and quantizing");
    spinner.enable_steady_tick(Duration::from_millis(100));
    let result = quantize(&bytes, &QuantizeOptions::default(), Some(&inputs[..n * per]));
    spinner.finish_and_clear();
    let (q, report) = result?;
    pupil_runtime::onnx::write_atomic(out, &q)?;
    super::quantize::write_card(student, out, &q, &report)?;
    Ok(report)
}

/// Size, p50 latency and test errors of the students relative to the teacher (teacher = 1).
fn summary_chart(path: &Path, t: &ModelRow, s: &ModelRow, q: &ModelRow) -> anyhow::Result<()> {
    let rel = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let errors = |r: &ModelRow| r.test_errors.unwrap_or(0) as f64;
    let series: Vec<Series> = [("teacher", t), ("student", s), ("student int8", q)]
        .iter()
        .map(|(name, r)| Series {
            name: name.to_string(),
            values: vec![
                rel(r.file_size as f64, t.file_size as f64),
                rel(r.p50_ms, t.p50_ms),
                rel(errors(r), errors(t)),
            ],
        })
        .collect();
    let top = series.iter().flat_map(|s| s.values.iter().copied()).fold(1.0f64, f64::max) * 1.15;
    grouped_bars(
        path,
        "pupil pipeline: students relative to the teacher (teacher = 1; lower is better)",
        "",
        "relative to teacher",
        &["file size".into(), "p50 latency, batch 1".into(), "test errors".into()],
        &series,
        0.0..top,
    )
}

fn ms(v: f64) -> String {
    if v < 1.0 { format!("{:.1} µs", v * 1e3) } else { format!("{v:.2} ms") }
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.2}%", 100.0 * v)).unwrap_or_else(|| "–".into())
}

/// The summary table and where everything went.
fn print_summary(s: &Summary) {
    let rows = [&s.teacher, &s.student, &s.int8];
    let mut t = table(&["", "teacher", "student", "student int8"]);
    let line = |name: &str, f: &dyn Fn(&ModelRow) -> String| {
        let mut v = vec![name.to_string()];
        v.extend(rows.iter().map(|r| f(r)));
        v
    };
    t.add_row(line(&format!("test errors / {}", s.teacher.test_examples), &|r| {
        r.test_errors.map(|e| e.to_string()).unwrap_or_else(|| "–".into())
    }));
    t.add_row(line("top-1 agreement with teacher", &|r| pct(r.top1_agreement_with_teacher)));
    t.add_row(line("file size", &|r| bytes(r.file_size)));
    t.add_row(line("parameters", &|r| r.parameters.to_string()));
    t.add_row(line("MACs / example", &|r| r.macs_per_example.to_string()));
    t.add_row(line("cold start (load + first run)", &|r| ms(r.cold_start_ms)));
    t.add_row(line("p50 latency, batch 1", &|r| ms(r.p50_ms)));
    t.add_row(line("p99 latency, batch 1", &|r| ms(r.p99_ms)));
    println!("{t}");
    println!(
        "int8 vs f32 student: {:.2}% top-1 agreement, {:.3}× the file size, {}/{} matrix products on integer kernels",
        100.0 * s.int8_agreement_with_student,
        s.quantize.size_ratio,
        s.quantize.integer_matmuls,
        s.quantize.matmuls
    );
    println!(
        "distillation: recipe `{}`, {} epochs on {} unlabelled examples, {:.0} examples/s{}; teacher outputs {}",
        s.distill.recipe,
        s.distill.epochs,
        s.distill.transfer_examples,
        s.distill.examples_per_sec,
        s.distill.resumed_after_epoch.map(|e| format!(", resumed after epoch {e}")).unwrap_or_default(),
        if s.distill.teacher_outputs_from_cache { "reused from cache" } else { "computed and cached" }
    );
    let mut a = table(&["artifact", "path"]);
    for (what, path) in &s.artifacts {
        a.add_row(vec![what.clone(), path.clone()]);
    }
    println!("{a}");
    for f in &s.parity_failures {
        eprintln!("FAIL {f}");
    }
    if !s.bundle.verified {
        eprintln!("FAIL the device bundle does not verify against the student it was made for");
    }
    println!("{} in {:.0} s", if s.passed { "PASS: every check holds" } else { "FAIL: see above" }, s.seconds);
}
