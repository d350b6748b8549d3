//! `pupil bench`: pupil against ONNX Runtime on the same ONNX files, same thread count, in one run,
//! interleaved in short turns (each after a pause and a wait until the previous contender's worker threads park):
//! p50/p90 latency at batch 1, the ratio pupil/ORT, cold start, and at one thread the memory roofline (one core
//! reading the model's parameter bytes, timed in the same turns). Also `--generate DIR` to write the benchmark
//! suite (MLPs, CNN, MobileNet-style CNN, f32 and int8).

mod ort_backend;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use pupil_runtime::kernels::{Acceleration, pupil_nodes, zoo};
use pupil_runtime::profile::roofline;
use pupil_runtime::{Model, ModelOptions};
use serde::Serialize;

use crate::output::{print_json, table};
use ort_backend::OrtModel;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder of ONNX models to benchmark (`NAME.int8.onnx` counts as the int8 variant of `NAME.onnx`).
    /// Default: the generated suite, plus the students in `models/` when there are any.
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Write the generated suite (f32 and int8 ONNX files) to this folder and exit.
    #[arg(long, value_name = "DIR")]
    pub generate: Option<PathBuf>,
    /// Thread counts to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Timed runs per contender (after warm-up).
    #[arg(long, default_value_t = 300)]
    pub runs: usize,
    /// Untimed warm-up runs per contender.
    #[arg(long, default_value_t = 30)]
    pub warmup: usize,
    /// Timed runs per contender per turn: the contenders take turns, each running this many times back to back.
    #[arg(long, default_value_t = 4)]
    pub burst: usize,
    /// Pause before each turn, in milliseconds; after it the turn also waits (up to 100 ms, on Linux) until every
    /// other thread of the process has parked, so the previous contender's workers (ONNX Runtime's spin after
    /// every run by default) never share the CPU with the next one. Each turn after a pause starts with one
    /// untimed run. 0: no pause, no wait and no untimed run.
    #[arg(long, default_value_t = 3)]
    pub settle_ms: u64,
    /// Cold starts (load + optimise + first inference) per contender, the contenders taking turns; the median is
    /// reported (the first load of a process also pays one-time set-up: thread pools, ONNX Runtime's environment).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
    pub cold_loads: u32,
    /// Only models whose name contains this text.
    #[arg(long)]
    pub only: Option<String>,
    /// Do not run ONNX Runtime.
    #[arg(long)]
    pub no_ort: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print a Markdown table (for docs/results/speed.md) instead of the terminal table.
    #[arg(long, conflicts_with = "json")]
    pub markdown: bool,
}

/// One ONNX file in the benchmark.
struct Entry {
    name: String,
    precision: &'static str,
    bytes: Vec<u8>,
    source: String,
}

#[derive(Debug, Clone, Serialize)]
struct Latency {
    p50_us: f64,
    p90_us: f64,
    cold_ms: f64,
}

/// Latency percentiles of a timed contender that has no cold start.
#[derive(Debug, Clone, Serialize)]
struct Spread {
    p50_us: f64,
    p90_us: f64,
}

/// How close pupil runs to the memory limit of one core (see [`pupil_runtime::profile::roofline`]).
#[derive(Debug, Clone, Serialize)]
struct Roofline {
    /// The model's parameter bytes: what a batch-1 run of a dense model reads once.
    parameter_bytes: u64,
    /// One core reading that many bytes from an L2-resident buffer (the "L2-bandwidth bound").
    l2_read: Spread,
    /// One core reading them from a buffer of their own size (where the weights live: L2 when they fit, else
    /// L3 or memory): no batch-1 run of a dense model can be faster.
    own_read: Spread,
    /// pupil p50 / `l2_read` p50.
    ratio_pupil_l2_read: f64,
    /// pupil p50 / `own_read` p50.
    ratio_pupil_own_read: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    model: String,
    precision: &'static str,
    threads: usize,
    /// Nodes pupil's own kernels run.
    pupil_kernel_nodes: usize,
    /// tract alone (pupil's kernels off): the "before".
    tract: Latency,
    /// pupil (tract + pupil's kernels): the "after".
    pupil: Latency,
    ort: Option<Latency>,
    /// pupil p50 / ORT p50.
    ratio_pupil_ort: Option<f64>,
    /// tract p50 / ORT p50.
    ratio_tract_ort: Option<f64>,
    /// Largest |pupil − ORT| over the outputs of one input.
    max_abs_diff_vs_ort: Option<f32>,
    /// Largest |pupil − tract| over the outputs of one input.
    max_abs_diff_vs_tract: f32,
    /// The memory roofline, measured at 1 thread only (a one-core bound).
    roofline: Option<Roofline>,
}

#[derive(Debug, Serialize)]
struct Report {
    device: pupil_runtime::DeviceFingerprint,
    ort: Option<String>,
    ort_skipped_because: Option<String>,
    runs: usize,
    warmup: usize,
    burst: usize,
    settle_ms: u64,
    /// Cold starts per contender (the median is reported).
    cold_loads: u32,
    rows: Vec<Row>,
}

/// A timed contender of [`bench_one`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// tract alone (pupil's kernels off).
    Tract,
    Pupil,
    Ort,
    /// The roofline's L2 read.
    L2Read,
    /// The roofline's read from a buffer of the parameters' size.
    OwnRead,
}

/// The longest a turn waits, after its pause, for the other threads of this process to park.
const PARK_WAIT_CAP: Duration = Duration::from_millis(100);

/// Waits, up to `cap`, until no thread of this process but the caller is running (Linux: every other
/// `/proc/self/task/*/stat` in a state other than `R`), so that a contender's turn never shares the CPU with the
/// previous contender's workers: ONNX Runtime's spin for a while after each run, and on a 2-core machine a
/// spinning worker takes the core the next contender's helper thread needs. `Some(true)` when they parked,
/// `Some(false)` when `cap` ran out first, `None` where threads cannot be listed.
fn wait_until_others_park(cap: Duration) -> Option<bool> {
    let me = std::fs::read_link("/proc/thread-self").ok()?;
    let me = me.file_name()?.to_owned();
    let t0 = Instant::now();
    loop {
        let mut running = false;
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            if task.file_name() == me {
                continue;
            }
            // `pid (comm) S ...`: the state follows the last ')' (comm may itself hold parentheses).
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
            if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('R')) {
                running = true;
                break;
            }
        }
        if !running {
            return Some(true);
        }
        if t0.elapsed() >= cap {
            return Some(false);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn is_int8(name: &str) -> bool {
    name.contains(".int8") || name.contains("-int8") || name.contains("_int8")
}

/// The generated suite: f32 models and their int8 variants from pupil's quantizer (static, per-channel,
/// calibrated on random inputs in `[0, 1)`, see [`quantized`]); the plain `QLinearMatMul` MLPs when the quantizer
/// refuses. Only the models whose name contains `only` (all with `None`), so a narrowed run quantizes nothing it
/// drops.
fn generated(only: Option<&str>) -> anyhow::Result<Vec<Entry>> {
    let mut v = vec![];
    let standin = zoo::suite_int8_standin();
    for m in zoo::suite_f32().into_iter().filter(|m| only.is_none_or(|o| m.name.contains(o))) {
        let int8 = match quantized(&m.bytes) {
            Ok((bytes, report)) => Some(Entry {
                name: m.name.clone(),
                precision: "int8",
                bytes,
                source: format!(
                    "generated, pupil quantize (static, per-channel, minmax, {} calibration inputs){}",
                    report.calibration_examples,
                    report
                        .unit_order
                        .iter()
                        .filter(|u| u.reordered)
                        .map(|u| format!(
                            "; {} units grouped: zero quads {:.0}% → {:.0}%",
                            u.tensor,
                            100.0 * u.zero_quads_before,
                            100.0 * u.zero_quads_after
                        ))
                        .collect::<String>()
                ),
            }),
            Err(e) => {
                eprintln!("{}: pupil quantize failed ({e:#}); using the plain QLinearMatMul variant if any", m.name);
                standin.iter().find(|s| s.name == format!("{}.int8", m.name)).map(|s| Entry {
                    name: m.name.clone(),
                    precision: "int8",
                    bytes: s.bytes.clone(),
                    source: "generated (QLinearMatMul)".into(),
                })
            }
        };
        v.push(Entry { name: m.name, precision: "f32", bytes: m.bytes, source: "generated".into() });
        v.extend(int8);
    }
    Ok(v)
}

/// int8 variant from pupil's quantizer, calibrated on random inputs in `[0, 1)` (the benchmark's input
/// distribution): 1000 of them (`pupil quantize`'s default), fewer for big inputs (at most 4 Mi values, at least 64).
fn quantized(f32_bytes: &[u8]) -> anyhow::Result<(Vec<u8>, pupil_runtime::quantize::QuantizeReport)> {
    let model = Model::from_bytes(f32_bytes, ModelOptions::default())?;
    let mut rng = zoo::Rng::new(99);
    let examples = ((4 << 20) / model.example_len().max(1)).clamp(64, 1000);
    let calibration: Vec<f32> = (0..examples * model.example_len()).map(|_| rng.unit()).collect();
    let options = pupil_runtime::quantize::QuantizeOptions::default();
    Ok(pupil_runtime::quantize::quantize(f32_bytes, &options, Some(&calibration))?)
}

fn from_dir(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    files.sort();
    let mut v = vec![];
    for f in files {
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string();
        let precision = if is_int8(&stem) { "int8" } else { "f32" };
        let name = stem.replace(".int8", "").replace("-int8", "").replace("_int8", "");
        let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        v.push(Entry { name, precision, bytes, source: f.display().to_string() });
    }
    Ok(v)
}

fn generate(dir: &Path) -> anyhow::Result<i32> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut t = table(&["file", "size", "source"]);
    for e in generated(None)? {
        let suffix = if e.precision == "int8" { ".int8" } else { "" };
        let path = dir.join(format!("{}{suffix}.onnx", e.name));
        pupil_runtime::onnx::write_atomic(&path, &e.bytes)?;
        t.add_row(vec![path.display().to_string(), crate::output::bytes(e.bytes.len() as u64), e.source]);
    }
    println!("{t}");
    Ok(0)
}

fn load_pupil(bytes: &[u8], threads: usize, accel: Acceleration) -> anyhow::Result<(Model, Duration)> {
    Acceleration::set_default(Some(accel));
    let t0 = Instant::now();
    let model = Model::from_bytes(bytes, ModelOptions::default().with_threads(threads));
    Acceleration::set_default(None);
    let model = model?;
    Ok((model, t0.elapsed()))
}

/// pupil's (or tract's alone) cold start on `input`: load + optimise + first inference; the model and its output.
fn cold_pupil(
    bytes: &[u8],
    threads: usize,
    accel: Acceleration,
    input: &[f32],
) -> anyhow::Result<(Model, Vec<f32>, Duration)> {
    let (model, load) = load_pupil(bytes, threads, accel)?;
    let t0 = Instant::now();
    let out = model.run(input)?;
    Ok((model, out, load + t0.elapsed()))
}

/// ONNX Runtime's cold start on `input`: session + first inference; the session and its output.
fn cold_ort(
    bytes: &[u8],
    shape: &[usize],
    threads: usize,
    input: &[f32],
) -> anyhow::Result<(OrtModel, Vec<f32>, Duration)> {
    let t0 = Instant::now();
    let mut o = OrtModel::load(bytes, shape, threads).map_err(anyhow::Error::msg)?;
    let out = o.run(input).map_err(anyhow::Error::msg)?;
    Ok((o, out, t0.elapsed()))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn bench_one(e: &Entry, threads: usize, args: &Args, use_ort: bool, input_seed: u64) -> anyhow::Result<Row> {
    // Cold start: load + optimise + first inference.
    let (tract, t_load) = load_pupil(&e.bytes, threads, Acceleration::Off)?;
    let mut rng = zoo::Rng::new(input_seed);
    let input: Vec<f32> = (0..tract.example_len()).map(|_| rng.unit()).collect();
    let t0 = Instant::now();
    let out_tract = tract.run(&input)?;
    let tract_cold = t_load + t0.elapsed();
    let (pupil, out_pupil, pupil_cold) = cold_pupil(&e.bytes, threads, Acceleration::On, &input)?;
    let kernel_nodes = pupil_nodes(pupil.typed_model()).len();

    let mut ort = None;
    let mut ort_cold = Duration::ZERO;
    let mut out_ort = None;
    if use_ort {
        let (o, out, cold) = cold_ort(&e.bytes, tract.example_shape(), threads, &input)?;
        ort_cold = cold;
        out_ort = Some(out);
        ort = Some(o);
    }
    // More cold starts, the contenders taking turns (rotating who goes first): one load is too noisy to compare.
    let mut colds = [vec![tract_cold], vec![pupil_cold], vec![ort_cold]];
    let contenders = if use_ort { 3 } else { 2 };
    for turn in 1..args.cold_loads as usize {
        for slot in 0..contenders {
            let who = (slot + turn) % contenders;
            let cold = match who {
                0 => cold_pupil(&e.bytes, threads, Acceleration::Off, &input)?.2,
                1 => cold_pupil(&e.bytes, threads, Acceleration::On, &input)?.2,
                _ => cold_ort(&e.bytes, tract.example_shape(), threads, &input)?.2,
            };
            colds[who].push(cold);
        }
    }
    let [tract_cold, pupil_cold, ort_cold] = colds.map(|mut c| {
        c.sort();
        c[c.len() / 2]
    });

    // The timed contenders, in turn order: tract, pupil, ORT, then at one thread the two roofline readers.
    let parameter_bytes: u64 = pupil.info().parameter_bytes.values().sum();
    let readers = (threads == 1).then(|| {
        [
            roofline::Reader::from_l2(parameter_bytes as usize),
            roofline::Reader::from_own_buffer(parameter_bytes as usize),
        ]
    });
    let mut timed = vec![Who::Tract, Who::Pupil];
    if ort.is_some() {
        timed.push(Who::Ort);
    }
    if readers.is_some() {
        timed.extend([Who::L2Read, Who::OwnRead]);
    }
    let mut run = |who: Who| -> anyhow::Result<()> {
        match who {
            Who::Tract => drop(tract.run(&input)?),
            Who::Pupil => drop(pupil.run(&input)?),
            Who::Ort => {
                if let Some(o) = ort.as_mut() {
                    drop(o.run(&input).map_err(anyhow::Error::msg)?)
                }
            }
            // `Reader::run` keeps its loads alive itself.
            Who::L2Read => drop(readers.as_ref().map(|[l2, _]| l2.run())),
            Who::OwnRead => drop(readers.as_ref().map(|[_, own]| own.run())),
        }
        Ok(())
    };
    for _ in 0..args.warmup {
        for &who in &timed {
            run(who)?;
        }
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); timed.len()];
    let settle = Duration::from_millis(args.settle_ms);
    let mut turn = 0;
    let mut parked = Vec::new();
    while times.iter().any(|t| t.len() < args.runs) {
        // Rotate who goes first so no contender always runs on a cache warmed by the same neighbour.
        for slot in 0..timed.len() {
            let i = (slot + turn) % timed.len();
            let left = args.runs - times[i].len();
            if left == 0 {
                continue;
            }
            if !settle.is_zero() {
                std::thread::sleep(settle);
                parked.push(wait_until_others_park(PARK_WAIT_CAP));
                run(timed[i])?;
            }
            for _ in 0..args.burst.min(left) {
                let t0 = Instant::now();
                run(timed[i])?;
                times[i].push(t0.elapsed());
            }
        }
        turn += 1;
    }
    for t in times.iter_mut() {
        t.sort();
    }
    let times_of = |who: Who| timed.iter().position(|&w| w == who).map(|i| times[i].as_slice());
    let turns_after_unparked = parked.iter().filter(|&&p| p == Some(false)).count();
    if turns_after_unparked > 0 {
        tracing::warn!(
            "{}: {turns_after_unparked} of {} turns started while another thread of this process still ran after \
             {PARK_WAIT_CAP:?} (another contender's workers spinning?)",
            e.name,
            parked.len()
        );
    }
    let spread = |t: &[Duration]| Spread { p50_us: percentile(t, 0.5), p90_us: percentile(t, 0.9) };
    let lat = |t: &[Duration], cold: Duration| {
        let Spread { p50_us, p90_us } = spread(t);
        Latency { p50_us, p90_us, cold_ms: cold.as_secs_f64() * 1e3 }
    };
    let tract_l = lat(times_of(Who::Tract).unwrap_or_default(), tract_cold);
    let pupil_l = lat(times_of(Who::Pupil).unwrap_or_default(), pupil_cold);
    let ort_l = times_of(Who::Ort).map(|t| lat(t, ort_cold));
    let roofline = times_of(Who::L2Read).zip(times_of(Who::OwnRead)).map(|(l2, own)| {
        let (l2_read, own_read) = (spread(l2), spread(own));
        Roofline {
            parameter_bytes,
            ratio_pupil_l2_read: pupil_l.p50_us / l2_read.p50_us,
            ratio_pupil_own_read: pupil_l.p50_us / own_read.p50_us,
            l2_read,
            own_read,
        }
    });
    Ok(Row {
        model: e.name.clone(),
        precision: e.precision,
        threads,
        pupil_kernel_nodes: kernel_nodes,
        ratio_pupil_ort: ort_l.as_ref().map(|o| pupil_l.p50_us / o.p50_us),
        ratio_tract_ort: ort_l.as_ref().map(|o| tract_l.p50_us / o.p50_us),
        max_abs_diff_vs_ort: out_ort.as_ref().map(|o| max_abs_diff(&out_pupil, o)),
        max_abs_diff_vs_tract: max_abs_diff(&out_pupil, &out_tract),
        roofline,
        tract: tract_l,
        pupil: pupil_l,
        ort: ort_l,
    })
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    if let Some(dir) = &args.generate {
        return generate(dir);
    }
    if args.threads.is_empty() || args.threads.contains(&0) {
        bail!("--threads needs counts of at least 1, got {:?}", args.threads);
    }
    if args.runs == 0 || args.burst == 0 {
        bail!("--runs and --burst must be at least 1, got {} and {}", args.runs, args.burst);
    }
    let mut entries = match &args.models {
        Some(dir) => from_dir(dir)?,
        None => {
            let mut v = generated(args.only.as_deref())?;
            let students = Path::new("models");
            if students.is_dir() {
                v.extend(from_dir(students)?);
            }
            v
        }
    };
    if let Some(only) = &args.only {
        entries.retain(|e| e.name.contains(only.as_str()));
    }
    if entries.is_empty() {
        bail!("no models to benchmark");
    }
    let (use_ort, ort_version, ort_skip) = if args.no_ort {
        (false, None, Some("--no-ort".to_string()))
    } else {
        match ort_backend::init() {
            Ok(lib) => (true, Some(format!("{} ({})", ort_backend::version(), lib.display())), None),
            Err(why) => {
                eprintln!("ONNX Runtime skipped: {why}");
                (false, None, Some(why))
            }
        }
    };
    let total = (entries.len() * args.threads.len()) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("valid template"));
    let mut rows = vec![];
    for e in &entries {
        for &t in &args.threads {
            bar.set_message(format!("{} {} ×{t}", e.name, e.precision));
            match bench_one(e, t, &args, use_ort, 7) {
                Ok(r) => rows.push(r),
                Err(err) => {
                    // Not lost when stderr is no terminal (the bar, and so its `println`, is hidden then).
                    let line = format!("{} ({}, {}): {err:#}", e.name, e.precision, e.source);
                    if bar.is_hidden() { eprintln!("{line}") } else { bar.println(line) }
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let report = Report {
        device: pupil_runtime::DeviceFingerprint::current(),
        ort: ort_version,
        ort_skipped_because: ort_skip,
        runs: args.runs,
        warmup: args.warmup,
        burst: args.burst,
        settle_ms: args.settle_ms,
        cold_loads: args.cold_loads,
        rows,
    };
    if args.json {
        print_json(&report)?;
        return Ok(0);
    }
    if args.markdown {
        println!("{}", markdown(&report));
    } else {
        println!("{}", terminal_table(&report));
    }
    Ok(0)
}

/// The report as a GitHub Markdown table.
fn markdown(r: &Report) -> String {
    let mut s = header(r);
    s.push_str("\n| model | prec | threads | tract p50 µs (before) | pupil p50 / p90 µs | ORT p50 / p90 µs | pupil/ORT | tract/ORT | cold start pupil / ORT ms | pupil kernel nodes | max abs Δ vs ORT |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for row in &r.rows {
        let na = || "–".to_string();
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {:.1} / {} | {} | {} |\n",
            row.model,
            row.precision,
            row.threads,
            us(row.tract.p50_us),
            us(row.pupil.p50_us),
            us(row.pupil.p90_us),
            row.ort.as_ref().map(|o| format!("{} / {}", us(o.p50_us), us(o.p90_us))).unwrap_or_else(na),
            row.ratio_pupil_ort.map(|x| format!("**{x:.2}**")).unwrap_or_else(na),
            row.ratio_tract_ort.map(|x| format!("{x:.2}")).unwrap_or_else(na),
            row.pupil.cold_ms,
            row.ort.as_ref().map(|o| format!("{:.1}", o.cold_ms)).unwrap_or_else(na),
            row.pupil_kernel_nodes,
            row.max_abs_diff_vs_ort.map(|d| format!("{d:.2e}")).unwrap_or_else(na),
        ));
    }
    let roofline: Vec<_> = roofline_rows(r).collect();
    if !roofline.is_empty() {
        s.push_str(&format!("\n{ROOFLINE_TITLE}\n\n| {} |\n", ROOFLINE_COLUMNS.join(" | ")));
        s.push_str(&format!("|{}\n", "---|".repeat(ROOFLINE_COLUMNS.len())));
        for cells in roofline {
            s.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
    }
    s
}

const ROOFLINE_TITLE: &str = "Memory roofline, 1 thread: one core reading the model's parameter bytes in the same turns, from an \
     L2-resident buffer and from a buffer of their own size (where the weights live)";

const ROOFLINE_COLUMNS: [&str; 7] = [
    "model",
    "prec",
    "parameters",
    "L2 read p50 µs",
    "own-size read p50 µs",
    "pupil / L2 read",
    "pupil / own-size read",
];

/// The cells of the roofline table, one row per 1-thread row.
fn roofline_rows(r: &Report) -> impl Iterator<Item = Vec<String>> + '_ {
    r.rows.iter().filter_map(|row| {
        let f = row.roofline.as_ref()?;
        Some(vec![
            row.model.clone(),
            row.precision.to_string(),
            crate::output::bytes(f.parameter_bytes),
            us(f.l2_read.p50_us),
            us(f.own_read.p50_us),
            format!("{:.2}", f.ratio_pupil_l2_read),
            format!("{:.2}", f.ratio_pupil_own_read),
        ])
    })
}

fn header(r: &Report) -> String {
    let mut s =
        format!("{} ({}, {} cores; SIMD: {})\n", r.device.cpu, r.device.arch, r.device.cores, r.device.simd.join(" "));
    match (&r.ort, &r.ort_skipped_because) {
        (Some(v), _) => s.push_str(&format!("ONNX Runtime {v}\n")),
        (None, Some(why)) => s.push_str(&format!("ONNX Runtime skipped: {why}\n")),
        _ => {}
    }
    s.push_str(&format!(
        "batch 1, {} timed runs after {} warm-up, interleaved in turns of {} runs (before each: a {} ms pause, then a wait until the other threads park); cold start: median of {} loads each, in turns\n",
        r.runs, r.warmup, r.burst, r.settle_ms, r.cold_loads
    ));
    s
}

fn us(v: f64) -> String {
    if v >= 1000.0 { format!("{:.0}", v) } else { format!("{:.1}", v) }
}

/// The report as the table printed on the terminal (comfy-table).
fn terminal_table(r: &Report) -> String {
    let mut t = table(&[
        "model",
        "prec",
        "thr",
        "tract p50 µs",
        "pupil p50/p90 µs",
        "ORT p50/p90 µs",
        "pupil/ORT",
        "tract/ORT",
        "cold pupil/ORT ms",
        "pupil kernels",
        "max |Δ| vs ORT",
    ]);
    for row in &r.rows {
        let na = || "–".to_string();
        t.add_row(vec![
            row.model.clone(),
            row.precision.to_string(),
            row.threads.to_string(),
            us(row.tract.p50_us),
            format!("{} / {}", us(row.pupil.p50_us), us(row.pupil.p90_us)),
            row.ort.as_ref().map(|o| format!("{} / {}", us(o.p50_us), us(o.p90_us))).unwrap_or_else(na),
            row.ratio_pupil_ort.map(|x| format!("{x:.2}")).unwrap_or_else(na),
            row.ratio_tract_ort.map(|x| format!("{x:.2}")).unwrap_or_else(na),
            format!(
                "{:.1} / {}",
                row.pupil.cold_ms,
                row.ort.as_ref().map(|o| format!("{:.1}", o.cold_ms)).unwrap_or_else(na)
            ),
            row.pupil_kernel_nodes.to_string(),
            row.max_abs_diff_vs_ort.map(|d| format!("{d:.2e}")).unwrap_or_else(na),
        ]);
    }
    let mut s = header(r);
    s.push_str(&t.to_string());
    let roofline: Vec<_> = roofline_rows(r).collect();
    if !roofline.is_empty() {
        let mut t = table(&ROOFLINE_COLUMNS);
        for cells in roofline {
            t.add_row(cells);
        }
        s.push_str(&format!("\n{ROOFLINE_TITLE}\n{t}"));
    }
    s
}
