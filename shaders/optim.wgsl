// Optimizer updates over the whole flat parameter arena, one invocation per parameter, with
// PyTorch's torch.optim formulas (single-tensor path). Hyperparameters arrive in `hyper` in the
// working precision; the step count t comes from the GPU step counter, so many steps can be
// recorded into one submit (the step's loss kernel has already counted the step an update
// takes: the counter holds t + 1). With a learning-rate schedule, `hyper` carries one row per step
// after its nine constants, and t picks the row: the schedule needs no upload while it runs.

#include "words.wgsl"

struct Params {
    numel: u32,
    flags: u32,
    row_width: u32,
    _pad: u32,
}

const NESTEROV: u32 = 1u;
const AMSGRAD: u32 = 2u;
const CENTERED: u32 = 4u;
const DECOUPLED: u32 = 8u;   // AdamW
const SCHEDULED: u32 = 16u;
// The net follows the book ("Deep Learning from Scratch"): its Momentum, Nesterov and Adam keep
// their own forms (see sgd and adam) instead of torch.optim's.
const BOOK: u32 = 32u;

// hyper[SCHEDULE + 3t ..]: step t's lr, momentum (β1 for Adam) and Adam's 1 − β1^(t+1).
const SCHEDULE: u32 = 9u;

// hyper: [0] lr  [1] momentum  [2] dampening  [3] weight_decay  [4] beta1  [5] beta2  [6] eps
//        [7] alpha (RMSprop)  [8] lr_decay (AdaGrad)  [9 ..] the schedule's rows, if SCHEDULED
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> hyper: array<real>;
@group(0) @binding(2) var<storage, read_write> theta: array<real>;
@group(0) @binding(3) var<storage, read> grad: array<real>;
@group(0) @binding(4) var<storage, read_write> s1: array<real>;
@group(0) @binding(5) var<storage, read_write> s2: array<real>;
@group(0) @binding(6) var<storage, read_write> s3: array<real>;
// [0] β1^t  [1] β2^t, advanced by `prepare` (f64 has no pow in Vulkan, and this is exact).
@group(0) @binding(7) var<storage, read_write> powers: array<real>;
@group(0) @binding(8) var<storage, read> state: array<u32>;

// Parameters an invocation updates, one after another: on lavapipe a workgroup costs more than
// the few reads of one parameter's update.
const PER_INVOCATION: u32 = 4u;

fn index(gid: vec3<u32>) -> u32 {
    return gid.y * P.row_width + gid.x;
}

// t: the steps completed before this update (metrics.wgsl's train_step_loss, which runs just
// before it, has counted this one already).
fn steps_before() -> u32 {
    return state[STATE_STEP] - 1u;
}

fn schedule_row() -> u32 {
    return SCHEDULE + 3u * steps_before();
}

// This step's learning rate.
fn lr_now() -> real {
    if ((P.flags & SCHEDULED) != 0u) {
        return hyper[schedule_row()];
    }
    return hyper[0];
}

// This step's momentum (or β1), `constant` unless a schedule sets it.
fn momentum_now(constant: real) -> real {
    if ((P.flags & SCHEDULED) != 0u) {
        return hyper[schedule_row() + 1u];
    }
    return constant;
}

// What an update reads besides the parameter's own slots, read once per invocation (every
// storage read costs on lavapipe, and these are the same for every parameter).
struct Step {
    t: u32,
    lr: real,
    momentum: real,
    beta1: real,
    dampening: real,
    weight_decay: real,
    beta2: real,
    eps: real,
    alpha: real,
    lr_decay: real,
    bias_correction1: real,
    bias_correction2: real,
}

fn this_step() -> Step {
    var bc1 = real(1.0) - powers[0];
    if ((P.flags & SCHEDULED) != 0u) {
        bc1 = hyper[schedule_row() + 2u];
    }
    return Step(
        steps_before(),
        lr_now(),
        momentum_now(hyper[1]),
        momentum_now(hyper[4]),
        hyper[2],
        hyper[3],
        hyper[5],
        hyper[6],
        hyper[7],
        hyper[8],
        bc1,
        real(1.0) - powers[1],
    );
}

@compute @workgroup_size(1)
fn prepare() {
    powers[0] = powers[0] * hyper[4];
    powers[1] = powers[1] * hyper[5];
}

// SGD, with momentum, dampening and Nesterov. The book's Momentum keeps v = −lr·buf instead of
// buf (v ← μv − lr·g; θ ← θ + v), and its Nesterov is another form altogether:
//   v ← μv − lr·g;  θ ← θ + μ²v − (1 + μ)·lr·g
@compute @workgroup_size(64)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>) {
    let first = index(gid) * PER_INVOCATION;
    let h = this_step();
    for (var i = first; i < min(first + PER_INVOCATION, P.numel); i++) {
        sgd_at(i, h);
    }
}

fn sgd_at(i: u32, h: Step) {
    let mu = h.momentum;
    var g = grad[i] + h.weight_decay * theta[i];
    if ((P.flags & BOOK) != 0u && mu != real(0.0)) {
        let lr = h.lr;
        let v = mu * s1[i] - lr * g;
        s1[i] = v;
        if ((P.flags & NESTEROV) != 0u) {
            theta[i] += mu * mu * v - (real(1.0) + mu) * lr * g;
        } else {
            theta[i] += v;
        }
        return;
    }
    if (mu != real(0.0)) {
        var b = g;
        if (h.t > 0u) {
            b = mu * s1[i] + (real(1.0) - h.dampening) * g;
        }
        s1[i] = b;
        g = select(b, g + mu * b, (P.flags & NESTEROV) != 0u);
    }
    theta[i] -= h.lr * g;
}

// AdaGrad: sum += g², θ −= clr·g / (√sum + ε), clr = lr / (1 + (t − 1)·lr_decay).
@compute @workgroup_size(64)
fn adagrad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let first = index(gid) * PER_INVOCATION;
    let h = this_step();
    for (var i = first; i < min(first + PER_INVOCATION, P.numel); i++) {
        adagrad_at(i, h);
    }
}

fn adagrad_at(i: u32, h: Step) {
    let clr = h.lr / (real(1.0) + real(h.t) * h.lr_decay);
    let g = grad[i] + h.weight_decay * theta[i];
    let sum = s1[i] + g * g;
    s1[i] = sum;
    theta[i] -= clr * g / (sqrt(sum) + h.eps);
}

// RMSprop: v = αv + (1 − α)g²; optional centring (s3) and momentum (s2).
@compute @workgroup_size(64)
fn rmsprop(@builtin(global_invocation_id) gid: vec3<u32>) {
    let first = index(gid) * PER_INVOCATION;
    let h = this_step();
    for (var i = first; i < min(first + PER_INVOCATION, P.numel); i++) {
        rmsprop_at(i, h);
    }
}

fn rmsprop_at(i: u32, h: Step) {
    let alpha = h.alpha;
    let g = grad[i] + h.weight_decay * theta[i];
    let v = alpha * s1[i] + (real(1.0) - alpha) * g * g;
    s1[i] = v;
    var avg: real;
    if ((P.flags & CENTERED) != 0u) {
        let ga = alpha * s3[i] + (real(1.0) - alpha) * g;
        s3[i] = ga;
        avg = sqrt(v - ga * ga) + h.eps;
    } else {
        avg = sqrt(v) + h.eps;
    }
    let mu = h.momentum;
    if (mu > real(0.0)) {
        let b = mu * s2[i] + g / avg;
        s2[i] = b;
        theta[i] -= h.lr * b;
    } else {
        theta[i] -= h.lr * g / avg;
    }
}

// Adam and AdamW (DECOUPLED: θ ← θ·(1 − lr·wd) first, and no L2 term in g). The book's Adam puts
// ε beside √v itself and folds both bias corrections into the step:
//   θ ← θ − lr·√(1 − β2ᵗ)/(1 − β1ᵗ) · m / (√v + ε)
@compute @workgroup_size(64)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>) {
    let first = index(gid) * PER_INVOCATION;
    let h = this_step();
    for (var i = first; i < min(first + PER_INVOCATION, P.numel); i++) {
        adam_at(i, h);
    }
}

fn adam_at(i: u32, h: Step) {
    let lr = h.lr;
    var th = theta[i];
    var g = grad[i];
    if ((P.flags & DECOUPLED) != 0u) {
        th = th * (real(1.0) - lr * h.weight_decay);
    } else {
        g = g + h.weight_decay * th;
    }
    let b1 = h.beta1;
    let b2 = h.beta2;
    let m = b1 * s1[i] + (real(1.0) - b1) * g;
    let v = b2 * s2[i] + (real(1.0) - b2) * g * g;
    s1[i] = m;
    s2[i] = v;
    var v_used = v;
    if ((P.flags & AMSGRAD) != 0u) {
        v_used = max(s3[i], v);
        s3[i] = v_used;
    }
    let bc1 = h.bias_correction1;
    let bc2 = h.bias_correction2;
    if ((P.flags & BOOK) != 0u) {
        theta[i] = th - (lr * sqrt(bc2) / bc1) * m / (sqrt(v_used) + h.eps);
        return;
    }
    let denom = sqrt(v_used) / sqrt(bc2) + h.eps;
    theta[i] = th - (lr / bc1) * m / denom;
}
