//! Inverted dropout, `dropout<P>`, as PyTorch does it, on shaders/dropout.wgsl: in training each
//! element is kept with probability 1 − p and scaled by 1/(1 − p); in evaluation it is the
//! identity. Masks come from a counter-based hash of (seed, step, element), so runs repeat
//! exactly and a gradient check holds the mask fixed.
//!
//! Shapes: x, y [P, N, size]; the mask [N, size] is shared by every copy.

use bytemuck::{Pod, Zeroable};

use super::{Backward, Forward, KindCounts, Layer, LayerOps, LayerSpec, LayerState, Mode, Saved};
use crate::gpu::kernel::{grid, Binding, Entry, KernelBindings, Placeholders, Shader};
use crate::gpu::{Dispatch, GpuBuffer, GpuContext, Precision};
use crate::nn::Conventions;

/// Whether `p` is a dropout probability wgrad takes: [0, 1), as PyTorch (p = 1 would zero every
/// activation, and its 1/(1 − p) scale is infinite). NaN is outside.
fn valid_dropout(p: f64) -> bool {
    (0.0..1.0).contains(&p)
}

const RANGE: &str = "dropout takes a probability in [0, 1), e.g. dropout0.5";

/// The spec words, as error messages list them.
pub(super) const SYNTAX: &[&str] = &["dropout<P>"];

/// `dropout<P>`
pub(super) fn parse(word: &str) -> Option<Result<LayerSpec, String>> {
    let rest = word.strip_prefix("dropout")?;
    Some(match rest.parse::<f64>() {
        Ok(p) if valid_dropout(p) => Ok(LayerSpec::Dropout { p }),
        _ => Err(RANGE.into()),
    })
}

#[derive(Clone, Debug, PartialEq)]
pub struct Dropout {
    pub p: f64,
    /// Elements per sample.
    pub size: usize,
    /// Which dropout layer of the net this is (0, 1, …).
    pub index: usize,
    /// Kept units scaled by 1/(1 − p) in training (PyTorch), or every unit by 1 − p in
    /// evaluation (the book).
    pub inverted: bool,
}

pub(super) fn resolve(
    p: f64,
    shape: [usize; 3],
    conventions: Conventions,
    counts: &mut KindCounts,
) -> Result<(Layer, [usize; 3]), String> {
    if !valid_dropout(p) {
        return Err(format!(
            "dropout must lie in [0, 1), got {p} (dropout<P> in --layers, or --dropout)"
        ));
    }
    counts.dropouts += 1;
    let layer = Dropout {
        p,
        size: shape.iter().product(),
        index: counts.dropouts - 1,
        inverted: conventions.inverted_dropout(),
    };
    Ok((Layer::Dropout(layer), shape))
}

/// dropout.wgsl's Params.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct DropoutParams {
    /// Elements: copies · per_copy.
    pub count: u32,
    pub per_copy: u32,
    pub seed: u32,
    /// round(p·2³²) clamped to u32; 0 keeps everything.
    pub threshold: u32,
    /// Word of the step buffer holding the step.
    pub step_slot: u32,
    pub row_width: u32,
    /// C and S of [copies, N, C, S] (one-channel routes only).
    pub channels: u32,
    pub plane: u32,
}

/// dropout.wgsl's buffers.
pub struct DropoutBindings<'a> {
    /// x, or dy in backward.
    pub x: &'a GpuBuffer,
    /// Forward: the step words.
    pub step: Option<&'a GpuBuffer>,
    /// y, or dx in backward.
    pub y: &'a GpuBuffer,
    /// [N, size]: 0 or 1/(1 − p).
    pub mask: &'a GpuBuffer,
    /// Forward: [1/(1 − p)], or \[1] in evaluation.
    pub scale: Option<&'a GpuBuffer>,
    /// On a one-channel route: each copy's moved channel.
    pub moved: Option<&'a GpuBuffer>,
}

impl KernelBindings for DropoutBindings<'_> {
    type Params = DropoutParams;
    const ACCESS: &'static [Binding] = &[
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::Read,
        Binding::Read,
    ];
    fn buffers<'a>(&'a self, unused: &'a Placeholders) -> Vec<&'a wgpu::Buffer> {
        vec![
            &self.x.buffer,
            unused.word(self.step),
            &self.y.buffer,
            &self.mask.buffer,
            unused.real(self.scale),
            unused.word(self.moved),
        ]
    }
}

/// shaders/dropout.wgsl, which this layer alone uses.
pub const SHADER: Shader = crate::shader!("dropout.wgsl");

const FORWARD: Entry = Entry::new(SHADER, "dropout_forward");
const FORWARD_ONE_CHANNEL: Entry = FORWARD.with(&[("ONE_CHANNEL", 1.0)]);
const BACKWARD: Entry = Entry::new(SHADER, "dropout_backward");

impl Dropout {
    fn mask(saved: &Saved) -> &GpuBuffer {
        match saved {
            Saved::Mask(mask) => mask,
            _ => unreachable!("dropout keeps its mask"),
        }
    }
}

impl LayerOps for Dropout {
    fn output_size(&self) -> usize {
        self.size
    }

    fn channel_local(&self) -> bool {
        true
    }

    fn saved(&self, ctx: &GpuContext, p: Precision, rows: usize, _copies: usize) -> Saved {
        Saved::Mask(GpuBuffer::real(ctx, "dropout_mask", rows * self.size, p))
    }

    fn state(&self, ctx: &GpuContext, precision: Precision) -> LayerState {
        let real = |label, v| GpuBuffer::from_real(ctx, label, &[v], precision);
        let (train, eval) = if self.inverted {
            (1.0 / (1.0 - self.p), 1.0)
        } else {
            (1.0, 1.0 - self.p)
        };
        LayerState::Dropout {
            train_scale: real("dropout_train_scale", train),
            eval_scale: real("dropout_eval_scale", eval),
        }
    }

    // y [P, N, size] = x · mask; mask [N, size] drawn from (seed, step word 0)
    fn forward(&self, io: &Forward) -> Vec<Dispatch> {
        let LayerState::Dropout {
            train_scale,
            eval_scale,
        } = io.state
        else {
            unreachable!("dropout keeps its scale")
        };
        let count = io.elementwise_count(self.size);
        let (groups, row_width) = grid(count);
        let channels = io.moved_channel().map_or(1, |m| m.channels);
        // In evaluation a threshold of 0 keeps every element, each scaled by the evaluation scale
        // (1 for inverted dropout: the identity).
        let eval = io.mode == Mode::Eval;
        let threshold = if eval {
            0
        } else {
            (self.p * 4_294_967_296.0).round().min(u32::MAX as f64) as u32
        };
        let params = DropoutParams {
            count: count as u32,
            per_copy: (io.rows * self.size) as u32,
            seed: io.dropout_seed,
            threshold,
            step_slot: 0,
            row_width,
            channels: channels as u32,
            plane: (self.size / channels) as u32,
        };
        let bindings = DropoutBindings {
            x: io.input,
            step: Some(io.step),
            y: io.output,
            mask: Dropout::mask(io.saved),
            scale: Some(if eval { eval_scale } else { train_scale }),
            moved: io.moved_channel().map(|m| m.moved),
        };
        let entry = match io.moved_channel() {
            Some(_) => &FORWARD_ONE_CHANNEL,
            None => &FORWARD,
        };
        vec![io
            .gpu
            .kernels
            .dispatch(io.gpu.ctx, entry, &params, &bindings, groups)]
    }

    // dx [N, size] = dy · mask
    fn backward(&self, io: &Backward) -> Vec<Dispatch> {
        let Some(dx) = io.dx else {
            return Vec::new();
        };
        let count = io.rows * self.size;
        let (groups, row_width) = grid(count);
        let params = DropoutParams {
            count: count as u32,
            per_copy: count as u32,
            seed: 0,
            threshold: 0,
            step_slot: 0,
            row_width,
            channels: 1,
            plane: 1,
        };
        let bindings = DropoutBindings {
            x: io.dy,
            step: None,
            y: dx,
            mask: Dropout::mask(io.saved),
            scale: None,
            moved: None,
        };
        vec![io
            .gpu
            .kernels
            .dispatch(io.gpu.ctx, &BACKWARD, &params, &bindings, groups)]
    }
}
