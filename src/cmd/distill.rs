//! `pupil distill`: knowledge distillation of a recipe's student from any ONNX teacher over a transfer set.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The teacher ONNX model (run by pupil's runtime; its outputs are cached).
    #[arg(long)]
    pub teacher: PathBuf,
    /// Teacher-output cache directory.
    #[arg(long, default_value = "out/cache")]
    pub cache: PathBuf,
    #[command(flatten)]
    pub job: super::train::JobArgs,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let mut job = args.job.job()?;
    job.cache = Some(args.cache);
    let outcome = pupil_distill::distill(&job, &args.teacher)?;
    super::train::report(&outcome, args.job.json)?;
    Ok(0)
}
