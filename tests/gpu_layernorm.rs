//! LayerNorm kernels (shaders/layernorm.wgsl) against the f64 CPU reference
//! (src/reference/norm.rs), in f32 and f64, at awkward sizes: one feature, a batch of one,
//! feature counts that are no power of two and smaller or larger than a workgroup, several
//! parameter copies, and the sizes that stretch the grids and lavapipe's loop budget.

mod common;

use bytemuck::{Pod, Zeroable};
use common::{ctx, precisions};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wgrad::gpu::buffers::uniform;
use wgrad::gpu::kernel::{self, grid};
use wgrad::gpu::{Binding, Dispatch, GpuBuffer, GpuContext, Kernel, Precision};
use wgrad::nn::layers::layernorm;
use wgrad::reference::norm as reference;

const EPS: f64 = reference::LAYERNORM_EPS;

/// (N, F, copies) cases. F = 1 is PyTorch-legal but degenerate (var 0, y = β, dx = 0).
const SHAPES: [(usize, usize, usize); 7] = [
    (1, 7, 1),
    (3, 33, 1),
    (7, 100, 1),
    (5, 784, 1),
    (4, 1, 1),
    (2, 130, 3),
    (3, 65, 5),
];

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

/// Inputs whose rows differ in offset and spread, so a wrong row index shows.
fn row_input(rng: &mut ChaCha8Rng, rows: usize, f: usize) -> Vec<f64> {
    let mut x = uniform_values(rng, rows * f, -1.0, 1.0);
    for (i, v) in x.iter_mut().enumerate() {
        let r = i / f;
        *v = 0.3 * (r % 5) as f64 - 0.5 + (0.5 + 0.1 * (r % 7) as f64) * *v;
    }
    x
}

fn max(v: impl IntoIterator<Item = f64>) -> f64 {
    v.into_iter().fold(0.0, f64::max)
}

/// How much a row's rounding is magnified in xhat: x − mean is formed from terms of size
/// |x| + |mean| and then scaled by inv_std, so a row whose spread is small next to its values
/// (likely somewhere among 10⁵ rows of three features) loses digits in any f32 kernel. At
/// least 1, so well-spread rows are judged on the absolute scale of xhat itself.
fn conditioning(row: &[f64], mean: f64, inv_std: f64) -> f64 {
    let terms = max(row.iter().map(|v| v.abs())) + mean.abs();
    (terms * inv_std).max(1.0)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LnParams {
    n: u32,
    f: u32,
    copies: u32,
    g_off: u32,
    b_off: u32,
    count: u32,
    row_width: u32,
    input_shared: u32,
    plane: u32,
    _pad: [u32; 3],
}

/// shaders/layernorm.wgsl's binding table, shared by every entry point: P, consts, x (or dy),
/// stats, theta, xhat, y (or dx), grads, pert, hstep, moved (one-channel routes, not run here).
const LN_BINDINGS: [Binding; 11] = [
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::Read,
    Binding::Read,
    Binding::Read,
];

fn ln_kernel(ctx: &GpuContext, entry: &str, precision: Precision, perturbed: bool) -> Kernel {
    let constants: &[(&str, f64)] = if perturbed {
        &[("PERTURBED", 1.0)]
    } else {
        &[]
    };
    Kernel::new(
        ctx,
        layernorm::SHADER,
        entry,
        precision,
        &LN_BINDINGS,
        constants,
    )
}

struct LnKernels {
    stats: Kernel,
    forward: Kernel,
    backward_params: Kernel,
    backward_input: Kernel,
}

impl LnKernels {
    fn new(ctx: &GpuContext, precision: Precision) -> Self {
        LnKernels {
            stats: ln_kernel(ctx, "ln_stats", precision, false),
            forward: ln_kernel(ctx, "ln_forward", precision, false),
            backward_params: ln_kernel(ctx, "ln_backward_params", precision, false),
            backward_input: ln_kernel(ctx, "ln_backward_input", precision, false),
        }
    }
}

/// γ and β sit inside a larger arena, at offsets that are not multiples of anything, with
/// other parameters around them.
const G_OFF: usize = 5;
fn b_off(f: usize) -> usize {
    G_OFF + f + 2
}
fn arena_len(f: usize) -> usize {
    b_off(f) + f + 3
}

/// One LayerNorm layer's buffers on the GPU.
struct LnLayer {
    precision: Precision,
    n: usize,
    f: usize,
    copies: usize,
    params: wgpu::Buffer,
    consts: GpuBuffer,
    x: GpuBuffer,
    stats: GpuBuffer,
    theta: GpuBuffer,
    xhat: GpuBuffer,
    y: GpuBuffer,
    grads: GpuBuffer,
    pert: GpuBuffer,
    hstep: GpuBuffer,
}

impl LnLayer {
    #[allow(clippy::too_many_arguments)]
    fn new(
        ctx: &GpuContext,
        precision: Precision,
        (n, f): (usize, usize),
        copies: usize,
        x: &[f64],
        theta: &[f64],
        pert: &[u32],
        h: f64,
    ) -> Self {
        let count = copies * n * f;
        let params = LnParams {
            n: n as u32,
            f: f as u32,
            copies: copies as u32,
            g_off: G_OFF as u32,
            b_off: b_off(f) as u32,
            count: count as u32,
            row_width: grid(count).1,
            input_shared: 0,
            plane: 1,
            _pad: [0; 3],
        };
        let real = |label, values: &[f64]| GpuBuffer::from_real(ctx, label, values, precision);
        LnLayer {
            precision,
            n,
            f,
            copies,
            params: uniform(ctx, "layernorm", &params),
            consts: real("consts", &[EPS]),
            x: real("x", x),
            stats: GpuBuffer::real(ctx, "stats", copies * n * 2, precision),
            theta: real("theta", theta),
            xhat: GpuBuffer::real(ctx, "xhat", count, precision),
            y: GpuBuffer::real(ctx, "y", count, precision),
            grads: GpuBuffer::real(ctx, "grads", arena_len(f), precision),
            pert: GpuBuffer::from_u32(ctx, "pert", pert),
            hstep: real("hstep", &[h]),
        }
    }

    fn count(&self) -> usize {
        self.copies * self.n * self.f
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
                &self.pert.buffer,
                &self.hstep.buffer,
                &self.pert.buffer,
            ],
            groups,
        )
    }

    fn stats(&self, ctx: &GpuContext, k: &Kernel) -> Dispatch {
        self.dispatch(ctx, k, &self.x, &self.y, grid(self.copies * self.n * 64).0)
    }

    fn forward(&self, ctx: &GpuContext, k: &Kernel, y: &GpuBuffer) -> Dispatch {
        self.dispatch(ctx, k, &self.x, y, grid(self.count()).0)
    }

    fn backward_params(&self, ctx: &GpuContext, k: &Kernel, dy: &GpuBuffer) -> Dispatch {
        self.dispatch(ctx, k, dy, &self.y, grid(self.f).0)
    }

    fn backward_input(
        &self,
        ctx: &GpuContext,
        k: &Kernel,
        dy: &GpuBuffer,
        dx: &GpuBuffer,
    ) -> Dispatch {
        self.dispatch(ctx, k, dy, dx, grid(self.n * 64).0)
    }

    fn read(&self, ctx: &GpuContext, b: &GpuBuffer) -> Vec<f64> {
        b.read_real(ctx, self.precision).unwrap()
    }

    /// Column `k` of the [copies·N, 2] stats records.
    fn stats_column(&self, ctx: &GpuContext, k: usize) -> Vec<f64> {
        self.read(ctx, &self.stats)
            .chunks(2)
            .map(|r| r[k])
            .collect()
    }
}

/// A random arena with γ (around 1, some negative) and β in place.
fn random_arena(rng: &mut ChaCha8Rng, f: usize) -> Vec<f64> {
    let mut theta = uniform_values(rng, arena_len(f), -1.0, 1.0);
    for k in 0..f {
        theta[G_OFF + k] = if k % 4 == 3 { -0.7 } else { 1.0 } + 0.5 * theta[G_OFF + k];
    }
    theta
}

fn gamma_beta(theta: &[f64], f: usize) -> (Vec<f64>, Vec<f64>) {
    (
        theta[G_OFF..G_OFF + f].to_vec(),
        theta[b_off(f)..b_off(f) + f].to_vec(),
    )
}

/// Stats and forward of every copy against the reference run on that copy's rows alone.
fn check_forward(
    ctx: &GpuContext,
    precision: Precision,
    k: &LnKernels,
    (n, f, copies): (usize, usize, usize),
    seed: u64,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = qv(precision, &row_input(&mut rng, copies * n, f));
    let theta = qv(precision, &random_arena(&mut rng, f));
    let layer = LnLayer::new(ctx, precision, (n, f), copies, &x, &theta, &[0], 0.0);
    kernel::run(
        ctx,
        &[
            layer.stats(ctx, &k.stats),
            layer.forward(ctx, &k.forward, &layer.y),
        ],
    )
    .unwrap();
    let (gamma, beta) = gamma_beta(&theta, f);
    let (means, inv_stds) = (layer.stats_column(ctx, 0), layer.stats_column(ctx, 1));
    let (xhat, y) = (layer.read(ctx, &layer.xhat), layer.read(ctx, &layer.y));
    let t = tol(precision);
    let per_copy = n * f;
    for p in 0..copies {
        let want = reference::layernorm_forward(
            &x[p * per_copy..(p + 1) * per_copy],
            &gamma,
            &beta,
            n,
            f,
            q(precision, EPS),
        );
        let what =
            |name: &str| format!("{precision} (n {n}, f {f}, copies {copies}) copy {p} {name}");
        let rows = p * n..(p + 1) * n;
        assert_close(&what("mean"), &means[rows.clone()], &want.mean, 1.0, t);
        assert_close(&what("inv_std"), &inv_stds[rows], &want.inv_std, 0.0, t);
        let max_gamma = max(gamma.iter().map(|g| g.abs()));
        for i in 0..n {
            let local = i * f..(i + 1) * f;
            let at = p * per_copy + i * f..p * per_copy + (i + 1) * f;
            let cond = conditioning(&x[at.clone()], want.mean[i], want.inv_std[i]);
            let row = |name: &str| format!("{} row {i}", what(name));
            assert_close(
                &row("xhat"),
                &xhat[at.clone()],
                &want.xhat[local.clone()],
                cond,
                t,
            );
            let scale = cond * max_gamma;
            assert_close(&row("y"), &y[at], &want.y[local], scale, t);
        }
    }

    // A fixed summation order: the same statistics to the bit when run again.
    let first = layer.stats.read_bytes(ctx, 0..layer.stats.len).unwrap();
    kernel::run(ctx, &[layer.stats(ctx, &k.stats)]).unwrap();
    let again = layer.stats.read_bytes(ctx, 0..layer.stats.len).unwrap();
    assert_eq!(
        first, again,
        "{precision} (n {n}, f {f}, copies {copies}): stats not deterministic"
    );
}

/// Forward then both backward kernels (copies = 1) against the reference.
fn check_backward(
    ctx: &GpuContext,
    precision: Precision,
    k: &LnKernels,
    (n, f): (usize, usize),
    seed: u64,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = qv(precision, &row_input(&mut rng, n, f));
    let theta = qv(precision, &random_arena(&mut rng, f));
    let dy = qv(precision, &uniform_values(&mut rng, n * f, -1.0, 1.0));
    let layer = LnLayer::new(ctx, precision, (n, f), 1, &x, &theta, &[0], 0.0);
    let dy_buf = GpuBuffer::from_real(ctx, "dy", &dy, precision);
    let dx_buf = GpuBuffer::real(ctx, "dx", n * f, precision);
    // Other parameters' gradients must survive, and γ's and β's are written, not accumulated.
    let sentinel = vec![7.0; arena_len(f)];
    layer.grads.write_real(ctx, 0, &sentinel, precision);
    kernel::run(
        ctx,
        &[
            layer.stats(ctx, &k.stats),
            layer.forward(ctx, &k.forward, &layer.y),
            layer.backward_params(ctx, &k.backward_params, &dy_buf),
            layer.backward_input(ctx, &k.backward_input, &dy_buf, &dx_buf),
        ],
    )
    .unwrap();
    let (gamma, beta) = gamma_beta(&theta, f);
    let fwd = reference::layernorm_forward(&x, &gamma, &beta, n, f, q(precision, EPS));
    let (dx, dgamma, dbeta) =
        reference::layernorm_backward(&dy, &fwd.xhat, &fwd.inv_std, &gamma, n, f);

    // Scales: the sums of magnitudes each result adds up, with xhat's own error as large as
    // its row's conditioning makes it.
    let cond: Vec<f64> = (0..n)
        .map(|i| conditioning(&x[i * f..(i + 1) * f], fwd.mean[i], fwd.inv_std[i]))
        .collect();
    let mut abs_dy = vec![0.0f64; f];
    let mut abs_dyx = vec![0.0f64; f];
    for (i, (&g, &xh)) in dy.iter().zip(&fwd.xhat).enumerate() {
        abs_dy[i % f] += g.abs();
        abs_dyx[i % f] += g.abs() * xh.abs().max(cond[i / f]);
    }
    let t = tol(precision);
    let what = |name: &str| format!("{precision} (n {n}, f {f}) {name}");
    let dx_got = layer.read(ctx, &dx_buf);
    for (i, &cond_i) in cond.iter().enumerate() {
        let row = i * f..(i + 1) * f;
        let g = |at: usize| (dy[at] * gamma[at % f]).abs();
        let abs_a: f64 = row.clone().map(g).sum();
        let abs_b: f64 = row.clone().map(|at| g(at) * fwd.xhat[at].abs()).sum();
        let terms = max(row
            .clone()
            .map(|at| f as f64 * g(at) + abs_a + fwd.xhat[at].abs() * abs_b));
        let scale = fwd.inv_std[i] / f as f64 * terms * cond_i;
        let name = format!("dx row {i}");
        assert_close(&what(&name), &dx_got[row.clone()], &dx[row], scale, t);
    }
    let grads = layer.read(ctx, &layer.grads);
    let bo = b_off(f);
    assert_close(
        &what("dgamma"),
        &grads[G_OFF..G_OFF + f],
        &dgamma,
        max(abs_dyx),
        t,
    );
    assert_close(&what("dbeta"), &grads[bo..bo + f], &dbeta, max(abs_dy), t);
    let untouched = grads
        .iter()
        .enumerate()
        .filter(|&(i, _)| !(G_OFF..G_OFF + f).contains(&i) && !(bo..bo + f).contains(&i))
        .all(|(_, &g)| g == 7.0);
    assert!(
        untouched,
        "{precision} (n {n}, f {f}): wrote outside γ and β"
    );
}

#[test]
fn layernorm_forward_matches_reference() {
    let ctx = ctx();
    for precision in precisions() {
        let k = LnKernels::new(ctx, precision);
        for (case, shape) in SHAPES.into_iter().enumerate() {
            check_forward(ctx, precision, &k, shape, case as u64);
        }
    }
}

#[test]
fn layernorm_backward_matches_reference() {
    let ctx = ctx();
    for precision in precisions() {
        let k = LnKernels::new(ctx, precision);
        for (case, (n, f, _)) in SHAPES.into_iter().enumerate() {
            check_backward(ctx, precision, &k, (n, f), 1000 + case as u64);
        }
    }
}

/// The sizes the loops and grids were written for: a row of ~30,000 features (a conv output),
/// a batch of 32,768 rows (one backward_params loop that long), and more than 65,535 rows in
/// all, so the per-row grids fold into 2-D. f32 only: lavapipe is slow, and the indexing is the
/// same in both precisions.
#[test]
fn layernorm_large_shapes_match_reference() {
    let ctx = ctx();
    let precision = Precision::F32;
    let k = LnKernels::new(ctx, precision);
    check_forward(ctx, precision, &k, (2, 30_000, 1), 2000);
    check_forward(ctx, precision, &k, (32_768, 3, 3), 2001);
    check_backward(ctx, precision, &k, (2, 30_000), 2002);
    check_backward(ctx, precision, &k, (32_768, 3), 2003);
}

#[test]
fn layernorm_perturbed_forward_moves_one_element_per_copy() {
    let ctx = ctx();
    for precision in precisions() {
        let k = LnKernels::new(ctx, precision);
        let perturbed = ln_kernel(ctx, "ln_forward", precision, true);
        let h = match precision {
            Precision::F32 => 1e-2,
            Precision::F64 => 1e-5,
        };
        for (case, shape) in [(3, 7), (1, 33), (2, 1), (4, 70)].into_iter().enumerate() {
            let (n, f) = shape;
            let mut rng = ChaCha8Rng::seed_from_u64(3000 + case as u64);
            // Every γ and β element, both signs, plus copies perturbed elsewhere in the arena
            // (before γ, between γ and β, after β).
            let mut pert: Vec<[u32; 2]> = Vec::new();
            for j in 0..f {
                for flat in [G_OFF + j, b_off(f) + j] {
                    pert.push([flat as u32, 0]);
                    pert.push([flat as u32, 1]);
                }
            }
            let elsewhere = [0, G_OFF + f, arena_len(f) - 1];
            for (i, &flat) in elsewhere.iter().enumerate() {
                pert.push([flat as u32, (i % 2) as u32]);
            }
            let copies = pert.len();
            let per_copy = n * f;
            // Each copy has its own input, as behind perturbed upstream layers.
            let x = qv(precision, &row_input(&mut rng, copies * n, f));
            let theta = qv(precision, &random_arena(&mut rng, f));
            let flat_pert: Vec<u32> = pert.iter().flatten().copied().collect();
            let layer = LnLayer::new(ctx, precision, shape, copies, &x, &theta, &flat_pert, h);
            // The same stats through the unperturbed build, for the copies that move neither.
            let y_base = GpuBuffer::real(ctx, "y_base", copies * per_copy, precision);
            kernel::run(
                ctx,
                &[
                    layer.stats(ctx, &k.stats),
                    layer.forward(ctx, &perturbed, &layer.y),
                ],
            )
            .unwrap();
            // The perturbed build has no backward pass and leaves xhat alone.
            assert!(
                layer.read(ctx, &layer.xhat).iter().all(|&v| v == 0.0),
                "{precision} {shape:?}: perturbed forward wrote xhat"
            );
            kernel::run(ctx, &[layer.forward(ctx, &k.forward, &y_base)]).unwrap();
            let y = layer.read(ctx, &layer.y);
            let y_base = layer.read(ctx, &y_base);
            let hq = q(precision, h);
            let t = tol(precision);
            let mut moved = 0;
            for (p, &[flat, sign]) in pert.iter().enumerate() {
                let mut th = theta.clone();
                let flat = flat as usize;
                let range = p * per_copy..(p + 1) * per_copy;
                let what = format!("{precision} {shape:?} copy {p} (flat {flat}, sign {sign})");
                if (G_OFF..G_OFF + f).contains(&flat) || (b_off(f)..b_off(f) + f).contains(&flat) {
                    th[flat] += if sign == 0 { hq } else { -hq };
                    moved += 1;
                } else {
                    // Copies perturbed outside γ and β see exactly the base.
                    assert_eq!(y[range.clone()], y_base[range.clone()], "{what}: y");
                }
                let (gamma, beta) = gamma_beta(&th, f);
                let want = reference::layernorm_forward(
                    &x[range.clone()],
                    &gamma,
                    &beta,
                    n,
                    f,
                    q(precision, EPS),
                );
                assert_close(&format!("{what}: y"), &y[range], &want.y, 1.0, t);
            }
            assert_eq!(moved, 4 * f);
            // The change shows: a copy that moves β[0] by +h shifts feature 0 of every row by h.
            let p = 2; // pert order: γ0+, γ0−, β0+, β0−, …
            for r in 0..n {
                let at = p * per_copy + r * f;
                let shift = y[at] - y_base[at];
                assert!(
                    (shift - hq).abs() <= 10.0 * t * (1.0 + y_base[at].abs()),
                    "{precision} {shape:?}: β0 + h moved row {r} by {shift}"
                );
            }
        }
    }
}
