//! `pupil inspect`: what a model is (inputs, outputs, operators, parameters, size, preprocessing spec).

use std::path::PathBuf;

use pupil_runtime::{Batch, Model, ModelOptions};

use crate::output::{bytes, print_json, table};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model.
    pub model: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    path: String,
    info: &'a pupil_runtime::ModelInfo,
    inputs: &'a [pupil_runtime::TensorSpec],
    outputs: &'a [pupil_runtime::TensorSpec],
    classes: usize,
    meta: &'a pupil_runtime::ModelMeta,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let model = Model::load(&args.model, ModelOptions::default().with_batch(Batch::Symbolic))
        .or_else(|_| Model::load(&args.model, ModelOptions::default()))?;
    let report = Report {
        path: args.model.display().to_string(),
        info: model.info(),
        inputs: model.inputs(),
        outputs: model.outputs(),
        classes: model.classes(),
        meta: model.meta(),
    };
    if args.json {
        print_json(&report)?;
        return Ok(0);
    }
    let info = model.info();
    println!("{}", report.path);
    let mut t = table(&["", ""]);
    t.add_row(vec!["file size".to_string(), format!("{} ({} bytes)", bytes(info.file_size), info.file_size)]);
    t.add_row(vec!["sha256".to_string(), info.sha256.clone()]);
    t.add_row(vec!["opset".to_string(), info.opset.to_string()]);
    t.add_row(vec!["producer".to_string(), info.producer.clone()]);
    t.add_row(vec!["nodes".to_string(), info.node_count.to_string()]);
    let by_type: Vec<String> = info.parameter_bytes.iter().map(|(k, v)| format!("{k}: {}", bytes(*v))).collect();
    t.add_row(vec!["parameters".to_string(), format!("{} ({})", info.parameters, by_type.join(", "))]);
    t.add_row(vec!["classes".to_string(), model.classes().to_string()]);
    println!("{t}");
    let mut io = table(&["", "name", "shape", "type"]);
    for i in model.inputs() {
        io.add_row(vec!["input".into(), i.name.clone(), i.shape_string(), i.dtype.to_string()]);
    }
    for o in model.outputs() {
        io.add_row(vec!["output".into(), o.name.clone(), o.shape_string(), o.dtype.to_string()]);
    }
    println!("{io}");
    let mut ops = table(&["operator", "nodes"]);
    for (op, n) in &info.operators {
        ops.add_row(vec![op.clone(), n.to_string()]);
    }
    println!("{ops}");
    match (&model.meta().preprocess, model.meta().preprocess_source) {
        (Some(spec), Some(source)) => {
            println!(
                "preprocessing ({}): {}",
                serde_json::to_value(source)?.as_str().unwrap_or(""),
                serde_json::to_string(spec)?
            )
        }
        _ => println!("preprocessing: none"),
    }
    match model.labels() {
        Some(l) => println!("labels: {}", l.join(", ")),
        None => println!("labels: none (class indices are shown)"),
    }
    Ok(0)
}
