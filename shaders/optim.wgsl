// Optimizer updates over the whole flat parameter arena, four parameters (a quad) an invocation,
// with PyTorch's torch.optim formulas (single-tensor path). Hyperparameters arrive in `hyper` in
// the working precision; the step count t comes from the GPU step counter, so many steps can be
// recorded into one submit (the step's loss kernel has already counted the step an update
// takes: the counter holds t + 1). With a learning-rate schedule, `hyper` carries one row per step
// after its nine constants, and t picks the row: the schedule needs no upload while it runs.
//
// Mesa 22.3's lavapipe reads storage lane by lane inside any loop or branch (docs/lavapipe.md),
// so an update reads and writes its quads in straight-line code: the optimizer's options are
// override constants, whose branches the compiler removes, and what depends on a value known only
// at run time (a scheduled momentum, the first step) is computed both ways and selected.

#include "words.wgsl"

alias quad = vec4<real>;

struct Params {
    numel: u32,
    // numel / 4, rounded up: the last quad may run into the buffers' padding, which keeps its
    // values.
    quads: u32,
    row_width: u32,
    _pad: u32,
}

// The optimizer's options (src/optim/mod.rs sets them when it builds the pipeline).
override FLAGS: u32 = 0u;
const NESTEROV: u32 = 1u;
const AMSGRAD: u32 = 2u;
const CENTERED: u32 = 4u;
const DECOUPLED: u32 = 8u;   // AdamW
const SCHEDULED: u32 = 16u;
// The net follows the book ("Deep Learning from Scratch"): its Momentum, Nesterov and Adam keep
// their own forms (see sgd and adam) instead of torch.optim's.
const BOOK: u32 = 32u;
// The momentum may be nonzero (SGD, RMSprop), so s1 (SGD) or s2 (RMSprop) holds a buffer.
const MOMENTUM: u32 = 64u;
// The net's loss has the book's L2 term, whose gradient the update adds (see `gradient`).
const L2: u32 = 128u;

fn has(flag: u32) -> bool {
    return (FLAGS & flag) != 0u;
}

// hyper[SCHEDULE + 3t ..]: step t's lr, momentum (β1 for Adam) and Adam's 1 − β1^(t+1).
const SCHEDULE: u32 = 9u;

// hyper: [0] lr  [1] momentum  [2] dampening  [3] weight_decay  [4] beta1  [5] beta2  [6] eps
//        [7] alpha (RMSprop)  [8] lr_decay (AdaGrad)  [9 ..] the schedule's rows, if SCHEDULED
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> hyper: array<real>;
@group(0) @binding(2) var<storage, read_write> theta: array<quad>;
@group(0) @binding(3) var<storage, read> grad: array<quad>;
@group(0) @binding(4) var<storage, read_write> s1: array<quad>;
@group(0) @binding(5) var<storage, read_write> s2: array<quad>;
@group(0) @binding(6) var<storage, read_write> s3: array<quad>;
// [β1^t, β2^t] for the t steps completed, in slot t mod 2 (words 2s and 2s + 1): a running
// product, since f64 has no pow in Vulkan and a resumed run must be the same run. An Adam update
// reads its slot and its first invocation writes β^(t+1) into the other, so no dispatch of its
// own advances them and no invocation reads what another writes.
@group(0) @binding(7) var<storage, read_write> powers: array<real>;
@group(0) @binding(8) var<storage, read> state: array<u32>;
// L2: λ_i / 2 per parameter (λ on weights, 0 on the rest).
@group(0) @binding(9) var<storage, read> half_decay: array<quad>;

fn index(gid: vec3<u32>) -> u32 {
    return gid.y * P.row_width + gid.x;
}

// The gradient of quad q's loss: the layers' (written by the backward pass) and, with the L2
// term, λ_i·θ_i, added here as l2.wgsl's l2_grad would add it, without a pass of its own.
fn gradient(q: u32, th: quad) -> quad {
    if (has(L2)) {
        return grad[q] + real(2.0) * half_decay[q] * th;
    }
    return grad[q];
}

// What quad q's update stores: the new values of the parameters in the arena, the old ones in
// the padding past its end.
fn kept(q: u32, updated: quad, old: quad) -> quad {
    let i = vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u);
    return select(old, updated, i < vec4<u32>(P.numel));
}

// What an update reads besides the parameters' own slots, the same for every invocation.
struct Step {
    // The steps completed before this update (metrics.wgsl's train_step_loss, which runs just
    // before it, has counted this one already).
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
    // [β1^(t+1), β2^(t+1)]: this update's.
    beta_powers: vec2<real>,
}

fn this_step() -> Step {
    let t = state[STATE_STEP] - 1u;
    let slot = 2u * (t % 2u);
    let beta_powers = vec2<real>(powers[slot] * hyper[4], powers[slot + 1u] * hyper[5]);
    var h = Step(
        t,
        hyper[0],
        hyper[1],
        hyper[4],
        hyper[2],
        hyper[3],
        hyper[5],
        hyper[6],
        hyper[7],
        hyper[8],
        real(1.0) - beta_powers.x,
        real(1.0) - beta_powers.y,
        beta_powers,
    );
    if (has(SCHEDULED)) {
        // This step's row: its lr, its momentum (or β1), and with a β1 that moves, Adam's bias
        // correction from the product of the β1s so far, which the host computed.
        let row = SCHEDULE + 3u * h.t;
        h.lr = hyper[row];
        h.momentum = hyper[row + 1u];
        h.beta1 = hyper[row + 1u];
        h.bias_correction1 = hyper[row + 2u];
    }
    return h;
}

// SGD, with momentum, dampening and Nesterov. The book's Momentum keeps v = −lr·buf instead of
// buf (v ← μv − lr·g; θ ← θ + v), and its Nesterov is another form altogether:
//   v ← μv − lr·g;  θ ← θ + μ²v − (1 + μ)·lr·g
@compute @workgroup_size(64)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>) {
    let q = index(gid);
    if (q >= P.quads) {
        return;
    }
    let h = this_step();
    let th = theta[q];
    var g = gradient(q, th) + h.weight_decay * th;
    if (!has(MOMENTUM)) {
        theta[q] = kept(q, th - h.lr * g, th);
        return;
    }
    let mu = h.momentum;
    let buf = s1[q];
    var new_buf = buf;
    var new_th: quad;
    if (has(BOOK) && mu != real(0.0)) {
        let lr = h.lr;
        new_buf = mu * buf - lr * g;
        let v = new_buf;
        if (has(NESTEROV)) {
            new_th = th + (mu * mu * v - (real(1.0) + mu) * lr * g);
        } else {
            new_th = th + v;
        }
    } else {
        if (mu != real(0.0)) {
            var b = g;
            if (h.t > 0u) {
                b = mu * buf + (real(1.0) - h.dampening) * g;
            }
            new_buf = b;
            g = select(b, g + mu * b, has(NESTEROV));
        }
        new_th = th - h.lr * g;
    }
    s1[q] = kept(q, new_buf, buf);
    theta[q] = kept(q, new_th, th);
}

// AdaGrad: sum += g², θ −= clr·g / (√sum + ε), clr = lr / (1 + (t − 1)·lr_decay).
@compute @workgroup_size(64)
fn adagrad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let q = index(gid);
    if (q >= P.quads) {
        return;
    }
    let h = this_step();
    let th = theta[q];
    let old_sum = s1[q];
    let clr = h.lr / (real(1.0) + real(h.t) * h.lr_decay);
    let g = gradient(q, th) + h.weight_decay * th;
    let sum = old_sum + g * g;
    s1[q] = kept(q, sum, old_sum);
    theta[q] = kept(q, th - clr * g / (sqrt(sum) + h.eps), th);
}

// RMSprop: v = αv + (1 − α)g²; optional centring (s3) and momentum (s2).
@compute @workgroup_size(64)
fn rmsprop(@builtin(global_invocation_id) gid: vec3<u32>) {
    let q = index(gid);
    if (q >= P.quads) {
        return;
    }
    let h = this_step();
    let alpha = h.alpha;
    let th = theta[q];
    let old_v = s1[q];
    let g = gradient(q, th) + h.weight_decay * th;
    let v = alpha * old_v + (real(1.0) - alpha) * g * g;
    s1[q] = kept(q, v, old_v);
    var avg = sqrt(v) + h.eps;
    if (has(CENTERED)) {
        let old_ga = s3[q];
        let ga = alpha * old_ga + (real(1.0) - alpha) * g;
        s3[q] = kept(q, ga, old_ga);
        avg = sqrt(v - ga * ga) + h.eps;
    }
    var new_th = th - h.lr * g / avg;
    if (has(MOMENTUM)) {
        let mu = h.momentum;
        let old_b = s2[q];
        let b = mu * old_b + g / avg;
        s2[q] = kept(q, select(old_b, b, mu > real(0.0)), old_b);
        new_th = select(new_th, th - h.lr * b, mu > real(0.0));
    }
    theta[q] = kept(q, new_th, th);
}

// Adam and AdamW (DECOUPLED: θ ← θ·(1 − lr·wd) first, and no L2 term in g). The book's Adam puts
// ε beside √v itself and folds both bias corrections into the step:
//   θ ← θ − lr·√(1 − β2ᵗ)/(1 − β1ᵗ) · m / (√v + ε)
@compute @workgroup_size(64)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>) {
    let q = index(gid);
    if (q >= P.quads) {
        return;
    }
    let h = this_step();
    if (q == 0u) {
        let next = 2u * ((h.t + 1u) % 2u);
        powers[next] = h.beta_powers.x;
        powers[next + 1u] = h.beta_powers.y;
    }
    let lr = h.lr;
    let th0 = theta[q];
    var th = th0;
    var g = gradient(q, th0);
    if (has(DECOUPLED)) {
        th = th * (real(1.0) - lr * h.weight_decay);
    } else {
        g = g + h.weight_decay * th;
    }
    let b1 = h.beta1;
    let b2 = h.beta2;
    let old_m = s1[q];
    let old_v = s2[q];
    let m = b1 * old_m + (real(1.0) - b1) * g;
    let v = b2 * old_v + (real(1.0) - b2) * g * g;
    s1[q] = kept(q, m, old_m);
    s2[q] = kept(q, v, old_v);
    var v_used = v;
    if (has(AMSGRAD)) {
        let old_max = s3[q];
        v_used = max(old_max, v);
        s3[q] = kept(q, v_used, old_max);
    }
    let bc1 = h.bias_correction1;
    let bc2 = h.bias_correction2;
    if (has(BOOK)) {
        theta[q] = kept(q, th - (lr * sqrt(bc2) / bc1) * m / (sqrt(v_used) + h.eps), th0);
        return;
    }
    let denom = sqrt(v_used) / sqrt(bc2) + h.eps;
    theta[q] = kept(q, th - (lr / bc1) * m / denom, th0);
}
