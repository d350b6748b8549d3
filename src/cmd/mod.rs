//! The CLI's commands: one module per subcommand, each with its clap `Args` and a `run` returning the exit code.

use clap::{Parser, Subcommand};

mod bench;
mod bundle;
pub mod distill;
mod eval;
pub mod experiment;
mod inspect;
mod parity;
pub mod pipeline;
mod profile;
mod quantize;
mod run;
pub mod train;
mod verify;

/// Distill a big ONNX teacher into a small student, quantize it, verify parity and profile it.
///
/// With no command, runs `pupil pipeline` on the shipped defaults (MNIST and the shipped teacher).
#[derive(Debug, Parser)]
#[command(name = "pupil", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole path on one command: distill → quantize → parity + device bundle → profile → summary (`out/`).
    Pipeline(pipeline::Args),
    /// Inputs, outputs, operators, parameters, size and preprocessing spec of a model.
    Inspect(inspect::Args),
    /// Run a model on one image or .npy file and print the top classes.
    Run(run::Args),
    /// Accuracy and errors of a model on a labelled dataset.
    Eval(eval::Args),
    /// Size, MACs, cold start, latency percentiles, memory and per-operator cost; `--compare` side by side.
    Profile(profile::Args),
    /// Train a network from a recipe on labelled data (e.g. a teacher); exports ONNX + model card.
    Train(train::Args),
    /// Distill a recipe's student from an ONNX teacher over a transfer set; exports ONNX + model card.
    Distill(distill::Args),
    /// pupil vs ONNX Runtime side by side: p50/p90 latency, ratio, cold start (`--generate DIR` writes the suite).
    Bench(bench::Args),
    /// Reproduce a published experiment (hinton-mnist) and write docs/results.
    Experiment(experiment::Args),
    /// Teacher vs student vs quantized students: distillation and quantization gaps, thresholds, charts, layers.
    Parity(parity::Args),
    /// Quantize a student to int8 (static with calibration, or dynamic) or f16 for tract's integer kernels.
    Quantize(quantize::Args),
    /// Record inputs and teacher/student outputs in a parity bundle for checking a student on a device.
    Bundle(bundle::Args),
    /// Check a student against a parity bundle on this machine; exits 2 when a threshold fails.
    Verify(verify::Args),
}

/// Runs a command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let command = cli.command.unwrap_or_else(|| Command::Pipeline(pipeline::Args::defaults()));
    match command {
        Command::Pipeline(a) => pipeline::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Run(a) => run::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Profile(a) => profile::run(a),
        Command::Train(a) => train::run(a),
        Command::Distill(a) => distill::run(a),
        Command::Experiment(a) => experiment::run(a),
        Command::Parity(a) => parity::run(a),
        Command::Bundle(a) => bundle::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Bench(a) => bench::run(a),
    }
}

/// Options shared by every command that loads a model.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Worker threads for inference.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}
