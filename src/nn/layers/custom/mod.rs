//! A user's own layer, `wgsl:PATH`: a `.wgsl` file that declares its parameter tensors and
//! output shape in `//!` lines and defines `forward`, `backward` and one `backward_NAME` per
//! tensor over wgrad's `real` (f32 or f64). shaders/custom_layer.wgsl owns the bindings and
//! entry points around it; [`contract`] says what the file must hold and checks it.
//!
//! The layer trains with every optimizer, is saved under its tensors' names (NAME followed by
//! the layer's number in the list: `alpha2` for `affine100,wgsl:prelu.wgsl,affine10`), and the
//! perturbed-loss engine checks both its parameter gradients and its input gradient: each
//! perturbed copy reads parameters (and, for the input check, the input) through the harness,
//! which adds that copy's own change to the shared base.
//!
//! Shapes: x [P, N, IN] or shared [N, IN], y [P, N, OUT]; backward on one copy.

pub mod contract;

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::{Backward, Forward, Layer, LayerOps, LayerSpec, TensorPlacer};
use crate::gpu::kernel::{grid, Binding, Entry, KernelBindings, Placeholders};
use crate::gpu::{Dispatch, GpuBuffer};
use crate::nn::{Init, ParamLayout, ParamRole};
pub use contract::{Contract, Declarations, Dim, OutputShape, ParamDecl, ParamInit};

/// The spec word, as error messages list it.
pub(super) const SYNTAX: &[&str] = &["wgsl:<file.wgsl>"];

/// `wgsl:PATH`: reads and checks the file. The path keeps its case (the other words are
/// lowercased before parsing).
pub(super) fn parse(item: &str) -> Option<Result<LayerSpec, String>> {
    let prefix = item.get(..5)?;
    if !prefix.eq_ignore_ascii_case("wgsl:") {
        return None;
    }
    let path = &item[5..];
    Some(read(path).map(|source| LayerSpec::Wgsl {
        path: path.to_string(),
        source,
    }))
}

/// The text of layer file `path`, checked against the contract.
fn read(path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Err("no file after 'wgsl:': write wgsl:PATH, e.g. wgsl:layers/gelu.wgsl".into());
    }
    let source = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the layer file {path}: {e}; check the path"))?;
    contract::contract(path, &source)?;
    Ok(source)
}

#[derive(Clone, Debug)]
pub struct CustomLayer {
    pub contract: Arc<Contract>,
    /// Features per sample of the input and the output.
    pub in_size: usize,
    pub out_size: usize,
    /// Tensor indices of the declared parameters, in declaration order.
    pub params: Vec<usize>,
}

impl PartialEq for CustomLayer {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.contract, &other.contract)
            && (self.in_size, self.out_size) == (other.in_size, other.out_size)
            && self.params == other.params
    }
}

/// Places the declared tensors and gives the output shape; `number` is the layer's place in
/// the list (1-based), which names its tensors.
pub(super) fn resolve(
    path: &str,
    source: &str,
    number: usize,
    [c, h, w]: [usize; 3],
    placer: &mut TensorPlacer,
) -> Result<(Layer, [usize; 3]), String> {
    let contract = contract::contract(path, source)?;
    let decl = &contract.decl;
    let in_size = c * h * w;
    if let Some(wanted) = decl.input.filter(|&d| d != in_size) {
        return Err(format!(
            "the file requires {wanted} input features (its `//! input: {wanted}`), but the \
             layer before it gives {in_size}: make the layer before it give {wanted}, or change \
             the declaration"
        ));
    }
    let (out_size, shape) = match decl.output {
        OutputShape::Same => (in_size, [c, h, w]),
        OutputShape::Features(k) => (k, [k, 1, 1]),
    };
    let params = (decl.params.iter())
        .map(|p| {
            let dims: Vec<usize> = (p.dims.iter())
                .map(|d| match *d {
                    Dim::In => in_size,
                    Dim::Out => out_size,
                    Dim::Fixed(n) => n,
                })
                .collect();
            placer.add_named(format!("{}{number}", p.name), ParamRole::Declared, dims)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let layer = CustomLayer {
        contract,
        in_size,
        out_size,
        params,
    };
    Ok((Layer::Custom(layer), shape))
}

impl CustomLayer {
    /// Each declared tensor's layout index and how it starts (He and Xavier take the first
    /// dimension as the fan-in).
    pub fn starts<'a>(
        &'a self,
        layout: &'a ParamLayout,
    ) -> impl Iterator<Item = (usize, Start)> + 'a {
        (self.params.iter().zip(&self.contract.decl.params)).map(move |(&t, decl)| {
            let fan_in = layout.tensors[t].shape[0];
            let start = match decl.init {
                ParamInit::Constant(c) => Start::Constant(c),
                ParamInit::Normal(std) => Start::Normal(std),
                ParamInit::He => Start::Normal(Init::He.std_for(fan_in)),
                ParamInit::Xavier => Start::Normal(Init::Xavier.std_for(fan_in)),
            };
            (t, start)
        })
    }

    /// The harness's shape for `copies` copies of `rows` rows over `count` invocations, reading
    /// one input shared by every copy when `input_shared`.
    fn shape(
        &self,
        layout: &ParamLayout,
        (rows, copies, count): (usize, usize, usize),
        input_shared: bool,
    ) -> CustomShape {
        let mut offsets = [0u32; contract::MAX_TENSORS];
        for (slot, &t) in offsets.iter_mut().zip(&self.params) {
            *slot = layout.tensors[t].offset as u32;
        }
        CustomShape {
            rows: rows as u32,
            in_size: self.in_size as u32,
            out_size: self.out_size as u32,
            copies: copies as u32,
            count: count as u32,
            row_width: grid(count).1,
            input_shared: u32::from(input_shared),
            input_base: layout.total as u32,
            offsets,
        }
    }
}

/// How a declared tensor's elements are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Start {
    Constant(f64),
    /// N(0, std²)
    Normal(f64),
}

/// custom_layer.wgsl's WgradShape.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct CustomShape {
    pub rows: u32,
    pub in_size: u32,
    pub out_size: u32,
    pub copies: u32,
    pub count: u32,
    pub row_width: u32,
    pub input_shared: u32,
    /// Perturbation indices from here on (the arena's size) move an element of the input.
    pub input_base: u32,
    /// Per declared tensor, its offset in the arena.
    pub offsets: [u32; contract::MAX_TENSORS],
}

/// custom_layer.wgsl's one binding table.
pub struct CustomBindings<'a> {
    pub theta: &'a GpuBuffer,
    /// The forward's input (in backward too).
    pub x: &'a GpuBuffer,
    /// The forward's output (written in forward, read in backward).
    pub y: &'a GpuBuffer,
    /// Backward: ∂L/∂y, ∂L/∂x and the gradient arena.
    pub dy: Option<&'a GpuBuffer>,
    pub dx: Option<&'a GpuBuffer>,
    pub grads: Option<&'a GpuBuffer>,
    /// Perturbed forward: (flat index, sign) per copy, and \[h].
    pub pert: Option<&'a GpuBuffer>,
    pub h: Option<&'a GpuBuffer>,
}

impl KernelBindings for CustomBindings<'_> {
    type Params = CustomShape;
    const ACCESS: &'static [Binding] = &[
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::Read,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::Read,
        Binding::Read,
    ];
    fn buffers<'a>(&'a self, unused: &'a Placeholders) -> Vec<&'a wgpu::Buffer> {
        vec![
            &self.theta.buffer,
            &self.x.buffer,
            &self.y.buffer,
            unused.real(self.dy),
            unused.real_rw(self.dx),
            unused.real_rw(self.grads),
            unused.word(self.pert),
            unused.real(self.h),
        ]
    }
}

impl LayerOps for CustomLayer {
    fn output_size(&self) -> usize {
        self.out_size
    }

    fn largest_buffer(&self) -> usize {
        self.in_size.max(self.out_size)
    }

    fn tensors(&self) -> Vec<usize> {
        self.params.clone()
    }

    // y [P, N, OUT] = forward(n, j) per copy
    fn forward(&self, io: &Forward) -> Vec<Dispatch> {
        let count = io.count(self.out_size);
        let shape = self.shape(io.layout, (io.rows, io.copies, count), io.input_shared);
        let bindings = CustomBindings {
            theta: io.theta,
            x: io.input,
            y: io.output,
            dy: None,
            dx: None,
            grads: None,
            pert: io.pert(),
            h: io.h(),
        };
        let entry = match io.perturbation {
            Some(_) => &self.contract.forward_perturbed,
            None => &self.contract.forward,
        };
        let kernels = io.gpu.kernels;
        vec![kernels.dispatch(io.gpu.ctx, entry, &shape, &bindings, grid(count).0)]
    }

    // dNAME [numel] = backward_NAME(k); dx [N, IN] = backward(n, i)
    fn backward(&self, io: &Backward) -> Vec<Dispatch> {
        let bindings = CustomBindings {
            theta: io.theta,
            x: io.input,
            y: io.output,
            dy: Some(io.dy),
            dx: io.dx,
            grads: Some(io.grads),
            pert: None,
            h: None,
        };
        let dispatch = |entry: &Entry, count: usize| {
            let shape = self.shape(io.layout, (io.rows, 1, count), false);
            (io.gpu.kernels).dispatch(io.gpu.ctx, entry, &shape, &bindings, grid(count).0)
        };
        let mut out: Vec<Dispatch> = (self.params.iter().zip(&self.contract.backward_params))
            .map(|(&t, entry)| dispatch(entry, io.layout.tensors[t].numel))
            .collect();
        if io.dx.is_some() {
            out.push(dispatch(
                &self.contract.backward_input,
                io.rows * self.in_size,
            ));
        }
        out
    }

    fn reads_shared_input(&self) -> bool {
        true
    }

    fn checked_input(&self) -> Option<usize> {
        Some(self.in_size)
    }
}
