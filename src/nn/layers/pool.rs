//! Max and average pooling, `maxpool<K>[s<S>]` and `avgpool<K>[s<S>]`, size×size windows with
//! stride S (default K), no padding, NCHW, on shaders/pool.wgsl.
//!
//! Shapes: x [P, N, C, H, W] -> y [P, N, C, OH, OW], OH = (H − K)/S + 1 (likewise OW).

use std::fmt;

use bytemuck::{Pod, Zeroable};

use super::{Backward, Forward, Layer, LayerOps, LayerSpec, Saved};
use crate::gpu::kernel::{grid, Binding, Entry, KernelBindings, Placeholders, Shader};
use crate::gpu::{Dispatch, GpuBuffer, GpuContext, Precision};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Avg,
}

impl PoolKind {
    fn word(self) -> &'static str {
        match self {
            PoolKind::Max => "maxpool",
            PoolKind::Avg => "avgpool",
        }
    }
}

/// The spec words, as error messages list them.
pub(super) const SYNTAX: &[&str] = &["maxpool<K>[s<S>]", "avgpool<K>[s<S>]"];

/// `maxpool<K>[s<S>]`, `avgpool<K>[s<S>]`
pub(super) fn parse(word: &str) -> Option<Result<LayerSpec, String>> {
    [PoolKind::Max, PoolKind::Avg].into_iter().find_map(|kind| {
        let rest = word.strip_prefix(kind.word())?;
        Some(
            super::size_stride_pad(rest, None).and_then(|(size, stride, pad)| {
                if pad != 0 {
                    return Err("pooling takes no padding".into());
                }
                Ok(match kind {
                    PoolKind::Max => LayerSpec::MaxPool { size, stride },
                    PoolKind::Avg => LayerSpec::AvgPool { size, stride },
                })
            }),
        )
    })
}

pub(super) fn write_spec(
    f: &mut fmt::Formatter<'_>,
    kind: PoolKind,
    size: usize,
    stride: usize,
) -> fmt::Result {
    write!(f, "{}{size}", kind.word())?;
    if stride != size {
        write!(f, "s{stride}")?;
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub kind: PoolKind,
    /// Input channels, height and width.
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub size: usize,
    pub stride: usize,
    /// Output height and width.
    pub oh: usize,
    pub ow: usize,
}

pub(super) fn resolve(
    kind: PoolKind,
    size: usize,
    stride: usize,
    [c, h, w]: [usize; 3],
) -> Result<(Layer, [usize; 3]), String> {
    if size > h || size > w {
        return Err(format!(
            "a {size}×{size} window is larger than its {h}×{w} input"
        ));
    }
    let (oh, ow) = ((h - size) / stride + 1, (w - size) / stride + 1);
    let layer = Pool {
        kind,
        c,
        h,
        w,
        size,
        stride,
        oh,
        ow,
    };
    Ok((Layer::Pool(layer), [c, oh, ow]))
}

/// pool.wgsl's Params.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct PoolParams {
    /// N·C planes per copy.
    pub nc: u32,
    pub h: u32,
    pub w: u32,
    pub size: u32,
    pub stride: u32,
    pub oh: u32,
    pub ow: u32,
    pub copies: u32,
    /// Invocations: output elements (forward) or input elements (backward), all copies.
    pub count: u32,
    /// N·C·OH·OW
    pub per_copy: u32,
    pub row_width: u32,
    /// C (one-channel routes only).
    pub channels: u32,
}

/// pool.wgsl's forward buffers.
pub struct PoolForwardBindings<'a> {
    pub x: &'a GpuBuffer,
    pub y: &'a GpuBuffer,
    /// Max pooling: the arg-max of each output (u32).
    pub argmax: Option<&'a GpuBuffer>,
    /// Kink counting: the unperturbed pass's arg-max, and the crossings per copy.
    pub base_argmax: Option<&'a GpuBuffer>,
    pub flips: Option<&'a GpuBuffer>,
    /// On a one-channel route: each copy's moved channel.
    pub moved: Option<&'a GpuBuffer>,
}

impl KernelBindings for PoolForwardBindings<'_> {
    type Params = PoolParams;
    const ACCESS: &'static [Binding] = &[
        Binding::Read,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::Read,
        Binding::ReadWrite,
        Binding::Read,
    ];
    fn buffers<'a>(&'a self, unused: &'a Placeholders) -> Vec<&'a wgpu::Buffer> {
        vec![
            &self.x.buffer,
            &self.y.buffer,
            unused.word_rw(self.argmax),
            unused.word(self.base_argmax),
            unused.word_rw(self.flips),
            unused.word(self.moved),
        ]
    }
}

/// pool.wgsl's backward buffers.
pub struct PoolBackwardBindings<'a> {
    pub dy: &'a GpuBuffer,
    /// Max pooling: the forward's arg-max.
    pub argmax: Option<&'a GpuBuffer>,
    pub dx: &'a GpuBuffer,
    /// Through the activation below: what its f′ reads.
    pub act_saved: Option<&'a GpuBuffer>,
}

impl KernelBindings for PoolBackwardBindings<'_> {
    type Params = PoolParams;
    const ACCESS: &'static [Binding] = &[
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::Read,
    ];
    fn buffers<'a>(&'a self, unused: &'a Placeholders) -> Vec<&'a wgpu::Buffer> {
        vec![
            &self.dy.buffer,
            unused.word(self.argmax),
            &self.dx.buffer,
            unused.real(self.act_saved),
        ]
    }
}

/// shaders/pool.wgsl, which this layer alone uses.
pub const SHADER: Shader = crate::shader!("pool.wgsl");

const MAX_FORWARD: Entry = Entry::new(SHADER, "max_forward");
const MAX_FORWARD_KINKS: Entry = MAX_FORWARD.with(&[("COUNT_KINKS", 1.0)]);
const MAX_FORWARD_ROWS: Entry = Entry::new(SHADER, "max_forward_rows");
const MAX_BACKWARD: Entry = Entry::new(SHADER, "max_backward");
const MAX_BACKWARD_ROWS: Entry = Entry::new(SHADER, "max_backward_rows");
const MAX_BACKWARD_ROWS_THROUGH: Entry = MAX_BACKWARD_ROWS.with(&[("THROUGH", 1.0)]);
const AVG_FORWARD: Entry = Entry::new(SHADER, "avg_forward");
const MAX_FORWARD_ONE_CHANNEL: Entry =
    MAX_FORWARD.with(&[("COUNT_KINKS", 1.0), ("ONE_CHANNEL", 1.0)]);
const AVG_FORWARD_ONE_CHANNEL: Entry = AVG_FORWARD.with(&[("ONE_CHANNEL", 1.0)]);
const AVG_BACKWARD: Entry = Entry::new(SHADER, "avg_backward");

impl Pool {
    /// Params for `count` invocations over `copies` copies of N·C planes.
    fn params(&self, n: usize, copies: usize, count: usize) -> PoolParams {
        let u = |v: usize| v as u32;
        PoolParams {
            nc: u(n * self.c),
            h: u(self.h),
            w: u(self.w),
            size: u(self.size),
            stride: u(self.stride),
            oh: u(self.oh),
            ow: u(self.ow),
            copies: u(copies),
            count: u(count),
            per_copy: u(n * self.c * self.oh * self.ow),
            row_width: grid(count).1,
            channels: u(self.c),
        }
    }

    /// Whether the backward can go on through the activation layer below in the same dispatch
    /// (max pooling over windows that do not overlap: see max_backward_rows).
    pub fn backward_through_activation(&self) -> bool {
        self.kind == PoolKind::Max && self.size <= self.stride
    }

    fn argmax(saved: &Saved) -> Option<&GpuBuffer> {
        match saved {
            Saved::Argmax(a) => Some(a),
            _ => None,
        }
    }
}

impl LayerOps for Pool {
    fn output_size(&self) -> usize {
        self.c * self.oh * self.ow
    }

    fn counts_kinks(&self) -> bool {
        self.kind == PoolKind::Max
    }

    fn channel_local(&self) -> bool {
        true
    }

    fn saved(&self, ctx: &GpuContext, _: Precision, rows: usize, copies: usize) -> Saved {
        match self.kind {
            PoolKind::Max => Saved::Argmax(GpuBuffer::zeroed(
                ctx,
                "argmax",
                copies * rows * self.output_size(),
                4,
            )),
            PoolKind::Avg => Saved::Nothing,
        }
    }

    fn forward(&self, io: &Forward) -> Vec<Dispatch> {
        let mut count = io.elementwise_count(self.output_size());
        let counting = io.perturbation.filter(|_| self.counts_kinks());
        let entry = match (self.kind, counting, io.moved_channel()) {
            (PoolKind::Max, Some(_), Some(_)) => &MAX_FORWARD_ONE_CHANNEL,
            (PoolKind::Max, Some(_), None) => &MAX_FORWARD_KINKS,
            // Unperturbed: a row of windows an invocation.
            (PoolKind::Max, None, _) => {
                count = io.count(self.c * self.oh);
                &MAX_FORWARD_ROWS
            }
            (PoolKind::Avg, _, Some(_)) => &AVG_FORWARD_ONE_CHANNEL,
            (PoolKind::Avg, _, None) => &AVG_FORWARD,
        };
        let params = self.params(io.rows, io.copies, count);
        let bindings = PoolForwardBindings {
            x: io.input,
            y: io.output,
            argmax: Pool::argmax(io.saved),
            base_argmax: counting.and_then(|p| Pool::argmax(p.base_saved)),
            flips: counting.map(|p| p.flips),
            moved: io.moved_channel().map(|m| m.moved),
        };
        vec![io
            .gpu
            .kernels
            .dispatch(io.gpu.ctx, entry, &params, &bindings, grid(count).0)]
    }

    fn backward(&self, io: &Backward) -> Vec<Dispatch> {
        let Some(dx) = io.dx else {
            return Vec::new();
        };
        // Max pooling over windows that do not overlap writes a row of windows' inputs an
        // invocation; otherwise each input gathers from the windows covering it.
        let (entry, count) = match self.kind {
            PoolKind::Max if self.size <= self.stride => {
                (&MAX_BACKWARD_ROWS, io.rows * self.c * self.oh)
            }
            PoolKind::Max => (&MAX_BACKWARD, io.rows * self.c * self.h * self.w),
            PoolKind::Avg => (&AVG_BACKWARD, io.rows * self.c * self.h * self.w),
        };
        let params = self.params(io.rows, 1, count);
        let bindings = PoolBackwardBindings {
            dy: io.dy,
            argmax: Pool::argmax(io.saved),
            dx,
            act_saved: io.dx_through.map(|(_, saved)| saved),
        };
        let (entry, act) = match io.dx_through {
            Some((f, _)) => {
                assert!(
                    self.backward_through_activation(),
                    "only max pooling over windows that do not overlap goes on through f′"
                );
                (
                    &MAX_BACKWARD_ROWS_THROUGH,
                    vec![("ACT_KIND", f.code() as f64)],
                )
            }
            None => (entry, Vec::new()),
        };
        let (gpu, groups) = (&io.gpu, grid(count).0);
        vec![gpu
            .kernels
            .dispatch_specialised(gpu.ctx, entry, &act, &params, &bindings, groups)]
    }
}
