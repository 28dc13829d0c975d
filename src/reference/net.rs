//! A whole-net f64 reference for any [`NetSpec`]: convolutions, pooling, BatchNorm and dropout
//! composed from the per-layer references, so that a GPU net's loss and every parameter gradient
//! can be checked against an independent derivation, not only GPU numerics against GPU backprop
//! (which a bug shared by the GPU forward and backward would pass).
//!
//! It computes what a GPU gradient check computes: BatchNorm in training mode (batch
//! statistics, the running ones neither read nor updated) with PyTorch's eps, and dropout with
//! masks held fixed by [`DropoutMasks`], so the loss is a deterministic function of the
//! parameters. The eps is the reference's own [`super::norm::BATCHNORM_EPS`], not the GPU
//! model's constant (equal today), so that a change on either side shows.
//!
//! Tensors are [N, size] per layer, NCHW within a sample after convolution and pooling; the
//! gradient is in the flat layout of [`NetSpec::layout`].

use super::conv::{
    avg_pool_backward, avg_pool_forward, conv2d_backward, conv2d_forward, max_pool_backward,
    max_pool_forward,
};
use super::norm::{
    batchnorm_backward, batchnorm_forward_train, dropout_backward, dropout_forward,
    layernorm_backward, layernorm_forward, BatchNormForward, LayerNormForward, BATCHNORM_EPS,
    LAYERNORM_EPS,
};
use super::{
    activation_backward, activation_forward, affine_backward, affine_forward, softmax_cross_entropy,
};
use crate::error::Result;
use crate::nn::layers::{Pool, PoolKind};
use crate::nn::{Layer, NetSpec, ParamLayout};

/// Which dropout masks the net uses: the (seed, step) of the hash in shaders/dropout.wgsl.
///
/// As in the GPU model, every dropout layer draws from the same (seed, step), and element `i` of
/// a layer's [N, size] output is kept when `norm::dropout_keep(seed, step, i, threshold)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropoutMasks {
    pub seed: u32,
    pub step: u32,
}

impl DropoutMasks {
    /// The masks of a GPU gradient check ([`crate::numgrad::analytic_gradient`] and the
    /// perturbed-loss engine): the model's `dropout_seed` at step 0, since both read the step
    /// from word 0 of a zeroed state buffer.
    pub fn gradient_check(dropout_seed: u32) -> DropoutMasks {
        DropoutMasks {
            seed: dropout_seed,
            step: 0,
        }
    }
}

/// What a layer's forward keeps for its backward.
#[derive(Clone, Debug)]
enum Saved {
    Nothing,
    /// Max pooling: the flat input index of each output's maximum.
    Argmax(Vec<usize>),
    BatchNorm(BatchNormForward),
    LayerNorm(LayerNormForward),
    /// Dropout: 0 or 1/(1 − p) per element.
    Mask(Vec<f64>),
}

/// Everything one forward pass computed over a batch of `n` samples.
#[derive(Clone, Debug)]
pub struct NetForward {
    pub n: usize,
    /// Each layer's output, [N, size]; the last is the logits [N, output].
    pub outputs: Vec<Vec<f64>>,
    saved: Vec<Saved>,
}

impl NetForward {
    /// The input of layer `l`: `x` for the first layer, else the previous layer's output.
    fn input<'a>(&'a self, x: &'a [f64], l: usize) -> &'a [f64] {
        if l == 0 {
            x
        } else {
            &self.outputs[l - 1]
        }
    }
}

/// The reference net described by a [`NetSpec`] (a layer list or an MLP with BatchNorm, dropout
/// and weight decay), over the flat parameter layout.
#[derive(Clone, Debug)]
pub struct RefNet {
    pub spec: NetSpec,
    pub masks: DropoutMasks,
    layers: Vec<Layer>,
    layout: ParamLayout,
}

impl RefNet {
    /// Fails, saying why, on a spec that does not resolve into layers.
    pub fn new(spec: &NetSpec, masks: DropoutMasks) -> Result<RefNet> {
        let (layers, layout) = spec.resolve()?;
        if let Some(l) = layers.iter().position(|l| matches!(l, Layer::Custom(_))) {
            return Err(crate::Error::InvalidArgument(format!(
                "layer {} ({}) is a custom WGSL layer, which has no CPU reference: its check is \
                 `wgrad gradcheck`, numerical against its own backward",
                l + 1,
                spec.layers[l]
            )));
        }
        Ok(RefNet {
            spec: spec.clone(),
            masks,
            layers,
            layout,
        })
    }

    /// The slice of a flat parameter-shaped vector that holds tensor `t` of the layout.
    fn tensor<'v>(&self, values: &'v [f64], t: usize) -> &'v [f64] {
        let info = &self.layout.tensors[t];
        &values[info.offset..info.offset + info.numel]
    }

    fn set_tensor(&self, values: &mut [f64], t: usize, from: &[f64]) {
        let info = &self.layout.tensors[t];
        values[info.offset..info.offset + info.numel].copy_from_slice(from);
    }

    /// Forward pass of `n` samples, x: [N, input].
    pub fn forward(&self, params: &[f64], x: &[f64], n: usize) -> NetForward {
        assert_eq!(
            params.len(),
            self.layout.total,
            "params has {} values, the net's layout needs {}",
            params.len(),
            self.layout.total
        );
        assert_eq!(
            x.len(),
            n * self.spec.input,
            "x must be [N, input] = [{n}, {}]",
            self.spec.input
        );
        let mut fwd = NetForward {
            n,
            outputs: Vec::with_capacity(self.layers.len()),
            saved: Vec::with_capacity(self.layers.len()),
        };
        for (l, layer) in self.layers.iter().enumerate() {
            let (y, saved) = self.forward_layer(layer, params, fwd.input(x, l), n);
            fwd.outputs.push(y);
            fwd.saved.push(saved);
        }
        fwd
    }

    fn forward_layer(
        &self,
        layer: &Layer,
        params: &[f64],
        input: &[f64],
        n: usize,
    ) -> (Vec<f64>, Saved) {
        let p = |t| self.tensor(params, t);
        match layer {
            // input: [N, d_in], W: [d_in, d_out], b: [d_out] -> [N, d_out]
            Layer::Affine(a) => (
                affine_forward(input, p(a.weight), p(a.bias), n, a.d_in, a.d_out),
                Saved::Nothing,
            ),
            // input: [N, C, H, W], W: [F, C, K, K], b: [F] -> [N, F, OH, OW]
            Layer::Conv(cv) => (
                conv2d_forward(
                    input,
                    p(cv.weight),
                    p(cv.bias),
                    n,
                    cv.c,
                    cv.h,
                    cv.w,
                    cv.f,
                    cv.k,
                    cv.k,
                    cv.stride,
                    cv.pad,
                ),
                Saved::Nothing,
            ),
            // input: [*] -> [*]
            Layer::Activation(a) => (activation_forward(a.kind, input), Saved::Nothing),
            // input: [N, C, H, W] -> [N, C, OH, OW]
            Layer::Pool(pl) => {
                let (c, h, w, size, stride) = (pl.c, pl.h, pl.w, pl.size, pl.stride);
                match pl.kind {
                    PoolKind::Max => {
                        let (y, argmax) = max_pool_forward(input, n, c, h, w, size, stride);
                        (y, Saved::Argmax(argmax))
                    }
                    PoolKind::Avg => {
                        let y = avg_pool_forward(input, n, c, h, w, size, stride);
                        (y, Saved::Nothing)
                    }
                }
            }
            // input: [N, C, S], γ, β: [C] -> [N, C, S], statistics per channel over (N, S)
            Layer::BatchNorm(bn) => {
                let (gamma, beta) = (p(bn.gamma), p(bn.beta));
                let fwd = batchnorm_forward_train(input, gamma, beta, n, bn.c, bn.s, BATCHNORM_EPS);
                (fwd.y.clone(), Saved::BatchNorm(fwd))
            }
            // input: [N, F], γ, β: [F] -> [N, F], statistics per sample over its F features
            Layer::LayerNorm(ln) => {
                let (gamma, beta) = (p(ln.gamma), p(ln.beta));
                let fwd = layernorm_forward(input, gamma, beta, n, ln.f, LAYERNORM_EPS);
                (fwd.y.clone(), Saved::LayerNorm(fwd))
            }
            // input: [N, size] (one copy, as the GPU indexes its mask) -> [N, size]
            Layer::Dropout(d) => {
                let (y, mask) = dropout_forward(input, self.masks.seed, self.masks.step, d.p);
                (y, Saved::Mask(mask))
            }
            Layer::Custom(_) => unreachable!("RefNet::new refuses custom layers"),
        }
    }

    /// Backward of layer `l`: writes its parameter gradients (if any) into `grad` and returns
    /// the gradient of its input.
    fn backward_layer(
        &self,
        l: usize,
        params: &[f64],
        x: &[f64],
        fwd: &NetForward,
        dy: &[f64],
        grad: &mut [f64],
    ) -> Vec<f64> {
        let p = |t| self.tensor(params, t);
        let (input, n) = (fwd.input(x, l), fwd.n);
        match (&self.layers[l], &fwd.saved[l]) {
            // input: [N, d_in], dy: [N, d_out] -> dx: [N, d_in], dW: [d_in, d_out], db: [d_out]
            (Layer::Affine(a), _) => {
                let (dx, dw, db) = affine_backward(input, p(a.weight), dy, n, a.d_in, a.d_out);
                self.set_tensor(grad, a.weight, &dw);
                self.set_tensor(grad, a.bias, &db);
                dx
            }
            // input: [N, C, H, W], dy: [N, F, OH, OW] -> dx: [N, C, H, W], dW: [F, C, K, K], db: [F]
            (Layer::Conv(cv), _) => {
                let (c, h, w, f, k) = (cv.c, cv.h, cv.w, cv.f, cv.k);
                let (dx, dw, db) = conv2d_backward(
                    input,
                    p(cv.weight),
                    dy,
                    n,
                    c,
                    h,
                    w,
                    f,
                    k,
                    k,
                    cv.stride,
                    cv.pad,
                );
                self.set_tensor(grad, cv.weight, &dw);
                self.set_tensor(grad, cv.bias, &db);
                dx
            }
            // dy: [*] -> dx: [*]
            (Layer::Activation(a), _) => activation_backward(a.kind, input, &fwd.outputs[l], dy),
            // dy: [N, C, OH, OW] -> dx: [N, C, H, W]
            (Layer::Pool(_), Saved::Argmax(argmax)) => max_pool_backward(dy, argmax, input.len()),
            (Layer::Pool(pl), _) => avg_pool_backward(dy, n, pl.c, pl.h, pl.w, pl.size, pl.stride),
            // dy: [N, C, S] -> dx: [N, C, S], dγ, dβ: [C]
            (Layer::BatchNorm(bn), Saved::BatchNorm(fwd)) => {
                let (dx, dgamma, dbeta) =
                    batchnorm_backward(dy, &fwd.xhat, &fwd.inv_std, p(bn.gamma), n, bn.c, bn.s);
                self.set_tensor(grad, bn.gamma, &dgamma);
                self.set_tensor(grad, bn.beta, &dbeta);
                dx
            }
            // dy: [N, F] -> dx: [N, F], dγ, dβ: [F]
            (Layer::LayerNorm(ln), Saved::LayerNorm(fwd)) => {
                let (dx, dgamma, dbeta) =
                    layernorm_backward(dy, &fwd.xhat, &fwd.inv_std, p(ln.gamma), n, ln.f);
                self.set_tensor(grad, ln.gamma, &dgamma);
                self.set_tensor(grad, ln.beta, &dbeta);
                dx
            }
            // dy: [N, size] -> dx: [N, size]
            (Layer::Dropout(_), Saved::Mask(mask)) => dropout_backward(dy, mask),
            (layer, _) => unreachable!("forward saves what {layer:?} needs"),
        }
    }

    /// 0.5·λ·Σ θ² over the tensors the GPU decays ([`crate::nn::TensorInfo::is_weight`]: affine
    /// and convolution weights; not biases, nor BatchNorm's γ and β).
    fn l2_penalty(&self, params: &[f64]) -> f64 {
        let lambda = self.spec.weight_decay;
        let decayed = self.layout.tensors.iter().enumerate();
        let sum_sq: f64 = decayed
            .filter(|(_, info)| info.is_weight())
            .map(|(t, _)| self.tensor(params, t).iter().map(|v| v * v).sum::<f64>())
            .sum();
        0.5 * lambda * sum_sq
    }

    /// Mean softmax cross-entropy over the batch plus the L2 penalty; x is [N, input],
    /// N = labels.len().
    pub fn loss(&self, params: &[f64], x: &[f64], labels: &[u32]) -> f64 {
        let n = labels.len();
        let fwd = self.forward(params, x, n);
        let logits = fwd.outputs.last().expect("a net has layers");
        let (data_loss, _, _) = softmax_cross_entropy(logits, labels, n, self.spec.output);
        data_loss + self.l2_penalty(params)
    }

    /// [`Self::loss`] and its exact gradient by backprop, in the flat parameter layout.
    pub fn loss_and_grad(&self, params: &[f64], x: &[f64], labels: &[u32]) -> (f64, Vec<f64>) {
        let n = labels.len();
        let fwd = self.forward(params, x, n);
        let logits = fwd.outputs.last().expect("a net has layers");
        let (data_loss, dlogits, _) = softmax_cross_entropy(logits, labels, n, self.spec.output);
        let mut grad = vec![0.0; self.layout.total];
        // Gradient of the loss with respect to the current layer's output.
        let mut dy = dlogits;
        for l in (0..self.layers.len()).rev() {
            dy = self.backward_layer(l, params, x, &fwd, &dy, &mut grad);
        }
        // d/dθ of 0.5·λ·θ² is λ·θ.
        let lambda = self.spec.weight_decay;
        for info in self.layout.tensors.iter().filter(|info| info.is_weight()) {
            for i in info.offset..info.offset + info.numel {
                grad[i] += lambda * params[i];
            }
        }
        (data_loss + self.l2_penalty(params), grad)
    }

    /// How far the batch lies from the net's kinks: the smallest |input| of any ReLU and the
    /// smallest gap between the two largest values of any max-pool window (absolute values).
    /// A perturbation, or a rounding difference, smaller than this cannot change which branch a
    /// ReLU or a window takes, so gradients compared there are the same function's.
    ///
    /// Windows whose two largest values are both exactly 0 are skipped: such zeros are ReLU
    /// outputs (or fixed inputs) that no small perturbation moves, and whichever wins passes a
    /// zero gradient on.
    pub fn kink_margin(&self, params: &[f64], x: &[f64], n: usize) -> f64 {
        let fwd = self.forward(params, x, n);
        let mut margin = f64::INFINITY;
        for (l, layer) in self.layers.iter().enumerate() {
            let input = fwd.input(x, l);
            match layer {
                Layer::Activation(a) if a.kind.has_kink() => {
                    margin = input.iter().fold(margin, |m, v| m.min(v.abs()));
                }
                Layer::Pool(pool) if pool.kind == PoolKind::Max => {
                    margin = margin.min(max_pool_tie_gap(pool, input, n));
                }
                _ => {}
            }
        }
        margin
    }
}

/// The smallest gap between the largest and second-largest value of any window of a max-pool
/// layer (∞ with one-element windows), skipping ties at exactly 0 (see [`RefNet::kink_margin`]).
// x: [N, C, H, W]
fn max_pool_tie_gap(pool: &Pool, x: &[f64], n: usize) -> f64 {
    let (c, h, w, size, stride, oh, ow) = (
        pool.c,
        pool.h,
        pool.w,
        pool.size,
        pool.stride,
        pool.oh,
        pool.ow,
    );
    let mut gap = f64::INFINITY;
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut first, mut second) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
                for ky in 0..size {
                    for kx in 0..size {
                        let v = x[(plane * h + oy * stride + ky) * w + ox * stride + kx];
                        if v > first {
                            (first, second) = (v, first);
                        } else if v > second {
                            second = v;
                        }
                    }
                }
                if !(first == 0.0 && second == 0.0) {
                    gap = gap.min(first - second);
                }
            }
        }
    }
    gap
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::layers::parse_layers;
    use crate::nn::spec::standard_normal;
    use crate::nn::Activation;
    use crate::reference::norm::{dropout_keep, dropout_threshold};
    use crate::reference::RefMlp;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Weights ~ N(0, 1/fan_in), biases and β ~ N(0, 0.5²), γ ~ 1 + N(0, 0.3²) (so that no
    /// parameter sits at a special point), inputs ~ N(0, 1), labels spread over the classes.
    fn random_problem(spec: &NetSpec, n: usize, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<u32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let layout = spec.layout();
        let mut params = vec![0.0; layout.total];
        for info in &layout.tensors {
            let (mean, std) = if info.is_weight() {
                (0.0, 1.0 / (info.fan_in as f64).sqrt())
            } else if info.name.starts_with("gamma") {
                (1.0, 0.3)
            } else {
                (0.0, 0.5)
            };
            for v in &mut params[info.offset..info.offset + info.numel] {
                *v = mean + std * standard_normal(&mut rng);
            }
        }
        let x = (0..n * spec.input)
            .map(|_| standard_normal(&mut rng))
            .collect();
        let labels = (0..n)
            .map(|i| ((i as u64 * 7 + seed) % spec.output as u64) as u32)
            .collect();
        (params, x, labels)
    }

    /// max_i |a_i − b_i| / max(max_i |b_i|, floor): the worst element relative to the scale of
    /// the whole gradient.
    fn scaled_err(a: &[f64], b: &[f64], floor: f64) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(floor, |m, v| m.max(v.abs()));
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / scale)
            .fold(0.0, f64::max)
    }

    /// Central differences of [`RefNet::loss`], each evaluation on its own copy of θ.
    fn central_differences(
        net: &RefNet,
        params: &[f64],
        x: &[f64],
        labels: &[u32],
        h: f64,
    ) -> Vec<f64> {
        (0..params.len())
            .map(|i| {
                let (mut plus, mut minus) = (params.to_vec(), params.to_vec());
                plus[i] += h;
                minus[i] -= h;
                let diff = net.loss(&plus, x, labels) - net.loss(&minus, x, labels);
                diff / (plus[i] - minus[i])
            })
            .collect()
    }

    #[test]
    fn plain_mlp_matches_ref_mlp() {
        for (activation, weight_decay) in [(Activation::Relu, 0.0), (Activation::Sigmoid, 0.1)] {
            let mut spec = NetSpec::mlp(7, &[6, 5], 4, activation);
            spec.weight_decay = weight_decay;
            let (params, x, labels) = random_problem(&spec, 5, 3);
            let net = RefNet::new(&spec, DropoutMasks::gradient_check(0)).unwrap();
            let (loss, grad) = net.loss_and_grad(&params, &x, &labels);
            let (mlp_loss, mlp_grad) =
                RefMlp::new(spec.clone()).loss_and_grad(&params, &x, &labels);
            assert!(
                (loss - mlp_loss).abs() <= 1e-12 * mlp_loss.abs(),
                "{activation}: {loss} vs {mlp_loss}"
            );
            let err = scaled_err(&grad, &mlp_grad, 0.0);
            assert!(err < 1e-12, "{activation}: gradient error {err:e}");
        }
    }

    /// Every layer kind (convolution with stride and padding, both poolings, BatchNorm after a
    /// convolution and after an affine layer, both activations, dropout) and weight decay: the
    /// backprop gradient must be the derivative of the loss.
    #[test]
    fn composed_net_backprop_matches_central_differences() {
        let layers =
            "conv3x3s2p1,bn,relu,avgpool2s1,maxpool2,affine6,bn,sigmoid,dropout0.3,affine4";
        let mut spec = NetSpec::sequential([2, 9, 9], parse_layers(layers).unwrap()).unwrap();
        spec.weight_decay = 0.1;
        let n = 4;
        let net = RefNet::new(&spec, DropoutMasks { seed: 5, step: 2 }).unwrap();
        let h = 1e-6;
        // A central difference moves activations by about h·|x|; a margin 1000 times that keeps
        // every ReLU and max-pool window on one side of its kink for both evaluations.
        let (params, x, labels) = (0..100)
            .map(|seed| random_problem(&spec, n, seed))
            .find(|(params, x, _)| net.kink_margin(params, x, n) > 1e-3)
            .expect("some seed keeps the batch away from every kink");
        let (loss, grad) = net.loss_and_grad(&params, &x, &labels);
        assert!((loss - net.loss(&params, &x, &labels)).abs() <= 1e-14 * loss);
        let numeric = central_differences(&net, &params, &x, &labels, h);
        // Rounding in the differences is about ε·L/h ≈ 1e-10, truncation about h² ≈ 1e-12.
        let err = scaled_err(&grad, &numeric, 1e-3);
        assert!(err < 1e-7, "backprop vs central differences: {err:e}");
    }

    #[test]
    fn dropout_masks_are_the_hash_of_the_given_seed_and_step() {
        let spec =
            NetSpec::sequential([1, 3, 3], parse_layers("dropout0.5,affine2").unwrap()).unwrap();
        let masks = DropoutMasks { seed: 9, step: 4 };
        let net = RefNet::new(&spec, masks).unwrap();
        let (params, x, _) = random_problem(&spec, 3, 1);
        let fwd = net.forward(&params, &x, 3);
        let threshold = dropout_threshold(0.5);
        for (i, (&y, &v)) in fwd.outputs[0].iter().zip(&x).enumerate() {
            let want = if dropout_keep(9, 4, i as u32, threshold) {
                2.0 * v
            } else {
                0.0
            };
            assert_eq!(y, want, "element {i}");
        }
    }

    #[test]
    fn weight_decay_covers_conv_weights_but_not_biases_or_batchnorm() {
        let spec =
            NetSpec::sequential([1, 3, 3], parse_layers("conv1x2,bn,affine2").unwrap()).unwrap();
        let (params, x, labels) = random_problem(&spec, 2, 4);
        let plain = RefNet::new(&spec, DropoutMasks::gradient_check(0)).unwrap();
        let mut decayed_spec = spec.clone();
        decayed_spec.weight_decay = 0.5;
        let decayed = RefNet::new(&decayed_spec, DropoutMasks::gradient_check(0)).unwrap();
        let layout = spec.layout();
        let sum_sq = |name: &str| {
            let t = layout.get(name).unwrap();
            params[t.offset..t.offset + t.numel]
                .iter()
                .map(|v| v * v)
                .sum::<f64>()
        };
        let want = 0.25 * (sum_sq("W1") + sum_sq("W2"));
        let got = decayed.loss(&params, &x, &labels) - plain.loss(&params, &x, &labels);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }
}
