//! A net that follows the book (`Conventions::Book`, what `wgrad.book` builds) against plain f64
//! arithmetic written here: the book's loss −log(y + 1e-7) with log-softmax's gradient, its
//! BatchNorm (eps 1e-6, the biased batch variance in the running variance), and its dropout
//! (kept units unscaled in training, every unit scaled by 1 − p in evaluation). Each test also
//! shows that PyTorch's definition gives another figure, so that it sees the difference.

mod common;

use common::*;
use wgrad::gpu::Precision;
use wgrad::nn::layers::parse_layers;
use wgrad::nn::{Conventions, Kernels, Mode, Model, NamedTensor, NetSpec};
use wgrad::pass::{self, PassOutput};

const F64: Precision = Precision::F64;

fn spec(layers: &str, input: usize, conventions: Conventions) -> NetSpec {
    let mut spec = NetSpec::sequential([1, 1, input], parse_layers(layers).unwrap()).unwrap();
    spec.conventions = conventions;
    spec
}

/// One pass of `prob`'s net with `params` and BatchNorm's running statistics `state`.
fn run_with(
    prob: &Problem,
    (params, state): (&[f64], &[NamedTensor]),
    mode: Mode,
    backward: bool,
) -> (PassOutput, Model) {
    let ctx = ctx();
    let kernels = Kernels::with_loss(ctx, F64, prob.spec.conventions.cross_entropy()).unwrap();
    let mut model = Model::new(ctx, &prob.spec, params, F64).unwrap();
    model.write_state(ctx, state);
    model.dropout_seed = 7;
    let out = pass::run(ctx, &kernels, &model, &prob.x, &prob.labels, mode, backward).unwrap();
    (out, model)
}

fn run(prob: &Problem, params: &[f64], mode: Mode, backward: bool) -> (PassOutput, Model) {
    run_with(prob, (params, &[]), mode, backward)
}

/// x [N, D] · W [D, U] + b.
fn affine(x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    let (units, d) = (b.len(), w.len() / b.len());
    let n = x.len() / d;
    let mut y = Vec::with_capacity(n * units);
    for row in x.chunks(d) {
        y.extend((0..units).map(|u| b[u] + (0..d).map(|i| row[i] * w[i * units + u]).sum::<f64>()));
    }
    y
}

#[test]
fn the_books_loss_keeps_1e7_inside_the_log_and_log_softmaxs_gradient() {
    if !f64_runs() {
        return;
    }
    // Large weights: some samples' y_t is far below 1e-7, where the two losses part most.
    let prob = Problem::random(&spec("affine7,relu,affine5", 6, Conventions::Book), 9, 11);
    let scaled: Vec<f64> = prob.params.iter().map(|p| 6.0 * p).collect();
    let (book, _) = run(&prob, &scaled, Mode::Train, true);
    let torch_prob = Problem {
        spec: spec("affine7,relu,affine5", 6, Conventions::PyTorch),
        ..prob.clone()
    };
    let (torch, _) = run(&torch_prob, &scaled, Mode::Train, true);
    let (mut want_book, mut want_torch) = (0.0, 0.0);
    for (z, &t) in book.logits.chunks(5).zip(&prob.labels) {
        let top = z.iter().cloned().fold(f64::MIN, f64::max);
        let sum: f64 = z.iter().map(|v| (v - top).exp()).sum();
        let y = (z[t as usize] - top).exp() / sum;
        want_book -= (y + 1e-7).ln();
        want_torch += top + sum.ln() - z[t as usize];
    }
    let n = prob.labels.len() as f64;
    check("book loss", rel_err(&[book.loss], &[want_book / n]), 1e-12);
    check(
        "log-softmax loss",
        rel_err(&[torch.loss], &[want_torch / n]),
        1e-12,
    );
    assert!(
        (book.loss - torch.loss).abs() > 1e-3,
        "{} vs {}",
        book.loss,
        torch.loss
    );
    // The book's backward pass drops the 1e-7, as log-softmax's gradient.
    assert_eq!(bits(&book.grads.unwrap()), bits(&torch.grads.unwrap()));
}

#[test]
fn the_books_batchnorm_uses_eps_1e6_and_the_biased_variance() {
    if !f64_runs() {
        return;
    }
    let prob = Problem::random(&spec("affine4,bn,relu,affine3", 5, Conventions::Book), 6, 3);
    // The book's running statistics start at zeros (PyTorch's variance at ones).
    let zeros = |name: &str| (name.to_string(), vec![4], vec![0.0; 4]);
    let start = [zeros("running_mean1"), zeros("running_var1")];
    let (_, model) = run_with(&prob, (&prob.params, &start), Mode::Train, false);
    let state = model.read_state(ctx()).unwrap();
    let z = affine(
        &prob.x,
        prob.tensor(&prob.params, "W1"),
        prob.tensor(&prob.params, "b1"),
    );
    let n = prob.labels.len() as f64;
    let mean: Vec<f64> = (0..4)
        .map(|u| z.iter().skip(u).step_by(4).sum::<f64>() / n)
        .collect();
    let var: Vec<f64> = (0..4)
        .map(|u| {
            z.iter()
                .skip(u)
                .step_by(4)
                .map(|v| (v - mean[u]).powi(2))
                .sum::<f64>()
                / n
        })
        .collect();
    // From the zeros the book starts at, one update: 0.1 of the batch's mean and biased variance.
    let running = |name: &str| &state.iter().find(|(n, _, _)| n == name).unwrap().2;
    let tenth = |v: &[f64]| v.iter().map(|x| 0.1 * x).collect::<Vec<_>>();
    check(
        "running mean",
        rel_err(running("running_mean1"), &tenth(&mean)),
        1e-12,
    );
    check(
        "running var",
        rel_err(running("running_var1"), &tenth(&var)),
        1e-12,
    );

    // Evaluation with those statistics: γ·(z − mean)/√(var + 1e-6) + β.
    let (eval, _) = run_with(&prob, (&prob.params, &state), Mode::Eval, false);
    let (gamma, beta) = (
        prob.tensor(&prob.params, "gamma1"),
        prob.tensor(&prob.params, "beta1"),
    );
    let normed = |eps: f64| -> Vec<f64> {
        let h: Vec<f64> = (z.iter().enumerate())
            .map(|(i, v)| {
                let u = i % 4;
                let y = gamma[u] * (v - 0.1 * mean[u]) / (0.1 * var[u] + eps).sqrt() + beta[u];
                y.max(0.0)
            })
            .collect();
        affine(
            &h,
            prob.tensor(&prob.params, "W2"),
            prob.tensor(&prob.params, "b2"),
        )
    };
    check(
        "evaluation logits",
        rel_err(&eval.logits, &normed(1e-6)),
        1e-12,
    );
    assert!(
        rel_err(&normed(1e-5), &normed(1e-6)) > 1e-7,
        "PyTorch's eps must show"
    );
}

#[test]
fn the_books_dropout_scales_by_one_minus_p_in_evaluation_not_in_training() {
    if !f64_runs() {
        return;
    }
    // Book dropout is inverted dropout times (1 − p): the same logits as PyTorch's net whose
    // next weights are scaled by 1 − p, in training (same mask) and in evaluation.
    let layers = "affine6,relu,dropout0.3,affine4";
    let book = Problem::random(&spec(layers, 5, Conventions::Book), 8, 5);
    let torch = Problem {
        spec: spec(layers, 5, Conventions::PyTorch),
        ..book.clone()
    };
    let w2 = book.spec.layout().get("W2").unwrap().clone();
    let mut scaled = book.params.clone();
    for w in &mut scaled[w2.offset..w2.offset + w2.numel] {
        *w *= 0.7;
    }
    for mode in [Mode::Train, Mode::Eval] {
        let (b, _) = run(&book, &book.params, mode, false);
        let (t, _) = run(&torch, &scaled, mode, false);
        check(
            &format!("{mode:?} logits"),
            rel_err(&b.logits, &t.logits),
            1e-12,
        );
        let (unscaled, _) = run(&torch, &book.params, mode, false);
        assert!(
            rel_err(&b.logits, &unscaled.logits) > 1e-3,
            "{mode:?}: PyTorch's must differ"
        );
    }
    // Training drops units: its logits are not evaluation's.
    let (train, _) = run(&book, &book.params, Mode::Train, false);
    let (eval, _) = run(&book, &book.params, Mode::Eval, false);
    assert!(rel_err(&train.logits, &eval.logits) > 1e-3);
}
