//! Post-training quantization of ONNX students into graphs that tract runs on its i8×i8→i32 kernels
//! (static int8 with calibration, dynamic int8, f16 weights), with a report of what was quantized and which
//! kernel tract selected for every matrix product.
//!
//! Graph forms (measured on tract 0.23.9, see `docs/quantize.md`):
//! - `Conv` → `QLinearConv` (int32 bias, per-channel weight scales, the following `Relu` folded into the output
//!   range, requantization fused by tract into the kernel's epilogue);
//! - `Gemm` → `Unsqueeze → QLinearConv 1×1 → Squeeze` (QLinearMatMul has no bias input; the 1×1 conv form keeps
//!   the bias in int32 and tract declutters it to the same quantized matmul);
//! - `MatMul` → `QLinearMatMul`;
//! - a layer whose output only feeds float consumers (the logits) → `MatMulInteger + Add(int32 bias) + Cast + Mul`,
//!   so the last layer's output keeps full precision;
//! - `MaxPool`, `Flatten`, `Reshape`, `Identity` run on the 8-bit tensors directly, so consecutive quantized layers
//!   never go back to f32;
//! - dynamic mode: `DynamicQuantizeLinear → MatMulInteger / ConvInteger → Cast → Mul → Add`.

pub mod arith;
mod calibrate;
mod kernels;
mod reorder;
mod transform;

use serde::{Deserialize, Serialize};

pub use arith::{ActivationType, QParams};
pub use kernels::{KernelReport, kernel_report};
pub use reorder::UnitOrder;

use crate::error::{Error, Result};

/// What kind of quantized model to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// int8 weights and activations, activation ranges from a calibration set.
    #[default]
    Static,
    /// int8 weights; activations quantized at run time from their own range (no calibration data).
    Dynamic,
    /// f16 weights and f16 arithmetic (fast on ARM with FP16); input and output stay f32.
    F16,
}

/// How activation ranges are chosen from the calibration set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CalibrationMethod {
    /// The smallest and largest value seen.
    #[default]
    MinMax,
    /// Clips the tails: the `percentile` and `100 - percentile` percentiles.
    Percentile,
    /// The clipping threshold that minimises the KL divergence between the float and the quantized histograms.
    Entropy,
}

impl std::str::FromStr for CalibrationMethod {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "minmax" | "min-max" => Ok(CalibrationMethod::MinMax),
            "percentile" => Ok(CalibrationMethod::Percentile),
            "entropy" | "kl" => Ok(CalibrationMethod::Entropy),
            _ => Err(format!("unknown calibration method `{s}`: expected minmax, percentile or entropy")),
        }
    }
}

impl std::fmt::Display for CalibrationMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CalibrationMethod::MinMax => "minmax",
            CalibrationMethod::Percentile => "percentile",
            CalibrationMethod::Entropy => "entropy",
        })
    }
}

/// How to quantize.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizeOptions {
    pub mode: Mode,
    pub calibration: CalibrationMethod,
    /// Percentile kept by [`CalibrationMethod::Percentile`], in percent (default 99.99).
    pub percentile: f32,
    /// One weight scale per output channel (default) or one per tensor.
    pub per_channel: bool,
    /// Integer type of the activations (static mode; dynamic mode always uses u8).
    pub activations: ActivationType,
    /// Nodes to keep in f32, by node name or by the name of their output tensor.
    pub keep_float: Vec<String>,
    /// Static mode: group the hidden units between two fully connected layers (`Gemm → Relu → Gemm`) by the
    /// calibration examples on which they are zero, so the int8 kernels skip them four at a time (the same
    /// outputs, bit for bit). Default on.
    #[serde(default = "yes")]
    pub order_units: bool,
}

fn yes() -> bool {
    true
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            mode: Mode::Static,
            calibration: CalibrationMethod::MinMax,
            percentile: 99.99,
            per_channel: true,
            activations: ActivationType::U8,
            keep_float: vec![],
            order_units: true,
        }
    }
}

impl QuantizeOptions {
    /// Dynamic int8 quantization (no calibration data).
    pub fn dynamic() -> Self {
        QuantizeOptions { mode: Mode::Dynamic, ..Default::default() }
    }
    /// The f16 variant.
    pub fn f16() -> Self {
        QuantizeOptions { mode: Mode::F16, ..Default::default() }
    }
}

/// Input the quantizer refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantizeError {
    /// Static quantization needs calibration data.
    #[error("static quantization needs calibration data (or use dynamic mode)")]
    MissingCalibration,
    /// The calibration set holds no example.
    #[error("the calibration set is empty")]
    EmptyCalibration,
    /// The calibration data does not split into examples of the model's input shape.
    #[error(
        "calibration data of {got} values does not split into examples of shape {example_shape:?} ({expected} values each)"
    )]
    CalibrationShape { expected: usize, got: usize, example_shape: Vec<usize> },
    /// A NaN or infinity in the calibration data.
    #[error("non-finite calibration value {value} at index {index}")]
    NonFiniteCalibration { index: usize, value: f32 },
    /// The model already contains quantized operators or tensors.
    #[error("the model is already quantized: node `{node}` is a `{op}`")]
    AlreadyQuantized { node: String, op: String },
    /// The model's shape is outside what the quantizer handles.
    #[error("cannot quantize this model: {reason}")]
    Unsupported { reason: String },
    /// A `keep_float` name matches no node and no tensor.
    #[error("--keep-float `{name}` matches no node or tensor of the model")]
    UnknownKeepFloat { name: String },
}

impl From<QuantizeError> for Error {
    fn from(e: QuantizeError) -> Self {
        Error::Quantize(e)
    }
}

/// Why a node stayed in f32.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum FloatReason {
    /// Listed in `keep_float`.
    KeepFloat,
    /// The operator has no integer form tract runs on integer kernels (e.g. `Softmax`, `Add`).
    NoIntegerForm,
    /// A matrix product whose weights are not a constant initializer.
    WeightsNotConstant,
    /// Attributes or shapes the quantizer does not handle.
    Unsupported(String),
    /// A data-movement operator whose input is f32 anyway.
    InputIsFloat,
}

impl std::fmt::Display for FloatReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FloatReason::KeepFloat => f.write_str("kept float by --keep-float"),
            FloatReason::NoIntegerForm => f.write_str("no integer form on tract"),
            FloatReason::WeightsNotConstant => f.write_str("weights are not a constant"),
            FloatReason::Unsupported(s) => write!(f, "unsupported: {s}"),
            FloatReason::InputIsFloat => f.write_str("input is f32"),
        }
    }
}

/// What happened to one node of the input model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum NodeOutcome {
    /// Rewritten into integer operators (`form` lists them).
    Quantized { form: String },
    /// Folded into the previous quantized node (a `Relu` absorbed by the output range).
    Folded { into: String },
    /// Runs unchanged on the 8-bit tensor (`MaxPool`, `Flatten`, ...).
    PassThrough,
    /// Stays f32.
    KeptFloat { why: FloatReason },
    /// f16 variant: runs in f16.
    Half,
}

/// One node's line of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    pub op: String,
    #[serde(flatten)]
    pub outcome: NodeOutcome,
    /// Output range used for requantization, when the node's output is quantized.
    pub output_range: Option<(f32, f32)>,
}

/// What the quantizer did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizeReport {
    pub mode: Mode,
    pub calibration: Option<CalibrationMethod>,
    pub activations: ActivationType,
    pub per_channel: bool,
    pub calibration_examples: usize,
    pub size_before: u64,
    pub size_after: u64,
    pub nodes: Vec<NodeReport>,
    /// The kernel tract selected for every matrix product of the quantized model (batch 1).
    pub kernels: Vec<KernelReport>,
    /// Operators of the optimised tract graph that recompute something from constants on every run
    /// (e.g. a weight `DequantizeLinear` tract could not fold). Empty when all weights are pre-packed.
    pub per_run_constant_ops: Vec<String>,
    /// The hidden layers whose units were grouped by when they are zero (static mode, `order_units`).
    #[serde(default)]
    pub unit_order: Vec<UnitOrder>,
    pub warnings: Vec<String>,
}

impl QuantizeReport {
    /// `size_after / size_before`.
    pub fn size_ratio(&self) -> f64 {
        self.size_after as f64 / self.size_before.max(1) as f64
    }
    /// Number of nodes rewritten to integer operators.
    pub fn quantized_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| matches!(n.outcome, NodeOutcome::Quantized { .. })).count()
    }
}

/// Operators that mean the model is already quantized.
const QUANTIZED_OPS: &[&str] = &[
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "QGemm",
    "QLinearAdd",
    "QLinearMul",
    "QAttention",
    "MatMulNBits",
];

/// Refuses models that already hold quantized operators or int8 weights.
fn check_not_quantized(graph: &tract_onnx::pb::GraphProto) -> Result<()> {
    for node in &graph.node {
        if QUANTIZED_OPS.contains(&node.op_type.as_str()) {
            return Err(QuantizeError::AlreadyQuantized { node: node.name.clone(), op: node.op_type.clone() }.into());
        }
    }
    if let Some(t) = graph.initializer.iter().find(|t| {
        matches!(t.data_type, crate::onnx::dtype::I8 | crate::onnx::dtype::U8) && t.dims.iter().product::<i64>() > 16
    }) {
        return Err(QuantizeError::AlreadyQuantized { node: t.name.clone(), op: "int8 initializer".into() }.into());
    }
    Ok(())
}

/// Quantizes an ONNX model.
///
/// `calibration` holds examples laid out one after another (the model's input shape without its batch
/// dimension), required in [`Mode::Static`], ignored otherwise. Returns the new model's bytes and the report;
/// the report's kernel list comes from loading the result in tract.
pub fn quantize(
    model_bytes: &[u8],
    options: &QuantizeOptions,
    calibration: Option<&[f32]>,
) -> Result<(Vec<u8>, QuantizeReport)> {
    crate::error::catch_panic("quantizing model", || quantize_inner(model_bytes, options, calibration))
}

fn quantize_inner(
    model_bytes: &[u8],
    options: &QuantizeOptions,
    calibration: Option<&[f32]>,
) -> Result<(Vec<u8>, QuantizeReport)> {
    let proto = crate::model::decode_onnx(model_bytes)?;
    let graph = proto.graph.as_ref().expect("checked by decode_onnx");
    check_not_quantized(graph)?;
    for name in &options.keep_float {
        let known = graph.node.iter().any(|n| &n.name == name || n.output.iter().any(|o| o == name));
        if !known {
            return Err(QuantizeError::UnknownKeepFloat { name: name.clone() }.into());
        }
    }
    let example_shape = transform::example_shape(graph)?;
    let example_len: usize = example_shape.iter().product();

    let (new_proto, nodes, calibration_examples, unit_order) = match options.mode {
        Mode::F16 => {
            let (p, nodes) = transform::to_f16(&proto)?;
            (p, nodes, 0, vec![])
        }
        Mode::Dynamic => {
            let (p, nodes) = transform::quantize_graph(&proto, options, None)?;
            (p, nodes, 0, vec![])
        }
        Mode::Static => {
            let data = calibration.ok_or(QuantizeError::MissingCalibration)?;
            if data.is_empty() {
                return Err(QuantizeError::EmptyCalibration.into());
            }
            if example_len == 0 || data.len() % example_len != 0 {
                return Err(QuantizeError::CalibrationShape {
                    expected: example_len,
                    got: data.len(),
                    example_shape: example_shape.clone(),
                }
                .into());
            }
            if let Some(index) = data.iter().position(|v| !v.is_finite()) {
                return Err(QuantizeError::NonFiniteCalibration { index, value: data[index] }.into());
            }
            let wanted = transform::tensors_to_calibrate(&proto, options);
            let ranges = calibrate::calibrate(&proto, &example_shape, data, &wanted, options)?;
            // The ranges stay those of the model's own order: a tensor's values are the same set in any order.
            let (ordered, unit_order) = if options.order_units {
                reorder::order_units(&proto, &example_shape, data, &ranges, options)?
            } else {
                (proto.clone(), vec![])
            };
            let (p, nodes) = transform::quantize_graph(&ordered, options, Some(&ranges))?;
            (p, nodes, data.len() / example_len, unit_order)
        }
    };
    let bytes = crate::onnx::encode(&new_proto);
    let (kernels, per_run_constant_ops) = kernel_report(&bytes)?;
    let mut warnings = vec![];
    for k in &kernels {
        if k.expected_integer && !k.integer {
            warnings.push(format!(
                "node `{}` is quantized but tract runs it with `{}` ({} accumulator), not an i32 kernel",
                k.node, k.kernel, k.accumulator
            ));
        }
    }
    for op in &per_run_constant_ops {
        warnings.push(format!("tract recomputes `{op}` from constants on every run"));
    }
    let report = QuantizeReport {
        mode: options.mode,
        calibration: (options.mode == Mode::Static).then_some(options.calibration),
        activations: if options.mode == Mode::Dynamic { ActivationType::U8 } else { options.activations },
        per_channel: options.per_channel,
        calibration_examples,
        size_before: model_bytes.len() as u64,
        size_after: bytes.len() as u64,
        nodes,
        kernels,
        per_run_constant_ops,
        unit_order,
        warnings,
    };
    Ok((bytes, report))
}

/// On-device dynamic quantization for apps that ship only the f32 student: loads `path` (and its model card),
/// quantizes its weights to int8 in memory ([`Mode::Dynamic`]) and returns the model running on integer kernels.
pub fn load_dynamic(path: impl AsRef<std::path::Path>, options: crate::ModelOptions) -> Result<crate::Model> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes_dynamic(&bytes, crate::meta::card_path(path), options)
}

fn from_bytes_dynamic(bytes: &[u8], card: std::path::PathBuf, options: crate::ModelOptions) -> Result<crate::Model> {
    let (quantized, _) = quantize_without_report(bytes, &QuantizeOptions::dynamic())?;
    match std::fs::read_to_string(&card) {
        Ok(json) => crate::Model::from_bytes_with_card(&quantized, &json, options),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => crate::Model::from_bytes(&quantized, options),
        Err(e) => Err(Error::io(card, e)),
    }
}

/// Dynamic or f16 quantization without loading the result for the kernel report (faster, for load time).
pub fn quantize_without_report(model_bytes: &[u8], options: &QuantizeOptions) -> Result<(Vec<u8>, Vec<NodeReport>)> {
    crate::error::catch_panic("quantizing model", || {
        let proto = crate::model::decode_onnx(model_bytes)?;
        check_not_quantized(proto.graph.as_ref().expect("checked by decode_onnx"))?;
        let (p, nodes) = match options.mode {
            Mode::Dynamic => transform::quantize_graph(&proto, options, None)?,
            Mode::F16 => transform::to_f16(&proto)?,
            Mode::Static => return Err(QuantizeError::MissingCalibration.into()),
        };
        Ok((crate::onnx::encode(&p), nodes))
    })
}
