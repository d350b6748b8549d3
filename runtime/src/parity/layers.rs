//! Per-layer divergence: runs two models of the same architecture (f32 and int8, or a model and a damaged copy)
//! with every shared intermediate tensor exposed as an output, and reports the SQNR layer by layer so the first
//! layer that drifts stands out.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tract_onnx::pb;
use tract_onnx::prelude::*;

use super::metrics::sqnr_db;
use crate::error::{Error, Result, catch_panic};
use crate::model::decode_onnx;

/// One intermediate tensor present in both graphs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerDivergence {
    /// The ONNX tensor name (a node output).
    pub name: String,
    /// The operator producing it in the reference graph.
    pub op: String,
    /// Shape of the tensor for the examples run (batch first).
    pub shape: Vec<usize>,
    pub sqnr_db: f64,
    pub max_abs_diff: f64,
    /// Cosine similarity of the flattened tensors (1 = same direction).
    pub cosine: f64,
    /// SQNR below the report's bar.
    pub below_bar: bool,
}

/// The divergence of every shared intermediate tensor, in the reference graph's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerReport {
    pub examples: usize,
    /// The SQNR bar: layers below it are flagged.
    pub min_sqnr_db: f64,
    pub layers: Vec<LayerDivergence>,
    /// Index in `layers` of the first layer below the bar.
    pub first_below: Option<usize>,
    /// Float tensors of the reference with no counterpart of the same name and shape in the candidate (neither
    /// the float tensor nor its 8-bit form `NAME.q`).
    pub unmatched: Vec<String>,
}

impl LayerReport {
    /// The first layer below the bar.
    pub fn first_divergent(&self) -> Option<&LayerDivergence> {
        self.first_below.map(|i| &self.layers[i])
    }
}

fn invalid(what: &str, e: impl std::fmt::Display) -> Error {
    Error::InvalidModel { reason: format!("{what}: {e}") }
}

/// Node outputs in graph order with their op type (constants and empty names left out).
fn node_outputs(graph: &pb::GraphProto) -> Vec<(String, String)> {
    graph
        .node
        .iter()
        .filter(|n| n.op_type != "Constant")
        .flat_map(|n| n.output.iter().filter(|o| !o.is_empty()).map(move |o| (o.clone(), n.op_type.clone())))
        .collect()
}

/// Ops that pass an 8-bit tensor through with its scale and zero point unchanged.
const PASS_THROUGH: [&str; 7] = ["MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity"];

/// Scale and zero point of the 8-bit tensor `name` (pupil's quantizer names the 8-bit form of `X` `X.q`): from
/// the node producing it (`QuantizeLinear` inputs 1–2, `QLinearConv` / `QLinearMatMul` inputs 6–7), following
/// pass-through ops such as `MaxPool` back to one. `None` when they are not constant scalars.
fn quant_params(graph: &pb::GraphProto, name: &str) -> Option<(f32, f32)> {
    let init = |n: &str| graph.initializer.iter().find(|t| t.name == n);
    let mut cur = name.to_string();
    for _ in 0..32 {
        let node = graph.node.iter().find(|n| n.output.contains(&cur))?;
        let (scale, zp) = match node.op_type.as_str() {
            "QuantizeLinear" => (node.input.get(1)?, node.input.get(2)?),
            "QLinearConv" | "QLinearMatMul" => (node.input.get(6)?, node.input.get(7)?),
            op if PASS_THROUGH.contains(&op) => {
                cur = node.input.first()?.clone();
                continue;
            }
            _ => return None,
        };
        let (scale, zp) = (init(scale)?, init(zp)?);
        let scale = match (scale.float_data.as_slice(), scale.raw_data.as_slice()) {
            ([v], _) => *v,
            ([], [a, b, c, d]) => f32::from_le_bytes([*a, *b, *c, *d]),
            _ => return None,
        };
        let signed = zp.data_type == crate::onnx::dtype::I8;
        let zp = match (zp.int32_data.as_slice(), zp.raw_data.as_slice()) {
            ([v], _) => *v as f32,
            ([], [b]) if signed => *b as i8 as f32,
            ([], [b]) => *b as f32,
            _ => return None,
        };
        return Some((scale, zp));
    }
    None
}

/// Loads `proto` with `names` exposed as outputs (those tract can find), typed. Returns the model and, per
/// output, its name.
fn expose(
    proto: &pb::ModelProto,
    names: &[String],
    input_shape: &[usize],
    what: &str,
) -> Result<(TypedModel, Vec<String>)> {
    let mut model = tract_onnx::onnx().model_for_proto_model(proto).map_err(|e| invalid(what, format!("{e:#}")))?;
    let mut outlets = vec![];
    let mut found = vec![];
    for name in names {
        if let Some(o) = model.find_outlet_label(name)
            && !outlets.contains(&o)
        {
            outlets.push(o);
            found.push(name.clone());
        }
    }
    model.select_output_outlets(&outlets).map_err(|e| invalid(what, format!("{e:#}")))?;
    model
        .set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), input_shape))
        .map_err(|e| invalid(what, format!("{e:#}")))?;
    let typed = model.into_typed().map_err(|e| invalid(what, format!("{e:#}")))?;
    Ok((typed, found))
}

/// The f32 outputs (and 8-bit ones, for the names in `eight_bit`) with a concrete shape: name → (output index,
/// shape).
fn float_outputs(
    model: &TypedModel,
    names: &[String],
    eight_bit: &HashSet<String>,
) -> Result<HashMap<String, (usize, Vec<usize>)>> {
    let mut out = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let fact = model.output_fact(i).map_err(|e| invalid("output fact", format!("{e:#}")))?;
        let dt = fact.datum_type.unquantized();
        let wanted =
            dt == f32::datum_type() || (eight_bit.contains(name) && (dt == u8::datum_type() || dt == i8::datum_type()));
        if wanted && let Some(shape) = fact.shape.as_concrete() {
            out.insert(name.clone(), (i, shape.to_vec()));
        }
    }
    Ok(out)
}

/// Runs the model with only these outputs; each as f32 and whether tract dequantized it (a quantized datum type
/// carries its own scale and zero point; a plain u8 / i8 one comes back as raw integers).
fn run_selected(mut model: TypedModel, indices: &[usize], input: Tensor, what: &str) -> Result<Vec<(Vec<f32>, bool)>> {
    let outlets: Vec<OutletId> = indices
        .iter()
        .map(|i| model.output_outlets().map(|o| o[*i]))
        .collect::<TractResult<_>>()
        .map_err(|e| invalid(what, format!("{e:#}")))?;
    model.select_output_outlets(&outlets).map_err(|e| invalid(what, format!("{e:#}")))?;
    let plan = model
        .into_decluttered()
        .and_then(|m| m.into_runnable_with_options(&RunOptions::default()))
        .map_err(|e| invalid(what, format!("{e:#}")))?;
    let outputs =
        plan.run(tvec![input.into_tvalue()]).map_err(|e| Error::Inference { reason: format!("{what}: {e:#}") })?;
    outputs
        .iter()
        .map(|t| {
            let dequantized = t.datum_type().is_quantized();
            let t = t.cast_to::<f32>().map_err(|e| Error::Inference { reason: format!("{e:#}") })?;
            t.try_as_plain_ram()
                .and_then(|v| v.as_slice::<f32>().map(|s| (s.to_vec(), dequantized)))
                .map_err(|e| Error::Inference { reason: format!("{e:#}") })
        })
        .collect()
}

/// Runs `inputs` (flat, whole examples of `example_shape`) through both ONNX models with every float tensor
/// they share by name exposed (or its dequantized 8-bit form `NAME.q`, in a model quantized by pupil), and
/// compares them layer by layer; layers under `min_sqnr_db` are flagged.
pub fn layer_divergence(
    reference: &[u8],
    candidate: &[u8],
    example_shape: &[usize],
    inputs: &[f32],
    min_sqnr_db: f64,
) -> Result<LayerReport> {
    catch_panic("per-layer divergence", || {
        let per: usize = example_shape.iter().product();
        if per == 0 || inputs.is_empty() || !inputs.len().is_multiple_of(per) {
            return Err(Error::InputLength {
                input: "input".into(),
                expected: per.max(1) * (inputs.len() / per.max(1)).max(1),
                got: inputs.len(),
                shape: example_shape.to_vec(),
            });
        }
        if let Some(index) = inputs.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFiniteInput { input: "input".into(), index, value: inputs[index] });
        }
        let n = inputs.len() / per;
        let shape: Vec<usize> = std::iter::once(n).chain(example_shape.iter().copied()).collect();
        let rp = decode_onnx(reference)?;
        let cp = decode_onnx(candidate)?;
        let (rg, cg) = (rp.graph.as_ref().expect("decoded"), cp.graph.as_ref().expect("decoded"));
        let ref_outputs = node_outputs(rg);
        let cand_names: HashSet<String> = node_outputs(cg).into_iter().map(|(n, _)| n).collect();
        let ops: HashMap<String, String> = ref_outputs.iter().cloned().collect();
        let ref_names: Vec<String> = ref_outputs.iter().map(|(n, _)| n.clone()).collect();
        // A float tensor `X` of the reference is compared with `X` in the candidate, or, in a model quantized by
        // pupil, with its 8-bit form `X.q` dequantized with that tensor's own scale and zero point.
        let mut counterpart: HashMap<String, (String, Option<(f32, f32)>)> = HashMap::new();
        for n in &ref_names {
            let q = format!("{n}.q");
            if cand_names.contains(n) {
                counterpart.insert(n.clone(), (n.clone(), None));
            } else if cand_names.contains(&q)
                && let Some(params) = quant_params(cg, &q)
            {
                counterpart.insert(n.clone(), (q, Some(params)));
            }
        }
        let shared: Vec<String> = ref_names.iter().filter_map(|n| counterpart.get(n).map(|(c, _)| c.clone())).collect();
        let eight_bit: HashSet<String> =
            counterpart.values().filter(|(_, p)| p.is_some()).map(|(c, _)| c.clone()).collect();

        let (rm, rfound) = expose(&rp, &ref_names, &shape, "reference")?;
        let (cm, cfound) = expose(&cp, &shared, &shape, "candidate")?;
        let rf = float_outputs(&rm, &rfound, &HashSet::new())?;
        let cf = float_outputs(&cm, &cfound, &eight_bit)?;
        let mut matched = vec![];
        let mut unmatched = vec![];
        for name in &rfound {
            let Some((ri, rshape)) = rf.get(name) else { continue };
            let Some((cname, params)) = counterpart.get(name) else {
                unmatched.push(name.clone());
                continue;
            };
            match cf.get(cname) {
                Some((ci, cshape)) if cshape == rshape => {
                    matched.push((name.clone(), *ri, *ci, rshape.clone(), *params))
                }
                _ => unmatched.push(name.clone()),
            }
        }
        if matched.is_empty() {
            return Err(Error::InvalidModel {
                reason: "the two models share no float tensor of the same name and shape: they are not the same \
                         architecture"
                    .into(),
            });
        }
        let input = Tensor::from_shape(&shape, inputs).map_err(|e| Error::Inference { reason: format!("{e:#}") })?;
        let ri: Vec<usize> = matched.iter().map(|m| m.1).collect();
        let ci: Vec<usize> = matched.iter().map(|m| m.2).collect();
        let rv = run_selected(rm, &ri, input.clone(), "reference")?;
        let cv = run_selected(cm, &ci, input, "candidate")?;
        let mut layers = vec![];
        for ((name, _, _, shape, params), ((r, _), (c, dequantized))) in matched.into_iter().zip(rv.iter().zip(&cv)) {
            let c: Vec<f32> = match params {
                Some((scale, zp)) if !dequantized => c.iter().map(|v| (v - zp) * scale).collect(),
                _ => c.clone(),
            };
            let (r, c) = (r.as_slice(), c.as_slice());
            let (mut dot, mut rr, mut cc, mut max) = (0f64, 0f64, 0f64, 0f64);
            for (a, b) in r.iter().zip(c) {
                let (a, b) = (*a as f64, *b as f64);
                dot += a * b;
                rr += a * a;
                cc += b * b;
                max = f64::max(max, (a - b).abs());
            }
            let cosine = if rr == 0.0 && cc == 0.0 {
                1.0
            } else if rr == 0.0 || cc == 0.0 {
                0.0
            } else {
                dot / (rr.sqrt() * cc.sqrt())
            };
            let sqnr = sqnr_db(r, c);
            layers.push(LayerDivergence {
                op: ops.get(&name).cloned().unwrap_or_default(),
                name,
                shape,
                sqnr_db: sqnr,
                max_abs_diff: max,
                cosine,
                below_bar: sqnr < min_sqnr_db,
            });
        }
        let first_below = layers.iter().position(|l| l.below_bar);
        Ok(LayerReport { examples: n, min_sqnr_db, layers, first_below, unmatched })
    })
}
