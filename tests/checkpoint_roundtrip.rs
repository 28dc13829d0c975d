//! A checkpoint through the library, end to end: train a tiny net on the GPU, save it, load it
//! back, and check that the reloaded net evaluates exactly as the trained one does.

use std::collections::BTreeMap;

use tempfile::TempDir;
use wgrad::gpu::{GpuContext, Precision};
use wgrad::nn::{Activation, Init, NetSpec};
use wgrad::optim::Optimizer;
use wgrad::{checkpoint, data, train};

#[test]
fn trained_net_survives_save_and_load() {
    let ctx = GpuContext::new(&Default::default()).expect("a GPU adapter (lavapipe will do)");
    let bundled = data::bundled().unwrap();
    let mnist = data::Mnist {
        train: bundled.train.take(2000),
        test: bundled.test.take(500),
    };
    let spec = NetSpec::mlp(784, &[16], 10, Activation::Relu);
    let config = train::TrainConfig {
        spec: spec.clone(),
        init: Init::He,
        optimizer: Optimizer::from_name("adam", None).unwrap(),
        epochs: 2,
        batch_size: 50,
        seed: 3,
        ..Default::default()
    };
    let report = train::train(&ctx, &mnist, &config, None).unwrap();
    assert!(report.test_accuracy > 0.5, "{report:?}");

    let dir = TempDir::new().unwrap();
    let path = dir.path().join("tiny.safetensors");
    let meta = BTreeMap::from([("note".to_string(), "round trip".to_string())]);
    checkpoint::save(&path, &spec.layout(), &report.run.params, &meta).unwrap();
    let loaded = checkpoint::load(&path, &spec.layout()).unwrap();
    assert_eq!(loaded.metadata, meta);
    // f32 training, f32 file: the parameters come back bit for bit.
    assert_eq!(loaded.params, report.run.params);

    for set in [&mnist.train, &mnist.test] {
        let before = train::evaluate(&ctx, &spec, &report.run.params, set, Precision::F32).unwrap();
        let after = train::evaluate(&ctx, &spec, &loaded.params, set, Precision::F32).unwrap();
        assert_eq!(before.accuracy, after.accuracy);
        assert_eq!(before.loss, after.loss);
    }

    // And the trainer's own last evaluation agrees with a fresh one.
    let test = train::evaluate(&ctx, &spec, &loaded.params, &mnist.test, Precision::F32).unwrap();
    assert_eq!(test.accuracy, report.test_accuracy);
    assert!(
        (test.loss - report.test_loss).abs() <= 1e-5 * report.test_loss.abs().max(1.0),
        "{} vs {}",
        test.loss,
        report.test_loss
    );
}
