//! int8 and f32 MLPs built straight from the ONNX protobuf, without tract's parse and graph passes: the chain
//! pupil's quantizer writes for a dense student, `[Flatten] → QuantizeLinear → (Reshape → QLinearConv 1×1 →
//! Reshape)* → MatMulInteger → [Add] → Cast → Mul`, becomes a [`PupilQuantize`] and one [`PupilQMatMul`] per
//! layer (the last with its dequantization folded in); an f32 one, `[Flatten] → (Gemm → [Relu])*` at a fixed
//! batch of at most [`MAX_ROWS`] rows, one [`PupilMatMul`] per layer (bias and ReLU folded in). These are the
//! operators with the parameters `optimize` ends with, so the same outputs bit for bit. tract's parse copies
//! every initializer and its type inference and declutter cost about half of such a model's cold start; here
//! the weights are read once, by the packing. Any other graph (an extra operator, a parameter that is not a
//! constant, a shape the chain does not keep) is left to tract.

use std::borrow::Cow;
use std::collections::HashMap;

use tract_onnx::pb;
use tract_onnx::prelude::*;

use super::gemv::{PackedF32, WeightLayout};
use super::matmul::{MAX_ROWS, PupilMatMul};
use super::op::{PupilQMatMul, QParams, Weights};
use super::qgemv::Isa;
use super::requant::PupilQuantize;
use crate::model::Batch;
use crate::onnx::{dtype, f32_data, int_data, per_channel};

/// The typed graph of an int8 MLP whose single input is `input` (f32, `[batch, example_shape..]`); `None` when
/// `graph` is not such a chain.
pub(crate) fn int8_mlp(
    graph: &pb::GraphProto,
    input: &str,
    example_shape: &[usize],
    batch: Batch,
    isa: Isa,
) -> TractResult<Option<TypedModel>> {
    let Some(layers) = Chain::new(graph).and_then(|g| g.layers(input, example_shape)) else { return Ok(None) };
    let mut model = TypedModel::default();
    let batch = match batch {
        Batch::Fixed(b) => b.to_dim(),
        Batch::Symbolic => model.symbols.sym("N").to_dim(),
    };
    let shape: TVec<TDim> = std::iter::once(batch.clone()).chain(example_shape.iter().map(|d| d.to_dim())).collect();
    let mut x = model.add_source(input, f32::fact(&shape))?;
    // The trailing axes of the current tensor that make up one example: the input's, then one per layer.
    let mut k_dims = example_shape.len();
    let mut a_dt = DatumType::F32;
    for layer in layers {
        x = match layer {
            Layer::Quantize { name, scale, zero_point, dt } => {
                let range = if dt == DatumType::U8 { (0, 255) } else { (-128, 127) };
                a_dt = dt;
                // tract's `QuantizeLinear` multiplies by the reciprocal of the scale.
                let op = PupilQuantize::new(scale.recip(), zero_point, range, dt, isa)?;
                model.wire_node(name, op, &[x])?[0]
            }
            Layer::Dense { name, weights, layout, k, n, q, out_dt, dequantize } => {
                let out_shape = tvec![batch.clone(), n.to_dim()];
                let mut op = PupilQMatMul::new(isa, weights, layout, (k, n), k_dims, a_dt, &q, (out_dt, out_shape));
                if let Some((bias, scale)) = dequantize {
                    let Some(d) = op.dequantized(bias, scale, tvec![batch.clone(), n.to_dim()]) else {
                        return Ok(None);
                    };
                    op = d;
                }
                k_dims = 1;
                a_dt = op.output_facts(&[])?[0].datum_type;
                model.wire_node(name, op, &[x])?[0]
            }
        };
    }
    model.select_output_outlets(&[x])?;
    Ok(Some(model))
}

/// The typed graph of an f32 MLP whose single input is `input` (f32, `[batch, example_shape..]`) at a fixed
/// batch of at most [`MAX_ROWS`] rows; `None` for another batch or when `graph` is not such a chain.
pub(crate) fn f32_mlp(
    graph: &pb::GraphProto,
    input: &str,
    example_shape: &[usize],
    batch: Batch,
    isa: Isa,
) -> TractResult<Option<TypedModel>> {
    let Batch::Fixed(rows @ 1..=MAX_ROWS) = batch else { return Ok(None) };
    let Some(layers) = Chain::new(graph).and_then(|g| g.f32_layers(input, example_shape)) else { return Ok(None) };
    let mut model = TypedModel::default();
    let shape: TVec<TDim> = std::iter::once(rows).chain(example_shape.iter().copied()).map(|d| d.to_dim()).collect();
    let mut x = model.add_source(input, f32::fact(&shape))?;
    // The trailing axes of the current tensor that make up one example: the input's, then one per layer.
    let mut k_dims = example_shape.len();
    for (i, F32Dense { name, weights, layout, k, n, bias, clamp }) in layers.into_iter().enumerate() {
        let packed = PackedF32::pack(k, n, &weights, layout, bias.as_deref());
        let op = PupilMatMul::new(packed, isa, clamp, tvec![rows.to_dim(), n.to_dim()], k_dims);
        let name = if name.is_empty() || model.nodes().iter().any(|n| n.name == name) {
            format!("dense{i}")
        } else {
            name.to_string()
        };
        x = model.wire_node(name, op, &[x])?[0];
        k_dims = 1;
    }
    model.select_output_outlets(&[x])?;
    Ok(Some(model))
}

/// One f32 layer: `clamp(x · W + bias)`, `W` as `layout` says.
struct F32Dense<'a> {
    name: &'a str,
    weights: Cow<'a, [f32]>,
    layout: WeightLayout,
    k: usize,
    n: usize,
    bias: Option<Vec<f32>>,
    clamp: (f32, f32),
}

/// One step of the chain.
enum Layer<'a> {
    /// `QuantizeLinear` of the f32 input: `x / scale + zero_point` onto `dt` (u8 or i8).
    Quantize { name: &'a str, scale: f32, zero_point: i32, dt: DatumType },
    /// A quantized product with constant weights; `dequantize` (bias, scale): the i32 sums are read by
    /// `(sum + bias) as f32 · scale`.
    Dense {
        name: &'a str,
        weights: Weights<'a>,
        layout: WeightLayout,
        k: usize,
        n: usize,
        q: QParams,
        out_dt: DatumType,
        dequantize: Option<(Vec<i32>, Vec<f32>)>,
    },
}

/// The graph's nodes by the tensors they read, and its initializers.
struct Chain<'a> {
    graph: &'a pb::GraphProto,
    inits: HashMap<&'a str, &'a pb::TensorProto>,
    readers: HashMap<&'a str, Vec<&'a pb::NodeProto>>,
}

impl<'a> Chain<'a> {
    fn new(graph: &'a pb::GraphProto) -> Option<Chain<'a>> {
        if graph.output.len() != 1 {
            return None;
        }
        let inits = graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut readers: HashMap<&str, Vec<&pb::NodeProto>> = HashMap::new();
        for node in &graph.node {
            for i in node.input.iter().filter(|i| !i.is_empty()) {
                readers.entry(i.as_str()).or_default().push(node);
            }
        }
        Some(Chain { graph, inits, readers })
    }

    /// The node that alone reads `tensor` (as its first input, with one output); `None` when `tensor` is the
    /// graph's output or read by none or several.
    fn next(&self, tensor: &str) -> Option<&'a pb::NodeProto> {
        if self.graph.output.iter().any(|o| o.name == tensor) {
            return None;
        }
        match self.readers.get(tensor)?.as_slice() {
            [n] if n.input.first().is_some_and(|i| i == tensor) && n.output.len() == 1 => Some(n),
            _ => None,
        }
    }

    /// Initializer `i` of `node` (`None` when the input is absent, not an initializer or a graph input too).
    fn init(&self, node: &pb::NodeProto, i: usize) -> Option<&'a pb::TensorProto> {
        let name = node.input.get(i).filter(|n| !n.is_empty())?;
        if self.graph.input.iter().any(|vi| &vi.name == name) {
            return None; // an input with a default value: the caller may feed another
        }
        self.inits.get(name.as_str()).copied()
    }

    /// Integer input `i` of `node` (of ONNX type `dt`, one value or one per column of `n`) as `n` f32s; `[0.0]`
    /// when the input is absent.
    fn column_ints(&self, node: &pb::NodeProto, i: usize, dt: i32, n: usize) -> Option<Vec<f32>> {
        if node.input.get(i).is_none_or(|name| name.is_empty()) {
            return Some(vec![0.0]);
        }
        let t = self.init(node, i)?;
        if t.data_type != dt {
            return None;
        }
        per_channel(int_data(t)?.iter().map(|&v| v as f32).collect(), n)
    }

    /// The steps from `input` to the graph's output, or `None` when the graph is anything else.
    fn layers(&self, input: &str, example_shape: &[usize]) -> Option<Vec<Layer<'a>>> {
        let mut layers = vec![];
        // The current tensor, its shape after the batch axis, and its element type, as the file has them.
        let (mut cur, mut dims, mut dt) = (input.to_string(), example_shape.to_vec(), dtype::F32);
        while let Some(node) = self.next(&cur) {
            let out = node.output[0].clone();
            match (node.op_type.as_str(), dt) {
                ("Flatten", _) if attrs_are(node, &[("axis", 1)]) => dims = vec![values(&dims)?],
                ("Reshape", _) if attrs_are(node, &[("allowzero", 0)]) && node.input.len() == 2 => {
                    dims = reshaped(&dims, &int_data(self.init(node, 1)?)?)?;
                }
                ("QuantizeLinear", dtype::F32) if attrs_are(node, &[("axis", 1)]) && layers.is_empty() => {
                    let scale = one(f32_data(self.init(node, 1)?)?)?;
                    let (zero_point, qdt) = match node.input.get(2).filter(|z| !z.is_empty()) {
                        Some(_) => zero_point(self.init(node, 2)?)?,
                        None => (0, dtype::U8),
                    };
                    let out_dt = if qdt == dtype::U8 { DatumType::U8 } else { DatumType::I8 };
                    layers.push(Layer::Quantize { name: &node.name, scale, zero_point, dt: out_dt });
                    dt = qdt;
                }
                ("QLinearConv", dtype::U8 | dtype::I8) if dense_conv(node) => {
                    let [k, 1, 1] = dims[..] else { return None };
                    let (layer, out_qdt) = self.qlinear_conv(node, k, dt)?;
                    let Layer::Dense { n, .. } = layer else { return None };
                    dims = vec![n, 1, 1];
                    layers.push(layer);
                    dt = out_qdt;
                }
                ("MatMulInteger", dtype::U8 | dtype::I8) if node.attribute.is_empty() => {
                    let [k] = dims[..] else { return None };
                    let (layer, end) = self.matmul_integer(node, k, dt)?;
                    layers.push(layer);
                    // The dequantization's output is the graph's.
                    return (self.graph.output[0].name == end).then_some(layers);
                }
                _ => return None,
            }
            cur = out;
        }
        None
    }

    /// The f32 layers from `input` to the graph's output, or `None` when the graph is anything else.
    fn f32_layers(&self, input: &str, example_shape: &[usize]) -> Option<Vec<F32Dense<'a>>> {
        let mut layers = vec![];
        // The current tensor and its shape after the batch axis.
        let (mut cur, mut dims) = (input.to_string(), example_shape.to_vec());
        while let Some(node) = self.next(&cur) {
            match node.op_type.as_str() {
                "Flatten" if attrs_are(node, &[("axis", 1)]) => dims = vec![values(&dims)?],
                "Gemm" => {
                    let [k] = dims[..] else { return None };
                    let (mut layer, out) = self.gemm(node, k)?;
                    cur = out;
                    if let Some(relu) = self.next(&cur).filter(|r| r.op_type == "Relu" && r.attribute.is_empty()) {
                        layer.clamp = (0.0, f32::INFINITY);
                        cur = relu.output[0].clone();
                    }
                    dims = vec![layer.n];
                    layers.push(layer);
                    continue;
                }
                _ => return None,
            }
            cur = node.output[0].clone();
        }
        (!layers.is_empty() && self.graph.output[0].name == cur).then_some(layers)
    }

    /// A `Gemm` of the `[batch, k]` activations by constant f32 weights (`alpha = beta = 1`, `A` not
    /// transposed, `B` either way), with a constant bias of one value or one per column, and its output.
    fn gemm(&self, node: &'a pb::NodeProto, k: usize) -> Option<(F32Dense<'a>, String)> {
        let mut trans_b = false;
        for a in &node.attribute {
            match a.name.as_str() {
                "alpha" | "beta" if a.f == 1.0 => {}
                "transA" if a.i == 0 => {}
                "transB" if a.i == 0 || a.i == 1 => trans_b = a.i == 1,
                _ => return None,
            }
        }
        if !(2..=3).contains(&node.input.len()) {
            return None;
        }
        let w = self.init(node, 1)?;
        let [rows, cols] = w.dims[..] else { return None };
        let (wk, n) = if trans_b { (cols, rows) } else { (rows, cols) };
        let n = usize::try_from(n).ok().filter(|&n| n > 0)?;
        let weights = f32_values(w)?;
        if wk != k as i64 || k == 0 || k.checked_mul(n) != Some(weights.len()) {
            return None;
        }
        let bias = match node.input.get(2).filter(|c| !c.is_empty()) {
            Some(_) => {
                let c = self.init(node, 2)?;
                if !(column_shaped(c, n) || c.dims == [1, n as i64]) {
                    return None;
                }
                Some(per_channel(f32_data(c)?, n)?)
            }
            None => None,
        };
        let layout = if trans_b { WeightLayout::NByK } else { WeightLayout::KByN };
        let clamp = (f32::NEG_INFINITY, f32::INFINITY);
        Some((F32Dense { name: &node.name, weights, layout, k, n, bias, clamp }, node.output[0].clone()))
    }

    /// A `QLinearConv` over `[k, 1, 1]` inputs of type `a_qdt`, and its output type.
    fn qlinear_conv(&self, node: &'a pb::NodeProto, k: usize, a_qdt: i32) -> Option<(Layer<'a>, i32)> {
        if !(8..=9).contains(&node.input.len()) {
            return None;
        }
        let w = self.init(node, 3)?;
        let [n, wk, 1, 1] = w.dims[..] else { return None };
        let n = usize::try_from(n).ok()?;
        if wk != k as i64 || w.data_type != dtype::I8 || n.checked_mul(k) != Some(w.raw_data.len()) {
            return None;
        }
        let (a0, x_qdt) = zero_point(self.init(node, 2)?)?;
        let (c0, out_qdt) = zero_point(self.init(node, 7)?)?;
        if x_qdt != a_qdt {
            return None;
        }
        let b0 = self.column_ints(node, 5, dtype::I8, n)?;
        let bias = self.column_ints(node, 8, dtype::I32, n)?;
        let q = QParams {
            bias,
            a0: a0 as f32,
            a_scale: one(f32_data(self.init(node, 1)?)?)?,
            b0,
            b_scale: per_channel(f32_data(self.init(node, 4)?)?, n)?,
            c0: c0 as f32,
            c_scale: one(f32_data(self.init(node, 6)?)?)?,
        };
        let out_dt = if out_qdt == dtype::U8 { DatumType::U8 } else { DatumType::I8 };
        let weights = Weights::I8(bytemuck::cast_slice(&w.raw_data));
        let layer =
            Layer::Dense { name: &node.name, weights, layout: WeightLayout::NByK, k, n, q, out_dt, dequantize: None };
        Some((layer, out_qdt))
    }

    /// `MatMulInteger → [Add(i32 bias)] → Cast(f32) → Mul(scale)` over `[k]` inputs of type `a_qdt`, and the
    /// name of the product's output.
    fn matmul_integer(&self, node: &'a pb::NodeProto, k: usize, a_qdt: i32) -> Option<(Layer<'a>, String)> {
        let w = self.init(node, 1)?;
        let [wk, n] = w.dims[..] else { return None };
        let n = usize::try_from(n).ok()?;
        if wk != k as i64
            || w.data_type != dtype::I8
            || n.checked_mul(k) != Some(w.raw_data.len())
            || node.input.len() > 4
        {
            return None;
        }
        let a0 = match node.input.get(2).filter(|z| !z.is_empty()) {
            Some(_) => {
                let (a0, qdt) = zero_point(self.init(node, 2)?)?;
                if qdt != a_qdt {
                    return None;
                }
                a0
            }
            None => 0,
        };
        let b0 = self.column_ints(node, 3, dtype::I8, n)?;
        let mut next = self.next(&node.output[0])?;
        let mut bias = vec![0i32; n];
        if next.op_type == "Add" && next.attribute.is_empty() && next.input.len() == 2 {
            let b = self.init(next, 1)?;
            if b.data_type != dtype::I32 || !column_shaped(b, n) {
                return None;
            }
            bias = per_channel(int_data(b)?.iter().map(|&v| v as i32).collect(), n)?;
            next = self.next(&next.output[0])?;
        }
        if next.op_type != "Cast" || !attrs_are(next, &[("to", dtype::F32 as i64)]) || !has_attr(next, "to") {
            return None;
        }
        let mul = self.next(&next.output[0])?;
        if mul.op_type != "Mul" || !mul.attribute.is_empty() || mul.input.len() != 2 {
            return None;
        }
        let s = self.init(mul, 1)?;
        if !column_shaped(s, n) {
            return None;
        }
        let scale = per_channel(f32_data(s)?, n)?;
        let q = QParams { bias: vec![0.0], a0: a0 as f32, a_scale: 1.0, b0, b_scale: vec![1.0], c0: 0.0, c_scale: 1.0 };
        let weights = Weights::I8(bytemuck::cast_slice(&w.raw_data));
        let layer = Layer::Dense {
            name: &node.name,
            weights,
            layout: WeightLayout::KByN,
            k,
            n,
            q,
            out_dt: DatumType::I32,
            dequantize: Some((bias, scale)),
        };
        Some((layer, mul.output[0].clone()))
    }
}

/// The values of an f32 initializer: its raw bytes read in place where they are aligned for f32 (a little-endian
/// CPU, as the file's), else a copy; `None` for another type.
fn f32_values(t: &pb::TensorProto) -> Option<Cow<'_, [f32]>> {
    if t.data_type == dtype::F32
        && cfg!(target_endian = "little")
        && !t.raw_data.is_empty()
        && let Ok(v) = bytemuck::try_cast_slice::<u8, f32>(&t.raw_data)
    {
        return Some(Cow::Borrowed(v));
    }
    f32_data(t).map(Cow::Owned)
}

/// The one value of a scalar (or one-element) parameter.
fn one<T: Copy>(v: Vec<T>) -> Option<T> {
    Some(per_channel(v, 1)?[0])
}

/// Whether a parameter broadcast against `[batch, n]` keeps that shape: a scalar, `[1]` or `[n]`.
fn column_shaped(t: &pb::TensorProto, n: usize) -> bool {
    t.dims.is_empty() || t.dims == [n as i64] || t.dims == [1]
}

/// The value and ONNX type (u8 or i8) of a scalar zero point.
fn zero_point(t: &pb::TensorProto) -> Option<(i32, i32)> {
    if !matches!(t.data_type, dtype::U8 | dtype::I8) {
        return None;
    }
    Some((i32::try_from(one(int_data(t)?)?).ok()?, t.data_type))
}

/// The shape after the batch axis of a `Reshape` of `[batch, dims..]` to `spec`, when it keeps the batch axis
/// (`0` or `-1` first, then fixed sizes holding the same values).
fn reshaped(dims: &[usize], spec: &[i64]) -> Option<Vec<usize>> {
    let (first, rest) = spec.split_first()?;
    if !matches!(first, 0 | -1) {
        return None;
    }
    let rest: Vec<usize> = rest.iter().map(|&d| usize::try_from(d).ok().filter(|&d| d > 0)).collect::<Option<_>>()?;
    (values(&rest).is_some() && values(&rest) == values(dims)).then_some(rest)
}

/// The number of values of a shape, `None` when it overflows `usize` (a graph pupil's chains cannot hold).
fn values(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

fn has_attr(node: &pb::NodeProto, name: &str) -> bool {
    node.attribute.iter().any(|a| a.name == name)
}

/// Whether every attribute of `node` is one of the integer attributes `allowed` with its value.
fn attrs_are(node: &pb::NodeProto, allowed: &[(&str, i64)]) -> bool {
    node.attribute.iter().all(|a| allowed.iter().any(|(name, v)| a.name == *name && a.i == *v && a.ints.is_empty()))
}

/// Whether a `QLinearConv`'s attributes make it a 1×1 convolution of stride 1 without padding, in one group.
fn dense_conv(node: &pb::NodeProto) -> bool {
    node.attribute.iter().all(|a| match a.name.as_str() {
        "kernel_shape" | "strides" | "dilations" => a.ints.iter().all(|&v| v == 1),
        "pads" => a.ints.iter().all(|&v| v == 0),
        "group" => a.i == 1,
        "auto_pad" => a.s.is_empty() || a.s == b"NOTSET" || a.s == b"VALID",
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::zoo::{Rng, mlp};
    use crate::quantize::{ActivationType, QuantizeOptions, quantize};
    use crate::{Model, ModelOptions};

    /// An int8 MLP from pupil's quantizer, calibrated on 32 random examples.
    fn int8_mlp_bytes(sizes: &[usize], seed: u64, options: &QuantizeOptions) -> Vec<u8> {
        let mut rng = Rng::new(seed);
        let calibration: Vec<f32> = (0..32 * sizes[0]).map(|_| rng.unit()).collect();
        quantize(&mlp(sizes, seed).to_bytes(), options, Some(&calibration)).unwrap().0
    }

    /// Whether `model` was read by [`int8_mlp`] or [`f32_mlp`]: only their operators, no tract ones.
    fn read_directly(model: &Model) -> bool {
        model.typed_model().nodes().iter().skip(1).all(|n| {
            let op = n.op.as_op();
            op.is::<PupilQMatMul>() || op.is::<PupilQuantize>() || op.is::<PupilMatMul>()
        })
    }

    /// Loads `bytes` both ways, runs both on `rows` examples and asserts the same bits out.
    fn assert_same_outputs(bytes: &[u8], options: ModelOptions, rows: usize, what: &str) {
        let direct = Model::from_bytes(bytes, options.clone()).unwrap();
        let tract = Model::from_bytes_through_tract(bytes, options).unwrap();
        assert!(read_directly(&direct), "{what}: not read directly");
        assert_eq!(direct.load_stats().analyse_ms, 0.0, "{what}: tract analysed it");
        assert_eq!(direct.classes(), tract.classes(), "{what}");
        let mut rng = Rng::new(rows as u64);
        let len = direct.example_len() * rows;
        // Values in the calibrated range, far outside it, and on the quantization's rounding ties.
        let extremes = [0.0, 1.0, -1.0, 1e30, -1e30, f32::MAX, f32::MIN, 0.5, 2.5e-3, -0.0];
        let input: Vec<f32> =
            (0..len).map(|i| if i % 7 == 3 { extremes[i % extremes.len()] } else { rng.unit() }).collect();
        // The direct model runs other values first: its operators keep their buffers from one run to the next.
        let other: Vec<f32> = input.iter().map(|v| 1.0 - v).collect();
        direct.run_batch(&other).unwrap();
        let (a, b) = (direct.run_batch(&input).unwrap(), tract.run_batch(&input).unwrap());
        assert_eq!(a.len(), direct.classes() * rows, "{what}");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b), "{what}: outputs differ");
    }

    #[test]
    fn an_int8_mlp_read_directly_computes_what_tract_s_path_computes() {
        let per_tensor = QuantizeOptions { per_channel: false, ..Default::default() };
        let signed = QuantizeOptions { activations: ActivationType::I8, ..Default::default() };
        let cases = [
            ("default", vec![24, 40, 33, 7], QuantizeOptions::default()),
            ("per-tensor weight scales", vec![17, 50, 9], per_tensor),
            ("i8 activations", vec![30, 20, 20, 11], signed),
            ("one layer", vec![12, 5], QuantizeOptions::default()),
        ];
        for (what, sizes, q) in &cases {
            let bytes = int8_mlp_bytes(sizes, 7, q);
            for batch in [Batch::Fixed(1), Batch::Fixed(3), Batch::Symbolic] {
                let rows = if let Batch::Fixed(b) = batch { b } else { 5 };
                let options = ModelOptions { batch, ..Default::default() };
                assert_same_outputs(&bytes, options, rows, &format!("{what} {sizes:?}, {batch:?}"));
            }
            let two = ModelOptions { threads: 2, ..Default::default() };
            assert_same_outputs(&bytes, two, 1, &format!("{what} {sizes:?}, 2 threads"));
        }
    }

    #[test]
    fn the_shipped_int8_student_is_read_directly() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/mnist-student.int8.onnx");
        let bytes = std::fs::read(path).unwrap();
        assert_same_outputs(&bytes, ModelOptions::default(), 1, "the int8 student");
        let model = Model::from_bytes(&bytes, ModelOptions::default()).unwrap();
        // Source, quantize and the three layers: the Flatten and the Reshapes are no-ops on the packed layout.
        assert_eq!(model.typed_model().nodes().len(), 5);
        assert_eq!(model.load_stats().analyse_ms, 0.0, "no tract analysis");
    }

    /// The graph of `bytes`, decoded.
    fn graph_of(bytes: &[u8]) -> pb::ModelProto {
        crate::model::decode_onnx(bytes).unwrap()
    }

    fn read(proto: &pb::ModelProto) -> bool {
        let graph = proto.graph.as_ref().unwrap();
        let shape = [graph_input_len(graph)];
        int8_mlp(graph, "input", &shape, Batch::Fixed(1), Isa::best()).unwrap().is_some()
    }

    fn graph_input_len(graph: &pb::GraphProto) -> usize {
        let dims = match &graph.input[0].r#type.as_ref().unwrap().value {
            Some(pb::type_proto::Value::TensorType(t)) => t.shape.as_ref().unwrap().dim.clone(),
            _ => unreachable!(),
        };
        match dims[1].value {
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => v as usize,
            _ => unreachable!(),
        }
    }

    /// `proto` with the output of its first `op_type` node read by one more node.
    fn read_twice(proto: &pb::ModelProto, op_type: &str) -> pb::ModelProto {
        let mut twice = proto.clone();
        let g = twice.graph.as_mut().unwrap();
        let hidden = g.node.iter().find(|n| n.op_type == op_type).unwrap().output[0].clone();
        let spy = pb::NodeProto {
            op_type: "Identity".into(),
            input: vec![hidden],
            output: vec!["spy".into()],
            ..Default::default()
        };
        g.node.push(spy);
        twice
    }

    #[test]
    fn any_other_graph_is_left_to_tract() {
        let bytes = int8_mlp_bytes(&[10, 8, 4], 3, &QuantizeOptions::default());
        let proto = graph_of(&bytes);
        assert!(read(&proto), "the unchanged chain is read");

        // A float operator after the logits.
        let mut softmax = proto.clone();
        let g = softmax.graph.as_mut().unwrap();
        let last = g.node.iter().position(|n| n.output[0] == g.output[0].name).unwrap();
        g.node[last].output[0] = "pre_softmax".into();
        g.node.push(pb::NodeProto {
            op_type: "Softmax".into(),
            input: vec!["pre_softmax".into()],
            output: vec![g.output[0].name.clone()],
            ..Default::default()
        });
        assert!(!read(&softmax), "a Softmax after the chain");
        let model = Model::from_bytes(&crate::onnx::encode(&softmax), ModelOptions::default()).unwrap();
        assert!(!read_directly(&model));
        let out = model.run(&[0.5; 10]).unwrap();
        assert!((out.iter().sum::<f32>() - 1.0).abs() < 1e-5, "tract ran it: {out:?}");

        // Each parameter that must be a constant given as a graph input instead (an input with a default).
        let mut fed = proto.clone();
        let g = fed.graph.as_mut().unwrap();
        let conv = g.node.iter().find(|n| n.op_type == "QLinearConv").unwrap().clone();
        let mut scale = pb::ValueInfoProto { name: conv.input[1].clone(), ..Default::default() };
        scale.r#type = g.input[0].r#type.clone();
        g.input.push(scale);
        assert!(!read(&fed), "an activation scale the caller may feed");

        // A 3×3 kernel.
        let mut wide = proto.clone();
        let g = wide.graph.as_mut().unwrap();
        let conv = g.node.iter_mut().find(|n| n.op_type == "QLinearConv").unwrap();
        conv.attribute.push(pb::AttributeProto { name: "kernel_shape".into(), ints: vec![3, 3], ..Default::default() });
        assert!(!read(&wide), "a 3×3 convolution");

        // The hidden layer's output read twice.
        assert!(!read(&read_twice(&proto, "QLinearConv")), "a tensor with two readers");

        // The f32 model.
        assert!(!read(&graph_of(&mlp(&[10, 8, 4], 3).to_bytes())), "an f32 MLP");
    }

    #[test]
    fn an_f32_mlp_read_directly_computes_what_tract_s_path_computes() {
        for sizes in [vec![24, 40, 33, 7], vec![12, 5], vec![30, 20, 20, 11]] {
            let bytes = mlp(&sizes, 5).to_bytes();
            for batch in [Batch::Fixed(1), Batch::Fixed(3), Batch::Fixed(MAX_ROWS)] {
                let rows = if let Batch::Fixed(b) = batch { b } else { unreachable!() };
                let options = ModelOptions { batch, ..Default::default() };
                assert_same_outputs(&bytes, options, rows, &format!("f32 {sizes:?}, {batch:?}"));
            }
            let two = ModelOptions { threads: 2, ..Default::default() };
            assert_same_outputs(&bytes, two, 1, &format!("f32 {sizes:?}, 2 threads"));
            // The parameters as typed values instead of raw bytes (read by a copy instead of in place).
            let mut typed = graph_of(&bytes);
            for t in &mut typed.graph.as_mut().unwrap().initializer {
                t.float_data = f32_data(t).unwrap();
                t.raw_data.clear();
            }
            let typed = crate::onnx::encode(&typed);
            assert_same_outputs(&typed, ModelOptions::default(), 1, &format!("f32 {sizes:?}, float_data"));
            // tract's GEMM is better for many rows, and a symbolic batch may be many.
            for batch in [Batch::Fixed(MAX_ROWS + 1), Batch::Symbolic] {
                let model = Model::from_bytes(&bytes, ModelOptions { batch, ..Default::default() }).unwrap();
                assert!(model.load_stats().analyse_ms > 0.0, "f32 {sizes:?}, {batch:?}: read directly");
            }
        }
    }

    #[test]
    fn the_shipped_f32_student_and_teacher_are_read_directly() {
        for name in ["mnist-student", "mnist-teacher"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../models/{name}.onnx"));
            let bytes = std::fs::read(path).unwrap();
            assert_same_outputs(&bytes, ModelOptions::default(), 1, name);
            let model = Model::from_bytes(&bytes, ModelOptions::default()).unwrap();
            // Source and the three layers (the Flatten folded into the first, the ReLUs into their layers).
            assert_eq!(model.typed_model().nodes().len(), 4, "{name}");
            assert_eq!(model.load_stats().analyse_ms, 0.0, "{name}: no tract analysis");
        }
    }

    fn f32_read(proto: &pb::ModelProto) -> bool {
        let graph = proto.graph.as_ref().unwrap();
        let shape = [graph_input_len(graph)];
        f32_mlp(graph, "input", &shape, Batch::Fixed(1), Isa::best()).unwrap().is_some()
    }

    #[test]
    fn any_other_f32_graph_is_left_to_tract() {
        let proto = graph_of(&mlp(&[10, 8, 4], 3).to_bytes());
        assert!(f32_read(&proto), "the unchanged chain is read");
        let edit = |what: &str, f: &dyn Fn(&mut pb::GraphProto)| {
            let mut p = proto.clone();
            f(p.graph.as_mut().unwrap());
            assert!(!f32_read(&p), "{what}");
            // Where tract loads it, tract analysed it.
            let model = Model::from_bytes(&crate::onnx::encode(&p), ModelOptions::default());
            if let Ok(model) = model {
                assert!(model.load_stats().analyse_ms > 0.0, "{what}: read directly");
            }
        };
        let first = |g: &pb::GraphProto| g.node.iter().position(|n| n.op_type == "Gemm").unwrap();
        for (name, f, i) in [("alpha", 0.5, 0), ("beta", 2.0, 0), ("transA", 0.0, 1)] {
            edit(&format!("{name} = {f} {i}"), &|g| {
                let at = first(g);
                g.node[at].attribute.push(pb::AttributeProto { name: name.into(), f, i, ..Default::default() });
            });
        }
        edit("a Sigmoid after the first layer", &|g| {
            let at = first(g);
            let out = g.node[at].output[0].clone();
            g.node[at].output[0] = "pre_sigmoid".into();
            let sigmoid = pb::NodeProto {
                op_type: "Sigmoid".into(),
                input: vec!["pre_sigmoid".into()],
                output: vec![out],
                ..Default::default()
            };
            g.node.insert(at + 1, sigmoid);
        });
        edit("a bias the caller may feed", &|g| {
            let bias = g.node[first(g)].input[2].clone();
            let mut fed = pb::ValueInfoProto { name: bias, ..Default::default() };
            fed.r#type = g.input[0].r#type.clone();
            g.input.push(fed);
        });
        edit("weights of the wrong width", &|g| {
            let w = g.node[first(g)].input[1].clone();
            let t = g.initializer.iter_mut().find(|t| t.name == w).unwrap();
            t.dims.swap(0, 1);
        });
        assert!(!f32_read(&read_twice(&proto, "Gemm")), "a tensor with two readers");
        // The int8 model is not an f32 chain.
        let int8 = graph_of(&int8_mlp_bytes(&[10, 8, 4], 3, &QuantizeOptions::default()));
        assert!(!f32_read(&int8), "an int8 MLP");
    }
}
