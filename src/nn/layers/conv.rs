//! 2-D convolution, `conv<F>x<K>[s<S>][p<P>]`, NCHW, on shaders/conv.wgsl (and matmul.wgsl for
//! the unfolded forward).
//!
//! Shapes: x [P, N, C, H, W] ⊛ W [F, C, K, K] + b \[F] -> y [P, N, F, OH, OW],
//! OH = (H + 2·pad − K)/stride + 1 (likewise OW).

use std::fmt;

use bytemuck::{Pod, Zeroable};

use super::affine::{matmul, Epilogue, MatmulBindings, MatmulParams};
use super::{Backward, Forward, Layer, LayerOps, LayerSpec, Saved, TensorPlacer};
use crate::gpu::kernel::{grid, Binding, Entry, KernelBindings, Placeholders, Shader};
use crate::gpu::{Dispatch, GpuBuffer, GpuContext, Precision};
use crate::nn::{ParamLayout, ParamRole};

/// The spec words, as error messages list them.
pub(super) const SYNTAX: &[&str] = &["conv<F>x<K>[s<S>][p<P>]"];

/// `conv<F>x<K>[s<S>][p<P>]`
pub(super) fn parse(word: &str) -> Option<Result<LayerSpec, String>> {
    let rest = word.strip_prefix("conv")?;
    Some((|| {
        let (filters, kernel) = rest
            .split_once('x')
            .ok_or("write conv<filters>x<size>, e.g. conv30x5")?;
        let (size, stride, pad) = super::size_stride_pad(kernel, Some(1))?;
        Ok(LayerSpec::Conv {
            filters: super::positive(filters)?,
            size,
            stride,
            pad,
        })
    })())
}

pub(super) fn write_spec(
    f: &mut fmt::Formatter<'_>,
    filters: usize,
    size: usize,
    stride: usize,
    pad: usize,
) -> fmt::Result {
    write!(f, "conv{filters}x{size}")?;
    if stride != 1 {
        write!(f, "s{stride}")?;
    }
    if pad != 0 {
        write!(f, "p{pad}")?;
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    /// Input channels, height and width.
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Filters, kernel size, stride, padding.
    pub f: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    /// Output height and width.
    pub oh: usize,
    pub ow: usize,
    /// Tensor indices of W [F, C, K, K] and b \[F].
    pub weight: usize,
    pub bias: usize,
}

pub(super) fn resolve(
    filters: usize,
    size: usize,
    stride: usize,
    pad: usize,
    [c, h, w]: [usize; 3],
    placer: &mut TensorPlacer,
) -> Result<(Layer, [usize; 3]), String> {
    if size > h + 2 * pad || size > w + 2 * pad {
        return Err(format!(
            "a {size}×{size} kernel is larger than its {h}×{w} input (padding {pad})"
        ));
    }
    let (oh, ow) = (
        (h + 2 * pad - size) / stride + 1,
        (w + 2 * pad - size) / stride + 1,
    );
    placer.next_layer();
    let fan_in = c * size * size;
    let weight = placer.add(ParamRole::Weight, vec![filters, c, size, size], fan_in);
    let bias = placer.add(ParamRole::Bias, vec![filters], fan_in);
    let layer = Conv {
        c,
        h,
        w,
        f: filters,
        k: size,
        stride,
        pad,
        oh,
        ow,
        weight,
        bias,
    };
    Ok((Layer::Conv(layer), [filters, oh, ow]))
}

/// conv.wgsl's Params.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct ConvParams {
    pub n: u32,
    pub c: u32,
    pub h: u32,
    pub w: u32,
    pub f: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride: u32,
    pub pad: u32,
    pub oh: u32,
    pub ow: u32,
    pub copies: u32,
    /// Elements between the inputs of two copies; 0 when all share one input.
    pub x_copy_stride: u32,
    pub w_off: u32,
    pub b_off: u32,
    pub row_width: u32,
    /// The samples conv_backward_params sums.
    pub n_begin: u32,
    pub n_end: u32,
    /// Row stride of the unfolded input ([`Conv::ld`]).
    pub ld: u32,
    pub _pad: u32,
}

/// conv.wgsl's buffers; its entry points give bindings 1–3 different roles.
pub struct ConvBindings<'a> {
    /// x, or dy in backward, or the per-sample weight gradients in conv_weight_sums.
    pub x: &'a GpuBuffer,
    /// θ (conv_forward, pack_filters, conv_backward_input), or the saved input in
    /// conv_backward_params.
    pub theta: Option<&'a GpuBuffer>,
    /// y, dx, the unfolded input (im2col), the packed filters (pack_filters) or the gradient
    /// arena (conv_backward_params, conv_weight_sums).
    pub y: &'a GpuBuffer,
    /// CONV_FORWARD_PERTURBED: (flat index, sign) per copy, and \[h].
    pub pert: Option<&'a GpuBuffer>,
    pub h: Option<&'a GpuBuffer>,
    /// On a one-channel route: each copy's moved filter.
    pub moved: Option<&'a GpuBuffer>,
    /// At the start of an incremental route: the unperturbed output.
    pub base_y: Option<&'a GpuBuffer>,
}

impl KernelBindings for ConvBindings<'_> {
    type Params = ConvParams;
    const ACCESS: &'static [Binding] = &[
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
    ];
    fn buffers<'a>(&'a self, unused: &'a Placeholders) -> Vec<&'a wgpu::Buffer> {
        vec![
            &self.x.buffer,
            unused.real(self.theta),
            &self.y.buffer,
            unused.word(self.pert),
            unused.real(self.h),
            unused.word(self.moved),
            unused.real(self.base_y),
        ]
    }
}

/// shaders/conv.wgsl, which this layer alone uses.
pub const SHADER: Shader = crate::shader!("conv.wgsl");

const CONV_FORWARD: Entry = Entry::new(SHADER, "conv_forward");
const CONV_FORWARD_PERTURBED: Entry = CONV_FORWARD.with(&[("PERTURBED", 1.0)]);
const CONV_FORWARD_ONE_CHANNEL: Entry =
    CONV_FORWARD.with(&[("PERTURBED", 1.0), ("ONE_CHANNEL", 1.0)]);
const CONV_FORWARD_FROM_BASE: Entry = CONV_FORWARD.with(&[("PERTURBED", 1.0), ("FROM_BASE", 1.0)]);
const CONV_FORWARD_ONE_CHANNEL_FROM_BASE: Entry =
    CONV_FORWARD.with(&[("PERTURBED", 1.0), ("ONE_CHANNEL", 1.0), ("FROM_BASE", 1.0)]);
const IM2COL: Entry = Entry::new(SHADER, "im2col");
const PACK_FILTERS: Entry = Entry::new(SHADER, "pack_filters");
const BACKWARD_INPUT: Entry = Entry::new(SHADER, "conv_backward_input");
const BACKWARD_PARAMS: Entry = Entry::new(SHADER, "conv_backward_params");
const WEIGHT_SUMS: Entry = Entry::new(SHADER, "conv_weight_sums");

impl Conv {
    /// Row stride of the unfolded input: C·K·K taps, a column of ones (the weight gradient's
    /// matmul sums dy into the bias gradient through it), then zeros up to a multiple of 4, so
    /// that the matmul reads rows four elements at a time.
    pub fn ld(&self) -> usize {
        (self.c * self.k * self.k + 1).next_multiple_of(4)
    }

    /// Params for `copies` outputs from inputs `x_copy_stride` apart, over an elementwise grid
    /// of `count` invocations, summing weight gradients over `samples`.
    fn params(
        &self,
        layout: &ParamLayout,
        n: usize,
        copies: usize,
        x_copy_stride: usize,
        count: usize,
        samples: std::ops::Range<usize>,
    ) -> ConvParams {
        let u = |v: usize| v as u32;
        ConvParams {
            n: u(n),
            c: u(self.c),
            h: u(self.h),
            w: u(self.w),
            f: u(self.f),
            kh: u(self.k),
            kw: u(self.k),
            stride: u(self.stride),
            pad: u(self.pad),
            oh: u(self.oh),
            ow: u(self.ow),
            copies: u(copies),
            x_copy_stride: u(x_copy_stride),
            w_off: u(layout.tensors[self.weight].offset),
            b_off: u(layout.tensors[self.bias].offset),
            row_width: grid(count).1,
            n_begin: u(samples.start),
            n_end: u(samples.end),
            ld: u(self.ld()),
            _pad: 0,
        }
    }

    /// One copy: im2col, pack_filters, then per sample n col[n] [OH·OW, ld] · packed [ld, F]
    /// with the matmul kernel (one copy of its batch per sample, N ≤ MAX_ROWS of them), stored
    /// transposed, straight into the sample's NCHW output, and through the activation above
    /// where it is fused in (benches/conv_layout.rs measures it against the direct kernel). One
    /// matmul into NHWC and a pass back to NCHW measured no faster on lavapipe, and writes the
    /// output twice.
    fn forward_unfolded(
        &self,
        io: &Forward,
        col: &GpuBuffer,
        filters: &GpuBuffer,
    ) -> Vec<Dispatch> {
        let (gpu, n) = (&io.gpu, io.rows);
        let (plane, ld, f4) = (self.oh * self.ow, self.ld(), self.f.next_multiple_of(4));
        // im2col runs an invocation per row and channel.
        let (unfolds, packs) = (n * plane * self.c, ld * f4);
        let params = |count| self.params(io.layout, n, 1, 0, count, 0..n);
        let unfold = ConvBindings {
            x: io.input,
            theta: None,
            y: col,
            pert: None,
            h: None,
            moved: None,
            base_y: None,
        };
        let pack = ConvBindings {
            x: io.input,
            theta: Some(io.theta),
            y: filters,
            pert: None,
            h: None,
            moved: None,
            base_y: None,
        };
        let u = |v: usize| v as u32;
        let mm = MatmulParams {
            m: u(plane),
            n: u(self.f),
            k: u(ld),
            a_rs: u(ld),
            a_cs: 1,
            a_bs: u(plane * ld),
            b_rs: u(f4),
            b_cs: 1,
            c_rs: 1,
            c_cs: u(plane),
            c_bs: u(self.f * plane),
            ..Default::default()
        };
        let (epilogue, activated) = match io.activated {
            Some((f, out)) => (Epilogue::Activate(f), Some(out)),
            None => (Epilogue::Plain, None),
        };
        let mm_bindings = MatmulBindings {
            a: col,
            b: Some(filters),
            bias: None,
            c: io.output,
            pert: None,
            h: None,
            saved: None,
            activated,
        };
        vec![
            gpu.kernels
                .dispatch(gpu.ctx, &IM2COL, &params(unfolds), &unfold, grid(unfolds).0),
            gpu.kernels
                .dispatch(gpu.ctx, &PACK_FILTERS, &params(packs), &pack, grid(packs).0),
            matmul(gpu, mm, n, &mm_bindings, epilogue),
        ]
    }

    /// dW and db from the unfolded input the forward kept: per sample n, dy[n] [F, OH·OW] ·
    /// col[n] [OH·OW, ld] with the matmul kernel (one copy of its batch per sample, all in one
    /// dispatch), into `partial` [N, F, ld]; then conv_weight_sums adds the samples up in order,
    /// so every run sums alike. col's column of ones makes column C·K·K of each product that
    /// sample's db. (One invocation per weight looping over all N·OH·OW products, as
    /// conv_backward_params does, leaves most of a GPU idle: SimpleConvNet has 780 weights.)
    fn weight_gradient_unfolded(
        &self,
        io: &Backward,
        col: &GpuBuffer,
        partial: &GpuBuffer,
    ) -> Vec<Dispatch> {
        let (gpu, n) = (&io.gpu, io.rows);
        let (plane, ld) = (self.oh * self.ow, self.ld());
        let u = |v: usize| v as u32;
        let per_sample = MatmulParams {
            m: u(self.f),
            n: u(ld),
            k: u(plane),
            a_rs: u(plane),
            a_cs: 1,
            a_bs: u(self.f * plane),
            b_rs: u(ld),
            b_cs: 1,
            b_bs: u(plane * ld),
            c_rs: u(ld),
            c_bs: u(self.f * ld),
            ..Default::default()
        };
        let mm_bindings = MatmulBindings {
            a: io.dy,
            b: Some(col),
            bias: None,
            c: partial,
            pert: None,
            h: None,
            saved: None,
            activated: None,
        };
        let sums = ConvBindings {
            x: partial,
            theta: None,
            y: io.grads,
            pert: None,
            h: None,
            moved: None,
            base_y: None,
        };
        let count = self.f * (self.c * self.k * self.k + 1);
        let params = self.params(io.layout, n, 1, 0, count, 0..n);
        vec![
            matmul(gpu, per_sample, n, &mm_bindings, Epilogue::Plain),
            gpu.kernels
                .dispatch(gpu.ctx, &WEIGHT_SUMS, &params, &sums, grid(count).0),
        ]
    }
}

impl LayerOps for Conv {
    fn output_size(&self) -> usize {
        self.f * self.oh * self.ow
    }

    fn tensors(&self) -> Vec<usize> {
        vec![self.weight, self.bias]
    }

    fn reads_shared_input(&self) -> bool {
        true
    }

    /// A change of W[f, …] or b\[f] moves filter f's output channel alone.
    fn moved_channel(&self, layout: &ParamLayout, index: usize) -> Option<usize> {
        let (w, b) = (&layout.tensors[self.weight], &layout.tensors[self.bias]);
        if (w.offset..w.offset + w.numel).contains(&index) {
            Some((index - w.offset) / (self.c * self.k * self.k))
        } else {
            (b.offset..b.offset + b.numel)
                .contains(&index)
                .then(|| index - b.offset)
        }
    }

    // The unfolded input holds ld values per output position; the weight gradient's per-sample
    // products F·ld per sample.
    fn largest_buffer(&self) -> usize {
        let positions = self.oh * self.ow;
        (positions * self.ld())
            .max(self.output_size())
            .max(self.f * self.ld())
    }

    fn saved(&self, ctx: &GpuContext, p: Precision, rows: usize, copies: usize) -> Saved {
        // Only a single copy unfolds its input; perturbed copies run the direct kernel.
        if copies != 1 {
            return Saved::Nothing;
        }
        let (positions, ld) = (rows * self.oh * self.ow, self.ld());
        Saved::Unfolded {
            col: GpuBuffer::real(ctx, "im2col", positions * ld, p),
            filters: GpuBuffer::real(ctx, "conv_filters", ld * self.f.next_multiple_of(4), p),
            partial: GpuBuffer::real(ctx, "conv_partial", rows * self.f * ld, p),
        }
    }

    fn forward(&self, io: &Forward) -> Vec<Dispatch> {
        if let Saved::Unfolded { col, filters, .. } = io.saved {
            return self.forward_unfolded(io, col, filters);
        }
        debug_assert!(
            io.activated.is_none(),
            "only the unfolded forward fuses an activation"
        );
        let n = io.rows;
        let in_size = self.c * self.h * self.w;
        let x_stride = if io.input_shared { 0 } else { n * in_size };
        let count = io.elementwise_count(self.output_size());
        let params = self.params(io.layout, n, io.copies, x_stride, count, 0..n);
        let from_base = io.perturbation.filter(|p| p.from_base);
        let entry = match (io.perturbation, io.moved_channel(), from_base) {
            (Some(_), Some(_), Some(_)) => &CONV_FORWARD_ONE_CHANNEL_FROM_BASE,
            (Some(_), Some(_), None) => &CONV_FORWARD_ONE_CHANNEL,
            (Some(_), None, Some(_)) => &CONV_FORWARD_FROM_BASE,
            (Some(_), None, None) => &CONV_FORWARD_PERTURBED,
            (None, _, _) => &CONV_FORWARD,
        };
        let bindings = ConvBindings {
            x: io.input,
            theta: Some(io.theta),
            y: io.output,
            pert: io.pert(),
            h: io.h(),
            moved: io.moved_channel().map(|m| m.moved),
            base_y: from_base.map(|p| p.base_output),
        };
        vec![io
            .gpu
            .kernels
            .dispatch(io.gpu.ctx, entry, &params, &bindings, grid(count).0)]
    }

    fn backward(&self, io: &Backward) -> Vec<Dispatch> {
        let (gpu, n) = (&io.gpu, io.rows);
        let params = |count, samples| self.params(io.layout, n, 1, 0, count, samples);
        let mut out = match io.saved {
            Saved::Unfolded { col, partial, .. } => self.weight_gradient_unfolded(io, col, partial),
            // A forward that did not unfold (training workspaces hold one copy, which does).
            _ => {
                // Each weight's invocation loops over N·OH·OW products: split the batch so no
                // invocation passes lavapipe's 65,535-iteration limit.
                let count = self.f * self.c * self.k * self.k + self.f;
                let per_sample = self.oh * self.ow + self.oh + 1;
                let slice = (30_000 / per_sample).max(1);
                let grads = ConvBindings {
                    x: io.dy,
                    theta: Some(io.input),
                    y: io.grads,
                    pert: None,
                    h: None,
                    moved: None,
                    base_y: None,
                };
                (0..n)
                    .step_by(slice)
                    .map(|begin| {
                        let p = params(count, begin..(begin + slice).min(n));
                        gpu.kernels
                            .dispatch(gpu.ctx, &BACKWARD_PARAMS, &p, &grads, grid(count).0)
                    })
                    .collect()
            }
        };
        if let Some(dx) = io.dx {
            let count = n * self.c * self.h * self.w;
            let bindings = ConvBindings {
                x: io.dy,
                theta: Some(io.theta),
                y: dx,
                pert: None,
                h: None,
                moved: None,
                base_y: None,
            };
            out.push(gpu.kernels.dispatch(
                gpu.ctx,
                &BACKWARD_INPUT,
                &params(count, 0..n),
                &bindings,
                grid(count).0,
            ));
        }
        out
    }
}
