//! Per-node facts from tract's optimised graph: multiply-accumulates from its cost model, the matrix-product
//! kernel it picked, and per-node wall time measured through a timing closure around `tract_core::plan::eval`.

use std::time::{Duration, Instant};

use tract_onnx::prelude::*;
use tract_onnx::tract_core;
use tract_onnx::tract_core::ops::Cost;
use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;

use crate::error::{Error, Result};
use crate::kernels::{PupilMatMul, Replacement};

/// Static facts about one node of the optimised graph.
pub(crate) struct NodeFacts {
    pub name: String,
    pub op: String,
    pub kernel: Option<String>,
    pub geometry: Option<String>,
    /// Multiply-accumulates for one run at the profiled batch (`None` when tract's cost model cannot say).
    pub macs: Option<u64>,
}

/// Resolves every symbol of `d` (only the batch dimension may be symbolic) to `batch`.
fn resolve(d: &TDim, batch: usize) -> Option<u64> {
    let mut values = SymbolValues::default();
    for s in d.symbols() {
        values.set(&s, batch as i64);
    }
    d.eval_to_i64(&values).ok().and_then(|v| u64::try_from(v).ok())
}

/// Facts for every node, indexed by node id.
pub(crate) fn node_facts(model: &TypedModel, batch: usize) -> Vec<NodeFacts> {
    model
        .nodes()
        .iter()
        .map(|node| {
            let macs = model.node_input_facts(node.id).ok().and_then(|facts| {
                let costs = node.op.cost(&facts).ok()?;
                costs
                    .iter()
                    .filter(|(c, _)| matches!(c, Cost::FMA(_)))
                    .map(|(_, n)| resolve(n, batch))
                    .sum::<Option<u64>>()
            });
            let (kernel, geometry) = match node.op_as::<OptMatMul>() {
                Some(mm) => {
                    let names: Vec<&str> = mm.mmm.iter().map(|k| k.name()).collect();
                    let geometry = match (
                        resolve(mm.m(), batch),
                        mm.guess_k().and_then(|k| resolve(&k, batch)),
                        resolve(mm.n(), batch),
                    ) {
                        (Some(m), Some(k), Some(n)) => Some(format!("m={m} k={k} n={n}")),
                        _ => None,
                    };
                    (Some(names.join(", ")), geometry)
                }
                // pupil's operators: the kernel that runs them (the f32 matrix-vector kernel's own name, else
                // `pupil` and the instruction set) and K × N as `Replacement` counts them, with m for the matrix
                // products from the multiply-accumulates tract's cost model counts.
                None => match Replacement::of(node.op.as_ref(), &node.name) {
                    Some(r) => {
                        let (k, n) = (r.k, r.n);
                        let geometry = match r.op {
                            "PupilMatMul" | "PupilQMatMul" => {
                                macs.filter(|_| k * n > 0).map(|c| format!("m={} k={k} n={n}", c / (k * n) as u64))
                            }
                            "PupilAdd" => None,
                            _ => Some(format!("k={k} n={n}")),
                        };
                        let kernel = match node.op_as::<PupilMatMul>() {
                            Some(mm) => mm.kernel_name().to_string(),
                            None => r.kernel(),
                        };
                        (Some(kernel), geometry)
                    }
                    None => (None, None),
                },
            };
            NodeFacts { name: node.name.clone(), op: node.op.name().to_string(), kernel, geometry, macs }
        })
        .collect()
}

/// Runs the plan `runs` times on `input` and returns each node's total evaluation time (indexed by node id) and
/// the total wall time of the runs.
pub(crate) fn time_nodes(
    plan: &Arc<TypedRunnableModel>,
    input: &Tensor,
    runs: usize,
) -> Result<(Vec<Duration>, Duration)> {
    let mut times = vec![Duration::ZERO; plan.model().nodes().len()];
    let mut state = TypedSimpleState::new(plan).map_err(|e| Error::Inference { reason: format!("{e:#}") })?;
    let started = Instant::now();
    for _ in 0..runs {
        state
            .run_plan_with_eval(tvec![input.clone().into_tvalue()], |ctx, op_state, node, inputs| {
                let t = Instant::now();
                let out = tract_core::plan::eval(ctx, op_state, node, inputs);
                times[node.id] += t.elapsed();
                out
            })
            .map_err(|e| Error::Inference { reason: format!("{e:#}") })?;
    }
    Ok((times, started.elapsed()))
}
