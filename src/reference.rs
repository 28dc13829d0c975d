//! The f64 CPU oracle that every GPU kernel and the GPU training step are tested against.
//!
//! Written for obviousness, not speed (llm.c style): each layer's forward and backward sit side
//! by side, loops are plain index loops that read like the maths, and nothing is fused. It runs
//! in f64 so that its own rounding is negligible next to the f32 results it judges.
//!
//! Layout conventions match [`crate::nn::spec`]: matrices are row-major, a weight matrix is
//! `[fan_in, fan_out]`, and the flat parameter vector is W1, b1, W2, b2, … .

// Index loops mirror the subscripts of the formulas they implement; iterator chains would hide
// which index is which, and that is the one thing a reader of an oracle must be able to check.
#![allow(clippy::needless_range_loop)]

pub mod conv;
pub mod net;
pub mod norm;

use crate::nn::{Activation, LayerSpec, NetSpec};
use crate::optim::Optimizer;

// ---------------------------------------------------------------------------------------------
// Kernel references
// ---------------------------------------------------------------------------------------------

/// C = A·B.
// a: [M, K], b: [K, N] -> c: [M, N]
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    assert_eq!(a.len(), m * k, "matmul: a must be [M, K] = [{m}, {k}]");
    assert_eq!(b.len(), k * n, "matmul: b must be [K, N] = [{k}, {n}]");
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0;
            for p in 0..k {
                acc += a[i * k + p] * b[p * n + j];
            }
            c[i * n + j] = acc;
        }
    }
    c
}

/// Affine layer: y = x·w + b.
// x: [N, D], w: [D, H], b: [H] -> y: [N, H]
pub fn affine_forward(x: &[f64], w: &[f64], b: &[f64], n: usize, d: usize, h: usize) -> Vec<f64> {
    assert_eq!(
        x.len(),
        n * d,
        "affine_forward: x must be [N, D] = [{n}, {d}]"
    );
    assert_eq!(
        w.len(),
        d * h,
        "affine_forward: w must be [D, H] = [{d}, {h}]"
    );
    assert_eq!(b.len(), h, "affine_forward: b must be [H] = [{h}]");
    let mut y = vec![0.0; n * h];
    for i in 0..n {
        for j in 0..h {
            let mut acc = b[j];
            for k in 0..d {
                acc += x[i * d + k] * w[k * h + j];
            }
            y[i * h + j] = acc;
        }
    }
    y
}

/// Backward of [`affine_forward`]: returns (dx, dw, db).
// x: [N, D], w: [D, H], dy: [N, H] -> dx = dy·wᵀ: [N, D], dw = xᵀ·dy: [D, H], db = Σ_N dy: [H]
pub fn affine_backward(
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    n: usize,
    d: usize,
    h: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    assert_eq!(
        x.len(),
        n * d,
        "affine_backward: x must be [N, D] = [{n}, {d}]"
    );
    assert_eq!(
        w.len(),
        d * h,
        "affine_backward: w must be [D, H] = [{d}, {h}]"
    );
    assert_eq!(
        dy.len(),
        n * h,
        "affine_backward: dy must be [N, H] = [{n}, {h}]"
    );
    let mut dx = vec![0.0; n * d];
    for i in 0..n {
        for k in 0..d {
            let mut acc = 0.0;
            for j in 0..h {
                acc += dy[i * h + j] * w[k * h + j];
            }
            dx[i * d + k] = acc;
        }
    }
    let mut dw = vec![0.0; d * h];
    for k in 0..d {
        for j in 0..h {
            let mut acc = 0.0;
            for i in 0..n {
                acc += x[i * d + k] * dy[i * h + j];
            }
            dw[k * h + j] = acc;
        }
    }
    let mut db = vec![0.0; h];
    for j in 0..h {
        let mut acc = 0.0;
        for i in 0..n {
            acc += dy[i * h + j];
        }
        db[j] = acc;
    }
    (dx, dw, db)
}

/// ReLU: max(0, x).
// x: [*] -> y: [*]
pub fn relu_forward(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| if v > 0.0 { v } else { 0.0 }).collect()
}

/// Backward of [`relu_forward`], from the pre-activation. The gradient at exactly 0 is taken as
/// 0 (the subgradient PyTorch and the book use), so `x_pre <= 0` blocks the gradient.
// x_pre: [*], dy: [*] -> dx: [*]
pub fn relu_backward(x_pre: &[f64], dy: &[f64]) -> Vec<f64> {
    assert_eq!(
        x_pre.len(),
        dy.len(),
        "relu_backward: x_pre and dy must have the same length"
    );
    x_pre
        .iter()
        .zip(dy)
        .map(|(&x, &g)| if x > 0.0 { g } else { 0.0 })
        .collect()
}

/// Sigmoid: 1 / (1 + e^−x).
// x: [*] -> y: [*]
pub fn sigmoid_forward(x: &[f64]) -> Vec<f64> {
    // Two branches so that exp never overflows: for very negative x, e^−x would be +inf.
    x.iter()
        .map(|&v| {
            if v >= 0.0 {
                1.0 / (1.0 + (-v).exp())
            } else {
                let e = v.exp();
                e / (1.0 + e)
            }
        })
        .collect()
}

/// Backward of [`sigmoid_forward`], from the *output* y: dx = dy·y·(1 − y).
// y: [*], dy: [*] -> dx: [*]
pub fn sigmoid_backward(y: &[f64], dy: &[f64]) -> Vec<f64> {
    assert_eq!(
        y.len(),
        dy.len(),
        "sigmoid_backward: y and dy must have the same length"
    );
    y.iter().zip(dy).map(|(&y, &g)| g * y * (1.0 - y)).collect()
}

/// The nonlinearity `kind`, elementwise.
// x: [*] -> y: [*]
pub fn activation_forward(kind: Activation, x: &[f64]) -> Vec<f64> {
    match kind {
        Activation::Relu => relu_forward(x),
        Activation::Sigmoid => sigmoid_forward(x),
        Activation::Tanh => x.iter().map(|v| v.tanh()).collect(),
    }
}

/// Backward of [`activation_forward`], from its input `x` (ReLU's mask) or output `y` (the
/// others' derivative).
// x, y, dy: [*] -> dx: [*]
pub fn activation_backward(kind: Activation, x: &[f64], y: &[f64], dy: &[f64]) -> Vec<f64> {
    match kind {
        Activation::Relu => relu_backward(x, dy),
        Activation::Sigmoid => sigmoid_backward(y, dy),
        // tanh′ = 1 − y²
        Activation::Tanh => y.iter().zip(dy).map(|(&y, &g)| g * (1.0 - y * y)).collect(),
    }
}

/// Softmax followed by cross-entropy against integer labels, averaged over the batch.
///
/// Returns (mean loss, dlogits, per-sample loss). Each sample's loss is the log-softmax form
/// `logsumexp(z) − z[t]`, computed after subtracting the row max so that no exp overflows. This
/// is *not* the book's `−log(y + 1e-7)`: the ε there would bias both loss and gradient, and the
/// oracle must be exact. dlogits = (softmax − onehot) / N is the exact gradient of the mean.
// logits: [N, C], labels: [N] -> (loss: scalar, dlogits: [N, C], per_sample: [N])
pub fn softmax_cross_entropy(
    logits: &[f64],
    labels: &[u32],
    n: usize,
    c: usize,
) -> (f64, Vec<f64>, Vec<f64>) {
    assert!(
        n > 0,
        "softmax_cross_entropy: an empty batch has no mean loss"
    );
    assert_eq!(
        logits.len(),
        n * c,
        "softmax_cross_entropy: logits must be [N, C] = [{n}, {c}]"
    );
    assert_eq!(
        labels.len(),
        n,
        "softmax_cross_entropy: labels must be [N] = [{n}]"
    );
    let mut dlogits = vec![0.0; n * c];
    let mut per_sample = vec![0.0; n];
    for i in 0..n {
        let row = &logits[i * c..(i + 1) * c];
        let t = labels[i] as usize;
        assert!(
            t < c,
            "softmax_cross_entropy: label {t} of sample {i} is not below C = {c}"
        );
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut sum_exp = 0.0;
        for j in 0..c {
            sum_exp += (row[j] - max).exp();
        }
        // logsumexp(z) − z[t] = (max − z[t]) + ln Σ e^(z − max), grouped so that the large
        // `max` cancels exactly before the small logarithm is added.
        per_sample[i] = (max - row[t]) + sum_exp.ln();
        for j in 0..c {
            let p = (row[j] - max).exp() / sum_exp;
            let onehot = if j == t { 1.0 } else { 0.0 };
            dlogits[i * c + j] = (p - onehot) / n as f64;
        }
    }
    let mean = per_sample.iter().sum::<f64>() / n as f64;
    (mean, dlogits, per_sample)
}

// ---------------------------------------------------------------------------------------------
// The MLP: Affine → act → … → Affine → softmax cross-entropy
// ---------------------------------------------------------------------------------------------

/// Everything the forward pass computed, kept so backward (and tests) can read it.
#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    /// Output of each affine layer, before its activation: `pre[l]` is [N, widths[l + 1]].
    /// The last entry is the logits.
    pub pre: Vec<Vec<f64>>,
    /// Activation of each hidden layer: `act[l] = act_fn(pre[l])`, one per hidden layer.
    pub act: Vec<Vec<f64>>,
    /// [N, output]: the same values as the last `pre`, named for callers that only want these.
    pub logits: Vec<f64>,
}

/// The reference MLP described by a [`NetSpec`], over the flat parameter layout.
#[derive(Clone, Debug, PartialEq)]
pub struct RefMlp {
    pub spec: NetSpec,
    /// [input, hidden…, output]
    widths: Vec<usize>,
    /// The hidden layers' nonlinearity.
    activation: Activation,
}

impl RefMlp {
    /// Panics unless `spec` is a plain MLP (as [`NetSpec::mlp`] builds): affine layers with one
    /// kind of activation between them; [`net::RefNet`] takes any layer list.
    pub fn new(spec: NetSpec) -> Self {
        let mut widths = vec![spec.input];
        let mut activation = None;
        for (i, layer) in spec.layers.iter().enumerate() {
            match (layer, Activation::of(layer)) {
                (LayerSpec::Affine { units }, _) if i % 2 == 0 => widths.push(*units),
                (_, Some(a)) if i % 2 == 1 && activation.is_none_or(|x| x == a) => {
                    activation = Some(a)
                }
                _ => panic!("RefMlp takes a plain MLP, not {:?}", spec.layers),
            }
        }
        RefMlp {
            spec,
            widths,
            activation: activation.unwrap_or(Activation::Relu),
        }
    }

    /// Affine layers.
    fn depth(&self) -> usize {
        self.widths.len() - 1
    }

    /// Layer `l`'s (W, b) slices inside the flat parameter vector.
    fn layer<'p>(&self, params: &'p [f64], l: usize) -> (&'p [f64], &'p [f64]) {
        let layout = self.spec.layout();
        assert_eq!(
            params.len(),
            layout.total,
            "params has {} values, the net's layout needs {}",
            params.len(),
            layout.total
        );
        // Looked up by name, not by position, so a change to the layout's ordering cannot
        // silently pair the wrong tensors.
        let w = layout
            .get(&format!("W{}", l + 1))
            .expect("layout has every weight matrix");
        let b = layout
            .get(&format!("b{}", l + 1))
            .expect("layout has every bias");
        (
            &params[w.offset..w.offset + w.numel],
            &params[b.offset..b.offset + b.numel],
        )
    }

    /// 0.5·λ·Σ‖W‖² over weight matrices only: biases are not decayed (as in the book).
    fn l2_penalty(&self, params: &[f64]) -> f64 {
        let lambda = self.spec.weight_decay;
        if lambda == 0.0 {
            return 0.0;
        }
        let mut sum_sq = 0.0;
        for l in 0..self.depth() {
            let (w, _) = self.layer(params, l);
            sum_sq += w.iter().map(|v| v * v).sum::<f64>();
        }
        0.5 * lambda * sum_sq
    }

    pub fn forward(&self, params: &[f64], x: &[f64], n: usize) -> Forward {
        let widths = &self.widths;
        let depth = self.depth();
        assert_eq!(
            x.len(),
            n * widths[0],
            "x must be [N, input] = [{n}, {}]",
            widths[0]
        );
        let mut pre: Vec<Vec<f64>> = Vec::with_capacity(depth);
        let mut act: Vec<Vec<f64>> = Vec::with_capacity(depth - 1);
        for l in 0..depth {
            let (d, h) = (widths[l], widths[l + 1]);
            let (w, b) = self.layer(params, l);
            let input: &[f64] = if l == 0 { x } else { &act[l - 1] };
            // input: [N, d], W: [d, h], b: [h] -> z: [N, h]
            let z = affine_forward(input, w, b, n, d, h);
            // The last affine layer feeds the loss directly: no activation after it.
            if l + 1 < depth {
                act.push(activation_forward(self.activation, &z));
            }
            pre.push(z);
        }
        let logits = pre[depth - 1].clone();
        Forward { pre, act, logits }
    }

    /// Predicted class of each sample: the argmax of its logits, the first index on ties.
    pub fn predict(&self, params: &[f64], x: &[f64], n: usize) -> Vec<u32> {
        let c = self.spec.output;
        let logits = self.forward(params, x, n).logits;
        (0..n)
            .map(|i| {
                let row = &logits[i * c..(i + 1) * c];
                let mut best = 0;
                for j in 1..c {
                    // Strict `>` keeps the first of equal maxima.
                    if row[j] > row[best] {
                        best = j;
                    }
                }
                best as u32
            })
            .collect()
    }

    /// Mean softmax cross-entropy over the batch plus 0.5·λ·Σ‖W‖². x is [N, input], N = labels.len().
    pub fn loss(&self, params: &[f64], x: &[f64], labels: &[u32]) -> f64 {
        let n = labels.len();
        let fwd = self.forward(params, x, n);
        let (data_loss, _, _) = softmax_cross_entropy(&fwd.logits, labels, n, self.spec.output);
        data_loss + self.l2_penalty(params)
    }

    /// [`Self::loss`] and its exact gradient by backprop, in the flat parameter layout.
    pub fn loss_and_grad(&self, params: &[f64], x: &[f64], labels: &[u32]) -> (f64, Vec<f64>) {
        let n = labels.len();
        let widths = &self.widths;
        let depth = self.depth();
        let lambda = self.spec.weight_decay;
        let layout = self.spec.layout();

        let fwd = self.forward(params, x, n);
        let (data_loss, dlogits, _) =
            softmax_cross_entropy(&fwd.logits, labels, n, self.spec.output);
        let loss = data_loss + self.l2_penalty(params);

        let mut grad = vec![0.0; layout.total];
        // Gradient of the loss with respect to the current layer's affine output `pre[l]`.
        let mut dz = dlogits;
        for l in (0..depth).rev() {
            let (d, h) = (widths[l], widths[l + 1]);
            let (w, _) = self.layer(params, l);
            let input: &[f64] = if l == 0 { x } else { &fwd.act[l - 1] };
            // input: [N, d], W: [d, h], dz: [N, h] -> dinput: [N, d], dW: [d, h], db: [h]
            let (dinput, dw, db) = affine_backward(input, w, &dz, n, d, h);

            let wt = layout
                .get(&format!("W{}", l + 1))
                .expect("layout has every weight matrix");
            let bt = layout
                .get(&format!("b{}", l + 1))
                .expect("layout has every bias");
            for k in 0..wt.numel {
                // d/dW of 0.5·λ·‖W‖² is λ·W.
                grad[wt.offset + k] = dw[k] + lambda * w[k];
            }
            grad[bt.offset..bt.offset + bt.numel].copy_from_slice(&db);

            if l > 0 {
                // Through the hidden activation that produced `input` = act[l − 1].
                let (x, y) = (&fwd.pre[l - 1], &fwd.act[l - 1]);
                dz = activation_backward(self.activation, x, y, &dinput);
            }
        }
        (loss, grad)
    }

    /// Central differences of [`Self::loss`], one parameter at a time.
    ///
    /// Each evaluation gets its own copy of the parameters: perturbing in place and restoring
    /// would leave θ changed by rounding (θ + h − h need not equal θ) and would hide bugs where a
    /// forward pass keeps a reference to stale values.
    pub fn numerical_gradient(
        &self,
        params: &[f64],
        x: &[f64],
        labels: &[u32],
        h: f64,
    ) -> Vec<f64> {
        assert!(
            h > 0.0 && h.is_finite(),
            "numerical_gradient: step h must be finite and > 0"
        );
        (0..params.len())
            .map(|i| {
                let mut plus = params.to_vec();
                plus[i] += h;
                let mut minus = params.to_vec();
                minus[i] -= h;
                let f_plus = self.loss(&plus, x, labels);
                let f_minus = self.loss(&minus, x, labels);
                // Divide by the step actually taken: θ ± h rounds, so it can differ from 2h.
                (f_plus - f_minus) / (plus[i] - minus[i])
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Optimizers: PyTorch 2.x torch.optim, single-tensor (non-foreach) path, maximize = False
// ---------------------------------------------------------------------------------------------

/// Per-element optimizer state, one variant per update rule.
#[derive(Clone, Debug, PartialEq)]
enum State {
    Sgd {
        /// None until the first step: PyTorch seeds the buffer with the first gradient itself
        /// (no dampening applied), not with zeros.
        momentum_buffer: Option<Vec<f64>>,
    },
    Adagrad {
        sum: Vec<f64>,
    },
    Rmsprop {
        square_avg: Vec<f64>,
        /// Only read when `centered`.
        grad_avg: Vec<f64>,
        /// Only read when momentum > 0.
        momentum_buffer: Vec<f64>,
    },
    Adam {
        exp_avg: Vec<f64>,
        exp_avg_sq: Vec<f64>,
        /// Only read with amsgrad.
        max_exp_avg_sq: Vec<f64>,
    },
}

/// Reference for the GPU optimizer kernels: the exact update rules of PyTorch's `torch.optim`.
#[derive(Clone, Debug, PartialEq)]
pub struct RefOptimizer {
    opt: Optimizer,
    numel: usize,
    /// Steps taken so far (PyTorch's `state['step']`).
    t: u64,
    state: State,
}

impl RefOptimizer {
    pub fn new(opt: &Optimizer, numel: usize) -> Self {
        let zeros = || vec![0.0; numel];
        let state = match *opt {
            Optimizer::Sgd { .. } => State::Sgd {
                momentum_buffer: None,
            },
            Optimizer::Adagrad {
                initial_accumulator,
                ..
            } => State::Adagrad {
                sum: vec![initial_accumulator; numel],
            },
            Optimizer::Rmsprop { .. } => State::Rmsprop {
                square_avg: zeros(),
                grad_avg: zeros(),
                momentum_buffer: zeros(),
            },
            Optimizer::Adam { .. } | Optimizer::Adamw { .. } => State::Adam {
                exp_avg: zeros(),
                exp_avg_sq: zeros(),
                max_exp_avg_sq: zeros(),
            },
        };
        RefOptimizer {
            opt: opt.clone(),
            numel,
            t: 0,
            state,
        }
    }

    pub fn optimizer(&self) -> &Optimizer {
        &self.opt
    }

    /// Sets the learning rate, and the momentum (SGD, RMSprop) or β1 (Adam, AdamW), of the
    /// steps to come, as a PyTorch scheduler writes them into the param group.
    pub fn set_lr_and_momentum(&mut self, new_lr: f64, new_momentum: f64) {
        match &mut self.opt {
            Optimizer::Sgd { lr, momentum, .. } | Optimizer::Rmsprop { lr, momentum, .. } => {
                *lr = new_lr;
                *momentum = new_momentum;
            }
            Optimizer::Adam { lr, beta1, .. } | Optimizer::Adamw { lr, beta1, .. } => {
                *lr = new_lr;
                *beta1 = new_momentum;
            }
            Optimizer::Adagrad { lr, .. } => *lr = new_lr,
        }
    }

    /// How many steps have been taken.
    pub fn steps_taken(&self) -> u64 {
        self.t
    }

    /// One update of `params` in place from `grads` (which are not modified).
    pub fn step(&mut self, params: &mut [f64], grads: &[f64]) {
        assert_eq!(
            params.len(),
            self.numel,
            "params length differs from the optimizer's numel"
        );
        assert_eq!(
            grads.len(),
            self.numel,
            "grads length differs from the optimizer's numel"
        );
        self.t += 1;
        let t = self.t;
        match (&self.opt, &mut self.state) {
            (opt @ Optimizer::Sgd { .. }, State::Sgd { momentum_buffer }) => {
                sgd_step(opt, momentum_buffer, params, grads)
            }
            (opt @ Optimizer::Adagrad { .. }, State::Adagrad { sum }) => {
                adagrad_step(opt, t, sum, params, grads)
            }
            (opt @ Optimizer::Rmsprop { .. }, State::Rmsprop { .. }) => {
                rmsprop_step(opt, &mut self.state, params, grads)
            }
            (opt @ (Optimizer::Adam { .. } | Optimizer::Adamw { .. }), State::Adam { .. }) => {
                adam_step(opt, t, &mut self.state, params, grads)
            }
            _ => unreachable!("state is built from the optimizer in new()"),
        }
    }
}

// torch.optim's single-tensor updates, one function per optimizer; `t` is the step, from 1.

fn sgd_step(
    opt: &Optimizer,
    momentum_buffer: &mut Option<Vec<f64>>,
    params: &mut [f64],
    grads: &[f64],
) {
    let Optimizer::Sgd {
        lr,
        momentum,
        dampening,
        nesterov,
        weight_decay,
    } = *opt
    else {
        unreachable!("an SGD optimizer")
    };
    if momentum == 0.0 {
        // Plain SGD keeps no state, as in PyTorch.
        for i in 0..params.len() {
            let g = grads[i] + weight_decay * params[i];
            params[i] -= lr * g;
        }
        return;
    }
    let first = momentum_buffer.is_none();
    let buf = momentum_buffer.get_or_insert_with(|| vec![0.0; params.len()]);
    for i in 0..params.len() {
        let g = grads[i] + weight_decay * params[i];
        buf[i] = if first {
            g
        } else {
            momentum * buf[i] + (1.0 - dampening) * g
        };
        let d = if nesterov {
            g + momentum * buf[i]
        } else {
            buf[i]
        };
        params[i] -= lr * d;
    }
}

fn adagrad_step(opt: &Optimizer, t: u64, sum: &mut [f64], params: &mut [f64], grads: &[f64]) {
    let Optimizer::Adagrad {
        lr,
        lr_decay,
        eps,
        weight_decay,
        ..
    } = *opt
    else {
        unreachable!("an AdaGrad optimizer")
    };
    let clr = lr / (1.0 + (t - 1) as f64 * lr_decay);
    for i in 0..params.len() {
        let g = grads[i] + weight_decay * params[i];
        sum[i] += g * g;
        params[i] -= clr * g / (sum[i].sqrt() + eps);
    }
}

fn rmsprop_step(opt: &Optimizer, state: &mut State, params: &mut [f64], grads: &[f64]) {
    let (
        &Optimizer::Rmsprop {
            lr,
            alpha,
            eps,
            momentum,
            centered,
            weight_decay,
        },
        State::Rmsprop {
            square_avg,
            grad_avg,
            momentum_buffer,
        },
    ) = (opt, state)
    else {
        unreachable!("an RMSprop optimizer and its state")
    };
    for i in 0..params.len() {
        let g = grads[i] + weight_decay * params[i];
        square_avg[i] = alpha * square_avg[i] + (1.0 - alpha) * g * g;
        let avg = if centered {
            grad_avg[i] = alpha * grad_avg[i] + (1.0 - alpha) * g;
            (square_avg[i] - grad_avg[i] * grad_avg[i]).sqrt() + eps
        } else {
            square_avg[i].sqrt() + eps
        };
        if momentum > 0.0 {
            momentum_buffer[i] = momentum * momentum_buffer[i] + g / avg;
            params[i] -= lr * momentum_buffer[i];
        } else {
            params[i] -= lr * g / avg;
        }
    }
}

fn adam_step(opt: &Optimizer, t: u64, state: &mut State, params: &mut [f64], grads: &[f64]) {
    let State::Adam {
        exp_avg,
        exp_avg_sq,
        max_exp_avg_sq,
    } = state
    else {
        unreachable!("Adam's state")
    };
    let (lr, beta1, beta2, eps, amsgrad, weight_decay, decoupled) = match *opt {
        Optimizer::Adam {
            lr,
            beta1,
            beta2,
            eps,
            amsgrad,
            weight_decay,
        } => (lr, beta1, beta2, eps, amsgrad, weight_decay, false),
        Optimizer::Adamw {
            lr,
            beta1,
            beta2,
            eps,
            amsgrad,
            weight_decay,
        } => (lr, beta1, beta2, eps, amsgrad, weight_decay, true),
        _ => unreachable!("an Adam or AdamW optimizer"),
    };
    // PyTorch evaluates `beta ** step` with a float step, i.e. C's pow; powf is the same
    // function, where powi could differ in the last bit.
    let bias_correction1 = 1.0 - beta1.powf(t as f64);
    let bias_correction2 = 1.0 - beta2.powf(t as f64);
    let step_size = lr / bias_correction1;
    let bias_correction2_sqrt = bias_correction2.sqrt();
    for i in 0..params.len() {
        let mut g = grads[i];
        if decoupled {
            // AdamW decays θ itself before the step; the gradient stays untouched.
            params[i] *= 1.0 - lr * weight_decay;
        } else {
            g += weight_decay * params[i];
        }
        exp_avg[i] = beta1 * exp_avg[i] + (1.0 - beta1) * g;
        exp_avg_sq[i] = beta2 * exp_avg_sq[i] + (1.0 - beta2) * g * g;
        let denom = if amsgrad {
            max_exp_avg_sq[i] = max_exp_avg_sq[i].max(exp_avg_sq[i]);
            max_exp_avg_sq[i].sqrt() / bias_correction2_sqrt + eps
        } else {
            exp_avg_sq[i].sqrt() / bias_correction2_sqrt + eps
        };
        params[i] -= step_size * exp_avg[i] / denom;
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::spec::standard_normal;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn normals(rng: &mut ChaCha8Rng, len: usize, std: f64) -> Vec<f64> {
        (0..len).map(|_| std * standard_normal(rng)).collect()
    }

    /// Random weights *and* biases (init_params zeroes biases, which would leave bias paths
    /// untested at a special point), inputs and labels.
    fn random_problem(
        spec: &NetSpec,
        n: usize,
        seed: u64,
        std: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<u32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let params = normals(&mut rng, spec.layout().total, std);
        let x = normals(&mut rng, n * spec.input, 1.0);
        let labels = (0..n)
            .map(|i| ((i as u64 * 7 + seed) % spec.output as u64) as u32)
            .collect();
        (params, x, labels)
    }

    /// max_i |a_i − b_i| / max(|a_i|, |b_i|, floor): relative where values are large, absolute
    /// (scaled by `floor`) where they are near zero.
    fn max_rel_err(a: &[f64], b: &[f64], floor: f64) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(&x, &y)| (x - y).abs() / x.abs().max(y.abs()).max(floor))
            .fold(0.0, f64::max)
    }

    fn check_backprop(spec: &NetSpec, n: usize, seed: u64, h: f64, tol: f64) {
        let mlp = RefMlp::new(spec.clone());
        let (params, x, labels) = random_problem(spec, n, seed, 0.7);
        let (loss, grad) = mlp.loss_and_grad(&params, &x, &labels);
        assert!((loss - mlp.loss(&params, &x, &labels)).abs() <= 1e-12 * loss.abs());
        let num = mlp.numerical_gradient(&params, &x, &labels, h);
        // Floor 1e-3: central differences in f64 with h = 1e-5 carry ~1e-10 of rounding noise
        // (ε·loss/h), which would dominate the relative error of near-zero components.
        let err = max_rel_err(&grad, &num, 1e-3);
        assert!(
            err < tol,
            "{spec:?} n={n}: backprop vs numerical max rel err {err:e}"
        );
    }

    #[test]
    fn sigmoid_backprop_matches_numerical_gradient() {
        for wd in [0.0, 0.1] {
            for (input, hidden, output, n) in [
                (3, vec![4], 2, 3),
                (5, vec![6, 4], 3, 4),
                (4, vec![3, 5, 2], 4, 5),
                (2, vec![], 3, 2),
            ] {
                let mut spec = NetSpec::mlp(input, &hidden, output, Activation::Sigmoid);
                spec.weight_decay = wd;
                check_backprop(&spec, n, 11, 1e-5, 1e-6);
            }
        }
    }

    #[test]
    fn relu_backprop_matches_numerical_gradient_away_from_kinks() {
        let h = 1e-5;
        for wd in [0.0, 0.1] {
            for (input, hidden, output, n) in [
                (3, vec![4], 2, 3),
                (5, vec![6, 4], 3, 4),
                (4, vec![3, 5, 2], 4, 5),
            ] {
                let mut spec = NetSpec::mlp(input, &hidden, output, Activation::Relu);
                spec.weight_decay = wd;
                let mlp = RefMlp::new(spec.clone());
                // Search seeds for a problem whose hidden pre-activations all sit far from 0
                // (relative to how far one h-step can move them), so central differences never
                // straddle a kink, while both sides of the kink still occur.
                let seed = (0..1000)
                    .find(|&seed| {
                        let (params, x, labels) = random_problem(&spec, n, seed, 0.7);
                        let fwd = mlp.forward(&params, &x, labels.len());
                        let hidden_pre = fwd.pre[..fwd.pre.len() - 1].iter().flatten();
                        let min_abs = hidden_pre
                            .clone()
                            .fold(f64::INFINITY, |m, v| m.min(v.abs()));
                        let any_neg = hidden_pre.clone().any(|&v| v < 0.0);
                        let any_pos = hidden_pre.clone().any(|&v| v > 0.0);
                        min_abs > 1e-2 && any_neg && any_pos
                    })
                    .expect("some seed keeps every pre-activation away from the ReLU kink");
                check_backprop(&spec, n, seed, h, 1e-6);
            }
        }
    }

    #[test]
    fn weight_decay_penalises_weights_not_biases() {
        // One affine layer: the penalty is 0.5·λ·‖W‖², whatever the biases are.
        let mut spec = NetSpec::mlp(2, &[], 2, Activation::Relu);
        let params = [1.0, 2.0, 3.0, 4.0, 10.0, -10.0]; // W = [[1, 2], [3, 4]], b = [10, −10]
        let x = [0.5, -0.5];
        let labels = [1];
        let plain = RefMlp::new(spec.clone()).loss(&params, &x, &labels);
        spec.weight_decay = 0.1;
        let decayed = RefMlp::new(spec).loss(&params, &x, &labels);
        // 0.5 · 0.1 · (1 + 4 + 9 + 16) = 1.5
        assert!((decayed - plain - 1.5).abs() < 1e-12, "{decayed} - {plain}");
    }

    #[test]
    fn forward_shapes_and_relation() {
        let spec = NetSpec::mlp(3, &[4, 5], 2, Activation::Sigmoid);
        let mlp = RefMlp::new(spec);
        let (params, x, _) = random_problem(&mlp.spec, 3, 5, 1.0);
        let fwd = mlp.forward(&params, &x, 3);
        assert_eq!(
            fwd.pre.iter().map(Vec::len).collect::<Vec<_>>(),
            [12, 15, 6]
        );
        assert_eq!(fwd.act.iter().map(Vec::len).collect::<Vec<_>>(), [12, 15]);
        assert_eq!(fwd.logits, fwd.pre[2]);
        assert_eq!(fwd.act[1], sigmoid_forward(&fwd.pre[1]));
    }

    #[test]
    fn predict_takes_first_index_on_ties() {
        // Identity affine layer: logits are the inputs themselves.
        let spec = NetSpec::mlp(3, &[], 3, Activation::Relu);
        let params = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        let x = [
            1.0, 1.0, 0.0, 0.0, 2.0, 2.0, -1.0, -3.0, -0.5, 0.0, 0.0, 0.0,
        ];
        assert_eq!(RefMlp::new(spec).predict(&params, &x, 4), [0, 1, 2, 0]);
    }

    #[test]
    fn softmax_ce_of_uniform_logits_is_ln_c() {
        for c in [2, 3, 10] {
            let n = 4;
            let logits = vec![0.25; n * c];
            let labels: Vec<u32> = (0..n as u32).map(|i| i % c as u32).collect();
            let (loss, _, per) = softmax_cross_entropy(&logits, &labels, n, c);
            let ln_c = (c as f64).ln();
            assert!((loss - ln_c).abs() < 1e-14, "c={c}: {loss} vs {ln_c}");
            assert!(per.iter().all(|p| (p - ln_c).abs() < 1e-14));
        }
    }

    #[test]
    fn softmax_ce_gradient_rows_sum_to_zero_and_match_finite_differences() {
        let (n, c) = (3, 4);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let logits = normals(&mut rng, n * c, 2.0);
        let labels = [2, 0, 3];
        let (loss, dlogits, per) = softmax_cross_entropy(&logits, &labels, n, c);
        assert!((loss - per.iter().sum::<f64>() / n as f64).abs() < 1e-15);
        for i in 0..n {
            let row_sum: f64 = dlogits[i * c..(i + 1) * c].iter().sum();
            assert!(row_sum.abs() < 1e-15, "row {i} sums to {row_sum}");
        }
        let h = 1e-5;
        for k in 0..n * c {
            let (mut plus, mut minus) = (logits.clone(), logits.clone());
            plus[k] += h;
            minus[k] -= h;
            let fd = (softmax_cross_entropy(&plus, &labels, n, c).0
                - softmax_cross_entropy(&minus, &labels, n, c).0)
                / (plus[k] - minus[k]);
            assert!(
                (fd - dlogits[k]).abs() < 1e-9,
                "dlogits[{k}] {} vs fd {fd}",
                dlogits[k]
            );
        }
    }

    #[test]
    fn softmax_ce_is_stable_for_huge_logits() {
        // Naive exp(1000) overflows; the max-shifted form gives the exact answer.
        let logits = [1000.0, 1000.0, -1000.0, 0.0];
        let (loss, d, _) = softmax_cross_entropy(&logits, &[0, 1], 2, 2);
        // Sample 0: ln 2. Sample 1: logsumexp(−1000, 0) − 0 ≈ e^−1000 ≈ 0.
        assert!((loss - 0.5 * 2f64.ln()).abs() < 1e-15, "{loss}");
        assert!(d.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn matmul_small_cases() {
        assert_eq!(
            matmul(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0], 2, 2, 2),
            [19.0, 22.0, 43.0, 50.0]
        );
        // [2, 3] · [3, 1]
        assert_eq!(
            matmul(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[1.0, 0.0, -1.0], 2, 3, 1),
            [-2.0, -2.0]
        );
    }

    #[test]
    fn affine_forward_matches_hand_values() {
        // x = [[1, 2]], W = [[1, 2, 3], [4, 5, 6]], b = [0.5, 0, −1]
        let y = affine_forward(
            &[1.0, 2.0],
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            &[0.5, 0.0, -1.0],
            1,
            2,
            3,
        );
        assert_eq!(y, [9.5, 12.0, 14.0]);
    }

    #[test]
    fn affine_backward_matches_finite_differences() {
        // Scalar probe L = Σ dy ⊙ affine(x, w, b): its gradients are exactly (dx, dw, db).
        let (n, d, h) = (3, 4, 2);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let x = normals(&mut rng, n * d, 1.0);
        let w = normals(&mut rng, d * h, 1.0);
        let b = normals(&mut rng, h, 1.0);
        let dy = normals(&mut rng, n * h, 1.0);
        let probe = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
            affine_forward(x, w, b, n, d, h)
                .iter()
                .zip(&dy)
                .map(|(y, g)| y * g)
                .sum()
        };
        let (dx, dw, db) = affine_backward(&x, &w, &dy, n, d, h);
        let step = 1e-6;
        let fd = |v: &[f64], k: usize, f: &dyn Fn(&[f64]) -> f64| {
            let (mut plus, mut minus) = (v.to_vec(), v.to_vec());
            plus[k] += step;
            minus[k] -= step;
            (f(&plus) - f(&minus)) / (plus[k] - minus[k])
        };
        for k in 0..x.len() {
            let num = fd(&x, k, &|v| probe(v, &w, &b));
            assert!((num - dx[k]).abs() < 1e-8, "dx[{k}] {} vs {num}", dx[k]);
        }
        for k in 0..w.len() {
            let num = fd(&w, k, &|v| probe(&x, v, &b));
            assert!((num - dw[k]).abs() < 1e-8, "dw[{k}] {} vs {num}", dw[k]);
        }
        for k in 0..b.len() {
            let num = fd(&b, k, &|v| probe(&x, &w, v));
            assert!((num - db[k]).abs() < 1e-8, "db[{k}] {} vs {num}", db[k]);
        }
    }

    #[test]
    fn activations_match_hand_values() {
        assert_eq!(relu_forward(&[-1.0, 0.0, 2.0]), [0.0, 0.0, 2.0]);
        // Gradient is blocked at exactly 0, as well as below it.
        assert_eq!(
            relu_backward(&[-1.0, 0.0, 2.0], &[5.0, 5.0, 5.0]),
            [0.0, 0.0, 5.0]
        );
        let y = sigmoid_forward(&[0.0, 2.0, -800.0]);
        assert_eq!(y[0], 0.5);
        assert!((y[1] - 1.0 / (1.0 + (-2f64).exp())).abs() < 1e-16);
        // e^800 would overflow in the naive form; the result must still be a finite ~0.
        assert!(y[2].is_finite() && (0.0..1e-300).contains(&y[2]));
        assert_eq!(sigmoid_backward(&[0.5, 0.25], &[2.0, 1.0]), [0.5, 0.1875]);
    }

    // --- Optimizers -------------------------------------------------------------------------
    //
    // A 2-element problem: θ0 = [1, −2], fed the fixed gradients g1 = [0.5, −1] then
    // g2 = [0.01, 2]. (g2[0] is tiny so that Adam's v shrinks at step 2, which is what makes
    // AMSGrad differ from Adam.) The expected values were worked out from the PyTorch formulas
    // on scalars, independently of this module.

    const THETA0: [f64; 2] = [1.0, -2.0];
    const G1: [f64; 2] = [0.5, -1.0];
    const G2: [f64; 2] = [0.01, 2.0];

    fn two_steps(opt: Optimizer) -> ([f64; 2], [f64; 2]) {
        let mut o = RefOptimizer::new(&opt, 2);
        let mut theta = THETA0;
        o.step(&mut theta, &G1);
        let after1 = theta;
        o.step(&mut theta, &G2);
        assert_eq!(o.steps_taken(), 2);
        (after1, theta)
    }

    fn assert_two_steps(opt: Optimizer, step1: [f64; 2], step2: [f64; 2]) {
        let name = opt.name();
        let (got1, got2) = two_steps(opt);
        for i in 0..2 {
            assert!(
                (got1[i] - step1[i]).abs() < 1e-13,
                "{name} step 1 [{i}]: {got1:?} vs {step1:?}"
            );
            assert!(
                (got2[i] - step2[i]).abs() < 1e-13,
                "{name} step 2 [{i}]: {got2:?} vs {step2:?}"
            );
        }
    }

    #[test]
    fn sgd_plain() {
        // θ1 = θ0 − 0.1·g1 = [0.95, −1.9]; θ2 = θ1 − 0.1·g2 = [0.949, −2.1]
        let opt = Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        };
        assert_two_steps(opt, [0.95, -1.9], [0.949, -2.1]);
    }

    #[test]
    fn sgd_momentum_with_dampening_and_weight_decay() {
        // Step 1: g = g1 + 0.01·θ0 = [0.51, −1.02]; b = g (no dampening on the first step);
        //         θ1 = θ0 − 0.1·b = [0.949, −1.898].
        // Step 2: g = g2 + 0.01·θ1 = [0.01949, 1.98102]; b = 0.9·b + 0.9·g = [0.476541, 0.864918];
        //         θ2 = θ1 − 0.1·b = [0.9013459, −1.9844918].
        let opt = Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.1,
            nesterov: false,
            weight_decay: 0.01,
        };
        assert_two_steps(opt, [0.949, -1.898], [0.9013459, -1.9844918]);
    }

    #[test]
    fn sgd_nesterov() {
        // Step 1: g = [0.51, −1.02]; b = g; g' = g + 0.9·b = [0.969, −1.938]; θ1 = [0.9031, −1.8062].
        // Step 2: g = g2 + 0.01·θ1 = [0.019031, 1.981938]; b = 0.9·b + g = [0.478031, 1.063938];
        //         g' = g + 0.9·b = [0.4492589, 2.9394822]; θ2 = [0.85817411, −2.10014822].
        let opt = Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: true,
            weight_decay: 0.01,
        };
        assert_two_steps(opt, [0.9031, -1.8062], [0.85817411, -2.10014822]);
    }

    #[test]
    fn adagrad() {
        // Step 1: clr = 0.1; g = [0.51, −1.02]; sum = 0.1 + g² = [0.3601, 1.1404];
        //         θ1 = θ0 − 0.1·g/(√sum + 1e-10).
        // Step 2: clr = 0.1/(1 + 0.5) ; g = g2 + 0.01·θ1; sum += g²; θ2 = θ1 − clr·g/(√sum + ε).
        let opt = Optimizer::Adagrad {
            lr: 0.1,
            lr_decay: 0.5,
            eps: 1e-10,
            initial_accumulator: 0.1,
            weight_decay: 0.01,
        };
        assert_two_steps(
            opt,
            [0.9150118031107968, -1.904485002775014],
            [0.9128853901811798, -1.9631678969086297],
        );
    }

    #[test]
    fn rmsprop_plain() {
        // Step 1: v = 0.1·g1² = [0.025, 0.1]; θ1 = θ0 − 0.01·g1/(√v + 1e-8) ≈ θ0 ∓ 0.0316.
        let opt = Optimizer::Rmsprop {
            lr: 0.01,
            alpha: 0.9,
            eps: 1e-8,
            momentum: 0.0,
            centered: false,
            weight_decay: 0.0,
        };
        assert_two_steps(
            opt,
            [0.968377225398316, -1.9683772243983162],
            [0.9677107068748578, -1.9969486525615816],
        );
    }

    #[test]
    fn rmsprop_centered_with_momentum_and_weight_decay() {
        // Step 1: g = [0.51, −1.02]; v = 0.1·g²; ga = 0.1·g; avg = √(v − ga²) + ε = √0.09·|g| + ε;
        //         buf = g/avg ≈ ±1/0.3; θ1 = θ0 − 0.01·buf ≈ θ0 ∓ 0.0333.
        let opt = Optimizer::Rmsprop {
            lr: 0.01,
            alpha: 0.9,
            eps: 1e-8,
            momentum: 0.5,
            centered: true,
            weight_decay: 0.01,
        };
        assert_two_steps(
            opt,
            [0.9666666688453157, -1.9666666677559912],
            [0.9486479019785918, -1.9787481508932103],
        );
    }

    #[test]
    fn adam_with_l2_weight_decay() {
        // Step 1: g = [0.51, −1.02]; m̂ = g, v̂ = g², so θ1 = θ0 − 0.1·g/(|g| + 1e-8) ≈ θ0 ∓ 0.1.
        let opt = Optimizer::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            amsgrad: false,
            weight_decay: 0.01,
        };
        assert_two_steps(
            opt,
            [0.9000000019607843, -1.9000000009803921],
            [0.8302689393240102, -1.9355044186569044],
        );
    }

    #[test]
    fn adam_vs_amsgrad() {
        let adam = |amsgrad| Optimizer::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            amsgrad,
            weight_decay: 0.0,
        };
        // Step 1: θ1 = θ0 − 0.1·g1/(|g1| + 1e-8) for both.
        assert_two_steps(
            adam(false),
            [0.900000002, -1.900000001],
            [0.8315188687457401, -1.9366103534720749],
        );
        // Element 0's v shrinks at step 2 (0.00025 → 0.00024985), so AMSGrad divides by the
        // older, larger v and moves less; element 1's v grows and both agree.
        assert_two_steps(
            adam(true),
            [0.900000002, -1.900000001],
            [0.8315394161677112, -1.9366103534720749],
        );
    }

    #[test]
    fn adamw_decoupled_weight_decay() {
        // Step 1: θ ← θ0·(1 − 0.1·0.1) = [0.99, −1.98], then the Adam step of −0.1·sign(g1).
        let opt = Optimizer::Adamw {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            amsgrad: false,
            weight_decay: 0.1,
        };
        assert_two_steps(
            opt,
            [0.890000002, -1.880000001],
            [0.8126188687257401, -1.897810353462075],
        );
    }

    #[test]
    fn adamw_without_weight_decay_is_adam() {
        for amsgrad in [false, true] {
            let adam = Optimizer::Adam {
                lr: 0.01,
                beta1: 0.8,
                beta2: 0.99,
                eps: 1e-6,
                amsgrad,
                weight_decay: 0.0,
            };
            let adamw = Optimizer::Adamw {
                lr: 0.01,
                beta1: 0.8,
                beta2: 0.99,
                eps: 1e-6,
                amsgrad,
                weight_decay: 0.0,
            };
            let (mut a, mut b) = (RefOptimizer::new(&adam, 2), RefOptimizer::new(&adamw, 2));
            let (mut ta, mut tb) = (THETA0, THETA0);
            for g in [G1, G2, G1, [0.0, 0.0], G2] {
                a.step(&mut ta, &g);
                b.step(&mut tb, &g);
                // Multiplying by 1 − lr·0 = 1 is exact, so the trajectories are bit-identical.
                assert_eq!(ta, tb);
            }
        }
    }

    #[test]
    fn optimizer_defaults_construct_and_step() {
        // Every named optimizer must build state matching its variant and take a step.
        for name in crate::optim::OPTIMIZER_NAMES {
            let opt = Optimizer::from_name(name, None).unwrap();
            let mut o = RefOptimizer::new(&opt, 2);
            let mut theta = THETA0;
            o.step(&mut theta, &G1);
            assert!(theta.iter().all(|v| v.is_finite()), "{name}");
            assert_ne!(theta, THETA0, "{name} did not move");
        }
    }
}
