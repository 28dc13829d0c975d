//! GPU plumbing: adapter choice ([`context`]), buffers ([`buffers`]) and compute kernels
//! ([`kernel`]). Everything is explicit and linear, as in wgpu's hello_compute.

pub mod buffers;
pub mod context;
pub mod kernel;
pub mod limits;

pub use buffers::{GpuBuffer, Precision};
pub use context::{list_adapters, AdapterOptions, AdapterSummary, GpuContext};
pub use kernel::{Binding, Dispatch, Entry, Gpu, Kernel, KernelBindings, Kernels};
