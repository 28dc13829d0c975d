//! Convolution, pooling, BatchNorm and dropout nets end to end: gradient checks in f64 (both
//! strategies), training that learns, deterministic inference, and clear errors for bad specs.

mod common;
use wgrad::data::{self, Mnist};
use wgrad::gpu::{GpuContext, Precision};
use wgrad::gradcheck::{self, GradcheckConfig};
use wgrad::nn::layers::parse_layers;
use wgrad::nn::{init_params, Activation, Init, NetSpec};
use wgrad::numgrad::{default_h, Strategy};
use wgrad::optim::Optimizer;
use wgrad::train::{self, TrainConfig};

/// The shared device when it runs f64, which these checks need (see `common::f64_runs`); `None`
/// when the f64 cases are allowed to skip.
fn f64_ctx() -> Option<&'static GpuContext> {
    common::f64_runs().then(common::ctx)
}

fn cropped(size: usize) -> Mnist {
    let m = data::bundled().unwrap();
    Mnist {
        train: m.train.center_crop(size).unwrap(),
        test: m.test.center_crop(size).unwrap(),
    }
}

fn config(strategy: Strategy) -> GradcheckConfig {
    GradcheckConfig {
        precision: Precision::F64,
        h: default_h(Precision::F64),
        strategy,
        tensors: Vec::new(),
        directions: 2,
        seed: 3,
        chunk: None,
        analytic_fault: None,
    }
}

/// Parameters a few SGD steps into training, so biases leave ReLU's kink at exactly 0.
fn trained(ctx: &GpuContext, spec: &NetSpec, data: &Mnist, steps: usize) -> Vec<f64> {
    let cfg = TrainConfig {
        spec: spec.clone(),
        init: Init::He,
        optimizer: Optimizer::from_name("momentum", Some(0.05)).unwrap(),
        epochs: 1000,
        max_steps: Some(steps),
        batch_size: 20,
        ..Default::default()
    };
    train::train(ctx, data, &cfg, None).unwrap().run.params
}

fn check_both_strategies(ctx: &GpuContext, spec: &NetSpec, params: &[f64], data: &Mnist, n: usize) {
    let (x, t) = gradcheck::first_batch(&data.train, n).unwrap();
    let inc = gradcheck::check(ctx, spec, params, &x, &t, &config(Strategy::Incremental)).unwrap();
    let full = gradcheck::check(ctx, spec, params, &x, &t, &config(Strategy::Full)).unwrap();
    for r in [&inc, &full] {
        assert!(
            r.passed,
            "{}: {:?} {:?}",
            r.strategy, r.tensors, r.directions
        );
        for t in &r.tensors {
            assert!(
                t.numel > t.kink_crossings,
                "{}: every element on a kink checks nothing",
                t.name
            );
        }
    }
    let diff = inc
        .numeric
        .iter()
        .zip(&full.numeric)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-9, "strategies differ by {diff}");
}

#[test]
fn conv_pool_nets_pass_gradcheck_in_f64() {
    let Some(ctx) = f64_ctx() else { return };
    let data = cropped(10);
    for layers in [
        "conv10x3,relu,maxpool2,affine10,relu,affine10",
        "conv4x3s2p1,sigmoid,avgpool2,affine10",
        "conv3x5p2,relu,maxpool3s2,conv2x2,relu,affine7,sigmoid,affine10",
    ] {
        let spec = NetSpec::sequential([1, 10, 10], parse_layers(layers).unwrap()).unwrap();
        let params = trained(ctx, &spec, &data, 30);
        check_both_strategies(ctx, &spec, &params, &data, 3);
    }
}

#[test]
fn batchnorm_and_dropout_nets_pass_gradcheck_in_f64() {
    let Some(ctx) = f64_ctx() else { return };
    let data = cropped(8);
    let mut mlp = NetSpec::mlp(64, &[12, 9], 10, Activation::Relu)
        .with_batchnorm()
        .with_dropout(0.3);
    mlp.image = [1, 8, 8];
    let conv = |layers: &str| NetSpec::sequential([1, 8, 8], parse_layers(layers).unwrap());
    // The convolutions' filters and BatchNorm's γ and β move one channel each, which the
    // incremental strategy carries alone through the channel-local layers up to the affine one.
    for spec in [
        mlp,
        conv("conv4x3,bn,relu,maxpool2,affine10,bn,sigmoid,dropout0.2,affine10").unwrap(),
        conv("conv5x3p1,bn,relu,dropout0.25,avgpool3s2,affine10").unwrap(),
    ] {
        let params = trained(ctx, &spec, &data, 30);
        check_both_strategies(ctx, &spec, &params, &data, 5);
    }
}

/// LayerNorm after an affine layer and after a convolution (over C·H·W), with tanh: the
/// acceptance nets of the per-layer design, trained a little so the check is not at init. After
/// a convolution, a γ or β change moves one channel, which the incremental strategy carries
/// alone to the affine layer.
#[test]
fn layernorm_and_tanh_nets_pass_gradcheck_in_f64() {
    let Some(ctx) = f64_ctx() else { return };
    let data = cropped(10);
    for layers in [
        "affine12,ln,tanh,affine10",
        "affine9,ln,relu,affine10",
        "conv4x3,ln,relu,maxpool2,affine10",
        "conv5x3p1,ln,sigmoid,dropout0.2,avgpool3s2,affine10",
    ] {
        let spec = NetSpec::sequential([1, 10, 10], parse_layers(layers).unwrap()).unwrap();
        let params = trained(ctx, &spec, &data, 30);
        check_both_strategies(ctx, &spec, &params, &data, 3);
    }
}

#[test]
fn simple_conv_gradcheck_on_mnist_batch_3_passes() {
    // The book's SimpleConvNet on full 28×28 MNIST (433,890 parameters): the dense head goes
    // through the incremental MLP kernel, the convolution recomputes from its layer up.
    let Some(ctx) = f64_ctx() else { return };
    let mnist = data::bundled().unwrap();
    let spec = NetSpec::sequential(
        [1, 28, 28],
        parse_layers(wgrad::nn::layers::SIMPLE_CONV).unwrap(),
    )
    .unwrap();
    let params = init_params(&spec, Init::Std(0.01), 0);
    let (x, t) = gradcheck::first_batch(&mnist.train, 3).unwrap();
    let mut cfg = config(Strategy::Incremental);
    cfg.directions = 0;
    let r = gradcheck::check(ctx, &spec, &params, &x, &t, &cfg).unwrap();
    assert!(r.passed, "{:?}", r.tensors);
    assert_eq!(r.perturbed_losses, 2 * 433_890);
    // At initialisation the convolution's biases are 0, so every filter's ReLU sits exactly on
    // its kink wherever a 5×5 patch is all background: all 30 b1 elements cross it, and so do
    // the W1 taps whose only non-zero inputs are such patches. The check passes only because
    // these are excluded; at h = 1e-5 nothing else comes near a kink.
    let kinks = |name: &str| {
        r.tensors
            .iter()
            .find(|tc| tc.name == name)
            .unwrap_or_else(|| panic!("{name} checked"))
            .kink_crossings
    };
    assert_eq!(kinks("b1"), 30, "{:?}", r.tensors);
    assert_eq!(kinks("W1"), 141, "{:?}", r.tensors);
    for name in ["W2", "b2", "W3", "b3"] {
        assert_eq!(kinks(name), 0, "{:?}", r.tensors);
    }
}

#[test]
fn a_short_convnet_run_learns_and_repeats_exactly() {
    let ctx = common::ctx();
    let mnist = data::bundled().unwrap();
    let small = Mnist {
        train: mnist.train.take(2000),
        test: mnist.test.take(500),
    };
    let spec = NetSpec::sequential(
        [1, 28, 28],
        parse_layers("conv6x5s2,relu,maxpool2,affine10").unwrap(),
    )
    .unwrap();
    let cfg = TrainConfig {
        spec,
        init: Init::He,
        optimizer: Optimizer::from_name("adam", None).unwrap(),
        epochs: 3,
        batch_size: 20,
        ..Default::default()
    };
    let a = train::train(ctx, &small, &cfg, None).unwrap();
    assert!(a.test_accuracy > 0.8, "test accuracy {}", a.test_accuracy);
    let b = train::train(ctx, &small, &cfg, None).unwrap();
    assert_eq!(
        a.run.params, b.run.params,
        "same seed, same adapter: same parameters"
    );
}

#[test]
fn batchnorm_and_dropout_nets_train_and_infer_deterministically() {
    let ctx = common::ctx();
    let mnist = data::bundled().unwrap();
    let small = Mnist {
        train: mnist.train.take(2000),
        test: mnist.test.take(500),
    };
    let spec = NetSpec::mlp(784, &[64, 32], 10, Activation::Relu)
        .with_batchnorm()
        .with_dropout(0.2);
    let cfg = TrainConfig {
        spec: spec.clone(),
        init: Init::He,
        optimizer: Optimizer::from_name("adam", None).unwrap(),
        epochs: 2,
        batch_size: 50,
        ..Default::default()
    };
    let a = train::train(ctx, &small, &cfg, None).unwrap();
    assert!(a.test_accuracy > 0.8, "test accuracy {}", a.test_accuracy);
    let b = train::train(ctx, &small, &cfg, None).unwrap();
    assert_eq!(a.run.params, b.run.params);
    assert_eq!(a.test_accuracy, b.test_accuracy);
    // Evaluation is inference mode: the same numbers every time (no dropout, fixed statistics).
    let again = (0..2)
        .map(|_| {
            train::evaluate(ctx, &spec, &a.run.params, &small.test, Precision::F32)
                .unwrap()
                .loss
        })
        .collect::<Vec<_>>();
    assert_eq!(again[0], again[1]);
    // A different seed draws different dropout masks, so training takes another path.
    let other = train::train(ctx, &small, &TrainConfig { seed: 7, ..cfg }, None).unwrap();
    assert_ne!(a.run.params, other.run.params);
}

#[test]
fn bad_specs_get_clear_errors() {
    let err = |layers: &str, image: [usize; 3]| -> String {
        match parse_layers(layers) {
            Err(e) => e.to_string(),
            Ok(l) => NetSpec::sequential(image, l)
                .map(|_| String::new())
                .unwrap_or_else(|e| e.to_string()),
        }
    };
    assert!(err("conv8x3,relu,lstm,affine10", [1, 28, 28]).contains("unknown layer"));
    assert!(err("conv8x30,affine10", [1, 28, 28]).contains("larger than its 28×28 input"));
    assert!(err(
        "maxpool2,maxpool2,maxpool2,maxpool2,maxpool2,affine10",
        [1, 28, 28]
    )
    .contains("window is larger"));
    assert!(err("affine100,dropout1.0,affine10", [1, 28, 28]).contains("[0, 1)"));
    assert!(err("affine100,dropout-0.1,affine10", [1, 28, 28]).contains("[0, 1)"));
    assert!(err("conv8x3,relu", [1, 28, 28]).contains("end with an affine layer"));
    let mlp = NetSpec::mlp(784, &[10], 10, Activation::Relu).with_dropout(1.0);
    assert!(mlp
        .validate()
        .unwrap_err()
        .to_string()
        .contains("--dropout"));
}

#[test]
fn conv_weight_gradient_is_right_past_65535_products_per_weight() {
    // 26·26 outputs per sample and 200 samples: each weight's gradient sums 135,200 products,
    // more than one lavapipe invocation may loop over, so the batch is split across dispatches.
    let Some(ctx) = f64_ctx() else { return };
    let mnist = data::bundled().unwrap();
    let spec = NetSpec::sequential(
        [1, 28, 28],
        parse_layers("conv2x3,sigmoid,affine10").unwrap(),
    )
    .unwrap();
    let params = init_params(&spec, Init::Xavier, 5);
    let (x, t) = gradcheck::first_batch(&mnist.train, 200).unwrap();
    let mut cfg = config(Strategy::Incremental);
    cfg.tensors = vec!["W1".into(), "b1".into()];
    cfg.directions = 0;
    let r = gradcheck::check(ctx, &spec, &params, &x, &t, &cfg).unwrap();
    assert!(r.passed, "{:?}", r.tensors);
}

#[test]
fn parameter_free_first_layers_are_shared_by_every_copy() {
    // A pooling layer first: its output is the same for every perturbed copy, so both
    // strategies start at the convolution after it.
    let Some(ctx) = f64_ctx() else { return };
    let data = cropped(12);
    let spec = NetSpec::sequential(
        [1, 12, 12],
        parse_layers("avgpool2,conv3x3,relu,affine10").unwrap(),
    )
    .unwrap();
    let params = trained(ctx, &spec, &data, 20);
    check_both_strategies(ctx, &spec, &params, &data, 4);
    // BatchNorm first has no layer to start from: a clear error, not a wrong answer.
    let spec = NetSpec::sequential(
        [1, 12, 12],
        parse_layers("bn,conv3x3,relu,affine10").unwrap(),
    )
    .unwrap();
    let params = init_params(&spec, Init::He, 1);
    let (x, t) = gradcheck::first_batch(&data.train, 2).unwrap();
    let e = gradcheck::check(ctx, &spec, &params, &x, &t, &config(Strategy::Incremental))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer 1 (bn)") && e.contains("affine or convolution"),
        "{e}"
    );
}

#[test]
fn the_unfolded_training_forward_matches_the_reference_convolution() {
    // Training and evaluation run convolutions as im2col + matmul; check that path against the
    // f64 reference at strides, paddings and channel counts that do not fit the tiles.
    use wgrad::gpu::kernel;
    use wgrad::nn::{Copies, Kernels, Model, Recorder, Workspace};
    let Some(ctx) = f64_ctx() else { return };
    for (layers, image, n) in [
        ("conv5x3s2p1,affine10", [3, 9, 7], 3),
        ("conv30x5,affine10", [1, 28, 28], 2),
        ("conv7x1,affine10", [2, 5, 5], 1),
    ] {
        let spec = NetSpec::sequential(image, parse_layers(layers).unwrap()).unwrap();
        let params = init_params(&spec, Init::He, 2);
        let x: Vec<f64> = (0..n * spec.input)
            .map(|i| ((i * 37 % 101) as f64 / 50.0) - 1.0)
            .collect();
        let kernels = Kernels::new(ctx, Precision::F64).unwrap();
        let model = Model::new(ctx, &spec, &params, Precision::F64).unwrap();
        let ws = Workspace::new(ctx, &model, n, 1, false);
        ws.upload(ctx, &x, &vec![0; n], Precision::F64);
        let rec = Recorder {
            ctx,
            kernels: &kernels,
            model: &model,
        };
        kernel::run(ctx, &rec.forward(&ws, &Copies::Single)).unwrap();
        let got = ws.out[0].read_real(ctx, Precision::F64).unwrap();
        let wgrad::nn::Layer::Conv(conv) = &model.layers[0] else {
            unreachable!()
        };
        let (c, h, w, f, k) = (conv.c, conv.h, conv.w, conv.f, conv.k);
        let (stride, pad) = (conv.stride, conv.pad);
        let (wt, b) = (&model.layout.tensors[0], &model.layout.tensors[1]);
        let want = wgrad::reference::conv::conv2d_forward(
            &x,
            &params[wt.offset..wt.offset + wt.numel],
            &params[b.offset..b.offset + b.numel],
            n,
            c,
            h,
            w,
            f,
            k,
            k,
            stride,
            pad,
        );
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-12, "{layers}: {err}");
    }
}
