//! `pupil eval`: accuracy and error count of a model on a labelled dataset, with a confusion summary.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use pupil_distill::DataSpec;
use pupil_runtime::{Batch, Model, ModelOptions, prediction::argmax};

use crate::output::{print_json, table};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model.
    pub model: PathBuf,
    /// Labelled data: `mnist:DIR[:train|test]`, `npy:X.npy:Y.npy` or `images:DIR` (class subfolders).
    #[arg(long)]
    pub data: DataSpec,
    /// Evaluate only the first N examples.
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub load: super::LoadArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct EvalReport {
    pub model: String,
    pub data: String,
    pub examples: usize,
    pub errors: usize,
    pub accuracy: f64,
    /// Per class: (examples, errors).
    pub per_class: Vec<(usize, usize)>,
    /// The first errors: (index, label, predicted).
    pub first_errors: Vec<(usize, u32, usize)>,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let options = ModelOptions { threads: args.load.threads, batch: Batch::Symbolic, ..Default::default() };
    let model = Model::load(&args.model, options.clone())
        .or_else(|_| Model::load(&args.model, ModelOptions { batch: Batch::Fixed(1), ..options }))?;
    let mut ds = args.data.load(model.meta().preprocess.as_ref())?;
    if let Some(n) = args.limit {
        ds = ds.take(n);
    }
    ds.check_example_len(model.example_len())?;
    let labels =
        ds.labels.clone().ok_or_else(|| anyhow::anyhow!("`{}` has no labels: eval needs labelled data", args.data))?;
    ds.check_labels(model.classes())?;
    let bar = ProgressBar::new(ds.len() as u64)
        .with_style(ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}]")?);
    bar.set_message("eval");
    let chunk = 500;
    let mut predicted = Vec::with_capacity(ds.len());
    for start in (0..ds.len()).step_by(chunk) {
        let end = (start + chunk).min(ds.len());
        let per = ds.example_len();
        let out = model.run_batch(&ds.inputs[start * per..end * per])?;
        predicted.extend(out.chunks(model.classes()).map(argmax));
        bar.set_position(end as u64);
    }
    bar.finish_and_clear();
    let mut per_class = vec![(0usize, 0usize); model.classes()];
    let mut first_errors = vec![];
    for (i, (&l, &p)) in labels.iter().zip(&predicted).enumerate() {
        per_class[l as usize].0 += 1;
        if l as usize != p {
            per_class[l as usize].1 += 1;
            if first_errors.len() < 20 {
                first_errors.push((i, l, p));
            }
        }
    }
    let errors: usize = per_class.iter().map(|c| c.1).sum();
    let report = EvalReport {
        model: args.model.display().to_string(),
        data: args.data.to_string(),
        examples: ds.len(),
        errors,
        accuracy: 1.0 - errors as f64 / ds.len() as f64,
        per_class,
        first_errors,
    };
    if args.json {
        print_json(&report)?;
        return Ok(0);
    }
    println!(
        "{} on {}: {} errors / {} examples, accuracy {:.2}%",
        report.model,
        report.data,
        report.errors,
        report.examples,
        100.0 * report.accuracy
    );
    let mut t = table(&["class", "examples", "errors", "accuracy"]);
    for (c, (n, e)) in report.per_class.iter().enumerate() {
        let name = model.labels().and_then(|l| l.get(c).cloned()).unwrap_or_else(|| c.to_string());
        let acc = if *n == 0 { "-".to_string() } else { format!("{:.2}%", 100.0 * (1.0 - *e as f64 / *n as f64)) };
        t.add_row(vec![name, n.to_string(), e.to_string(), acc]);
    }
    println!("{t}");
    Ok(0)
}
