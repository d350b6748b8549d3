//! `pupil train`: supervised training of a network from a recipe on labelled data (how teachers are made).

use std::path::PathBuf;

use pupil_distill::{DataSpec, Job, Outcome, Progress, Recipe};

use crate::output::{print_json, table};

/// Options shared by `pupil train` and `pupil distill`.
#[derive(Debug, Clone, clap::Args)]
pub struct JobArgs {
    /// A recipe TOML file, or a shipped recipe name (quick, tiny, mnist-teacher, mnist-student-800, …).
    #[arg(long)]
    pub recipe: String,
    /// Training data / transfer set: `mnist:DIR[:train|test]`, `npy:X.npy[:Y.npy]` or `images:DIR`.
    #[arg(long)]
    pub data: DataSpec,
    /// Labelled held-out data for per-epoch accuracy (default: the MNIST test split when --data is MNIST).
    #[arg(long)]
    pub heldout: Option<DataSpec>,
    /// Where to write the ONNX model (its model card goes beside it).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the last checkpoint (a killed run loses at most one epoch).
    #[arg(long)]
    pub resume: bool,
    /// Checkpoint directory (default: beside --out, `NAME.ckpt`).
    #[arg(long)]
    pub checkpoints: Option<PathBuf>,
    /// Use only the first N training examples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Stop after this many epochs (checkpoint kept, nothing exported); continue later with --resume.
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

impl JobArgs {
    /// The job these options describe.
    pub fn job(&self) -> anyhow::Result<Job> {
        let recipe = Recipe::load(&self.recipe)?;
        let mut train = self.data.load(None)?;
        if let Some(n) = self.limit {
            train = train.take(n);
        }
        let heldout = match (&self.heldout, &self.data) {
            (Some(h), _) => Some(h.load(None)?),
            (None, DataSpec::Mnist { dir, .. }) => {
                Some(DataSpec::Mnist { dir: dir.clone(), split: pupil_distill::Split::Test }.load(None)?)
            }
            _ => None,
        };
        let mut job = Job::new(recipe, train, &self.out);
        job.heldout = heldout;
        job.resume = self.resume;
        job.checkpoints = self.checkpoints.clone();
        job.stop_after = self.stop_after;
        job.progress = if self.quiet || self.json { Progress::Hidden } else { Progress::Bars };
        job.data_description = self.data.to_string();
        Ok(job)
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub job: JobArgs,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let job = args.job.job()?;
    let outcome = pupil_distill::train(&job)?;
    report(&outcome, args.job.json)?;
    Ok(0)
}

/// Prints an outcome as a table (or JSON).
pub fn report(o: &Outcome, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(o);
    }
    let mut t = table(&["epoch", "lr", "loss", "train acc", "held-out acc", "held-out errors", "examples/s"]);
    for h in &o.history {
        t.add_row(vec![
            h.epoch.to_string(),
            format!("{:.2e}", h.lr),
            format!("{:.4}", h.loss),
            h.train_accuracy.map(|a| format!("{:.2}%", 100.0 * a)).unwrap_or_else(|| "–".into()),
            h.heldout.map(|e| format!("{:.2}%", 100.0 * e.accuracy)).unwrap_or_else(|| "–".into()),
            h.heldout.map(|e| e.errors.to_string()).unwrap_or_else(|| "–".into()),
            format!("{:.0}", h.examples_per_sec),
        ]);
    }
    println!("{t}");
    if let Some(r) = o.resumed_from {
        println!("resumed after epoch {r}");
    }
    if let Some(t) = &o.teacher {
        let acc = t.heldout.map(|e| format!(", held-out {} errors / {}", e.errors, e.examples)).unwrap_or_default();
        let src = if t.from_cache { "cached" } else { "computed" };
        println!(
            "teacher {} (sha256 {}…){acc}; soft targets {src}: {}",
            t.path.display(),
            &t.sha256[..12],
            t.cache_file.display()
        );
    }
    match (&o.model, &o.card) {
        (Some(m), Some(c)) => {
            let h = o.heldout.map(|e| format!("{} errors / {} ({:.2}%)", e.errors, e.examples, 100.0 * e.accuracy));
            println!("model: {}\ncard:  {}", m.display(), c.display());
            if let Some(h) = h {
                println!("held-out: {h}");
            }
            if let Some(d) = o.parity_max_diff {
                println!("export parity: max |onnx − burn| = {d:.2e} ✓");
            }
        }
        _ => println!(
            "stopped after epoch {} (checkpoint in {}); continue with --resume",
            o.epochs,
            o.checkpoint_dir.display()
        ),
    }
    Ok(())
}
