// An affine layer's perturbed copies formed as the unperturbed output plus what a copy's change
// moves, where a full pass would form D_IN products an output. Both entry points read the
// unperturbed output base_y [N, D_OUT] and write y [copies, N, D_OUT], one invocation an output;
// they share this binding table, and the slots an entry point does not use get the host's
// placeholders (kernel::Placeholders).
//
// affine_moved_parameter, the start of an incremental route (x: the input every copy shares,
// [N, D_IN]). Copy p moves one parameter by ±h; where it is this layer's W[i, j] or b[j], only
// column j moves:
//
//   y[p, n, j] = base_y[n, j] + δ_p·x[n, i]   (W[i, j] moved)
//   y[p, n, j] = base_y[n, j] + δ_p           (b[j] moved)
//   y[p, n, c] = base_y[n, c]                 (every other column, and a change elsewhere)
//
// affine_moved_channel, the end of a one-channel route (moved_channel.wgsl; x: the copies'
// inputs [copies, N, C·S]). Copy p's input differs from the unperturbed one, base_x [N, C·S],
// only in channel c = moved[p], features c·S … c·S + S − 1:
//
//   y[p, n, j] = base_y[n, j] + Σ_{s < S} (x[p, n, c·S + s] − base_x[n, c·S + s]) · W[c·S + s, j]
//
// with S terms in a fixed order.

struct Params {
    n: u32,          // batch rows N
    d_in: u32,
    d_out: u32,
    plane: u32,      // S: features per channel and sample (affine_moved_channel)
    w_off: u32,      // W's offset in the arena (W: [D_IN, D_OUT])
    b_off: u32,      // b's offset in the arena
    count: u32,      // invocations: copies·N·D_OUT
    row_width: u32,  // invocations per grid row of kernel::grid(count)
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<real>;
@group(0) @binding(2) var<storage, read> base_x: array<real>;   // affine_moved_channel
@group(0) @binding(3) var<storage, read> base_y: array<real>;
@group(0) @binding(4) var<storage, read> theta: array<real>;    // affine_moved_channel
@group(0) @binding(5) var<storage, read> pert: array<u32>;      // (flat index, sign) per copy
@group(0) @binding(6) var<storage, read> hstep: array<real>;    // [h]
@group(0) @binding(7) var<storage, read> moved: array<u32>;     // [copies]: moved channels
@group(0) @binding(8) var<storage, read_write> y: array<real>;

fn output_index(gid: vec3<u32>) -> u32 {
    return gid.y * P.row_width + gid.x;
}

@compute @workgroup_size(64)
fn affine_moved_parameter(@builtin(global_invocation_id) gid: vec3<u32>) {
    let at = output_index(gid);
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

@compute @workgroup_size(64)
fn affine_moved_channel(@builtin(global_invocation_id) gid: vec3<u32>) {
    let at = output_index(gid);
    if (at >= P.count) {
        return;
    }
    let j = at % P.d_out;
    let row = at / P.d_out;          // p·N + n
    let n = row % P.n;
    let first = moved[row / P.n] * P.plane;
    var acc = base_y[n * P.d_out + j];
    for (var s = 0u; s < P.plane; s++) {
        let k = first + s;
        acc += (x[row * P.d_in + k] - base_x[n * P.d_in + k]) * theta[P.w_off + k * P.d_out + j];
    }
    y[at] = acc;
}
