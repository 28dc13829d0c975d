//! Elementwise nonlinearities, `relu`, `sigmoid` and `tanh` (PyTorch's `torch.tanh`):
//! y = f(x), dx = dy·f′, on shaders/activation.wgsl.
//!
//! Shapes: x, y [P, N, size]; backward on one copy, [N, size].

use std::fmt;
use std::str::FromStr;

use bytemuck::{Pod, Zeroable};
use serde::{Deserialize, Serialize};

use super::{Backward, Forward, Layer, LayerOps, LayerSpec};
use crate::error::Error;
use crate::gpu::kernel::{grid, shaders, Binding, Entry, KernelBindings, Placeholders};
use crate::gpu::{Dispatch, GpuBuffer};

/// A nonlinearity: the kind of an activation layer, and MLPs' hidden activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    Sigmoid,
    Tanh,
}

impl Activation {
    const ALL: [Activation; 3] = [Activation::Relu, Activation::Sigmoid, Activation::Tanh];

    const fn word(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
        }
    }

    /// The layer that applies it.
    pub fn spec(self) -> LayerSpec {
        match self {
            Activation::Relu => LayerSpec::Relu,
            Activation::Sigmoid => LayerSpec::Sigmoid,
            Activation::Tanh => LayerSpec::Tanh,
        }
    }

    /// The kind of an activation layer (None for other layers).
    pub fn of(spec: &LayerSpec) -> Option<Activation> {
        Activation::ALL.into_iter().find(|a| a.spec() == *spec)
    }

    /// The backward kernel reads the forward's input (ReLU's mask) or its output (σ′ = y(1 − y),
    /// tanh′ = 1 − y²).
    pub fn backward_reads_output(self) -> bool {
        matches!(self, Activation::Sigmoid | Activation::Tanh)
    }

    /// Its ACT_ code in shaders/activations.wgsl.
    pub fn code(self) -> u32 {
        match self {
            Activation::Relu => 0,
            Activation::Sigmoid => 1,
            Activation::Tanh => 2,
        }
    }

    /// Whether f has a kink (a point where it is not differentiable).
    pub fn has_kink(self) -> bool {
        matches!(self, Activation::Relu)
    }
}

impl FromStr for Activation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let word = s.to_ascii_lowercase();
        Activation::ALL
            .into_iter()
            .find(|a| a.word() == word)
            .ok_or_else(|| {
                let words = Activation::ALL.map(|a| format!("'{}'", a.word()));
                let (last, rest) = words.split_last().expect("at least one activation");
                Error::InvalidArgument(format!(
                    "unknown activation '{word}': use {} or {last}",
                    rest.join(", ")
                ))
            })
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// The spec word of an activation layer.
pub(super) fn word(spec: &LayerSpec) -> &'static str {
    Activation::of(spec).expect("an activation layer").word()
}

/// The spec words, as error messages list them.
pub(super) fn syntax() -> &'static [&'static str] {
    &ACTIVATION_WORDS
}

const ACTIVATION_WORDS: [&str; Activation::ALL.len()] = {
    let mut words = [""; Activation::ALL.len()];
    let mut i = 0;
    while i < words.len() {
        words[i] = Activation::ALL[i].word();
        i += 1;
    }
    words
};

pub(super) fn parse(word: &str) -> Option<Result<LayerSpec, String>> {
    word.parse::<Activation>().ok().map(|a| Ok(a.spec()))
}

#[derive(Clone, Debug, PartialEq)]
pub struct ActivationLayer {
    pub kind: Activation,
    /// Elements per sample.
    pub size: usize,
}

pub(super) fn resolve(spec: &LayerSpec, shape: [usize; 3]) -> (Layer, [usize; 3]) {
    let kind = Activation::of(spec).expect("an activation layer");
    let size = shape.iter().product();
    (Layer::Activation(ActivationLayer { kind, size }), shape)
}

/// activation.wgsl's Params.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct ActivationParams {
    pub count: u32,
    /// Elements of one parameter copy (kink counting only).
    pub per_copy: u32,
    pub row_width: u32,
    /// [`Activation::code`]
    pub kind: u32,
    /// C and S of [copies, N, C, S] (one-channel routes only).
    pub channels: u32,
    pub plane: u32,
    pub _pad: [u32; 2],
}

impl ActivationParams {
    /// Params for `count` invocations over copies of `per_copy` elements, of `(channels,
    /// plane)` per sample on a one-channel route ((1, 1) elsewhere).
    fn new(
        kind: Activation,
        count: usize,
        per_copy: usize,
        (channels, plane): (usize, usize),
    ) -> (ActivationParams, [u32; 3]) {
        let (groups, row_width) = grid(count);
        let per_copy = per_copy.max(1);
        let params = ActivationParams {
            count: count as u32,
            per_copy: per_copy as u32,
            row_width,
            kind: kind.code(),
            channels: channels as u32,
            plane: plane as u32,
            _pad: [0; 2],
        };
        (params, groups)
    }
}

/// activation.wgsl's buffers.
pub struct ActivationBindings<'a> {
    /// The input, or dy in backward.
    pub x: &'a GpuBuffer,
    /// What backward reads (the forward's input or output), or the unperturbed input when
    /// counting kinks.
    pub aux: Option<&'a GpuBuffer>,
    /// The output, or dx in backward.
    pub y: &'a GpuBuffer,
    /// Kink crossings per copy (counting only).
    pub flips: Option<&'a GpuBuffer>,
    /// On a one-channel route: each copy's moved channel.
    pub moved: Option<&'a GpuBuffer>,
}

impl KernelBindings for ActivationBindings<'_> {
    type Params = ActivationParams;
    const ACCESS: &'static [Binding] = &[
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::Read,
    ];
    fn buffers<'a>(&'a self, unused: &'a Placeholders) -> Vec<&'a wgpu::Buffer> {
        vec![
            &self.x.buffer,
            unused.real(self.aux),
            &self.y.buffer,
            unused.word_rw(self.flips),
            unused.word(self.moved),
        ]
    }
}

const FORWARD: Entry = Entry::new(shaders::ACTIVATION, "activation_forward");
const FORWARD_COUNTING_KINKS: Entry = FORWARD.with(&[("COUNT_KINKS", 1.0)]);
const FORWARD_ONE_CHANNEL: Entry = FORWARD.with(&[("ONE_CHANNEL", 1.0)]);
const FORWARD_COUNTING_KINKS_ONE_CHANNEL: Entry =
    FORWARD.with(&[("COUNT_KINKS", 1.0), ("ONE_CHANNEL", 1.0)]);
const BACKWARD: Entry = Entry::new(shaders::ACTIVATION, "activation_backward");

impl LayerOps for ActivationLayer {
    fn output_size(&self) -> usize {
        self.size
    }

    fn counts_kinks(&self) -> bool {
        self.kind.has_kink()
    }

    fn channel_local(&self) -> bool {
        true
    }

    // y [P, N, size] = f(x)
    fn forward(&self, io: &Forward) -> Vec<Dispatch> {
        debug_assert!(
            !io.input_shared || io.copies == 1,
            "routes start at layers that read a shared input"
        );
        let per_copy = io.rows * self.size;
        let moved = io.moved_channel();
        let channels = moved.map_or(1, |m| m.channels);
        let count = io.elementwise_count(self.size);
        let shape = (channels, self.size / channels);
        let (params, groups) = ActivationParams::new(self.kind, count, per_copy, shape);
        let counting = io.perturbation.filter(|_| self.counts_kinks());
        let entry = match (counting, moved) {
            (Some(_), Some(_)) => FORWARD_COUNTING_KINKS_ONE_CHANNEL,
            (Some(_), None) => FORWARD_COUNTING_KINKS,
            (None, Some(_)) => FORWARD_ONE_CHANNEL,
            (None, None) => FORWARD,
        };
        let bindings = ActivationBindings {
            x: io.input,
            aux: counting.map(|p| p.base_input),
            y: io.output,
            flips: counting.map(|p| p.flips),
            moved: moved.map(|m| m.moved),
        };
        vec![io
            .gpu
            .kernels
            .dispatch(io.gpu.ctx, &entry, &params, &bindings, groups)]
    }

    // dx [N, size] = dy · f′
    fn backward(&self, io: &Backward) -> Vec<Dispatch> {
        let Some(dx) = io.dx else {
            return Vec::new();
        };
        let count = io.rows * self.size;
        let (params, groups) = ActivationParams::new(self.kind, count, count, (1, 1));
        let saved = if self.kind.backward_reads_output() {
            io.output
        } else {
            io.input
        };
        let bindings = ActivationBindings {
            x: io.dy,
            aux: Some(saved),
            y: dx,
            flips: None,
            moved: None,
        };
        vec![io
            .gpu
            .kernels
            .dispatch(io.gpu.ctx, &BACKWARD, &params, &bindings, groups)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ACT_ codes of shaders/activations.wgsl, as written there.
    fn wgsl_codes() -> Vec<(String, u32)> {
        let source = include_str!("../../../shaders/activations.wgsl");
        source
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("const ACT_")?;
                let (name, value) = rest.split_once(": u32 = ")?;
                let value = value.trim_end_matches(';').trim_end_matches('u');
                Some((name.to_ascii_lowercase(), value.parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn activation_codes_agree_with_the_shader() {
        let rust: Vec<(String, u32)> = Activation::ALL
            .iter()
            .map(|a| (a.word().to_string(), a.code()))
            .collect();
        assert_eq!(rust, wgsl_codes());
    }
}
