//! Whole nets on the GPU against the f64 CPU reference: the loss a training step reports and
//! every parameter's gradient, for ReLU and Sigmoid nets of 1–3 hidden layers, with and without
//! weight decay, on random data and on real MNIST images; determinism of the GPU pass; and a
//! short training run that must learn.
//!
//! Tolerances: relative error (norm-wise per tensor, and of the loss) ≤ 1e-4 in f32, ≤ 1e-10 in
//! f64.

mod common;

use common::*;
use wgrad::gpu::Precision;
use wgrad::nn::{Activation, Init, Model, NetSpec, Workspace};
use wgrad::optim::Optimizer;
use wgrad::reference;
use wgrad::train::{self, TrainConfig};

fn tol(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => 1e-4,
        Precision::F64 => 1e-10,
    }
}

/// The reported step loss (stats[1], penalty included), the penalty alone (stats[3]), the mean
/// of the per-row losses, and every parameter tensor's gradient, against the reference.
fn check_net(label: &str, prob: &Problem, precision: Precision) {
    let prob = prob.at(precision);
    let mlp = prob.reference();
    let (loss, grad) = mlp.loss_and_grad(&prob.params, &prob.x, &prob.labels);
    let logits = mlp.forward(&prob.params, &prob.x, prob.n()).logits;
    let (data_loss, _, _) =
        reference::softmax_cross_entropy(&logits, &prob.labels, prob.n(), prob.spec.output);
    let got = run_gpu(precision, &prob, true);
    let t = tol(precision);
    let what = |s: &str| format!("{precision} {label}: {s}");
    check(
        &what("step loss stats[1]"),
        rel_err(&[got.step_loss], &[loss]),
        t,
    );
    let want_penalty = penalty(&prob);
    if prob.spec.weight_decay == 0.0 {
        assert_eq!(got.penalty, 0.0, "{}", what("penalty without decay"));
    } else {
        check(
            &what("L2 penalty stats[3]"),
            rel_err(&[got.penalty], &[want_penalty]),
            t,
        );
    }
    let mean_row = got.row_loss.iter().sum::<f64>() / prob.n() as f64;
    check(
        &what("mean row loss"),
        rel_err(&[mean_row], &[data_loss]),
        t,
    );
    let grads = got.grads.expect("gradients");
    assert!(grads.iter().all(|g| g.is_finite()), "{}", what("finite"));
    for name in prob.tensor_names() {
        check(
            &what(&format!("d{name}")),
            rel_err(prob.tensor(&grads, &name), prob.tensor(&grad, &name)),
            t,
        );
    }
}

/// 0.5·λ·Σ‖W‖² over the weight matrices.
fn penalty(prob: &Problem) -> f64 {
    let layout = prob.spec.layout();
    let sum_sq: f64 = layout
        .tensors
        .iter()
        .filter(|t| t.is_weight())
        .flat_map(|t| &prob.params[t.offset..t.offset + t.numel])
        .map(|v| v * v)
        .sum();
    0.5 * prob.spec.weight_decay * sum_sq
}

fn check_depths(activation: Activation) {
    let (n, d, c) = (32, 40, 10);
    for precision in precisions() {
        for hidden in [&[24][..], &[24, 17], &[24, 17, 9]] {
            for weight_decay in [0.0, 0.05] {
                let mut spec = NetSpec::mlp(d, hidden, c, activation);
                spec.weight_decay = weight_decay;
                let prob = Problem::kink_free(&spec, n, 1000 + hidden.len() as u64, None);
                let label = format!("{activation} {hidden:?} λ={weight_decay}");
                check_net(&label, &prob, precision);
            }
        }
    }
}

#[test]
fn relu_nets_of_1_to_3_hidden_layers_match_reference() {
    check_depths(Activation::Relu);
}

#[test]
fn sigmoid_nets_of_1_to_3_hidden_layers_match_reference() {
    check_depths(Activation::Sigmoid);
}

#[test]
fn mnist_batch_loss_and_gradients_match_reference() {
    // 100 real images (more rows than train_metrics' 64 invocations) through the book's shapes.
    let n = 100;
    let (x, labels) = mnist_batch(n);
    for precision in precisions() {
        let mut relu = NetSpec::mlp(784, &[64, 32], 10, Activation::Relu);
        relu.weight_decay = 1e-3;
        let prob = Problem::kink_free(&relu, n, 1100, Some((&x, &labels)));
        check_net("MNIST 784-[64,32]-10 relu λ=1e-3", &prob, precision);

        let sigmoid = NetSpec::mlp(784, &[50], 10, Activation::Sigmoid);
        let prob = Problem::with_data(&sigmoid, x.clone(), labels.clone(), 1200);
        check_net("MNIST 784-[50]-10 sigmoid", &prob, precision);
    }
}

#[test]
fn gpu_pass_is_bit_identical_when_repeated() {
    // The same batch three times on one model and workspace (with a different batch in between),
    // then on a fresh model and workspace: gradients are written, not accumulated, and every
    // reduction runs in a fixed order, so all results must agree to the bit.
    let n = 100;
    let (x, labels) = mnist_batch(2 * n);
    let mut spec = NetSpec::mlp(784, &[64, 32], 10, Activation::Relu);
    spec.weight_decay = 1e-3;
    let a = Problem::with_data(&spec, x[..n * 784].to_vec(), labels[..n].to_vec(), 1300);
    let mut b = a.clone();
    b.x = x[n * 784..].to_vec();
    b.labels = labels[n..].to_vec();
    for precision in precisions() {
        let ctx = ctx();
        let model = Model::new(ctx, &spec, &a.params, precision).unwrap();
        let ws = Workspace::new(ctx, &model, n, 1, true);
        let first = run_on(precision, &a, &model, &ws, true);
        let other = run_on(precision, &b, &model, &ws, true);
        let again = run_on(precision, &a, &model, &ws, true);
        let fresh = run_gpu(precision, &a, true);
        let g = |o: &GpuOut| bits(o.grads.as_ref().unwrap());
        assert_ne!(g(&first), g(&other), "{precision}: batches A and B differ");
        for (name, run) in [("same workspace", &again), ("fresh workspace", &fresh)] {
            assert!(g(&first) == g(run), "{precision} {name}: gradients differ");
            assert!(
                bits(&first.row_loss) == bits(&run.row_loss),
                "{precision} {name}: row losses differ"
            );
            assert_eq!(
                first.step_loss.to_bits(),
                run.step_loss.to_bits(),
                "{precision} {name}: step loss"
            );
            for (l, (p, q)) in first.pre.iter().zip(&run.pre).enumerate() {
                assert!(bits(p) == bits(q), "{precision} {name}: pre{}", l + 1);
            }
        }
    }
}

#[test]
fn short_training_run_learns_and_is_deterministic() {
    // 784-[32]-10 ReLU, SGD with momentum 0.9 at lr 0.1, batch 100, 2 epochs (160 steps) on the
    // bundled 8k-image subset: far above chance (0.1), and the same seed gives the same run.
    let mnist = wgrad::data::bundled().unwrap();
    let config = TrainConfig {
        spec: NetSpec::mlp(784, &[32], 10, Activation::Relu),
        init: Init::He,
        optimizer: Optimizer::from_name("momentum", Some(0.1)).unwrap(),
        epochs: 2,
        batch_size: 100,
        seed: 7,
        precision: Precision::F32,
        ..TrainConfig::default()
    };
    let first = train::train(ctx(), &mnist, &config, None).unwrap();
    eprintln!(
        "epoch losses {:?}, test accuracy {:.4}",
        first
            .history
            .iter()
            .map(|e| e.train_loss)
            .collect::<Vec<_>>(),
        first.test_accuracy
    );
    assert_eq!(first.steps, 160);
    assert!(
        first.test_accuracy > 0.8,
        "test accuracy {} after 2 epochs",
        first.test_accuracy
    );
    assert!(
        first.history[1].train_loss < first.history[0].train_loss,
        "training loss should fall: {:?}",
        first.history
    );
    let second = train::train(ctx(), &mnist, &config, None).unwrap();
    assert_eq!(first.test_accuracy, second.test_accuracy);
    assert_eq!(first.final_loss.to_bits(), second.final_loss.to_bits());
    assert!(
        bits(&first.run.params) == bits(&second.run.params),
        "same seed, different parameters"
    );
}

/// An error the device reports outside an error scope used to be a panic inside wgpu (exit 101);
/// the context keeps it and the next wait returns it as an error that names a way out.
#[test]
fn a_device_error_is_an_error_at_the_next_wait_not_a_panic() {
    let ctx = wgrad::gpu::GpuContext::new(&Default::default()).unwrap();
    ctx.wait().unwrap();
    let small = wgrad::gpu::GpuBuffer::zeroed(&ctx, "small", 1, 4);
    let large = wgrad::gpu::GpuBuffer::zeroed(&ctx, "large", 256, 4);
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    // Past the end of `small`: a validation error.
    encoder.copy_buffer_to_buffer(&large.buffer, 0, &small.buffer, 0, 1024);
    ctx.queue.submit([encoder.finish()]);
    let error = ctx
        .wait()
        .expect_err("the copy past the end is reported")
        .to_string();
    assert!(error.contains("the GPU reported an error"), "{error}");
    assert!(error.contains("--batch-size"), "{error}");
}
