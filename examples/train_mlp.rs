//! Training an MLP through the library rather than the CLI.
//!
//! ```text
//! cargo run --release --example train_mlp
//! ```
//!
//! Opens a GPU, trains the book's 784-100-100-10 ReLU net on the bundled MNIST subset for two
//! epochs, evaluates it, saves a checkpoint to a temporary folder and loads it back.

use std::collections::BTreeMap;

use wgrad::gpu::{AdapterOptions, GpuContext, Precision};
use wgrad::nn::{Activation, Init, NetSpec};
use wgrad::optim::Optimizer;
use wgrad::{checkpoint, data, train};

fn main() -> wgrad::Result<()> {
    // The best adapter wgpu can see: a real GPU if there is one, else software Vulkan
    // (lavapipe). `name: Some("llvmpipe".into())` would pick one by name, as `--adapter` does.
    let ctx = GpuContext::new(&AdapterOptions::default())?;
    println!("adapter: {}", ctx.describe());

    // 8,004 training and 1,996 test images compiled into the library; `data::load_dir(path)`
    // reads the full MNIST (or Fashion-MNIST) from a folder instead.
    let mnist = data::bundled()?;
    println!(
        "data: {} train, {} test images of {}×{}",
        mnist.train.len(),
        mnist.test.len(),
        mnist.train.rows,
        mnist.train.cols
    );

    // The net: input width from the data, two hidden layers of 100, ten classes.
    let spec = NetSpec::mlp(mnist.train.image_size(), &[100, 100], 10, Activation::Relu);

    // Everything else about the run. Fields left out keep `TrainConfig::default()`'s values
    // (seed 42, evaluation batches of 1000, 40 steps recorded per GPU submit, …).
    let config = train::TrainConfig {
        spec: spec.clone(),
        // He initialisation suits ReLU.
        init: Init::He,
        // PyTorch's SGD with momentum 0.9; `from_name` knows every optimizer the CLI does, with
        // PyTorch's defaults, and `Some(lr)` overrides the learning rate.
        optimizer: Optimizer::from_name("momentum", Some(0.1))?,
        epochs: 2,
        batch_size: 100,
        precision: Precision::F32,
        ..Default::default()
    };

    // Training calls back after each epoch with that epoch's figures.
    let mut show = |e: &train::EpochReport| {
        println!(
            "epoch {}: loss {:.4}, train accuracy {:.4}, test accuracy {:.4}",
            e.epoch, e.train_loss, e.train_accuracy, e.test_accuracy
        );
    };
    let report = train::train(&ctx, &mnist, &config, Some(&mut show))?;
    println!(
        "trained {} steps in {:.2} s ({:.0} samples/s)",
        report.steps, report.seconds, report.samples_per_second
    );

    // The trained parameters come back as one flat f64 vector laid out as `spec.layout()`
    // (W1, b1, W2, b2, …); `evaluate` runs them over any data set.
    let test = train::evaluate(&ctx, &spec, &report.params, &mnist.test, config.precision)?;
    println!(
        "evaluation: test accuracy {:.4}, test loss {:.4}",
        test.accuracy, test.loss
    );

    // A safetensors checkpoint (numpy and PyTorch read it too), with free-form metadata.
    let dir = std::env::temp_dir().join(format!("wgrad-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| wgrad::Error::io("creating a temp folder", e))?;
    let path = dir.join("mlp.safetensors");
    let metadata = BTreeMap::from([
        ("format".to_string(), "wgrad-mlp".to_string()),
        ("test_accuracy".to_string(), format!("{:.6}", test.accuracy)),
    ]);
    checkpoint::save(&path, &spec.layout(), &report.params, &metadata)?;
    println!("saved {}", path.display());

    // Loading checks every tensor's name and shape against the net it is meant for.
    let loaded = checkpoint::load(&path, &spec.layout())?;
    let reloaded = train::evaluate(&ctx, &spec, &loaded.params, &mnist.test, config.precision)?;
    println!(
        "reloaded: test accuracy {:.4} (metadata says {})",
        reloaded.accuracy, loaded.metadata["test_accuracy"]
    );
    assert_eq!(reloaded.accuracy, test.accuracy);

    // The reloaded parameters can seed another run, as `wgrad train --init-from` does.
    let _resume = train::TrainConfig {
        initial_params: Some(loaded.params),
        ..config
    };

    std::fs::remove_dir_all(&dir).map_err(|e| wgrad::Error::io("removing the temp folder", e))?;
    Ok(())
}
