//! `pupil experiment hinton-mnist`: reproduces the MNIST table of Hinton, Vinyals & Dean (2015) with pupil alone
//! and writes `docs/results/hinton-mnist.{md,json}`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use pupil_distill::{DataSpec, Dataset, Eval, Job, Outcome, Progress, Recipe, Split};
use serde::Serialize;

use crate::output::table;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which experiment.
    #[arg(value_enum)]
    pub experiment: Experiment,
    /// Directory holding the MNIST IDX files.
    #[arg(long, default_value = "data/mnist")]
    pub mnist: PathBuf,
    /// Use this already-trained teacher instead of training one (its errors are measured again).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Epochs for the teacher (default: the recipe's).
    #[arg(long)]
    pub teacher_epochs: Option<usize>,
    /// Epochs for the 800-800 students (default: the recipes').
    #[arg(long)]
    pub student_epochs: Option<usize>,
    /// Epochs for the 30-unit students (default: the recipe's).
    #[arg(long)]
    pub small_epochs: Option<usize>,
    /// Where models, checkpoints and the teacher cache go.
    #[arg(long, default_value = "out/hinton-mnist")]
    pub work: PathBuf,
    /// Where the report goes.
    #[arg(long, default_value = "docs/results")]
    pub results: PathBuf,
    /// Continue interrupted trainings from their checkpoints.
    #[arg(long)]
    pub resume: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Experiment {
    /// Hinton et al. 2015, section 3 (MNIST).
    HintonMnist,
}

#[derive(Debug, Serialize)]
struct Row {
    row: String,
    paper: String,
    errors: Option<usize>,
    examples: usize,
    epochs: Option<usize>,
    model: Option<String>,
    note: String,
}

#[derive(Debug, Serialize)]
struct Report {
    experiment: &'static str,
    command: String,
    rows: Vec<Row>,
    speed: Speed,
    minutes: f64,
}

#[derive(Debug, Serialize)]
struct Speed {
    model: String,
    batch: usize,
    pupil_examples_per_sec: f64,
    pytorch_examples_per_sec: Option<f64>,
    pytorch_note: String,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let Experiment::HintonMnist = args.experiment;
    let started = Instant::now();
    let progress = if args.quiet { Progress::Hidden } else { Progress::Bars };
    let train = DataSpec::Mnist { dir: args.mnist.clone(), split: Split::Train }.load(None)?;
    let test = DataSpec::Mnist { dir: args.mnist.clone(), split: Split::Test }.load(None)?;
    let work = &args.work;
    std::fs::create_dir_all(work)?;
    let job = |recipe: Recipe, data: Dataset, name: &str| {
        let mut j = Job::new(recipe, data, work.join(format!("{name}.onnx")));
        j.heldout = Some(test.clone());
        j.progress = progress;
        j.resume = args.resume;
        j.cache = Some(work.join("cache"));
        j.data_description = format!("mnist:{}:train", args.mnist.display());
        j
    };
    let with_epochs = |mut r: Recipe, e: Option<usize>| {
        if let Some(e) = e {
            r.train.epochs = e;
        }
        r
    };
    let mut rows = Vec::new();

    // 1. Teacher.
    let (teacher, teacher_eval, teacher_epochs) = match &args.teacher {
        Some(path) => {
            let eval = pupil_distill::eval_onnx(path, &test)?;
            let epochs = card_epochs(path);
            (path.clone(), eval, epochs)
        }
        None => {
            let recipe = with_epochs(Recipe::load("mnist-teacher")?, args.teacher_epochs);
            let o = pupil_distill::train(&job(recipe, train.clone(), "teacher"))?;
            (o.model.clone().expect("exported"), o.heldout.expect("held-out"), Some(o.epochs))
        }
    };
    rows.push(Row {
        row: "teacher 784-1200-1200-10, dropout + max-norm, ±2 px jitter".into(),
        paper: "67".into(),
        errors: Some(teacher_eval.errors),
        examples: teacher_eval.examples,
        epochs: teacher_epochs,
        model: Some(teacher.display().to_string()),
        note: String::new(),
    });

    // 2. Hard-label 800-800 student.
    let recipe = with_epochs(Recipe::load("mnist-student-800")?, args.student_epochs);
    let hard = pupil_distill::train(&job(recipe, train.clone(), "student-800-hard"))?;
    rows.push(row_of("student 784-800-800-10, hard labels, no regularization", "146", &hard, ""));
    let speed = Speed {
        model: "784-800-800-10 MLP, Adam, forward+backward+step".into(),
        batch: 128,
        pupil_examples_per_sec: median_speed(&hard),
        pytorch_examples_per_sec: None,
        pytorch_note: String::new(),
    };
    let speed = pytorch_speed(speed);

    // 3. Distilled 800-800 student at T = 20.
    let recipe = with_epochs(Recipe::load("mnist-student-800-distill")?, args.student_epochs);
    let soft = pupil_distill::distill(&job(recipe, train.clone().unlabeled(), "student-800-distilled"), &teacher)?;
    rows.push(row_of("same student, distilled at T = 20 (unjittered transfer set, no labels)", "74", &soft, ""));
    // 3b. The same, with the hard labels added as the paper's 74 had them (the recipe's alpha, e.g. 0.9 · soft + 0.1 · hard).
    let recipe = with_epochs(Recipe::load("mnist-student-800-distill")?, args.student_epochs);
    let alpha = recipe.distill.alpha;
    if alpha < 1.0 {
        let mixed = pupil_distill::distill(&job(recipe, train.clone(), "student-800-distilled-labels"), &teacher)?;
        rows.push(row_of(
            &format!("same student, distilled at T = 20 with the hard labels added (alpha = {alpha})"),
            "74",
            &mixed,
            "the paper's student was trained on soft and hard targets",
        ));
    }

    // 3c. Beyond the paper: a ±2 px jittered transfer set, the teacher run on every shifted copy (the shipped
    // student's recipe), against the hard-label student trained with the same jitter and schedule.
    let jittered = with_epochs(Recipe::load("mnist-student-800-distill-jitter")?, args.student_epochs);
    let mut hard_jittered = Recipe::load("mnist-student-800")?;
    hard_jittered.name = "mnist-student-800-jitter".into();
    hard_jittered.train.jitter = jittered.train.jitter;
    hard_jittered.train.epochs = jittered.train.epochs;
    let jitter = jittered.train.jitter;
    let o = pupil_distill::train(&job(hard_jittered, train.clone(), "student-800-hard-jitter"))?;
    rows.push(row_of(
        &format!("student 784-800-800-10, hard labels, ±{jitter} px jitter (reference for the next row)"),
        "–",
        &o,
        "",
    ));
    let (alpha, t) = (jittered.distill.alpha, jittered.distill.temperature);
    let o = pupil_distill::distill(&job(jittered, train.clone(), "student-800-distilled-jitter"), &teacher)?;
    rows.push(row_of(
        &format!("same student, distilled at T = {t} on a ±{jitter} px jittered transfer set, hard labels added (alpha = {alpha})"),
        "–",
        &o,
        "the teacher is run on every shifted copy; the shipped student's recipe",
    ));

    // 4. 30-unit students over temperatures (and the hard-label 30-unit baseline for reference).
    let small = with_epochs(Recipe::load("mnist-student-30")?, args.small_epochs);
    let o = pupil_distill::train(&job(small.clone(), train.clone(), "student-30-hard"))?;
    rows.push(row_of("30-unit student 784-30-30-10, hard labels (reference)", "–", &o, ""));
    for t in [1.0, 2.5, 4.0, 8.0, 20.0] {
        let mut r = small.clone();
        r.distill.temperature = t;
        let o = pupil_distill::distill(&job(r, train.clone().unlabeled(), &format!("student-30-T{t}")), &teacher)?;
        rows.push(row_of(&format!("30-unit student distilled at T = {t}"), "best at T 2.5–4", &o, ""));
    }

    // 5. Transfer set with every 3 removed; then raise the 3-bias.
    let keep: Vec<usize> = (0..train.len()).filter(|&i| train.labels.as_ref().is_some_and(|l| l[i] != 3)).collect();
    let no3 = train.select(&keep).unlabeled();
    let mut r = with_epochs(Recipe::load("mnist-student-800-distill")?, args.student_epochs);
    r.name = "mnist-student-800-distill-no3".into();
    let o = pupil_distill::distill(&job(r, no3, "student-800-no3"), &teacher)?;
    let model = o.model.clone().expect("exported");
    let (before, threes_before, shift, after, threes_after) = bias_sweep(&model, &test)?;
    rows.push(Row {
        row: format!("800-800 distilled, transfer set without 3s ({} examples): before raising the 3-bias", keep.len()),
        paper: "206 (133 on 3s)".into(),
        errors: Some(before),
        examples: test.len(),
        epochs: Some(o.epochs),
        model: Some(model.display().to_string()),
        note: format!("{threes_before} errors on the 1010 test 3s"),
    });
    rows.push(Row {
        row: format!("same, after raising the 3-bias by {shift:.1}"),
        paper: "109 (14 on 3s)".into(),
        errors: Some(after),
        examples: test.len(),
        epochs: Some(o.epochs),
        model: None,
        note: format!("{threes_after} errors on 3s; shift chosen on the test set, as in the paper"),
    });

    let command = std::iter::once("pupil".to_string()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" ");
    let report =
        Report { experiment: "hinton-mnist", command, rows, speed, minutes: started.elapsed().as_secs_f64() / 60.0 };
    write_report(&args.results, &report)?;
    let mut t = table(&["row", "paper (errors/10k)", "pupil (errors/10k)", "epochs"]);
    for r in &report.rows {
        t.add_row(vec![
            r.row.clone(),
            r.paper.clone(),
            r.errors.map(|e| e.to_string()).unwrap_or_else(|| "–".into()),
            r.epochs.map(|e| e.to_string()).unwrap_or_else(|| "–".into()),
        ]);
    }
    println!("{t}");
    println!(
        "800-800 student training speed at batch 128: pupil {:.0} examples/s; PyTorch: {}",
        report.speed.pupil_examples_per_sec,
        report
            .speed
            .pytorch_examples_per_sec
            .map(|s| format!("{s:.0} examples/s"))
            .unwrap_or(report.speed.pytorch_note.clone())
    );
    println!("wrote {}/hinton-mnist.md and .json", args.results.display());
    Ok(0)
}

fn row_of(name: &str, paper: &str, o: &Outcome, note: &str) -> Row {
    let e: Eval = o.heldout.expect("held-out set given");
    Row {
        row: name.into(),
        paper: paper.into(),
        errors: Some(e.errors),
        examples: e.examples,
        epochs: Some(o.epochs),
        model: o.model.as_ref().map(|m| m.display().to_string()),
        note: note.into(),
    }
}

/// The median of the per-epoch training speeds in a run's whole history (epochs resumed from a checkpoint
/// included): robust to the epochs slowed by other work on a shared machine, and not zero when every epoch was
/// already done.
fn median_speed(o: &Outcome) -> f64 {
    let mut v: Vec<f64> = o.history.iter().map(|e| e.examples_per_sec).filter(|s| s.is_finite()).collect();
    if v.is_empty() {
        return o.examples_per_sec;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn card_epochs(model: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(pupil_runtime::meta::card_path(model)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["metrics"]["epochs"].as_u64().map(|e| e as usize)
}

/// Errors before/after adding the best constant to class 3's logit: (before, 3s before, shift, after, 3s after).
fn bias_sweep(model: &Path, test: &Dataset) -> anyhow::Result<(usize, usize, f32, usize, usize)> {
    let m = pupil_runtime::Model::load(
        model,
        pupil_runtime::ModelOptions { batch: pupil_runtime::Batch::Symbolic, threads: 2, top_k: 1 },
    )?;
    let logits = m.run_batch(&test.inputs)?;
    let labels = test.labels.as_ref().expect("MNIST test labels");
    let count = |shift: f32| {
        let (mut all, mut threes) = (0, 0);
        for (i, row) in logits.chunks(10).enumerate() {
            let mut r = row.to_vec();
            r[3] += shift;
            let p = pupil_runtime::prediction::argmax(&r);
            if p != labels[i] as usize {
                all += 1;
                if labels[i] == 3 {
                    threes += 1;
                }
            }
        }
        (all, threes)
    };
    let (before, tb) = count(0.0);
    let mut best = (before, tb, 0.0f32);
    for k in 1..=40 {
        let s = k as f32 * 0.5;
        let (a, t) = count(s);
        if a < best.0 {
            best = (a, t, s);
        }
    }
    Ok((before, tb, best.2, best.0, best.1))
}

/// Times PyTorch on the same model and batch size, only if `python3 -c 'import torch'` works.
fn pytorch_speed(mut s: Speed) -> Speed {
    let ok =
        std::process::Command::new("python3").args(["-c", "import torch"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        s.pytorch_note = "not measured: PyTorch is not installed on this machine".into();
        return s;
    }
    let script = r#"
import time, torch
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Linear(784,800), torch.nn.ReLU(), torch.nn.Linear(800,800), torch.nn.ReLU(), torch.nn.Linear(800,10))
opt = torch.optim.Adam(m.parameters(), 1e-3)
x = torch.rand(128, 784); y = torch.randint(0, 10, (128,))
for _ in range(20):
    opt.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step()
n = 300; t = time.time()
for _ in range(n):
    opt.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step()
print(n * 128 / (time.time() - t))
"#;
    match std::process::Command::new("python3").args(["-c", script]).output() {
        Ok(o) if o.status.success() => {
            s.pytorch_examples_per_sec = String::from_utf8_lossy(&o.stdout).trim().parse().ok();
            s.pytorch_note = format!("PyTorch {} CPU, same machine, same run", torch_version());
        }
        _ => s.pytorch_note = "PyTorch is installed but the timing script failed".into(),
    }
    s
}

fn torch_version() -> String {
    std::process::Command::new("python3")
        .args(["-c", "import torch; print(torch.__version__)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn write_report(dir: &Path, r: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(r)?;
    pupil_runtime::onnx::write_atomic(&dir.join("hinton-mnist.json"), json.as_bytes())?;
    let mut md = String::new();
    md += "# Hinton, Vinyals & Dean (2015), MNIST — reproduced with pupil\n\n";
    md += "Test errors out of 10,000 MNIST test images. Measured by `pupil experiment hinton-mnist` on this machine \
           (2 shared CPU cores, burn 0.22.1 Flex backend); every number below comes from that run.\n\n";
    md += "| row | paper | pupil | epochs | note |\n|---|---|---|---|---|\n";
    for row in &r.rows {
        md += &format!(
            "| {} | {} | {} | {} | {} |\n",
            row.row,
            row.paper,
            row.errors.map(|e| e.to_string()).unwrap_or_else(|| "–".into()),
            row.epochs.map(|e| e.to_string()).unwrap_or_else(|| "–".into()),
            row.note
        );
    }
    md += &format!(
        "\n## Training speed\n\n{} at batch {}: **pupil {:.0} examples/s** (median over the hard-label student's \
         epochs); PyTorch: {}.\n",
        r.speed.model,
        r.speed.batch,
        r.speed.pupil_examples_per_sec,
        r.speed
            .pytorch_examples_per_sec
            .map(|s| format!("{s:.0} examples/s ({})", r.speed.pytorch_note))
            .unwrap_or(r.speed.pytorch_note.clone())
    );
    md += &format!("\n## Rerun\n\n```\n{}\n```\n\nThe run took {:.1} minutes.\n", r.command, r.minutes);
    pupil_runtime::onnx::write_atomic(&dir.join("hinton-mnist.md"), md.as_bytes())?;
    Ok(())
}
