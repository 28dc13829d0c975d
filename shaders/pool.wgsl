// Max and average pooling over size×size windows, stride s, no padding, NCHW:
//
//   max: y[p, i, oy, ox] = max_{ky, kx < size} x[p, i, oy·s + ky, ox·s + kx]      (i: one N·C plane)
//   avg: y[p, i, oy, ox] = Σ_{ky, kx < size} x[p, i, oy·s + ky, ox·s + kx] / size²
//
// Backward gathers: one invocation per input element sums over the windows that cover it, so
// overlapping windows (size > stride) need no atomics and the order of the sum is fixed. Rows
// and columns past the last window get a zero gradient.

#include "activations.wgsl"
#include "moved_channel.wgsl"

struct Params {
    nc: u32,        // N·C planes per copy
    h: u32, w: u32,
    size: u32, stride: u32,
    oh: u32, ow: u32,
    copies: u32,
    count: u32,     // invocations: output elements (forward) or input elements (backward), all copies
    per_copy: u32,  // N·C·OH·OW
    row_width: u32, // invocations per grid row (x workgroups · 64)
    channels: u32,  // C (one-channel routes only)
}

// Built into the perturbed-loss engine: count, per copy, the outputs whose arg-max differs from
// the unperturbed pass (base_argmax). Max-pooling is linear in x until the arg-max switches, so
// a central difference whose two sides pick different elements straddles a kink.
override COUNT_KINKS: bool = false;

// max_backward_rows built to go on through the activation layer below (fused into this one):
// dx = f′ applied to the gradient, f′ of kind ACT_KIND reading the tensor its forward saved.
override THROUGH: bool = false;
override ACT_KIND: u32 = 0u;

// Forward and backward bind different types at 2 and 3; no entry point uses both of a pair.
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<real>;                // forward
@group(0) @binding(1) var<storage, read> dy: array<real>;               // backward
@group(0) @binding(2) var<storage, read_write> y: array<real>;          // forward
@group(0) @binding(2) var<storage, read> argmax_in: array<u32>;         // max_backward
@group(0) @binding(3) var<storage, read_write> argmax: array<u32>;      // max_forward
@group(0) @binding(3) var<storage, read_write> dx: array<real>;         // backward
@group(0) @binding(4) var<storage, read> base_argmax: array<u32>;       // [N, C, OH, OW]
@group(0) @binding(4) var<storage, read> act_saved: array<real>;        // THROUGH: laid out as dx
@group(0) @binding(5) var<storage, read_write> flips: array<atomic<u32>>; // [copies]
@group(0) @binding(6) var<storage, read> moved: array<u32>;             // [copies]: moved channels

// Built for a one-channel route (moved_channel.wgsl): `count` covers the moved channel alone.
override ONE_CHANNEL: bool = false;

// The output index of forward invocation i: itself, or its element of the moved channel.
fn forward_output(i: u32) -> u32 {
    if (!ONE_CHANNEL) {
        return i;
    }
    let n = P.nc / P.channels;
    let plane = P.oh * P.ow;
    return moved_channel_index(i, n, P.channels, plane, moved[i / (n * plane)]);
}

fn index(gid: vec3<u32>) -> u32 {
    return gid.y * P.row_width + gid.x;
}

// First output row (or column) whose window covers input row i: the least o with o·s + size > i.
fn first_window(i: u32) -> u32 {
    if (i < P.size) {
        return 0u;
    }
    return (i - P.size + P.stride) / P.stride;
}

// y = max over the window; argmax = flat index of that element within the copy's input, the first
// in row-major order on ties (strict >, so an exact tie never counts as a switch).
//   x: [copies, N, C, H, W] -> y, argmax: [copies, N, C, OH, OW]
@compute @workgroup_size(64)
fn max_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (index(gid) >= P.count) {
        return;
    }
    let i = forward_output(index(gid));
    let copy = i / P.per_copy;
    let j = i % P.per_copy;
    let ox = j % P.ow;
    let oy = (j / P.ow) % P.oh;
    let plane = j / (P.ow * P.oh);
    let x_base = copy * P.nc * P.h * P.w;
    let start = (plane * P.h + oy * P.stride) * P.w + ox * P.stride;

    let best = window_max(x_base, start);
    y[i] = best.value;
    argmax[i] = best.at;
    if (COUNT_KINKS && best.at != base_argmax[j]) {
        atomicAdd(&flips[copy], 1u);
    }
}

// max_forward without kink counting, a row of windows an invocation: the same y and argmax, with a
// workgroup per 64 window rows instead of per 64 windows.
//   x: [copies, N, C, H, W] -> y, argmax: [copies, N, C, OH, OW]; count = copies·N·C·OH
@compute @workgroup_size(64)
fn max_forward_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i >= P.count) {
        return;
    }
    let oy = i % P.oh;
    let plane = i / P.oh; // over all copies
    let x_base = (plane / P.nc) * P.nc * P.h * P.w;
    let row_start = ((plane % P.nc) * P.h + oy * P.stride) * P.w;
    for (var ox = 0u; ox < P.ow; ox++) {
        let best = window_max(x_base, row_start + ox * P.stride);
        let o = i * P.ow + ox;
        y[o] = best.value;
        argmax[o] = best.at;
    }
}

struct WindowMax {
    value: real,
    // Its index within the copy (the first of equal maxima).
    at: u32,
}

// The largest x in the window whose top-left element is `start` within the copy at `x_base`.
fn window_max(x_base: u32, start: u32) -> WindowMax {
    var best = WindowMax(x[x_base + start], start);
    for (var ky = 0u; ky < P.size; ky++) {
        for (var kx = 0u; kx < P.size; kx++) {
            let at = start + ky * P.w + kx;
            let v = x[x_base + at];
            if (v > best.value) {
                best = WindowMax(v, at);
            }
        }
    }
    return best;
}

// dx[e] = Σ dy[o] over the windows o covering e whose argmax is e
//   dy, argmax: [copies, N, C, OH, OW] -> dx: [copies, N, C, H, W]
@compute @workgroup_size(64)
fn max_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i >= P.count) {
        return;
    }
    let in_copy = P.nc * P.h * P.w;
    let e = i % in_copy;
    let ix = e % P.w;
    let iy = (e / P.w) % P.h;
    let out_base = (i / in_copy) * P.per_copy + (e / (P.w * P.h)) * P.oh * P.ow;

    var acc = real(0.0);
    for (var oy = first_window(iy); oy <= iy / P.stride && oy < P.oh; oy++) {
        for (var ox = first_window(ix); ox <= ix / P.stride && ox < P.ow; ox++) {
            let o = out_base + oy * P.ow + ox;
            if (argmax_in[o] == e) {
                acc += dy[o];
            }
        }
    }
    dx[i] = acc;
}

// max_backward where windows do not overlap (size ≤ stride): no input element has more than one
// window to gather from, so each invocation writes the inputs of one row of windows instead,
// stride rows of W (the last row of windows also the rows below it that no window covers, the
// last window in a row the columns right of it): dy at each window's arg-max, 0 elsewhere. The
// same dx as max_backward, with a workgroup per 64 window rows, not per 64 inputs. With THROUGH,
// the arg-max's gradient goes on through f′ (a zero stays zero through every f′).
//   dy, argmax: [copies, N, C, OH, OW] -> dx: [copies, N, C, H, W]; count = copies·N·C·OH
@compute @workgroup_size(64)
fn max_backward_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i >= P.count) {
        return;
    }
    let oy = i % P.oh;
    let plane = i / P.oh; // over all copies
    let copy = plane / P.nc;
    let in_copy = P.nc * P.h * P.w;
    // This row of windows' input rows, and the first element of the plane in the copy's input.
    let y0 = oy * P.stride;
    let y1 = select(y0 + P.stride, P.h, oy + 1u == P.oh);
    let plane_base = (plane % P.nc) * P.h * P.w;
    let dx_base = copy * in_copy;
    for (var ox = 0u; ox < P.ow; ox++) {
        let o = i * P.ow + ox;
        let best = argmax_in[o];
        var g = dy[o];
        if (THROUGH) {
            g = backpropagate(ACT_KIND, g, act_saved[dx_base + best]);
        }
        let x0 = ox * P.stride;
        let x1 = select(x0 + P.stride, P.w, ox + 1u == P.ow);
        for (var iy = y0; iy < y1; iy++) {
            for (var ix = x0; ix < x1; ix++) {
                let e = plane_base + iy * P.w + ix;
                dx[dx_base + e] = select(real(0.0), g, e == best);
            }
        }
    }
}

// y = mean over the window      x: [copies, N, C, H, W] -> y: [copies, N, C, OH, OW]
@compute @workgroup_size(64)
fn avg_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (index(gid) >= P.count) {
        return;
    }
    let i = forward_output(index(gid));
    let copy = i / P.per_copy;
    let j = i % P.per_copy;
    let ox = j % P.ow;
    let oy = (j / P.ow) % P.oh;
    let plane = j / (P.ow * P.oh);
    let start = copy * P.nc * P.h * P.w + (plane * P.h + oy * P.stride) * P.w + ox * P.stride;

    var s = real(0.0);
    for (var ky = 0u; ky < P.size; ky++) {
        for (var kx = 0u; kx < P.size; kx++) {
            s += x[start + ky * P.w + kx];
        }
    }
    y[i] = s / real(P.size * P.size);
}

// dx[e] = Σ dy[o] / size² over the windows o covering e
//   dy: [copies, N, C, OH, OW] -> dx: [copies, N, C, H, W]
@compute @workgroup_size(64)
fn avg_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i >= P.count) {
        return;
    }
    let in_copy = P.nc * P.h * P.w;
    let e = i % in_copy;
    let ix = e % P.w;
    let iy = (e / P.w) % P.h;
    let out_base = (i / in_copy) * P.per_copy + (e / (P.w * P.h)) * P.oh * P.ow;

    var acc = real(0.0);
    for (var oy = first_window(iy); oy <= iy / P.stride && oy < P.oh; oy++) {
        for (var ox = first_window(ix); ox <= ix / P.stride && ox < P.ow; ox++) {
            acc += dy[out_base + oy * P.ow + ox];
        }
    }
    dx[i] = acc / real(P.size * P.size);
}
