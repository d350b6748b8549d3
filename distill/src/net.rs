//! The student network as a burn module (MLP or CNN built from a recipe's `Architecture`), its max-norm
//! constraint, and the plain weights it hands to the ONNX exporter.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};

use crate::recipe::{Architecture, Pool, Recipe};

/// One convolution block: 3×3 conv (padding 1) → BatchNorm? → ReLU → 2×2 max pool?
#[derive(Module, Debug)]
pub struct ConvBlock {
    pub conv: Conv2d,
    pub bn: Option<BatchNorm>,
    pub pool: Option<MaxPool2d>,
}

/// The student (or a supervised teacher): optional conv blocks, then fully connected layers.
#[derive(Module, Debug)]
pub struct Net {
    pub convs: Vec<ConvBlock>,
    /// Hidden layers then the output layer.
    pub fcs: Vec<Linear>,
    pub input_dropout: Dropout,
    pub dropout: Dropout,
    /// `[C, H, W]` for a CNN (the flat input is reshaped); empty for an MLP.
    pub image: Vec<usize>,
}

impl Net {
    /// A freshly initialised network for `recipe` (deterministic given `recipe.seed`).
    pub fn new(recipe: &Recipe, device: &Device) -> Net {
        device.seed(recipe.seed);
        let t = &recipe.train;
        let (convs, image, mut features, fc_sizes, classes) = match &recipe.model {
            Architecture::Mlp { hidden, classes, .. } => {
                (Vec::new(), Vec::new(), recipe.model.input_len(), hidden.clone(), *classes)
            }
            Architecture::Cnn { input, channels, fc, classes, batch_norm, pool } => {
                let mut convs = Vec::new();
                let (mut c, mut h, mut w) = (input[0], input[1], input[2]);
                for &out in channels {
                    let conv = Conv2dConfig::new([c, out], [3, 3])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .init(device);
                    let bn = batch_norm.then(|| BatchNormConfig::new(out).init(device));
                    let pool = (*pool == Pool::Max).then(|| MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init());
                    if pool.is_some() {
                        h /= 2;
                        w /= 2;
                    }
                    c = out;
                    convs.push(ConvBlock { conv, bn, pool });
                }
                (convs, input.clone(), c * h * w, fc.clone(), *classes)
            }
        };
        let mut fcs = Vec::new();
        for &h in &fc_sizes {
            fcs.push(LinearConfig::new(features, h).init(device));
            features = h;
        }
        fcs.push(LinearConfig::new(features, classes).init(device));
        Net {
            convs,
            fcs,
            input_dropout: DropoutConfig::new(t.input_dropout).init(),
            dropout: DropoutConfig::new(t.dropout).init(),
            image,
        }
    }

    /// Logits `[B, classes]` for flat inputs `[B, input_len]`. Dropout and BatchNorm statistics are active only on an
    /// autodiff device (training); `valid()` copies run in inference mode.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut x = self.input_dropout.forward(x);
        if !self.convs.is_empty() {
            let [b, _] = x.dims();
            let mut y: Tensor<4> = x.reshape([b, self.image[0], self.image[1], self.image[2]]);
            for block in &self.convs {
                y = block.conv.forward(y);
                if let Some(bn) = &block.bn {
                    y = bn.forward(y);
                }
                y = relu(y);
                if let Some(pool) = &block.pool {
                    y = pool.forward(y);
                }
            }
            x = y.flatten(1, 3);
        }
        let last = self.fcs.len() - 1;
        for (i, fc) in self.fcs.iter().enumerate() {
            x = fc.forward(x);
            if i < last {
                x = self.dropout.forward(relu(x));
            }
        }
        x
    }

    /// Rescales each hidden unit's incoming weight vector to an L2 norm of at most `max_norm` (Hinton's constraint).
    pub fn apply_max_norm(mut self, max_norm: f64) -> Net {
        let last = self.fcs.len() - 1;
        self.fcs = self
            .fcs
            .into_iter()
            .enumerate()
            .map(|(i, mut fc)| {
                if i < last {
                    fc.weight = fc.weight.map(|w| {
                        let grad = w.is_require_grad();
                        let inner = w.inner();
                        // Linear weights are [in, out]: a unit's incoming weights are a column.
                        let norms = inner.clone().powf_scalar(2.0).sum_dim(0).sqrt();
                        let scale = norms.recip().mul_scalar(max_norm).clamp_max(1.0);
                        Tensor::from_inner(inner * scale).set_require_grad(grad)
                    });
                }
                fc
            })
            .collect();
        self
    }

    /// Adds `shift` to the output bias of `class`.
    pub fn shift_output_bias(mut self, class: usize, shift: f32) -> Net {
        let last = self.fcs.len() - 1;
        if let Some(bias) = self.fcs[last].bias.take() {
            let classes = bias.lazy_shape().num_elements();
            let mut delta = vec![0.0f32; classes];
            if class < classes {
                delta[class] = shift;
            }
            self.fcs[last].bias = Some(bias.map(|b| {
                let device = b.device();
                b + Tensor::<1>::from_data(TensorData::new(delta, [classes]), &device)
            }));
        }
        self
    }

    /// The trained weights as plain arrays, for export.
    pub fn weights(&self) -> NetWeights {
        let convs = self
            .convs
            .iter()
            .map(|b| {
                let w = b.conv.weight.val();
                let shape = w.dims();
                ConvWeights {
                    weight: to_vec(w),
                    shape,
                    bias: b.conv.bias.as_ref().map(|p| to_vec(p.val())).unwrap_or_else(|| vec![0.0; shape[0]]),
                    bn: b.bn.as_ref().map(|bn| BnWeights {
                        gamma: to_vec(bn.gamma.val()),
                        beta: to_vec(bn.beta.val()),
                        mean: to_vec(bn.running_mean.value()),
                        var: to_vec(bn.running_var.value()),
                        epsilon: bn.epsilon as f32,
                    }),
                    pool: b.pool.is_some(),
                }
            })
            .collect();
        let fcs = self
            .fcs
            .iter()
            .map(|fc| {
                let w = fc.weight.val();
                let [inputs, outputs] = w.dims();
                FcWeights {
                    weight: to_vec(w),
                    inputs,
                    outputs,
                    bias: fc.bias.as_ref().map(|p| to_vec(p.val())).unwrap_or_else(|| vec![0.0; outputs]),
                }
            })
            .collect();
        NetWeights { image: self.image.clone(), convs, fcs }
    }
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 tensor data")
}

/// A network's weights as plain arrays (what the ONNX exporter writes).
#[derive(Debug, Clone)]
pub struct NetWeights {
    pub image: Vec<usize>,
    pub convs: Vec<ConvWeights>,
    pub fcs: Vec<FcWeights>,
}

/// One conv block's weights.
#[derive(Debug, Clone)]
pub struct ConvWeights {
    /// `[out, in, kh, kw]`, row-major.
    pub weight: Vec<f32>,
    pub shape: [usize; 4],
    pub bias: Vec<f32>,
    pub bn: Option<BnWeights>,
    pub pool: bool,
}

/// BatchNorm parameters and running statistics.
#[derive(Debug, Clone)]
pub struct BnWeights {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub epsilon: f32,
}

/// One linear layer: `y = x · W + b` with `W` stored `[inputs, outputs]` row-major.
#[derive(Debug, Clone)]
pub struct FcWeights {
    pub weight: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
    pub bias: Vec<f32>,
}
