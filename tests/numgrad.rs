//! Batched numerical gradients against backprop, and the properties that make them trustworthy:
//! parameters untouched, results independent of chunking and order, strategies in agreement, and
//! a check that fails when the backward pass is wrong.

mod common;

use wgrad::data;
use wgrad::gpu::{GpuContext, Precision};
use wgrad::gradcheck::{self, GradcheckConfig};
use wgrad::nn::layers::parse_layers;
use wgrad::nn::{init_params, Activation, Init, Kernels, Model, NetSpec};
use wgrad::numgrad::{default_h, Perturbation, PerturbedLoss, PerturbedLossEngine, Strategy};
use wgrad::reference::net::{DropoutMasks, RefNet};
use wgrad::reference::RefMlp;

/// The shared device when it runs f64, which these checks need (see `common::f64_runs`); `None`
/// when the f64 cases are allowed to skip.
fn f64_ctx() -> Option<&'static GpuContext> {
    common::f64_runs().then(common::ctx)
}

fn batch(n: usize) -> (Vec<f64>, Vec<u32>) {
    let mnist = data::bundled().unwrap();
    gradcheck::first_batch(&mnist.train, n).unwrap()
}

fn config(precision: Precision, strategy: Strategy) -> GradcheckConfig {
    GradcheckConfig {
        precision,
        h: default_h(precision),
        strategy,
        tensors: Vec::new(),
        directions: 0,
        seed: 1,
        chunk: None,
        analytic_fault: None,
    }
}

fn spec(hidden: &[usize], activation: Activation, weight_decay: f64) -> NetSpec {
    let mut s = NetSpec::mlp(784, hidden, 10, activation);
    s.weight_decay = weight_decay;
    s
}

#[test]
fn sigmoid_nets_pass_in_f64_at_several_sizes() {
    let Some(ctx) = f64_ctx() else { return };
    for (hidden, n, wd) in [
        (vec![7], 1, 0.0),
        (vec![33], 3, 0.1),
        (vec![16, 9], 5, 0.0),
        (vec![5, 6, 7], 2, 0.01),
    ] {
        let s = spec(&hidden, Activation::Sigmoid, wd);
        let params = init_params(&s, Init::Xavier, 3);
        let (x, t) = batch(n);
        let mut cfg = config(Precision::F64, Strategy::Incremental);
        cfg.directions = 2;
        let r = gradcheck::check(ctx, &s, &params, &x, &t, &cfg).unwrap();
        for tc in &r.tensors {
            assert!(tc.passed, "{hidden:?} {}: {tc:?}", tc.name);
            assert!(
                tc.norm_rel_err < 1e-6,
                "{hidden:?} {}: {}",
                tc.name,
                tc.norm_rel_err
            );
            assert_eq!(tc.kink_crossings, 0, "sigmoid has no kinks");
        }
        assert!(
            r.passed && r.directions.iter().all(|d| d.rel_err < 1e-6),
            "{:?}",
            r.directions
        );
        // The numerical gradient also matches the f64 CPU reference's own central differences.
        let cpu = RefMlp::new(s.clone()).numerical_gradient(&params, &x, &t, 1e-5);
        let err = r
            .numeric
            .iter()
            .zip(&cpu)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            err < 1e-8,
            "{hidden:?}: GPU vs CPU numerical gradient differ by {err}"
        );
    }
}

#[test]
fn tanh_nets_pass_in_f64_through_both_routes() {
    let Some(ctx) = f64_ctx() else { return };
    for (hidden, n, wd) in [(vec![7], 1, 0.0), (vec![16, 9], 5, 0.01)] {
        let s = spec(&hidden, Activation::Tanh, wd);
        let params = init_params(&s, Init::Xavier, 5);
        let (x, t) = batch(n);
        let cpu = RefMlp::new(s.clone()).numerical_gradient(&params, &x, &t, 1e-5);
        // Incremental takes the MLP kernel (tanh from activations.wgsl), Full the layers.
        for strategy in [Strategy::Incremental, Strategy::Full] {
            let cfg = config(Precision::F64, strategy);
            let r = gradcheck::check(ctx, &s, &params, &x, &t, &cfg).unwrap();
            for tc in &r.tensors {
                assert!(
                    tc.passed && tc.norm_rel_err < 1e-6,
                    "{hidden:?} {strategy}: {tc:?}"
                );
                assert_eq!(tc.kink_crossings, 0, "tanh has no kinks");
            }
            let err = (r.numeric.iter().zip(&cpu))
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                err < 1e-8,
                "{hidden:?} {strategy}: GPU vs CPU numerical gradient {err}"
            );
        }
    }
}

#[test]
fn relu_twolayernet_passes_with_kinks_excluded() {
    let Some(ctx) = f64_ctx() else { return };
    let s = spec(&[50], Activation::Relu, 0.0);
    let params = init_params(&s, Init::Std(0.01), 0);
    let (x, t) = batch(30);
    // A large step makes the central difference straddle ReLU's kink for some units: those
    // pairs measure a secant across the kink, not the derivative, and must not decide the verdict.
    let mut cfg = config(Precision::F64, Strategy::Incremental);
    cfg.h = 1e-3;
    let r = gradcheck::check(ctx, &s, &params, &x, &t, &cfg).unwrap();
    let kinks: usize = r.tensors.iter().map(|t| t.kink_crossings).sum();
    assert!(kinks > 0, "h = 1e-3 should cross kinks: {:?}", r.tensors);
    assert!(
        r.passed,
        "with the kinks excluded the check passes: {:?}",
        r.tensors
    );
    // The same figures with nothing excluded fail: the verdict rests on the exclusion.
    let layout = s.layout();
    let failed_with_kinks: Vec<&str> = layout
        .tensors
        .iter()
        .filter(|t| {
            let range = t.offset..t.offset + t.numel;
            let none = vec![false; t.numel];
            !gradcheck::tensor_check(
                &t.name,
                &t.shape,
                &r.analytic[range.clone()],
                &r.numeric[range],
                None,
                &none,
                &r.tolerance,
            )
            .passed
        })
        .map(|t| t.name.as_str())
        .collect();
    assert!(
        !failed_with_kinks.is_empty(),
        "the kink crossings should fail the check when counted: {:?}",
        r.tensors
    );
    for name in failed_with_kinks {
        let tc = r.tensors.iter().find(|tc| tc.name == name).unwrap();
        assert!(
            tc.kink_crossings > 0,
            "{name} fails only through its kinks: {tc:?}"
        );
    }
    // At the default step the same net crosses no kink and passes tightly.
    let r = gradcheck::check(
        ctx,
        &s,
        &params,
        &x,
        &t,
        &config(Precision::F64, Strategy::Incremental),
    )
    .unwrap();
    assert!(r.passed, "{:?}", r.tensors);
    for tc in &r.tensors {
        assert_eq!(tc.kink_crossings, 0, "{tc:?}");
        assert!(tc.norm_rel_err < 1e-7, "{}: {}", tc.name, tc.norm_rel_err);
    }
}

#[test]
fn kinks_flag_exactly_the_pairs_whose_relu_state_differs() {
    // On a kink, the two sides of the difference see different ReLU patterns; elsewhere they
    // agree with the unperturbed pass. Check the flags against the CPU reference.
    let Some(ctx) = f64_ctx() else { return };
    let s = spec(&[20], Activation::Relu, 0.0);
    let params = init_params(&s, Init::Std(0.01), 5);
    let (x, t) = batch(4);
    let h = 2e-3;
    let kernels = Kernels::new(ctx, Precision::F64).unwrap();
    let model = Model::new(ctx, &s, &params, Precision::F64).unwrap();
    let engine = PerturbedLossEngine::new(
        ctx,
        &kernels,
        &model,
        &x,
        &t,
        Strategy::Incremental,
        h,
        None,
    )
    .unwrap();
    let indices: Vec<usize> = (0..s.layout().total).collect();
    let g = engine.gradient(&indices).unwrap();
    let reference = RefMlp::new(s.clone());
    let pattern = |p: &[f64]| -> Vec<bool> {
        reference.forward(p, &x, 4).pre[0]
            .iter()
            .map(|&a| a > 0.0)
            .collect()
    };
    let base = pattern(&params);
    let mut flagged = 0;
    for &i in &indices {
        let mut plus = params.clone();
        plus[i] += h;
        let mut minus = params.clone();
        minus[i] -= h;
        let crosses = pattern(&plus) != base || pattern(&minus) != base;
        assert_eq!(g.kinks[i], crosses, "parameter {i}");
        flagged += usize::from(crosses);
    }
    assert!(flagged > 0, "this step should straddle some kinks");
}

#[test]
fn parameters_are_bit_identical_after_a_numerical_gradient() {
    let Some(ctx) = f64_ctx() else { return };
    let s = spec(&[12], Activation::Relu, 0.05);
    let params = init_params(&s, Init::He, 9);
    let (x, t) = batch(3);
    for precision in [Precision::F64, Precision::F32] {
        let kernels = Kernels::new(ctx, precision).unwrap();
        let model = Model::new(ctx, &s, &params, precision).unwrap();
        let before = model.read_params(ctx).unwrap();
        for strategy in [Strategy::Incremental, Strategy::Full] {
            let engine =
                PerturbedLossEngine::new(ctx, &kernels, &model, &x, &t, strategy, 1e-3, Some(37))
                    .unwrap();
            engine
                .gradient(&(0..s.layout().total).collect::<Vec<_>>())
                .unwrap();
        }
        let after = model.read_params(ctx).unwrap();
        assert!(
            before
                .iter()
                .zip(&after)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{precision}"
        );
    }
}

#[test]
fn results_do_not_depend_on_chunk_size_or_order() {
    let Some(ctx) = f64_ctx() else { return };
    let s = spec(&[10, 8], Activation::Relu, 0.0);
    let params = init_params(&s, Init::He, 4);
    let (x, t) = batch(5);
    let kernels = Kernels::new(ctx, Precision::F64).unwrap();
    let model = Model::new(ctx, &s, &params, Precision::F64).unwrap();
    let numel = s.layout().total;
    let perts: Vec<Perturbation> = (0..numel)
        .flat_map(|index| {
            [
                Perturbation {
                    index,
                    minus: false,
                },
                Perturbation { index, minus: true },
            ]
        })
        .collect();
    for strategy in [Strategy::Incremental, Strategy::Full] {
        let run = |chunk: Option<usize>, order: &[Perturbation]| {
            let engine =
                PerturbedLossEngine::new(ctx, &kernels, &model, &x, &t, strategy, 1e-5, chunk)
                    .unwrap();
            engine.losses(order).unwrap()
        };
        let reference = run(None, &perts);
        for chunk in [1, 7, 64, 1000] {
            let got = run(Some(chunk), &perts);
            assert!(
                reference
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.loss.to_bits() == b.loss.to_bits()
                        && a.kink_flips == b.kink_flips),
                "{strategy} chunk {chunk}"
            );
        }
        let mut reversed = perts.clone();
        reversed.reverse();
        let got = run(Some(13), &reversed);
        for (a, b) in reference.iter().zip(got.iter().rev()) {
            assert_eq!(
                a.loss.to_bits(),
                b.loss.to_bits(),
                "{strategy} reversed order"
            );
        }
    }
}

/// Both strategies on `n` signed, deterministic samples: both pass, their numerical gradients
/// agree to 1e-9 (rounding of the loss divided by 2h), and they count the same kink crossings.
fn assert_strategies_agree(ctx: &GpuContext, s: &NetSpec, params: &[f64], n: usize, what: &str) {
    let x: Vec<f64> = (0..n * s.input)
        .map(|i| ((i * 37 % 23) as f64 - 11.0) / 7.0)
        .collect();
    let t: Vec<u32> = (0..n as u32).map(|i| (i * 3) % 10).collect();
    let run = |strategy| {
        let cfg = config(Precision::F64, strategy);
        gradcheck::check(ctx, s, params, &x, &t, &cfg).unwrap()
    };
    let (full, inc) = (run(Strategy::Full), run(Strategy::Incremental));
    assert!(full.passed && inc.passed, "{what}: {:?}", inc.tensors);
    let diff = (full.numeric.iter().zip(&inc.numeric))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-9, "{what}: strategies differ by {diff}");
    let kinks = |r: &gradcheck::GradcheckReport| {
        r.tensors
            .iter()
            .map(|t| t.kink_crossings)
            .collect::<Vec<_>>()
    };
    assert_eq!(kinks(&full), kinks(&inc), "{what}");
}

/// Dropout inside the incremental kernel's MLP (its fixed mask applied to each hidden unit):
/// the same numerical gradient as complete forward passes, at one sample and at several.
#[test]
fn dropout_mlps_agree_between_incremental_and_full() {
    let Some(ctx) = f64_ctx() else { return };
    for (hidden, activation, n) in [
        (vec![12, 9], Activation::Relu, 6),
        (vec![11], Activation::Sigmoid, 1),
        (vec![7, 8], Activation::Tanh, 3),
    ] {
        let mut s = NetSpec::mlp(30, &hidden, 10, activation).with_dropout(0.3);
        s.weight_decay = 0.01;
        let params = init_params(&s, Init::He, 4);
        assert_strategies_agree(ctx, &s, &params, n, &format!("{hidden:?}"));
    }
}

/// BatchNorm and LayerNorm inside the incremental kernel's MLP (shaders/perturbed_norm_mlp.wgsl):
/// the same numerical gradient and kink counts as complete forward passes, for a perturbation
/// in every kind of tensor (W, b, γ, β), with dropout, weight decay, a convolution head below the
/// tail, BatchNorm over a batch of one, and a batch whose base activations, and a net whose
/// logits' weight, do not fit the kernel's uniform arrays.
#[test]
fn normalised_mlps_agree_between_incremental_and_full() {
    let Some(ctx) = f64_ctx() else { return };
    let cases: [(&str, [usize; 3], usize); 8] = [
        ("affine12,bn,relu,affine9,bn,relu,affine10", [1, 1, 30], 5),
        // 40 rows: the base activations (80 KB) pass the 64 KiB uniform array, so the kernel
        // reads them from storage.
        (
            "affine40,bn,relu,affine30,bn,relu,dropout0.2,affine10",
            [1, 1, 30],
            40,
        ),
        // 1,000 classes: the logits' weight and bias (10,000 reals) pass the uniform array, so
        // the rows carried up to them read them from storage.
        ("affine8,ln,relu,affine9,relu,affine1000", [1, 1, 30], 2),
        (
            "affine11,ln,relu,dropout0.3,affine8,ln,relu,affine10",
            [1, 1, 30],
            3,
        ),
        (
            "affine11,ln,tanh,affine8,ln,tanh,dropout0.3,affine10",
            [1, 1, 30],
            3,
        ),
        (
            "affine7,bn,sigmoid,affine6,ln,sigmoid,dropout0.2,affine10",
            [1, 1, 30],
            4,
        ),
        ("affine9,bn,relu,affine10", [1, 1, 30], 1),
        (
            "conv3x3,relu,affine8,bn,relu,dropout0.25,affine10",
            [1, 6, 6],
            6,
        ),
    ];
    for (layers, image, n) in cases {
        let mut s = NetSpec::sequential(image, parse_layers(layers).unwrap()).unwrap();
        s.weight_decay = 0.01;
        let mut params = init_params(&s, Init::He, 6);
        // γ and β away from their initial 1 and 0, so a mix-up between them shows.
        for t in s.layout().tensors.iter().filter(|t| !t.is_weight()) {
            for (k, v) in params[t.offset..t.offset + t.numel].iter_mut().enumerate() {
                *v += 0.1 * ((k % 5) as f64 - 2.0);
            }
        }
        assert_strategies_agree(ctx, &s, &params, n, &format!("{layers} n={n}"));
    }
}

/// Each perturbed loss of the norm kernel on its own, L(θ ± h·eᵢ) against the f64 reference net
/// at that θ (a wrong row that is the same at +h and −h cancels out of a central difference, so
/// the gradient checks above cannot see it). Some inputs are 0 in some samples and not in others,
/// so LayerNorm's rows of untouched samples are kept while the others are recomputed: skipped
/// where the samples stay independent above, copied from the base pass where a BatchNorm above
/// reads every row.
#[test]
fn every_perturbed_loss_of_a_normalised_mlp_matches_the_reference() {
    let Some(ctx) = f64_ctx() else { return };
    for layers in [
        "affine6,ln,relu,affine5,ln,relu,affine4",
        "affine6,ln,relu,affine5,bn,relu,affine4",
        "affine6,ln,relu,dropout0.25,affine5,ln,relu,affine4",
        "affine6,ln,relu,affine5,relu,affine7,ln,relu,affine4",
        "affine6,ln,tanh,affine5,ln,tanh,affine4",
        "affine7,bn,sigmoid,dropout0.3,affine5,bn,sigmoid,affine4",
        "affine6,bn,relu,affine5,bn,relu,dropout0.25,affine4",
    ] {
        let mut s = NetSpec::sequential([1, 1, 9], parse_layers(layers).unwrap()).unwrap();
        s.weight_decay = 0.05;
        let n = 4;
        let mut prob = common::Problem::random(&s, n, 21);
        for (row, col) in [(0, 2), (1, 2), (3, 5), (0, 7), (2, 7), (3, 7)] {
            prob.x[row * s.input + col] = 0.0;
        }
        // A step of 0.3 moves many ReLU units across the kink, whose exact corrections the
        // LayerNorm route must make.
        let every_parameter = 0..s.layout().total;
        assert_losses_match_reference(ctx, layers, &prob, every_parameter, &[1e-3, 0.3]);
    }
}

/// The norm kernel's fused top (a block under a BatchNorm block under the logits, the batch's
/// logits in registers) against complete forward passes, evaluation by evaluation: the loss and
/// the number of ReLU states that differ from the base pass. The top serves only nets with enough
/// work to repay its pipeline, so these take MNIST's 784 inputs and 50 units under it, and check
/// one parameter in 23 of every tensor. A step of 0.3 crosses many kinks. The nets put a
/// BatchNorm block or a plain one under the top, and the first has dropout in the top and fills
/// its registers exactly (8 rows of 8 logits).
#[test]
fn batchnorm_tops_match_the_full_strategy_loss_by_loss() {
    let Some(ctx) = f64_ctx() else { return };
    for (layers, n) in [
        ("affine50,bn,relu,affine48,bn,relu,dropout0.25,affine8", 8),
        ("affine60,relu,affine40,bn,relu,affine7", 3),
    ] {
        let mut s = NetSpec::sequential([1, 28, 28], parse_layers(layers).unwrap()).unwrap();
        s.weight_decay = 0.05;
        let prob = common::Problem::random(&s, n, 5);
        let model = Model::new(ctx, &s, &prob.params, Precision::F64).unwrap();
        let kernels = Kernels::new(ctx, Precision::F64).unwrap();
        let perturbations: Vec<Perturbation> = (s.layout().tensors.iter())
            .flat_map(|t| (t.offset..t.offset + t.numel).step_by(23))
            .flat_map(|index| [false, true].map(|minus| Perturbation { index, minus }))
            .collect();
        let losses = |strategy| {
            let engine = PerturbedLossEngine::new(
                ctx,
                &kernels,
                &model,
                &prob.x,
                &prob.labels,
                strategy,
                0.3,
                None,
            )
            .unwrap();
            engine.losses(&perturbations).unwrap()
        };
        let (full, inc) = (losses(Strategy::Full), losses(Strategy::Incremental));
        assert_same_losses(layers, &perturbations, &full, &inc);
        let crossed = full.iter().filter(|f| f.kink_flips > 0).count();
        assert!(crossed > 0, "{layers}: h = 0.3 should cross kinks");
    }
}

#[test]
fn first_layer_weights_whose_input_is_zero_in_every_sample_keep_the_base_loss() {
    let Some(ctx) = f64_ctx() else { return };
    // MNIST's border pixels are 0 in every image of a small batch: a change to a first-layer
    // weight they feed moves nothing, and the incremental strategy takes the unperturbed loss
    // (plus the L2 term's change) without a pass. The full strategy evaluates every one.
    let (x, labels) = batch(3);
    let idle_inputs = (0..784)
        .filter(|&i| (0..3).all(|n| x[n * 784 + i] == 0.0))
        .count();
    assert!(idle_inputs > 300 && idle_inputs < 784, "{idle_inputs}");
    for layers in [
        "affine7,relu,affine5,bn,relu,affine10",
        "affine9,ln,tanh,affine10",
        "affine6,sigmoid,affine10",
    ] {
        let mut s = NetSpec::sequential([1, 28, 28], parse_layers(layers).unwrap()).unwrap();
        s.weight_decay = 0.05;
        let params = init_params(&s, Init::He, 3);
        let model = Model::new(ctx, &s, &params, Precision::F64).unwrap();
        let kernels = Kernels::new(ctx, Precision::F64).unwrap();
        let layout = s.layout();
        let (w1, b1) = (&layout.tensors[0], &layout.tensors[1]);
        let indices: Vec<usize> = (w1.offset..b1.offset + b1.numel).collect();
        let perturbations: Vec<Perturbation> = (indices.iter())
            .flat_map(|&index| [false, true].map(|minus| Perturbation { index, minus }))
            .collect();
        let engine = |strategy| {
            PerturbedLossEngine::new(ctx, &kernels, &model, &x, &labels, strategy, 0.3, None)
                .unwrap()
        };
        let (full, inc) = (engine(Strategy::Full), engine(Strategy::Incremental));
        let outs = w1.shape[1];
        assert_eq!(
            inc.idle_losses(&indices),
            2 * idle_inputs * outs,
            "{layers}"
        );
        assert_eq!(full.idle_losses(&indices), 0, "{layers}");
        let (full, inc) = (
            full.losses(&perturbations).unwrap(),
            inc.losses(&perturbations).unwrap(),
        );
        assert_same_losses(layers, &perturbations, &full, &inc);
    }
}

/// The full strategy's and the incremental strategy's losses of `perturbations` agree to 1e-12
/// relative, and so do their kink counts.
fn assert_same_losses(
    what: &str,
    perturbations: &[Perturbation],
    full: &[PerturbedLoss],
    inc: &[PerturbedLoss],
) {
    for ((p, f), i) in perturbations.iter().zip(full).zip(inc) {
        assert!(
            (f.loss - i.loss).abs() <= 1e-12 * f.loss.abs(),
            "{what} {p:?}: {} vs {}",
            i.loss,
            f.loss
        );
        assert_eq!(f.kink_flips, i.kink_flips, "{what} {p:?}");
    }
}

/// Each incremental perturbed loss L(θ ± h·eᵢ), for i in `indices` and each `h` in `steps`,
/// against the f64 reference net at that θ (dropout masks as a check draws them), to 1e-12
/// relative.
fn assert_losses_match_reference(
    ctx: &GpuContext,
    layers: &str,
    prob: &common::Problem,
    indices: impl Iterator<Item = usize>,
    steps: &[f64],
) {
    let s = &prob.spec;
    let net = RefNet::new(s, DropoutMasks::gradient_check(0)).unwrap();
    let model = Model::new(ctx, s, &prob.params, Precision::F64).unwrap();
    let kernels = Kernels::new(ctx, Precision::F64).unwrap();
    let perturbations: Vec<Perturbation> = indices
        .flat_map(|index| [false, true].map(|minus| Perturbation { index, minus }))
        .collect();
    for &h in steps {
        let engine = PerturbedLossEngine::new(
            ctx,
            &kernels,
            &model,
            &prob.x,
            &prob.labels,
            Strategy::Incremental,
            h,
            None,
        )
        .unwrap();
        let got = engine.losses(&perturbations).unwrap();
        for (p, g) in perturbations.iter().zip(&got) {
            let mut theta = prob.params.clone();
            theta[p.index] += if p.minus { -h } else { h };
            let want = net.loss(&theta, &prob.x, &prob.labels);
            assert!(
                (g.loss - want).abs() <= 1e-12 * want.abs(),
                "{layers} h {h}: {p:?}: {} vs {want}",
                g.loss
            );
        }
    }
}

/// Every perturbed loss of the routes below a net's MLP tail against the f64 reference at θ ± h,
/// so a wrong channel, a stale one or a lost base term shows in the loss itself:
/// - convnets whose filters and normalisations take one-channel routes (each copy computes the
///   channel its change moves, through BatchNorm, LayerNorm, activations, dropout and pooling,
///   and the affine layer above adds that channel's change). Two input channels, odd filter
///   counts and overlapping windows keep every index in play;
/// - MLPs whose first block the tail kernels do not serve (its activation differs from the
///   others'), whose route starts at the affine layer with its unperturbed output plus the one
///   column a change moves.
///
/// A step of 0.3 moves max-pooling windows and ReLUs across their kinks.
#[test]
fn every_perturbed_loss_below_the_mlp_tail_matches_the_reference() {
    let Some(ctx) = f64_ctx() else { return };
    for layers in [
        "conv5x3p1,bn,relu,dropout0.25,maxpool3s2,affine4",
        "conv3x2,ln,sigmoid,avgpool2,affine7,relu,affine4",
        "conv4x3s2p1,relu,bn,maxpool2,affine4",
        "affine6,tanh,affine5,relu,affine4",
        "affine6,ln,sigmoid,dropout0.3,affine5,relu,affine4",
    ] {
        let mut s = NetSpec::sequential([2, 7, 7], parse_layers(layers).unwrap()).unwrap();
        s.weight_decay = 0.05;
        let n = 3;
        let prob = common::Problem::random(&s, n, 33);
        // The first four tensors: the first layer's and those of the normalisation above it
        // (W1, b1, gamma1, beta1), or the first two blocks' (W1, b1, W2, b2).
        let layout = s.layout();
        let below_affine = (layout.tensors[..4].iter()).flat_map(|t| t.offset..t.offset + t.numel);
        assert_losses_match_reference(ctx, layers, &prob, below_affine, &[1e-3, 0.3]);
    }
}

#[test]
fn full_and_incremental_agree_to_rounding() {
    let Some(ctx) = f64_ctx() else { return };
    for (hidden, activation) in [
        (vec![16], Activation::Relu),
        (vec![9, 7], Activation::Sigmoid),
        (vec![8, 6, 5], Activation::Relu),
    ] {
        let s = spec(&hidden, activation, 0.02);
        let params = init_params(&s, Init::He, 8);
        let (x, t) = batch(4);
        let full = gradcheck::check(
            ctx,
            &s,
            &params,
            &x,
            &t,
            &config(Precision::F64, Strategy::Full),
        )
        .unwrap();
        let inc = gradcheck::check(
            ctx,
            &s,
            &params,
            &x,
            &t,
            &config(Precision::F64, Strategy::Incremental),
        )
        .unwrap();
        assert_eq!(full.passed, inc.passed);
        let diff = full
            .numeric
            .iter()
            .zip(&inc.numeric)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        // Two evaluations of the same loss differ by rounding (~1e-16 of the loss); divided by 2h.
        assert!(diff < 1e-9, "{hidden:?}: strategies differ by {diff}");
        let kinks = |r: &gradcheck::GradcheckReport| {
            r.tensors
                .iter()
                .map(|t| t.kink_crossings)
                .collect::<Vec<_>>()
        };
        assert_eq!(kinks(&full), kinks(&inc), "{hidden:?}");
    }
}

#[test]
fn a_wrong_backward_pass_fails_the_check() {
    let Some(ctx) = f64_ctx() else { return };
    let s = spec(&[10], Activation::Sigmoid, 0.0);
    let params = init_params(&s, Init::Xavier, 2);
    let (x, t) = batch(3);
    let good = gradcheck::check(
        ctx,
        &s,
        &params,
        &x,
        &t,
        &config(Precision::F64, Strategy::Incremental),
    )
    .unwrap();
    assert!(good.passed);
    for (tensor, factor) in [("W1", 1.001), ("b2", 0.5), ("W2", -1.0)] {
        let mut cfg = config(Precision::F64, Strategy::Incremental);
        cfg.analytic_fault = Some((tensor.to_string(), factor));
        cfg.directions = 1;
        let r = gradcheck::check(ctx, &s, &params, &x, &t, &cfg).unwrap();
        assert!(
            !r.passed,
            "a gradient of {tensor} off by ×{factor} must fail"
        );
        for tc in &r.tensors {
            assert_eq!(tc.passed, tc.name != tensor, "{tensor} ×{factor}: {tc:?}");
            // The failing tensor was looked at again against the extrapolation from h and h/2,
            // and failed there too: it cancels truncation, not a wrong backward pass.
            assert_eq!(tc.failed_at_h.is_some(), tc.name == tensor, "{tc:?}");
        }
    }
}

/// The net of the f32 checks: 784-20-10 sigmoid, Xavier init (seed 6), the first 3 images.
fn f32_probe() -> (NetSpec, Vec<f64>, Vec<f64>, Vec<u32>) {
    let s = spec(&[20], Activation::Sigmoid, 0.0);
    let params = init_params(&s, Init::Xavier, 6);
    let (x, t) = batch(3);
    (s, params, x, t)
}

#[test]
fn f32_check_passes_norm_wise() {
    let ctx = common::ctx();
    let (s, params, x, t) = f32_probe();
    let mut cfg = config(Precision::F32, Strategy::Incremental);
    cfg.directions = 2;
    let r = gradcheck::check(ctx, &s, &params, &x, &t, &cfg).unwrap();
    assert!(r.passed, "{:?} {:?}", r.tensors, r.directions);
    // f32 noise here is 1e-4 to 1e-3 of each tensor's norm (README): well inside the bound.
    for tc in &r.tensors {
        assert!(tc.norm_rel_err < 1.5e-3, "{}: {}", tc.name, tc.norm_rel_err);
    }
}

#[test]
fn a_one_percent_wrong_backward_pass_fails_in_f32() {
    // The mutation audit's misses: each of these passed under the old f32 bound (norm_tol 2e-2).
    // The same net as the passing f32 check above.
    let ctx = common::ctx();
    let (s, params, x, t) = f32_probe();
    for (tensor, factor) in [("W1", 1.01), ("W1", 1.015), ("b2", 1.01), ("W2", 0.99)] {
        let mut cfg = config(Precision::F32, Strategy::Incremental);
        cfg.analytic_fault = Some((tensor.to_string(), factor));
        let r = gradcheck::check(ctx, &s, &params, &x, &t, &cfg).unwrap();
        assert!(
            !r.passed,
            "f32: a gradient of {tensor} off by ×{factor} must fail: {:?}",
            r.tensors
        );
        for tc in &r.tensors {
            assert_eq!(tc.passed, tc.name != tensor, "{tensor} ×{factor}: {tc:?}");
        }
    }
}

#[test]
fn unknown_tensor_names_are_rejected() {
    let Some(ctx) = f64_ctx() else { return };
    let s = spec(&[4], Activation::Relu, 0.0);
    let params = init_params(&s, Init::He, 6);
    let (x, t) = batch(1);
    let mut cfg = config(Precision::F64, Strategy::Incremental);
    cfg.tensors = vec!["W9".into()];
    let e = gradcheck::check(ctx, &s, &params, &x, &t, &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("W9") && e.contains("W1, b1, W2, b2"), "{e}");
}

#[test]
fn long_batches_split_across_dispatches_agree_with_full() {
    // 784-30-30-10 at batch 150 makes the incremental kernel split the batch over several
    // dispatches (lavapipe's loop limit); the result must not change.
    let Some(ctx) = f64_ctx() else { return };
    let s = spec(&[30, 30], Activation::Relu, 0.0);
    let params = init_params(&s, Init::He, 12);
    let (x, t) = batch(150);
    let kernels = Kernels::new(ctx, Precision::F64).unwrap();
    let model = Model::new(ctx, &s, &params, Precision::F64).unwrap();
    let layout = s.layout();
    let mut indices: Vec<usize> = ["b1", "b2", "W3", "b3"]
        .iter()
        .flat_map(|n| {
            let t = layout.get(n).unwrap();
            t.offset..t.offset + t.numel
        })
        .collect();
    indices.extend((0..layout.get("W1").unwrap().numel).step_by(997));
    let grad = |strategy| {
        let engine =
            PerturbedLossEngine::new(ctx, &kernels, &model, &x, &t, strategy, 1e-5, None).unwrap();
        engine.gradient(&indices).unwrap()
    };
    let (inc, full) = (grad(Strategy::Incremental), grad(Strategy::Full));
    let diff = inc
        .grad
        .iter()
        .zip(&full.grad)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-9, "split incremental and full differ by {diff}");
    assert_eq!(inc.kinks, full.kinks);
    let reference = RefMlp::new(s.clone()).loss_and_grad(&params, &x, &t).1;
    for (k, &i) in indices.iter().enumerate() {
        if !inc.kinks[k] {
            assert!(
                (inc.grad[k] - reference[i]).abs() < 1e-8,
                "parameter {i}: {} vs {}",
                inc.grad[k],
                reference[i]
            );
        }
    }
}

#[test]
fn every_perturbed_loss_and_kink_count_matches_the_reference() {
    // Each evaluation on its own: L(θ ± h·eᵢ) against the f64 reference at that θ, and the number
    // of (sample, unit) ReLU states that differ from the unperturbed pass, in every hidden layer
    // (the incremental kernel recomputes the layers above the perturbed one). Inputs are signed
    // (N(0, 1)), so both sides of a pair cross kinks, and λ > 0, so the L2 term's change counts.
    // Some MNIST-like zero inputs keep the incremental kernel's skip of untouched samples in play.
    let Some(ctx) = f64_ctx() else { return };
    let mut s = NetSpec::mlp(13, &[9, 7], 10, Activation::Relu);
    s.weight_decay = 0.1;
    let n = 5;
    let mut prob = common::Problem::random(&s, n, 11);
    for row in 0..n {
        for col in [0, 4, 12] {
            prob.x[row * s.input + col] = 0.0;
        }
    }
    prob.x[2 * s.input + 4] = 0.7; // one sample sees input 4, the others skip it
    let h = 0.05;
    let reference = RefMlp::new(s.clone());
    // Put each second-layer unit 0.01 above its kink for one sample, so that perturbing the first
    // layer flips states in the layer above it, which the incremental kernel counts separately.
    let layout = s.layout();
    let b2 = layout.get("b2").unwrap().offset;
    let pre2 = reference.forward(&prob.params, &prob.x, n).pre[1].clone();
    for c in 0..7 {
        prob.params[b2 + c] += 0.01 - pre2[(c % n) * 7 + c];
    }
    let states = |p: &[f64]| -> Vec<bool> {
        let fwd = reference.forward(p, &prob.x, n);
        fwd.pre[..fwd.pre.len() - 1]
            .iter()
            .flatten()
            .map(|&v| v > 0.0)
            .collect()
    };
    let base_states = states(&prob.params);
    let total = layout.total;
    let perturbations: Vec<Perturbation> = (0..total)
        .flat_map(|index| [false, true].map(|minus| Perturbation { index, minus }))
        .collect();
    // Per evaluation: the loss, the ReLU states that differ, and those of them in the second
    // hidden layer (the states after the first layer's n·9).
    let want: Vec<(f64, u32, u32)> = perturbations
        .iter()
        .map(|p| {
            let mut theta = prob.params.clone();
            theta[p.index] += if p.minus { -h } else { h };
            let differs: Vec<bool> = states(&theta)
                .iter()
                .zip(&base_states)
                .map(|(a, b)| a != b)
                .collect();
            let count = |d: &[bool]| d.iter().filter(|&&x| x).count() as u32;
            let loss = reference.loss(&theta, &prob.x, &prob.labels);
            (loss, count(&differs), count(&differs[n * 9..]))
        })
        .collect();
    // Flips in the second layer caused by first-layer perturbations must occur here.
    let w1 = layout.get("W1").unwrap();
    let from_below = perturbations
        .iter()
        .zip(&want)
        .filter(|(p, w)| p.minus && (w1.offset..w1.offset + w1.numel).contains(&p.index) && w.2 > 0)
        .count();
    assert!(
        from_below > 0,
        "first-layer perturbations should flip second-layer units"
    );
    let one_sided = |minus: bool| {
        perturbations
            .iter()
            .zip(&want)
            .filter(|(p, w)| p.minus == minus && w.1 > 0)
            .count()
    };
    assert!(
        one_sided(false) > 0 && one_sided(true) > 0,
        "both sides should cross kinks here"
    );
    let kernels = Kernels::new(ctx, Precision::F64).unwrap();
    let model = Model::new(ctx, &s, &prob.params, Precision::F64).unwrap();
    for strategy in [Strategy::Incremental, Strategy::Full] {
        let engine = PerturbedLossEngine::new(
            ctx,
            &kernels,
            &model,
            &prob.x,
            &prob.labels,
            strategy,
            h,
            None,
        )
        .unwrap();
        let got = engine.losses(&perturbations).unwrap();
        for ((p, g), (loss, flips, _)) in perturbations.iter().zip(&got).zip(&want) {
            assert!(
                (g.loss - loss).abs() <= 1e-12 * loss.abs(),
                "{strategy} {p:?}: loss {} against the reference's {loss}",
                g.loss
            );
            assert_eq!(
                g.kink_flips, *flips,
                "{strategy} {p:?}: ReLU states that differ"
            );
        }
        // The gradient's kink flag is set when either side crossed.
        let indices: Vec<usize> = (0..total).collect();
        let grad = engine.gradient(&indices).unwrap();
        for i in 0..total {
            let crossed = want[2 * i].1 + want[2 * i + 1].1 > 0;
            assert_eq!(grad.kinks[i], crossed, "{strategy}: parameter {i}");
        }
    }
}
