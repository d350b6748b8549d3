//! `Model`: loads an ONNX file into an optimised tract plan and runs it (`predict`, `predict_batch`, `predict_image`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use crate::digest::Digest;
use prost::Message;
use serde::{Deserialize, Serialize};
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::error::{Error, Result, catch_panic};
use crate::meta::{ModelMeta, PreprocessSpec, SpecSource, card_path};
use crate::prediction::Prediction;
use crate::spec::{Dim, ElementType, TensorSpec};

/// The batch dimension a model is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Batch {
    /// Every run uses exactly this many examples (smaller batches are padded). Fastest for batch 1.
    Fixed(usize),
    /// The batch size is a symbol resolved at each run.
    Symbolic,
}

/// How to load a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelOptions {
    /// Batch dimension to compile for (default: fixed 1).
    pub batch: Batch,
    /// Worker threads for matrix products (default 1; phones usually want 1–2).
    pub threads: usize,
    /// Classes returned in `Prediction::top` (default 5).
    pub top_k: usize,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions { batch: Batch::Fixed(1), threads: 1, top_k: 5 }
    }
}

impl ModelOptions {
    /// Options with a given batch mode.
    pub fn with_batch(mut self, batch: Batch) -> Self {
        self.batch = batch;
        self
    }
    /// Options with a given thread count.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }
}

/// Facts about the ONNX file itself: what `pupil inspect` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// sha256 of the model bytes, lowercase hex.
    pub sha256: String,
    pub file_size: u64,
    pub opset: i64,
    pub producer: String,
    /// Node count per operator (`domain::Op` outside the default domain).
    pub operators: BTreeMap<String, usize>,
    /// Parameters (initializer and constant elements).
    pub parameters: u64,
    /// Parameter bytes per element type.
    pub parameter_bytes: BTreeMap<ElementType, u64>,
    pub node_count: usize,
}

/// A loaded, optimised model, ready to run. Cheap to share across threads (`&Model` is `Sync`).
pub struct Model {
    plan: Arc<TypedRunnableModel>,
    states: Mutex<Vec<TypedSimpleState>>,
    /// The input tensor of the last run, reused by the next (one run at a time; a concurrent one makes its own).
    input: crate::kernels::scratch::KeptTensor,
    /// [`ModelInfo`] but the hash, which `digest` finishes after the load.
    unhashed_info: ModelInfo,
    info: OnceLock<ModelInfo>,
    digest: Option<Digest>,
    meta: ModelMeta,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// Shape of one example, without the batch dimension.
    example_shape: Vec<usize>,
    classes: usize,
    output_is_probability: bool,
    options: ModelOptions,
    load_stats: crate::profile::LoadStats,
    /// The `QLinearConv` nodes run on f32 kernels on the int8 grid ([`crate::kernels::qconv`]), by name.
    int8_convolutions_on_f32: Vec<String>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("sha256", &self.info().sha256)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("options", &self.options)
            .finish()
    }
}

/// Decodes ONNX bytes, mapping failures to [`Error::NotOnnx`]. Each tensor's bytes are copied once, into its
/// field (see [`Lent`]).
pub fn decode_onnx(bytes: &[u8]) -> Result<pb::ModelProto> {
    let proto = pb::ModelProto::decode(Lent(bytes)).map_err(|e| Error::NotOnnx { reason: e.to_string() })?;
    if proto.graph.is_none() {
        return Err(Error::NotOnnx { reason: "the protobuf has no graph".into() });
    }
    Ok(proto)
}

/// The file's bytes as a [`Buf`](prost::bytes::Buf) that lends the runs prost asks for instead of copying them.
///
/// prost decodes a `bytes` field in two steps: it takes the field's run out of the buffer as a
/// [`Bytes`](prost::bytes::Bytes) (`copy_to_bytes`), then copies that into the field's `Vec<u8>`. Out of a plain
/// `&[u8]` the first step is a copy as well (a fresh allocation the size of the tensor), so every weight was
/// copied twice: 6% of the f32 student's load in `perf`, then freed. Here `copy_to_bytes` returns a `Bytes` that
/// points into the input.
///
/// Why that `Bytes`, which claims `'static`, never outlives the input: prost hands it straight to
/// `BytesAdapter::replace_with`, which for a `Vec<u8>` field copies it and drops it before `decode` returns;
/// every `bytes` field of tract's ONNX types is a `Vec<u8>` (the `const` items below stop the build if one
/// becomes a `Bytes`), and nothing else in prost's decoding calls `copy_to_bytes` or keeps a `Bytes`.
struct Lent<'a>(&'a [u8]);

// The four `bytes` fields of tract's ONNX types, as `Vec<u8>`: a field turned into `Bytes` (which would keep the
// lent run past the decode) fails to compile here.
const _: fn(pb::TensorProto, pb::AttributeProto) -> [Vec<u8>; 2] = |t, a| [t.raw_data, a.s];
const _: fn(pb::TensorProto, pb::AttributeProto) -> [Vec<Vec<u8>>; 2] = |t, a| [t.string_data, a.strings];

impl prost::bytes::Buf for Lent<'_> {
    fn remaining(&self) -> usize {
        self.0.len()
    }

    fn chunk(&self) -> &[u8] {
        self.0
    }

    fn advance(&mut self, cnt: usize) {
        self.0 = &self.0[cnt..];
    }

    fn copy_to_bytes(&mut self, len: usize) -> prost::bytes::Bytes {
        let (run, rest) = self.0.split_at(len);
        self.0 = rest;
        // SAFETY: the `Bytes` is copied into a `Vec<u8>` field and dropped inside the `decode` call that borrows
        // the input (see the type's documentation), so the run it points to outlives it.
        let run: &'static [u8] = unsafe { std::mem::transmute::<&[u8], &'static [u8]>(run) };
        prost::bytes::Bytes::from_static(run)
    }
}

pub use crate::digest::sha256_hex;

fn dims_of(vi: &pb::ValueInfoProto) -> (Vec<Dim>, ElementType) {
    use pb::tensor_shape_proto::dimension::Value as D;
    use pb::type_proto::Value;
    let mut dims = vec![];
    let mut dtype = ElementType::Other;
    if let Some(Value::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        dtype = ElementType::from_onnx(t.elem_type);
        if let Some(shape) = &t.shape {
            for d in &shape.dim {
                dims.push(match &d.value {
                    Some(D::DimValue(v)) if *v >= 0 => Dim::Fixed(*v as usize),
                    Some(D::DimParam(p)) => Dim::Symbol(p.clone()),
                    _ => Dim::Symbol("?".into()),
                });
            }
        }
    }
    (dims, dtype)
}

fn tensor_elements(t: &pb::TensorProto) -> u64 {
    t.dims.iter().map(|d| (*d).max(0) as u64).product()
}

/// Reads what can be known from the protobuf alone.
pub(crate) fn proto_info(proto: &pb::ModelProto, bytes_len: u64, sha256: String) -> ModelInfo {
    let graph = proto.graph.as_ref().expect("checked by decode_onnx");
    let mut operators = BTreeMap::new();
    let mut parameters = 0u64;
    let mut parameter_bytes: BTreeMap<ElementType, u64> = BTreeMap::new();
    let mut count_tensor = |t: &pb::TensorProto| {
        let n = tensor_elements(t);
        parameters += n;
        let dt = ElementType::from_onnx(t.data_type);
        *parameter_bytes.entry(dt).or_default() += n * dt.size() as u64;
    };
    for t in &graph.initializer {
        count_tensor(t);
    }
    for node in &graph.node {
        let key = if node.domain.is_empty() || node.domain == "ai.onnx" {
            node.op_type.clone()
        } else {
            format!("{}::{}", node.domain, node.op_type)
        };
        *operators.entry(key).or_default() += 1;
        if node.op_type == "Constant" {
            for a in &node.attribute {
                if let Some(t) = &a.t {
                    count_tensor(t);
                }
            }
        }
    }
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(0);
    ModelInfo {
        sha256,
        file_size: bytes_len,
        opset,
        producer: format!("{} {}", proto.producer_name, proto.producer_version).trim().to_string(),
        operators,
        parameters,
        parameter_bytes,
        node_count: graph.node.len(),
    }
}

/// The graph's real inputs (ONNX < 4 lists initializers among inputs too).
fn graph_inputs(graph: &pb::GraphProto) -> Vec<TensorSpec> {
    let inits: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .iter()
        .filter(|vi| !inits.contains(vi.name.as_str()))
        .map(|vi| {
            let (shape, dtype) = dims_of(vi);
            TensorSpec { name: vi.name.clone(), shape, dtype }
        })
        .collect()
}

fn check_operators(graph: &pb::GraphProto) -> Result<()> {
    let register = tract_onnx::onnx().op_register;
    for node in &graph.node {
        let standard = node.domain.is_empty() || node.domain == "ai.onnx" || node.domain == "ai.onnx.ml";
        if !standard || !register.0.contains_key(&node.op_type) {
            return Err(Error::UnsupportedOperator {
                op: node.op_type.clone(),
                domain: if node.domain.is_empty() { "ai.onnx".into() } else { node.domain.clone() },
                node: node.name.clone(),
            });
        }
    }
    Ok(())
}

fn invalid(e: impl std::fmt::Display) -> Error {
    Error::InvalidModel { reason: e.to_string() }
}

impl Model {
    /// Loads a model file, and its model card (`NAME.card.json`) when one sits beside it.
    pub fn load(path: impl AsRef<Path>, options: ModelOptions) -> Result<Model> {
        let path = path.as_ref();
        let mut clock = crate::profile::LoadClock::start();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let card = card_path(path);
        let card_json = match std::fs::read_to_string(&card) {
            Ok(s) => Some((s, card.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(card, e)),
        };
        clock.stats.read_ms = Some(clock.lap());
        Self::build(&bytes, card_json, options, clock)
    }

    /// Loads a model from memory (an app's asset).
    pub fn from_bytes(bytes: &[u8], options: ModelOptions) -> Result<Model> {
        Self::build(bytes, None, options, crate::profile::LoadClock::start())
    }

    /// Loads a model from memory with a model card's JSON text (labels, preprocessing).
    pub fn from_bytes_with_card(bytes: &[u8], card_json: &str, options: ModelOptions) -> Result<Model> {
        let clock = crate::profile::LoadClock::start();
        Self::build(bytes, Some((card_json.to_string(), "model card".into())), options, clock)
    }

    fn build(
        bytes: &[u8],
        card: Option<(String, String)>,
        options: ModelOptions,
        clock: crate::profile::LoadClock,
    ) -> Result<Model> {
        catch_panic("loading model", || {
            // Only `info()` needs the hash: it is computed on another core during the load and after it.
            let (mut model, digest) = Digest::during(bytes, || Self::build_inner(bytes, card, options, clock, true))?;
            model.digest = Some(digest);
            Ok(model)
        })
    }

    /// Loads `bytes` through tract's parse and passes even where [`crate::kernels::direct_mlp`] would read the
    /// graph itself: what that path must match.
    #[cfg(test)]
    pub(crate) fn from_bytes_through_tract(bytes: &[u8], options: ModelOptions) -> Result<Model> {
        Self::build_inner(bytes, None, options, crate::profile::LoadClock::start(), false)
    }

    /// `use_direct`: MLPs are read straight from the protobuf ([`crate::kernels::direct_mlp`]).
    fn build_inner(
        bytes: &[u8],
        card: Option<(String, String)>,
        options: ModelOptions,
        mut clock: crate::profile::LoadClock,
        use_direct: bool,
    ) -> Result<Model> {
        if options.threads == 0 {
            return Err(Error::Options { reason: "threads must be at least 1, got 0".into() });
        }
        if let Batch::Fixed(0) = options.batch {
            return Err(Error::Options { reason: "a fixed batch must be at least 1, got 0".into() });
        }
        let proto = decode_onnx(bytes)?;
        // The hash is filled in by `info()`, from the digest.
        let info = proto_info(&proto, bytes.len() as u64, String::new());
        let graph = proto.graph.as_ref().expect("checked by decode_onnx");
        check_operators(graph)?;
        let inputs = graph_inputs(graph);
        let outputs: Vec<TensorSpec> = graph
            .output
            .iter()
            .map(|vi| {
                let (shape, dtype) = dims_of(vi);
                TensorSpec { name: vi.name.clone(), shape, dtype }
            })
            .collect();
        if inputs.len() != 1 {
            return Err(invalid(format!("pupil runs single-input models, this one has {} inputs", inputs.len())));
        }
        if outputs.is_empty() {
            return Err(invalid("the graph has no output"));
        }
        let input = &inputs[0];
        if input.dtype != ElementType::F32 {
            return Err(invalid(format!("input `{}` must be f32, it is {}", input.name, input.dtype)));
        }
        if input.shape.len() < 2 {
            return Err(invalid(format!(
                "input `{}` must have a batch dimension and at least one more, its shape is {}",
                input.name,
                input.shape_string()
            )));
        }
        let mut example_shape = vec![];
        for (i, d) in input.shape.iter().enumerate().skip(1) {
            match d {
                Dim::Fixed(n) if *n > 0 => example_shape.push(*n),
                _ => {
                    return Err(invalid(format!(
                        "input `{}` dimension {i} is `{d}`: only the batch dimension may be symbolic",
                        input.name
                    )));
                }
            }
        }
        match (&input.shape[0], options.batch) {
            (Dim::Fixed(n), Batch::Fixed(b)) if *n != b => {
                return Err(Error::Options {
                    reason: format!("the model's batch dimension is fixed at {n}, options ask for batch {b}"),
                });
            }
            (Dim::Fixed(n), Batch::Symbolic) => {
                return Err(Error::Options {
                    reason: format!("the model's batch dimension is fixed at {n}, it cannot run a symbolic batch"),
                });
            }
            _ => {}
        }
        let output_is_probability = graph
            .node
            .iter()
            .find(|n| n.output.first() == Some(&outputs[0].name))
            .is_some_and(|n| n.op_type == "Softmax");

        let mut meta =
            ModelMeta::from_props(proto.metadata_props.iter().map(|p| (p.key.clone(), p.value.clone())).collect())?;
        if let Some((json, name)) = &card {
            meta.merge_card(json, name)?;
        }
        if meta.preprocess.is_none() {
            let full: Vec<usize> = std::iter::once(1).chain(example_shape.iter().copied()).collect();
            if let Some(spec) = PreprocessSpec::infer_from_shape(&full) {
                meta.preprocess = Some(spec);
                meta.preprocess_source = Some(SpecSource::Inferred);
            }
        }

        clock.stats.decode_ms = clock.lap();
        let accel = crate::kernels::Acceleration::current();
        let direct = if use_direct {
            crate::kernels::direct_mlp(graph, &input.name, &example_shape, options.batch, accel)
                .map_err(|e| invalid(format!("{e:#}")))?
        } else {
            None
        };
        let (typed, int8_convolutions_on_f32) = match direct {
            Some(typed) => {
                // No tract parse or analysis: the chain was read from the protobuf.
                clock.stats.analyse_ms = 0.0;
                (typed, vec![])
            }
            None => Self::through_tract(proto, &example_shape, options.batch, accel, &mut clock)?,
        };
        clock.stats.optimise_ms = clock.lap();
        let out_fact = typed.output_fact(0).map_err(|e| invalid(format!("{e:#}")))?;
        // Values per example: the output's axes after the batch axis (a classifier's `[n, classes]`, an image's
        // `[n, c, h, w]`); a rank-1 output is one example's values.
        let per_example = if out_fact.shape.rank() > 1 { &out_fact.shape[1..] } else { &out_fact.shape[..] };
        let classes = per_example
            .iter()
            .map(|d| d.as_i64().and_then(|d| usize::try_from(d).ok()))
            .product::<Option<usize>>()
            .ok_or_else(|| invalid(format!("output shape {:?} has no fixed size per example", out_fact.shape)))?;
        if let Some(labels) = &meta.labels
            && labels.len() != classes
        {
            return Err(Error::Metadata {
                key: crate::meta::LABELS_KEY.into(),
                reason: format!("expected {classes} labels (one per output class), got {}", labels.len()),
            });
        }
        let run_options = RunOptions {
            executor: (options.threads > 1).then(|| tract_linalg::multithread::Executor::multithread(options.threads)),
            ..Default::default()
        };
        let plan = typed.into_runnable_with_options(&run_options).map_err(|e| invalid(format!("{e:#}")))?;
        clock.stats.plan_ms = clock.lap();
        Ok(Model {
            plan,
            states: Mutex::new(vec![]),
            input: crate::kernels::scratch::KeptTensor::new(),
            unhashed_info: info,
            info: OnceLock::new(),
            digest: None,
            meta,
            inputs,
            outputs,
            example_shape,
            classes,
            output_is_probability,
            options,
            load_stats: clock.finish(),
            int8_convolutions_on_f32,
        })
    }

    /// tract's parse, analysis and optimisation with pupil's kernels in them ([`crate::kernels::optimize_int8`]):
    /// the typed graph and the int8 convolutions left on f32 kernels. Laps `clock` after the analysis.
    fn through_tract(
        mut proto: tract_onnx::pb::ModelProto,
        example_shape: &[usize],
        batch: Batch,
        accel: crate::kernels::Acceleration,
        clock: &mut crate::profile::LoadClock,
    ) -> Result<(TypedModel, Vec<String>)> {
        let rewrite = if accel == crate::kernels::Acceleration::Off {
            crate::kernels::qconv::Rewrite::default()
        } else {
            crate::kernels::qconv::to_f32_convolutions(&mut proto)
        };
        let mut model = tract_onnx::onnx().model_for_proto_model(&proto).map_err(|e| invalid(format!("{e:#}")))?;
        let batch_dim: TDim = match batch {
            Batch::Fixed(b) => b.to_dim(),
            Batch::Symbolic => model.symbols.sym("N").to_dim(),
        };
        let dims: TVec<TDim> = std::iter::once(batch_dim).chain(example_shape.iter().map(|d| d.to_dim())).collect();
        model
            .set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), dims))
            .map_err(|e| invalid(format!("{e:#}")))?;
        clock.stats.analyse_ms = clock.lap();
        let (typed, replaced) =
            crate::kernels::optimize_int8(model, accel, &rewrite.int8).map_err(|e| invalid(format!("{e:#}")))?;
        // The int8 convolutions left on pupil's f32 kernels: the rewritten ones no integer kernel took.
        let on_int8 = |conv: &str| {
            replaced.iter().any(|r| r.op == "PupilQGridConv" && (r.node == conv || r.node == format!("{conv}.einsum")))
        };
        let on_f32 =
            rewrite.nodes.into_iter().zip(&rewrite.convs).filter(|(_, conv)| !on_int8(conv)).map(|(n, _)| n).collect();
        Ok((typed, on_f32))
    }

    /// Facts about the file: hash, size, operators, parameters.
    /// The first call may wait for the hash of a large file (~0.6 ms per MiB), computed on another thread since
    /// the load started.
    pub fn info(&self) -> &ModelInfo {
        self.info.get_or_init(|| ModelInfo {
            sha256: self.digest.as_ref().map(|d| d.hex().to_string()).unwrap_or_default(),
            ..self.unhashed_info.clone()
        })
    }
    /// Preprocessing spec and labels.
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }
    /// The inputs as declared in the file.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }
    /// The outputs as declared in the file.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }
    /// The options the model was loaded with.
    pub fn options(&self) -> &ModelOptions {
        &self.options
    }
    /// Shape of one example (the input shape without its batch dimension).
    pub fn example_shape(&self) -> &[usize] {
        &self.example_shape
    }
    /// Values in one example.
    pub fn example_len(&self) -> usize {
        self.example_shape.iter().product()
    }
    /// Values of the first output per example: its axes after the batch axis (a classifier's classes).
    pub fn classes(&self) -> usize {
        self.classes
    }
    /// Class labels, when the model has them.
    pub fn labels(&self) -> Option<&[String]> {
        self.meta.labels.as_deref()
    }
    /// The optimised tract graph (for reports: kernels, costs).
    pub fn typed_model(&self) -> &TypedModel {
        self.plan.model()
    }
    /// The int8 convolutions (`QLinearConv` nodes, by name) this model runs on f32 kernels with the int8
    /// activation grid ([`crate::kernels::qconv`]); empty with pupil's kernels off.
    pub fn int8_convolutions_on_f32(&self) -> &[String] {
        &self.int8_convolutions_on_f32
    }
    /// How long loading took, phase by phase, and how much memory it took (see [`crate::profile`]).
    pub fn load_stats(&self) -> &crate::profile::LoadStats {
        &self.load_stats
    }
    /// The runnable plan (for the profiler's per-node timing).
    pub(crate) fn plan(&self) -> &Arc<TypedRunnableModel> {
        &self.plan
    }
    /// Whether the model has run at least once (its execution state pool is not empty).
    pub(crate) fn has_run(&self) -> bool {
        self.states.lock().map(|s| !s.is_empty()).unwrap_or(true)
    }
    /// Whether the first output is already a probability distribution (the graph ends with Softmax).
    pub fn output_is_probability(&self) -> bool {
        self.output_is_probability
    }

    /// `input` holds exactly `examples` examples.
    fn check_len(&self, input: &[f32], examples: usize) -> Result<()> {
        let expected = self.example_len() * examples;
        if input.len() != expected {
            return Err(Error::InputLength {
                input: self.inputs[0].name.clone(),
                expected,
                got: input.len(),
                shape: std::iter::once(examples).chain(self.example_shape.iter().copied()).collect(),
            });
        }
        Ok(())
    }

    /// Every value of `input` is finite (one vectorized pass; [`Model::run_batch`] makes it for every entry point).
    fn check_finite(&self, input: &[f32]) -> Result<()> {
        match crate::kernels::first_non_finite(input) {
            Some(index) => {
                Err(Error::NonFiniteInput { input: self.inputs[0].name.clone(), index, value: input[index] })
            }
            None => Ok(()),
        }
    }

    /// Runs exactly `n` examples in one plan execution and returns the first output, flat `[n, classes]`.
    fn run_chunk(&self, input: &[f32], n: usize) -> Result<Vec<f32>> {
        let shape: TVec<usize> = std::iter::once(n).chain(self.example_shape.iter().copied()).collect();
        let inference = |e: TractError| Error::Inference { reason: format!("{e:#}") };
        let len: usize = shape.iter().product();
        if input.len() != len {
            return Err(Error::Inference {
                reason: format!("expected {len} input values for {n} examples, got {}", input.len()),
            });
        }
        // SAFETY: every value is written just below (`input` has the tensor's length, checked above).
        let mut tensor = unsafe { self.input.take(DatumType::F32, &shape) }.map_err(inference)?;
        crate::kernels::scratch::exclusive(&mut tensor)
            .and_then(|t| t.try_as_plain_ram_mut()?.as_slice_mut::<f32>().map(|s| s.copy_from_slice(input)))
            .map_err(inference)?;
        let state = self.states.lock().ok().and_then(|mut s| s.pop());
        let mut state = match state {
            Some(s) => s,
            None => TypedSimpleState::new(&self.plan).map_err(inference)?,
        };
        let result = catch_panic("running model", || state.run(tvec![self.input.hand_on(tensor)]).map_err(inference));
        let outputs = result?;
        if let Ok(mut states) = self.states.lock() {
            states.push(state);
        }
        let out = outputs[0].cast_to::<f32>().map_err(inference)?;
        let out = out.try_as_plain_ram().and_then(|v| v.as_slice::<f32>().map(|s| s.to_vec())).map_err(inference)?;
        if out.len() != n * self.classes {
            return Err(Error::Inference {
                reason: format!("expected {} output values for {n} examples, got {}", n * self.classes, out.len()),
            });
        }
        Ok(out)
    }

    /// Runs a flat buffer holding `input.len() / example_len()` examples; returns raw outputs, flat `[n, classes]`.
    pub fn run_batch(&self, input: &[f32]) -> Result<Vec<f32>> {
        let per = self.example_len();
        let n = input.len() / per;
        // At least one whole example: anything else is named as the nearest count of examples below it (one for
        // a buffer shorter than an example).
        self.check_len(input, n.max(1))?;
        self.check_finite(input)?;
        let chunk = match self.options.batch {
            Batch::Fixed(b) => b,
            Batch::Symbolic => 256,
        };
        if n <= chunk && (n == chunk || self.options.batch == Batch::Symbolic) {
            // One plan run: its output is the result, with no second copy.
            return self.run_chunk(input, n);
        }
        let mut out = Vec::with_capacity(n * self.classes);
        for start in (0..n).step_by(chunk) {
            let take = chunk.min(n - start);
            let slice = &input[start * per..(start + take) * per];
            match self.options.batch {
                Batch::Fixed(b) if take < b => {
                    let mut padded = slice.to_vec();
                    padded.resize(b * per, 0.0);
                    let res = self.run_chunk(&padded, b)?;
                    out.extend_from_slice(&res[..take * self.classes]);
                }
                _ => out.extend(self.run_chunk(slice, take)?),
            }
        }
        Ok(out)
    }

    /// Runs a batch given with its full shape (`[n, ..example_shape]`), checking the shape first.
    pub fn run_shaped(&self, shape: &[usize], input: &[f32]) -> Result<Vec<f32>> {
        if shape.len() != self.example_shape.len() + 1 || shape[1..] != self.example_shape[..] {
            let expected: Vec<usize> = std::iter::once(shape.first().copied().unwrap_or(1))
                .chain(self.example_shape.iter().copied())
                .collect();
            return Err(Error::InputShape { input: self.inputs[0].name.clone(), expected, got: shape.to_vec() });
        }
        self.check_len(input, shape[0])?;
        self.run_batch(input)
    }

    /// Runs one example and returns the raw outputs (`classes` values).
    pub fn run(&self, input: &[f32]) -> Result<Vec<f32>> {
        self.check_len(input, 1)?;
        self.run_batch(input)
    }

    /// Predicts one example: logits, probabilities, top-k with labels.
    pub fn predict(&self, input: &[f32]) -> Result<Prediction> {
        let out = self.run(input)?;
        Ok(self.prediction(&out))
    }

    /// Predicts many examples laid out one after another.
    pub fn predict_batch(&self, input: &[f32]) -> Result<Vec<Prediction>> {
        let out = self.run_batch(input)?;
        Ok(out.chunks(self.classes).map(|o| self.prediction(o)).collect())
    }

    /// Decodes a PNG or JPEG, preprocesses it with the model's spec and predicts.
    pub fn predict_image(&self, bytes: &[u8]) -> Result<Prediction> {
        let input = self.preprocess_image(bytes)?;
        self.predict(&input)
    }

    /// Decodes and preprocesses an image into the model's input values, without running it.
    pub fn preprocess_image(&self, bytes: &[u8]) -> Result<Vec<f32>> {
        let spec = self.meta.preprocess.as_ref().ok_or_else(|| Error::Preprocess {
            reason: format!(
                "the model has no preprocessing spec and its input shape {} does not look like an image; \
                 add `{}` to its metadata_props or a model card",
                self.inputs[0].shape_string(),
                crate::meta::PREPROCESS_KEY
            ),
        })?;
        if spec.len() != self.example_len() {
            return Err(Error::Preprocess {
                reason: format!(
                    "the spec makes {} values ({}x{}x{}) but the model takes {} per example",
                    spec.len(),
                    spec.width,
                    spec.height,
                    spec.color.channels(),
                    self.example_len()
                ),
            });
        }
        crate::preprocess::image_to_input(bytes, spec)
    }

    /// Turns one example's raw outputs into a [`Prediction`].
    pub fn prediction(&self, outputs: &[f32]) -> Prediction {
        Prediction::from_outputs(
            outputs,
            self.output_is_probability,
            self.labels(),
            self.options.top_k.min(self.classes),
        )
    }
}
