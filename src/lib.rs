//! wgrad: train MNIST-sized neural nets on any GPU through wgpu and WGSL compute shaders, and
//! check every analytic gradient against numerical gradients evaluated in parallel on the GPU.
//!
//! Training through the library rather than the CLI: the book's 784-100-100-10 ReLU net on the
//! bundled MNIST subset, then evaluation, a checkpoint and a reload (tests/checkpoint_roundtrip.rs
//! runs the same flow on a smaller net).
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use wgrad::{checkpoint, data, gpu::GpuContext, train};
//! use wgrad::nn::{Activation, Init, NetSpec};
//! use wgrad::optim::Optimizer;
//! # fn main() -> wgrad::Result<()> {
//! // The best adapter wgpu sees: a real GPU, else software Vulkan (lavapipe).
//! let ctx = GpuContext::new(&Default::default())?;
//! // 8,004 training and 1,996 test images compiled into the library; `data::load_dir(path)`
//! // reads the full MNIST from a folder instead.
//! let mnist = data::bundled()?;
//! let spec = NetSpec::mlp(784, &[100, 100], 10, Activation::Relu);
//! let config = train::TrainConfig {
//!     spec: spec.clone(),
//!     init: Init::He,
//!     // PyTorch's SGD with momentum 0.9; every optimizer the CLI knows, PyTorch's defaults.
//!     optimizer: Optimizer::from_name("momentum", Some(0.1))?,
//!     epochs: 2,
//!     ..Default::default()
//! };
//! let mut show = |e: &train::EpochReport| println!("epoch {}: loss {:.4}", e.epoch, e.train_loss);
//! let report = train::train(&ctx, &mnist, &config, Some(&mut show))?;
//!
//! // The parameters come back as one flat vector laid out as `spec.layout()` (W1, b1, …).
//! let params = &report.run.params;
//! let test = train::evaluate(&ctx, &spec, params, &mnist.test, config.precision)?;
//! let path = std::env::temp_dir().join("mlp.safetensors");
//! let metadata = BTreeMap::from([("test_accuracy".to_string(), test.accuracy.to_string())]);
//! checkpoint::save(&path, &spec.layout(), params, &metadata)?;
//! // Loading checks every tensor's name and shape against the net it is meant for; the
//! // parameters can seed another run, as `wgrad train --init-from` does.
//! let loaded = checkpoint::load(&path, &spec.layout())?;
//! let warm_start = train::TrainConfig { initial_params: Some(loaded.params), ..config.clone() };
//! # let _ = warm_start;
//!
//! // The whole run (optimizer state, progress, the data's identity) continues bit for bit, as
//! // `wgrad train --resume` does.
//! let record = train::RunRecord::new(&config, &report.run, mnist.identity(), None);
//! checkpoint::save_run(&path, &report.run, &record, &BTreeMap::new())?;
//! let (record, run) = checkpoint::load_run(&path)?;
//! let more = train::TrainConfig { epochs: 3, resume: Some(run), ..record.config };
//! train::train(&ctx, &mnist, &more, None)?;
//! # Ok(()) }
//! ```

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod evaluate;
pub mod gpu;
pub mod gradcheck;
pub mod layer_check;
pub mod nn;
pub mod npz;
pub mod numgrad;
pub mod optim;
pub mod pass;
pub mod plot;
pub mod predict;
pub mod reference;
pub mod report;
pub mod train;

pub use error::{Error, Result};
pub use layer_check::{check_layer, LayerCheckOptions, WgslLayer};
