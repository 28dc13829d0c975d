//! The convolution and pooling kernels against the f64 CPU reference, at sizes chosen to catch
//! index slips: odd and non-square images, padding 0–2, strides 1–3, 1×1 to 5×5 kernels, one or
//! several channels and filters, batch 1 and 3. Then the perturbed-copy forward and max-pooling's
//! kink count, which the numerical-gradient engine relies on.

mod common;

use bytemuck::{Pod, Zeroable};
use common::{ctx, precisions};
use wgrad::gpu::buffers::uniform;
use wgrad::gpu::kernel::{self, grid, Binding};
use wgrad::gpu::{GpuBuffer, Kernel, Precision};
use wgrad::nn::layers::{conv, pool};
use wgrad::reference::conv::{self as r, conv_out};
use Binding::{Read, ReadWrite, Uniform};

// The forward tables end in `moved`, which only one-channel routes read, and the convolution's
// in `base_y`, which only the start of an incremental route reads.
const CONV_BINDINGS: [Binding; 8] = [Uniform, Read, Read, ReadWrite, Read, Read, Read, Read];
const CONV_BACKWARD_BINDINGS: [Binding; 4] = [Uniform, Read, Read, ReadWrite];
const POOL_BINDINGS: [Binding; 7] = [Uniform, Read, ReadWrite, ReadWrite, Read, ReadWrite, Read];
// The backward table ends in what max_backward_rows reads through the activation below.
const POOL_BACKWARD_BINDINGS: [Binding; 5] = [Uniform, Read, Read, ReadWrite, Read];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ConvParams {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    f: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    oh: u32,
    ow: u32,
    copies: u32,
    x_copy_stride: u32,
    w_off: u32,
    b_off: u32,
    row_width: u32,
    n_begin: u32,
    n_end: u32,
    _pad0: u32,
    _pad1: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PoolParams {
    nc: u32,
    h: u32,
    w: u32,
    size: u32,
    stride: u32,
    oh: u32,
    ow: u32,
    copies: u32,
    count: u32,
    per_copy: u32,
    row_width: u32,
    channels: u32,
}

/// Deterministic values in [−1, 1) with 24-bit mantissas, exact in f32, so the f32 kernels see
/// exactly the inputs the f64 reference does (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f64 / (1u64 << 23) as f64 - 1.0
    }

    fn vec(&mut self, len: usize) -> Vec<f64> {
        (0..len).map(|_| self.next()).collect()
    }
}

/// The grid for `count` invocations: kernel::grid's, or (`narrow`) one folded two workgroups a
/// row, so small tests exercise the 2-D unfolding that only huge tensors reach otherwise.
fn grid_for(count: usize, narrow: bool) -> ([u32; 3], u32) {
    if narrow {
        let groups = count.div_ceil(kernel::ELEMENTWISE_GROUP).max(1);
        (
            [2, groups.div_ceil(2) as u32, 1],
            (2 * kernel::ELEMENTWISE_GROUP) as u32,
        )
    } else {
        grid(count)
    }
}

fn tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => 1e-5,
        Precision::F64 => 1e-12,
    }
}

/// Max |got − want| must stay within the precision's tolerance times the largest |want|.
fn assert_close(what: &str, got: &[f64], want: &[f64], precision: Precision) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    // (A NaN would slip through the max below.)
    if let Some(at) = got.iter().position(|v| !v.is_finite()) {
        panic!("{what} ({precision}): got {} at {at}", got[at]);
    }
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let (at, err) = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .enumerate()
        .fold(
            (0, 0.0),
            |best, (i, e)| if e > best.1 { (i, e) } else { best },
        );
    let tol = tolerance(precision) * scale;
    assert!(
        err <= tol,
        "{what} ({precision}): max |gpu − ref| = {err:e} at {at} (got {}, want {}), tolerance {tol:e}",
        got[at],
        want[at]
    );
}

// ---------------------------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Conv {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    f: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
}

impl Conv {
    #[allow(clippy::too_many_arguments)]
    const fn new(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        f: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        pad: usize,
    ) -> Conv {
        Conv {
            n,
            c,
            h,
            w,
            f,
            kh,
            kw,
            stride,
            pad,
        }
    }
    fn oh(&self) -> usize {
        conv_out(self.h, self.kh, self.stride, self.pad)
    }
    fn ow(&self) -> usize {
        conv_out(self.w, self.kw, self.stride, self.pad)
    }
    fn x_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    fn w_len(&self) -> usize {
        self.f * self.c * self.kh * self.kw
    }
    fn y_len(&self) -> usize {
        self.n * self.f * self.oh() * self.ow()
    }

    fn forward(&self, x: &[f64], wt: &[f64], b: &[f64]) -> Vec<f64> {
        let s = self;
        r::conv2d_forward(
            x, wt, b, s.n, s.c, s.h, s.w, s.f, s.kh, s.kw, s.stride, s.pad,
        )
    }

    fn backward(&self, x: &[f64], wt: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let s = self;
        r::conv2d_backward(
            x, wt, dy, s.n, s.c, s.h, s.w, s.f, s.kh, s.kw, s.stride, s.pad,
        )
    }

    fn params(
        &self,
        arena: &Arena,
        copies: usize,
        x_copy_stride: usize,
        row_width: u32,
    ) -> ConvParams {
        ConvParams {
            n: self.n as u32,
            c: self.c as u32,
            h: self.h as u32,
            w: self.w as u32,
            f: self.f as u32,
            kh: self.kh as u32,
            kw: self.kw as u32,
            stride: self.stride as u32,
            pad: self.pad as u32,
            oh: self.oh() as u32,
            ow: self.ow() as u32,
            copies: copies as u32,
            x_copy_stride: x_copy_stride as u32,
            w_off: arena.w_off as u32,
            b_off: arena.b_off as u32,
            row_width,
            n_begin: 0,
            n_end: self.n as u32,
            _pad0: 0,
            _pad1: 0,
        }
    }
}

/// A parameter arena with this layer's W and b amid other values (and a gap between them), so
/// any offset slip reads or writes the wrong thing.
struct Arena {
    theta: Vec<f64>,
    w_off: usize,
    b_off: usize,
    w_len: usize,
    f: usize,
}

impl Arena {
    fn new(conv: &Conv, rng: &mut Rng) -> Arena {
        let (w_off, w_len, f) = (3, conv.w_len(), conv.f);
        let b_off = w_off + w_len + 2;
        Arena {
            theta: rng.vec(b_off + f + 4),
            w_off,
            b_off,
            w_len,
            f,
        }
    }
    fn wt(&self) -> &[f64] {
        &self.theta[self.w_off..self.w_off + self.w_len]
    }
    fn b(&self) -> &[f64] {
        &self.theta[self.b_off..self.b_off + self.f]
    }
    fn contains(&self, i: usize) -> bool {
        (self.w_off..self.w_off + self.w_len).contains(&i)
            || (self.b_off..self.b_off + self.f).contains(&i)
    }
}

const CONV_CASES: [Conv; 10] = [
    Conv::new(1, 1, 7, 5, 1, 3, 3, 1, 1),
    Conv::new(3, 3, 9, 9, 4, 3, 3, 2, 1),
    Conv::new(1, 1, 28, 28, 30, 5, 5, 1, 2),
    Conv::new(3, 3, 7, 5, 4, 1, 1, 1, 0),
    Conv::new(3, 1, 28, 28, 4, 5, 5, 2, 0),
    Conv::new(1, 3, 9, 9, 30, 5, 5, 2, 2),
    Conv::new(3, 3, 7, 5, 4, 3, 3, 2, 0),
    Conv::new(1, 2, 7, 7, 2, 2, 2, 3, 0),
    Conv::new(3, 2, 8, 6, 4, 3, 5, 1, 2),
    Conv::new(1, 1, 5, 5, 1, 5, 5, 1, 0),
];

fn conv_kernel(precision: Precision, entry: &str, perturbed: bool) -> Kernel {
    let (bindings, constants): (&[Binding], &[(&str, f64)]) = match (entry, perturbed) {
        ("conv_forward", false) => (&CONV_BINDINGS, &[]),
        ("conv_forward", true) => (&CONV_BINDINGS, &[("PERTURBED", 1.0)]),
        _ => (&CONV_BACKWARD_BINDINGS, &[]),
    };
    Kernel::new(ctx(), conv::SHADER, entry, precision, bindings, constants)
}

/// Runs conv_forward over `copies` copies; `pert` is (flat index, sign) per copy and h for the
/// PERTURBED build, None for the plain one.
#[allow(clippy::too_many_arguments)]
fn gpu_conv_forward(
    kernel: &Kernel,
    precision: Precision,
    conv: &Conv,
    arena: &Arena,
    x: &[f64],
    copies: usize,
    x_copy_stride: usize,
    pert: Option<(&[u32], f64)>,
    narrow: bool,
) -> Vec<f64> {
    let ctx = ctx();
    let count = copies * conv.y_len();
    let (groups, row_width) = grid_for(count, narrow);
    let params = uniform(
        ctx,
        "conv params",
        &conv.params(arena, copies, x_copy_stride, row_width),
    );
    let xb = GpuBuffer::from_real(ctx, "x", x, precision);
    let theta = GpuBuffer::from_real(ctx, "theta", &arena.theta, precision);
    let y = GpuBuffer::real(ctx, "y", count, precision);
    let (pairs, h) = pert.unwrap_or((&[0, 0], 0.0));
    let pert = GpuBuffer::from_u32(ctx, "pert", pairs);
    let hstep = GpuBuffer::from_real(ctx, "hstep", &[h], precision);
    let d = kernel.dispatch(
        ctx,
        &[
            &params,
            &xb.buffer,
            &theta.buffer,
            &y.buffer,
            &pert.buffer,
            &hstep.buffer,
            &pert.buffer,
            &theta.buffer,
        ],
        groups,
    );
    kernel::run(ctx, &[d]).unwrap();
    y.read_real(ctx, precision).unwrap()
}

#[test]
fn conv_forward_matches_reference() {
    for precision in precisions() {
        let kernel = conv_kernel(precision, "conv_forward", false);
        let mut rng = Rng(1);
        for (k, conv) in CONV_CASES.iter().enumerate() {
            let arena = Arena::new(conv, &mut rng);
            let x = rng.vec(conv.x_len());
            let got =
                gpu_conv_forward(&kernel, precision, conv, &arena, &x, 1, 0, None, k % 2 == 1);
            let want = conv.forward(&x, arena.wt(), arena.b());
            assert_close(&format!("forward {conv:?}"), &got, &want, precision);
        }
        // Two copies with their own inputs (x_copy_stride = one input) each see only theirs.
        let conv = CONV_CASES[1];
        let arena = Arena::new(&conv, &mut rng);
        let x = rng.vec(2 * conv.x_len());
        let got = gpu_conv_forward(
            &kernel,
            precision,
            &conv,
            &arena,
            &x,
            2,
            conv.x_len(),
            None,
            false,
        );
        for (p, xp) in x.chunks(conv.x_len()).enumerate() {
            let want = conv.forward(xp, arena.wt(), arena.b());
            let got = &got[p * conv.y_len()..(p + 1) * conv.y_len()];
            assert_close(&format!("forward copy {p} {conv:?}"), got, &want, precision);
        }
    }
}

#[test]
fn conv_backward_input_matches_reference() {
    let ctx = ctx();
    for precision in precisions() {
        let kernel = conv_kernel(precision, "conv_backward_input", false);
        let mut rng = Rng(2);
        for (k, conv) in CONV_CASES.iter().enumerate() {
            let arena = Arena::new(conv, &mut rng);
            let x = rng.vec(conv.x_len());
            let dy = rng.vec(conv.y_len());
            let (groups, row_width) = grid_for(conv.x_len(), k % 2 == 0);
            let params = uniform(ctx, "conv params", &conv.params(&arena, 1, 0, row_width));
            let dyb = GpuBuffer::from_real(ctx, "dy", &dy, precision);
            let theta = GpuBuffer::from_real(ctx, "theta", &arena.theta, precision);
            let dx = GpuBuffer::real(ctx, "dx", conv.x_len(), precision);
            let d = kernel.dispatch(
                ctx,
                &[&params, &dyb.buffer, &theta.buffer, &dx.buffer],
                groups,
            );
            kernel::run(ctx, &[d]).unwrap();
            let want = conv.backward(&x, arena.wt(), &dy).0;
            let got = dx.read_real(ctx, precision).unwrap();
            assert_close(&format!("dx {conv:?}"), &got, &want, precision);
        }
    }
}

#[test]
fn conv_backward_params_matches_reference() {
    let ctx = ctx();
    const SENTINEL: f64 = 7.0;
    for precision in precisions() {
        let kernel = conv_kernel(precision, "conv_backward_params", false);
        let mut rng = Rng(3);
        for (k, conv) in CONV_CASES.iter().enumerate() {
            let arena = Arena::new(conv, &mut rng);
            let x = rng.vec(conv.x_len());
            let dy = rng.vec(conv.y_len());
            let (groups, row_width) = grid_for(conv.w_len() + conv.f, k % 2 == 1);
            let params = uniform(ctx, "conv params", &conv.params(&arena, 1, 0, row_width));
            let dyb = GpuBuffer::from_real(ctx, "dy", &dy, precision);
            let xb = GpuBuffer::from_real(ctx, "x", &x, precision);
            // Filled with a sentinel: the layer's slots must be overwritten (=, not +=) and the
            // rest of the arena left alone.
            let grads_in = vec![SENTINEL; arena.theta.len()];
            let grads = GpuBuffer::from_real(ctx, "grads", &grads_in, precision);
            let d = kernel.dispatch(
                ctx,
                &[&params, &dyb.buffer, &xb.buffer, &grads.buffer],
                groups,
            );
            kernel::run(ctx, &[d]).unwrap();
            let got = grads.read_real(ctx, precision).unwrap();
            let (_, dw, db) = conv.backward(&x, arena.wt(), &dy);
            let w_range = arena.w_off..arena.w_off + arena.w_len;
            let b_range = arena.b_off..arena.b_off + arena.f;
            assert_close(&format!("dw {conv:?}"), &got[w_range], &dw, precision);
            assert_close(&format!("db {conv:?}"), &got[b_range], &db, precision);
            for (i, &g) in got.iter().enumerate() {
                if !arena.contains(i) {
                    assert_eq!(
                        g, SENTINEL,
                        "grads[{i}] outside the layer was written, {conv:?}"
                    );
                }
            }
        }
    }
}

/// Training and evaluation run a convolution unfolded: im2col, the filters packed, one matmul
/// per sample into NCHW (with the activation above fused in), and for the weight gradient one
/// matmul per sample and conv_weight_sums. The layer as the model records it, against the
/// reference: at planes and C·K·K + 1 on and off multiples of 4 (the matmul's vec4 reads),
/// filter counts off its 8×8 blocks, strides and padding, batch 1 to 3, and behind another
/// layer's parameters so that W and b start at unaligned offsets.
#[test]
fn unfolded_conv_layer_matches_reference() {
    use wgrad::gpu::Gpu;
    use wgrad::nn::layers::{parse_layers, Backward, Forward, LayerOps, LayerState, Mode};
    use wgrad::nn::{Activation, Layer, NetSpec};
    let ctx = ctx();
    // (N, C, H, W, F, K, stride, pad)
    let cases = [
        (1, 1, 7, 5, 1, 3, 1, 1),    // plane 35, ld 12
        (3, 3, 9, 9, 4, 3, 2, 1),    // plane 25, C·K·K + 1 = 28 = ld
        (2, 1, 28, 28, 30, 5, 1, 0), // SimpleConvNet: plane 576, ld 28
        (3, 2, 8, 6, 9, 2, 1, 2),    // plane 99, 9 filters
        (2, 3, 7, 7, 2, 2, 3, 0),    // plane 4
        (1, 2, 6, 6, 17, 1, 1, 0),   // 1×1 kernel, ld 4, 17 filters
    ];
    for precision in precisions() {
        let kernels = common::kernels(precision);
        let gpu = Gpu { ctx, kernels };
        let mut rng = Rng(7);
        for (n, c, h, w, f, k, stride, pad) in cases {
            let layers = format!("conv{c}x1,conv{f}x{k}s{stride}p{pad},affine3");
            let spec = NetSpec::sequential([2, h, w], parse_layers(&layers).unwrap()).unwrap();
            let (layers, layout) = spec.resolve().unwrap();
            let Layer::Conv(layer) = &layers[1] else {
                unreachable!("the second layer is the convolution under test")
            };
            let conv = Conv::new(n, c, h, w, f, k, k, stride, pad);
            let theta = rng.vec(layout.total);
            let (wt, b) = (&layout.tensors[layer.weight], &layout.tensors[layer.bias]);
            let (w_range, b_range) = (
                wt.offset..wt.offset + wt.numel,
                b.offset..b.offset + b.numel,
            );
            let x = rng.vec(conv.x_len());
            let dy = rng.vec(conv.y_len());
            let case = format!("{conv:?} ({precision})");

            let theta_b = GpuBuffer::from_real(ctx, "theta", &theta, precision);
            let xb = GpuBuffer::from_real(ctx, "x", &x, precision);
            let y = GpuBuffer::real(ctx, "y", conv.y_len(), precision);
            let act = GpuBuffer::real(ctx, "sigmoid(y)", conv.y_len(), precision);
            let saved = layer.saved(ctx, precision, n, 1);
            let step = GpuBuffer::zeroed(ctx, "step", 1, 4);
            let forward = layer.forward(&Forward {
                gpu,
                theta: &theta_b,
                layout: &layout,
                rows: n,
                copies: 1,
                input: &xb,
                input_shared: true,
                output: &y,
                saved: &saved,
                state: &LayerState::None,
                mode: Mode::Train,
                step: &step,
                dropout_seed: 0,
                perturbation: None,
                activated: Some((Activation::Sigmoid, &act)),
            });
            kernel::run(ctx, &forward).unwrap();
            let want = conv.forward(&x, &theta[w_range.clone()], &theta[b_range.clone()]);
            let got = y.read_real(ctx, precision).unwrap();
            assert_close(&format!("unfolded y {case}"), &got, &want, precision);
            let sigmoid: Vec<f64> = want.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
            let got = act.read_real(ctx, precision).unwrap();
            assert_close(&format!("unfolded σ(y) {case}"), &got, &sigmoid, precision);

            // The gradient arena starts as NaN: the layer's slots must all be written, the
            // rest left alone.
            let grads =
                GpuBuffer::from_real(ctx, "grads", &vec![f64::NAN; layout.total], precision);
            let dyb = GpuBuffer::from_real(ctx, "dy", &dy, precision);
            let backward = layer.backward(&Backward {
                gpu,
                theta: &theta_b,
                grads: &grads,
                layout: &layout,
                rows: n,
                input: &xb,
                output: &y,
                dy: &dyb,
                dx: None,
                dx_through: None,
                saved: &saved,
                state: &LayerState::None,
            });
            kernel::run(ctx, &backward).unwrap();
            let got = grads.read_real(ctx, precision).unwrap();
            let (_, dw, db) = conv.backward(&x, &theta[w_range.clone()], &dy);
            assert_close(
                &format!("unfolded dw {case}"),
                &got[w_range.clone()],
                &dw,
                precision,
            );
            assert_close(
                &format!("unfolded db {case}"),
                &got[b_range.clone()],
                &db,
                precision,
            );
            let outside =
                (0..layout.total).filter(|i| !w_range.contains(i) && !b_range.contains(i));
            for i in outside {
                assert!(
                    got[i].is_nan(),
                    "grads[{i}] outside the layer was written, {case}"
                );
            }
        }
    }
}

#[test]
fn perturbed_conv_forward_moves_one_weight_per_copy() {
    for precision in precisions() {
        let plain = conv_kernel(precision, "conv_forward", false);
        let perturbed = conv_kernel(precision, "conv_forward", true);
        let mut rng = Rng(4);
        for conv in [CONV_CASES[1], Conv::new(1, 2, 7, 5, 3, 3, 2, 1, 1)] {
            let arena = Arena::new(&conv, &mut rng);
            let (w_off, b_off, w_len, f) = (arena.w_off, arena.b_off, arena.w_len, arena.f);
            // First, middle and last weight, both biases' ends, both signs; then indices just
            // outside the layer on every side, including the gap between W and b.
            let changes: Vec<(usize, u32)> = vec![
                (w_off, 0),
                (w_off + w_len / 2, 1),
                (w_off + w_len - 1, 0),
                (b_off, 1),
                (b_off + f - 1, 0),
                (w_off - 1, 0),
                (w_off + w_len, 1),
                (b_off - 1, 0),
                (b_off + f, 1),
                (0, 0),
            ];
            let copies = changes.len();
            let pairs: Vec<u32> = changes.iter().flat_map(|&(i, s)| [i as u32, s]).collect();
            let h = 0.25; // exact in f32, and far above the tolerance
            for shared in [true, false] {
                let x = rng.vec(if shared { 1 } else { copies } * conv.x_len());
                let stride = if shared { 0 } else { conv.x_len() };
                let got = gpu_conv_forward(
                    &perturbed,
                    precision,
                    &conv,
                    &arena,
                    &x,
                    copies,
                    stride,
                    Some((&pairs, h)),
                    shared,
                );
                for (p, &(flat, sign)) in changes.iter().enumerate() {
                    let xp = &x[p * stride..p * stride + conv.x_len()];
                    let got = &got[p * conv.y_len()..(p + 1) * conv.y_len()];
                    let what = format!(
                        "copy {p} (theta[{flat}] {}) {conv:?}",
                        ["+h", "−h"][sign as usize]
                    );
                    if arena.contains(flat) {
                        let mut moved = Arena {
                            theta: arena.theta.clone(),
                            ..arena
                        };
                        moved.theta[flat] += if sign == 0 { h } else { -h };
                        let want = conv.forward(xp, moved.wt(), moved.b());
                        assert_close(&what, got, &want, precision);
                        let base = conv.forward(xp, arena.wt(), arena.b());
                        assert!(got != base.as_slice(), "{what}: the change had no effect");
                    } else {
                        // Bit for bit the plain kernel's output: copies outside the layer must
                        // not even round differently.
                        let base = gpu_conv_forward(
                            &plain, precision, &conv, &arena, xp, 1, 0, None, false,
                        );
                        assert!(
                            got == base.as_slice(),
                            "{what}: differs from the unperturbed forward"
                        );
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Pool {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    size: usize,
    stride: usize,
    copies: usize,
}

impl Pool {
    const fn new(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        size: usize,
        stride: usize,
        copies: usize,
    ) -> Pool {
        Pool {
            n,
            c,
            h,
            w,
            size,
            stride,
            copies,
        }
    }
    fn oh(&self) -> usize {
        conv_out(self.h, self.size, self.stride, 0)
    }
    fn ow(&self) -> usize {
        conv_out(self.w, self.size, self.stride, 0)
    }
    fn x_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    fn y_len(&self) -> usize {
        self.n * self.c * self.oh() * self.ow()
    }
    fn params(&self, count: usize, row_width: u32) -> PoolParams {
        PoolParams {
            nc: (self.n * self.c) as u32,
            h: self.h as u32,
            w: self.w as u32,
            size: self.size as u32,
            stride: self.stride as u32,
            oh: self.oh() as u32,
            ow: self.ow() as u32,
            copies: self.copies as u32,
            count: count as u32,
            per_copy: self.y_len() as u32,
            row_width,
            channels: self.c as u32,
        }
    }
}

const POOL_CASES: [Pool; 8] = [
    Pool::new(1, 1, 7, 5, 2, 2, 1),
    Pool::new(3, 3, 9, 9, 3, 2, 1),
    Pool::new(2, 1, 28, 28, 2, 2, 2),
    Pool::new(1, 3, 28, 28, 3, 2, 1),
    Pool::new(3, 1, 7, 5, 3, 2, 2),
    Pool::new(1, 2, 5, 6, 3, 1, 1),
    Pool::new(1, 1, 4, 4, 4, 4, 1),
    Pool::new(3, 1, 9, 9, 2, 3, 1),
];

struct PoolRun {
    y: Vec<f64>,
    argmax: Vec<u32>,
    flips: Vec<u32>,
}

/// Runs a pooling forward over all of `pool.copies` copies of x.
fn gpu_pool_forward(
    kernel: &Kernel,
    precision: Precision,
    pool: &Pool,
    x: &[f64],
    base_argmax: &[u32],
    narrow: bool,
) -> PoolRun {
    let count = pool.copies * pool.y_len();
    gpu_pool_forward_over(kernel, precision, pool, x, base_argmax, count, narrow)
}

/// [`gpu_pool_forward`] over `count` invocations (for max_forward_rows, a row of windows each),
/// into outputs filled with NaN and arg-maxes with u32::MAX, so that any left unwritten show.
fn gpu_pool_forward_over(
    kernel: &Kernel,
    precision: Precision,
    pool: &Pool,
    x: &[f64],
    base_argmax: &[u32],
    count: usize,
    narrow: bool,
) -> PoolRun {
    let ctx = ctx();
    let outputs = pool.copies * pool.y_len();
    let (groups, row_width) = grid_for(count, narrow);
    let params = uniform(ctx, "pool params", &pool.params(count, row_width));
    let xb = GpuBuffer::from_real(ctx, "x", x, precision);
    let y = GpuBuffer::from_real(ctx, "y", &vec![f64::NAN; outputs], precision);
    let argmax = GpuBuffer::from_u32(ctx, "argmax", &vec![u32::MAX; outputs]);
    let base = GpuBuffer::from_u32(ctx, "base argmax", base_argmax);
    let flips = GpuBuffer::zeroed(ctx, "flips", pool.copies, 4);
    let d = kernel.dispatch(
        ctx,
        &[
            &params,
            &xb.buffer,
            &y.buffer,
            &argmax.buffer,
            &base.buffer,
            &flips.buffer,
            &base.buffer,
        ],
        groups,
    );
    kernel::run(ctx, &[d]).unwrap();
    PoolRun {
        y: y.read_real(ctx, precision).unwrap(),
        argmax: argmax.read_u32(ctx).unwrap(),
        flips: flips.read_u32(ctx).unwrap(),
    }
}

/// Runs a pooling backward (`argmax` is ignored by avg_backward but must be bound) over `count`
/// invocations: an input element each, or for max_backward_rows a row of windows each.
#[allow(clippy::too_many_arguments)]
fn gpu_pool_backward(
    kernel: &Kernel,
    precision: Precision,
    pool: &Pool,
    dy: &[f64],
    argmax: &[u32],
    count: usize,
    narrow: bool,
) -> Vec<f64> {
    let ctx = ctx();
    let (groups, row_width) = grid_for(count, narrow);
    let params = uniform(ctx, "pool params", &pool.params(count, row_width));
    let dyb = GpuBuffer::from_real(ctx, "dy", dy, precision);
    let am = GpuBuffer::from_u32(ctx, "argmax", argmax);
    // Filled with NaN, so an element the kernel leaves unwritten shows.
    let nans = vec![f64::NAN; pool.copies * pool.x_len()];
    let dx = GpuBuffer::from_real(ctx, "dx", &nans, precision);
    let buffers = [&params, &dyb.buffer, &am.buffer, &dx.buffer, &dyb.buffer];
    let d = kernel.dispatch(ctx, &buffers, groups);
    kernel::run(ctx, &[d]).unwrap();
    dx.read_real(ctx, precision).unwrap()
}

fn pool_kernel(precision: Precision, entry: &str, count_kinks: bool) -> Kernel {
    let bindings: &[Binding] = if entry.contains("forward") {
        &POOL_BINDINGS
    } else {
        &POOL_BACKWARD_BINDINGS
    };
    let constants: &[(&str, f64)] = if count_kinks {
        &[("COUNT_KINKS", 1.0)]
    } else {
        &[]
    };
    Kernel::new(ctx(), pool::SHADER, entry, precision, bindings, constants)
}

#[test]
fn max_pool_matches_reference() {
    for precision in precisions() {
        let forward = pool_kernel(precision, "max_forward", false);
        let backward = pool_kernel(precision, "max_backward", false);
        let by_rows = pool_kernel(precision, "max_backward_rows", false);
        let forward_rows = pool_kernel(precision, "max_forward_rows", false);
        let mut rng = Rng(5);
        for (k, pool) in POOL_CASES.iter().enumerate() {
            let (p, per_in, per_out) = (pool, pool.x_len(), pool.y_len());
            let x = rng.vec(pool.copies * per_in);
            let dy = rng.vec(pool.copies * per_out);
            let (mut want_y, mut want_arg, mut want_dx) = (vec![], vec![], vec![]);
            for (xc, dyc) in x.chunks(per_in).zip(dy.chunks(per_out)) {
                let (y, arg) = r::max_pool_forward(xc, p.n, p.c, p.h, p.w, p.size, p.stride);
                want_dx.extend(r::max_pool_backward(dyc, &arg, per_in));
                want_y.extend(y);
                want_arg.extend(arg.iter().map(|&a| a as u32));
            }
            let run = gpu_pool_forward(
                &forward,
                precision,
                pool,
                &x,
                &want_arg[..per_out],
                k % 2 == 1,
            );
            assert_close(&format!("max y {pool:?}"), &run.y, &want_y, precision);
            assert_eq!(run.argmax, want_arg, "max argmax {pool:?} ({precision})");
            assert!(
                run.flips.iter().all(|&f| f == 0),
                "flips counted without COUNT_KINKS"
            );
            // The unperturbed forward as layers run it: a row of windows an invocation.
            let rows = pool.copies * pool.n * pool.c * pool.oh();
            let rowwise =
                gpu_pool_forward_over(&forward_rows, precision, pool, &x, &[0], rows, k % 2 == 0);
            assert_close(
                &format!("max y by rows {pool:?}"),
                &rowwise.y,
                &want_y,
                precision,
            );
            assert_eq!(
                rowwise.argmax, want_arg,
                "max argmax by rows {pool:?} ({precision})"
            );
            let inputs = pool.copies * per_in;
            let dx = gpu_pool_backward(
                &backward,
                precision,
                pool,
                &dy,
                &want_arg,
                inputs,
                k % 2 == 0,
            );
            assert_close(&format!("max dx {pool:?}"), &dx, &want_dx, precision);
            // Windows that do not overlap: the layer writes dx a row of windows an invocation.
            if pool.size <= pool.stride {
                let rows = pool.copies * pool.n * pool.c * pool.oh();
                let dx =
                    gpu_pool_backward(&by_rows, precision, pool, &dy, &want_arg, rows, k % 2 == 1);
                assert_close(
                    &format!("max dx by rows {pool:?}"),
                    &dx,
                    &want_dx,
                    precision,
                );
            }
        }
    }
}

/// A max-pool over windows that do not overlap takes the activation layer below into its
/// backward (max_backward_rows built THROUGH): dx = f′ applied to the pooled gradient, for every
/// kind, against the reference's pool and activation backward one after the other.
#[test]
fn max_pool_backward_goes_on_through_the_activation_below() {
    use wgrad::nn::Activation;
    let ctx = ctx();
    for precision in precisions() {
        let mut rng = Rng(8);
        for kind in [Activation::Relu, Activation::Sigmoid, Activation::Tanh] {
            let constants = [("THROUGH", 1.0), ("ACT_KIND", kind.code() as f64)];
            let kernel = Kernel::new(
                ctx,
                pool::SHADER,
                "max_backward_rows",
                precision,
                &POOL_BACKWARD_BINDINGS,
                &constants,
            );
            for (k, pool) in POOL_CASES.iter().enumerate() {
                if pool.size > pool.stride {
                    continue;
                }
                let (p, per_in, per_out) = (pool, pool.x_len(), pool.y_len());
                let x = rng.vec(pool.copies * per_in);
                let dy = rng.vec(pool.copies * per_out);
                // What f′ reads: ReLU's input, the others' output (in (0, 1) for σ).
                let saved: Vec<f64> = rng.vec(pool.copies * per_in);
                let (mut argmax, mut want) = (vec![], vec![]);
                for ((xc, dyc), sc) in x
                    .chunks(per_in)
                    .zip(dy.chunks(per_out))
                    .zip(saved.chunks(per_in))
                {
                    let (_, arg) = r::max_pool_forward(xc, p.n, p.c, p.h, p.w, p.size, p.stride);
                    let pooled = r::max_pool_backward(dyc, &arg, per_in);
                    want.extend(wgrad::reference::activation_backward(kind, sc, sc, &pooled));
                    argmax.extend(arg.iter().map(|&a| a as u32));
                }
                let count = pool.copies * pool.n * pool.c * pool.oh();
                let (groups, row_width) = grid_for(count, k % 2 == 0);
                let params = uniform(ctx, "pool params", &pool.params(count, row_width));
                let dyb = GpuBuffer::from_real(ctx, "dy", &dy, precision);
                let am = GpuBuffer::from_u32(ctx, "argmax", &argmax);
                let dx = GpuBuffer::from_real(ctx, "dx", &vec![f64::NAN; x.len()], precision);
                let sb = GpuBuffer::from_real(ctx, "saved", &saved, precision);
                let buffers = [&params, &dyb.buffer, &am.buffer, &dx.buffer, &sb.buffer];
                let d = kernel.dispatch(ctx, &buffers, groups);
                kernel::run(ctx, &[d]).unwrap();
                let got = dx.read_real(ctx, precision).unwrap();
                assert_close(&format!("{kind:?} dx {pool:?}"), &got, &want, precision);
            }
        }
    }
}

#[test]
fn avg_pool_matches_reference() {
    for precision in precisions() {
        let forward = pool_kernel(precision, "avg_forward", false);
        let backward = pool_kernel(precision, "avg_backward", false);
        let mut rng = Rng(6);
        for (k, pool) in POOL_CASES.iter().enumerate() {
            let (p, per_in, per_out) = (pool, pool.x_len(), pool.y_len());
            let x = rng.vec(pool.copies * per_in);
            let dy = rng.vec(pool.copies * per_out);
            let (mut want_y, mut want_dx) = (vec![], vec![]);
            for (xc, dyc) in x.chunks(per_in).zip(dy.chunks(per_out)) {
                want_y.extend(r::avg_pool_forward(
                    xc, p.n, p.c, p.h, p.w, p.size, p.stride,
                ));
                want_dx.extend(r::avg_pool_backward(
                    dyc, p.n, p.c, p.h, p.w, p.size, p.stride,
                ));
            }
            let run = gpu_pool_forward(&forward, precision, pool, &x, &[0], k % 2 == 0);
            assert_close(&format!("avg y {pool:?}"), &run.y, &want_y, precision);
            let inputs = pool.copies * per_in;
            let dx = gpu_pool_backward(&backward, precision, pool, &dy, &[0], inputs, k % 2 == 1);
            assert_close(&format!("avg dx {pool:?}"), &dx, &want_dx, precision);
        }
    }
}

#[test]
fn max_pool_counts_exactly_the_switched_argmaxes() {
    // 2 planes of 7×7, 3×3 windows at stride 2 (3×3 outputs, overlapping on rows and columns
    // 2 and 4). Plane 0 has its maximum 2 at (2, 2), inside windows (0,0), (0,1), (1,0), (1,1),
    // and a runner-up 2 − h/2 at (2, 3), inside windows (0,1) and (1,1) only.
    let pool = Pool::new(1, 2, 7, 7, 3, 2, 6);
    let h = 1.0 / 64.0; // dyadic: every value below is exact in f32
    let (peak, runner) = (2 * 7 + 2, 2 * 7 + 3);
    let mut rng = Rng(7);
    let mut base: Vec<f64> = rng.vec(pool.x_len()).iter().map(|v| v.abs()).collect();
    base[peak] = 2.0;
    base[runner] = 2.0 - h / 2.0;
    let plane1_spot = 49 + 4 * 7 + 4;
    base[plane1_spot] = 0.0;
    // Each copy is the base input with one change, and the flips it must cause.
    let copies: [(usize, f64, u32); 6] = [
        (peak, 0.0, 0),        // unperturbed
        (peak, -h, 2),         // the peak drops below the runner-up in the 2 windows they share
        (peak, h, 0),          // the peak grows: nothing switches
        (runner, h, 2),        // the runner-up overtakes in those same 2 windows
        (runner, h / 2.0, 0),  // an exact tie: the first in row-major order (the peak) stays
        (plane1_spot, 5.0, 4), // plane 1: a new maximum at (4, 4) takes all 4 windows over it
    ];
    let mut x = Vec::new();
    for &(at, change, _) in &copies {
        let mut xc = base.clone();
        xc[at] += change;
        x.extend(xc);
    }
    let p = pool;
    let (_, base_arg) = r::max_pool_forward(&base, p.n, p.c, p.h, p.w, p.size, p.stride);
    let base_arg: Vec<u32> = base_arg.iter().map(|&a| a as u32).collect();
    for precision in precisions() {
        let kernel = pool_kernel(precision, "max_forward", true);
        let run = gpu_pool_forward(&kernel, precision, &pool, &x, &base_arg, false);
        for (k, (xc, &(at, change, flips))) in x.chunks(pool.x_len()).zip(&copies).enumerate() {
            let (_, arg) = r::max_pool_forward(xc, p.n, p.c, p.h, p.w, p.size, p.stride);
            let switched = arg
                .iter()
                .zip(&base_arg)
                .filter(|(a, b)| **a as u32 != **b)
                .count();
            assert_eq!(
                switched as u32, flips,
                "copy {k}: the test's own expectation is off"
            );
            let got_arg = &run.argmax[k * pool.y_len()..(k + 1) * pool.y_len()];
            assert!(
                got_arg.iter().zip(&arg).all(|(g, a)| *g as usize == *a),
                "copy {k} ({precision}): argmax {got_arg:?} vs {arg:?}"
            );
            assert_eq!(
                run.flips[k], flips,
                "copy {k} (x[{at}] {change:+}) ({precision}): flips"
            );
        }
    }
}
