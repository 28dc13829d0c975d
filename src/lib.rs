//! wgrad: train MNIST-sized neural nets on any GPU through wgpu and WGSL compute shaders, and
//! check every analytic gradient against numerical gradients evaluated in parallel on the GPU.
//!
//! ```no_run
//! use wgrad::{data, gpu::GpuContext, nn::{Activation, Init, NetSpec}, optim::Optimizer, train};
//! # fn main() -> wgrad::Result<()> {
//! let ctx = GpuContext::new(&Default::default())?;
//! let mnist = data::bundled()?;
//! let spec = NetSpec::mlp(784, &[100, 100], 10, Activation::Relu);
//! let config = train::TrainConfig {
//!     spec,
//!     init: Init::He,
//!     optimizer: Optimizer::from_name("momentum", Some(0.1))?,
//!     ..Default::default()
//! };
//! let report = train::train(&ctx, &mnist, &config, None)?;
//! println!("test accuracy {:.4}", report.test_accuracy);
//! # Ok(()) }
//! ```

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod gpu;
pub mod gradcheck;
pub mod nn;
pub mod numgrad;
pub mod optim;
pub mod reference;
pub mod train;

pub use error::{Error, Result};
