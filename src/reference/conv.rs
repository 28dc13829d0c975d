//! Convolution and pooling references, over NCHW tensors in f64.
//!
//! Conventions match shaders/conv.wgsl and shaders/pool.wgsl: tensors are row-major
//! `[N, C, H, W]`, conv weights `[F, C, KH, KW]` with bias `[F]`, zero padding on all four sides,
//! pooling windows without padding. Each backward is written as the adjoint of its forward's
//! loop nest (scatter), where the GPU gathers: two different derivations that must agree.

// The argument lists are the shapes of the tensors; a struct would hide which dimension is which
// at the call site, which is what a test of an oracle must be able to read.
#![allow(clippy::too_many_arguments)]

/// Output length along one axis of a convolution or pooling: ⌊(len + 2·pad − k) / stride⌋ + 1.
pub fn conv_out(len: usize, k: usize, stride: usize, pad: usize) -> usize {
    assert!(stride > 0, "conv_out: stride must be positive");
    assert!(
        len + 2 * pad >= k,
        "conv_out: window {k} exceeds the padded length {len} + 2·{pad}"
    );
    (len + 2 * pad - k) / stride + 1
}

/// The input row (or column) that output position `o` reads through tap `k`, or None where it
/// falls in the zero padding.
fn tap(o: usize, k: usize, stride: usize, pad: usize, len: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < len)
}

/// 2-D convolution: y = b + W ∗ x (cross-correlation, as every deep-learning library means it).
// x: [N, C, H, W], wt: [F, C, KH, KW], b: [F] -> y: [N, F, OH, OW]
pub fn conv2d_forward(
    x: &[f64],
    wt: &[f64],
    b: &[f64],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    f: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
) -> Vec<f64> {
    assert_eq!(
        x.len(),
        n * c * h * w,
        "conv2d_forward: x must be [N, C, H, W]"
    );
    assert_eq!(
        wt.len(),
        f * c * kh * kw,
        "conv2d_forward: wt must be [F, C, KH, KW]"
    );
    assert_eq!(b.len(), f, "conv2d_forward: b must be [F]");
    let (oh, ow) = (conv_out(h, kh, stride, pad), conv_out(w, kw, stride, pad));
    let mut y = vec![0.0; n * f * oh * ow];
    for ni in 0..n {
        for fi in 0..f {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b[fi];
                    for ci in 0..c {
                        for ky in 0..kh {
                            let Some(iy) = tap(oy, ky, stride, pad, h) else {
                                continue;
                            };
                            for kx in 0..kw {
                                let Some(ix) = tap(ox, kx, stride, pad, w) else {
                                    continue;
                                };
                                acc += x[((ni * c + ci) * h + iy) * w + ix]
                                    * wt[((fi * c + ci) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    y[((ni * f + fi) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    y
}

/// Backward of [`conv2d_forward`]: returns (dx, dw, db).
// x: [N, C, H, W], wt: [F, C, KH, KW], dy: [N, F, OH, OW]
//   -> dx: [N, C, H, W], dw: [F, C, KH, KW], db: [F]
pub fn conv2d_backward(
    x: &[f64],
    wt: &[f64],
    dy: &[f64],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    f: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    assert_eq!(
        x.len(),
        n * c * h * w,
        "conv2d_backward: x must be [N, C, H, W]"
    );
    assert_eq!(
        wt.len(),
        f * c * kh * kw,
        "conv2d_backward: wt must be [F, C, KH, KW]"
    );
    let (oh, ow) = (conv_out(h, kh, stride, pad), conv_out(w, kw, stride, pad));
    assert_eq!(
        dy.len(),
        n * f * oh * ow,
        "conv2d_backward: dy must be [N, F, OH, OW]"
    );
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; wt.len()];
    let mut db = vec![0.0; f];
    // The forward's loop nest, with every `acc += x·w` sending dy back to both factors.
    for ni in 0..n {
        for fi in 0..f {
            for oy in 0..oh {
                for ox in 0..ow {
                    let g = dy[((ni * f + fi) * oh + oy) * ow + ox];
                    db[fi] += g;
                    for ci in 0..c {
                        for ky in 0..kh {
                            let Some(iy) = tap(oy, ky, stride, pad, h) else {
                                continue;
                            };
                            for kx in 0..kw {
                                let Some(ix) = tap(ox, kx, stride, pad, w) else {
                                    continue;
                                };
                                let xi = ((ni * c + ci) * h + iy) * w + ix;
                                let wi = ((fi * c + ci) * kh + ky) * kw + kx;
                                dx[xi] += g * wt[wi];
                                dw[wi] += g * x[xi];
                            }
                        }
                    }
                }
            }
        }
    }
    (dx, dw, db)
}

/// Max pooling: returns (y, argmax), argmax being the flat index into x of each window's maximum,
/// the first in row-major order on ties.
// x: [N, C, H, W] -> y, argmax: [N, C, OH, OW]
pub fn max_pool_forward(
    x: &[f64],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    size: usize,
    stride: usize,
) -> (Vec<f64>, Vec<usize>) {
    assert_eq!(
        x.len(),
        n * c * h * w,
        "max_pool_forward: x must be [N, C, H, W]"
    );
    let (oh, ow) = (conv_out(h, size, stride, 0), conv_out(w, size, stride, 0));
    let mut y = vec![0.0; n * c * oh * ow];
    let mut argmax = vec![0; y.len()];
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = (plane * h + oy * stride) * w + ox * stride;
                for ky in 0..size {
                    for kx in 0..size {
                        let at = (plane * h + oy * stride + ky) * w + ox * stride + kx;
                        if x[at] > x[best] {
                            best = at;
                        }
                    }
                }
                let o = (plane * oh + oy) * ow + ox;
                y[o] = x[best];
                argmax[o] = best;
            }
        }
    }
    (y, argmax)
}

/// Backward of [`max_pool_forward`]: each output's gradient goes to its window's maximum.
// dy, argmax: [N, C, OH, OW] -> dx: [input_len] = [N, C, H, W]
pub fn max_pool_backward(dy: &[f64], argmax: &[usize], input_len: usize) -> Vec<f64> {
    assert_eq!(
        dy.len(),
        argmax.len(),
        "max_pool_backward: dy and argmax differ in length"
    );
    let mut dx = vec![0.0; input_len];
    for o in 0..dy.len() {
        dx[argmax[o]] += dy[o];
    }
    dx
}

/// Average pooling: the mean of each window.
// x: [N, C, H, W] -> y: [N, C, OH, OW]
pub fn avg_pool_forward(
    x: &[f64],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    size: usize,
    stride: usize,
) -> Vec<f64> {
    assert_eq!(
        x.len(),
        n * c * h * w,
        "avg_pool_forward: x must be [N, C, H, W]"
    );
    let (oh, ow) = (conv_out(h, size, stride, 0), conv_out(w, size, stride, 0));
    let area = (size * size) as f64;
    let mut y = vec![0.0; n * c * oh * ow];
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut s = 0.0;
                for ky in 0..size {
                    for kx in 0..size {
                        s += x[(plane * h + oy * stride + ky) * w + ox * stride + kx];
                    }
                }
                y[(plane * oh + oy) * ow + ox] = s / area;
            }
        }
    }
    y
}

/// Backward of [`avg_pool_forward`]: every element of a window gets dy / size².
// dy: [N, C, OH, OW] -> dx: [N, C, H, W]
pub fn avg_pool_backward(
    dy: &[f64],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    size: usize,
    stride: usize,
) -> Vec<f64> {
    let (oh, ow) = (conv_out(h, size, stride, 0), conv_out(w, size, stride, 0));
    assert_eq!(
        dy.len(),
        n * c * oh * ow,
        "avg_pool_backward: dy must be [N, C, OH, OW]"
    );
    let area = (size * size) as f64;
    let mut dx = vec![0.0; n * c * h * w];
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let g = dy[(plane * oh + oy) * ow + ox] / area;
                for ky in 0..size {
                    for kx in 0..size {
                        dx[(plane * h + oy * stride + ky) * w + ox * stride + kx] += g;
                    }
                }
            }
        }
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [−1, 1) (splitmix64), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        }

        fn vec(&mut self, len: usize) -> Vec<f64> {
            (0..len).map(|_| self.next()).collect()
        }
    }

    /// Central differences of `loss` with respect to each element of `at`.
    fn numeric(at: &[f64], loss: impl Fn(&[f64]) -> f64) -> Vec<f64> {
        let eps = 1e-5;
        let mut v = at.to_vec();
        (0..at.len())
            .map(|i| {
                v[i] = at[i] + eps;
                let plus = loss(&v);
                v[i] = at[i] - eps;
                let minus = loss(&v);
                v[i] = at[i];
                (plus - minus) / (2.0 * eps)
            })
            .collect()
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    // n, c, h, w, f, kh, kw, stride, pad
    const CONV_CASES: [[usize; 9]; 7] = [
        [1, 1, 5, 5, 1, 3, 3, 1, 0],
        [2, 3, 7, 5, 4, 3, 3, 2, 1],
        [1, 1, 7, 5, 2, 3, 3, 1, 1],
        [3, 2, 6, 6, 3, 5, 5, 1, 2],
        [1, 2, 9, 7, 3, 2, 3, 2, 0],
        [2, 3, 5, 4, 2, 1, 1, 1, 0],
        [1, 2, 7, 7, 2, 2, 2, 3, 1],
    ];

    #[test]
    fn conv_out_matches_hand_counts() {
        assert_eq!(conv_out(28, 5, 1, 0), 24);
        assert_eq!(conv_out(28, 5, 1, 2), 28);
        assert_eq!(conv_out(7, 3, 2, 1), 4);
        assert_eq!(conv_out(5, 3, 2, 0), 2);
        assert_eq!(conv_out(7, 2, 2, 0), 3);
        assert_eq!(conv_out(3, 3, 1, 0), 1);
    }

    #[test]
    fn conv_forward_tiny_cases_by_hand() {
        let x: Vec<f64> = (1..=9).map(f64::from).collect(); // 3×3: 1 2 3 / 4 5 6 / 7 8 9
                                                            // 2×2 window of ones, stride 1: window sums, plus the bias.
        let y = conv2d_forward(&x, &[1.0; 4], &[0.5], 1, 1, 3, 3, 1, 2, 2, 1, 0);
        assert_eq!(y, vec![12.5, 16.5, 24.5, 28.5]);
        // 3×3 of ones, stride 2, padding 1: the 3×3 neighbourhoods of the four corners.
        let y = conv2d_forward(&x, &[1.0; 9], &[0.0], 1, 1, 3, 3, 1, 3, 3, 2, 1);
        assert_eq!(y, vec![12.0, 16.0, 24.0, 28.0]);
        // Two filters over two channels: f0 picks channel 0's centre tap, f1 sums channel 1's
        // top-left 2×2 minus its bottom-right.
        let x2: Vec<f64> = (1..=18).map(f64::from).collect();
        let mut wt = vec![0.0; 2 * 2 * 2 * 2];
        wt[0] = 1.0; // f0, c0, (0, 0)
        wt[4 + 3] = -2.0; // f0, c1, (1, 1)
        wt[8 + 4] = 1.0; // f1, c1, (0, 0)
        let y = conv2d_forward(&x2, &wt, &[0.0, 1.0], 1, 2, 3, 3, 2, 2, 2, 1, 0);
        // f0: x0[oy, ox] − 2·x1[oy+1, ox+1]; f1: x1[oy, ox] + 1.
        assert_eq!(
            y,
            vec![
                1.0 - 28.0,
                2.0 - 30.0,
                4.0 - 34.0,
                5.0 - 36.0,
                11.0,
                12.0,
                14.0,
                15.0
            ]
        );
    }

    #[test]
    fn conv_backward_tiny_case_by_hand() {
        let x: Vec<f64> = (1..=9).map(f64::from).collect();
        let (dx, dw, db) = conv2d_backward(&x, &[1.0; 4], &[1.0; 4], 1, 1, 3, 3, 1, 2, 2, 1, 0);
        // dx counts the windows covering each pixel; dw sums each tap's pixels over windows.
        assert_eq!(dx, vec![1.0, 2.0, 1.0, 2.0, 4.0, 2.0, 1.0, 2.0, 1.0]);
        assert_eq!(dw, vec![12.0, 16.0, 24.0, 28.0]);
        assert_eq!(db, vec![4.0]);
        // Stride 2 over 4×4 with a 1×1 kernel reads only the even pixels.
        let x: Vec<f64> = (1..=16).map(f64::from).collect();
        let (dx, dw, _) = conv2d_backward(&x, &[3.0], &[1.0; 4], 1, 1, 4, 4, 1, 1, 1, 2, 0);
        let mut want = vec![0.0; 16];
        for i in [0, 2, 8, 10] {
            want[i] = 3.0;
        }
        assert_eq!(dx, want);
        assert_eq!(dw, vec![1.0 + 3.0 + 9.0 + 11.0]);
    }

    #[test]
    fn conv_backward_matches_central_differences() {
        let mut rng = Rng(7);
        for [n, c, h, w, f, kh, kw, s, pad] in CONV_CASES {
            let x = rng.vec(n * c * h * w);
            let wt = rng.vec(f * c * kh * kw);
            let b = rng.vec(f);
            let (oh, ow) = (conv_out(h, kh, s, pad), conv_out(w, kw, s, pad));
            let dy = rng.vec(n * f * oh * ow);
            let loss = |x: &[f64], wt: &[f64], b: &[f64]| {
                dot(
                    &dy,
                    &conv2d_forward(x, wt, b, n, c, h, w, f, kh, kw, s, pad),
                )
            };
            let (dx, dw, db) = conv2d_backward(&x, &wt, &dy, n, c, h, w, f, kh, kw, s, pad);
            let case = format!("{:?}", [n, c, h, w, f, kh, kw, s, pad]);
            assert_close(
                &format!("dx {case}"),
                &dx,
                &numeric(&x, |v| loss(v, &wt, &b)),
                1e-8,
            );
            assert_close(
                &format!("dw {case}"),
                &dw,
                &numeric(&wt, |v| loss(&x, v, &b)),
                1e-8,
            );
            assert_close(
                &format!("db {case}"),
                &db,
                &numeric(&b, |v| loss(&x, &wt, v)),
                1e-8,
            );
        }
    }

    #[test]
    fn max_pool_tiny_case_by_hand() {
        #[rustfmt::skip]
        let x = vec![
            1.0, 5.0, 2.0, 0.0,
            3.0, 4.0, 7.0, 7.0,
            9.0, 9.0, 1.0, 2.0,
            9.0, 0.0, 3.0, 8.0,
        ];
        let (y, argmax) = max_pool_forward(&x, 1, 1, 4, 4, 2, 2);
        assert_eq!(y, vec![5.0, 7.0, 9.0, 8.0]);
        // Ties go to the first in row-major order: 7 at 6 (not 7), 9 at 8 (not 9 or 12).
        assert_eq!(argmax, vec![1, 6, 8, 15]);
        let dx = max_pool_backward(&[1.0, 2.0, 3.0, 4.0], &argmax, 16);
        let mut want = vec![0.0; 16];
        (want[1], want[6], want[8], want[15]) = (1.0, 2.0, 3.0, 4.0);
        assert_eq!(dx, want);
        // Overlapping 3×3 windows, stride 1: the centre 9 is every window's max and collects
        // all their gradients.
        let x = vec![
            0.0, 1.0, 2.0, 3.0, 1.0, 9.0, 4.0, 5.0, 6.0, 7.0, 8.0, 0.0, 2.0, 1.0, 0.0, 3.0,
        ];
        let (y, argmax) = max_pool_forward(&x, 1, 1, 4, 4, 3, 1);
        assert_eq!(y, vec![9.0, 9.0, 9.0, 9.0]);
        assert_eq!(argmax, vec![5; 4]);
        assert_eq!(
            max_pool_backward(&[1.0, 2.0, 3.0, 4.0], &argmax, 16)[5],
            10.0
        );
    }

    #[test]
    fn avg_pool_tiny_case_by_hand() {
        let x: Vec<f64> = (0..25).map(f64::from).collect(); // 5×5, row r: 5r .. 5r+4
        let y = avg_pool_forward(&x, 1, 1, 5, 5, 3, 2);
        assert_eq!(y, vec![6.0, 8.0, 16.0, 18.0]);
        let dx = avg_pool_backward(&[9.0, 18.0, 27.0, 36.0], 1, 1, 5, 5, 3, 2);
        // The centre pixel (2, 2) sits in all four windows; a corner in one.
        assert_eq!(dx[12], (9.0 + 18.0 + 27.0 + 36.0) / 9.0);
        assert_eq!(dx[0], 1.0);
        assert_eq!(dx[24], 4.0);
        assert_eq!(dx[2], 3.0);
    }

    // n, c, h, w, size, stride
    const POOL_CASES: [[usize; 6]; 6] = [
        [1, 1, 4, 4, 2, 2],
        [2, 3, 7, 5, 2, 2],
        [1, 1, 9, 9, 3, 2],
        [3, 2, 7, 5, 3, 2],
        [1, 2, 5, 6, 3, 1],
        [1, 1, 7, 7, 2, 3],
    ];

    #[test]
    fn pool_backward_matches_central_differences() {
        let mut rng = Rng(11);
        for [n, c, h, w, size, s] in POOL_CASES {
            let (oh, ow) = (conv_out(h, size, s, 0), conv_out(w, size, s, 0));
            // Random values are 1e-5 apart with overwhelming odds, so no difference crosses a tie.
            let x = rng.vec(n * c * h * w);
            let dy = rng.vec(n * c * oh * ow);
            let case = format!("{:?}", [n, c, h, w, size, s]);

            let (_, argmax) = max_pool_forward(&x, n, c, h, w, size, s);
            let dx = max_pool_backward(&dy, &argmax, x.len());
            let num = numeric(&x, |v| {
                dot(&dy, &max_pool_forward(v, n, c, h, w, size, s).0)
            });
            assert_close(&format!("max dx {case}"), &dx, &num, 1e-8);

            let dx = avg_pool_backward(&dy, n, c, h, w, size, s);
            let num = numeric(&x, |v| dot(&dy, &avg_pool_forward(v, n, c, h, w, size, s)));
            assert_close(&format!("avg dx {case}"), &dx, &num, 1e-8);
        }
    }
}
