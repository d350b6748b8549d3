//! `pupil quantize`: writes an int8 (static or dynamic) or f16 model that tract runs on integer kernels, and
//! reports per node what happened and which kernel tract selected for every matrix product.

use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use pupil_distill::DataSpec;
use pupil_runtime::quantize::{ActivationType, CalibrationMethod, Mode, NodeOutcome, QuantizeOptions, quantize};
use pupil_runtime::{Model, ModelOptions};

use crate::output::{bytes, print_json, table};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The f32 ONNX model.
    pub model: PathBuf,
    /// Calibration data (the transfer set): `mnist:DIR[:train|test]`, `npy:X.npy` or `images:DIR`.
    #[arg(long, required_unless_present_any = ["dynamic", "f16"])]
    pub calibrate: Option<DataSpec>,
    /// Use the first N calibration examples.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// Where to write the quantized model (default: MODEL.int8.onnx, or MODEL.f16.onnx with --f16).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Dynamic quantization: int8 weights, activations quantized at run time (no calibration data needed).
    #[arg(long, conflicts_with = "f16")]
    pub dynamic: bool,
    /// Write an f16-weight variant instead of int8.
    #[arg(long)]
    pub f16: bool,
    /// How activation ranges are chosen: minmax, percentile or entropy.
    #[arg(long, default_value = "minmax")]
    pub calibration: CalibrationMethod,
    /// Percentile kept by `--calibration percentile`.
    #[arg(long, default_value_t = 99.99)]
    pub percentile: f32,
    /// One weight scale per tensor instead of per output channel.
    #[arg(long)]
    pub per_tensor: bool,
    /// Activations as signed int8 instead of uint8.
    #[arg(long)]
    pub i8_activations: bool,
    /// Keep this node (node name or output tensor name) in f32; repeatable.
    #[arg(long = "keep-float", value_name = "NODE")]
    pub keep_float: Vec<String>,
    /// Keep the hidden units in the model's order (by default they are grouped by the calibration examples on
    /// which they are zero, so the int8 kernels skip them four at a time; the outputs are the same).
    #[arg(long)]
    pub keep_unit_order: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let mode = if args.f16 {
        Mode::F16
    } else if args.dynamic {
        Mode::Dynamic
    } else {
        Mode::Static
    };
    let options = QuantizeOptions {
        mode,
        calibration: args.calibration,
        percentile: args.percentile,
        per_channel: !args.per_tensor,
        activations: if args.i8_activations { ActivationType::I8 } else { ActivationType::U8 },
        keep_float: args.keep_float.clone(),
        order_units: !args.keep_unit_order,
    };
    let model_bytes =
        std::fs::read(&args.model).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.model.display()))?;
    let calibration = match (&args.calibrate, mode) {
        (Some(spec), Mode::Static) => {
            let model = Model::load(&args.model, ModelOptions::default())?;
            let ds = spec.load(model.meta().preprocess.as_ref())?;
            let ds = ds.take(args.limit.min(ds.len()));
            ds.check_example_len(model.example_len())?;
            Some(ds.inputs)
        }
        _ => None,
    };
    let spinner = ProgressBar::new_spinner().with_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")?);
    if !args.json {
        spinner.set_message(match mode {
            Mode::Static => "calibrating and quantizing",
            Mode::Dynamic => "quantizing (dynamic)",
            Mode::F16 => "converting to f16",
        });
        spinner.enable_steady_tick(Duration::from_millis(100));
    }
    let result = quantize(&model_bytes, &options, calibration.as_deref());
    spinner.finish_and_clear();
    let (out_bytes, report) = result?;
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args.model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        let suffix = if mode == Mode::F16 { "f16" } else { "int8" };
        args.model.with_file_name(format!("{stem}.{suffix}.onnx"))
    });
    pupil_runtime::onnx::write_atomic(&out, &out_bytes)?;
    write_card(&args.model, &out, &out_bytes, &report)?;
    if args.json {
        print_json(&serde_json::json!({ "output": out.display().to_string(), "report": report }))?;
        return Ok(0);
    }
    println!(
        "{} → {}: {} → {} ({:.3}×), {} of {} nodes quantized{}",
        args.model.display(),
        out.display(),
        bytes(report.size_before),
        bytes(report.size_after),
        report.size_ratio(),
        report.quantized_nodes(),
        report.nodes.len(),
        match report.calibration {
            Some(c) => format!(
                ", {c} calibration on {} examples, {} activations",
                report.calibration_examples, report.activations
            ),
            None => String::new(),
        }
    );
    let mut t = table(&["node", "op", "outcome", "output range"]);
    for n in &report.nodes {
        let outcome = match &n.outcome {
            NodeOutcome::Quantized { form } => format!("int8: {form}"),
            NodeOutcome::Folded { into } => format!("folded into {into}"),
            NodeOutcome::PassThrough => "runs on int8 tensor".into(),
            NodeOutcome::KeptFloat { why } => format!("f32 ({why})"),
            NodeOutcome::Half => "f16".into(),
        };
        let range = n.output_range.map(|(a, b)| format!("[{a:.3}, {b:.3}]")).unwrap_or_default();
        t.add_row(vec![n.node.clone(), n.op.clone(), outcome, range]);
    }
    println!("{t}");
    for u in &report.unit_order {
        println!(
            "hidden units of `{}` ({}): {}; quads of 4 all zero on the calibration set {:.1}% → {:.1}%",
            u.tensor,
            u.units,
            if u.reordered { "grouped by when they are zero" } else { "kept in order (grouping gains nothing)" },
            100.0 * u.zero_quads_before,
            100.0 * u.zero_quads_after
        );
    }
    let mut k = table(&["node", "op", "tract kernel", "acc", "m×k×n", "integer"]);
    for r in &report.kernels {
        let mark = match (r.expected_integer, r.integer) {
            (_, true) => "yes",
            (true, false) => "NO (expected)",
            (false, false) => "no",
        };
        k.add_row(vec![
            r.node.clone(),
            r.op.clone(),
            r.kernel.clone(),
            r.accumulator.clone(),
            r.shape.clone(),
            mark.into(),
        ]);
    }
    println!("matrix products in tract's optimised graph (batch 1):\n{k}");
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    Ok(0)
}

/// Writes the quantized model's card from the float model's (when it has one): the same labels and preprocessing,
/// its own sha256, where it came from and how it was quantized; the float model's metrics are kept under
/// `float_model_metrics`, since they were measured on the float model.
pub(crate) fn write_card(
    float_model: &std::path::Path,
    out: &std::path::Path,
    out_bytes: &[u8],
    report: &pupil_runtime::quantize::QuantizeReport,
) -> anyhow::Result<()> {
    let card = pupil_runtime::meta::card_path(float_model);
    let out_card = pupil_runtime::meta::card_path(out);
    if !card.exists() || out_card == card {
        return Ok(());
    }
    let text = std::fs::read_to_string(&card).map_err(|e| anyhow::anyhow!("reading {}: {e}", card.display()))?;
    let mut v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", card.display()))?;
    if let Some(obj) = v.as_object_mut() {
        let float_sha = obj.insert("sha256".into(), pupil_runtime::model::sha256_hex(out_bytes).into());
        if let Some(m) = obj.remove("metrics") {
            obj.insert("float_model_metrics".into(), m);
        }
        obj.insert(
            "quantized_from".into(),
            serde_json::json!({ "path": float_model.display().to_string(), "sha256": float_sha }),
        );
        obj.insert(
            "quantization".into(),
            serde_json::json!({
                "mode": report.mode,
                "calibration": report.calibration,
                "calibration_examples": report.calibration_examples,
                "activations": report.activations,
                "per_channel": report.per_channel,
                "size_ratio": report.size_ratio(),
            }),
        );
    }
    pupil_runtime::onnx::write_atomic(&out_card, serde_json::to_string_pretty(&v)?.as_bytes())?;
    Ok(())
}
