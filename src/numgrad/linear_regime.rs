//! ReLU's linear regime above a perturbed unit: what lets perturbed_mlp.wgsl skip the dense
//! layers for most perturbations.
//!
//! Perturbing unit j of block l's output a_l in sample n by da moves the pre-activations of
//! every hidden block k above it by da·s_k, with s_{l+1} = W_{l+1}[j, :] and
//! s_{k+1} = (m_k ⊙ s_k)·W_{k+1}, where m_k is ReLU's slope at the unperturbed pass (1 or 0)
//! times block k's dropout mask. While no unit of those blocks changes side of its kink, every
//! one of them is linear in da, so the logits move by exactly da·g with
//! g = (m_{L−1} ⊙ s_{L−1})·W_L: one row of `classes` numbers per (n, j) instead of the dense
//! layers. The range of da that keeps every unit on its side is an interval around 0, one per
//! (n, j). A perturbation whose da lies strictly inside it takes the row; any other takes the
//! dense layers, which also count the units that cross. Formed here in f64 from the unperturbed
//! pass, once per check.
//!
//! Shapes: a_l \[N, H], each hidden block k above \[N, H_k], the logits \[N, C];
//! `rows` \[N, H, C] and `bounds` \[N, H, 2] (lower, upper).

/// Relative margin that shrinks each interval, so a da within rounding of a kink is left to the
/// dense layers rather than decided by host rounding.
const MARGIN: f64 = 1e-6;

/// A hidden block above the perturbed one: its affine weight W_k \[H_{k−1}, H_k] and the
/// unperturbed pass's pre-activations \[N, H_k] and dropout mask \[N, H_k] (None: no dropout).
pub(super) struct HiddenAbove<'a> {
    pub weight: &'a [f64],
    pub pre: &'a [f64],
    pub mask: Option<&'a [f64]>,
}

/// The logit rows and the intervals of one perturbed block.
#[derive(Debug)]
pub(super) struct LinearRegime {
    /// \[N, H, C]: how the logits of sample n move per unit change of unit j.
    pub rows: Vec<f64>,
    /// \[N, H, 2]: the open interval of changes for which no unit above crosses a kink.
    pub bounds: Vec<f64>,
}

/// Multiply-adds [`linear_regime`] takes for `n` samples of a block `width` wide under hidden
/// blocks and logits of `above` widths (the last one the classes).
pub(super) fn cost(n: usize, width: usize, above: &[usize]) -> usize {
    n * width * above.windows(2).map(|w| w[0] * w[1]).sum::<usize>()
}

/// The linear regime of a block `width` wide, under `hidden` (at least one) and the logits'
/// weight `last` \[H_{L−1}, C], over `n` samples.
pub(super) fn linear_regime(
    n: usize,
    width: usize,
    hidden: &[HiddenAbove],
    last: &[f64],
) -> LinearRegime {
    let widths: Vec<usize> = hidden.iter().map(|k| k.pre.len() / n).collect();
    let classes = last.len() / widths[widths.len() - 1];
    let mut rows = Vec::with_capacity(n * width * classes);
    let mut bounds = Vec::with_capacity(n * width * 2);
    for s in 0..n {
        for j in 0..width {
            let (mut lower, mut upper) = (f64::NEG_INFINITY, f64::INFINITY);
            // s_{l+1}: how block l+1's pre-activations move per unit change.
            let mut slope = hidden[0].weight[j * widths[0]..][..widths[0]].to_vec();
            for (k, block) in hidden.iter().enumerate() {
                let h = widths[k];
                let pre = &block.pre[s * h..][..h];
                for (&z, &d) in pre.iter().zip(&slope) {
                    if d == 0.0 {
                        continue;
                    }
                    // The change at which z + change·d reaches the kink; on the side of 0 that
                    // moves z toward it, that is how far the change may go.
                    let at = -z / d;
                    if (z > 0.0) == (d > 0.0) {
                        lower = lower.max(at);
                    } else {
                        upper = upper.min(at);
                    }
                }
                // m_k ⊙ s_k, then through the next weight (a hidden block's, or the logits').
                for (c, d) in slope.iter_mut().enumerate() {
                    let mask = block.mask.map_or(1.0, |m| m[s * h + c]);
                    *d *= if pre[c] > 0.0 { mask } else { 0.0 };
                }
                let (next, outs) = match hidden.get(k + 1) {
                    Some(up) => (up.weight, widths[k + 1]),
                    None => (last, classes),
                };
                slope = times(&slope, next, outs);
            }
            rows.extend(slope);
            bounds.extend([lower * (1.0 - MARGIN), upper * (1.0 - MARGIN)]);
        }
    }
    LinearRegime { rows, bounds }
}

/// v \[H] · W \[H, outs]
fn times(v: &[f64], w: &[f64], outs: usize) -> Vec<f64> {
    let mut out = vec![0.0; outs];
    for (&x, row) in v.iter().zip(w.chunks(outs)) {
        if x != 0.0 {
            for (o, &w) in out.iter_mut().zip(row) {
                *o += x * w;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sample s's logits (without the last bias, which cancels in the differences taken here)
    /// and the side of the kink of every hidden unit, from block l's output row `a` \[H]: each
    /// hidden block's affine product plus its `offsets` \[block]\[unit] (standing in for its
    /// bias, so that the test chooses where the kinks lie), ReLU times its mask, then the
    /// logits' weight.
    fn logits(
        a: &[f64],
        hidden: &[HiddenAbove],
        last: &[f64],
        s: usize,
        n: usize,
        offsets: &[Vec<f64>],
    ) -> (Vec<f64>, Vec<bool>) {
        let mut x = a.to_vec();
        let mut sides = Vec::new();
        for (k, block) in hidden.iter().enumerate() {
            let h = block.pre.len() / n;
            let mut z = times(&x, block.weight, h);
            for (c, z) in z.iter_mut().enumerate() {
                *z += offsets[k][c];
            }
            sides.extend(z.iter().map(|&z| z > 0.0));
            x = (0..h)
                .map(|c| z[c].max(0.0) * block.mask.map_or(1.0, |m| m[s * h + c]))
                .collect();
        }
        let classes = last.len() / x.len();
        (times(&x, last, classes), sides)
    }

    /// A small deterministic pseudo-random stream in [−1, 1).
    fn stream(seed: u64) -> impl FnMut() -> f64 {
        let mut state = seed;
        move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
    }

    /// Against the net itself, at awkward sizes (5 → 7 → 3 → 4 classes, two samples, a dropout
    /// mask in the second block): inside each interval the logits move by exactly change·row
    /// and no unit changes side; just outside its ends, some unit does.
    #[test]
    fn rows_and_intervals_match_the_net() {
        let (n, width, h1, h2, classes) = (2, 5, 7, 3, 4);
        let mut r = stream(7);
        let w1: Vec<f64> = (0..width * h1).map(|_| r()).collect();
        let w2: Vec<f64> = (0..h1 * h2).map(|_| r()).collect();
        let last: Vec<f64> = (0..h2 * classes).map(|_| r()).collect();
        let a: Vec<f64> = (0..n * width).map(|_| r()).collect();
        let mask2: Vec<f64> = (0..n * h2).map(|i| [0.0, 2.0][i % 2]).collect();
        // Pre-activations of the unperturbed pass, with offsets standing in for the biases.
        let offsets: Vec<Vec<Vec<f64>>> = (0..n)
            .map(|_| {
                vec![
                    (0..h1).map(|_| r()).collect(),
                    (0..h2).map(|_| r()).collect(),
                ]
            })
            .collect();
        let mut pre1 = Vec::new();
        let mut pre2 = Vec::new();
        for s in 0..n {
            let row = &a[s * width..][..width];
            let z1: Vec<f64> = times(row, &w1, h1)
                .iter()
                .zip(&offsets[s][0])
                .map(|(z, o)| z + o)
                .collect();
            let a1: Vec<f64> = z1.iter().map(|z| z.max(0.0)).collect();
            let z2: Vec<f64> = times(&a1, &w2, h2)
                .iter()
                .zip(&offsets[s][1])
                .map(|(z, o)| z + o)
                .collect();
            pre1.extend(z1);
            pre2.extend(z2);
        }
        let hidden = [
            HiddenAbove {
                weight: &w1,
                pre: &pre1,
                mask: None,
            },
            HiddenAbove {
                weight: &w2,
                pre: &pre2,
                mask: Some(&mask2),
            },
        ];
        let regime = linear_regime(n, width, &hidden, &last);
        assert_eq!(regime.rows.len(), n * width * classes);
        let mut bounded = 0;
        for s in 0..n {
            let row = &a[s * width..][..width];
            let (base, base_sides) = logits(row, &hidden, &last, s, n, &offsets[s]);
            for j in 0..width {
                let g = &regime.rows[(s * width + j) * classes..][..classes];
                let (lower, upper) = (
                    regime.bounds[2 * (s * width + j)],
                    regime.bounds[2 * (s * width + j) + 1],
                );
                assert!(lower < 0.0 && upper > 0.0, "({s}, {j}): [{lower}, {upper}]");
                let moved = |change: f64| {
                    let mut row = row.to_vec();
                    row[j] += change;
                    logits(&row, &hidden, &last, s, n, &offsets[s])
                };
                for change in [lower * 0.999, lower * 0.5, upper * 0.5, upper * 0.999] {
                    if !change.is_finite() {
                        continue;
                    }
                    let (z, sides) = moved(change);
                    assert_eq!(sides, base_sides, "({s}, {j}) change {change}");
                    for c in 0..classes {
                        let want = z[c] - base[c];
                        assert!(
                            (change * g[c] - want).abs() < 1e-12,
                            "({s}, {j}) class {c}: {} vs {want}",
                            change * g[c]
                        );
                    }
                }
                for end in [lower, upper] {
                    if end.is_finite() {
                        bounded += 1;
                        let (_, sides) = moved(end * 1.001);
                        assert_ne!(sides, base_sides, "({s}, {j}) just past {end}");
                    }
                }
            }
        }
        assert!(
            bounded > n * width,
            "most intervals should be bounded: {bounded}"
        );
    }
}
