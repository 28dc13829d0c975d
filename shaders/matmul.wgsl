// Batched, strided matrix product with a fused epilogue, the workhorse of Affine forward and
// backward:
//
//   C[p] = A[p] · B[p] (+ bias)   A[p]: [M, K], B[p]: [K, N], bias: [N], C[p]: [M, N]
//
// Element (i, k) of A[p] sits at a_off + p·a_bs + i·a_rs + k·a_cs (B[p] likewise, from b_off
// with b_bs, 0 where every p shares one B; C[p]'s (i, j) at c_off + p·c_bs + i·c_rs + j·c_cs),
// so transposes are just strides: Affine forward is X·W, dX = dY·Wᵀ, dW = Xᵀ·dY, all with this
// one kernel; a convolution is one product per sample, col[n]·W into the sample's NCHW output
// (c_rs = 1), and its weight gradient dY[n]·col[n].
//
// Epilogues, so that what a layer does right after its matmul costs no dispatch of its own:
//   ACT_FORWARD   C = x·W + b, and D = f(C) (the activation layer above, same indices);
//   ACT_BACKWARD  C = f′ applied to A·B (the activation layer below: backpropagate(kind, ·, aux));
//   SUM_ROW       also the column sums Σ_k B[k, j] into C[sum_off + j] (the bias gradient,
//                 dispatched as eight more block rows of the grid: one column an invocation, so
//                 that no invocation loops past lavapipe's 65,535 iterations at 32,768 rows;
//                 one copy only).
//
// Each invocation computes an 8×8 block of C in registers: on lavapipe every storage read goes
// lane by lane, so what counts is reads per multiply-add (16 per 64 here, 8 per 16 with 4×4
// blocks), and workgroup-shared tiles ran 6–10× slower (README, "Notes on lavapipe"). Where an
// operand runs contiguous along the block (A along k or along rows, B along columns) and is
// 4-aligned, the host sets A_VEC / B_VEC and the kernel reads it 4 elements at a time through
// the vec4 views A4 and B4 of the same buffers.
//
// The copy index p serves the full-forward numerical gradient, where every p is one
// perturbed copy of the parameters: B and bias are read as the shared base plus that copy's own
// one-element change, so no copy ever writes what another reads.

#include "activations.wgsl"

struct Params {
    m: u32, n: u32, k: u32, flags: u32,
    a_off: u32, a_rs: u32, a_cs: u32, a_bs: u32,
    b_off: u32, b_rs: u32, b_cs: u32, bias_off: u32,
    c_off: u32, c_rs: u32, c_bs: u32, act_kind: u32,
    sum_off: u32, b_bs: u32, c_cs: u32, copies: u32,
}

const ADD_BIAS: u32 = 1u;

// Set when built for the perturbed-loss engine: pert[2p] is copy p's flat parameter index,
// pert[2p+1] its sign (0: +h, 1: −h), and hstep[0] is h.
override PERTURBED: bool = false;
override ACT_FORWARD: bool = false;
override ACT_BACKWARD: bool = false;
override SUM_ROW: bool = false;
// How A is read: 0 element by element; 1 four k at a time (a_cs = 1); 2 four rows at a time
// (a_rs = 1). Offsets and the other strides are multiples of 4 whenever it is not 0.
override A_VEC: u32 = 0u;
// B read four columns at a time (b_cs = 1; offset, b_rs and b_bs multiples of 4; b_rs at least N
// rounded up to 4, so that a quad starting below N lies in its row).
override B_VEC: bool = false;
// Invocations a workgroup. The blocks of C are numbered row by row, copy after copy (as many
// more block rows as SUM_ROW asks for at the end of each), and dealt out in that order, so that
// no lane idles past a ragged edge or a small copy: on lavapipe an idle lane costs what a busy
// one does.
override WG_SIZE: u32 = 64u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> A: array<real>;
@group(0) @binding(2) var<storage, read> B: array<real>;
@group(0) @binding(3) var<storage, read> bias: array<real>;
@group(0) @binding(4) var<storage, read_write> C: array<real>;
@group(0) @binding(5) var<storage, read> pert: array<u32>;
@group(0) @binding(6) var<storage, read> hstep: array<real>;
@group(0) @binding(7) var<storage, read> A4: array<vec4<real>>;   // A, four at a time
@group(0) @binding(8) var<storage, read> B4: array<vec4<real>>;   // B, four at a time
@group(0) @binding(9) var<storage, read> aux: array<real>;        // ACT_BACKWARD: f′'s saved tensor, laid out as C
@group(0) @binding(10) var<storage, read_write> D: array<real>;   // ACT_FORWARD: f(C)

@compute @workgroup_size(WG_SIZE)
fn matmul(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    // Past 65,535 workgroups the grid folds into rows (grid y).
    let linear = (wid.y * groups.x + wid.x) * WG_SIZE + lane;
    let col_blocks = (P.n + 7u) / 8u;
    let copy_blocks = col_blocks * ((P.m + 7u) / 8u + select(0u, 8u, SUM_ROW));
    let p = linear / copy_blocks;
    if (p >= P.copies) {
        return;
    }
    let block = linear % copy_blocks;
    let block_row = block / col_blocks;
    let row0 = block_row * 8u;
    let col0 = (block % col_blocks) * 8u;
    if (SUM_ROW && row0 >= P.m) {
        // The eight block rows past the last: block row j sums column col0 + j of B.
        let j = block_row - (P.m + 7u) / 8u;
        if (j < 8u) {
            column_sum(col0 + j);
        }
        return;
    }
    if (row0 >= P.m || col0 >= P.n) {
        return;
    }
    // Clamp reads at the ragged edges instead of branching in the inner loop; the extra rows
    // and columns are computed and then not stored.
    let a_base = P.a_off + p * P.a_bs;
    let b_base = P.b_off + p * P.b_bs;
    var a_row: array<u32, 8>;
    var b_col: array<u32, 8>;
    for (var r = 0u; r < 8u; r++) {
        a_row[r] = a_base + min(row0 + r, P.m - 1u) * P.a_rs;
        b_col[r] = b_base + min(col0 + r, P.n - 1u) * P.b_cs;
    }
    let a0 = a_row[0]; let a1 = a_row[1]; let a2 = a_row[2]; let a3 = a_row[3];
    let a4 = a_row[4]; let a5 = a_row[5]; let a6 = a_row[6]; let a7 = a_row[7];
    let b0 = b_col[0]; let b1 = b_col[1]; let b2 = b_col[2]; let b3 = b_col[3];
    let b4 = b_col[4]; let b5 = b_col[5]; let b6 = b_col[6]; let b7 = b_col[7];
    // B_VEC: the two column quads (the second clamped onto the first past the edge; a quad is
    // all in or all out of N rounded up to 4, and the columns past N are not stored).
    let bq_lo = (b_base + col0) / 4u;
    let bq_hi = (b_base + min(col0 + 4u, (P.n + 3u) / 4u * 4u - 4u)) / 4u;
    // A_VEC 2: the two row quads.
    let aq_lo = (a_base + row0) / 4u;
    let aq_hi = (a_base + min(row0 + 4u, P.m - 4u)) / 4u;

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

    var l0 = vec4<real>(); var h0 = vec4<real>();
    var l1 = vec4<real>(); var h1 = vec4<real>();
    var l2 = vec4<real>(); var h2 = vec4<real>();
    var l3 = vec4<real>(); var h3 = vec4<real>();
    var l4 = vec4<real>(); var h4 = vec4<real>();
    var l5 = vec4<real>(); var h5 = vec4<real>();
    var l6 = vec4<real>(); var h6 = vec4<real>();
    var l7 = vec4<real>(); var h7 = vec4<real>();
    // Four k at a time: an 8×4 block of A (q_r: row r at k … k+3), then per k a row of B.
    let k_quads = select(P.k / 4u, 0u, A_VEC == 0u);
    for (var kq = 0u; kq < 4u * k_quads; kq += 4u) {
        var q0: vec4<real>; var q1: vec4<real>; var q2: vec4<real>; var q3: vec4<real>;
        var q4: vec4<real>; var q5: vec4<real>; var q6: vec4<real>; var q7: vec4<real>;
        if (A_VEC == 1u) {
            q0 = A4[(a0 + kq) / 4u]; q1 = A4[(a1 + kq) / 4u];
            q2 = A4[(a2 + kq) / 4u]; q3 = A4[(a3 + kq) / 4u];
            q4 = A4[(a4 + kq) / 4u]; q5 = A4[(a5 + kq) / 4u];
            q6 = A4[(a6 + kq) / 4u]; q7 = A4[(a7 + kq) / 4u];
        } else {
            // Four rows a read, one read per k: transpose into rows (free: a vec4 is four
            // registers to the compiler).
            let step = kq * P.a_cs / 4u;
            let c0l = A4[aq_lo + step]; let c0h = A4[aq_hi + step];
            let c1l = A4[aq_lo + step + P.a_cs / 4u]; let c1h = A4[aq_hi + step + P.a_cs / 4u];
            let c2l = A4[aq_lo + step + P.a_cs / 2u]; let c2h = A4[aq_hi + step + P.a_cs / 2u];
            let c3l = A4[aq_lo + step + 3u * P.a_cs / 4u];
            let c3h = A4[aq_hi + step + 3u * P.a_cs / 4u];
            q0 = vec4(c0l.x, c1l.x, c2l.x, c3l.x); q1 = vec4(c0l.y, c1l.y, c2l.y, c3l.y);
            q2 = vec4(c0l.z, c1l.z, c2l.z, c3l.z); q3 = vec4(c0l.w, c1l.w, c2l.w, c3l.w);
            q4 = vec4(c0h.x, c1h.x, c2h.x, c3h.x); q5 = vec4(c0h.y, c1h.y, c2h.y, c3h.y);
            q6 = vec4(c0h.z, c1h.z, c2h.z, c3h.z); q7 = vec4(c0h.w, c1h.w, c2h.w, c3h.w);
        }
        for (var j = 0u; j < 4u; j++) {
            let kk = kq + j;
            let kb = kk * P.b_rs;
            var bl: vec4<real>;
            var bh: vec4<real>;
            if (B_VEC) {
                bl = B4[bq_lo + kb / 4u];
                bh = B4[bq_hi + kb / 4u];
            } else {
                bl = vec4<real>(B[b0 + kb], B[b1 + kb], B[b2 + kb], B[b3 + kb]);
                bh = vec4<real>(B[b4 + kb], B[b5 + kb], B[b6 + kb], B[b7 + kb]);
            }
            if (PERTURBED && kk == pk) {
                for (var c = 0u; c < 4u; c++) {
                    if (col0 + c == pcol) {
                        bl[c] = bl[c] + delta;
                    }
                    if (col0 + 4u + c == pcol) {
                        bh[c] = bh[c] + delta;
                    }
                }
            }
            l0 += q0[j] * bl; h0 += q0[j] * bh;
            l1 += q1[j] * bl; h1 += q1[j] * bh;
            l2 += q2[j] * bl; h2 += q2[j] * bh;
            l3 += q3[j] * bl; h3 += q3[j] * bh;
            l4 += q4[j] * bl; h4 += q4[j] * bh;
            l5 += q5[j] * bl; h5 += q5[j] * bh;
            l6 += q6[j] * bl; h6 += q6[j] * bh;
            l7 += q7[j] * bl; h7 += q7[j] * bh;
        }
    }
    // The k left over (all of them when A is read element by element).
    for (var kk = 4u * k_quads; kk < P.k; kk++) {
        let ka = kk * P.a_cs;
        let kb = kk * P.b_rs;
        var bl = vec4<real>(B[b0 + kb], B[b1 + kb], B[b2 + kb], B[b3 + kb]);
        var bh = vec4<real>(B[b4 + kb], B[b5 + kb], B[b6 + kb], B[b7 + kb]);
        if (PERTURBED && kk == pk) {
            for (var c = 0u; c < 4u; c++) {
                if (col0 + c == pcol) {
                    bl[c] = bl[c] + delta;
                }
                if (col0 + 4u + c == pcol) {
                    bh[c] = bh[c] + delta;
                }
            }
        }
        var a = A[a0 + ka]; l0 += a * bl; h0 += a * bh;
        a = A[a1 + ka]; l1 += a * bl; h1 += a * bh;
        a = A[a2 + ka]; l2 += a * bl; h2 += a * bh;
        a = A[a3 + ka]; l3 += a * bl; h3 += a * bh;
        a = A[a4 + ka]; l4 += a * bl; h4 += a * bh;
        a = A[a5 + ka]; l5 += a * bl; h5 += a * bh;
        a = A[a6 + ka]; l6 += a * bl; h6 += a * bh;
        a = A[a7 + ka]; l7 += a * bl; h7 += a * bh;
    }

    var bias_l = vec4<real>();
    var bias_h = vec4<real>();
    if ((P.flags & ADD_BIAS) != 0u) {
        for (var c = 0u; c < 4u; c++) {
            bias_l[c] = bias[P.bias_off + min(col0 + c, P.n - 1u)];
            bias_h[c] = bias[P.bias_off + min(col0 + 4u + c, P.n - 1u)];
            if (PERTURBED && col0 + c == bias_col) {
                bias_l[c] = bias_l[c] + delta;
            }
            if (PERTURBED && col0 + 4u + c == bias_col) {
                bias_h[c] = bias_h[c] + delta;
            }
        }
    }
    // Row by row, each named: an array of the rows indexed in a loop may live in memory.
    let c_base = P.c_off + p * P.c_bs + col0 * P.c_cs;
    let cols = min(P.n - col0, 8u);
    store_row(c_base, row0, cols, l0 + bias_l, h0 + bias_h);
    store_row(c_base, row0 + 1u, cols, l1 + bias_l, h1 + bias_h);
    store_row(c_base, row0 + 2u, cols, l2 + bias_l, h2 + bias_h);
    store_row(c_base, row0 + 3u, cols, l3 + bias_l, h3 + bias_h);
    store_row(c_base, row0 + 4u, cols, l4 + bias_l, h4 + bias_h);
    store_row(c_base, row0 + 5u, cols, l5 + bias_l, h5 + bias_h);
    store_row(c_base, row0 + 6u, cols, l6 + bias_l, h6 + bias_h);
    store_row(c_base, row0 + 7u, cols, l7 + bias_l, h7 + bias_h);
}

// Row `row` of the block (nothing past M), its first `cols` columns (8 but at the right edge). A
// loop over the columns compiles to a fraction of eight named stores (each store inlines the
// epilogue) and ran as fast.
fn store_row(c_base: u32, row: u32, cols: u32, lo: vec4<real>, hi: vec4<real>) {
    if (row >= P.m) {
        return;
    }
    let at = c_base + row * P.c_rs;
    let cs = P.c_cs;
    for (var c = 0u; c < cols; c++) {
        store(at + c * cs, select(hi[c & 3u], lo[c & 3u], c < 4u));
    }
}

// C[at] = v, through the epilogue.
fn store(at: u32, v: real) {
    if (ACT_BACKWARD) {
        C[at] = backpropagate(P.act_kind, v, aux[at]);
        return;
    }
    C[at] = v;
    if (ACT_FORWARD) {
        D[at] = activate(P.act_kind, v);
    }
}

// C[sum_off + col] = Σ_k B[k, col], summed in k order.
fn column_sum(col: u32) {
    if (col >= P.n) {
        return;
    }
    var s = real(0.0);
    for (var kk = 0u; kk < P.k; kk++) {
        s += B[P.b_off + kk * P.b_rs + col * P.b_cs];
    }
    C[P.sum_off + col] = s;
}
