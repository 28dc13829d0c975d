//! Affine (fully connected) layer, `affine<N>`: y = x·W + b, and the matmul kernel it runs on.
//!
//! Shapes: x [N, d_in] (the previous output flattened per sample), W [d_in, d_out], b \[d_out],
//! y [N, d_out]; with P perturbed copies, x is [P, N, d_in] or shared, y [P, N, d_out].

use bytemuck::{Pod, Zeroable};

use super::TensorPlacer;
use super::{
    Activation, Backward, Forward, Gpu, Layer, LayerOps, LayerSpec, MovedChannel, Perturbation,
};
use crate::gpu::kernel::Shader;
use crate::gpu::kernel::{grid, shaders, Binding, Entry, KernelBindings, Placeholders};
use crate::gpu::{Dispatch, GpuBuffer};
use crate::nn::ParamRole;

/// The spec words, as error messages list them.
pub(super) const SYNTAX: &[&str] = &["affine<N>"];

/// `affine<N>`
pub(super) fn parse(word: &str) -> Option<Result<LayerSpec, String>> {
    let units = word.strip_prefix("affine")?;
    Some(super::positive(units).map(|units| LayerSpec::Affine { units }))
}

#[derive(Clone, Debug, PartialEq)]
pub struct Affine {
    pub d_in: usize,
    pub d_out: usize,
    /// Tensor indices of W [d_in, d_out] and b \[d_out].
    pub weight: usize,
    pub bias: usize,
}

pub(super) fn resolve(
    units: usize,
    [c, h, w]: [usize; 3],
    placer: &mut TensorPlacer,
) -> Result<(Layer, [usize; 3]), String> {
    let d_in = c * h * w;
    placer.next_layer();
    let weight = placer.add(ParamRole::Weight, vec![d_in, units], d_in);
    let bias = placer.add(ParamRole::Bias, vec![units], d_in);
    let layer = Affine {
        d_in,
        d_out: units,
        weight,
        bias,
    };
    Ok((Layer::Affine(layer), [units, 1, 1]))
}

/// matmul.wgsl's Params: C\[p] = A\[p]·B\[p] (+ bias), every operand located by offset and
/// strides. The default is all zeros but `c_cs`, 1: C's rows are contiguous unless set.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct MatmulParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub flags: u32,
    pub a_off: u32,
    pub a_rs: u32,
    pub a_cs: u32,
    pub a_bs: u32,
    pub b_off: u32,
    pub b_rs: u32,
    pub b_cs: u32,
    pub bias_off: u32,
    pub c_off: u32,
    pub c_rs: u32,
    pub c_bs: u32,
    /// The epilogue's activation (its ACT_ code).
    pub act_kind: u32,
    /// [`Epilogue::ColumnSums`]: where in C the column sums of B go.
    pub sum_off: u32,
    /// Elements between the B of two copies (0: one B shared by all).
    pub b_bs: u32,
    /// Elements between two columns of C.
    pub c_cs: u32,
    /// Copies (set by [`matmul`]).
    pub copies: u32,
}

impl Default for MatmulParams {
    fn default() -> Self {
        MatmulParams {
            c_cs: 1,
            ..Zeroable::zeroed()
        }
    }
}

/// MatmulParams::flags: add the bias row.
pub const ADD_BIAS: u32 = 1;

pub const MATMUL: Entry = Entry::new(shaders::MATMUL, "matmul");
/// Each copy p reads B and bias as the shared base plus its own one-element change.
pub const MATMUL_PERTURBED: Entry = MATMUL.with(&[("PERTURBED", 1.0)]);

/// What the matmul does with C before it stores it: the work of the layer beside it, fused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Epilogue {
    Plain,
    /// Store C and f(C) into [`MatmulBindings::activated`]: an affine layer and the
    /// activation above it.
    Activate(Activation),
    /// Store f′ applied to C, with f′ from [`MatmulBindings::saved`]: an input gradient and the
    /// activation layer below it.
    Backpropagate(Activation),
    /// Also the column sums of B into C from `sum_off`: a weight gradient and its bias's.
    ColumnSums {
        sum_off: usize,
    },
}

/// matmul.wgsl's buffers.
pub struct MatmulBindings<'a> {
    pub a: &'a GpuBuffer,
    pub b: Option<&'a GpuBuffer>,
    pub bias: Option<&'a GpuBuffer>,
    pub c: &'a GpuBuffer,
    /// MATMUL_PERTURBED: (flat index, sign) per copy, and \[h].
    pub pert: Option<&'a GpuBuffer>,
    pub h: Option<&'a GpuBuffer>,
    /// [`Epilogue::Backpropagate`]: what the activation's forward saved, laid out as C.
    pub saved: Option<&'a GpuBuffer>,
    /// [`Epilogue::Activate`]: f(C), laid out as C.
    pub activated: Option<&'a GpuBuffer>,
}

impl KernelBindings for MatmulBindings<'_> {
    type Params = MatmulParams;
    const ACCESS: &'static [Binding] = &[
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
    ];
    fn buffers<'a>(&'a self, unused: &'a Placeholders) -> Vec<&'a wgpu::Buffer> {
        vec![
            &self.a.buffer,
            unused.real(self.b),
            unused.real(self.bias),
            &self.c.buffer,
            unused.word(self.pert),
            unused.real(self.h),
            // The vec4 views of A and B.
            &self.a.buffer,
            unused.real(self.b),
            unused.real(self.saved),
            unused.real_rw(self.activated),
        ]
    }
}

/// Invocations a matmul workgroup, for `blocks` blocks in all copies: 64, or as few as give a
/// small product four workgroups (down to 8, lavapipe's SIMD width in f32), since lavapipe runs
/// a workgroup on one thread and a product of a few dozen blocks in one workgroup would leave
/// the other cores idle.
fn workgroup_size(blocks: usize) -> usize {
    let per_group = (blocks / 4).max(1);
    (1 << per_group.ilog2()).clamp(8, 64)
}

/// Whether an offset or stride lands on a vec4 boundary.
fn aligned(v: u32) -> bool {
    v.is_multiple_of(4)
}

/// How matmul.wgsl reads A (its A_VEC): four k at a time where rows run contiguous along k,
/// four rows at a time where columns do, else element by element; the vec4 reads need every
/// offset and stride they step by to be a multiple of 4.
fn a_reads(p: &MatmulParams, batch: usize) -> u32 {
    let base = aligned(p.a_off) && (batch == 1 || aligned(p.a_bs)) && p.k >= 4;
    if base && p.a_cs == 1 && aligned(p.a_rs) {
        1
    } else if base && p.a_rs == 1 && aligned(p.a_cs) && aligned(p.m) {
        2
    } else {
        0
    }
}

/// Whether matmul.wgsl reads B four columns at a time (its B_VEC): its rows must hold whole quads
/// up to N rounded up to 4 (the columns past N are read but not stored).
fn b_reads_quads(p: &MatmulParams, perturbed: bool) -> bool {
    !perturbed
        && p.b_cs == 1
        && aligned(p.b_off)
        && aligned(p.b_rs)
        && aligned(p.b_bs)
        && p.b_rs >= p.n.next_multiple_of(4)
}

/// A matmul over `batch` copies, 8×8 outputs an invocation, the blocks numbered row by row and
/// copy by copy over a one-dimensional grid.
pub fn matmul(
    gpu: &Gpu,
    mut params: MatmulParams,
    batch: usize,
    bindings: &MatmulBindings,
    epilogue: Epilogue,
) -> Dispatch {
    let perturbed = bindings.pert.is_some();
    let entry = if perturbed {
        &MATMUL_PERTURBED
    } else {
        &MATMUL
    };
    let mut block_rows = (params.m as usize).div_ceil(8);
    let mut constants = vec![
        ("A_VEC", a_reads(&params, batch) as f64),
        ("B_VEC", b_reads_quads(&params, perturbed) as u32 as f64),
    ];
    match epilogue {
        Epilogue::Plain => {}
        Epilogue::Activate(f) => {
            params.act_kind = f.code();
            constants.push(("ACT_FORWARD", 1.0));
        }
        Epilogue::Backpropagate(f) => {
            params.act_kind = f.code();
            constants.push(("ACT_BACKWARD", 1.0));
        }
        Epilogue::ColumnSums { sum_off } => {
            params.sum_off = sum_off as u32;
            block_rows += 8;
            constants.push(("SUM_ROW", 1.0));
        }
    }
    params.copies = batch as u32;
    let blocks = block_rows * (params.n as usize).div_ceil(8) * batch;
    let wg_size = workgroup_size(blocks);
    constants.push(("WG_SIZE", wg_size as f64));
    let folded = blocks.div_ceil(wg_size);
    let x = folded.min(65_535);
    let groups = [x as u32, folded.div_ceil(x) as u32, 1];
    let flops = 2 * u64::from(params.m) * u64::from(params.n) * u64::from(params.k) * batch as u64;
    gpu.kernels
        .dispatch_specialised(gpu.ctx, entry, &constants, &params, bindings, groups)
        .with_flops(flops)
}

/// affine_delta.wgsl's Params, shared by its entry points.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct AffineDeltaParams {
    pub n: u32,
    pub d_in: u32,
    pub d_out: u32,
    /// Features per channel and sample (affine_moved_channel).
    pub plane: u32,
    pub w_off: u32,
    pub b_off: u32,
    /// Invocations: copies·N·d_out.
    pub count: u32,
    pub row_width: u32,
}

/// affine_delta.wgsl's one binding table, shared by its entry points.
pub struct AffineDeltaBindings<'a> {
    /// The shared input [N, d_in] (affine_moved_parameter), or the copies' inputs [P, N, d_in],
    /// each copy's moved channel read alone (affine_moved_channel).
    pub x: &'a GpuBuffer,
    /// affine_moved_channel: the unperturbed input [N, d_in].
    pub base_x: Option<&'a GpuBuffer>,
    /// The unperturbed output [N, d_out].
    pub base_y: &'a GpuBuffer,
    /// affine_moved_channel: the arena, for W.
    pub theta: Option<&'a GpuBuffer>,
    /// affine_moved_parameter: (flat index, sign) per copy, and \[h].
    pub pert: Option<&'a GpuBuffer>,
    pub h: Option<&'a GpuBuffer>,
    /// affine_moved_channel: \[P] u32, each copy's moved channel.
    pub moved: Option<&'a GpuBuffer>,
    /// [P, N, d_out]
    pub y: &'a GpuBuffer,
}

impl KernelBindings for AffineDeltaBindings<'_> {
    type Params = AffineDeltaParams;
    const ACCESS: &'static [Binding] = &[
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
    ];
    fn buffers<'a>(&'a self, unused: &'a Placeholders) -> Vec<&'a wgpu::Buffer> {
        vec![
            &self.x.buffer,
            unused.real(self.base_x),
            &self.base_y.buffer,
            unused.real(self.theta),
            unused.word(self.pert),
            unused.real(self.h),
            unused.word(self.moved),
            &self.y.buffer,
        ]
    }
}

/// shaders/affine_delta.wgsl, which this layer alone uses.
const AFFINE_DELTA: Shader = crate::shader!("affine_delta.wgsl");
const MOVED_PARAMETER: Entry = Entry::new(AFFINE_DELTA, "affine_moved_parameter");
const MOVED_CHANNEL: Entry = Entry::new(AFFINE_DELTA, "affine_moved_channel");

impl Affine {
    /// The start of an incremental route: the unperturbed output plus the one column a copy's
    /// change of W or b moves, O(1) an output where the matmul forms d_in products.
    fn forward_from_base(&self, io: &Forward, base: &Perturbation) -> Vec<Dispatch> {
        let bindings = AffineDeltaBindings {
            x: io.input,
            base_x: None,
            base_y: base.base_output,
            theta: None,
            pert: Some(base.pert),
            h: Some(base.h),
            moved: None,
            y: io.output,
        };
        self.delta(io, &MOVED_PARAMETER, 1, &bindings)
    }

    /// The end of a one-channel route: the unperturbed output plus the change of the one input
    /// channel each copy moved, times that channel's rows of W.
    fn forward_moved_channel(
        &self,
        io: &Forward,
        base: &Perturbation,
        moved: &MovedChannel,
    ) -> Vec<Dispatch> {
        let bindings = AffineDeltaBindings {
            x: io.input,
            base_x: Some(base.base_input),
            base_y: base.base_output,
            theta: Some(io.theta),
            pert: None,
            h: None,
            moved: Some(moved.moved),
            y: io.output,
        };
        self.delta(io, &MOVED_CHANNEL, self.d_in / moved.channels, &bindings)
    }

    /// `entry` of affine_delta.wgsl over every output of the copies, `plane` features a channel.
    fn delta(
        &self,
        io: &Forward,
        entry: &Entry,
        plane: usize,
        bindings: &AffineDeltaBindings,
    ) -> Vec<Dispatch> {
        let count = io.count(self.d_out);
        let (groups, row_width) = grid(count);
        let params = AffineDeltaParams {
            n: io.rows as u32,
            d_in: self.d_in as u32,
            d_out: self.d_out as u32,
            plane: plane as u32,
            w_off: io.layout.tensors[self.weight].offset as u32,
            b_off: io.layout.tensors[self.bias].offset as u32,
            count: count as u32,
            row_width,
        };
        vec![io
            .gpu
            .kernels
            .dispatch(io.gpu.ctx, entry, &params, bindings, groups)]
    }
}

impl LayerOps for Affine {
    fn output_size(&self) -> usize {
        self.d_out
    }

    fn tensors(&self) -> Vec<usize> {
        vec![self.weight, self.bias]
    }

    fn reads_shared_input(&self) -> bool {
        true
    }

    // y [P, N, d_out] = x [P or shared, N, d_in] · W + b, and f(y) too when the activation
    // above is fused in
    fn forward(&self, io: &Forward) -> Vec<Dispatch> {
        if let Some(base) = io.perturbation.filter(|p| p.from_base) {
            debug_assert!(
                io.input_shared,
                "an incremental route starts on the shared input"
            );
            return self.forward_from_base(io, &base);
        }
        if let (Some(base), Some(moved)) = (&io.perturbation, io.moved_channel()) {
            return self.forward_moved_channel(io, base, &moved);
        }
        let (n, d_in, d_out) = (io.rows, self.d_in, self.d_out);
        let params = MatmulParams {
            m: n as u32,
            n: d_out as u32,
            k: d_in as u32,
            flags: ADD_BIAS,
            a_rs: d_in as u32,
            a_cs: 1,
            a_bs: if io.input_shared {
                0
            } else {
                (n * d_in) as u32
            },
            b_off: io.layout.tensors[self.weight].offset as u32,
            b_rs: d_out as u32,
            b_cs: 1,
            bias_off: io.layout.tensors[self.bias].offset as u32,
            c_rs: d_out as u32,
            c_bs: (n * d_out) as u32,
            ..Default::default()
        };
        let (epilogue, activated) = match io.activated {
            Some((f, out)) => (Epilogue::Activate(f), Some(out)),
            None => (Epilogue::Plain, None),
        };
        let bindings = MatmulBindings {
            a: io.input,
            b: Some(io.theta),
            bias: Some(io.theta),
            c: io.output,
            pert: io.pert(),
            h: io.h(),
            saved: None,
            activated,
        };
        vec![matmul(&io.gpu, params, io.copies, &bindings, epilogue)]
    }

    fn backward(&self, io: &Backward) -> Vec<Dispatch> {
        let (n, d_in, d_out) = (io.rows, self.d_in, self.d_out);
        let w = &io.layout.tensors[self.weight];
        let b = &io.layout.tensors[self.bias];
        // dW [d_in, d_out] = xᵀ [d_in, N] · dy [N, d_out], and db [d_out] = Σ_n dy[n, :] as
        // the column sums of dy
        let dw = MatmulParams {
            m: d_in as u32,
            n: d_out as u32,
            k: n as u32,
            a_rs: 1,
            a_cs: d_in as u32,
            b_rs: d_out as u32,
            b_cs: 1,
            c_off: w.offset as u32,
            c_rs: d_out as u32,
            ..Default::default()
        };
        let dw_bindings = MatmulBindings {
            a: io.input,
            b: Some(io.dy),
            bias: None,
            c: io.grads,
            pert: None,
            h: None,
            saved: None,
            activated: None,
        };
        let sums = Epilogue::ColumnSums { sum_off: b.offset };
        let mut out = vec![matmul(&io.gpu, dw, 1, &dw_bindings, sums)];
        if let Some(dx) = io.dx {
            // dx [N, d_in] = dy [N, d_out] · Wᵀ [d_out, d_in], through f′ of the activation
            // below when it is fused in
            let params = MatmulParams {
                m: n as u32,
                n: d_in as u32,
                k: d_out as u32,
                a_rs: d_out as u32,
                a_cs: 1,
                b_off: w.offset as u32,
                b_rs: 1,
                b_cs: d_out as u32,
                c_rs: d_in as u32,
                ..Default::default()
            };
            let (epilogue, saved) = match io.dx_through {
                Some((f, saved)) => (Epilogue::Backpropagate(f), Some(saved)),
                None => (Epilogue::Plain, None),
            };
            let bindings = MatmulBindings {
                a: io.dy,
                b: Some(io.theta),
                bias: None,
                c: dx,
                pert: None,
                h: None,
                saved,
                activated: None,
            };
            out.push(matmul(&io.gpu, params, 1, &bindings, epilogue));
        }
        out
    }
}
