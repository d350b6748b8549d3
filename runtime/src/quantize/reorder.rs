//! Hidden-unit order: permutes the units between two fully connected layers so that the ones the calibration set
//! most often leaves at zero sit side by side, where the int8 GEMV skips them four at a time.
//!
//! `Gemm|MatMul → Relu → Gemm|MatMul` computes the same function whatever the order of its hidden units, as long
//! as the first layer's output columns (and bias) and the second layer's input rows move together. The int8 GEMV
//! (`kernels::qgemv`) never reads the weights of a quad of 4 activations that are all 0, so a unit that is zero on
//! most inputs saves nothing next to ones that are not; grouped so that units zero on the same calibration examples
//! share a quad, whole quads are zero. The quantized model's outputs are the same bits as without the
//! permutation: the weights, scales and biases are the same numbers in another order and the integer sums are
//! exact (the calibration ran on the unpermuted model).

use serde::{Deserialize, Serialize};
use tract_onnx::pb;

use super::QuantizeOptions;
use super::arith::QParams;
use super::calibrate::{self, Ranges};
use super::transform::{Analysis, Kind, attr_i};
use crate::error::Result;

/// What the reordering did to one hidden layer, measured on the calibration set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitOrder {
    /// The hidden tensor (the `Relu`'s output).
    pub tensor: String,
    /// Its number of units.
    pub units: usize,
    /// Share of its quads of 4 activations that quantize to all 0, over the calibration set, in the model's order.
    pub zero_quads_before: f64,
    /// The same share in the new order (equal to `zero_quads_before` when the order was kept).
    pub zero_quads_after: f64,
    /// Whether the units were permuted (only when that makes more quads all zero).
    pub reordered: bool,
}

/// One `producer → Relu → consumer` chain whose hidden units may move.
#[derive(Debug, Clone)]
struct Pair {
    producer: usize,
    consumer: usize,
    /// The `Relu`'s output, the consumer's input.
    hidden: String,
    units: usize,
    /// The axis of the producer's weights that indexes its outputs, and of the consumer's that indexes its inputs.
    producer_axis: usize,
    consumer_axis: usize,
}

/// The axis of a 2-D `Gemm`/`MatMul` weight that indexes the product's outputs (`inputs = false`) or inputs.
fn weight_axis(node: &pb::NodeProto, kind: Kind, inputs: bool) -> usize {
    let trans_b = kind == Kind::Gemm && attr_i(node, "transB", 0) != 0;
    // `[K, N]`, or `[N, K]` with transB.
    usize::from(trans_b == inputs)
}

/// The chains whose units can be permuted: both products quantized with constant 2-D weights used by nothing else,
/// the `Relu` the producer's only consumer and the consumer the `Relu`'s only one, nothing of it a graph output.
fn pairs(graph: &pb::GraphProto, a: &Analysis) -> Vec<Pair> {
    let private = |name: &str| {
        a.consumers.get(name).is_some_and(|c| c.len() == 1)
            && !a.outputs.contains(name)
            && !graph.input.iter().any(|i| i.name == name)
    };
    let mut out = vec![];
    for (i, node) in graph.node.iter().enumerate() {
        let Ok(p) = a.compute(i) else { continue };
        if p.kind == Kind::Conv {
            continue;
        }
        let Some(r) = a.relu_after(&p.out) else { continue };
        let hidden = &graph.node[r].output[0];
        if a.outputs.contains(hidden.as_str()) {
            continue;
        }
        let Some(&[j]) = a.consumers.get(hidden.as_str()).map(|v| v.as_slice()) else { continue };
        let consumer = &graph.node[j];
        let Ok(c) = a.compute(j) else { continue };
        if c.kind == Kind::Conv || consumer.input[0] != *hidden || c.k != p.m || consumer.input[1..].contains(hidden) {
            continue;
        }
        let bias_ok = match node.input.get(2).filter(|s| !s.is_empty()) {
            None => true,
            Some(b) => {
                let dims = a.inits.get(b.as_str()).map(|t| t.dims.clone()).unwrap_or_default();
                private(b)
                    && dims.last().is_some_and(|&d| d as usize == p.m)
                    && dims.iter().product::<i64>() == p.m as i64
            }
        };
        if !(private(&node.input[1]) && private(&consumer.input[1]) && bias_ok) || node.input[1] == consumer.input[1] {
            continue;
        }
        out.push(Pair {
            producer: i,
            consumer: j,
            hidden: hidden.clone(),
            units: p.m,
            producer_axis: weight_axis(node, p.kind, false),
            consumer_axis: weight_axis(consumer, c.kind, true),
        });
    }
    out
}

/// Rows (examples) the grouping looks at, at most: the greedy pass costs units² × rows / 256 word operations.
const MAX_ROWS: usize = 4096;

/// Which activations of one hidden tensor quantize to 0: for every unit, one bit per row (example) seen, for the
/// first [`MAX_ROWS`] rows.
struct ZeroBits {
    units: usize,
    rows: usize,
    /// `columns[u]` holds unit `u`'s bits, row `r` at bit `r % 64` of word `r / 64`.
    columns: Vec<Vec<u64>>,
}

impl ZeroBits {
    fn new(units: usize) -> ZeroBits {
        ZeroBits { units, rows: 0, columns: vec![vec![]; units] }
    }

    fn add_rows(&mut self, values: &[f32], q: &QParams) {
        let zero = q.dtype.range().0;
        for row in values.chunks_exact(self.units).take(MAX_ROWS - self.rows) {
            let (word, bit) = (self.rows / 64, self.rows % 64);
            for (column, &v) in self.columns.iter_mut().zip(row) {
                if word == column.len() {
                    column.push(0);
                }
                if q.quantize(v) == zero {
                    column[word] |= 1 << bit;
                }
            }
            self.rows += 1;
        }
    }

    /// How many rows have all of `units` at zero (the positions past the last unit are zero padding).
    fn all_zero(&self, units: &[usize]) -> u64 {
        let Some((&first, rest)) = units.split_first() else { return self.rows as u64 };
        let mut and = self.columns[first].clone();
        for &u in rest {
            and.iter_mut().zip(&self.columns[u]).for_each(|(a, b)| *a &= b);
        }
        and.iter().map(|w| w.count_ones() as u64).sum()
    }

    /// The share of quads of 4 all-zero activations when unit `order[p]` sits at position `p`.
    fn zero_quads(&self, order: &[usize]) -> f64 {
        let quads = self.units.div_ceil(4);
        if self.rows == 0 || quads == 0 {
            return 0.0;
        }
        let zero: u64 = order.chunks(4).map(|quad| self.all_zero(quad)).sum();
        zero as f64 / (self.rows * quads) as f64
    }

    /// Quads built greedily: each starts from the unit left that is most often zero, then takes, three times, the
    /// unit left that is zero on the most rows where the quad so far is all zero (ties: the more often zero
    /// overall, then the model's order). Units zero together end up in one quad.
    fn order(&self) -> Vec<usize> {
        let zeros: Vec<u64> = (0..self.units).map(|u| self.all_zero(&[u])).collect();
        let mut left: Vec<usize> = (0..self.units).collect();
        left.sort_by_key(|&u| std::cmp::Reverse(zeros[u]));
        let mut order = Vec::with_capacity(self.units);
        while !left.is_empty() {
            let seed = left.remove(0);
            let mut and = self.columns[seed].clone();
            order.push(seed);
            for _ in 0..3 {
                let best = left.iter().enumerate().max_by_key(|&(i, &u)| {
                    let both: u64 = and.iter().zip(&self.columns[u]).map(|(a, b)| (a & b).count_ones() as u64).sum();
                    (both, zeros[u], std::cmp::Reverse(i))
                });
                let Some((i, &u)) = best else { break };
                left.remove(i);
                and.iter_mut().zip(&self.columns[u]).for_each(|(a, b)| *a &= b);
                order.push(u);
            }
        }
        order
    }
}

/// `t[..., p, ...] = old t[..., order[p], ...]` along `axis` of a 2-D f32 initializer, or of a 1-D one.
fn permute(t: &mut pb::TensorProto, axis: usize, order: &[usize]) -> Result<()> {
    let values = crate::onnx::f32_data(t).ok_or_else(|| super::QuantizeError::Unsupported {
        reason: format!("initializer `{}` is not f32 data", t.name),
    })?;
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let (rows, cols) = match dims.as_slice() {
        [r, c] => (*r, *c),
        _ => (1, values.len()),
    };
    let axis = if dims.len() == 2 { axis } else { 1 };
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            let (sr, sc) = if axis == 0 { (order[r], c) } else { (r, order[c]) };
            out[r * cols + c] = values[sr * cols + sc];
        }
    }
    t.float_data.clear();
    t.raw_data = out.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(())
}

/// The model with the hidden units of every eligible layer pair grouped by when they quantize to 0 on the
/// calibration `data` (with the activation ranges `ranges`; see [`ZeroBits::order`]), and what that did to each.
pub(super) fn order_units(
    proto: &pb::ModelProto,
    example_shape: &[usize],
    data: &[f32],
    ranges: &Ranges,
    options: &QuantizeOptions,
) -> Result<(pb::ModelProto, Vec<UnitOrder>)> {
    let graph = proto.graph.as_ref().expect("checked by decode_onnx");
    let a = Analysis::new(graph, options);
    let pairs: Vec<(Pair, QParams)> = pairs(graph, &a)
        .into_iter()
        .filter_map(|p| {
            let &(lo, hi) = ranges.get(&p.hidden)?;
            Some((p, QParams::from_range(lo.max(0.0), hi, options.activations)))
        })
        .collect();
    if pairs.is_empty() {
        return Ok((proto.clone(), vec![]));
    }
    let names: Vec<String> = pairs.iter().map(|(p, _)| p.hidden.clone()).collect();
    let mut zeros: Vec<ZeroBits> = pairs.iter().map(|(p, _)| ZeroBits::new(p.units)).collect();
    calibrate::visit(proto, example_shape, data, &names, |name, values| {
        if let Some(i) = names.iter().position(|n| n == name) {
            zeros[i].add_rows(values, &pairs[i].1);
        }
    })?;
    let mut new = proto.clone();
    let g = new.graph.as_mut().expect("checked by decode_onnx");
    let mut report = vec![];
    for ((pair, _), z) in pairs.iter().zip(&zeros) {
        let identity: Vec<usize> = (0..pair.units).collect();
        let order = z.order();
        let (before, after) = (z.zero_quads(&identity), z.zero_quads(&order));
        let reordered = after > before;
        if reordered {
            let (producer, consumer) = (&graph.node[pair.producer], &graph.node[pair.consumer]);
            let mut moves = vec![(producer.input[1].clone(), pair.producer_axis)];
            if let Some(b) = producer.input.get(2).filter(|s| !s.is_empty()) {
                moves.push((b.clone(), 1));
            }
            moves.push((consumer.input[1].clone(), pair.consumer_axis));
            for (name, axis) in moves {
                // `pairs` only takes initializers; a name it took that is not one would leave half a permutation.
                let t = g.initializer.iter_mut().find(|t| t.name == name).ok_or_else(|| {
                    super::QuantizeError::Unsupported { reason: format!("`{name}` is not an initializer") }
                })?;
                permute(t, axis, &order)?;
            }
        }
        report.push(UnitOrder {
            tensor: pair.hidden.clone(),
            units: pair.units,
            zero_quads_before: before,
            zero_quads_after: if reordered { after } else { before },
            reordered,
        });
    }
    Ok((new, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_quads_count_whole_quads_in_the_given_order() {
        let mut z = ZeroBits::new(6);
        let q = QParams::from_range(0.0, 255.0, super::super::ActivationType::U8);
        // Row 1: units 0, 2, 4, 5 zero; row 2: units 0, 2 zero.
        z.add_rows(&[0.0, 3.0, 0.2, 9.0, 0.0, 0.0, 0.0, 1.0, 0.0, 2.0, 7.0, 5.0], &q);
        assert_eq!((0..6).map(|u| z.all_zero(&[u])).collect::<Vec<_>>(), vec![2, 0, 2, 0, 1, 1]);
        // Identity: quads [0 1 2 3] [4 5 pad pad]: row 1 has the second all zero, row 2 none.
        assert_eq!(z.zero_quads(&[0, 1, 2, 3, 4, 5]), 1.0 / 4.0);
        assert_eq!(z.zero_quads(&[0, 2, 1, 3, 4, 5]), 1.0 / 4.0);
        // [1 3 4 5] never, [0 2 pad pad] in both rows.
        assert_eq!(z.zero_quads(&[1, 3, 4, 5, 0, 2]), 2.0 / 4.0);
        // Greedy: seed 0 (zero twice), then 2 (zero in both rows with it), then 4 and 5 (once each, the quad's
        // only all-zero row stays), then 1 and 3.
        let order = z.order();
        assert_eq!(order, vec![0, 2, 4, 5, 1, 3]);
        assert_eq!(z.zero_quads(&order), 1.0 / 4.0);
    }

    #[test]
    fn only_the_first_rows_are_kept() {
        let mut z = ZeroBits::new(3);
        let q = QParams::from_range(0.0, 255.0, super::super::ActivationType::U8);
        z.add_rows(&vec![0.0; 3 * (MAX_ROWS - 1)], &q);
        z.add_rows(&[0.0, 5.0, 0.0, 7.0, 0.0, 0.0], &q);
        assert_eq!(z.rows, MAX_ROWS);
        assert_eq!(z.all_zero(&[0]), MAX_ROWS as u64);
        assert_eq!(z.all_zero(&[1]), MAX_ROWS as u64 - 1);
        assert_eq!(z.all_zero(&[2]), MAX_ROWS as u64);
    }

    #[test]
    fn permute_moves_rows_or_columns() {
        let mut t = super::super::transform::f32_tensor("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        permute(&mut t, 1, &[2, 0, 1]).unwrap();
        assert_eq!(crate::onnx::f32_data(&t).unwrap(), vec![3.0, 1.0, 2.0, 6.0, 4.0, 5.0]);
        permute(&mut t, 0, &[1, 0]).unwrap();
        assert_eq!(crate::onnx::f32_data(&t).unwrap(), vec![6.0, 4.0, 5.0, 3.0, 1.0, 2.0]);
        let mut b = super::super::transform::f32_tensor("b", &[3], &[7.0, 8.0, 9.0]);
        permute(&mut b, 0, &[2, 0, 1]).unwrap();
        assert_eq!(crate::onnx::f32_data(&b).unwrap(), vec![9.0, 7.0, 8.0]);
    }
}
