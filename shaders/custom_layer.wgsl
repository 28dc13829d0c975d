// The harness around a user's custom layer (`--layers …,wgsl:PATH,…`, src/nn/layers/custom/).
// The user's file defines, over `real`, one function per output element and one per gradient
// element; this file owns every binding and every entry point, so the user writes no
// plumbing and cannot break the perturbed-loss engine's rule that no copy writes what another
// reads. src/nn/layers/custom/contract.rs appends, per declared parameter tensor NAME (index t):
//   fn NAME(k: u32) -> real              element k of the tensor, as this copy sees it
//   @compute fn wgrad_backward_NAME(…)   grads[offset + k] = backward_NAME(k), k < numel
//
// Shapes: input x [copies, N, IN] (or [N, IN] shared by every copy), output y [copies, N, OUT];
// backward on one copy: dy [N, OUT] -> dx [N, IN] and each tensor's gradient.
//
//   forward:   y[p, n, j] = forward(n, j)     with p = the copy, read through x() and NAME()
//   backward:  dx[n, i]   = backward(n, i)    ∂L/∂x[n, i], reading x(), y(), dy() and NAME()
//              dNAME[k]   = backward_NAME(k)  ∂L/∂NAME[k], summing over the batch itself

struct WgradShape {
    rows: u32,          // samples N per copy
    in_size: u32,       // IN
    out_size: u32,      // OUT
    copies: u32,        // parameter copies P (1 outside the perturbed-loss engine)
    count: u32,         // invocations of this entry: P·N·OUT, N·IN or a tensor's numel
    row_width: u32,     // invocations per grid row of kernel::grid(count)
    input_shared: u32,  // 1: x is [N, IN], read by every copy
    input_base: u32,    // perturbation indices from here on move an element of x, not of θ
    // Per declared tensor t: its offset in theta and grads at [t / 4][t % 4].
    offsets: array<vec4<u32>, 4>,
}

@group(0) @binding(0) var<uniform> wgrad_shape: WgradShape;
@group(0) @binding(1) var<storage, read> wgrad_theta: array<real>;        // parameter arena
@group(0) @binding(2) var<storage, read> wgrad_x: array<real>;            // the layer's input
@group(0) @binding(3) var<storage, read_write> wgrad_y: array<real>;      // the layer's output
@group(0) @binding(4) var<storage, read> wgrad_dy: array<real>;           // backward: ∂L/∂y
@group(0) @binding(5) var<storage, read_write> wgrad_dx: array<real>;     // backward: ∂L/∂x
@group(0) @binding(6) var<storage, read_write> wgrad_grads: array<real>;  // gradient arena
// Perturbed build: per copy p, pert[2p] is the flat index it moves (a parameter below
// input_base, an element n·IN + i of x from it) and pert[2p + 1] its sign (0: +h, 1: −h).
@group(0) @binding(7) var<storage, read> wgrad_pert: array<u32>;
@group(0) @binding(8) var<storage, read> wgrad_h: array<real>;            // [h]

override WGRAD_PERTURBED: bool = false;

// The copy this invocation computes (0 in backward).
var<private> wgrad_copy: u32;

// Samples per copy: a parameter gradient sums over n < batch().
fn batch() -> u32 {
    return wgrad_shape.rows;
}

fn in_size() -> u32 {
    return wgrad_shape.in_size;
}

fn out_size() -> u32 {
    return wgrad_shape.out_size;
}

// This copy's change to flat index `flat`: ±h when it is the one it moves, else 0.
fn wgrad_change(flat: u32) -> real {
    if (!WGRAD_PERTURBED || wgrad_pert[2u * wgrad_copy] != flat) {
        return real(0.0);
    }
    return select(wgrad_h[0], -wgrad_h[0], wgrad_pert[2u * wgrad_copy + 1u] == 1u);
}

// Element k of declared tensor t: the shared base plus this copy's own change.
fn wgrad_param(t: u32, k: u32) -> real {
    let flat = wgrad_shape.offsets[t / 4u][t % 4u] + k;
    return wgrad_theta[flat] + wgrad_change(flat);
}

// x[n, i], the layer's input for sample n of this copy.
fn x(n: u32, i: u32) -> real {
    let is_shared = wgrad_shape.input_shared == 1u;
    let copy = select(wgrad_copy, 0u, is_shared);
    let v = wgrad_x[(copy * wgrad_shape.rows + n) * wgrad_shape.in_size + i];
    if (!is_shared) {
        return v;
    }
    // Only a shared input can be the one an input-gradient check moves.
    return v + wgrad_change(wgrad_shape.input_base + n * wgrad_shape.in_size + i);
}

// y[n, j], the forward's output (read it in backward only).
fn y(n: u32, j: u32) -> real {
    return wgrad_y[(wgrad_copy * wgrad_shape.rows + n) * wgrad_shape.out_size + j];
}

// ∂L/∂y[n, j] (backward only).
fn dy(n: u32, j: u32) -> real {
    return wgrad_dy[n * wgrad_shape.out_size + j];
}

// tanh through exp_r: Vulkan has no f64 tanh (nor exp and log: use exp_r and log_r).
fn tanh_r(v: real) -> real {
    return real(1.0) - real(2.0) / (exp_r(real(2.0) * v) + real(1.0));
}

// Entry points. The contract check builds the file once without them (so that the user's
// own errors and signatures are reported in the user's terms) and once with them; this line
// divides the two parts.
// ENTRY POINTS

fn wgrad_index(gid: vec3<u32>) -> u32 {
    return gid.y * wgrad_shape.row_width + gid.x;
}

// y = forward(n, j) for every copy, sample and output element; grid kernel::grid(P·N·OUT).
@compute @workgroup_size(64)
fn wgrad_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = wgrad_index(gid);
    if (i >= wgrad_shape.count) {
        return;
    }
    let per_copy = wgrad_shape.rows * wgrad_shape.out_size;
    wgrad_copy = i / per_copy;
    let r = i % per_copy;
    wgrad_y[i] = forward(r / wgrad_shape.out_size, r % wgrad_shape.out_size);
}

// dx = backward(n, i) for every sample and input element; grid kernel::grid(N·IN).
@compute @workgroup_size(64)
fn wgrad_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = wgrad_index(gid);
    if (i >= wgrad_shape.count) {
        return;
    }
    wgrad_copy = 0u;
    wgrad_dx[i] = backward(i / wgrad_shape.in_size, i % wgrad_shape.in_size);
}
