//! Layers, one module each: how a layer's spec word parses and resolves to shapes, its parameter
//! tensors, its kernels with their typed uniforms and bindings, its recorded forward and
//! backward passes, and what the numerical-gradient engine needs to know about it. This file only
//! delegates.
//!
//! Spec strings are comma-separated layers:
//! `conv30x5` (30 filters of 5×5; `conv30x5s2p1`: stride 2, padding 1), `maxpool2` / `avgpool2`
//! (window 2, stride = window; `maxpool3s2`: stride 2), `affine100`, `relu`, `sigmoid`, `tanh`, `bn`
//! (BatchNorm over the channels or features of the layer before), `ln` (LayerNorm over each
//! sample's features), `dropout0.5`, `wgsl:PATH` (a user's own layer, [`custom`]).
//! The book's SimpleConvNet is `conv30x5,relu,maxpool2,affine100,relu,affine10`.

pub mod activation;
pub mod affine;
pub mod batchnorm;
pub mod conv;
pub mod custom;
pub mod dropout;
pub mod layernorm;
pub mod pool;
pub mod softmax_loss;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use activation::{Activation, ActivationLayer};
pub use affine::Affine;
pub use batchnorm::BatchNorm;
pub use conv::Conv;
pub use custom::CustomLayer;
pub use dropout::Dropout;
pub use layernorm::LayerNorm;
pub use pool::{Pool, PoolKind};

use crate::error::{Error, Result};
use crate::gpu::limits::{MAX_PARAMS, MAX_WIDTH};
pub use crate::gpu::Gpu;
use crate::gpu::{Dispatch, GpuBuffer, GpuContext, Precision};
use crate::nn::{NetSpec, ParamLayout, ParamRole, TensorInfo};

/// One layer as a user describes it (and as checkpoints store it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum LayerSpec {
    Conv {
        filters: usize,
        size: usize,
        stride: usize,
        pad: usize,
    },
    MaxPool {
        size: usize,
        stride: usize,
    },
    AvgPool {
        size: usize,
        stride: usize,
    },
    Affine {
        units: usize,
    },
    Relu,
    Sigmoid,
    Tanh,
    BatchNorm,
    #[serde(rename = "layernorm")]
    LayerNorm,
    Dropout {
        p: f64,
    },
    /// A user's layer file: its path as given, and its text (so a checkpoint holds the layer
    /// it was trained with, and a changed file is a different layer).
    Wgsl {
        path: String,
        source: String,
    },
}

impl fmt::Display for LayerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LayerSpec::Conv {
                filters,
                size,
                stride,
                pad,
            } => conv::write_spec(f, filters, size, stride, pad),
            LayerSpec::MaxPool { size, stride } => pool::write_spec(f, PoolKind::Max, size, stride),
            LayerSpec::AvgPool { size, stride } => pool::write_spec(f, PoolKind::Avg, size, stride),
            LayerSpec::Affine { units } => write!(f, "affine{units}"),
            LayerSpec::Relu | LayerSpec::Sigmoid | LayerSpec::Tanh => {
                f.write_str(activation::word(self))
            }
            LayerSpec::BatchNorm => f.write_str("bn"),
            LayerSpec::LayerNorm => f.write_str("ln"),
            LayerSpec::Dropout { p } => write!(f, "dropout{p}"),
            LayerSpec::Wgsl { ref path, .. } => write!(f, "wgsl:{path}"),
        }
    }
}

/// The book's SimpleConvNet: conv 30×5×5, ReLU, max-pool 2×2, affine 100, ReLU, affine 10.
pub const SIMPLE_CONV: &str = "conv30x5,relu,maxpool2,affine100,relu,affine10";

/// Named models for `--model`, as a layer list whose last layer gives `classes` scores (the
/// book's nets end in 10, MNIST's digits).
pub fn named_model(name: &str, classes: usize) -> Result<String> {
    let layers = match name {
        "simple-conv" | "simpleconvnet" => SIMPLE_CONV,
        other => {
            return Err(Error::InvalidArgument(format!(
                "unknown model '{other}': use 'mlp' (the default, shaped by --hidden) or 'simple-conv', or give --layers"
            )))
        }
    };
    let (body, _scores) = layers
        .rsplit_once(',')
        .expect("a named model ends in its class scores");
    Ok(format!("{body},affine{classes}"))
}

/// Parses a spec string such as `conv30x5,relu,maxpool2,affine100,relu,affine10`.
pub fn parse_layers(spec: &str) -> Result<Vec<LayerSpec>> {
    spec.split(',')
        .map(|item| parse_layer(item.trim()))
        .collect()
}

/// Asks each layer module whether `item` is its word.
fn parse_layer(item: &str) -> Result<LayerSpec> {
    if let Some(custom) = custom::parse(item) {
        // A layer file's error starts with the file's name and ends with the fix; the list of
        // layer words would only bury it.
        return custom.map_err(Error::InvalidArgument);
    }
    parse_word(&item.to_ascii_lowercase()).map_err(|why| {
        let words: Vec<&str> = [
            conv::SYNTAX,
            pool::SYNTAX,
            affine::SYNTAX,
            activation::syntax(),
            batchnorm::SYNTAX,
            layernorm::SYNTAX,
            dropout::SYNTAX,
            custom::SYNTAX,
        ]
        .concat();
        Error::InvalidArgument(format!(
            "bad layer '{item}' in the layer spec: {why} (layers: {})",
            words.join(", ")
        ))
    })
}

/// A built-in layer's word (lowercased), or why not.
fn parse_word(word: &str) -> std::result::Result<LayerSpec, String> {
    [
        conv::parse,
        pool::parse,
        affine::parse,
        dropout::parse,
        activation::parse,
        batchnorm::parse,
        layernorm::parse,
    ]
    .iter()
    .find_map(|parse| parse(word))
    .unwrap_or_else(|| {
        Err(if word.is_empty() {
            "empty layer".into()
        } else {
            "unknown layer".into()
        })
    })
}

/// A positive whole number of a spec word, or why not.
fn positive(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(format!("'{text}' is not a positive whole number")),
    }
}

/// "5s2p1" → (5, stride 2, pad 1), the stride defaulting to `default_stride` (the size if None).
fn size_stride_pad(
    text: &str,
    default_stride: Option<usize>,
) -> std::result::Result<(usize, usize, usize), String> {
    let (main, pad) = match text.split_once('p') {
        Some((m, p)) => (
            m,
            p.parse::<usize>()
                .map_err(|_| "padding must be a whole number".to_string())?,
        ),
        None => (text, 0),
    };
    let (size, stride) = match main.split_once('s') {
        Some((k, s)) => (positive(k)?, positive(s)?),
        None => {
            let k = positive(main)?;
            (k, default_stride.unwrap_or(k))
        }
    };
    Ok((size, stride, pad))
}

/// The largest image side (or channel count) a spec may give: three of them multiply without
/// wrapping, and the width limit then refuses a flat input wider than a layer may be.
const MAX_IMAGE_SIDE: usize = 1 << 20;

/// Refuses sizes of 0 or beyond [`MAX_WIDTH`] (a layer's units, a convolution's filters,
/// kernel, stride and padding, a pool's window and stride): with every size bounded, no shape
/// product wraps, and no size reaches a kernel that cannot loop over it.
fn check_sizes(layer: &LayerSpec) -> std::result::Result<(), String> {
    let sizes: &[(&str, usize)] = match *layer {
        LayerSpec::Conv {
            filters,
            size,
            stride,
            pad,
        } => &[
            ("filters", filters),
            ("kernel size", size),
            ("stride", stride),
            ("padding", pad + 1),
        ],
        LayerSpec::MaxPool { size, stride } | LayerSpec::AvgPool { size, stride } => {
            &[("window", size), ("stride", stride)]
        }
        LayerSpec::Affine { units } => &[("units", units)],
        _ => &[],
    };
    match sizes.iter().find(|(_, v)| *v == 0 || *v > MAX_WIDTH) {
        Some((what, 0)) => Err(format!("its {what} must be at least 1")),
        Some(("units", units)) => Err(format!(
            "a layer of {units} units is wider than the {MAX_WIDTH} that wgrad supports: use \
             narrower layers"
        )),
        Some((what, _)) => Err(format!(
            "its {what} is more than {MAX_WIDTH}, the most wgrad supports: use smaller sizes"
        )),
        None => Ok(()),
    }
}

/// A layer with its shapes resolved and its parameter tensors placed in the layout.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    Affine(Affine),
    Conv(Conv),
    Activation(ActivationLayer),
    Pool(Pool),
    BatchNorm(BatchNorm),
    LayerNorm(LayerNorm),
    Dropout(Dropout),
    Custom(CustomLayer),
}

impl std::ops::Deref for Layer {
    type Target = dyn LayerOps;

    /// Every layer kind answers the same questions; this is the one place that tells them apart.
    fn deref(&self) -> &(dyn LayerOps + 'static) {
        match self {
            Layer::Affine(l) => l,
            Layer::Conv(l) => l,
            Layer::Activation(l) => l,
            Layer::Pool(l) => l,
            Layer::BatchNorm(l) => l,
            Layer::LayerNorm(l) => l,
            Layer::Dropout(l) => l,
            Layer::Custom(l) => l,
        }
    }
}

/// What every layer module provides.
pub trait LayerOps {
    /// Elements per sample of the output.
    fn output_size(&self) -> usize;
    /// Indices (into the layout) of the parameter tensors this layer owns.
    fn tensors(&self) -> Vec<usize> {
        Vec::new()
    }
    /// The tensors the forward pass keeps for the backward pass or for kink counting, for a
    /// workspace of `rows` samples and `copies` parameter copies.
    fn saved(
        &self,
        _ctx: &GpuContext,
        _precision: Precision,
        _rows: usize,
        _copies: usize,
    ) -> Saved {
        Saved::Nothing
    }
    /// State the layer keeps across steps, or constants its kernels read.
    fn state(&self, _ctx: &GpuContext, _precision: Precision) -> LayerState {
        LayerState::None
    }
    /// Elements per sample of the largest buffer the layer binds: its output, or a saved tensor
    /// larger than it (a convolution's unfolded input).
    fn largest_buffer(&self) -> usize {
        self.output_size()
    }
    /// Whether a batch of `rows` fits this layer's kernels (lavapipe's loop limit).
    fn check_batch(&self, _rows: usize) -> Result<()> {
        Ok(())
    }
    fn forward(&self, io: &Forward) -> Vec<Dispatch>;
    /// Writes (not accumulates) this layer's parameter gradients, and dx when asked for.
    fn backward(&self, io: &Backward) -> Vec<Dispatch>;
    /// Numerical gradients: whether the layer can read one input shared by every perturbed
    /// copy (so a perturbed route may start at it).
    fn reads_shared_input(&self) -> bool {
        false
    }
    /// Numerical gradients: the features per sample of the layer's input when the engine moves
    /// its elements one by one to check the input gradient (a custom layer's, whose backward
    /// pass a user wrote); None for the built-in layers, whose backward passes wgrad's own
    /// tests check against the f64 reference.
    fn checked_input(&self) -> Option<usize> {
        None
    }
    /// Numerical gradients: whether the layer counts kink crossings (units or windows whose
    /// state differs from the unperturbed pass).
    fn counts_kinks(&self) -> bool {
        false
    }
    /// Numerical gradients: the one output channel that a change of parameter `index` moves,
    /// where there is one (a convolution's filter or bias, a BatchNorm's or LayerNorm's γ or β):
    /// a one-channel route can carry such a change.
    fn moved_channel(&self, _layout: &ParamLayout, _index: usize) -> Option<usize> {
        None
    }
    /// Numerical gradients: whether each output channel depends on the same input channel
    /// alone (BatchNorm, activations, dropout, pooling), so that a one-channel route can pass
    /// through the layer with the change confined to its channel.
    fn channel_local(&self) -> bool {
        false
    }
}

/// The channel of a normalisation's γ or β element `index` (`per_channel` elements a channel),
/// if `index` is one of theirs.
fn scale_shift_channel(
    layout: &ParamLayout,
    scale_and_shift: [usize; 2],
    index: usize,
    per_channel: usize,
) -> Option<usize> {
    scale_and_shift.iter().find_map(|&t| {
        let t = &layout.tensors[t];
        let range = t.offset..t.offset + t.numel;
        range
            .contains(&index)
            .then(|| (index - t.offset) / per_channel)
    })
}

/// What BatchNorm and Dropout do in a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics (and a running-statistics update); a fresh dropout mask each step.
    Train,
    /// Running statistics; no dropout.
    Eval,
    /// Batch statistics without touching the running ones; the dropout mask of the step word
    /// given (the same for every evaluation of a gradient check).
    Check,
}

/// The perturbed-loss engine's side of a forward pass: each of the P copies reads the shared
/// parameters plus its own one-element change.
#[derive(Clone, Copy)]
pub struct Perturbation<'a> {
    /// (flat index, sign) per copy: u32 pairs, sign 0 for +h and 1 for −h.
    pub pert: &'a GpuBuffer,
    /// \[h]
    pub h: &'a GpuBuffer,
    /// Per copy: kink crossings counted so far.
    pub flips: &'a GpuBuffer,
    /// This layer's input in the unperturbed pass, [N, in].
    pub base_input: &'a GpuBuffer,
    /// What this layer saved in the unperturbed pass.
    pub base_saved: &'a Saved,
    /// This layer's output in the unperturbed pass, [N, out].
    pub base_output: &'a GpuBuffer,
    /// The layer starts an incremental route, on the shared input: it may form each copy's
    /// output as `base_output` plus the change of the copy's parameter.
    pub from_base: bool,
    /// On a one-channel route: which channel each copy's change moves.
    pub moved_channel: Option<MovedChannel<'a>>,
}

/// A one-channel route's side of a forward pass (shaders/moved_channel.wgsl): each copy's change
/// moves one channel, and a channel-local layer computes that channel alone; the affine layer
/// that ends the route adds that channel's change to its unperturbed output.
#[derive(Clone, Copy)]
pub struct MovedChannel<'a> {
    /// \[P] u32: the channel each copy's change moves.
    pub moved: &'a GpuBuffer,
    /// Channels of the layer's output (of its input, for the affine layer that ends the route).
    pub channels: usize,
}

/// What a layer's forward pass reads and writes.
pub struct Forward<'a> {
    pub gpu: Gpu<'a>,
    /// The parameter arena and its layout.
    pub theta: &'a GpuBuffer,
    pub layout: &'a ParamLayout,
    pub rows: usize,
    pub copies: usize,
    /// [P, N, in], or [N, in] shared by every copy when `input_shared`.
    pub input: &'a GpuBuffer,
    pub input_shared: bool,
    /// [P, N, out]
    pub output: &'a GpuBuffer,
    pub saved: &'a Saved,
    pub state: &'a LayerState,
    pub mode: Mode,
    /// Step words: word 0 is the step that seeds dropout masks.
    pub step: &'a GpuBuffer,
    pub dropout_seed: u32,
    pub perturbation: Option<Perturbation<'a>>,
    /// The activation layer above, fused into this one's forward (an affine layer's): its kind
    /// and its output, which this layer writes too.
    pub activated: Option<(Activation, &'a GpuBuffer)>,
}

impl Forward<'_> {
    /// Output elements of all copies.
    pub fn count(&self, size: usize) -> usize {
        self.copies * self.rows * size
    }

    fn pert(&self) -> Option<&GpuBuffer> {
        self.perturbation.map(|p| p.pert)
    }

    fn h(&self) -> Option<&GpuBuffer> {
        self.perturbation.map(|p| p.h)
    }

    /// On a one-channel route, which channel each copy moves.
    fn moved_channel(&self) -> Option<MovedChannel<'_>> {
        self.perturbation.and_then(|p| p.moved_channel)
    }

    /// Invocations of an elementwise kernel over `size` elements per sample: every copy's, or
    /// on a one-channel route its moved channel's.
    fn elementwise_count(&self, size: usize) -> usize {
        match self.moved_channel() {
            Some(m) => self.count(size) / m.channels,
            None => self.count(size),
        }
    }
}

/// What a layer's backward pass reads and writes (one copy).
pub struct Backward<'a> {
    pub gpu: Gpu<'a>,
    pub theta: &'a GpuBuffer,
    pub grads: &'a GpuBuffer,
    pub layout: &'a ParamLayout,
    pub rows: usize,
    /// The forward pass's input and output, [N, in] and [N, out].
    pub input: &'a GpuBuffer,
    pub output: &'a GpuBuffer,
    pub dy: &'a GpuBuffer,
    /// The input gradient, None for the first layer (never needed).
    pub dx: Option<&'a GpuBuffer>,
    /// The activation layer below, fused into this one's backward (an affine layer's, or a
    /// max-pool's over windows that do not overlap): its kind and the tensor its f′ reads. `dx`
    /// is then the gradient of that layer's input.
    pub dx_through: Option<(Activation, &'a GpuBuffer)>,
    pub saved: &'a Saved,
    pub state: &'a LayerState,
}

/// What a forward pass keeps, per layer.
#[derive(Clone)]
pub enum Saved {
    Nothing,
    /// Max pooling: the arg-max of each output, [P, N, C, OH, OW] (u32).
    Argmax(GpuBuffer),
    /// BatchNorm: per (copy, channel) mean, 1/std, var; and x̂ [P, N, C, S].
    Norm {
        stats: GpuBuffer,
        xhat: GpuBuffer,
    },
    /// Dropout: the mask of one copy, 0 or 1/(1 − p).
    Mask(GpuBuffer),
    /// Convolution of a single copy: the unfolded input [N·OH·OW, ld], the filters packed for
    /// the forward's matmul [ld, F rounded up to 4], and the backward's per-sample weight
    /// gradients [N, F, ld] (ld: [`conv::Conv::ld`]).
    Unfolded {
        col: GpuBuffer,
        filters: GpuBuffer,
        partial: GpuBuffer,
    },
}

/// What a layer keeps on the GPU across steps.
pub enum LayerState {
    None,
    /// BatchNorm: running (mean, var) per channel [C, 2], and [eps, momentum, unbiased].
    BatchNorm {
        running: GpuBuffer,
        consts: GpuBuffer,
    },
    /// Dropout: the value of a kept unit in training, and the scale of every unit in evaluation
    /// (1/(1 − p) and 1 for inverted dropout, 1 and 1 − p for the book's).
    Dropout {
        train_scale: GpuBuffer,
        eval_scale: GpuBuffer,
    },
    /// LayerNorm: \[eps].
    LayerNorm {
        consts: GpuBuffer,
    },
}

/// Places parameter tensors in the flat layout as layers resolve.
#[derive(Default)]
pub struct TensorPlacer {
    tensors: Vec<TensorInfo>,
    offset: usize,
    /// Affine and convolution layers so far: the K of WK and bK.
    param_layers: usize,
}

impl TensorPlacer {
    /// Adds a tensor and returns its index in the layout.
    pub fn add(&mut self, role: ParamRole, shape: Vec<usize>, fan_in: usize) -> usize {
        // Saturating, so that a net too large to exist is refused by its count, not wrapped
        // into one that looks small.
        let numel = (shape.iter()).fold(1usize, |n, &d| n.saturating_mul(d));
        self.tensors.push(TensorInfo {
            name: format!("{}{}", role.prefix(), self.param_layers),
            role,
            shape,
            offset: self.offset,
            numel,
            fan_in,
        });
        self.offset = self.offset.saturating_add(numel);
        self.tensors.len() - 1
    }

    /// A normalisation's γ and β of `shape`, named after the affine or convolution layer before
    /// it (gammaK, betaK), as the book and PyTorch's checkpoints of it do; a second
    /// normalisation of the same layer would reuse the names, so it is refused.
    pub fn add_scale_and_shift(&mut self, shape: Vec<usize>) -> Result<(usize, usize), String> {
        let name = format!("{}{}", ParamRole::Gamma.prefix(), self.param_layers);
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(format!(
                "a second normalisation of the same layer ({name} is taken): put an affine or convolution layer between them"
            ));
        }
        let gamma = self.add(ParamRole::Gamma, shape.clone(), 0);
        let beta = self.add(ParamRole::Beta, shape, 0);
        Ok((gamma, beta))
    }

    /// Adds a tensor under a name of its own (a custom layer's), refusing one that is taken.
    pub fn add_named(
        &mut self,
        name: String,
        role: ParamRole,
        shape: Vec<usize>,
    ) -> Result<usize, String> {
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(format!("its tensor {name} has the name of another tensor of the net: rename the parameter in the file"));
        }
        let fan_in = shape.first().copied().unwrap_or(1);
        let index = self.add(role, shape, fan_in);
        self.tensors[index].name = name;
        Ok(index)
    }

    /// Starts the tensors of the next affine or convolution layer (W2, b2, …).
    pub fn next_layer(&mut self) {
        self.param_layers += 1;
    }
}

/// Counters that number the layers of one kind (the running statistics and dropout masks).
#[derive(Default)]
pub struct KindCounts {
    pub norms: usize,
    pub dropouts: usize,
}

/// Resolves a spec into layers and the parameter layout, or says which layer does not fit and
/// why.
pub fn resolve(spec: &NetSpec) -> Result<(Vec<Layer>, ParamLayout)> {
    let mut shape = spec.image;
    // A spec can come from a checkpoint's metadata as well as from the parser: every size is
    // bounded before any arithmetic on it, so that no product can wrap.
    if shape.iter().any(|&d| d == 0 || d > MAX_IMAGE_SIDE) {
        return Err(Error::InvalidArgument(format!(
            "the image shape {shape:?} needs sizes from 1 to {MAX_IMAGE_SIDE}"
        )));
    }
    if shape.iter().product::<usize>() != spec.input {
        return Err(Error::InvalidArgument(format!(
            "the image shape {shape:?} does not hold the net's {} inputs",
            spec.input
        )));
    }
    let mut placer = TensorPlacer::default();
    let mut counts = KindCounts::default();
    let mut layers = Vec::new();
    for (i, layer) in spec.layers.iter().enumerate() {
        let at = |why: String| Error::InvalidArgument(format!("layer {} ({layer}): {why}", i + 1));
        check_sizes(layer).map_err(at)?;
        let resolved = match *layer {
            LayerSpec::Affine { units } => affine::resolve(units, shape, &mut placer),
            LayerSpec::Conv {
                filters,
                size,
                stride,
                pad,
            } => conv::resolve(filters, size, stride, pad, shape, &mut placer),
            LayerSpec::MaxPool { size, stride } => {
                pool::resolve(PoolKind::Max, size, stride, shape)
            }
            LayerSpec::AvgPool { size, stride } => {
                pool::resolve(PoolKind::Avg, size, stride, shape)
            }
            LayerSpec::Relu | LayerSpec::Sigmoid | LayerSpec::Tanh => {
                Ok(activation::resolve(layer, shape))
            }
            LayerSpec::BatchNorm => {
                batchnorm::resolve(shape, spec.conventions, &mut placer, &mut counts)
            }
            LayerSpec::LayerNorm => layernorm::resolve(shape, &mut placer),
            LayerSpec::Dropout { p } => dropout::resolve(p, shape, spec.conventions, &mut counts),
            LayerSpec::Wgsl {
                ref path,
                ref source,
            } => custom::resolve(path, source, i + 1, shape, &mut placer),
        }
        .map_err(at)?;
        shape = resolved.1;
        layers.push(resolved.0);
    }
    match layers.last() {
        Some(Layer::Affine(a)) if a.d_out == spec.output => {}
        _ => {
            return Err(Error::InvalidArgument(format!(
                "the net must end with an affine layer of {} units (the class scores)",
                spec.output
            )))
        }
    }
    // A custom layer's tensor may take a name an affine layer after it gives its own (W3).
    for (k, t) in placer.tensors.iter().enumerate() {
        let Some(j) = placer.tensors[..k].iter().position(|u| u.name == t.name) else {
            continue;
        };
        let custom = (layers.iter().enumerate()).find_map(|(i, l)| match l {
            Layer::Custom(c) if c.params.contains(&j) || c.params.contains(&k) => Some((i, c)),
            _ => None,
        });
        let (i, c) = custom.expect("only a custom layer's tensors can share a name");
        return Err(Error::InvalidArgument(format!(
            "layer {} ({}): its tensor {} has the name of another tensor of the net: rename \
             its `//! param` in {}",
            i + 1,
            spec.layers[i],
            t.name,
            c.contract.file
        )));
    }
    if placer.offset > MAX_PARAMS {
        return Err(Error::InvalidArgument(format!(
            "the net has {} parameters, more than the {MAX_PARAMS} the shaders can index: use \
             narrower or fewer layers",
            placer.offset
        )));
    }
    Ok((
        layers,
        ParamLayout {
            tensors: placer.tensors,
            total: placer.offset,
        },
    ))
}

/// Output elements per sample of each layer, in order.
pub fn output_sizes(layers: &[Layer]) -> Vec<usize> {
    layers.iter().map(|l| l.output_size()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_conv_resolves_to_the_book_shapes() {
        let spec = NetSpec::sequential([1, 28, 28], parse_layers(SIMPLE_CONV).unwrap()).unwrap();
        let (layers, layout) = spec.resolve().unwrap();
        assert_eq!(
            output_sizes(&layers),
            vec![30 * 24 * 24, 30 * 24 * 24, 30 * 12 * 12, 100, 100, 10]
        );
        let names: Vec<_> = layout
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.shape.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("W1", vec![30, 1, 5, 5]),
                ("b1", vec![30]),
                ("W2", vec![4320, 100]),
                ("b2", vec![100]),
                ("W3", vec![100, 10]),
                ("b3", vec![10])
            ]
        );
    }

    #[test]
    fn named_models_end_in_the_data_class_count() {
        assert_eq!(named_model("simple-conv", 10).unwrap(), SIMPLE_CONV);
        let emnist = named_model("simple-conv", 47).unwrap();
        assert_eq!(emnist, "conv30x5,relu,maxpool2,affine100,relu,affine47");
        let spec = NetSpec::sequential([3, 32, 32], parse_layers(&emnist).unwrap()).unwrap();
        assert_eq!((spec.input, spec.output), (3072, 47));
        assert!(named_model("resnet", 10).is_err());
    }

    #[test]
    fn spec_strings_round_trip() {
        let text =
            "conv8x3s2p1,bn,relu,maxpool3s2,avgpool2,affine20,bn,sigmoid,dropout0.25,affine10";
        let layers = parse_layers(text).unwrap();
        let back: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
        assert_eq!(back.join(","), text);
    }

    #[test]
    fn layernorm_follows_pytorchs_shapes_and_names() {
        let spec = |s: &str| NetSpec::sequential([2, 6, 6], parse_layers(s).unwrap());
        let (_, layout) = spec("conv3x3,ln,tanh,affine5,ln,affine10")
            .unwrap()
            .resolve()
            .unwrap();
        let shapes: Vec<_> = (layout.tensors.iter())
            .filter(|t| matches!(t.role, ParamRole::Gamma | ParamRole::Beta))
            .map(|t| (t.name.as_str(), t.shape.clone()))
            .collect();
        // After a convolution: nn.LayerNorm([C, H, W]); after an affine layer: its units.
        assert_eq!(
            shapes,
            vec![
                ("gamma1", vec![3, 4, 4]),
                ("beta1", vec![3, 4, 4]),
                ("gamma2", vec![5]),
                ("beta2", vec![5])
            ]
        );
        assert_eq!(
            parse_layers("layernorm,tanh").unwrap(),
            parse_layers("ln,TANH").unwrap()
        );
        // Two normalisations of one layer would both be gamma1 and beta1.
        let err = spec("conv3x3,bn,ln,affine10").unwrap_err().to_string();
        assert!(err.contains("gamma1 is taken"), "{err}");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = |s: &str| parse_layers(s).unwrap_err().to_string();
        assert!(err("conv30x5,frobnicate").contains("unknown layer"));
        assert!(err("dropout1.5").contains("[0, 1)"));
        assert!(err("convx5").contains("positive whole number"));
        let fit = |s: &str, image| {
            NetSpec::sequential(image, parse_layers(s).unwrap())
                .unwrap_err()
                .to_string()
        };
        assert!(fit("conv4x7,affine10", [1, 5, 5]).contains("larger than its 5×5 input"));
        assert!(fit("maxpool6,affine10", [1, 5, 5]).contains("window is larger"));
        assert!(fit("conv4x3,relu", [1, 5, 5]).contains("end with an affine layer"));
    }
}
