//! Writing ONNX: a small typed builder over tract's protobuf types, used by the quantizer, the exporter and tests.

use prost::Message;
use tract_onnx::pb;

use crate::spec::Dim;

/// The opset pupil writes.
pub const OPSET: i64 = 13;

/// An ONNX attribute value.
#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    String(String),
}

/// Builds one ONNX graph node by node.
#[derive(Debug, Clone, Default)]
pub struct GraphBuilder {
    graph: pb::GraphProto,
    metadata: Vec<(String, String)>,
    opset: Option<i64>,
    counter: usize,
}

fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => Value::DimValue(*n as i64),
                Dim::Symbol(s) => Value::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// ONNX data type codes pupil writes.
pub mod dtype {
    pub const F32: i32 = 1;
    pub const U8: i32 = 2;
    pub const I8: i32 = 3;
    pub const I32: i32 = 6;
    pub const I64: i32 = 7;
    pub const F16: i32 = 10;
}

impl GraphBuilder {
    /// An empty graph called `name`.
    pub fn new(name: &str) -> Self {
        let mut b = GraphBuilder::default();
        b.graph.name = name.to_string();
        b
    }

    /// Sets the opset (default [`OPSET`]).
    pub fn opset(&mut self, opset: i64) -> &mut Self {
        self.opset = Some(opset);
        self
    }

    /// A fresh tensor name with a prefix.
    pub fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_{}", self.counter)
    }

    /// Declares a graph input of f32 elements.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        self.graph.input.push(value_info(name, dtype::F32, dims));
        name.to_string()
    }

    /// Declares a graph output of f32 elements.
    pub fn output(&mut self, name: &str, dims: &[Dim]) -> &mut Self {
        self.graph.output.push(value_info(name, dtype::F32, dims));
        self
    }

    /// Adds an f32 initializer.
    pub fn init_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.graph.initializer.push(pb::TensorProto {
            name: name.to_string(),
            dims: dims.iter().map(|d| *d as i64).collect(),
            data_type: dtype::F32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds an initializer from raw little-endian bytes of an ONNX type.
    pub fn init_raw(&mut self, name: &str, dims: &[usize], data_type: i32, raw: Vec<u8>) -> String {
        self.graph.initializer.push(pb::TensorProto {
            name: name.to_string(),
            dims: dims.iter().map(|d| *d as i64).collect(),
            data_type,
            raw_data: raw,
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds an i64 initializer (shapes, axes).
    pub fn init_i64(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        self.init_raw(name, dims, dtype::I64, data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// Adds a node; returns its first output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let name = self.fresh(op);
        let attribute = attrs
            .iter()
            .map(|(k, v)| {
                use pb::attribute_proto::AttributeType as T;
                let mut a = pb::AttributeProto { name: k.to_string(), ..Default::default() };
                match v {
                    Attr::Int(i) => {
                        a.i = *i;
                        a.r#type = T::Int as i32;
                    }
                    Attr::Float(f) => {
                        a.f = *f;
                        a.r#type = T::Float as i32;
                    }
                    Attr::Ints(v) => {
                        a.ints = v.clone();
                        a.r#type = T::Ints as i32;
                    }
                    Attr::Floats(v) => {
                        a.floats = v.clone();
                        a.r#type = T::Floats as i32;
                    }
                    Attr::String(s) => {
                        a.s = s.as_bytes().to_vec();
                        a.r#type = T::String as i32;
                    }
                }
                a
            })
            .collect();
        self.graph.node.push(pb::NodeProto {
            name,
            op_type: op.to_string(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute,
            ..Default::default()
        });
        outputs.first().map(|s| s.to_string()).unwrap_or_default()
    }

    /// Adds a node with one fresh output name; returns it.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.node(op, inputs, &[&out], attrs)
    }

    /// Adds a `metadata_props` entry.
    pub fn metadata(&mut self, key: &str, value: &str) -> &mut Self {
        self.metadata.push((key.to_string(), value.to_string()));
        self
    }

    /// The finished model protobuf.
    pub fn build(&self) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: 8,
            producer_name: "pupil".into(),
            producer_version: crate::VERSION.into(),
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: self.opset.unwrap_or(OPSET) }],
            graph: Some(self.graph.clone()),
            metadata_props: self
                .metadata
                .iter()
                .map(|(k, v)| pb::StringStringEntryProto { key: k.clone(), value: v.clone() })
                .collect(),
            ..Default::default()
        }
    }

    /// The finished model as ONNX bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.build().encode_to_vec()
    }
}

/// f32 values of an initializer.
pub(crate) fn f32_data(t: &pb::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != dtype::F32 {
        return None;
    }
    if !t.raw_data.is_empty() {
        return Some(t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect());
    }
    let n: i64 = t.dims.iter().product();
    if t.float_data.len() as i64 == n { Some(t.float_data.clone()) } else { None }
}

/// Integer values of an initializer (i8, u8, i32, i64; raw or typed data), as i64; `None` for other types or
/// a length that does not match the dims.
pub(crate) fn int_data(t: &pb::TensorProto) -> Option<Vec<i64>> {
    let n: i64 = t.dims.iter().product();
    let raw = &t.raw_data;
    let v: Vec<i64> = match t.data_type {
        dtype::I8 if !raw.is_empty() => raw.iter().map(|b| *b as i8 as i64).collect(),
        dtype::U8 if !raw.is_empty() => raw.iter().map(|b| *b as i64).collect(),
        dtype::I32 if !raw.is_empty() => {
            raw.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect()
        }
        dtype::I64 if !raw.is_empty() => {
            raw.chunks_exact(8).map(|c| i64::from_le_bytes(std::array::from_fn(|i| c[i]))).collect()
        }
        dtype::I8 | dtype::U8 | dtype::I32 => t.int32_data.iter().map(|v| *v as i64).collect(),
        dtype::I64 => t.int64_data.clone(),
        _ => return None,
    };
    (v.len() as i64 == n).then_some(v)
}

/// One value per output channel from a scalar or a `[m]` vector (a quantization parameter's values).
pub(crate) fn per_channel<T: Copy>(v: Vec<T>, m: usize) -> Option<Vec<T>> {
    match v.len() {
        1 => Some(vec![v[0]; m]),
        n if n == m => Some(v),
        _ => None,
    }
}

/// Encodes a model protobuf.
pub fn encode(model: &pb::ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes bytes atomically: to a temporary file beside `path`, then renamed, so a crash or full disk never leaves
/// a half-written model behind.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> crate::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        crate::Error::io(path, e)
    })
}

/// Dense and convolutional classifiers written directly as ONNX, for tests and examples.
pub mod zoo {
    use super::*;

    /// A fully connected network: `Gemm` layers with `Relu` between them, input `[N, sizes[0]]`.
    /// `weights[i]` is `[sizes[i+1], sizes[i]]` row-major (ONNX `transB = 1`), `biases[i]` has `sizes[i+1]` values.
    pub fn mlp(sizes: &[usize], weights: &[Vec<f32>], biases: &[Vec<f32>]) -> GraphBuilder {
        let mut b = GraphBuilder::new("mlp");
        let n = Dim::Symbol("N".into());
        let mut x = b.input("input", &[n.clone(), Dim::Fixed(sizes[0])]);
        let layers = sizes.len() - 1;
        for i in 0..layers {
            let w = b.init_f32(&format!("fc{i}.weight"), &[sizes[i + 1], sizes[i]], &weights[i]);
            let bias = b.init_f32(&format!("fc{i}.bias"), &[sizes[i + 1]], &biases[i]);
            let out = if i + 1 == layers { "logits".to_string() } else { format!("fc{i}") };
            b.node("Gemm", &[&x, &w, &bias], &[&out], &[("transB", Attr::Int(1))]);
            x = out;
            if i + 1 < layers {
                let relu = format!("relu{i}");
                b.node("Relu", &[&x], &[&relu], &[]);
                x = relu;
            }
        }
        b.output("logits", &[n, Dim::Fixed(sizes[layers])]);
        b
    }

    /// A small CNN on `[N, 1, side, side]`: `Conv 3x3 (pad 1) → Relu → MaxPool 2` for each entry of `channels`,
    /// then `Flatten → Gemm` to `classes`. Weights come from `weight(layer, index)`.
    pub fn cnn(
        side: usize,
        channels: &[usize],
        classes: usize,
        weight: &mut dyn FnMut(usize, usize) -> f32,
    ) -> GraphBuilder {
        let mut b = GraphBuilder::new("cnn");
        let n = Dim::Symbol("N".into());
        let mut x = b.input("input", &[n.clone(), Dim::Fixed(1), Dim::Fixed(side), Dim::Fixed(side)]);
        let mut cin = 1;
        let mut s = side;
        for (l, &cout) in channels.iter().enumerate() {
            let w: Vec<f32> = (0..cout * cin * 9).map(|i| weight(l, i)).collect();
            let bias: Vec<f32> = (0..cout).map(|i| weight(l, 100_000 + i)).collect();
            let w = b.init_f32(&format!("conv{l}.weight"), &[cout, cin, 3, 3], &w);
            let bias = b.init_f32(&format!("conv{l}.bias"), &[cout], &bias);
            let c = b.node(
                "Conv",
                &[&x, &w, &bias],
                &[&format!("conv{l}")],
                &[("kernel_shape", Attr::Ints(vec![3, 3])), ("pads", Attr::Ints(vec![1, 1, 1, 1]))],
            );
            let r = b.node("Relu", &[&c], &[&format!("relu{l}")], &[]);
            x = b.node(
                "MaxPool",
                &[&r],
                &[&format!("pool{l}")],
                &[("kernel_shape", Attr::Ints(vec![2, 2])), ("strides", Attr::Ints(vec![2, 2]))],
            );
            cin = cout;
            s /= 2;
        }
        let flat = b.node("Flatten", &[&x], &["flat"], &[("axis", Attr::Int(1))]);
        let features = cin * s * s;
        let l = channels.len();
        let w: Vec<f32> = (0..classes * features).map(|i| weight(l, i)).collect();
        let bias: Vec<f32> = (0..classes).map(|i| weight(l, 100_000 + i)).collect();
        let w = b.init_f32("fc.weight", &[classes, features], &w);
        let bias = b.init_f32("fc.bias", &[classes], &bias);
        b.node("Gemm", &[&flat, &w, &bias], &["logits"], &[("transB", Attr::Int(1))]);
        b.output("logits", &[n, Dim::Fixed(classes)]);
        b
    }
}
