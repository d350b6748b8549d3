//! Which kernel tract selected for every matrix product of a model, read from the optimised graph.

use serde::{Deserialize, Serialize};
use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;

use crate::error::Result;
use crate::{Model, ModelOptions};

/// ONNX operators that must run on an integer kernel.
const INTEGER_OPS: &[&str] = &["QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger"];

/// One matrix product of the optimised tract graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelReport {
    /// The ONNX node it comes from (`?` when tract's node name matches none).
    pub node: String,
    /// That node's ONNX operator.
    pub op: String,
    /// The tract node.
    pub tract_node: String,
    /// The selected kernel(s), e.g. `avx512_mmm_i32_16x16`.
    pub kernel: String,
    /// The kernel's accumulator type (`i32` for integer kernels).
    pub accumulator: String,
    /// `m×k×n` of the product as tract sees it.
    pub shape: String,
    /// Whether the ONNX operator is an integer one (so an i32 kernel is expected).
    pub expected_integer: bool,
    /// Whether tract runs it on an i32 kernel.
    pub integer: bool,
}

/// Loads ONNX bytes in tract (batch 1, one thread) and lists every matrix product with its kernel, plus the
/// operators that recompute something from constants on every run.
pub fn kernel_report(bytes: &[u8]) -> Result<(Vec<KernelReport>, Vec<String>)> {
    let proto = crate::model::decode_onnx(bytes)?;
    let graph = proto.graph.as_ref().expect("checked by decode_onnx");
    let onnx_nodes: Vec<(String, String)> = graph.node.iter().map(|n| (n.name.clone(), n.op_type.clone())).collect();
    let model = Model::from_bytes(bytes, ModelOptions::default())?;
    // The int8 convolutions pupil runs on its f32 kernels, on the int8 activation grid (`crate::kernels::qconv`):
    // by design not on an integer kernel.
    let on_f32_kernels = model.int8_convolutions_on_f32();
    let expects_integer = |name: &str, op: &str| INTEGER_OPS.contains(&op) && !on_f32_kernels.iter().any(|n| n == name);
    let typed = model.typed_model();
    let mut kernels = vec![];
    let mut per_run = vec![];
    for node in typed.nodes() {
        if let Some(mm) = node.op_as::<OptMatMul>() {
            let (onnx, op) = owner(&node.name, &onnx_nodes);
            let names: Vec<&str> = mm.mmm.iter().map(|k| k.name()).collect();
            let acc: Vec<String> = mm.mmm.iter().map(|k| format!("{:?}", k.internal_type()).to_lowercase()).collect();
            let integer = !acc.is_empty() && acc.iter().all(|a| a == "i32");
            let shape = node.op.info().ok().and_then(|i| i.get(1).cloned()).map(|s| shape_of(&s)).unwrap_or_default();
            kernels.push(KernelReport {
                expected_integer: expects_integer(&onnx, &op),
                node: onnx,
                op,
                tract_node: node.name.clone(),
                kernel: names.join(", "),
                accumulator: acc.first().cloned().unwrap_or_default(),
                shape,
                integer,
            });
            continue;
        }
        // pupil's own int8 kernels (see `crate::kernels`): the packed GEMV that replaces tract's quantized matmuls,
        // and the convolution on the int8 form of a rewritten `QLinearConv`.
        let pupil = if let Some(op) = node.op_as::<crate::kernels::PupilQMatMul>() {
            Some(("pupil_qgemv", "m", op.dims(), op.isa()))
        } else {
            node.op_as::<crate::kernels::PupilQGridConv>()
                .map(|op| ("pupil_qgridconv", "positions", op.dims(), op.isa()))
        };
        if let Some((kernel, rows, (k, n), isa)) = pupil {
            let (onnx, op_type) = owner(&node.name, &onnx_nodes);
            kernels.push(KernelReport {
                expected_integer: INTEGER_OPS.contains(&op_type.as_str()),
                node: onnx,
                op: op_type,
                tract_node: node.name.clone(),
                kernel: format!("{kernel}_{isa}").to_lowercase(),
                accumulator: "i32".into(),
                shape: format!("{rows}×{k}×{n}"),
                integer: true,
            });
            continue;
        }
        let is_const = |n: usize| typed.node(n).op_is::<tract_onnx::tract_core::ops::konst::Const>();
        if !node.inputs.is_empty() && !is_const(node.id) && node.inputs.iter().all(|i| is_const(i.node)) {
            per_run.push(format!("{} ({})", node.name, node.op.name()));
        }
    }
    for name in on_f32_kernels {
        if !kernels.iter().any(|k| &k.node == name) {
            kernels.push(KernelReport {
                node: name.clone(),
                op: "QLinearConv".into(),
                tract_node: format!("{name}.conv_f32"),
                kernel: "pupil's f32 convolution (int8 weights dequantized at load, int8 activation grid)".into(),
                accumulator: "f32".into(),
                shape: String::new(),
                expected_integer: false,
                integer: false,
            });
        }
    }
    // Integer ONNX products tract lowered to something other than an OptMatMul (should not happen).
    for (name, op) in &onnx_nodes {
        if expects_integer(name, op) && !kernels.iter().any(|k| &k.node == name) {
            kernels.push(KernelReport {
                node: name.clone(),
                op: op.clone(),
                tract_node: "-".into(),
                kernel: "no matrix kernel found in the optimised graph".into(),
                accumulator: "-".into(),
                shape: String::new(),
                expected_integer: true,
                integer: false,
            });
        }
    }
    Ok((kernels, per_run))
}

/// The ONNX node whose name is the longest prefix of tract's node name (tract names the nodes it derives
/// `onnx_name.suffix`).
fn owner(tract_name: &str, onnx: &[(String, String)]) -> (String, String) {
    let found = owner_by_prefix(tract_name, onnx);
    // tract renames a fused product after the last op it absorbed (`fc.add_bias` for `fc.matmul_integer` + Add):
    // attribute it to the integer product the quantizer emitted for the same layer.
    if !INTEGER_OPS.contains(&found.1.as_str())
        && let Some((base, _)) = found.0.split_once('.')
        && let Some(n) =
            onnx.iter().find(|(n, op)| n.starts_with(&format!("{base}.")) && INTEGER_OPS.contains(&op.as_str()))
    {
        return n.clone();
    }
    found
}

fn owner_by_prefix(tract_name: &str, onnx: &[(String, String)]) -> (String, String) {
    onnx.iter()
        .filter(|(n, _)| {
            !n.is_empty()
                && tract_name.starts_with(n.as_str())
                && tract_name[n.len()..].chars().next().is_none_or(|c| c == '.' || c == '#' || c == '_')
        })
        .max_by_key(|(n, _)| n.len())
        .cloned()
        .unwrap_or_else(|| ("?".into(), "?".into()))
}

/// `m:8 k:784 n:1 with [...]` → `8×784×1`.
fn shape_of(info: &str) -> String {
    let get = |key: &str| {
        info.split_whitespace().find_map(|w| w.strip_prefix(key)).map(|v| v.trim_end_matches(',').to_string())
    };
    match (get("m:"), get("k:"), get("n:")) {
        (Some(m), Some(k), Some(n)) => format!("{m}×{k}×{n}"),
        _ => String::new(),
    }
}
