//! Nets: their description ([`NetSpec`]), the layers ([`layers`], one module each), the flat
//! parameter layout, and the GPU model that records their passes.

pub mod layers;
pub mod model;
pub mod spec;
pub mod weight_decay;

pub use crate::gpu::Kernels;
pub use layers::{Activation, Layer, LayerSpec, Mode};
pub use model::{Copies, Model, Recorder, Workspace};
pub use spec::{
    init_params, standard_normal, unravel, Conventions, CrossEntropy, Init, NamedTensor, NetSpec,
    ParamLayout, ParamRole, TensorInfo,
};
