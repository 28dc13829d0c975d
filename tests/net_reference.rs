//! The GPU's loss and every parameter gradient of composed nets (convolution, pooling,
//! BatchNorm, dropout, weight decay) against the whole-net f64 CPU reference
//! `wgrad::reference::net::RefNet`, at awkward sizes.
//!
//! The gradient checks in tests/convnets.rs compare GPU numerics with GPU backprop, which a bug
//! shared by a layer's forward and backward passes gets through (a wrong dropout scale, a mask
//! from the wrong step or seed, BatchNorm's eps); here both are compared with an independent
//! derivation.

mod common;

use common::{check, ctx, kernels, normals, precisions, rel_err, Problem};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use wgrad::gpu::Precision;
use wgrad::nn::layers::parse_layers;
use wgrad::nn::{Activation, Model, NetSpec};
use wgrad::numgrad::analytic_gradient;
use wgrad::reference::net::{DropoutMasks, RefNet};

/// The dropout seed of every model here: not the default 0, so a mask that ignored the seed
/// would differ.
const DROPOUT_SEED: u32 = 0x5eed;

/// How far (absolute) every ReLU input and max-pool window must lie from its kink: far above
/// f32 rounding of O(1) activations (~1e-6), so both precisions take the reference's branches.
const KINK_MARGIN: f64 = 1e-4;

/// (loss, gradient) tolerances, relative. f64 leaves only summation-order rounding (measured
/// ≤ 1.1e-13, the largest where BatchNorm over a batch of 2 features cancels nearly all of its
/// input gradient); f32 also rounds every activation (measured ≤ 3e-7 on the loss, 7e-6 on a
/// gradient, the same BatchNorm).
fn tolerances(precision: Precision) -> (f64, f64) {
    match precision {
        Precision::F64 => (1e-12, 1e-10),
        Precision::F32 => (1e-5, 1e-4),
    }
}

fn sequential(layers: &str, image: [usize; 3], weight_decay: f64) -> NetSpec {
    let mut spec = NetSpec::sequential(image, parse_layers(layers).unwrap()).unwrap();
    spec.weight_decay = weight_decay;
    spec
}

fn mlp(input: usize, hidden: &[usize], activation: Activation) -> NetSpec {
    let mut spec = NetSpec::mlp(input, hidden, 10, activation)
        .with_batchnorm()
        .with_dropout(0.3);
    spec.weight_decay = 0.1;
    spec
}

/// Seeded parameters away from special points (weights ~ N(0, 1/fan_in), biases and β ~
/// N(0, 0.5²), γ ~ 1 + N(0, 0.3²)), inputs ~ N(0, 1) and labels spread over the classes, trying
/// seeds until the batch keeps [`KINK_MARGIN`] from every kink.
fn problem(net: &RefNet, n: usize, seed: u64) -> Problem {
    let spec = &net.spec;
    let layout = spec.layout();
    let candidate = |seed: u64| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = Vec::with_capacity(layout.total);
        for t in &layout.tensors {
            let (mean, std) = if t.is_weight() {
                (0.0, 1.0 / (t.fan_in as f64).sqrt())
            } else if t.name.starts_with("gamma") {
                (1.0, 0.3)
            } else {
                (0.0, 0.5)
            };
            params.extend(normals(&mut rng, t.numel, std).iter().map(|v| mean + v));
        }
        let x = normals(&mut rng, n * spec.input, 1.0);
        let labels = (0..n)
            .map(|i| ((i as u64 * 7 + seed) % spec.output as u64) as u32)
            .collect();
        Problem {
            spec: spec.clone(),
            params,
            x,
            labels,
        }
    };
    (seed..seed + 100)
        .map(candidate)
        .find(|p| net.kink_margin(&p.params, &p.x, n) > KINK_MARGIN)
        .expect("some seed keeps the batch away from every kink")
}

/// The GPU's analytic loss and gradient (as a gradient check computes them: batch statistics,
/// the check's dropout masks) against [`RefNet`], tensor by tensor, in every precision.
fn check_against_reference(spec: &NetSpec, n: usize, seed: u64) {
    let net = RefNet::new(spec, DropoutMasks::gradient_check(DROPOUT_SEED)).unwrap();
    let base = problem(&net, n, seed);
    for precision in precisions() {
        let prob = base.at(precision);
        let (loss_tol, grad_tol) = tolerances(precision);
        let mut model = Model::new(ctx(), spec, &prob.params, precision).unwrap();
        model.dropout_seed = DROPOUT_SEED;
        let (gpu_loss, gpu_grad) =
            analytic_gradient(ctx(), kernels(precision), &model, &prob.x, &prob.labels).unwrap();
        let (ref_loss, ref_grad) = net.loss_and_grad(&prob.params, &prob.x, &prob.labels);
        let case = format!("{precision} n={n} {:?}", spec.layers);
        check(
            &format!("{case}: loss"),
            (gpu_loss - ref_loss).abs() / ref_loss.abs(),
            loss_tol,
        );
        let grad_norm = norm(&ref_grad);
        for name in prob.tensor_names() {
            let (gpu, want) = (prob.tensor(&gpu_grad, &name), prob.tensor(&ref_grad, &name));
            // A tensor whose true gradient is 0 (a bias that BatchNorm absorbs, directly or
            // through ReLUs, pooling and unpadded convolutions that pass a constant shift on)
            // holds only rounding, which has no relative error to speak of: the GPU's must be
            // as small, relative to the whole gradient.
            if norm(want) <= 1e-12 * grad_norm {
                let what = format!("{case}: {name} (true gradient 0)");
                check(&what, norm(gpu) / grad_norm, grad_tol);
            } else {
                check(&format!("{case}: {name}"), rel_err(gpu, want), grad_tol);
            }
        }
    }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[test]
fn conv_batchnorm_maxpool_sigmoid_dropout_net_matches_reference() {
    let layers = "conv4x3,bn,relu,maxpool2,affine10,bn,sigmoid,dropout0.2,affine10";
    check_against_reference(&sequential(layers, [1, 9, 9], 0.0), 3, 1);
    check_against_reference(&sequential(layers, [3, 11, 11], 0.0), 2, 2);
}

#[test]
fn strided_padded_conv_avgpool_dropout_net_with_weight_decay_matches_reference() {
    let layers = "conv3x3s2p1,sigmoid,avgpool2,affine7,relu,dropout0.5,affine10";
    check_against_reference(&sequential(layers, [3, 11, 11], 0.05), 5, 3);
    check_against_reference(&sequential(layers, [1, 7, 7], 0.0), 7, 4);
}

#[test]
fn overlapping_maxpool_two_conv_batchnorm_net_matches_reference() {
    let layers = "conv5x3p1,relu,maxpool3s2,conv2x2,bn,relu,affine10";
    check_against_reference(&sequential(layers, [1, 9, 9], 0.0), 7, 5);
    check_against_reference(&sequential(layers, [3, 7, 7], 0.0), 2, 6);
}

/// A strided, padded convolution after another layer, so its input gradient (which a first
/// layer never computes) is checked too, at an odd and an even image size.
#[test]
fn stacked_strided_padded_convs_match_reference() {
    let layers = "conv3x3p1,relu,conv4x3s2p1,sigmoid,maxpool2,affine10";
    check_against_reference(&sequential(layers, [3, 9, 9], 0.0), 3, 9);
    check_against_reference(&sequential(layers, [2, 8, 8], 0.0), 5, 10);
}

/// LayerNorm over an affine layer's units (at one sample too, where BatchNorm would have no
/// batch) and over a convolution's C·H·W, with a convolution after it so its input gradient is
/// checked; tanh before and after.
#[test]
fn layernorm_and_tanh_nets_match_reference() {
    check_against_reference(
        &sequential("affine7,ln,tanh,affine10", [1, 1, 13], 0.0),
        1,
        11,
    );
    let mlp = "affine33,ln,tanh,dropout0.2,affine7,ln,relu,affine10";
    check_against_reference(&sequential(mlp, [1, 1, 20], 0.05), 5, 12);
    let conv = "conv3x3p1,ln,tanh,conv4x3,ln,relu,maxpool2,affine10";
    check_against_reference(&sequential(conv, [2, 9, 9], 0.0), 3, 13);
}

#[test]
fn mlp_with_batchnorm_dropout_and_weight_decay_matches_reference() {
    check_against_reference(&mlp(13, &[9, 6], Activation::Relu), 5, 7);
    check_against_reference(&mlp(11, &[7], Activation::Sigmoid), 3, 8);
}
