//! BatchNorm, LayerNorm and Dropout references (f64), forward and backward side by side, with
//! PyTorch's semantics: BatchNorm{1d,2d} normalise over (N, H·W) per channel with the biased
//! variance and keep running statistics with the unbiased one; LayerNorm (elementwise affine)
//! normalises each sample over its F features (F = C·H·W after a conv) with the biased variance;
//! dropout is inverted (kept elements scaled by 1/(1 − p)) and its mask comes from the same
//! counter-based hash as shaders/dropout.wgsl.
//!
//! Layout: NCHW row-major with S = H·W (S = 1 after an affine layer, where C is the feature
//! count), so element (n, c, s) of a [N, C, S] tensor sits at (n·C + c)·S + s; LayerNorm sees the
//! same memory as [N, F] rows.

// Index loops mirror the subscripts of the formulas, as in the rest of the oracle.
#![allow(clippy::needless_range_loop)]

/// PyTorch's defaults.
pub const BATCHNORM_EPS: f64 = 1e-5;
pub const BATCHNORM_MOMENTUM: f64 = 0.1;
pub const LAYERNORM_EPS: f64 = 1e-5;

/// What the training forward keeps: the output and everything backward and the running update
/// need.
#[derive(Clone, Debug)]
pub struct BatchNormForward {
    pub y: Vec<f64>,
    pub mean: Vec<f64>,
    /// Biased batch variance (divided by M = N·S).
    pub var: Vec<f64>,
    pub xhat: Vec<f64>,
    /// 1/√(var + eps).
    pub inv_std: Vec<f64>,
}

/// Training forward: per channel c over its M = N·S values,
/// xhat = (x − mean)·inv_std, inv_std = 1/√(var + eps), y = γ·xhat + β.
// x: [N, C, S], gamma, beta: [C] -> y, xhat: [N, C, S], mean, var, inv_std: [C]
pub fn batchnorm_forward_train(
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    n: usize,
    c: usize,
    s: usize,
    eps: f64,
) -> BatchNormForward {
    assert_eq!(x.len(), n * c * s, "batchnorm: x must be [N, C, S]");
    assert_eq!(gamma.len(), c, "batchnorm: gamma must be [C]");
    assert_eq!(beta.len(), c, "batchnorm: beta must be [C]");
    let m = (n * s) as f64;
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    let mut inv_std = vec![0.0; c];
    for ch in 0..c {
        let mut sum = 0.0;
        for i in 0..n {
            for k in 0..s {
                sum += x[(i * c + ch) * s + k];
            }
        }
        mean[ch] = sum / m;
        let mut sq = 0.0;
        for i in 0..n {
            for k in 0..s {
                let d = x[(i * c + ch) * s + k] - mean[ch];
                sq += d * d;
            }
        }
        var[ch] = sq / m;
        inv_std[ch] = 1.0 / (var[ch] + eps).sqrt();
    }
    let mut xhat = vec![0.0; x.len()];
    let mut y = vec![0.0; x.len()];
    for i in 0..n {
        for ch in 0..c {
            for k in 0..s {
                let at = (i * c + ch) * s + k;
                xhat[at] = (x[at] - mean[ch]) * inv_std[ch];
                y[at] = gamma[ch] * xhat[at] + beta[ch];
            }
        }
    }
    BatchNormForward {
        y,
        mean,
        var,
        xhat,
        inv_std,
    }
}

/// Backward of [`batchnorm_forward_train`] (the batch statistics depend on x, so every dx of a
/// channel depends on every dy of it): returns (dx, dγ, dβ) with
/// dγ = Σ dy·xhat, dβ = Σ dy, dx = γ·inv_std/M·(M·dy − dβ − xhat·dγ).
// dy, xhat: [N, C, S], inv_std, gamma: [C] -> dx: [N, C, S], dgamma, dbeta: [C]
pub fn batchnorm_backward(
    dy: &[f64],
    xhat: &[f64],
    inv_std: &[f64],
    gamma: &[f64],
    n: usize,
    c: usize,
    s: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    assert_eq!(
        dy.len(),
        n * c * s,
        "batchnorm_backward: dy must be [N, C, S]"
    );
    assert_eq!(
        xhat.len(),
        n * c * s,
        "batchnorm_backward: xhat must be [N, C, S]"
    );
    assert_eq!(inv_std.len(), c, "batchnorm_backward: inv_std must be [C]");
    assert_eq!(gamma.len(), c, "batchnorm_backward: gamma must be [C]");
    let m = (n * s) as f64;
    let mut dgamma = vec![0.0; c];
    let mut dbeta = vec![0.0; c];
    for i in 0..n {
        for ch in 0..c {
            for k in 0..s {
                let at = (i * c + ch) * s + k;
                dgamma[ch] += dy[at] * xhat[at];
                dbeta[ch] += dy[at];
            }
        }
    }
    let mut dx = vec![0.0; dy.len()];
    for i in 0..n {
        for ch in 0..c {
            for k in 0..s {
                let at = (i * c + ch) * s + k;
                dx[at] =
                    gamma[ch] * inv_std[ch] / m * (m * dy[at] - dbeta[ch] - xhat[at] * dgamma[ch]);
            }
        }
    }
    (dx, dgamma, dbeta)
}

/// Running statistics after one training step with batch statistics (mean, biased var) over
/// `count` = M = N·S values: running = (1 − m)·running + m·batch, with the variance unbiased
/// (var·M/(M − 1)). M = 1 has no unbiased variance; the batch variance (0) is used, as the GPU
/// kernel does.
// running_mean, running_var, mean, var: [C]
pub fn batchnorm_update_running(
    running_mean: &mut [f64],
    running_var: &mut [f64],
    mean: &[f64],
    var: &[f64],
    count: usize,
    momentum: f64,
) {
    let c = running_mean.len();
    assert!(
        running_var.len() == c && mean.len() == c && var.len() == c,
        "batchnorm_update_running: all statistics must be [C]"
    );
    let m = count as f64;
    let bessel = m / (count.max(2) - 1) as f64;
    for ch in 0..c {
        running_mean[ch] = (1.0 - momentum) * running_mean[ch] + momentum * mean[ch];
        running_var[ch] = (1.0 - momentum) * running_var[ch] + momentum * var[ch] * bessel;
    }
}

/// Evaluation forward: y = γ·(x − running_mean)/√(running_var + eps) + β.
// x: [N, C, S], gamma, beta, running_mean, running_var: [C] -> y: [N, C, S]
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_eval(
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    running_mean: &[f64],
    running_var: &[f64],
    n: usize,
    c: usize,
    s: usize,
    eps: f64,
) -> Vec<f64> {
    assert_eq!(
        x.len(),
        n * c * s,
        "batchnorm_forward_eval: x must be [N, C, S]"
    );
    let mut y = vec![0.0; x.len()];
    for i in 0..n {
        for ch in 0..c {
            let inv_std = 1.0 / (running_var[ch] + eps).sqrt();
            for k in 0..s {
                let at = (i * c + ch) * s + k;
                y[at] = gamma[ch] * ((x[at] - running_mean[ch]) * inv_std) + beta[ch];
            }
        }
    }
    y
}

/// What the LayerNorm forward keeps: the output and everything backward needs, per row.
#[derive(Clone, Debug)]
pub struct LayerNormForward {
    pub y: Vec<f64>,
    pub xhat: Vec<f64>,
    pub mean: Vec<f64>,
    /// Biased variance of each row (divided by F).
    pub var: Vec<f64>,
    /// 1/√(var + eps).
    pub inv_std: Vec<f64>,
}

/// LayerNorm forward: per row i over its F values,
/// xhat = (x − mean)·inv_std, inv_std = 1/√(var + eps), y = γ·xhat + β (γ, β per feature).
// x: [N, F], gamma, beta: [F] -> y, xhat: [N, F], mean, var, inv_std: [N]
pub fn layernorm_forward(
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    n: usize,
    f: usize,
    eps: f64,
) -> LayerNormForward {
    assert_eq!(x.len(), n * f, "layernorm: x must be [N, F]");
    assert_eq!(gamma.len(), f, "layernorm: gamma must be [F]");
    assert_eq!(beta.len(), f, "layernorm: beta must be [F]");
    let ff = f as f64;
    let mut mean = vec![0.0; n];
    let mut var = vec![0.0; n];
    let mut inv_std = vec![0.0; n];
    let mut xhat = vec![0.0; x.len()];
    let mut y = vec![0.0; x.len()];
    for i in 0..n {
        let mut sum = 0.0;
        for k in 0..f {
            sum += x[i * f + k];
        }
        mean[i] = sum / ff;
        let mut sq = 0.0;
        for k in 0..f {
            let d = x[i * f + k] - mean[i];
            sq += d * d;
        }
        var[i] = sq / ff;
        inv_std[i] = 1.0 / (var[i] + eps).sqrt();
        for k in 0..f {
            let at = i * f + k;
            xhat[at] = (x[at] - mean[i]) * inv_std[i];
            y[at] = gamma[k] * xhat[at] + beta[k];
        }
    }
    LayerNormForward {
        y,
        xhat,
        mean,
        var,
        inv_std,
    }
}

/// Backward of [`layernorm_forward`] (each row's statistics depend on that row's x, so every dx
/// of a row depends on every dy of it): returns (dx, dγ, dβ) with dγ = Σ_i dy·xhat,
/// dβ = Σ_i dy over the rows, and per row, with g = dy·γ, A = Σ_k g, B = Σ_k g·xhat,
/// dx = inv_std/F·(F·g − A − xhat·B).
// dy, xhat: [N, F], inv_std: [N], gamma: [F] -> dx: [N, F], dgamma, dbeta: [F]
pub fn layernorm_backward(
    dy: &[f64],
    xhat: &[f64],
    inv_std: &[f64],
    gamma: &[f64],
    n: usize,
    f: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    assert_eq!(dy.len(), n * f, "layernorm_backward: dy must be [N, F]");
    assert_eq!(xhat.len(), n * f, "layernorm_backward: xhat must be [N, F]");
    assert_eq!(inv_std.len(), n, "layernorm_backward: inv_std must be [N]");
    assert_eq!(gamma.len(), f, "layernorm_backward: gamma must be [F]");
    let ff = f as f64;
    let mut dgamma = vec![0.0; f];
    let mut dbeta = vec![0.0; f];
    for i in 0..n {
        for k in 0..f {
            let at = i * f + k;
            dgamma[k] += dy[at] * xhat[at];
            dbeta[k] += dy[at];
        }
    }
    let mut dx = vec![0.0; dy.len()];
    for i in 0..n {
        let mut a = 0.0;
        let mut b = 0.0;
        for k in 0..f {
            let g = dy[i * f + k] * gamma[k];
            a += g;
            b += g * xhat[i * f + k];
        }
        for k in 0..f {
            let at = i * f + k;
            let g = dy[at] * gamma[k];
            dx[at] = inv_std[i] / ff * (ff * g - a - xhat[at] * b);
        }
    }
    (dx, dgamma, dbeta)
}

/// PCG's output permutation (RXS-M-XS) of one LCG step; the hash behind dropout masks, the
/// same as shaders/dropout.wgsl's.
pub fn pcg(v: u32) -> u32 {
    let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

/// Whether element `i` (index within one parameter copy) survives dropout at (`seed`, `step`).
pub fn dropout_keep(seed: u32, step: u32, i: u32, threshold: u32) -> bool {
    pcg(i ^ pcg(step ^ pcg(seed))) >= threshold
}

/// The hash threshold for drop probability `p`: round(p·2³²) clamped to u32, so a hash keeps
/// its element with probability (2³² − threshold)/2³² ≈ 1 − p (p = 0 keeps all).
pub fn dropout_threshold(p: f64) -> u32 {
    (p * 4_294_967_296.0).round().clamp(0.0, u32::MAX as f64) as u32
}

/// The scale of kept elements, 1/(1 − p); 0 at p ≥ 1, where PyTorch outputs zeros.
pub fn dropout_scale(p: f64) -> f64 {
    if p < 1.0 {
        1.0 / (1.0 - p)
    } else {
        0.0
    }
}

/// Training forward: y = x·mask, mask_i = 1/(1 − p) if kept, else 0.
// x: [*] (one copy) -> y, mask: [*]
pub fn dropout_forward(x: &[f64], seed: u32, step: u32, p: f64) -> (Vec<f64>, Vec<f64>) {
    let threshold = dropout_threshold(p);
    let scale = dropout_scale(p);
    let mask: Vec<f64> = (0..x.len())
        .map(|i| {
            if dropout_keep(seed, step, i as u32, threshold) {
                scale
            } else {
                0.0
            }
        })
        .collect();
    let y = x.iter().zip(&mask).map(|(&v, &m)| v * m).collect();
    (y, mask)
}

/// Backward of [`dropout_forward`]: dx = dy·mask.
// dy, mask: [*] -> dx: [*]
pub fn dropout_backward(dy: &[f64], mask: &[f64]) -> Vec<f64> {
    assert_eq!(
        dy.len(),
        mask.len(),
        "dropout_backward: dy and mask must have the same length"
    );
    dy.iter().zip(mask).map(|(&g, &m)| g * m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::spec::standard_normal;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn normals(rng: &mut ChaCha8Rng, len: usize, mean: f64, std: f64) -> Vec<f64> {
        (0..len)
            .map(|_| mean + std * standard_normal(rng))
            .collect()
    }

    /// L = Σ w·y: its gradient with respect to y is w, so backward(w) must match central
    /// differences of L.
    fn weighted_loss(
        x: &[f64],
        gamma: &[f64],
        beta: &[f64],
        w: &[f64],
        (n, c, s): (usize, usize, usize),
    ) -> f64 {
        let y = batchnorm_forward_train(x, gamma, beta, n, c, s, BATCHNORM_EPS).y;
        y.iter().zip(w).map(|(a, b)| a * b).sum()
    }

    fn central_difference(f: impl Fn(&[f64]) -> f64, at: &[f64], h: f64) -> Vec<f64> {
        let mut v = at.to_vec();
        (0..at.len())
            .map(|i| {
                v[i] = at[i] + h;
                let plus = f(&v);
                v[i] = at[i] - h;
                let minus = f(&v);
                v[i] = at[i];
                (plus - minus) / (2.0 * h)
            })
            .collect()
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn batchnorm_backward_matches_central_differences() {
        // N·S ≥ 2 throughout: with one value per channel the variance is 0 and xhat ≡ 0.
        for (case, &shape) in [
            (2, 1, 1),
            (5, 3, 1),
            (1, 1, 12),
            (1, 3, 12),
            (3, 3, 12),
            (4, 1, 2),
        ]
        .iter()
        .enumerate()
        {
            let (n, c, s) = shape;
            let mut rng = ChaCha8Rng::seed_from_u64(100 + case as u64);
            let x = normals(&mut rng, n * c * s, 0.5, 1.5);
            let gamma = normals(&mut rng, c, 1.0, 0.5);
            let beta = normals(&mut rng, c, 0.0, 0.5);
            let w = normals(&mut rng, n * c * s, 0.0, 1.0);
            let fwd = batchnorm_forward_train(&x, &gamma, &beta, n, c, s, BATCHNORM_EPS);
            let (dx, dgamma, dbeta) =
                batchnorm_backward(&w, &fwd.xhat, &fwd.inv_std, &gamma, n, c, s);
            let h = 1e-5;
            let num_dx = central_difference(|v| weighted_loss(v, &gamma, &beta, &w, shape), &x, h);
            let num_dg = central_difference(|v| weighted_loss(&x, v, &beta, &w, shape), &gamma, h);
            let num_db = central_difference(|v| weighted_loss(&x, &gamma, v, &w, shape), &beta, h);
            // Rounding noise of the differences is ~ε·|L|/h ≈ 1e-10; truncation ~h² ≈ 1e-10.
            for (name, analytic, numeric) in [
                ("dx", &dx, &num_dx),
                ("dgamma", &dgamma, &num_dg),
                ("dbeta", &dbeta, &num_db),
            ] {
                let err = max_abs_diff(analytic, numeric);
                assert!(err < 1e-7, "{shape:?} {name}: max abs err {err:e}");
            }
            // The input gradient of a normalised channel sums to zero (shifting x changes
            // nothing).
            for ch in 0..c {
                let sum: f64 = (0..n)
                    .flat_map(|i| (0..s).map(move |k| (i * c + ch) * s + k))
                    .map(|at| dx[at])
                    .sum();
                assert!(
                    sum.abs() < 1e-12,
                    "{shape:?}: Σ dx of channel {ch} = {sum:e}"
                );
            }
        }
    }

    #[test]
    fn batchnorm_training_statistics_by_hand() {
        // One channel, x = 1, 2, 3, 4 as N = 2 rows of S = 2: mean 2.5, biased var 1.25.
        let x = [1.0, 2.0, 3.0, 4.0];
        let fwd = batchnorm_forward_train(&x, &[2.0], &[0.5], 2, 1, 2, BATCHNORM_EPS);
        assert_eq!(fwd.mean, [2.5]);
        assert_eq!(fwd.var, [1.25]);
        let inv_std = 1.0 / (1.25f64 + 1e-5).sqrt();
        assert_eq!(fwd.inv_std, [inv_std]);
        for (i, &v) in x.iter().enumerate() {
            assert_eq!(fwd.xhat[i], (v - 2.5) * inv_std);
            assert_eq!(fwd.y[i], 2.0 * fwd.xhat[i] + 0.5);
        }
        // Channel-major strides: two channels interleaved by the C axis.
        let x2 = [1.0, 10.0, 3.0, 30.0]; // [N = 2, C = 2, S = 1]
        let fwd2 = batchnorm_forward_train(&x2, &[1.0, 1.0], &[0.0, 0.0], 2, 2, 1, 0.0);
        assert_eq!(fwd2.mean, [2.0, 20.0]);
        assert_eq!(fwd2.var, [1.0, 100.0]);
        assert_eq!(fwd2.y, [-1.0, -1.0, 1.0, 1.0]);
    }

    #[test]
    fn running_statistics_by_hand() {
        // From PyTorch's initial state (mean 0, var 1) with the default momentum 0.1, after a
        // batch of 1, 2, 3, 4: mean 2.5, unbiased var 5/3.
        let fwd = batchnorm_forward_train(&[1.0, 2.0, 3.0, 4.0], &[1.0], &[0.0], 4, 1, 1, 1e-5);
        let mut rm = vec![0.0];
        let mut rv = vec![1.0];
        batchnorm_update_running(&mut rm, &mut rv, &fwd.mean, &fwd.var, 4, BATCHNORM_MOMENTUM);
        assert!((rm[0] - 0.25).abs() < 1e-15, "{}", rm[0]);
        assert!((rv[0] - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-15, "{}", rv[0]);
        // A second step with 0, 0, 0, 4: mean 1, unbiased var 4.
        let fwd = batchnorm_forward_train(&[0.0, 0.0, 0.0, 4.0], &[1.0], &[0.0], 4, 1, 1, 1e-5);
        batchnorm_update_running(&mut rm, &mut rv, &fwd.mean, &fwd.var, 4, BATCHNORM_MOMENTUM);
        assert!((rm[0] - (0.9 * 0.25 + 0.1)).abs() < 1e-15, "{}", rm[0]);
        let rv2 = 0.9 * (0.9 + 0.1 * 5.0 / 3.0) + 0.1 * 4.0;
        assert!((rv[0] - rv2).abs() < 1e-15, "{}", rv[0]);
        // One value per channel: no unbiased variance, the running var just decays.
        let mut rm1 = vec![0.0];
        let mut rv1 = vec![1.0];
        batchnorm_update_running(&mut rm1, &mut rv1, &[3.0], &[0.0], 1, 0.5);
        assert_eq!((rm1[0], rv1[0]), (1.5, 0.5));
        // Evaluation with those statistics.
        let y =
            batchnorm_forward_eval(&[2.0], &[3.0], &[1.0], &[1.0], &[4.0 - 1e-5], 1, 1, 1, 1e-5);
        assert!((y[0] - (3.0 * 0.5 + 1.0)).abs() < 1e-15, "{}", y[0]);
    }

    #[test]
    fn layernorm_backward_matches_central_differences() {
        let loss = |x: &[f64], gamma: &[f64], beta: &[f64], w: &[f64], n, f| -> f64 {
            let y = layernorm_forward(x, gamma, beta, n, f, LAYERNORM_EPS).y;
            y.iter().zip(w).map(|(a, b)| a * b).sum()
        };
        let mut case = 0;
        for n in [1, 3, 7] {
            for f in [2, 7, 33] {
                case += 1;
                let mut rng = ChaCha8Rng::seed_from_u64(200 + case);
                let x = normals(&mut rng, n * f, 0.5, 1.5);
                let gamma = normals(&mut rng, f, 1.0, 0.5);
                let beta = normals(&mut rng, f, 0.0, 0.5);
                // Non-uniform weights: uniform ones would make A and B hide a wrong sum.
                let w = normals(&mut rng, n * f, 0.0, 1.0);
                let fwd = layernorm_forward(&x, &gamma, &beta, n, f, LAYERNORM_EPS);
                let (dx, dgamma, dbeta) =
                    layernorm_backward(&w, &fwd.xhat, &fwd.inv_std, &gamma, n, f);
                let h = 1e-6;
                let num_dx = central_difference(|v| loss(v, &gamma, &beta, &w, n, f), &x, h);
                let num_dg = central_difference(|v| loss(&x, v, &beta, &w, n, f), &gamma, h);
                let num_db = central_difference(|v| loss(&x, &gamma, v, &w, n, f), &beta, h);
                // Rounding noise of the differences is ~ε·|L|/h ≈ 1e-9; truncation ~h² ≈ 1e-12.
                for (name, analytic, numeric) in [
                    ("dx", &dx, &num_dx),
                    ("dgamma", &dgamma, &num_dg),
                    ("dbeta", &dbeta, &num_db),
                ] {
                    let err = max_abs_diff(analytic, numeric);
                    assert!(err < 1e-7, "({n}, {f}) {name}: max abs err {err:e}");
                }
                // The input gradient of a normalised row sums to zero (shifting x changes
                // nothing).
                for i in 0..n {
                    let sum: f64 = dx[i * f..(i + 1) * f].iter().sum();
                    assert!(sum.abs() < 1e-12, "({n}, {f}): Σ dx of row {i} = {sum:e}");
                }
            }
        }
    }

    #[test]
    fn layernorm_rows_are_standardised() {
        for (case, (n, f)) in [(1, 2), (3, 7), (7, 33), (2, 784)].into_iter().enumerate() {
            let mut rng = ChaCha8Rng::seed_from_u64(300 + case as u64);
            // Rows with different offsets and spreads, one of them nearly constant (where eps
            // matters).
            let mut x = normals(&mut rng, n * f, 0.0, 1.0);
            for i in 0..n {
                let (offset, spread) = if i == 1 {
                    (4.0, 1e-3)
                } else {
                    (i as f64 - 2.0, 0.5 + i as f64)
                };
                for k in 0..f {
                    x[i * f + k] = offset + spread * x[i * f + k];
                }
            }
            let gamma = normals(&mut rng, f, 1.0, 0.5);
            let beta = normals(&mut rng, f, 0.0, 0.5);
            let fwd = layernorm_forward(&x, &gamma, &beta, n, f, LAYERNORM_EPS);
            for i in 0..n {
                let row = &fwd.xhat[i * f..(i + 1) * f];
                let mean = row.iter().sum::<f64>() / f as f64;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / f as f64;
                let want = fwd.var[i] / (fwd.var[i] + LAYERNORM_EPS);
                assert!(mean.abs() < 1e-12, "({n}, {f}) row {i}: mean {mean:e}");
                assert!(
                    (var - want).abs() < 1e-12,
                    "({n}, {f}) row {i}: var {var} want {want}"
                );
                assert!((fwd.inv_std[i] - 1.0 / (fwd.var[i] + LAYERNORM_EPS).sqrt()).abs() < 1e-12);
                for k in 0..f {
                    let at = i * f + k;
                    assert_eq!(fwd.y[at], gamma[k] * fwd.xhat[at] + beta[k]);
                }
            }
        }
        // By hand: one row 1, 2, 3, 4 has mean 2.5 and biased var 1.25.
        let fwd = layernorm_forward(&[1.0, 2.0, 3.0, 4.0], &[1.0; 4], &[0.0; 4], 1, 4, 0.0);
        assert_eq!((fwd.mean[0], fwd.var[0]), (2.5, 1.25));
    }

    #[test]
    fn pcg_stream_by_hand() {
        // Written out from an independent (Python, arbitrary-precision integers masked to 32
        // bits) implementation; the GPU test compares the shader with this function.
        assert_eq!(pcg(0), 129708002);
        assert_eq!(pcg(1), 2831084092);
        assert_eq!(pcg(2), 2055130248);
        assert_eq!(pcg(42), 1223963391);
        assert_eq!(pcg(u32::MAX), 3861530882);
        let draws: Vec<u32> = (0..4).map(|i| pcg(i ^ pcg(3 ^ pcg(7)))).collect();
        assert_eq!(draws, [3159126957, 2870913765, 3354550496, 988963212]);
        let keep: Vec<u8> = (0..16)
            .map(|i| u8::from(dropout_keep(7, 3, i, dropout_threshold(0.5))))
            .collect();
        assert_eq!(keep, [1, 1, 1, 0, 1, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0]);
    }

    #[test]
    fn dropout_thresholds() {
        assert_eq!(dropout_threshold(0.0), 0);
        assert_eq!(dropout_threshold(0.5), 1 << 31);
        assert_eq!(dropout_threshold(0.1), 429496730);
        assert_eq!(dropout_threshold(1.0), u32::MAX);
        // p = 0 keeps everything, whatever the hash.
        assert!((0..1000).all(|i| dropout_keep(1, 2, i, 0)));
    }

    #[test]
    fn dropout_keeps_about_one_minus_p() {
        let draws = 100_000u32;
        for (seed, step, p) in [(1, 0, 0.1), (2, 5, 0.5), (3, 9, 0.9), (4, 1, 0.25)] {
            let t = dropout_threshold(p);
            let kept = (0..draws)
                .filter(|&i| dropout_keep(seed, step, i, t))
                .count();
            let frac = kept as f64 / draws as f64;
            // Binomial standard deviation; 5σ is a deterministic stream's generous margin.
            let sigma = (p * (1.0 - p) / draws as f64).sqrt();
            assert!(
                (frac - (1.0 - p)).abs() < 5.0 * sigma,
                "p = {p}: kept {frac}, expected {} ± {sigma}",
                1.0 - p
            );
        }
    }

    #[test]
    fn dropout_output_mean_matches_input_and_backward_uses_the_mask() {
        let len = 100_000;
        let x = vec![1.5; len];
        for (step, p) in [(0, 0.1), (1, 0.5), (2, 0.3)] {
            let (y, mask) = dropout_forward(&x, 11, step, p);
            let mean = y.iter().sum::<f64>() / len as f64;
            // Var(y_i) = 1.5²·p/(1 − p).
            let sigma = 1.5 * (p / (1.0 - p) / len as f64).sqrt();
            assert!((mean - 1.5).abs() < 5.0 * sigma, "p = {p}: mean {mean}");
            assert!(mask.iter().all(|&m| m == 0.0 || m == 1.0 / (1.0 - p)));
            let dy: Vec<f64> = (0..len).map(|i| i as f64).collect();
            let dx = dropout_backward(&dy, &mask);
            assert!((0..len).all(|i| dx[i] == dy[i] * mask[i]));
            // A different step draws a different mask; the same one repeats.
            assert_ne!(dropout_forward(&x, 11, step + 100, p).1, mask);
            assert_eq!(dropout_forward(&x, 11, step, p).1, mask);
        }
        let (y, mask) = dropout_forward(&x, 11, 0, 0.0);
        assert_eq!(y, x);
        assert!(mask.iter().all(|&m| m == 1.0));
    }
}
