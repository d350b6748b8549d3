//! `pupil profile`: size, MACs, cold start, latency percentiles, memory and per-operator cost of a model, alone or
//! side by side with another (`--compare`), as a table, JSON and SVG charts.

use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use pupil_distill::DataSpec;
use pupil_runtime::profile::{
    Accuracy, Comparison, ProfileComparison, ProfileOptions, ProfileReport, ProfileStage, memory,
};
use pupil_runtime::{Batch, Model, ModelOptions};

use crate::charts_profile;
use crate::output::{bytes, print_json, table};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model to profile.
    pub model: PathBuf,
    /// A second model to put side by side (ratios read as MODEL against OTHER: "8.1× smaller, 5.3× faster").
    #[arg(long, value_name = "OTHER")]
    pub compare: Option<PathBuf>,
    /// Timed runs after warm-up.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// Untimed warm-up runs.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Runs of the per-operator timing pass (0 skips it).
    #[arg(long, default_value_t = 50)]
    pub op_runs: usize,
    /// Examples per run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    #[command(flatten)]
    pub load: super::LoadArgs,
    /// Labelled data for accuracy (`mnist:DIR[:test]`, `npy:X.npy:Y.npy`, `images:DIR`); its first batch is also
    /// the profiling input.
    #[arg(long)]
    pub data: Option<DataSpec>,
    /// Use only the first N examples of `--data`.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Operators shown in the table and the chart.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Write `profile.json` and SVG charts (latency histogram, operator bars) into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

fn progress_bar(json: bool) -> ProgressBar {
    let bar = if json { ProgressBar::hidden() } else { ProgressBar::new(1) };
    bar.set_style(
        ProgressStyle::with_template("{msg:>28} {bar:40} {pos}/{len} [{elapsed_precise}]").expect("static template"),
    );
    bar
}

/// Loads and profiles one model; adds accuracy when data is given.
pub(crate) fn profile_one(path: &Path, args: &Args) -> anyhow::Result<ProfileReport> {
    let batch = args.batch as usize;
    let model = load(path, args)?;
    let data = match &args.data {
        Some(spec) => {
            let mut ds = spec.load(model.meta().preprocess.as_ref()).with_context(|| format!("loading {spec}"))?;
            if let Some(n) = args.limit {
                ds = ds.take(n);
            }
            ds.check_example_len(model.example_len())?;
            anyhow::ensure!(!ds.is_empty(), "`{spec}` holds no examples");
            Some(ds)
        }
        None => None,
    };
    let input = data.as_ref().map(|ds| {
        let per = ds.example_len();
        // The first `batch` examples, repeated when the data has fewer.
        (0..batch).flat_map(|i| ds.inputs[(i % ds.len()) * per..(i % ds.len() + 1) * per].iter().copied()).collect()
    });
    let mut report = profile_loaded(path, &model, input, args)?;
    if let Some(ds) = &data {
        report.accuracy = Some(accuracy(path, &model, ds, args)?);
    }
    Ok(report)
}

/// Loads a model at the profiled batch, resetting the peak-RSS counter first so the load's own peak is measured
/// exactly (see `pupil_runtime::profile::memory`).
pub(crate) fn load(path: &Path, args: &Args) -> anyhow::Result<Model> {
    let options =
        ModelOptions { batch: Batch::Fixed(args.batch as usize), threads: args.load.threads, ..Default::default() };
    memory::reset_peak();
    Model::load(path, options).with_context(|| format!("loading {}", path.display()))
}

/// Profiles a model loaded by [`load`] on `input` (one batch; synthetic when `None`), with a progress bar.
pub(crate) fn profile_loaded(
    path: &Path,
    model: &Model,
    input: Option<Vec<f32>>,
    args: &Args,
) -> anyhow::Result<ProfileReport> {
    let opts = ProfileOptions {
        runs: args.runs as usize,
        warmup: args.warmup,
        op_runs: args.op_runs,
        batch: Some(args.batch as usize),
        reset_peak_memory: true,
        input,
    };
    let bar = progress_bar(args.json);
    let mut report = model.profile_with_progress(&opts, &mut |stage, done, total| {
        let msg = match stage {
            ProfileStage::FirstInference => "first inference",
            ProfileStage::Warmup => "warm-up",
            ProfileStage::Timing => "timed runs",
            ProfileStage::Operators => "per-operator timing",
        };
        bar.set_message(format!("{} {msg}", short(path)));
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    report.label = Some(path.display().to_string());
    Ok(report)
}

/// Accuracy over the whole data, with a symbolic-batch copy of the model when it has one (much faster than
/// padding every chunk to the profiled batch).
fn accuracy(path: &Path, model: &Model, ds: &pupil_distill::Dataset, args: &Args) -> anyhow::Result<Accuracy> {
    let labels = ds.labels.as_ref().ok_or_else(|| anyhow::anyhow!("`--data` has no labels: accuracy needs them"))?;
    ds.check_labels(model.classes())?;
    let options = ModelOptions { batch: Batch::Symbolic, threads: args.load.threads, ..Default::default() };
    let symbolic = Model::load(path, options).ok();
    let m = symbolic.as_ref().unwrap_or(model);
    let bar = progress_bar(args.json);
    bar.set_message(format!("{} accuracy", short(path)));
    bar.set_length(ds.len() as u64);
    let per = ds.example_len();
    let chunk = 1000;
    let mut correct = 0;
    for start in (0..ds.len()).step_by(chunk) {
        let end = (start + chunk).min(ds.len());
        correct += m.accuracy(&ds.inputs[start * per..end * per], &labels[start..end])?.correct;
        bar.set_position(end as u64);
    }
    bar.finish_and_clear();
    Ok(Accuracy { examples: ds.len(), correct, accuracy: correct as f64 / ds.len() as f64 })
}

fn short(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let subject = profile_one(&args.model, &args)?;
    let reference = match &args.compare {
        Some(other) => Some(profile_one(other, &args)?),
        None => None,
    };
    let comparison = reference.map(|r| ProfileComparison::new(subject.clone(), r));
    if let Some(dir) = &args.out {
        write_out(dir, &args, &subject, comparison.as_ref())?;
    }
    if args.json {
        match &comparison {
            Some(c) => print_json(c)?,
            None => print_json(&subject)?,
        }
        return Ok(0);
    }
    match &comparison {
        Some(c) => print_comparison(c, args.top),
        None => print_single(&subject, args.top),
    }
    if let Some(dir) = &args.out {
        println!("wrote {}", dir.display());
    }
    Ok(0)
}

pub(crate) fn write_out(
    dir: &Path,
    args: &Args,
    subject: &ProfileReport,
    comparison: Option<&ProfileComparison>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = match comparison {
        Some(c) => serde_json::to_string_pretty(c)?,
        None => serde_json::to_string_pretty(subject)?,
    };
    pupil_runtime::onnx::write_atomic(&dir.join("profile.json"), json.as_bytes())?;
    let mut reports = vec![(short(&args.model), subject)];
    if let (Some(c), Some(other)) = (comparison, &args.compare) {
        let mut stem = short(other);
        if stem == reports[0].0 {
            stem = format!("reference-{stem}");
        }
        reports.push((stem, &c.reference));
    }
    for (stem, report) in reports {
        let title = report.label.clone().unwrap_or_else(|| stem.clone());
        charts_profile::latency_histogram(
            report,
            &format!("{title}: latency"),
            &dir.join(format!("{stem}.latency.svg")),
        )?;
        charts_profile::operator_bars(
            report,
            &format!("{title}: top operators by time"),
            args.top,
            &dir.join(format!("{stem}.operators.svg")),
        )?;
    }
    Ok(())
}

fn ms(v: f64) -> String {
    if v < 1.0 { format!("{:.1} µs", v * 1e3) } else { format!("{v:.2} ms") }
}

fn macs(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn memory_cell(g: &Option<memory::MemoryGrowth>) -> String {
    match g {
        Some(g) => {
            format!("{}{} peak, {} kept", if g.exact { "+" } else { "≥ +" }, bytes(g.peak_growth), bytes(g.retained()))
        }
        None => "n/a on this OS".into(),
    }
}

/// The rows both the single and the side-by-side table show: (metric, value).
fn rows(r: &ProfileReport) -> Vec<(&'static str, String)> {
    let l = &r.latency;
    let by_type: Vec<String> = r.model.parameter_bytes.iter().map(|(k, v)| format!("{k} {}", bytes(*v))).collect();
    let c = &r.cold_start;
    let mut rows = vec![
        ("file size", format!("{} ({} B)", bytes(r.model.file_size), r.model.file_size)),
        ("parameters", format!("{} ({})", r.model.parameters, by_type.join(", "))),
        (
            "MACs / example",
            format!("{}{}", macs(r.macs.per_example), if r.macs.complete { "" } else { " (lower bound)" }),
        ),
        ("graph nodes (onnx → tract)", format!("{} → {}", r.model.onnx_nodes, r.model.optimised_nodes)),
        ("cold start", ms(c.total_ms)),
        ("  load", ms(c.load_ms)),
        ("  optimise", ms(c.optimise_ms)),
        (
            "  first inference",
            format!("{}{}", ms(c.first_inference_ms), if c.first_inference_cold { "" } else { " (warm)" }),
        ),
        ("latency p50", ms(l.p50_ms)),
        (
            "  min / p90 / p99 / max",
            format!("{} / {} / {} / {}", ms(l.min_ms), ms(l.p90_ms), ms(l.p99_ms), ms(l.max_ms)),
        ),
        ("  mean ± std", format!("{} ± {}", ms(l.mean_ms), ms(l.std_ms))),
        ("throughput", format!("{:.0} examples/s", r.throughput)),
        ("memory: load", memory_cell(&r.memory.load)),
        ("memory: inference", memory_cell(&r.memory.inference)),
    ];
    if let Some(a) = &r.accuracy {
        rows.push(("accuracy", format!("{:.2}% ({}/{})", 100.0 * a.accuracy, a.correct, a.examples)));
    }
    rows
}

fn settings(r: &ProfileReport) -> String {
    let d = &r.device;
    format!(
        "batch {}, {} thread(s), {} runs after {} warm-up · {} ({} cores, {}; {}) · pupil {} / tract {}",
        r.batch,
        r.threads,
        r.latency.runs,
        r.warmup,
        d.cpu,
        d.cores,
        if d.simd.is_empty() { "no SIMD detected".to_string() } else { d.simd.join(" ") },
        d.os,
        d.pupil_version,
        d.tract_version
    )
}

fn print_operators(r: &ProfileReport, top: usize) {
    let Some(ops) = &r.operators else { return };
    println!(
        "top operators of {} ({} runs timed node by node; {} per run outside nodes):",
        r.label.as_deref().unwrap_or("model"),
        ops.runs,
        ms(ops.overhead_ms)
    );
    let mut t = table(&["#", "node", "op", "kernel", "geometry", "MACs", "mean", "share"]);
    for (i, n) in ops.nodes.iter().take(top).enumerate() {
        t.add_row(vec![
            (i + 1).to_string(),
            n.node.clone(),
            n.op.clone(),
            n.kernel.clone().unwrap_or_else(|| "-".into()),
            n.geometry.clone().unwrap_or_else(|| "-".into()),
            n.macs.map(macs).unwrap_or_else(|| "?".into()),
            ms(n.mean_ms),
            format!("{:.1}%", n.share_pct),
        ]);
    }
    let rest: f64 = ops.nodes.iter().skip(top).map(|n| n.share_pct).sum();
    if ops.nodes.len() > top {
        t.add_row(vec![
            String::new(),
            format!("{} more nodes", ops.nodes.len() - top),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            format!("{rest:.1}%"),
        ]);
    }
    println!("{t}");
}

fn print_single(r: &ProfileReport, top: usize) {
    println!("{}", r.label.as_deref().unwrap_or("model"));
    println!("{}", settings(r));
    let mut t = table(&["metric", "value"]);
    for (k, v) in rows(r) {
        t.add_row(vec![k.to_string(), v]);
    }
    println!("{t}");
    print_operators(r, top);
}

pub(crate) fn print_comparison(c: &ProfileComparison, top: usize) {
    let (s, r) = (&c.subject, &c.reference);
    let sname = s.label.as_deref().unwrap_or("model");
    let rname = r.label.as_deref().unwrap_or("other");
    println!("{sname} vs {rname}: {}", c.comparison.summary);
    println!("{}", settings(s));
    let ratio = |x: Option<f64>, more: &str, less: &str| match x {
        Some(x) if x >= 1.0 => format!("{x:.1}× {more}"),
        Some(x) => format!("{:.1}× {less}", 1.0 / x),
        None => "-".into(),
    };
    let cmp: &Comparison = &c.comparison;
    let mut t = table(&["metric", sname, rname, "ratio"]);
    for ((k, a), (_, b)) in rows(s).into_iter().zip(rows(r)) {
        let rcell = match k {
            "file size" => ratio(cmp.size_ratio, "smaller", "larger"),
            "parameters" => ratio(cmp.parameters_ratio, "fewer", "more"),
            "MACs / example" => ratio(cmp.macs_ratio, "fewer", "more"),
            "cold start" => ratio(cmp.cold_start_ratio, "faster", "slower"),
            "latency p50" => ratio(cmp.speed_ratio, "faster", "slower"),
            "memory: inference" => ratio(cmp.memory_ratio, "less", "more"),
            "accuracy" => cmp.accuracy_delta_pt.map(|d| format!("{d:+.2} pt")).unwrap_or_default(),
            _ => String::new(),
        };
        t.add_row(vec![k.to_string(), a, b, rcell]);
    }
    // Accuracy only on one side (one model failed to get it) still shows.
    println!("{t}");
    print_operators(s, top);
    print_operators(r, top);
}
