//! `pupil bundle`: records inputs, the teacher's and the student's outputs, labels and thresholds in a parity
//! bundle, so a phone can check the student without the teacher (`pupil verify`, `Model::verify_bundle`).

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use pupil_distill::DataSpec;
use pupil_runtime::parity::{Bundle, BundleMeta, CreatedBy, Thresholds, bundle::FORMAT_VERSION, compare};
use serde::Serialize;

use super::parity::{ThresholdArgs, load_model, run_logits, short_name};
use crate::output::{print_json, table};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The teacher whose outputs are recorded.
    #[arg(long)]
    pub teacher: PathBuf,
    /// The student the bundle is made for (its sha256 is recorded; other models are refused).
    #[arg(long)]
    pub student: PathBuf,
    /// Data: `mnist:DIR[:train|test]`, `npy:X.npy[:Y.npy]` or `images:DIR`.
    #[arg(long)]
    pub data: DataSpec,
    /// Number of examples (the first N of the data).
    #[arg(short = 'n', long, default_value_t = 256)]
    pub examples: usize,
    /// The bundle file to write.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Limits checked on the device. With none at all, the bundle records `[device] min_top1_agreement = 0.99`
    /// and `min_sqnr_db = 30` (the same student on another CPU must give nearly the same logits).
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
    #[command(flatten)]
    pub load: super::LoadArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct BundleReport {
    pub output: String,
    pub bytes: u64,
    pub examples: usize,
    pub classes: usize,
    pub example_shape: Vec<usize>,
    pub student_sha256: String,
    pub teacher_sha256: String,
    pub labels: bool,
    /// Agreement of the student with the teacher on the recorded examples (host).
    pub top1_agreement: f64,
    pub accuracy: Option<f64>,
    pub thresholds: pupil_runtime::parity::ThresholdSet,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let report = compute(&args)?;
    if args.json {
        print_json(&report)?;
        return Ok(0);
    }
    let mut t = table(&["field", "value"]);
    t.add_row(vec!["bundle".to_string(), format!("{} ({})", report.output, crate::output::bytes(report.bytes))]);
    t.add_row(vec!["examples".to_string(), format!("{} of {} {:?}", report.examples, args.data, report.example_shape)]);
    t.add_row(vec!["labels".to_string(), if report.labels { "yes".into() } else { "no".into() }]);
    t.add_row(vec!["student sha256".to_string(), report.student_sha256.clone()]);
    t.add_row(vec!["teacher sha256".to_string(), report.teacher_sha256.clone()]);
    t.add_row(vec!["student/teacher top-1 agreement".to_string(), format!("{:.2}%", 100.0 * report.top1_agreement)]);
    if let Some(a) = report.accuracy {
        t.add_row(vec!["student accuracy".to_string(), format!("{:.2}%", 100.0 * a)]);
    }
    t.add_row(vec!["thresholds".to_string(), serde_json::to_string(&report.thresholds)?]);
    println!("{t}");
    Ok(0)
}

/// Runs teacher and student over the data and writes the bundle; returns what was recorded.
pub(crate) fn compute(args: &Args) -> anyhow::Result<BundleReport> {
    if args.examples == 0 {
        return Err(anyhow!("-n must be at least 1"));
    }
    let mut thresholds = args.thresholds.load()?;
    if thresholds.is_empty() {
        thresholds.device =
            Some(Thresholds { min_top1_agreement: Some(0.99), min_sqnr_db: Some(30.0), ..Default::default() });
    }
    let teacher = load_model(&args.teacher, args.load.threads)?;
    let student = load_model(&args.student, args.load.threads)?;
    if teacher.classes() != student.classes() {
        return Err(anyhow!(
            "the teacher has {} output classes, the student {}: they cannot be compared",
            teacher.classes(),
            student.classes()
        ));
    }
    let spec = student.meta().preprocess.as_ref().or(teacher.meta().preprocess.as_ref());
    let ds = args.data.load(spec)?.take(args.examples);
    ds.check_labels(student.classes())?;
    let teacher_logits = run_logits(&teacher, &ds, &short_name(&args.teacher))?;
    let student_logits = run_logits(&student, &ds, &short_name(&args.student))?;
    let bundle = Bundle {
        meta: BundleMeta {
            format_version: FORMAT_VERSION,
            student_sha256: student.info().sha256.clone(),
            teacher_sha256: Some(teacher.info().sha256.clone()),
            examples: ds.len(),
            example_shape: student.example_shape().to_vec(),
            classes: student.classes(),
            data: args.data.to_string(),
            thresholds: thresholds.clone(),
            created_by: CreatedBy::here(),
        },
        inputs: ds.inputs.clone(),
        teacher_logits,
        student_logits,
        labels: ds.labels.clone(),
    };
    bundle.write(&args.output).with_context(|| format!("writing {}", args.output.display()))?;
    let bytes = std::fs::metadata(&args.output).map(|m| m.len()).unwrap_or(0);
    let cmp =
        compare(&bundle.teacher_logits, &bundle.student_logits, bundle.meta.classes, bundle.labels.as_deref(), 0)?;
    let report = BundleReport {
        output: args.output.display().to_string(),
        bytes,
        examples: bundle.meta.examples,
        classes: bundle.meta.classes,
        example_shape: bundle.meta.example_shape.clone(),
        student_sha256: bundle.meta.student_sha256.clone(),
        teacher_sha256: teacher.info().sha256.clone(),
        labels: bundle.labels.is_some(),
        top1_agreement: cmp.top1_agreement,
        accuracy: cmp.accuracy,
        thresholds,
    };
    Ok(report)
}
