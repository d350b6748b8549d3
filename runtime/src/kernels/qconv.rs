//! int8 convolutions on pupil's f32 convolution kernels: before tract reads an ONNX file, every `QLinearConv`
//! with constant weights is rewritten as `DequantizeLinear → Conv (weights and bias dequantized once, here) →
//! QuantizeLinear`, so the convolution itself runs on pupil's depthwise / direct kernels or tract's f32 GEMM
//! instead of tract's int8 im2col + i32 GEMM + rescaling chain, which is several times slower at batch 1.
//!
//! The activations between layers stay on the int8 grid the file specifies (each output is quantized with
//! the node's own scale and zero point, then dequantized by the next node), so results match the int8
//! model up to one quantization step where f32 rounding of the accumulated sum lands on the other side of a
//! rounding tie. The file on disk keeps its int8 weights (its size is unchanged).
//!
//! A `QLinearConv` whose input comes straight out of a `Reshape` is a dense layer in disguise (the quantizer
//! writes int8 `Gemm`s that way); it is left alone so that [`super::PupilQMatMul`] runs it on the int8 GEMV.
//!
//! Each rewrite also keeps the convolution's int8 form ([`Int8Conv`]): where pupil has an integer kernel for
//! the shape on this CPU ([`super::PupilQGridConv`]), the f32 `Conv` is replaced by it after tract's declutter,
//! and the result is the int8 model's own (exact `i32` sums, requantized like ONNX Runtime).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tract_onnx::pb;

use crate::onnx::{dtype, int_data as ints, per_channel};

/// The int8 form of one rewritten `QLinearConv`: u8 activations, symmetric i8 weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Conv {
    /// Input scale and zero point.
    pub x_scale: f32,
    pub x_zero: u8,
    /// Output scale and zero point.
    pub y_scale: f32,
    pub y_zero: u8,
    /// `[c_out, c_in / group, kh, kw]`.
    pub dims: [usize; 4],
    pub group: usize,
    /// The weights, OIHW (their zero point is 0).
    pub weight: Vec<i8>,
    /// Weight scale per output channel.
    pub w_scale: Vec<f32>,
    /// Bias per output channel, in accumulator units (zeros when the node has none).
    pub bias: Vec<i32>,
}

/// The int8 form of every rewritten convolution, by the name of the f32 `Conv` node written for it.
pub type Int8Convs = HashMap<String, Arc<Int8Conv>>;

/// What [`to_f32_convolutions`] did.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// The `QLinearConv` nodes rewritten.
    pub nodes: Vec<String>,
    /// The f32 `Conv` node written for each of them (same order).
    pub convs: Vec<String>,
    /// Their int8 form, where it is one pupil's integer kernels read.
    pub int8: Int8Convs,
}

/// The int8 form of `node` (see [`Int8Conv`]), or `None` when it has another one (u8 or asymmetric weights,
/// i8 activations, a missing parameter).
fn int8_form(node: &pb::NodeProto, inits: &HashMap<&str, &pb::TensorProto>) -> Option<Int8Conv> {
    let init = |i: usize| node.input.get(i).filter(|n| !n.is_empty()).and_then(|n| inits.get(n.as_str()).copied());
    let (w, ws, wz, xs, xz, ys, yz) = (init(3)?, init(4)?, init(5)?, init(1)?, init(2)?, init(6)?, init(7)?);
    if w.data_type != dtype::I8 || xz.data_type != dtype::U8 || yz.data_type != dtype::U8 || w.dims.len() != 4 {
        return None;
    }
    let dims: Vec<usize> = w.dims.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
    let m = dims[0];
    let byte = |t: &pb::TensorProto| -> Option<u8> { u8::try_from(*per_channel(ints(t)?, 1)?.first()?).ok() };
    if ints(wz)?.iter().any(|&z| z != 0) {
        return None;
    }
    let weight: Vec<i8> = ints(w)?.into_iter().map(|v| v as i8).collect();
    let group =
        node.attribute.iter().find(|a| a.name == "group").map(|a| usize::try_from(a.i).ok()).unwrap_or(Some(1))?;
    let bias = match node.input.get(8).filter(|n| !n.is_empty()) {
        None => vec![0; m],
        Some(_) => {
            per_channel(ints(init(8)?)?, m)?.into_iter().map(|b| i32::try_from(b).ok()).collect::<Option<_>>()?
        }
    };
    Some(Int8Conv {
        x_scale: per_channel(crate::onnx::f32_data(xs)?, 1)?[0],
        x_zero: byte(xz)?,
        y_scale: per_channel(crate::onnx::f32_data(ys)?, 1)?[0],
        y_zero: byte(yz)?,
        dims: [dims[0], dims[1], dims[2], dims[3]],
        group,
        weight,
        w_scale: per_channel(crate::onnx::f32_data(ws)?, m)?,
        bias,
    })
}

/// The f32 weights and bias of one `QLinearConv`, or `None` when its weights, scales or bias are not
/// constant or have shapes pupil does not expect (tract then runs the node as it is).
fn dequantized(
    node: &pb::NodeProto,
    inits: &HashMap<&str, &pb::TensorProto>,
) -> Option<(pb::TensorProto, Option<pb::TensorProto>)> {
    let init = |i: usize| node.input.get(i).filter(|n| !n.is_empty()).and_then(|n| inits.get(n.as_str()).copied());
    let (w, ws, wz, xs) = (init(3)?, init(4)?, init(5)?, init(1)?);
    let m = usize::try_from(*w.dims.first()?).ok()?;
    if w.dims.len() < 3 || m == 0 {
        return None;
    }
    let wq = ints(w)?;
    let ws = per_channel(crate::onnx::f32_data(ws)?, m)?;
    let wz = per_channel(ints(wz)?, m)?;
    let xs = per_channel(crate::onnx::f32_data(xs)?, 1)?[0];
    let per = wq.len() / m;
    let wf: Vec<f32> = wq.iter().enumerate().map(|(i, q)| (q - wz[i / per]) as f32 * ws[i / per]).collect();
    let name = format!("{}.weight_f32", node.name);
    let weight = pb::TensorProto {
        name,
        dims: w.dims.clone(),
        data_type: dtype::F32,
        raw_data: wf.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    };
    let bias = match node.input.get(8).filter(|n| !n.is_empty()) {
        None => None,
        Some(_) => {
            let b = per_channel(ints(init(8)?)?, m)?;
            let bf: Vec<f32> = b.iter().zip(&ws).map(|(b, s)| *b as f32 * xs * s).collect();
            Some(pb::TensorProto {
                name: format!("{}.bias_f32", node.name),
                dims: vec![m as i64],
                data_type: dtype::F32,
                raw_data: bf.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ..Default::default()
            })
        }
    };
    Some((weight, bias))
}

/// Rewrites every eligible `QLinearConv` of `proto` (see the module documentation); returns the nodes
/// rewritten and their int8 form. Initializers no node reads any more (the int8 weights) are dropped from the
/// in-memory graph.
pub fn to_f32_convolutions(proto: &mut pb::ModelProto) -> Rewrite {
    let Some(graph) = proto.graph.as_mut() else { return Rewrite::default() };
    let reshaped: HashSet<String> =
        graph.node.iter().filter(|n| n.op_type == "Reshape").flat_map(|n| n.output.iter().cloned()).collect();
    let mut new_inits = vec![];
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut rewritten = vec![];
    let mut convs = vec![];
    let mut int8 = Int8Convs::new();
    // The f32 image of an int8 tensor, shared by every convolution reading it.
    let mut dequantized_inputs: HashMap<String, String> = HashMap::new();
    {
        let inits: HashMap<&str, &pb::TensorProto> = graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        for (i, node) in graph.node.iter().enumerate() {
            let eligible = node.op_type == "QLinearConv"
                && node.domain.is_empty()
                && node.output.len() == 1
                && node.input.len() >= 8
                && !reshaped.contains(&node.input[0]);
            let Some((weight, bias)) = eligible.then(|| dequantized(node, &inits)).flatten() else {
                nodes.push(node.clone());
                continue;
            };
            let base = if node.name.is_empty() { format!("qlinearconv_{i}") } else { node.name.clone() };
            let xf = dequantized_inputs
                .entry(format!("{}|{}|{}", node.input[0], node.input[1], node.input[2]))
                .or_insert_with(|| {
                    let xf = format!("{base}.x_f32");
                    nodes.push(pb::NodeProto {
                        name: format!("{base}.dequantize_input"),
                        op_type: "DequantizeLinear".into(),
                        input: node.input[0..3].to_vec(),
                        output: vec![xf.clone()],
                        ..Default::default()
                    });
                    xf
                })
                .clone();
            if let Some(form) = int8_form(node, &inits) {
                int8.insert(format!("{base}.conv_f32"), Arc::new(form));
            }
            let yf = format!("{base}.y_f32");
            let mut conv_inputs = vec![xf, weight.name.clone()];
            conv_inputs.extend(bias.as_ref().map(|b| b.name.clone()));
            nodes.push(pb::NodeProto {
                name: format!("{base}.conv_f32"),
                op_type: "Conv".into(),
                input: conv_inputs,
                output: vec![yf.clone()],
                attribute: node.attribute.clone(),
                ..Default::default()
            });
            nodes.push(pb::NodeProto {
                name: format!("{base}.quantize_output"),
                op_type: "QuantizeLinear".into(),
                input: vec![yf, node.input[6].clone(), node.input[7].clone()],
                output: node.output.clone(),
                ..Default::default()
            });
            new_inits.push(weight);
            new_inits.extend(bias);
            rewritten.push(node.name.clone());
            convs.push(format!("{base}.conv_f32"));
        }
    }
    if rewritten.is_empty() {
        return Rewrite::default();
    }
    graph.node = nodes;
    graph.initializer.extend(new_inits);
    let read: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain(graph.output.iter().map(|o| o.name.as_str()))
        .chain(graph.input.iter().map(|i| i.name.as_str()))
        .collect();
    graph.initializer.retain(|t| read.contains(t.name.as_str()));
    Rewrite { nodes: rewritten, convs, int8 }
}
