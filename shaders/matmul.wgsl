// Batched, strided matrix product with optional bias, the workhorse of Affine forward and
// backward:
//
//   C[p] = A[p] · B (+ bias)      A[p]: [M, K], B: [K, N], bias: [N], C[p]: [M, N]
//
// Element (i, k) of A[p] sits at a_off + p·a_bs + i·a_rs + k·a_cs, so transposes are just
// strides: Affine forward is X·W, dX = dY·Wᵀ, dW = Xᵀ·dY, all with this one kernel.
//
// Each invocation computes a 4×4 block of C in registers (on lavapipe register blocking ran
// 6–10× faster than workgroup-shared tiles; README, "Notes on lavapipe"). The batch index p (grid z) serves the
// full-forward numerical gradient, where every p is one perturbed copy of the parameters: B and
// bias are read as the shared base plus that copy's own one-element change, so no copy ever
// writes what another reads.

struct Params {
    m: u32, n: u32, k: u32, flags: u32,
    a_off: u32, a_rs: u32, a_cs: u32, a_bs: u32,
    b_off: u32, b_rs: u32, b_cs: u32, bias_off: u32,
    c_off: u32, c_rs: u32, c_bs: u32, _pad: u32,
}

const ADD_BIAS: u32 = 1u;

// Set when built for the perturbed-loss engine: pert[2p] is copy p's flat parameter index,
// pert[2p+1] its sign (0: +h, 1: −h), and hstep[0] is h.
override PERTURBED: bool = false;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> A: array<real>;
@group(0) @binding(2) var<storage, read> B: array<real>;
@group(0) @binding(3) var<storage, read> bias: array<real>;
@group(0) @binding(4) var<storage, read_write> C: array<real>;
@group(0) @binding(5) var<storage, read> pert: array<u32>;
@group(0) @binding(6) var<storage, read> hstep: array<real>;

@compute @workgroup_size(8, 8, 1)
fn matmul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    let p = gid.z;
    if (row0 >= P.m || col0 >= P.n) {
        return;
    }
    // Clamp reads at the ragged edges instead of branching in the inner loop; the extra rows
    // and columns are computed and then not stored.
    var a_row: array<u32, 4>;
    var b_col: array<u32, 4>;
    for (var r = 0u; r < 4u; r++) {
        a_row[r] = P.a_off + p * P.a_bs + min(row0 + r, P.m - 1u) * P.a_rs;
        b_col[r] = P.b_off + min(col0 + r, P.n - 1u) * P.b_cs;
    }

    // Copy p's perturbation, as (row, column) of B or column of bias; 0xffffffff when it lies
    // elsewhere.
    var pk = 0xffffffffu;
    var pcol = 0xffffffffu;
    var bias_col = 0xffffffffu;
    var delta = real(0.0);
    if (PERTURBED) {
        let flat = pert[2u * p];
        delta = select(hstep[0], -hstep[0], pert[2u * p + 1u] == 1u);
        if (flat >= P.b_off && flat < P.b_off + P.k * P.b_rs) {
            pk = (flat - P.b_off) / P.b_rs;
            pcol = (flat - P.b_off) % P.b_rs;
        }
        if ((P.flags & ADD_BIAS) != 0u && flat >= P.bias_off && flat < P.bias_off + P.n) {
            bias_col = flat - P.bias_off;
        }
    }

    var acc0 = vec4<real>();
    var acc1 = vec4<real>();
    var acc2 = vec4<real>();
    var acc3 = vec4<real>();
    for (var kk = 0u; kk < P.k; kk++) {
        let ka = kk * P.a_cs;
        let kb = kk * P.b_rs;
        var b = vec4<real>(B[b_col[0] + kb], B[b_col[1] + kb], B[b_col[2] + kb], B[b_col[3] + kb]);
        if (PERTURBED && kk == pk) {
            for (var c = 0u; c < 4u; c++) {
                if (col0 + c == pcol) {
                    b[c] = b[c] + delta;
                }
            }
        }
        acc0 += A[a_row[0] + ka] * b;
        acc1 += A[a_row[1] + ka] * b;
        acc2 += A[a_row[2] + ka] * b;
        acc3 += A[a_row[3] + ka] * b;
    }

    var bias_v = vec4<real>();
    if ((P.flags & ADD_BIAS) != 0u) {
        for (var c = 0u; c < 4u; c++) {
            let col = min(col0 + c, P.n - 1u);
            bias_v[c] = bias[P.bias_off + col];
            if (PERTURBED && col0 + c == bias_col) {
                bias_v[c] = bias_v[c] + delta;
            }
        }
    }
    var acc = array<vec4<real>, 4>(acc0, acc1, acc2, acc3);
    for (var r = 0u; r < 4u; r++) {
        let row = row0 + r;
        if (row >= P.m) {
            break;
        }
        for (var c = 0u; c < 4u; c++) {
            let col = col0 + c;
            if (col >= P.n) {
                break;
            }
            let at = P.c_off + p * P.c_bs + row * P.c_rs + col;
            C[at] = acc[r][c] + bias_v[c];
        }
    }
}

// db[j] = Σ_i dY[i, j]: the bias gradient, a column sum. Same Params: m rows of A summed per
// column into C; one invocation per column keeps the summation order fixed (deterministic).
@compute @workgroup_size(64)
fn column_sum(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    if (col >= P.n) {
        return;
    }
    var s = real(0.0);
    for (var i = 0u; i < P.m; i++) {
        s += A[P.a_off + i * P.a_rs + col * P.a_cs];
    }
    C[P.c_off + col] = s;
}
