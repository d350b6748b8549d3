//! The graph rewrite: from an f32 ONNX graph to integer operators (static or dynamic) or to f16.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb;

use super::arith::{ActivationType, QParams, f16_bits, quantize_bias, quantize_weights};
use super::calibrate::Ranges;
use super::{FloatReason, Mode, NodeOutcome, NodeReport, QuantizeError, QuantizeOptions};
use crate::error::Result;
use crate::onnx::dtype;

/// Operators that move 8-bit values around without arithmetic: they run on the quantized tensor directly.
const PASS_THROUGH: &[&str] = &["MaxPool", "Flatten", "Reshape", "Identity"];

fn unsupported(reason: impl Into<String>) -> QuantizeError {
    QuantizeError::Unsupported { reason: reason.into() }
}

/// The input's shape without its batch dimension.
pub fn example_shape(graph: &pb::GraphProto) -> Result<Vec<usize>> {
    use pb::tensor_shape_proto::dimension::Value as D;
    use pb::type_proto::Value;
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = graph.input.iter().filter(|i| !inits.contains(i.name.as_str())).collect();
    if inputs.len() != 1 {
        return Err(
            unsupported(format!("pupil quantizes single-input models, this one has {} inputs", inputs.len())).into()
        );
    }
    let input = inputs[0];
    let Some(Value::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(unsupported(format!("input `{}` has no tensor type", input.name)).into());
    };
    if t.elem_type != dtype::F32 {
        return Err(
            unsupported(format!("input `{}` must be f32, its element type is {}", input.name, t.elem_type)).into()
        );
    }
    let dims = t.shape.as_ref().map(|s| s.dim.clone()).unwrap_or_default();
    if dims.len() < 2 {
        return Err(unsupported(format!("input `{}` needs a batch dimension and at least one more", input.name)).into());
    }
    dims.iter()
        .enumerate()
        .skip(1)
        .map(|(i, d)| match d.value {
            Some(D::DimValue(v)) if v > 0 => Ok(v as usize),
            _ => Err(unsupported(format!("input `{}` dimension {i} is not fixed", input.name)).into()),
        })
        .collect()
}

pub(super) fn attr_i(node: &pb::NodeProto, name: &str, default: i64) -> i64 {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i).unwrap_or(default)
}

fn attr_f(node: &pb::NodeProto, name: &str, default: f32) -> f32 {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.f).unwrap_or(default)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Gemm,
    MatMul,
    Conv,
}

/// A matrix product with constant weights, normalised: weights `[M, rest...]` with the output channel first.
#[derive(Debug, Clone)]
pub(super) struct Compute {
    pub(super) kind: Kind,
    x: String,
    pub(super) out: String,
    /// Output channel first; for Gemm/MatMul `[M, K]`, for Conv the ONNX kernel layout.
    weight: Vec<f32>,
    weight_dims: Vec<i64>,
    pub(super) m: usize,
    pub(super) k: usize,
    bias: Option<Vec<f32>>,
}

fn analyse(node: &pb::NodeProto, inits: &HashMap<&str, &pb::TensorProto>) -> std::result::Result<Compute, FloatReason> {
    let kind = match node.op_type.as_str() {
        "Gemm" => Kind::Gemm,
        "MatMul" => Kind::MatMul,
        "Conv" => Kind::Conv,
        _ => return Err(FloatReason::NoIntegerForm),
    };
    if !node.domain.is_empty() && node.domain != "ai.onnx" {
        return Err(FloatReason::NoIntegerForm);
    }
    if node.input.len() < 2 || node.output.len() != 1 {
        return Err(FloatReason::Unsupported("unexpected number of inputs or outputs".into()));
    }
    let w = inits.get(node.input[1].as_str()).ok_or(FloatReason::WeightsNotConstant)?;
    let wdata = crate::onnx::f32_data(w).ok_or_else(|| FloatReason::Unsupported("weights are not f32 data".into()))?;
    let bias_init = match node.input.get(2).filter(|s| !s.is_empty()) {
        Some(b) => Some(
            inits
                .get(b.as_str())
                .and_then(|t| crate::onnx::f32_data(t))
                .ok_or_else(|| FloatReason::Unsupported("bias is not a constant f32 initializer".into()))?,
        ),
        None => None,
    };
    match kind {
        Kind::Gemm | Kind::MatMul => {
            if w.dims.len() != 2 {
                return Err(FloatReason::Unsupported(format!("weights of rank {}", w.dims.len())));
            }
            let trans_b = kind == Kind::Gemm && attr_i(node, "transB", 0) != 0;
            if kind == Kind::Gemm && attr_i(node, "transA", 0) != 0 {
                return Err(FloatReason::Unsupported("Gemm with transA".into()));
            }
            let alpha = if kind == Kind::Gemm { attr_f(node, "alpha", 1.0) } else { 1.0 };
            let beta = if kind == Kind::Gemm { attr_f(node, "beta", 1.0) } else { 1.0 };
            let (m, k) = if trans_b {
                (w.dims[0] as usize, w.dims[1] as usize)
            } else {
                (w.dims[1] as usize, w.dims[0] as usize)
            };
            let mut weight = vec![0f32; m * k];
            for r in 0..m {
                for c in 0..k {
                    weight[r * k + c] = alpha * if trans_b { wdata[r * k + c] } else { wdata[c * m + r] };
                }
            }
            let bias = match bias_init {
                Some(b) if b.len() == m => Some(b.iter().map(|v| v * beta).collect()),
                Some(b) if b.len() == 1 => Some(vec![b[0] * beta; m]),
                Some(b) => return Err(FloatReason::Unsupported(format!("bias of {} values for {m} outputs", b.len()))),
                None => None,
            };
            Ok(Compute {
                kind,
                x: node.input[0].clone(),
                out: node.output[0].clone(),
                weight,
                weight_dims: vec![m as i64, k as i64],
                m,
                k,
                bias,
            })
        }
        Kind::Conv => {
            if w.dims.len() < 3 {
                return Err(FloatReason::Unsupported(format!("conv weights of rank {}", w.dims.len())));
            }
            let m = w.dims[0] as usize;
            let k = wdata.len() / m.max(1);
            let bias = match bias_init {
                Some(b) if b.len() == m => Some(b),
                Some(b) => {
                    return Err(FloatReason::Unsupported(format!("bias of {} values for {m} channels", b.len())));
                }
                None => None,
            };
            Ok(Compute {
                kind,
                x: node.input[0].clone(),
                out: node.output[0].clone(),
                weight: wdata,
                weight_dims: w.dims.clone(),
                m,
                k,
                bias,
            })
        }
    }
}

pub(super) struct Analysis<'a> {
    graph: &'a pb::GraphProto,
    pub(super) inits: HashMap<&'a str, &'a pb::TensorProto>,
    pub(super) consumers: HashMap<&'a str, Vec<usize>>,
    pub(super) outputs: HashSet<&'a str>,
    keep: HashSet<&'a str>,
}

impl<'a> Analysis<'a> {
    pub(super) fn new(graph: &'a pb::GraphProto, options: &'a QuantizeOptions) -> Self {
        let inits = graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            for inp in &n.input {
                consumers.entry(inp.as_str()).or_default().push(i);
            }
        }
        Analysis {
            graph,
            inits,
            consumers,
            outputs: graph.output.iter().map(|o| o.name.as_str()).collect(),
            keep: options.keep_float.iter().map(|s| s.as_str()).collect(),
        }
    }

    fn kept(&self, node: &pb::NodeProto) -> bool {
        self.keep.contains(node.name.as_str()) || node.output.iter().any(|o| self.keep.contains(o.as_str()))
    }

    pub(super) fn compute(&self, i: usize) -> std::result::Result<Compute, FloatReason> {
        let node = &self.graph.node[i];
        let c = analyse(node, &self.inits)?;
        if self.kept(node) {
            return Err(FloatReason::KeepFloat);
        }
        Ok(c)
    }

    /// The `Relu` (with its one output) that alone consumes `out`, if any.
    pub(super) fn relu_after(&self, out: &str) -> Option<usize> {
        if self.outputs.contains(out) {
            return None;
        }
        match self.consumers.get(out).map(|v| v.as_slice()) {
            Some([r]) => {
                let n = &self.graph.node[*r];
                (n.op_type == "Relu" && n.output.len() == 1 && !self.kept(n)).then_some(*r)
            }
            _ => None,
        }
    }

    /// Whether some consumer of `tensor` takes an 8-bit input (a quantizable product or a pass-through op).
    fn has_quantized_consumer(&self, tensor: &str) -> bool {
        self.consumers.get(tensor).is_some_and(|cs| {
            cs.iter().any(|&c| {
                let n = &self.graph.node[c];
                (n.input.first().map(|s| s.as_str()) == Some(tensor))
                    && (self.compute(c).is_ok() || (PASS_THROUGH.contains(&n.op_type.as_str()) && n.output.len() == 1))
            })
        })
    }
}

/// Tensors whose ranges static quantization needs.
pub fn tensors_to_calibrate(proto: &pb::ModelProto, options: &QuantizeOptions) -> Vec<String> {
    let graph = proto.graph.as_ref().expect("checked by decode_onnx");
    let a = Analysis::new(graph, options);
    let mut wanted: Vec<String> = vec![];
    let mut push = |s: &str| {
        if !wanted.iter().any(|w| w == s) {
            wanted.push(s.to_string());
        }
    };
    for i in 0..graph.node.len() {
        if let Ok(c) = a.compute(i) {
            push(&c.x);
            push(&c.out);
            if let Some(r) = a.relu_after(&c.out) {
                push(&graph.node[r].output[0]);
            }
        }
    }
    wanted
}

/// A quantized tensor of the new graph.
#[derive(Debug, Clone)]
struct QTensor {
    name: String,
    q: QParams,
    scale: String,
    zero_point: String,
}

struct Builder {
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    quantized: HashMap<String, QTensor>,
    float: HashSet<String>,
    dynamic: HashMap<String, [String; 3]>,
    act: ActivationType,
}

fn tensor(name: &str, dims: &[i64], data_type: i32, raw: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto { name: name.into(), dims: dims.to_vec(), data_type, raw_data: raw, ..Default::default() }
}

pub(super) fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> pb::TensorProto {
    tensor(name, dims, dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn int_attr(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        i: v,
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        ..Default::default()
    }
}

impl Builder {
    fn node(&mut self, name: String, op: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<pb::AttributeProto>) {
        self.nodes.push(pb::NodeProto {
            name,
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute,
            ..Default::default()
        });
    }

    /// Scalar scale and zero point initializers for `q`, named after `base`.
    fn qparam_inits(&mut self, base: &str, q: &QParams) -> (String, String) {
        let scale = format!("{base}.scale");
        let zp = format!("{base}.zero_point");
        self.inits.push(f32_tensor(&scale, &[], &[q.scale]));
        let dt = match q.dtype {
            ActivationType::U8 => dtype::U8,
            ActivationType::I8 => dtype::I8,
        };
        self.inits.push(tensor(&zp, &[], dt, vec![q.zero_point_byte()]));
        (scale, zp)
    }

    /// The f32 form of a tensor, dequantizing it if only its 8-bit form exists.
    fn float(&mut self, name: &str) -> String {
        if name.is_empty() || self.float.contains(name) {
            return name.to_string();
        }
        if let Some(q) = self.quantized.get(name).cloned() {
            self.node(
                format!("{name}.dequantize"),
                "DequantizeLinear",
                &[&q.name, &q.scale, &q.zero_point],
                &[name],
                vec![],
            );
            self.float.insert(name.to_string());
        }
        name.to_string()
    }

    /// The 8-bit form of a tensor, quantizing it with its calibrated range if needed.
    fn quantized(&mut self, name: &str, ranges: &Ranges) -> Result<QTensor> {
        if let Some(q) = self.quantized.get(name) {
            return Ok(q.clone());
        }
        let (lo, hi) =
            *ranges.get(name).ok_or_else(|| unsupported(format!("no calibrated range for tensor `{name}`")))?;
        let q = QParams::from_range(lo, hi, self.act);
        let f = self.float(name);
        let qname = format!("{name}.q");
        let (scale, zp) = self.qparam_inits(&qname, &q);
        self.node(format!("{name}.quantize"), "QuantizeLinear", &[&f, &scale, &zp], &[&qname], vec![]);
        let qt = QTensor { name: qname, q, scale, zero_point: zp };
        self.quantized.insert(name.to_string(), qt.clone());
        Ok(qt)
    }

    fn copy_float(&mut self, node: &pb::NodeProto) {
        let mut n = node.clone();
        for inp in n.input.iter_mut() {
            *inp = self.float(inp);
        }
        for o in &n.output {
            self.float.insert(o.clone());
        }
        self.nodes.push(n);
    }

    /// i8 weights `[M, K]` transposed to `[K, M]` for MatMul-style operators.
    fn weights_km(&mut self, name: &str, values: &[i8], m: usize, k: usize) -> String {
        let mut t = vec![0u8; m * k];
        for r in 0..m {
            for c in 0..k {
                t[c * m + r] = values[r * k + c] as u8;
            }
        }
        self.inits.push(tensor(name, &[k as i64, m as i64], dtype::I8, t));
        name.to_string()
    }
}

fn node_base(node: &pb::NodeProto, i: usize) -> String {
    if node.name.is_empty() { format!("{}_{i}", node.op_type) } else { node.name.clone() }
}

fn bytes_i8(v: &[i8]) -> Vec<u8> {
    v.iter().map(|x| *x as u8).collect()
}

fn bytes_i32(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Rewrites the graph (static when `ranges` is given, dynamic otherwise).
pub fn quantize_graph(
    proto: &pb::ModelProto,
    options: &QuantizeOptions,
    ranges: Option<&Ranges>,
) -> Result<(pb::ModelProto, Vec<NodeReport>)> {
    let graph = proto.graph.as_ref().expect("checked by decode_onnx");
    let a = Analysis::new(graph, options);
    let real_input: HashSet<&str> =
        graph.input.iter().map(|i| i.name.as_str()).filter(|n| !a.inits.contains_key(n)).collect();
    let mut b = Builder {
        nodes: vec![],
        inits: vec![],
        quantized: HashMap::new(),
        float: graph
            .initializer
            .iter()
            .map(|t| t.name.clone())
            .chain(real_input.iter().map(|s| s.to_string()))
            .collect(),
        dynamic: HashMap::new(),
        act: if ranges.is_some() { options.activations } else { ActivationType::U8 },
    };
    let mut reports: Vec<NodeReport> = vec![];
    let mut folded: HashMap<usize, String> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        let base = node_base(node, i);
        let report = |outcome: NodeOutcome, range: Option<(f32, f32)>| NodeReport {
            node: base.clone(),
            op: node.op_type.clone(),
            outcome,
            output_range: range,
        };
        if let Some(into) = folded.get(&i) {
            reports.push(report(NodeOutcome::Folded { into: into.clone() }, None));
            continue;
        }
        match a.compute(i) {
            Ok(c) => {
                let (form, range) = match ranges {
                    Some(r) => emit_static(&mut b, &a, &c, &base, options, r, &mut folded)?,
                    None => (emit_dynamic(&mut b, node, &c, &base, options), None),
                };
                reports.push(report(NodeOutcome::Quantized { form }, range));
            }
            Err(why) => {
                let pass = ranges.is_some()
                    && PASS_THROUGH.contains(&node.op_type.as_str())
                    && node.output.len() == 1
                    && !a.kept(node)
                    && node.input.first().is_some_and(|x| b.quantized.contains_key(x) && !b.float.contains(x));
                if pass {
                    let q = b.quantized[&node.input[0]].clone();
                    let mut n = node.clone();
                    n.name = base.clone();
                    n.input[0] = q.name.clone();
                    let out = node.output[0].clone();
                    let qname = format!("{out}.q");
                    n.output[0] = qname.clone();
                    b.nodes.push(n);
                    b.quantized.insert(out, QTensor { name: qname, ..q });
                    reports.push(report(NodeOutcome::PassThrough, Some(q.q.real_range())));
                } else {
                    let why = if why == FloatReason::NoIntegerForm && PASS_THROUGH.contains(&node.op_type.as_str()) {
                        FloatReason::InputIsFloat
                    } else if a.kept(node) {
                        FloatReason::KeepFloat
                    } else {
                        why
                    };
                    b.copy_float(node);
                    reports.push(report(NodeOutcome::KeptFloat { why }, None));
                }
            }
        }
    }
    for o in &graph.output {
        b.float(&o.name);
    }
    // Keep the original initializers still used, then the new ones.
    let used: HashSet<&str> = b.nodes.iter().flat_map(|n| n.input.iter().map(|s| s.as_str())).collect();
    let mut initializer: Vec<pb::TensorProto> =
        graph.initializer.iter().filter(|t| used.contains(t.name.as_str())).cloned().collect();
    initializer.extend(b.inits.iter().cloned());
    let new_graph = pb::GraphProto {
        node: b.nodes.clone(),
        name: graph.name.clone(),
        initializer,
        doc_string: graph.doc_string.clone(),
        input: graph.input.iter().filter(|i| real_input.contains(i.name.as_str())).cloned().collect(),
        output: graph.output.clone(),
        ..Default::default()
    };
    Ok((with_graph(proto, new_graph, 11, options.mode), reports))
}

fn with_graph(proto: &pb::ModelProto, graph: pb::GraphProto, min_opset: i64, mode: Mode) -> pb::ModelProto {
    let mut p = proto.clone();
    p.graph = Some(graph);
    let mut found = false;
    for o in p.opset_import.iter_mut() {
        if o.domain.is_empty() || o.domain == "ai.onnx" {
            o.version = o.version.max(min_opset);
            found = true;
        }
    }
    if !found {
        p.opset_import.push(pb::OperatorSetIdProto { domain: String::new(), version: min_opset.max(13) });
    }
    p.ir_version = p.ir_version.max(7);
    let tag = match mode {
        Mode::Static => "int8-static",
        Mode::Dynamic => "int8-dynamic",
        Mode::F16 => "f16",
    };
    p.metadata_props.retain(|m| m.key != "pupil.quantization");
    p.metadata_props.push(pb::StringStringEntryProto { key: "pupil.quantization".into(), value: tag.into() });
    p
}

/// Emits one static-quantized product; returns the form description and the output range.
fn emit_static(
    b: &mut Builder,
    a: &Analysis,
    c: &Compute,
    base: &str,
    options: &QuantizeOptions,
    ranges: &Ranges,
    folded: &mut HashMap<usize, String>,
) -> Result<(String, Option<(f32, f32)>)> {
    let graph = a.graph;
    let relu = a.relu_after(&c.out);
    let final_out = relu.map(|r| graph.node[r].output[0].clone()).unwrap_or_else(|| c.out.clone());
    let quantized_out = a.has_quantized_consumer(&final_out);
    let qx = b.quantized(&c.x, ranges)?;
    let w = quantize_weights(&c.weight, c.m, options.per_channel);
    let wscale = |ch: usize| if options.per_channel { w.scales[ch] } else { w.scales[0] };
    let bias_q: Option<Vec<i32>> = c
        .bias
        .as_ref()
        .map(|bias| bias.iter().enumerate().map(|(ch, v)| quantize_bias(*v, qx.q.scale, wscale(ch))).collect());
    let nscale = w.scales.len() as i64;
    let wscale_dims: Vec<i64> = if options.per_channel { vec![nscale] } else { vec![] };
    let wscale_name = format!("{base}.weight_scale");
    let wzp_name = format!("{base}.weight_zero_point");
    if !(c.kind == Kind::Gemm || c.kind == Kind::MatMul) || quantized_out {
        b.inits.push(f32_tensor(&wscale_name, &wscale_dims, &w.scales));
        // Symmetric weights: one zero point of 0 whatever the scales (allowed by ONNX, cheapest for tract).
        b.inits.push(tensor(&wzp_name, &[], dtype::I8, vec![0]));
    }
    if quantized_out || c.kind == Kind::Conv {
        // Requantized output: QLinearConv / QLinearMatMul.
        let out_name = if quantized_out { final_out.clone() } else { c.out.clone() };
        let (lo, hi) = *ranges
            .get(&out_name)
            .ok_or_else(|| unsupported(format!("no calibrated range for tensor `{out_name}`")))?;
        let lo = if quantized_out && relu.is_some() { lo.max(0.0) } else { lo };
        let qy = QParams::from_range(lo, hi, b.act);
        let qname = format!("{out_name}.q");
        let (ys, yz) = b.qparam_inits(&qname, &qy);
        let bias_name = format!("{base}.bias_i32");
        if let Some(bq) = &bias_q {
            b.inits.push(tensor(&bias_name, &[c.m as i64], dtype::I32, bytes_i32(bq)));
        }
        let form = match c.kind {
            Kind::Conv => {
                let wname = format!("{base}.weight_i8");
                b.inits.push(tensor(&wname, &c.weight_dims, dtype::I8, bytes_i8(&w.values)));
                let mut inputs: Vec<&str> =
                    vec![qx.name.as_str(), &qx.scale, &qx.zero_point, &wname, &wscale_name, &wzp_name, &ys, &yz];
                if bias_q.is_some() {
                    inputs.push(&bias_name);
                }
                let attrs = graph.node.iter().find(|n| n.output.first() == Some(&c.out)).map(|n| n.attribute.clone());
                b.node(format!("{base}.qlinear"), "QLinearConv", &inputs, &[&qname], attrs.unwrap_or_default());
                "QLinearConv"
            }
            Kind::Gemm => {
                let wname = format!("{base}.weight_i8");
                b.inits.push(tensor(&wname, &[c.m as i64, c.k as i64, 1, 1], dtype::I8, bytes_i8(&w.values)));
                let s4 = format!("{base}.shape_nk11");
                b.inits.push(tensor(
                    &s4,
                    &[4],
                    dtype::I64,
                    [0i64, c.k as i64, 1, 1].iter().flat_map(|v| v.to_le_bytes()).collect(),
                ));
                let x4 = format!("{}.nk11", qx.name);
                b.node(format!("{base}.to_nk11"), "Reshape", &[&qx.name, &s4], &[&x4], vec![]);
                let y4 = format!("{qname}.nm11");
                let mut inputs: Vec<&str> =
                    vec![x4.as_str(), &qx.scale, &qx.zero_point, &wname, &wscale_name, &wzp_name, &ys, &yz];
                if bias_q.is_some() {
                    inputs.push(&bias_name);
                }
                b.node(format!("{base}.qlinear"), "QLinearConv", &inputs, &[&y4], vec![]);
                let s2 = format!("{base}.shape_nm");
                b.inits.push(tensor(
                    &s2,
                    &[2],
                    dtype::I64,
                    [0i64, c.m as i64].iter().flat_map(|v| v.to_le_bytes()).collect(),
                ));
                b.node(format!("{base}.to_nm"), "Reshape", &[&y4, &s2], &[&qname], vec![]);
                "Reshape → QLinearConv 1×1 → Reshape"
            }
            Kind::MatMul => {
                let wname = b.weights_km(&format!("{base}.weight_i8"), &w.values, c.m, c.k);
                let inputs: [&str; 8] =
                    [qx.name.as_str(), &qx.scale, &qx.zero_point, &wname, &wscale_name, &wzp_name, &ys, &yz];
                b.node(format!("{base}.qlinear"), "QLinearMatMul", &inputs, &[&qname], vec![]);
                "QLinearMatMul"
            }
        };
        let qt = QTensor { name: qname, q: qy, scale: ys, zero_point: yz };
        b.quantized.insert(out_name.clone(), qt);
        let mut form = form.to_string();
        if quantized_out {
            if let Some(r) = relu {
                folded.insert(r, base.to_string());
                form.push_str(" (Relu folded)");
            }
        } else {
            b.float(&out_name);
            form.push_str(" → DequantizeLinear");
        }
        return Ok((form, Some(qy.real_range())));
    }
    // Gemm / MatMul feeding only float consumers (the logits): int32 accumulation, dequantized once.
    let wname = b.weights_km(&format!("{base}.weight_i8"), &w.values, c.m, c.k);
    let acc = format!("{base}.acc_i32");
    b.node(format!("{base}.matmul_integer"), "MatMulInteger", &[&qx.name, &wname, &qx.zero_point], &[&acc], vec![]);
    let mut cur = acc.clone();
    if let Some(bq) = &bias_q {
        let bias_name = format!("{base}.bias_i32");
        b.inits.push(tensor(&bias_name, &[c.m as i64], dtype::I32, bytes_i32(bq)));
        let with_bias = format!("{base}.acc_bias_i32");
        b.node(format!("{base}.add_bias"), "Add", &[&cur, &bias_name], &[&with_bias], vec![]);
        cur = with_bias;
    }
    let as_f32 = format!("{base}.acc_f32");
    b.node(format!("{base}.cast"), "Cast", &[&cur], &[&as_f32], vec![int_attr("to", dtype::F32 as i64)]);
    let scales: Vec<f32> = (0..c.m).map(|ch| qx.q.scale * wscale(ch)).collect();
    let sname = format!("{base}.output_scale");
    b.inits.push(tensor(&sname, &[c.m as i64], dtype::F32, bytes_f32(&scales)));
    b.node(format!("{base}.rescale"), "Mul", &[&as_f32, &sname], &[&c.out], vec![]);
    b.float.insert(c.out.clone());
    Ok(("MatMulInteger → Add(int32 bias) → Cast → Mul".to_string(), None))
}

/// Emits one dynamic-quantized product; returns the form description.
fn emit_dynamic(b: &mut Builder, node: &pb::NodeProto, c: &Compute, base: &str, options: &QuantizeOptions) -> String {
    let x = b.float(&c.x);
    let [xq, xs, xz] = match b.dynamic.get(&x) {
        Some(d) => d.clone(),
        None => {
            let d = [format!("{x}.dq"), format!("{x}.dq_scale"), format!("{x}.dq_zero_point")];
            b.node(format!("{base}.dynamic_quantize"), "DynamicQuantizeLinear", &[&x], &[&d[0], &d[1], &d[2]], vec![]);
            b.dynamic.insert(x.clone(), d.clone());
            d
        }
    };
    let w = quantize_weights(&c.weight, c.m, options.per_channel);
    let acc = format!("{base}.acc_i32");
    let rank_fix: Vec<i64> = match c.kind {
        Kind::Conv => std::iter::once(c.m as i64).chain(std::iter::repeat_n(1, c.weight_dims.len() - 2)).collect(),
        _ => vec![c.m as i64],
    };
    let form = match c.kind {
        Kind::Conv => {
            let wname = format!("{base}.weight_i8");
            b.inits.push(tensor(&wname, &c.weight_dims, dtype::I8, bytes_i8(&w.values)));
            b.node(format!("{base}.conv_integer"), "ConvInteger", &[&xq, &wname, &xz], &[&acc], node.attribute.clone());
            "DynamicQuantizeLinear → ConvInteger → Cast → Mul → Add"
        }
        _ => {
            let wname = b.weights_km(&format!("{base}.weight_i8"), &w.values, c.m, c.k);
            b.node(format!("{base}.matmul_integer"), "MatMulInteger", &[&xq, &wname, &xz], &[&acc], vec![]);
            "DynamicQuantizeLinear → MatMulInteger → Cast → Mul → Add"
        }
    };
    let as_f32 = format!("{base}.acc_f32");
    b.node(format!("{base}.cast"), "Cast", &[&acc], &[&as_f32], vec![int_attr("to", dtype::F32 as i64)]);
    let ws: Vec<f32> = (0..c.m).map(|ch| if options.per_channel { w.scales[ch] } else { w.scales[0] }).collect();
    let wsname = format!("{base}.weight_scale");
    b.inits.push(tensor(&wsname, &rank_fix, dtype::F32, bytes_f32(&ws)));
    let scaled_w = format!("{base}.scaled_w");
    b.node(format!("{base}.weight_rescale"), "Mul", &[&as_f32, &wsname], &[&scaled_w], vec![]);
    let out_pre_bias = if c.bias.is_some() { format!("{base}.scaled") } else { c.out.clone() };
    b.node(format!("{base}.input_rescale"), "Mul", &[&scaled_w, &xs], &[&out_pre_bias], vec![]);
    if let Some(bias) = &c.bias {
        let bname = format!("{base}.bias");
        b.inits.push(tensor(&bname, &rank_fix, dtype::F32, bytes_f32(bias)));
        b.node(format!("{base}.add_bias"), "Add", &[&out_pre_bias, &bname], &[&c.out], vec![]);
    }
    b.float.insert(c.out.clone());
    form.to_string()
}

/// The f16 variant: every f32 weight (initializers of 16 values or more) is stored as f16 and cast back to f32
/// by a `Cast` node that tract folds at load time. Halves the file; the arithmetic stays f32 because tract
/// 0.23.9's `Gemm` expansion does not run in f16 ("expected F16 got F32"), and ONNX Runtime's CPU provider lacks
/// f16 kernels for most operators.
pub fn to_f16(proto: &pb::ModelProto) -> Result<(pb::ModelProto, Vec<NodeReport>)> {
    let graph = proto.graph.as_ref().expect("checked by decode_onnx");
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut nodes = vec![];
    let mut initializer = vec![];
    for t in &graph.initializer {
        match crate::onnx::f32_data(t) {
            Some(v) if v.len() >= 16 => {
                let half = format!("{}.f16", t.name);
                initializer.push(pb::TensorProto {
                    name: half.clone(),
                    dims: t.dims.clone(),
                    data_type: dtype::F16,
                    raw_data: v.iter().flat_map(|x| f16_bits(*x).to_le_bytes()).collect(),
                    ..Default::default()
                });
                nodes.push(pb::NodeProto {
                    name: format!("{}.to_f32", t.name),
                    op_type: "Cast".into(),
                    input: vec![half],
                    output: vec![t.name.clone()],
                    attribute: vec![int_attr("to", dtype::F32 as i64)],
                    ..Default::default()
                });
            }
            _ => initializer.push(t.clone()),
        }
    }
    let mut reports = vec![];
    for (i, node) in graph.node.iter().enumerate() {
        let has_weights = node.input.iter().any(|s| nodes.iter().any(|n: &pb::NodeProto| n.output[0] == *s));
        reports.push(NodeReport {
            node: node_base(node, i),
            op: node.op_type.clone(),
            outcome: if has_weights {
                NodeOutcome::Half
            } else {
                NodeOutcome::KeptFloat { why: FloatReason::NoIntegerForm }
            },
            output_range: None,
        });
        nodes.push(node.clone());
    }
    let new_graph = pb::GraphProto {
        node: nodes,
        name: graph.name.clone(),
        initializer,
        doc_string: graph.doc_string.clone(),
        input: graph.input.iter().filter(|i| !inits.contains(i.name.as_str())).cloned().collect(),
        output: graph.output.clone(),
        ..Default::default()
    };
    Ok((with_graph(proto, new_graph, 1, Mode::F16), reports))
}
