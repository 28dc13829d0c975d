// Elementwise nonlinearities, forward and backward side by side. All tensors are flat
// [copies, N, H] arrays of `count` elements; the grid is folded into 2-D when it is large.

struct Params {
    count: u32,      // elements
    per_copy: u32,   // N·H: elements of one parameter copy (kink counting only)
    row_width: u32,  // invocations per grid row (x workgroups · 64)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<real>;     // input: pre-activation or upstream grad
@group(0) @binding(2) var<storage, read> aux: array<real>;   // the saved tensor backward needs
@group(0) @binding(3) var<storage, read_write> y: array<real>;
@group(0) @binding(4) var<storage, read_write> flips: array<atomic<u32>>;

// Built into the perturbed-loss engine: count, per copy, the units whose ReLU state differs from
// the unperturbed pass (aux holds the base pre-activations). A central difference whose two
// sides see different states straddles the kink.
override COUNT_KINKS: bool = false;

fn index(gid: vec3<u32>) -> u32 {
    return gid.y * P.row_width + gid.x;
}

// y = max(x, 0)       x, y: [N, H]
@compute @workgroup_size(64)
fn relu_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i >= P.count) {
        return;
    }
    let a = x[i];
    y[i] = max(a, real(0.0));
    if (COUNT_KINKS) {
        let base = aux[i % P.per_copy];
        if ((a > real(0.0)) != (base > real(0.0))) {
            atomicAdd(&flips[i / P.per_copy], 1u);
        }
    }
}

// dx = dy · [a > 0]   (x: dy, aux: the pre-activation a). The book's mask: zero at a = 0.
@compute @workgroup_size(64)
fn relu_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i >= P.count) {
        return;
    }
    y[i] = select(real(0.0), x[i], aux[i] > real(0.0));
}

// y = 1 / (1 + e^(−x))
@compute @workgroup_size(64)
fn sigmoid_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i >= P.count) {
        return;
    }
    y[i] = real(1.0) / (real(1.0) + exp_r(-x[i]));
}

// dx = dy · y · (1 − y)   (x: dy, aux: the forward output y)
@compute @workgroup_size(64)
fn sigmoid_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i >= P.count) {
        return;
    }
    let s = aux[i];
    y[i] = x[i] * s * (real(1.0) - s);
}
