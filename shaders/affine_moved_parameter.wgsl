// The affine layer at the start of an incremental route, reading the input every copy shares.
// Copy p moves one parameter by ±h; where it is this layer's W[i, j] or b[j], only column j of
// the output moves, so the copy's output is the unperturbed output plus that change:
//
//   y[p, n, j] = base_y[n, j] + δ_p·x[n, i]   (W[i, j] moved)
//   y[p, n, j] = base_y[n, j] + δ_p           (b[j] moved)
//   y[p, n, c] = base_y[n, c]                 (every other column, and a change elsewhere)
//
//   x: [N, D_IN] shared, base_y: [N, D_OUT] -> y: [copies, N, D_OUT]; one invocation per output,
// O(1) each where a full pass forms D_IN products.

struct Params {
    n: u32,          // batch rows N
    d_in: u32,
    d_out: u32,
    w_off: u32,      // W's offset in the arena (W: [D_IN, D_OUT])
    b_off: u32,      // b's offset in the arena
    count: u32,      // invocations: copies·N·D_OUT
    row_width: u32,  // invocations per grid row of kernel::grid(count)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<real>;
@group(0) @binding(2) var<storage, read> base_y: array<real>;
@group(0) @binding(3) var<storage, read> pert: array<u32>;     // (flat index, sign) per copy
@group(0) @binding(4) var<storage, read> hstep: array<real>;   // [h]
@group(0) @binding(5) var<storage, read_write> y: array<real>;

@compute @workgroup_size(64)
fn affine_moved_parameter(@builtin(global_invocation_id) gid: vec3<u32>) {
    let at = gid.y * P.row_width + gid.x;
    if (at >= P.count) {
        return;
    }
    let j = at % P.d_out;
    let row = at / P.d_out;          // p·N + n
    let n = row % P.n;
    let p = row / P.n;
    let flat = pert[2u * p];
    let delta = select(hstep[0], -hstep[0], pert[2u * p + 1u] == 1u);
    var out = base_y[n * P.d_out + j];
    if (flat >= P.w_off && flat < P.w_off + P.d_in * P.d_out) {
        let k = flat - P.w_off;
        if (k % P.d_out == j) {
            out += delta * x[n * P.d_in + k / P.d_out];
        }
    } else if (flat == P.b_off + j) {
        out += delta;
    }
    y[at] = out;
}
