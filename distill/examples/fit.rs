//! Trains or distills a model on MNIST without the CLI (for long background runs):
//! `cargo run -p pupil-distill --example fit -- train|distill RECIPE OUT.onnx [--teacher T] [--epochs N] [--resume]`

use pupil_distill::{DataSpec, Job, Progress, Recipe, Split};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let (mode, recipe, out) = (&args[0], &args[1], &args[2]);
    let mut recipe = Recipe::load(recipe)?;
    if let Some(e) = flag("--epochs") {
        recipe.train.epochs = e.parse()?;
    }
    let dir = flag("--mnist").unwrap_or_else(|| "data/mnist".into());
    let train = DataSpec::Mnist { dir: dir.clone().into(), split: Split::Train }.load(None)?;
    let test = DataSpec::Mnist { dir: dir.clone().into(), split: Split::Test }.load(None)?;
    let mut job = Job::new(recipe, train, out);
    job.heldout = Some(test);
    job.resume = args.iter().any(|a| a == "--resume");
    job.checkpoints = flag("--checkpoints").map(Into::into);
    job.cache = flag("--cache").map(Into::into);
    job.progress = if args.iter().any(|a| a == "--quiet") { Progress::Hidden } else { Progress::Bars };
    job.data_description = format!("mnist:{dir}:train");
    let outcome = match mode.as_str() {
        "train" => pupil_distill::train(&job)?,
        "distill" => {
            let t = flag("--teacher").ok_or("distill needs --teacher")?;
            job.train = job.train.unlabeled();
            pupil_distill::distill(&job, t.as_ref())?
        }
        m => return Err(format!("unknown mode {m}").into()),
    };
    for h in &outcome.history {
        println!(
            "epoch {:>3} lr {:.2e} loss {:.4} held-out errors {:?} {:.0} ex/s",
            h.epoch,
            h.lr,
            h.loss,
            h.heldout.map(|e| e.errors),
            h.examples_per_sec
        );
    }
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    Ok(())
}
