// Direct 2-D convolution with stride and zero padding, NCHW, forward and backward:
//
//   y[p, n, f, oy, ox] = b[f] + Σ_{c, ky, kx} x[p, n, c, oy·s − pad + ky, ox·s − pad + kx] · W[f, c, ky, kx]
//
// Training and evaluation unfold the input instead (`im2col` below, then matmul.wgsl), which
// measured much faster on lavapipe (benches/conv_layout.rs), and take the weight gradient from
// the unfolded input too. The direct forward serves the perturbed-loss engine, which runs one
// forward per parameter copy: an im2col matrix is KH·KW times the input, and would be that much
// larger again per copy.
//
// W: [F, C, KH, KW] and b: [F] are read from the flat parameter arena theta at w_off and b_off,
// so that, as in matmul.wgsl, copy p can read them as the shared base plus its own one-element
// change and no copy ever writes what another reads. No element is written by two invocations
// and every sum is gathered in a fixed order: no atomics, so results are deterministic.

#include "moved_channel.wgsl"

struct Params {
    n: u32, c: u32, h: u32, w: u32,
    f: u32, kh: u32, kw: u32, stride: u32,
    pad: u32, oh: u32, ow: u32, copies: u32,
    x_copy_stride: u32, // elements between the inputs of two copies; 0 when all share one input
    w_off: u32, b_off: u32,
    row_width: u32,     // invocations per grid row (x workgroups · 64)
    // conv_backward_params sums samples [n_begin, n_end) only, adding to what earlier
    // dispatches wrote when n_begin > 0: lavapipe stops an invocation after 65,535 loop
    // iterations, so a large N·OH·OW is split over several dispatches.
    n_begin: u32, n_end: u32,
    ld: u32,            // row stride of the unfolded input (im2col, conv_weight_sums)
    _pad1: u32,
}

// Set when built for the perturbed-loss engine: pert[2p] is copy p's flat parameter index,
// pert[2p+1] its sign (0: +h, 1: −h), and hstep[0] is h.
override PERTURBED: bool = false;

// Built for a one-channel route (moved_channel.wgsl): conv_forward computes each copy's moved
// filter alone, its `copies·N·OH·OW` invocations given by the host.
override ONE_CHANNEL: bool = false;

// Built for the start of an incremental route, on the shared input: each output is the
// unperturbed one (base_y) plus the one product a copy's change of W moves, or its change of b.
override FROM_BASE: bool = false;

// Each entry point binds only some of these; the ones sharing a number are never used by the
// same entry point.
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<real>;          // conv_forward
@group(0) @binding(1) var<storage, read> dy: array<real>;         // backward
@group(0) @binding(1) var<storage, read> partial: array<real>;    // conv_weight_sums
@group(0) @binding(2) var<storage, read> theta: array<real>;      // conv_forward, conv_backward_input
@group(0) @binding(2) var<storage, read> x_saved: array<real>;    // conv_backward_params
@group(0) @binding(3) var<storage, read_write> y: array<real>;    // conv_forward
@group(0) @binding(3) var<storage, read_write> dx: array<real>;   // conv_backward_input
@group(0) @binding(3) var<storage, read_write> grads: array<real>; // conv_backward_params
@group(0) @binding(4) var<storage, read> pert: array<u32>;
@group(0) @binding(5) var<storage, read> hstep: array<real>;
@group(0) @binding(6) var<storage, read> moved: array<u32>;      // [copies]: moved filters
@group(0) @binding(7) var<storage, read> base_y: array<real>;    // [N, F, OH, OW] (FROM_BASE)

fn index(gid: vec3<u32>) -> u32 {
    return gid.y * P.row_width + gid.x;
}

// y = b + W ∗ x     x: [copies|1, N, C, H, W], W: [F, C, KH, KW], b: [F] -> y: [copies, N, F, OH, OW]
@compute @workgroup_size(64)
fn conv_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    var i = index(gid);
    let per_copy = P.n * P.f * P.oh * P.ow;
    let plane = P.oh * P.ow;
    if (i >= P.copies * select(per_copy, P.n * plane, ONE_CHANNEL)) {
        return;
    }
    if (ONE_CHANNEL) {
        i = moved_channel_index(i, P.n, P.f, plane, moved[i / (P.n * plane)]);
    }
    let p = i / per_copy;
    let ox = i % P.ow;
    let oy = (i / P.ow) % P.oh;
    let fo = (i / (P.ow * P.oh)) % P.f;
    let n = (i % per_copy) / (P.ow * P.oh * P.f);

    // Copy p's perturbation, as an index into this layer's W (0xffffffff when it lies
    // elsewhere) or as a change of b[fo].
    var pw = 0xffffffffu;
    var delta = real(0.0);
    var bias = theta[P.b_off + fo];
    var bias_change = real(0.0);
    if (PERTURBED) {
        let flat = pert[2u * p];
        delta = select(hstep[0], -hstep[0], pert[2u * p + 1u] == 1u);
        if (flat >= P.w_off && flat < P.w_off + P.f * P.c * P.kh * P.kw) {
            pw = flat - P.w_off;
        }
        if (flat == P.b_off + fo) {
            bias = bias + delta;
            bias_change = delta;
        }
    }

    let x_base = p * P.x_copy_stride + n * P.c * P.h * P.w;
    if (FROM_BASE) {
        var out = base_y[i % per_copy] + bias_change;
        let taps = P.c * P.kh * P.kw;
        if (pw != 0xffffffffu && pw / taps == fo) {
            let c = (pw % taps) / (P.kh * P.kw);
            let iy = oy * P.stride + (pw / P.kw) % P.kh - P.pad;
            let ix = ox * P.stride + pw % P.kw - P.pad;
            if (iy < P.h && ix < P.w) {
                out += delta * x[x_base + (c * P.h + iy) * P.w + ix];
            }
        }
        y[i] = out;
        return;
    }
    var acc = bias;
    let w_base = fo * P.c * P.kh * P.kw;
    for (var c = 0u; c < P.c; c++) {
        for (var ky = 0u; ky < P.kh; ky++) {
            // u32 wraps below zero, so this one compare rejects the padding on both sides.
            let iy = oy * P.stride + ky - P.pad;
            if (iy >= P.h) {
                continue;
            }
            for (var kx = 0u; kx < P.kw; kx++) {
                let ix = ox * P.stride + kx - P.pad;
                if (ix >= P.w) {
                    continue;
                }
                let wi = w_base + (c * P.kh + ky) * P.kw + kx;
                var wv = theta[P.w_off + wi];
                if (PERTURBED && wi == pw) {
                    wv = wv + delta;
                }
                acc += x[x_base + (c * P.h + iy) * P.w + ix] * wv;
            }
        }
    }
    y[i] = acc;
}

// dx[n, c, iy, ix] = Σ_{f, ky, kx} dy[n, f, oy, ox] · W[f, c, ky, kx]  over oy·s − pad + ky = iy,
// ox·s − pad + kx = ix        dy: [N, F, OH, OW], W: [F, C, KH, KW] -> dx: [N, C, H, W]
@compute @workgroup_size(64)
fn conv_backward_input(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i >= P.n * P.c * P.h * P.w) {
        return;
    }
    let ix = i % P.w;
    let iy = (i / P.w) % P.h;
    let c = (i / (P.w * P.h)) % P.c;
    let n = i / (P.w * P.h * P.c);

    // Only the taps ky ≡ iy + pad (mod s) come from a whole output row; starting there and
    // stepping by s visits exactly those, so no tap is tested for divisibility.
    let ty = iy + P.pad;
    let tx = ix + P.pad;
    var acc = real(0.0);
    for (var f = 0u; f < P.f; f++) {
        let dy_base = (n * P.f + f) * P.oh * P.ow;
        let w_base = P.w_off + (f * P.c + c) * P.kh * P.kw;
        for (var ky = ty % P.stride; ky < P.kh && ky <= ty; ky += P.stride) {
            let oy = (ty - ky) / P.stride;
            if (oy >= P.oh) {
                continue;
            }
            for (var kx = tx % P.stride; kx < P.kw && kx <= tx; kx += P.stride) {
                let ox = (tx - kx) / P.stride;
                if (ox >= P.ow) {
                    continue;
                }
                acc += dy[dy_base + oy * P.ow + ox] * theta[w_base + ky * P.kw + kx];
            }
        }
    }
    dx[i] = acc;
}

// dW[f, c, ky, kx] = Σ_{n, oy, ox} dy[n, f, oy, ox] · x[n, c, oy·s − pad + ky, ox·s − pad + kx]
// db[f]            = Σ_{n, oy, ox} dy[n, f, oy, ox]
//   dy: [N, F, OH, OW], x: [N, C, H, W] -> grads[w_off..]: [F, C, KH, KW], grads[b_off..]: [F]
// Invocations 0 .. F·C·KH·KW own one weight each, the F after them one bias each. The dispatch
// with n_begin = 0 writes with =, so the arena needs no clearing first; later ones add.
// Training takes its weight gradient from the unfolded input instead (a matmul per sample, then
// conv_weight_sums below); this serves a forward that did not unfold.
@compute @workgroup_size(64)
fn conv_backward_params(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    let w_size = P.f * P.c * P.kh * P.kw;
    if (i >= w_size + P.f) {
        return;
    }
    let plane = P.oh * P.ow;
    if (i >= w_size) {
        let f = i - w_size;
        var s = real(0.0);
        for (var n = P.n_begin; n < P.n_end; n++) {
            let base = (n * P.f + f) * plane;
            for (var j = 0u; j < plane; j++) {
                s += dy[base + j];
            }
        }
        if (P.n_begin > 0u) {
            s += grads[P.b_off + f];
        }
        grads[P.b_off + f] = s;
        return;
    }
    let kx = i % P.kw;
    let ky = (i / P.kw) % P.kh;
    let c = (i / (P.kw * P.kh)) % P.c;
    let f = i / (P.kw * P.kh * P.c);

    var acc = real(0.0);
    for (var n = P.n_begin; n < P.n_end; n++) {
        let dy_base = (n * P.f + f) * plane;
        let x_base = (n * P.c + c) * P.h * P.w;
        for (var oy = 0u; oy < P.oh; oy++) {
            let iy = oy * P.stride + ky - P.pad; // wraps below zero, as in conv_forward
            if (iy >= P.h) {
                continue;
            }
            for (var ox = 0u; ox < P.ow; ox++) {
                let ix = ox * P.stride + kx - P.pad;
                if (ix >= P.w) {
                    continue;
                }
                acc += dy[dy_base + oy * P.ow + ox] * x_saved[x_base + iy * P.w + ix];
            }
        }
    }
    if (P.n_begin > 0u) {
        acc += grads[P.w_off + i];
    }
    grads[P.w_off + i] = acc;
}

// The training and evaluation forward pass runs as im2col + pack_filters + matmul, much faster
// than conv_forward for SimpleConvNet's layer on lavapipe (benches/conv_layout.rs).
// conv_forward stays for the perturbed copies, which read their own change of W as they go.
//
// col[(n·OH + oy)·OW + ox, (c·KH + ky)·KW + kx] = x[n, c, oy·s − pad + ky, ox·s − pad + kx],
// then in each row a 1 at column C·KH·KW (the weight gradient's matmul multiplies dy by it into
// the bias gradient) and zeros up to the row stride ld, a multiple of 4 (vec4 reads of rows).
//   x (at binding 1): [N, C, H, W] -> col (at binding 3): [N·OH·OW, ld]; grid(N·OH·OW·C)
// One invocation per row and channel, its KH·KW taps in a loop: no division per element, and a
// workgroup for 64 of them, not for 64 elements.
@compute @workgroup_size(64)
fn im2col(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i >= P.n * P.oh * P.ow * P.c) {
        return;
    }
    let c = i % P.c;
    let row = i / P.c;
    let ox = row % P.ow;
    let oy = (row / P.ow) % P.oh;
    let n = row / (P.ow * P.oh);
    let x_base = (n * P.c + c) * P.h * P.w;
    var at = row * P.ld + c * P.kh * P.kw;
    for (var ky = 0u; ky < P.kh; ky++) {
        let iy = oy * P.stride + ky - P.pad; // wraps below zero: out of range either way
        for (var kx = 0u; kx < P.kw; kx++) {
            let ix = ox * P.stride + kx - P.pad;
            var v = real(0.0);
            if (iy < P.h && ix < P.w) {
                v = x[x_base + iy * P.w + ix];
            }
            y[at] = v;
            at++;
        }
    }
    if (c + 1u == P.c) {
        y[at] = real(1.0);
        for (at++; at < (row + 1u) * P.ld; at++) {
            y[at] = real(0.0);
        }
    }
}

// The weight gradient's matmul leaves one product per sample, partial[n] = dy[n] · col[n]
// ([F, OH·OW] · [OH·OW, ld]): its columns below C·KH·KW are sample n's dW, the one at C·KH·KW
// (col's ones) its db. Summed here over the samples in order, so every run adds alike.
//   partial (at binding 1): [N, F, ld] -> grads[w_off..]: [F, C, KH, KW], grads[b_off..]: [F]
//   (binding 3); grid(F·(C·KH·KW + 1))
@compute @workgroup_size(64)
fn conv_weight_sums(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    let ckk = P.c * P.kh * P.kw;
    if (i >= P.f * (ckk + 1u)) {
        return;
    }
    let f = i / (ckk + 1u);
    let j = i % (ckk + 1u);
    var s = real(0.0);
    for (var n = 0u; n < P.n; n++) {
        s += partial[(n * P.f + f) * P.ld + j];
    }
    if (j == ckk) {
        grads[P.b_off + f] = s;
    } else {
        grads[P.w_off + f * ckk + j] = s;
    }
}

// The filters as the unfolded forward's matmul reads them, col[n] [OH·OW, ld] · packed [ld, F4]:
// packed[k, f] = W[f, k] for k < C·KH·KW, b[f] at k = C·KH·KW (against col's ones), 0 in the
// rows after it and in the columns from F up to F4, F rounded up to 4: whole rows of quads (vec4
// reads), and the bias added with no epilogue.
//   theta (at binding 2) -> packed (at binding 3): [ld, F4]; grid(ld·F4)
@compute @workgroup_size(64)
fn pack_filters(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    let f4 = (P.f + 3u) / 4u * 4u;
    if (i >= P.ld * f4) {
        return;
    }
    let f = i % f4;
    let k = i / f4;
    let ckk = P.c * P.kh * P.kw;
    var v = real(0.0);
    if (f < P.f && k < ckk) {
        v = theta[P.w_off + f * ckk + k];
    } else if (f < P.f && k == ckk) {
        v = theta[P.b_off + f];
    }
    y[i] = v;
}
