//! BatchNorm and Dropout kernels against the f64 CPU reference (src/reference/norm.rs), in f32
//! and f64, at awkward sizes: one channel, a channel count that is no power of two, one and many
//! spatial positions, a batch of one. Dropout masks must match the CPU hash bit for bit.

mod common;

use bytemuck::{Pod, Zeroable};
use common::{ctx, precisions};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wgrad::gpu::buffers::uniform;
use wgrad::gpu::kernel::{self, grid};
use wgrad::gpu::{Binding, Dispatch, GpuBuffer, GpuContext, Kernel, Precision};
use wgrad::nn::layers::{batchnorm, dropout};
use wgrad::reference::norm as reference;

const EPS: f64 = reference::BATCHNORM_EPS;
const MOMENTUM: f64 = reference::BATCHNORM_MOMENTUM;

/// (N, C, S) cases covering C ∈ {1, 3, 30}, S ∈ {1, 25, 144}, N ∈ {1, 3, 7}; N = 1 only with
/// S ≥ 2, since one value per channel has no variance.
fn shapes() -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for n in [1, 3, 7] {
        for c in [1, 3, 30] {
            for s in [1, 25, 144] {
                if n * s >= 2 {
                    out.push((n, c, s));
                }
            }
        }
    }
    out
}

/// The value the GPU holds after upload: f32 inputs are judged against a reference fed the same
/// rounded numbers, so only the kernel's own rounding counts.
fn q(precision: Precision, v: f64) -> f64 {
    match precision {
        Precision::F32 => v as f32 as f64,
        Precision::F64 => v,
    }
}

fn qv(precision: Precision, v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| q(precision, x)).collect()
}

/// Relative tolerance of one kernel output, as a fraction of the magnitudes it is built from.
fn tol(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => 1e-5,
        Precision::F64 => 1e-12,
    }
}

/// max |gpu − ref| ≤ tol·scale, where scale (≥ max |ref|) is the size of the terms a result is
/// computed from, so results that cancel to near zero are not judged relative to themselves.
fn assert_close(what: &str, gpu: &[f64], reference: &[f64], scale: f64, tol: f64) {
    assert_eq!(gpu.len(), reference.len(), "{what}: length");
    let scale = reference.iter().fold(scale, |m, v| m.max(v.abs()));
    let (at, err) = gpu
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold(
            (0, 0.0),
            |best, (i, e)| if e > best.1 { (i, e) } else { best },
        );
    assert!(
        err <= tol * scale,
        "{what}: |gpu − ref| = {err:e} at {at} (gpu {}, ref {}) > {tol:e}·{scale:e}",
        gpu[at],
        reference[at]
    );
}

fn uniform_values(rng: &mut ChaCha8Rng, len: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..len)
        .map(|_| lo + (hi - lo) * rng.random::<f64>())
        .collect()
}

/// Inputs whose channels differ in offset and spread, so a wrong channel index shows.
fn channel_input(rng: &mut ChaCha8Rng, copies: usize, n: usize, c: usize, s: usize) -> Vec<f64> {
    let mut x = uniform_values(rng, copies * n * c * s, -1.0, 1.0);
    for (i, v) in x.iter_mut().enumerate() {
        let ch = (i / s) % c;
        *v = 0.3 * ch as f64 - 1.0 + (0.5 + 0.1 * ch as f64) * *v;
    }
    x
}

// ---------------------------------------------------------------------------------------------
// BatchNorm
// ---------------------------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BnParams {
    n: u32,
    c: u32,
    s: u32,
    copies: u32,
    g_off: u32,
    b_off: u32,
    count: u32,
    row_width: u32,
}

/// shaders/batchnorm.wgsl's binding table, shared by every entry point: P, consts, x (or dy),
/// stats, theta, xhat, y (or dx), grads, running, pert, hstep, moved (one-channel routes, not run
/// here).
const BN_BINDINGS: [Binding; 12] = [
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::Read,
    Binding::Read,
    Binding::Read,
];

fn bn_kernel(ctx: &GpuContext, entry: &str, precision: Precision, perturbed: bool) -> Kernel {
    let constants: &[(&str, f64)] = if perturbed {
        &[("PERTURBED", 1.0)]
    } else {
        &[]
    };
    Kernel::new(
        ctx,
        batchnorm::SHADER,
        entry,
        precision,
        &BN_BINDINGS,
        constants,
    )
}

struct BnKernels {
    stats: Kernel,
    forward_train: Kernel,
    backward_params: Kernel,
    backward_input: Kernel,
    update_running: Kernel,
    forward_eval: Kernel,
}

impl BnKernels {
    fn new(ctx: &GpuContext, precision: Precision) -> Self {
        BnKernels {
            stats: bn_kernel(ctx, "bn_stats", precision, false),
            forward_train: bn_kernel(ctx, "bn_forward_train", precision, false),
            backward_params: bn_kernel(ctx, "bn_backward_params", precision, false),
            backward_input: bn_kernel(ctx, "bn_backward_input", precision, false),
            update_running: bn_kernel(ctx, "bn_update_running", precision, false),
            forward_eval: bn_kernel(ctx, "bn_forward_eval", precision, false),
        }
    }
}

/// γ and β sit inside a larger arena, at offsets that are not multiples of anything, with
/// other parameters around them.
const G_OFF: usize = 5;
fn b_off(c: usize) -> usize {
    G_OFF + c + 2
}
fn arena_len(c: usize) -> usize {
    b_off(c) + c + 3
}

/// One BatchNorm layer's buffers on the GPU.
struct BnLayer {
    precision: Precision,
    n: usize,
    c: usize,
    s: usize,
    copies: usize,
    params: wgpu::Buffer,
    consts: GpuBuffer,
    x: GpuBuffer,
    stats: GpuBuffer,
    theta: GpuBuffer,
    xhat: GpuBuffer,
    y: GpuBuffer,
    grads: GpuBuffer,
    running: GpuBuffer,
    pert: GpuBuffer,
    hstep: GpuBuffer,
}

impl BnLayer {
    #[allow(clippy::too_many_arguments)]
    fn new(
        ctx: &GpuContext,
        precision: Precision,
        (n, c, s): (usize, usize, usize),
        copies: usize,
        x: &[f64],
        theta: &[f64],
        running: &[f64],
        pert: &[u32],
        h: f64,
    ) -> Self {
        let count = copies * n * c * s;
        let (_, row_width) = grid(count);
        let params = BnParams {
            n: n as u32,
            c: c as u32,
            s: s as u32,
            copies: copies as u32,
            g_off: G_OFF as u32,
            b_off: b_off(c) as u32,
            count: count as u32,
            row_width,
        };
        let real = |label, values: &[f64]| GpuBuffer::from_real(ctx, label, values, precision);
        BnLayer {
            precision,
            n,
            c,
            s,
            copies,
            params: uniform(ctx, "batchnorm", &params),
            // [eps, momentum, unbiased running variance: 1 as PyTorch]
            consts: real("consts", &[EPS, MOMENTUM, 1.0]),
            x: real("x", x),
            stats: GpuBuffer::real(ctx, "stats", copies * c * 3, precision),
            theta: real("theta", theta),
            xhat: GpuBuffer::real(ctx, "xhat", count, precision),
            y: GpuBuffer::real(ctx, "y", count, precision),
            grads: GpuBuffer::real(ctx, "grads", arena_len(c), precision),
            running: real("running", running),
            pert: GpuBuffer::from_u32(ctx, "pert", pert),
            hstep: real("hstep", &[h]),
        }
    }

    fn count(&self) -> usize {
        self.copies * self.n * self.c * self.s
    }

    /// `kernel` over this layer's table, with `x` and `y` at the input and output slots.
    fn dispatch(
        &self,
        ctx: &GpuContext,
        kernel: &Kernel,
        x: &GpuBuffer,
        y: &GpuBuffer,
        groups: [u32; 3],
    ) -> Dispatch {
        kernel.dispatch(
            ctx,
            &[
                &self.params,
                &self.consts.buffer,
                &x.buffer,
                &self.stats.buffer,
                &self.theta.buffer,
                &self.xhat.buffer,
                &y.buffer,
                &self.grads.buffer,
                &self.running.buffer,
                &self.pert.buffer,
                &self.hstep.buffer,
                &self.pert.buffer,
            ],
            groups,
        )
    }

    fn stats(&self, ctx: &GpuContext, k: &Kernel) -> Dispatch {
        self.dispatch(ctx, k, &self.x, &self.y, grid(self.copies * self.c * 64).0)
    }

    fn elementwise(&self, ctx: &GpuContext, k: &Kernel) -> Dispatch {
        self.dispatch(ctx, k, &self.x, &self.y, grid(self.count()).0)
    }

    fn backward_params(&self, ctx: &GpuContext, k: &Kernel, dy: &GpuBuffer) -> Dispatch {
        self.dispatch(ctx, k, dy, &self.y, grid(self.c * 64).0)
    }

    fn backward_input(
        &self,
        ctx: &GpuContext,
        k: &Kernel,
        dy: &GpuBuffer,
        dx: &GpuBuffer,
    ) -> Dispatch {
        self.dispatch(ctx, k, dy, dx, grid(self.count()).0)
    }

    fn update_running(&self, ctx: &GpuContext, k: &Kernel) -> Dispatch {
        self.dispatch(ctx, k, &self.x, &self.y, grid(self.c).0)
    }

    fn read(&self, ctx: &GpuContext, b: &GpuBuffer) -> Vec<f64> {
        b.read_real(ctx, self.precision).unwrap()
    }

    /// Column `k` of the [copies·C, 3] stats records.
    fn stats_column(&self, ctx: &GpuContext, k: usize) -> Vec<f64> {
        self.read(ctx, &self.stats)
            .chunks(3)
            .map(|r| r[k])
            .collect()
    }
}

/// A random arena with γ (around 1, some negative) and β in place.
fn random_arena(rng: &mut ChaCha8Rng, c: usize) -> Vec<f64> {
    let mut theta = uniform_values(rng, arena_len(c), -1.0, 1.0);
    for ch in 0..c {
        theta[G_OFF + ch] = if ch % 4 == 3 { -0.7 } else { 1.0 } + 0.5 * theta[G_OFF + ch];
    }
    theta
}

fn gamma_beta(theta: &[f64], c: usize) -> (Vec<f64>, Vec<f64>) {
    (
        theta[G_OFF..G_OFF + c].to_vec(),
        theta[b_off(c)..b_off(c) + c].to_vec(),
    )
}

#[test]
fn batchnorm_training_forward_matches_reference() {
    let ctx = ctx();
    for precision in precisions() {
        let k = BnKernels::new(ctx, precision);
        for (case, shape) in shapes().into_iter().enumerate() {
            let (n, c, s) = shape;
            let mut rng = ChaCha8Rng::seed_from_u64(case as u64);
            let x = qv(precision, &channel_input(&mut rng, 1, n, c, s));
            let theta = qv(precision, &random_arena(&mut rng, c));
            let layer = BnLayer::new(ctx, precision, shape, 1, &x, &theta, &[0.0], &[0], 0.0);
            kernel::run(
                ctx,
                &[
                    layer.stats(ctx, &k.stats),
                    layer.elementwise(ctx, &k.forward_train),
                ],
            )
            .unwrap();
            let (gamma, beta) = gamma_beta(&theta, c);
            let want =
                reference::batchnorm_forward_train(&x, &gamma, &beta, n, c, s, q(precision, EPS));
            let t = tol(precision);
            let what = |name| format!("{precision} {shape:?} {name}");
            assert_close(
                &what("mean"),
                &layer.stats_column(ctx, 0),
                &want.mean,
                1.0,
                t,
            );
            assert_close(
                &what("inv_std"),
                &layer.stats_column(ctx, 1),
                &want.inv_std,
                0.0,
                t,
            );
            assert_close(&what("var"), &layer.stats_column(ctx, 2), &want.var, 0.0, t);
            assert_close(
                &what("xhat"),
                &layer.read(ctx, &layer.xhat),
                &want.xhat,
                1.0,
                t,
            );
            assert_close(&what("y"), &layer.read(ctx, &layer.y), &want.y, 1.0, t);

            // A fixed summation order: the same statistics to the bit when run again.
            let first = layer.stats.read_bytes(ctx, 0..layer.stats.len).unwrap();
            kernel::run(ctx, &[layer.stats(ctx, &k.stats)]).unwrap();
            let again = layer.stats.read_bytes(ctx, 0..layer.stats.len).unwrap();
            assert_eq!(
                first, again,
                "{precision} {shape:?}: stats not deterministic"
            );
        }
    }
}

#[test]
fn batchnorm_backward_matches_reference() {
    let ctx = ctx();
    for precision in precisions() {
        let k = BnKernels::new(ctx, precision);
        for (case, shape) in shapes().into_iter().enumerate() {
            let (n, c, s) = shape;
            let mut rng = ChaCha8Rng::seed_from_u64(1000 + case as u64);
            let x = qv(precision, &channel_input(&mut rng, 1, n, c, s));
            let theta = qv(precision, &random_arena(&mut rng, c));
            let dy = qv(precision, &uniform_values(&mut rng, n * c * s, -1.0, 1.0));
            let layer = BnLayer::new(ctx, precision, shape, 1, &x, &theta, &[0.0], &[0], 0.0);
            let dy_buf = GpuBuffer::from_real(ctx, "dy", &dy, precision);
            let dx_buf = GpuBuffer::real(ctx, "dx", n * c * s, precision);
            // Other parameters' gradients must survive: the kernels write only γ's and β's.
            let sentinel = vec![7.0; arena_len(c)];
            layer.grads.write_real(ctx, 0, &sentinel, precision);
            kernel::run(
                ctx,
                &[
                    layer.stats(ctx, &k.stats),
                    layer.elementwise(ctx, &k.forward_train),
                    layer.backward_params(ctx, &k.backward_params, &dy_buf),
                    layer.backward_input(ctx, &k.backward_input, &dy_buf, &dx_buf),
                ],
            )
            .unwrap();
            let (gamma, beta) = gamma_beta(&theta, c);
            let fwd =
                reference::batchnorm_forward_train(&x, &gamma, &beta, n, c, s, q(precision, EPS));
            let (dx, dgamma, dbeta) =
                reference::batchnorm_backward(&dy, &fwd.xhat, &fwd.inv_std, &gamma, n, c, s);

            // Scales: the sums of magnitudes each result adds up.
            let m = n * s;
            let mut abs_dy = vec![0.0f64; c];
            let mut abs_dyx = vec![0.0f64; c];
            for (i, (&g, &xh)) in dy.iter().zip(&fwd.xhat).enumerate() {
                let ch = (i / s) % c;
                abs_dy[ch] += g.abs();
                abs_dyx[ch] += (g * xh).abs();
            }
            let dx_scale = (0..dy.len())
                .map(|i| {
                    let ch = (i / s) % c;
                    let terms =
                        m as f64 * dy[i].abs() + abs_dy[ch] + fwd.xhat[i].abs() * abs_dyx[ch];
                    gamma[ch].abs() * fwd.inv_std[ch] / m as f64 * terms
                })
                .fold(0.0, f64::max);
            let t = tol(precision);
            let what = |name| format!("{precision} {shape:?} {name}");
            let grads = layer.read(ctx, &layer.grads);
            let bo = b_off(c);
            assert_close(
                &what("dgamma"),
                &grads[G_OFF..G_OFF + c],
                &dgamma,
                abs_dyx.iter().fold(0.0, |a: f64, &b| a.max(b)),
                t,
            );
            assert_close(
                &what("dbeta"),
                &grads[bo..bo + c],
                &dbeta,
                abs_dy.iter().fold(0.0, |a: f64, &b| a.max(b)),
                t,
            );
            assert_close(&what("dx"), &layer.read(ctx, &dx_buf), &dx, dx_scale, t);
            let untouched = grads
                .iter()
                .enumerate()
                .filter(|&(i, _)| !(G_OFF..G_OFF + c).contains(&i) && !(bo..bo + c).contains(&i))
                .all(|(_, &g)| g == 7.0);
            assert!(untouched, "{precision} {shape:?}: wrote outside γ and β");
        }
    }
}

#[test]
fn batchnorm_running_update_and_eval_match_reference() {
    let ctx = ctx();
    for precision in precisions() {
        let k = BnKernels::new(ctx, precision);
        for (case, shape) in shapes().into_iter().enumerate() {
            let (n, c, s) = shape;
            let mut rng = ChaCha8Rng::seed_from_u64(2000 + case as u64);
            let theta = qv(precision, &random_arena(&mut rng, c));
            let (gamma, beta) = gamma_beta(&theta, c);
            let mut rm = qv(precision, &uniform_values(&mut rng, c, -0.5, 0.5));
            let mut rv = qv(precision, &uniform_values(&mut rng, c, 0.5, 2.0));
            let running: Vec<f64> = rm.iter().zip(&rv).flat_map(|(&a, &b)| [a, b]).collect();
            let x0 = qv(precision, &channel_input(&mut rng, 1, n, c, s));
            let layer = BnLayer::new(ctx, precision, shape, 1, &x0, &theta, &running, &[0], 0.0);
            // Two training steps on different batches, as the trainer records them.
            for step in 0..2 {
                let x = if step == 0 {
                    x0.clone()
                } else {
                    let x = qv(precision, &channel_input(&mut rng, 1, n, c, s));
                    layer.x.write_real(ctx, 0, &x, precision);
                    x
                };
                kernel::run(
                    ctx,
                    &[
                        layer.stats(ctx, &k.stats),
                        layer.elementwise(ctx, &k.forward_train),
                        layer.update_running(ctx, &k.update_running),
                    ],
                )
                .unwrap();
                let fwd = reference::batchnorm_forward_train(
                    &x,
                    &gamma,
                    &beta,
                    n,
                    c,
                    s,
                    q(precision, EPS),
                );
                reference::batchnorm_update_running(
                    &mut rm,
                    &mut rv,
                    &fwd.mean,
                    &fwd.var,
                    n * s,
                    q(precision, MOMENTUM),
                );
            }
            let got = layer.read(ctx, &layer.running);
            let t = tol(precision);
            let what = |name| format!("{precision} {shape:?} {name}");
            let col = |k: usize| got.chunks(2).map(|r| r[k]).collect::<Vec<_>>();
            assert_close(&what("running mean"), &col(0), &rm, 1.0, t);
            assert_close(&what("running var"), &col(1), &rv, 1.0, t);

            // Evaluation on a fresh batch uses the running statistics, not the batch's.
            let x = qv(precision, &channel_input(&mut rng, 1, n, c, s));
            layer.x.write_real(ctx, 0, &x, precision);
            kernel::run(ctx, &[layer.elementwise(ctx, &k.forward_eval)]).unwrap();
            let want = reference::batchnorm_forward_eval(
                &x,
                &gamma,
                &beta,
                &col(0),
                &col(1),
                n,
                c,
                s,
                q(precision, EPS),
            );
            assert_close(&what("eval y"), &layer.read(ctx, &layer.y), &want, 1.0, t);
        }
    }
}

#[test]
fn batchnorm_perturbed_forward_moves_one_element_per_copy() {
    let ctx = ctx();
    for precision in precisions() {
        let stats = bn_kernel(ctx, "bn_stats", precision, false);
        let train = bn_kernel(ctx, "bn_forward_train", precision, true);
        let eval = bn_kernel(ctx, "bn_forward_eval", precision, true);
        let h = match precision {
            Precision::F32 => 1e-2,
            Precision::F64 => 1e-5,
        };
        for (case, shape) in [(3, 3, 25), (1, 1, 25), (7, 30, 1), (2, 3, 144)]
            .into_iter()
            .enumerate()
        {
            let (n, c, s) = shape;
            let mut rng = ChaCha8Rng::seed_from_u64(3000 + case as u64);
            // Every γ and β element, both signs, plus copies perturbed elsewhere in the arena
            // (before γ, between γ and β, after β).
            let mut pert: Vec<[u32; 2]> = Vec::new();
            for ch in 0..c {
                for flat in [G_OFF + ch, b_off(c) + ch] {
                    pert.push([flat as u32, 0]);
                    pert.push([flat as u32, 1]);
                }
            }
            let elsewhere = [0, G_OFF + c, arena_len(c) - 1];
            for (i, &flat) in elsewhere.iter().enumerate() {
                pert.push([flat as u32, (i % 2) as u32]);
            }
            let copies = pert.len();
            let per_copy = n * c * s;
            // Each copy has its own input, as behind perturbed upstream layers.
            let x = qv(precision, &channel_input(&mut rng, copies, n, c, s));
            let theta = qv(precision, &random_arena(&mut rng, c));
            let rm = qv(precision, &uniform_values(&mut rng, c, -0.5, 0.5));
            let rv = qv(precision, &uniform_values(&mut rng, c, 0.5, 2.0));
            let running: Vec<f64> = rm.iter().zip(&rv).flat_map(|(&a, &b)| [a, b]).collect();
            let flat_pert: Vec<u32> = pert.iter().flatten().copied().collect();
            let layer = BnLayer::new(
                ctx, precision, shape, copies, &x, &theta, &running, &flat_pert, h,
            );
            let y_eval = GpuBuffer::real(ctx, "y_eval", copies * per_copy, precision);
            kernel::run(
                ctx,
                &[
                    layer.stats(ctx, &stats),
                    layer.elementwise(ctx, &train),
                    layer.dispatch(ctx, &eval, &layer.x, &y_eval, grid(layer.count()).0),
                ],
            )
            .unwrap();
            let y = layer.read(ctx, &layer.y);
            let y_ev = layer.read(ctx, &y_eval);
            let means = layer.stats_column(ctx, 0);
            let inv_stds = layer.stats_column(ctx, 1);
            let hq = q(precision, h);
            let t = tol(precision);
            for (p, &[flat, sign]) in pert.iter().enumerate() {
                let mut th = theta.clone();
                let flat = flat as usize;
                // Copies perturbed outside γ and β must see exactly the base.
                if (G_OFF..G_OFF + c).contains(&flat) || (b_off(c)..b_off(c) + c).contains(&flat) {
                    th[flat] += if sign == 0 { hq } else { -hq };
                }
                let (gamma, beta) = gamma_beta(&th, c);
                let xp = &x[p * per_copy..(p + 1) * per_copy];
                let range = p * per_copy..(p + 1) * per_copy;
                let want = reference::batchnorm_forward_train(
                    xp,
                    &gamma,
                    &beta,
                    n,
                    c,
                    s,
                    q(precision, EPS),
                );
                let what = |name| format!("{precision} {shape:?} copy {p} (flat {flat}) {name}");
                assert_close(
                    &what("mean"),
                    &means[p * c..(p + 1) * c],
                    &want.mean,
                    1.0,
                    t,
                );
                assert_close(
                    &what("inv_std"),
                    &inv_stds[p * c..(p + 1) * c],
                    &want.inv_std,
                    0.0,
                    t,
                );
                assert_close(&what("train y"), &y[range.clone()], &want.y, 1.0, t);
                let want_eval = reference::batchnorm_forward_eval(
                    xp,
                    &gamma,
                    &beta,
                    &rm,
                    &rv,
                    n,
                    c,
                    s,
                    q(precision, EPS),
                );
                assert_close(&what("eval y"), &y_ev[range], &want_eval, 1.0, t);
            }
            // The perturbed build has no backward pass and leaves xhat alone.
            assert!(layer.read(ctx, &layer.xhat).iter().all(|&v| v == 0.0));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dropout
// ---------------------------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DropoutParams {
    count: u32,
    per_copy: u32,
    seed: u32,
    threshold: u32,
    step_slot: u32,
    row_width: u32,
    channels: u32,
    plane: u32,
}

/// shaders/dropout.wgsl's binding table: P, x (or dy), state, y (or dx), mask, consts, moved
/// (one-channel routes, not run here).
const DROPOUT_BINDINGS: [Binding; 7] = [
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::Read,
    Binding::Read,
];

struct Dropout {
    params: wgpu::Buffer,
    count: usize,
    consts: GpuBuffer,
}

impl Dropout {
    fn new(
        ctx: &GpuContext,
        precision: Precision,
        copies: usize,
        per_copy: usize,
        seed: u32,
        p: f64,
        step_slot: u32,
    ) -> Self {
        let count = copies * per_copy;
        let params = DropoutParams {
            count: count as u32,
            per_copy: per_copy as u32,
            seed,
            threshold: reference::dropout_threshold(p),
            step_slot,
            row_width: grid(count).1,
            channels: 1,
            plane: 1,
        };
        Dropout {
            params: uniform(ctx, "dropout", &params),
            count,
            consts: GpuBuffer::from_real(ctx, "consts", &[reference::dropout_scale(p)], precision),
        }
    }

    fn dispatch(
        &self,
        ctx: &GpuContext,
        kernel: &Kernel,
        [x, state, y, mask]: [&GpuBuffer; 4],
    ) -> Dispatch {
        kernel.dispatch(
            ctx,
            &[
                &self.params,
                &x.buffer,
                &state.buffer,
                &y.buffer,
                &mask.buffer,
                &self.consts.buffer,
                &state.buffer,
            ],
            grid(self.count).0,
        )
    }
}

fn dropout_kernels(ctx: &GpuContext, precision: Precision) -> (Kernel, Kernel) {
    let k = |entry| {
        Kernel::new(
            ctx,
            dropout::SHADER,
            entry,
            precision,
            &DROPOUT_BINDINGS,
            &[],
        )
    };
    (k("dropout_forward"), k("dropout_backward"))
}

/// The product the GPU forms from two values of `precision`: exact in f64 and then rounded
/// once, which is what a correctly rounded f32 multiply gives.
fn product(precision: Precision, a: f64, b: f64) -> f64 {
    q(precision, q(precision, a) * q(precision, b))
}

#[test]
fn dropout_masks_match_the_cpu_hash_bit_for_bit() {
    let ctx = ctx();
    for precision in precisions() {
        let (forward, backward) = dropout_kernels(ctx, precision);
        for (case, (p, copies, per_copy)) in [
            (0.0, 1, 1000),
            (0.1, 1, 4099),
            (0.5, 3, 77),
            (0.1, 2, 1),
            (0.5, 1, 70_001),
        ]
        .into_iter()
        .enumerate()
        {
            let mut rng = ChaCha8Rng::seed_from_u64(4000 + case as u64);
            let seed = 12345 + case as u32;
            let step = 17 * case as u32;
            let x = qv(
                precision,
                &uniform_values(&mut rng, copies * per_copy, -2.0, 2.0),
            );
            let dy = qv(
                precision,
                &uniform_values(&mut rng, copies * per_copy, -2.0, 2.0),
            );
            let d = Dropout::new(ctx, precision, copies, per_copy, seed, p, 0);
            // The trainer's word 0 is the completed-steps count.
            let state = GpuBuffer::from_u32(ctx, "state", &[step, 99, 0, 0]);
            let x_buf = GpuBuffer::from_real(ctx, "x", &x, precision);
            let dy_buf = GpuBuffer::from_real(ctx, "dy", &dy, precision);
            let y_buf = GpuBuffer::real(ctx, "y", d.count, precision);
            let dx_buf = GpuBuffer::real(ctx, "dx", d.count, precision);
            let mask_buf = GpuBuffer::real(ctx, "mask", per_copy, precision);
            kernel::run(
                ctx,
                &[
                    d.dispatch(ctx, &forward, [&x_buf, &state, &y_buf, &mask_buf]),
                    d.dispatch(ctx, &backward, [&dy_buf, &state, &dx_buf, &mask_buf]),
                ],
            )
            .unwrap();
            let mask = mask_buf.read_real(ctx, precision).unwrap();
            let y = y_buf.read_real(ctx, precision).unwrap();
            let dx = dx_buf.read_real(ctx, precision).unwrap();
            let (_, want_mask) = reference::dropout_forward(&x[..per_copy], seed, step, p);
            let want_mask = qv(precision, &want_mask);
            let what = format!("{precision} p={p} copies={copies} per_copy={per_copy}");
            assert_eq!(mask, want_mask, "{what}: mask");
            // Every copy uses copy 0's mask.
            for i in 0..copies * per_copy {
                let m = want_mask[i % per_copy];
                assert_eq!(y[i], product(precision, x[i], m), "{what}: y[{i}]");
                assert_eq!(dx[i], product(precision, dy[i], m), "{what}: dx[{i}]");
            }
            let kept = mask.iter().filter(|&&m| m != 0.0).count();
            if p == 0.0 {
                assert_eq!(kept, per_copy, "{what}: p = 0 drops nothing");
                assert_eq!(y, x, "{what}: p = 0 is the identity");
            } else if per_copy > 1000 {
                let frac = kept as f64 / per_copy as f64;
                assert!((frac - (1.0 - p)).abs() < 0.02, "{what}: kept {frac}");
            }
        }
    }
}

#[test]
fn dropout_mask_follows_the_step_word() {
    let ctx = ctx();
    for precision in precisions() {
        let (forward, _) = dropout_kernels(ctx, precision);
        let per_copy = 2000;
        let (seed, p) = (77, 0.5);
        let x = vec![1.0; per_copy];
        // The step lives in word 1 here, to show the slot is honoured.
        let d = Dropout::new(ctx, precision, 1, per_copy, seed, p, 1);
        let state = GpuBuffer::from_u32(ctx, "state", &[1000, 5, 0, 0]);
        let x_buf = GpuBuffer::from_real(ctx, "x", &x, precision);
        let y_buf = GpuBuffer::real(ctx, "y", per_copy, precision);
        let mask_buf = GpuBuffer::real(ctx, "mask", per_copy, precision);
        let step = [d.dispatch(ctx, &forward, [&x_buf, &state, &y_buf, &mask_buf])];
        let run = || {
            kernel::run(ctx, &step).unwrap();
            mask_buf.read_real(ctx, precision).unwrap()
        };
        let cpu = |step| qv(precision, &reference::dropout_forward(&x, seed, step, p).1);

        let at5 = run();
        assert_eq!(at5, cpu(5), "{precision}: step 5");
        // Another word changing leaves the mask alone.
        state.write_u32(ctx, 0, &[1001]);
        assert_eq!(run(), at5, "{precision}: word 0 must not matter");
        state.write_u32(ctx, 1, &[6]);
        let at6 = run();
        assert_eq!(at6, cpu(6), "{precision}: step 6");
        let differ = at5.iter().zip(&at6).filter(|(a, b)| a != b).count();
        // Independent masks at p = 0.5 differ in about half the places.
        assert!(
            differ > per_copy / 3,
            "{precision}: steps 5 and 6 differ in only {differ} places"
        );
        state.write_u32(ctx, 1, &[5]);
        assert_eq!(run(), at5, "{precision}: step 5 again");
        // A different seed draws a different stream.
        let other = Dropout::new(ctx, precision, 1, per_copy, seed + 1, p, 1);
        kernel::run(
            ctx,
            &[other.dispatch(ctx, &forward, [&x_buf, &state, &y_buf, &mask_buf])],
        )
        .unwrap();
        let reseeded = mask_buf.read_real(ctx, precision).unwrap();
        assert_ne!(reseeded, at5, "{precision}: seed must matter");
        assert_eq!(
            reseeded,
            qv(precision, &reference::dropout_forward(&x, seed + 1, 5, p).1)
        );
    }
}
