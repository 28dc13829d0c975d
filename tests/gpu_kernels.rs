//! Every net kernel against the f64 CPU reference, llm.c style, at many shapes, including sizes
//! that are not multiples of the matmul's 8×8 register block, of the 4 its vec4 reads need, or
//! of its 64×64 workgroup tile (1, 7, 33, 100, 784), in f32 and f64.
//!
//! The kernels are reached through the public API only:
//! - affine forward (matmul + bias): a net without hidden layers has logits = X·W + b (`ws.pre`);
//! - dW (strided matmul, Xᵀ·dY) and db (its column sums of dY): that net's gradients;
//! - ReLU / Sigmoid forward (the affine matmul's epilogue): `ws.act` of a net with one hidden
//!   layer;
//! - dX (matmul, dY·Wᵀ, with the activation's f′ in its epilogue): that net's first-layer gradients,
//!   which are dW1 = Xᵀ·act'(dY2·W2ᵀ) and db1 = Σ act'(dY2·W2ᵀ);
//! - softmax-CE (both builds: loss only, and loss with dlogits): `ws.row_loss`, `row_correct`,
//!   the mean via train_metrics, and dlogits through db of the last layer; the training step's
//!   fused loss kernel against those two, bit for bit;
//! - l2_penalty / l2_grad: a net with weight decay.
//!
//! Tolerances: the worst element's error relative to the tensor's largest value, 1e-5 in f32 and
//! 1e-12 in f64.

mod common;

use common::*;
use wgrad::gpu::Precision;
use wgrad::nn::{Activation, NetSpec};
use wgrad::reference;

/// (N, D, H): batch rows, inputs, outputs of one affine layer. (9, 12, 8) and (5, 16, 20) have
/// every operand 4-aligned, so the matmul reads both A and B four at a time.
const AFFINE_SHAPES: [(usize, usize, usize); 8] = [
    (1, 1, 1),
    (9, 12, 8),
    (5, 16, 20),
    (7, 33, 5),
    (33, 7, 100),
    (100, 784, 50),
    (3, 784, 10),
    (65, 100, 33),
];

/// (N, D, H, C): batch rows, inputs, hidden units, classes of a one-hidden-layer net.
const LAYER_SHAPES: [(usize, usize, usize, usize); 6] = [
    (1, 1, 1, 2),
    (7, 33, 5, 3),
    (33, 7, 100, 10),
    (100, 784, 50, 10),
    (3, 784, 10, 7),
    (65, 100, 33, 33),
];

fn tol(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => 1e-5,
        Precision::F64 => 1e-12,
    }
}

/// Random problem, as the GPU holds it at `precision`, kept off the ReLU kink.
fn problem(spec: &NetSpec, n: usize, seed: u64, precision: Precision) -> Problem {
    Problem::kink_free(spec, n, seed, None).at(precision)
}

#[test]
fn affine_forward_matches_reference_at_ragged_shapes() {
    for precision in precisions() {
        for (i, &(n, d, h)) in AFFINE_SHAPES.iter().enumerate() {
            let spec = NetSpec::mlp(d, &[], h, Activation::Relu);
            let prob = problem(&spec, n, 100 + i as u64, precision);
            let want = reference::affine_forward(
                &prob.x,
                prob.tensor(&prob.params, "W1"),
                prob.tensor(&prob.params, "b1"),
                n,
                d,
                h,
            );
            // Both softmax builds follow the same affine output; check it under each.
            for with_grads in [false, true] {
                let got = run_gpu(precision, &prob, with_grads);
                check(
                    &format!("{precision} affine X·W+b (N,D,H)=({n},{d},{h}) grads={with_grads}"),
                    scaled_err(&got.pre[0], &want),
                    tol(precision),
                );
            }
        }
    }
}

#[test]
fn affine_backward_dw_db_match_reference_at_ragged_shapes() {
    for precision in precisions() {
        for (i, &(n, d, h)) in AFFINE_SHAPES.iter().enumerate() {
            if h == 1 {
                // One class: the loss is 0 whatever the logits, so every gradient is 0
                // (single_class_net_has_zero_loss_and_gradient covers that).
                continue;
            }
            let spec = NetSpec::mlp(d, &[], h, Activation::Relu);
            let prob = problem(&spec, n, 200 + i as u64, precision);
            let mlp = prob.reference();
            let fwd = mlp.forward(&prob.params, &prob.x, n);
            let (_, dlogits, _) = reference::softmax_cross_entropy(&fwd.logits, &prob.labels, n, h);
            let (_, dw, db) = reference::affine_backward(
                &prob.x,
                prob.tensor(&prob.params, "W1"),
                &dlogits,
                n,
                d,
                h,
            );
            let got = run_gpu(precision, &prob, true).grads.unwrap();
            let shape = format!("(N,D,H)=({n},{d},{h})");
            check(
                &format!("{precision} dW = Xᵀ·dY {shape}"),
                scaled_err(prob.tensor(&got, "W1"), &dw),
                tol(precision),
            );
            check(
                &format!("{precision} db = Σ dY {shape}"),
                scaled_err(prob.tensor(&got, "b1"), &db),
                tol(precision),
            );
        }
    }
}

/// Forward values and every gradient of a one-hidden-layer net at each shape.
fn check_hidden_layer(activation: Activation) {
    for precision in precisions() {
        for (i, &(n, d, h, c)) in LAYER_SHAPES.iter().enumerate() {
            let spec = NetSpec::mlp(d, &[h], c, activation);
            let prob = problem(&spec, n, 300 + i as u64, precision);
            let mlp = prob.reference();
            let fwd = mlp.forward(&prob.params, &prob.x, n);
            let (loss, grad) = mlp.loss_and_grad(&prob.params, &prob.x, &prob.labels);
            let (_, _, per_row) = reference::softmax_cross_entropy(&fwd.logits, &prob.labels, n, c);
            let got = run_gpu(precision, &prob, true);
            let what =
                |s: &str| format!("{precision} {activation} {s} (N,D,H,C)=({n},{d},{h},{c})");
            let t = tol(precision);
            check(
                &what("pre1 = X·W1+b1"),
                scaled_err(&got.pre[0], &fwd.pre[0]),
                t,
            );
            check(
                &what("act1 forward"),
                scaled_err(&got.act[0], &fwd.act[0]),
                t,
            );
            check(
                &what("logits = act1·W2+b2"),
                scaled_err(&got.pre[1], &fwd.pre[1]),
                t,
            );
            check(&what("row loss"), scaled_err(&got.row_loss, &per_row), t);
            check(&what("step loss"), scaled_err(&[got.step_loss], &[loss]), t);
            let grads = got.grads.unwrap();
            // W2, b2: dW and db of the output layer. W1, b1: through dX = dY·W2ᵀ and the
            // activation's backward kernel.
            for name in ["W2", "b2", "W1", "b1"] {
                check(
                    &what(&format!("d{name}")),
                    scaled_err(prob.tensor(&grads, name), prob.tensor(&grad, name)),
                    t,
                );
            }
        }
    }
}

#[test]
fn relu_layer_forward_backward_match_reference_at_ragged_shapes() {
    check_hidden_layer(Activation::Relu);
}

#[test]
fn sigmoid_layer_forward_backward_match_reference_at_ragged_shapes() {
    check_hidden_layer(Activation::Sigmoid);
}

#[test]
fn tanh_layer_forward_backward_match_reference_at_ragged_shapes() {
    check_hidden_layer(Activation::Tanh);
}

/// A 1-[H]-C net fed x = 1 with W1 = `pre`, b1 = 0, so the hidden pre-activations are exactly
/// `pre`; the output layer is random.
fn unit_probe(activation: Activation, pre: &[f64], c: usize, n: usize) -> Problem {
    let h = pre.len();
    let spec = NetSpec::mlp(1, &[h], c, activation);
    let mut prob = Problem::random(&spec, n, 7);
    prob.x = vec![1.0; n];
    let layout = spec.layout();
    let w1 = layout.get("W1").unwrap();
    let b1 = layout.get("b1").unwrap();
    prob.params[w1.offset..w1.offset + h].copy_from_slice(pre);
    prob.params[b1.offset..b1.offset + h].fill(0.0);
    prob
}

#[test]
fn relu_gradient_is_blocked_at_exactly_zero() {
    // Units 0 and 3 sit exactly on the kink, unit 1 below it, units 2 and 4 above: the book's and
    // PyTorch's mask passes the gradient only where pre > 0.
    let pre = [0.0, -0.75, 0.5, -0.0, 1.25];
    for precision in precisions() {
        let prob = unit_probe(Activation::Relu, &pre, 4, 5).at(precision);
        let (_, want) = prob
            .reference()
            .loss_and_grad(&prob.params, &prob.x, &prob.labels);
        let got = run_gpu(precision, &prob, true);
        assert_eq!(
            got.act[0][..5],
            [0.0, 0.0, 0.5, 0.0, 1.25],
            "{precision} relu forward"
        );
        let grads = got.grads.unwrap();
        let (dw1, db1) = (prob.tensor(&grads, "W1"), prob.tensor(&grads, "b1"));
        for unit in [0, 1, 3] {
            assert_eq!(
                (dw1[unit], db1[unit]),
                (0.0, 0.0),
                "{precision} relu unit {unit} (pre {}) must pass no gradient",
                pre[unit]
            );
        }
        for unit in [2, 4] {
            assert_ne!(db1[unit], 0.0, "{precision} relu unit {unit} is active");
        }
        for name in ["W1", "b1", "W2", "b2"] {
            check(
                &format!("{precision} relu kink d{name}"),
                scaled_err(prob.tensor(&grads, name), prob.tensor(&want, name)),
                tol(precision),
            );
        }
    }
}

#[test]
fn sigmoid_saturates_without_overflow() {
    // e^800 overflows both precisions; the kernel must still give finite values in [0, 1] that
    // match the reference element by element (relative), and finite gradients.
    let pre = [
        -800.0, -100.0, -30.0, -20.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 20.0, 30.0, 100.0, 800.0,
    ];
    for precision in precisions() {
        let prob = unit_probe(Activation::Sigmoid, &pre, 3, 2).at(precision);
        let mlp = prob.reference();
        let want = mlp.forward(&prob.params, &prob.x, 2);
        let (_, want_grad) = mlp.loss_and_grad(&prob.params, &prob.x, &prob.labels);
        let got = run_gpu(precision, &prob, true);
        // Values below these are subnormal or flushed: only their absolute size matters.
        let floor = match precision {
            Precision::F32 => 1e-37,
            Precision::F64 => 1e-300,
        };
        for (k, (&g, &w)) in got.act[0].iter().zip(&want.act[0]).enumerate() {
            let z = pre[k % pre.len()];
            assert!(
                g.is_finite() && (0.0..=1.0).contains(&g),
                "{precision} sigmoid({z}) = {g}"
            );
            assert!(
                (g - w).abs() <= tol(precision) * w.abs() + floor,
                "{precision} sigmoid({z}) = {g:e}, reference {w:e}"
            );
        }
        let grads = got.grads.unwrap();
        assert!(grads.iter().all(|g| g.is_finite()), "{precision} gradients");
        for name in ["W1", "b1", "W2", "b2"] {
            check(
                &format!("{precision} saturated sigmoid d{name}"),
                scaled_err(prob.tensor(&grads, name), prob.tensor(&want_grad, name)),
                tol(precision),
            );
        }
    }
}

#[test]
fn softmax_ce_row_loss_mean_and_correct_match_reference() {
    // 200 rows: more than the 64 invocations of train_metrics, so its strided partial sums and
    // tree both take part.
    let (n, d, c) = (200, 20, 10);
    let spec = NetSpec::mlp(d, &[], c, Activation::Relu);
    for precision in precisions() {
        let prob = problem(&spec, n, 400, precision);
        let mlp = prob.reference();
        let logits = mlp.forward(&prob.params, &prob.x, n).logits;
        let (mean, _, per_row) = reference::softmax_cross_entropy(&logits, &prob.labels, n, c);
        let predicted = mlp.predict(&prob.params, &prob.x, n);
        let want_correct: Vec<u32> = predicted
            .iter()
            .zip(&prob.labels)
            .map(|(p, l)| u32::from(p == l))
            .collect();
        assert!(
            want_correct.contains(&0) && want_correct.contains(&1),
            "the problem should have both right and wrong rows"
        );
        for with_grads in [false, true] {
            let got = run_gpu(precision, &prob, with_grads);
            let what = |s: &str| format!("{precision} softmax-CE grads={with_grads} {s}");
            check(
                &what("row loss"),
                scaled_err(&got.row_loss, &per_row),
                tol(precision),
            );
            let host_mean = got.row_loss.iter().sum::<f64>() / n as f64;
            check(
                &what("Σ row loss / N"),
                rel_err(&[host_mean], &[mean]),
                tol(precision),
            );
            check(
                &what("stats[1] mean"),
                rel_err(&[got.step_loss], &[mean]),
                tol(precision),
            );
            assert_eq!(got.penalty, 0.0, "{}", what("no weight decay, no penalty"));
            assert_eq!(got.row_correct, want_correct, "{}", what("row correct"));
        }
    }
}

#[test]
fn softmax_ce_ties_pick_the_first_class_and_padding_rows_are_ignored() {
    // W = 0 and b = [1, 3, 3, 0]: every row's logits tie between classes 1 and 2; argmax takes
    // the first (1). Label 0xffffffff marks a padding row: loss 0, never correct.
    const INVALID: u32 = u32::MAX;
    let spec = NetSpec::mlp(3, &[], 4, Activation::Relu);
    let b = [1.0, 3.0, 3.0, 0.0];
    let mut params = vec![0.0; spec.layout().total];
    params[12..].copy_from_slice(&b);
    let labels = vec![0, 1, 2, 3, INVALID, 1, INVALID];
    let n = labels.len();
    let prob = Problem {
        spec,
        params,
        x: (0..n * 3).map(|i| i as f64 * 0.1).collect(),
        labels: labels.clone(),
    };
    let lse = b.iter().map(|v: &f64| v.exp()).sum::<f64>().ln();
    for precision in precisions() {
        let got = run_gpu(precision, &prob, false);
        for (r, &t) in labels.iter().enumerate() {
            let (want_loss, want_correct) = if t == INVALID {
                (0.0, 0)
            } else {
                (lse - b[t as usize], u32::from(t == 1))
            };
            check(
                &format!("{precision} tie row {r} loss"),
                (got.row_loss[r] - want_loss).abs() / lse,
                tol(precision),
            );
            assert_eq!(
                got.row_correct[r], want_correct,
                "{precision} row {r} (label {t}) correct"
            );
        }
    }
}

#[test]
fn softmax_ce_is_stable_for_huge_logits() {
    // Logits around +1000 (every class shifted: the loss is unchanged) with a spread of hundreds,
    // so exp of the unshifted logits would overflow and most shifted terms underflow.
    let (n, d, c) = (9, 5, 6);
    let spec = NetSpec::mlp(d, &[], c, Activation::Relu);
    for precision in precisions() {
        let mut prob = Problem::random(&spec, n, 500);
        let layout = spec.layout();
        let (w, b) = (layout.get("W1").unwrap(), layout.get("b1").unwrap());
        for v in &mut prob.params[w.offset..w.offset + w.numel] {
            *v *= 100.0;
        }
        for v in &mut prob.params[b.offset..b.offset + b.numel] {
            *v += 1000.0;
        }
        let prob = prob.at(precision);
        let mlp = prob.reference();
        let logits = mlp.forward(&prob.params, &prob.x, n).logits;
        let scale = logits.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let (mean, dlogits, per_row) =
            reference::softmax_cross_entropy(&logits, &prob.labels, n, c);
        let got = run_gpu(precision, &prob, true);
        assert!(
            got.row_loss.iter().all(|v| v.is_finite()),
            "{precision} row losses {:?}",
            got.row_loss
        );
        // The loss of a row is a difference of logits of size `scale`: judge it on that scale.
        let row_err = got
            .row_loss
            .iter()
            .zip(&per_row)
            .fold(0.0f64, |m, (g, w)| m.max((g - w).abs()))
            / scale;
        check(
            &format!("{precision} huge-logit row loss"),
            row_err,
            tol(precision),
        );
        check(
            &format!("{precision} huge-logit mean loss"),
            (got.step_loss - mean).abs() / scale,
            tol(precision),
        );
        // db = Σ_rows dlogits: the softmax probabilities themselves, which must not be NaN.
        let db: Vec<f64> = (0..c)
            .map(|j| (0..n).map(|i| dlogits[i * c + j]).sum())
            .collect();
        let grads = got.grads.unwrap();
        check(
            &format!("{precision} huge-logit db"),
            scaled_err(prob.tensor(&grads, "b1"), &db),
            tol(precision),
        );
    }
}

#[test]
fn single_class_net_has_zero_loss_and_gradient() {
    // With one class softmax is 1 and the cross-entropy 0 whatever the logits: every row loss
    // and every gradient must be exactly zero, not a rounding residue.
    let spec = NetSpec::mlp(7, &[5], 1, Activation::Sigmoid);
    for precision in precisions() {
        let prob = Problem::random(&spec, 11, 600).at(precision);
        let got = run_gpu(precision, &prob, true);
        assert!(got.row_loss.iter().all(|&v| v == 0.0), "{:?}", got.row_loss);
        assert_eq!(got.step_loss, 0.0);
        assert!(got.row_correct.iter().all(|&v| v == 1));
        assert!(got.grads.unwrap().iter().all(|&g| g == 0.0));
    }
}

/// Elementwise dispatches cover 64 elements a workgroup and fold into a 2-D grid past 65,535
/// workgroups: 4,194,240 elements.
const FOLD: usize = 65_535 * 64;

#[test]
fn activations_fold_their_grid_past_65535_workgroups() {
    // N·H = 820·5200 = 4,264,000 hidden units: the activation forward and backward kernels run on
    // a 65,535 × 2 grid. Cheap otherwise (one input, three classes).
    let (n, h, c) = (820, 5200, 3);
    assert!(n * h > FOLD);
    let precision = Precision::F32;
    for activation in [Activation::Relu, Activation::Sigmoid] {
        let spec = NetSpec::mlp(1, &[h], c, activation);
        // With one input, pre = x·w + b is one rounding from exact, so its sign (the ReLU state)
        // is the same in both precisions: no kink search needed over 4M units.
        let prob = Problem::random(&spec, n, 700).at(precision);
        let mlp = prob.reference();
        let fwd = mlp.forward(&prob.params, &prob.x, n);
        let (_, grad) = mlp.loss_and_grad(&prob.params, &prob.x, &prob.labels);
        let got = run_gpu(precision, &prob, true);
        let what = |s: &str| format!("{activation} folded grid: {s}");
        // The second grid row holds elements FOLD.. : a kernel that ignored it leaves zeros.
        check(
            &what("act tail"),
            scaled_err(&got.act[0][FOLD..], &fwd.act[0][FOLD..]),
            tol(precision),
        );
        check(
            &what("act"),
            scaled_err(&got.act[0], &fwd.act[0]),
            tol(precision),
        );
        let grads = got.grads.unwrap();
        // b1[j] sums d_pre1 over all 820 rows, the last 14 of which lie past the fold.
        for name in ["W1", "b1", "W2", "b2"] {
            check(
                &what(&format!("d{name}")),
                scaled_err(prob.tensor(&grads, name), prob.tensor(&grad, name)),
                tol(precision),
            );
        }
    }
}

#[test]
fn l2_grad_folds_its_grid_past_65535_workgroups() {
    // 800·5300 + 5300 + 5300·2 + 2 = 4,255,912 parameters: l2_grad runs on a 65,535 × 2 grid.
    let mut spec = NetSpec::mlp(800, &[5300], 2, Activation::Relu);
    spec.weight_decay = 0.01;
    assert!(spec.layout().total > FOLD);
    let precision = Precision::F32;
    let prob = problem(&spec, 1, 800, precision);
    let (_, grad) = prob
        .reference()
        .loss_and_grad(&prob.params, &prob.x, &prob.labels);
    let got = run_gpu(precision, &prob, true);
    let grads = got.grads.unwrap();
    // W2 lies wholly past FOLD: its λ·W term comes only from the second grid row.
    assert!(prob.spec.layout().get("W2").unwrap().offset > FOLD);
    for name in ["W1", "b1", "W2", "b2"] {
        check(
            &format!("folded l2_grad d{name}"),
            scaled_err(prob.tensor(&grads, name), prob.tensor(&grad, name)),
            tol(precision),
        );
    }
}

#[test]
fn l2_penalty_sums_more_than_64x65535_parameters() {
    // l2_penalty is one workgroup of 64 invocations, each summing every 64th parameter: past
    // 64·65,535 = 4,194,240 parameters each invocation loops more than 65,535 times. A 2-[H]-1
    // net keeps this cheap ((D + 2)·H + 1 parameters, (D + 1)·H of them weights; layers are
    // capped at MAX_WIDTH = 65,504 units, so D = 80 inputs carry it past the mark); all parameters 1 and
    // λ = 2 make the penalty the exact count of weights (partial sums stay integers below 2^24,
    // exact in f32), and one class makes the data loss 0. D = 2 stays far under the mark.
    //
    // Mesa's llvmpipe (lavapipe) cuts every shader invocation off after 65,535 loop iterations in
    // total, over all its loops (gallivm's loop limiter), and says nothing: the strided sum stops
    // early and the tree reduction after it runs one round only. Found by this test: with
    // H = 1,400,000 stats[3] reads 87,500 instead of 4,200,000.
    for precision in precisions() {
        let h = wgrad::gpu::limits::MAX_WIDTH;
        for d in [2, 80] {
            let mut spec = NetSpec::mlp(d, &[h], 1, Activation::Relu);
            spec.weight_decay = 2.0;
            let numel = spec.layout().total;
            let prob = Problem {
                params: vec![1.0; numel],
                x: vec![0.5; d],
                labels: vec![0],
                spec,
            };
            let got = run_gpu(precision, &prob, false);
            let weights = ((d + 1) * h) as f64;
            let what = format!("{precision} L2 penalty over {numel} parameters");
            assert_eq!(got.penalty, weights, "{what}: stats[3]");
            assert_eq!(got.step_loss, weights, "{what}: stats[1]");
        }
    }
}

#[test]
fn layers_at_the_width_limit_are_computed_and_wider_ones_refused() {
    // The matmul loops over a layer's inputs and softmax over its classes, and lavapipe silently
    // stops a shader invocation after 65,535 loop iterations: MAX_WIDTH and MAX_CLASSES keep the
    // loops under that. At the limits every input and class must still count, so the last input
    // column and the last class carry large values that a truncated loop would drop; one unit
    // wider, the net is refused with the limit named. (This test found both limits set too high.)
    let (max, classes) = (
        wgrad::gpu::limits::MAX_WIDTH,
        wgrad::gpu::limits::MAX_CLASSES,
    );
    for (input, output) in [(max, 3), (2, classes)] {
        let spec = NetSpec::mlp(input, &[], output, Activation::Relu);
        for precision in precisions() {
            let mut prob = Problem::random(&spec, 2, 900);
            for row in prob.x.chunks_mut(input) {
                row[input - 1] = 40.0;
            }
            prob.labels = vec![(output - 1) as u32, 0];
            let prob = prob.at(precision);
            let got = run_gpu(precision, &prob, true);
            let (_, want_grads) =
                prob.reference()
                    .loss_and_grad(&prob.params, &prob.x, &prob.labels);
            let want_logits = prob.reference().forward(&prob.params, &prob.x, 2).logits;
            let what = format!("{precision} affine {input} → {output}");
            check(
                &format!("{what}: logits"),
                scaled_err(&got.pre[0], &want_logits),
                tol(precision),
            );
            check(
                &format!("{what}: gradients"),
                scaled_err(got.grads.as_ref().unwrap(), &want_grads),
                tol(precision),
            );
        }
        let (wider, parts) = if input == max {
            let parts = [
                format!("{} units", max + 1),
                max.to_string(),
                "narrower".into(),
            ];
            (NetSpec::mlp(max + 1, &[], 3, Activation::Relu), parts)
        } else {
            let parts = [
                format!("{} classes", classes + 1),
                classes.to_string(),
                "fewer".into(),
            ];
            (NetSpec::mlp(2, &[], classes + 1, Activation::Relu), parts)
        };
        let err = wider.validate().unwrap_err().to_string();
        for part in parts {
            assert!(err.contains(&part), "{err}");
        }
    }
}

#[test]
fn train_step_loss_is_softmax_ce_and_train_metrics_in_one_dispatch_and_counts_the_step() {
    // 200 rows over 64 invocations and 7 classes.
    step_loss_equals_softmax_ce_and_train_metrics(200, 20, 7, 1);
}

#[test]
fn train_step_loss_past_lavapipes_loop_limit_takes_the_rows_from_softmax_ce() {
    // 4 rows a lane of 5,400 classes: 4·(3·5,400 + 1) loop iterations, past the 60,000 a lane
    // may take, so the softmax runs a row an invocation first.
    step_loss_equals_softmax_ce_and_train_metrics(200, 4, 5_400, 2);
}

/// The training step's loss dispatches (`dispatches` of them) give what softmax-CE and
/// train_metrics give, bit for bit, and count the step: step 4 into a window of 3 lands in slot 1.
fn step_loss_equals_softmax_ce_and_train_metrics(n: usize, d: usize, c: usize, dispatches: usize) {
    use wgrad::gpu::{kernel, GpuBuffer};
    use wgrad::nn::{Copies, Mode, Model, Recorder, Workspace};
    use wgrad::train::{train_step_loss, StateWord, StatsWord};
    let spec = NetSpec::mlp(d, &[9], c, Activation::Tanh);
    for precision in precisions() {
        let prob = problem(&spec, n, 401, precision);
        let ctx = ctx();
        let model = Model::new(ctx, &prob.spec, &prob.params, precision).expect("model");
        let rec = Recorder {
            ctx,
            kernels: kernels(precision),
            model: &model,
        };
        let read = |b: &GpuBuffer| b.read_real(ctx, precision).expect("readback");
        let run = |fused: bool| {
            let ws = Workspace::new(ctx, &model, n, 1, true);
            ws.upload(ctx, &prob.x, &prob.labels, precision);
            let stats = GpuBuffer::real(ctx, "stats", STATS_WORDS, precision);
            let state = GpuBuffer::zeroed(ctx, "state", STATE_WORDS, 4);
            state.write_u32(ctx, StateWord::Step as usize, &[4, 6]);
            let window = GpuBuffer::real(ctx, "step_losses", 3, precision);
            let mut d = Vec::new();
            if fused {
                d.extend(rec.forward_logits(&ws, Mode::Train, &state));
                let loss = train_step_loss(&rec.gpu(), &ws, c, (&stats, &state), &window);
                assert_eq!(loss.len(), dispatches, "dispatches of the step's loss");
                d.extend(loss);
            } else {
                d.extend(rec.forward(&ws, &Copies::Single));
                d.push(train_metrics(&rec.gpu(), &ws, &stats, &state));
            }
            kernel::run(ctx, &d).expect("GPU run");
            let dlogits = read(ws.dlogits().expect("a training workspace"));
            let words = state.read_u32(ctx).expect("readback");
            (read(&stats), dlogits, words, read(&window))
        };
        let (want_stats, want_dlogits, _, _) = run(false);
        let (stats, dlogits, words, window) = run(true);
        // The same sums in the same order: equal bit for bit.
        assert_eq!(
            stats, want_stats,
            "{precision}: the step's loss and correct count"
        );
        assert_eq!(dlogits, want_dlogits, "{precision}: dlogits");
        let last = stats[StatsWord::LastLoss as usize];
        assert_eq!(
            window,
            [0.0, last, 0.0],
            "{precision}: step 4's loss in slot 4 % 3"
        );
        assert_eq!(words[StateWord::Step as usize], 5, "{precision}: t counted");
        assert_eq!(
            words[StateWord::Batch as usize],
            7,
            "{precision}: next batch"
        );
        assert_eq!(
            words[StateWord::Diverged as usize],
            0,
            "{precision}: finite"
        );
    }
}

#[test]
fn bias_gradient_sums_every_row_of_the_largest_batch() {
    // lavapipe stops an invocation after 65,535 loop iterations: at 32,768 rows the bias
    // gradient's column sums must take a column an invocation.
    let n = wgrad::gpu::limits::MAX_ROWS;
    let (d, h) = (4, 9);
    let spec = NetSpec::mlp(d, &[], h, Activation::Relu);
    let precision = Precision::F32;
    let prob = problem(&spec, n, 777, precision);
    let fwd = prob.reference().forward(&prob.params, &prob.x, n);
    let (_, dlogits, _) = reference::softmax_cross_entropy(&fwd.logits, &prob.labels, n, h);
    let (_, dw, db) =
        reference::affine_backward(&prob.x, prob.tensor(&prob.params, "W1"), &dlogits, n, d, h);
    let got = run_gpu(precision, &prob, true).grads.unwrap();
    check(
        "dW at the largest batch",
        scaled_err(prob.tensor(&got, "W1"), &dw),
        tol(precision),
    );
    check(
        "db at the largest batch",
        scaled_err(prob.tensor(&got, "b1"), &db),
        tol(precision),
    );
}
