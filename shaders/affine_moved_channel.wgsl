// The affine layer that ends a one-channel route (moved_channel.wgsl). Copy p's input differs
// from the unperturbed input only in channel c = moved[p], the features c·S … c·S + S − 1 of
// each sample, so its output is the unperturbed output plus that block's change times the
// block's rows of W:
//
//   y[p, n, j] = base_y[n, j] + Σ_{s < S} (x[p, n, c·S + s] − base_x[n, c·S + s]) · W[c·S + s, j]
//
//   x: [copies, N, C·S] (channel c read only), base_x: [N, C·S], base_y: [N, D_OUT],
//   W: [C·S, D_OUT] at w_off in theta -> y: [copies, N, D_OUT]; one invocation per output, S
//   terms in a fixed order.

struct Params {
    n: u32,          // batch rows N
    d_in: u32,       // C·S
    d_out: u32,
    plane: u32,      // S: features per channel and sample
    w_off: u32,      // W's offset in theta
    count: u32,      // invocations: copies·N·D_OUT
    row_width: u32,  // invocations per grid row of kernel::grid(count)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<real>;
@group(0) @binding(2) var<storage, read> base_x: array<real>;
@group(0) @binding(3) var<storage, read> base_y: array<real>;
@group(0) @binding(4) var<storage, read> theta: array<real>;
@group(0) @binding(5) var<storage, read> moved: array<u32>;
@group(0) @binding(6) var<storage, read_write> y: array<real>;

@compute @workgroup_size(64)
fn affine_moved_channel(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * P.row_width + gid.x;
    if (i >= P.count) {
        return;
    }
    let j = i % P.d_out;
    let row = i / P.d_out;           // p·N + n
    let n = row % P.n;
    let first = moved[row / P.n] * P.plane;
    var acc = base_y[n * P.d_out + j];
    for (var s = 0u; s < P.plane; s++) {
        let k = first + s;
        acc += (x[row * P.d_in + k] - base_x[n * P.d_in + k]) * theta[P.w_off + k * P.d_out + j];
    }
    y[i] = acc;
}
