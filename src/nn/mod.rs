//! Nets: their description ([`NetSpec`]), the flat parameter layout, and the GPU model.

pub mod layers;
pub mod model;
pub mod spec;

pub use layers::{Layer, LayerSpec};
pub use model::{Copies, GpuDataset, Kernels, Model, Recorder, Workspace};
pub use spec::{init_params, unravel, Activation, Init, NetSpec, ParamLayout, TensorInfo};
