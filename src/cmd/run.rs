//! `pupil run`: one prediction from an image (PNG/JPEG) or a `.npy` file, printed as top-k.

use std::path::PathBuf;

use anyhow::Context;
use pupil_runtime::{Model, ModelOptions};

use crate::output::{print_json, table};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model.
    pub model: PathBuf,
    /// A PNG/JPEG image (preprocessed with the model's spec) or a .npy array of one example.
    #[arg(long)]
    pub input: PathBuf,
    /// How many classes to show.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    #[command(flatten)]
    pub load: super::LoadArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let options = ModelOptions { threads: args.load.threads, top_k: args.top.max(1), ..Default::default() };
    let model = Model::load(&args.model, options)?;
    let is_npy = args.input.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    let prediction = if is_npy {
        let ds = pupil_distill::data::load_npy(&args.input, None)?;
        ds.check_example_len(model.example_len())?;
        anyhow::ensure!(ds.len() == 1, "{} holds {} examples, `pupil run` takes one", args.input.display(), ds.len());
        model.predict(ds.example(0))?
    } else {
        let bytes = std::fs::read(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?;
        model.predict_image(&bytes)?
    };
    if args.json {
        print_json(&prediction)?;
        return Ok(0);
    }
    let mut t = table(&["rank", "class", "label", "probability", "logit"]);
    for (rank, c) in prediction.top.iter().enumerate() {
        t.add_row(vec![
            (rank + 1).to_string(),
            c.index.to_string(),
            c.label.clone().unwrap_or_else(|| "-".into()),
            format!("{:.4}", c.probability),
            format!("{:.3}", c.logit),
        ]);
    }
    println!("{t}");
    Ok(0)
}
