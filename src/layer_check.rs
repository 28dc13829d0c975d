//! Checking one custom WGSL layer from Rust, as a crate that ships WGSL kernels would in its
//! own `cargo test` (with wgrad as a dev-dependency, headless on lavapipe).
//!
//! [`check_layer`] puts the layer first in a small net (the layer, then an affine head of
//! `classes` scores and softmax cross-entropy, which gives every output element its own
//! gradient), feeds it a seeded N(0, 1) batch, and compares its backward pass with numerical
//! gradients: every declared tensor, and its input. Tensors are named as in a net whose first
//! layer it is: `alpha1`, and `x1` for its input.
//!
//! ```no_run
//! use wgrad::gpu::{GpuContext, Precision};
//! use wgrad::{check_layer, LayerCheckOptions, WgslLayer};
//! # fn main() -> wgrad::Result<()> {
//! let ctx = GpuContext::new(&Default::default())?;
//! let prelu = WgslLayer::from_wgsl(
//!     "prelu.wgsl",
//!     r#"
//! //! output: same
//! //! param alpha: [in] = 0.25
//! fn forward(n: u32, j: u32) -> real {
//!     let v = x(n, j);
//!     return select(alpha(j) * v, v, v > real(0.0));
//! }
//! fn backward(n: u32, i: u32) -> real {
//!     return select(alpha(i), real(1.0), x(n, i) > real(0.0)) * dy(n, i);
//! }
//! fn backward_alpha(k: u32) -> real {
//!     var sum = real(0.0);
//!     for (var n = 0u; n < batch(); n++) {
//!         sum += select(x(n, k) * dy(n, k), real(0.0), x(n, k) > real(0.0));
//!     }
//!     return sum;
//! }
//! "#,
//! )?;
//! for precision in [Precision::F64, Precision::F32] {
//!     let options = LayerCheckOptions { precision, ..Default::default() };
//!     let report = check_layer(&ctx, &prelu, &[16], &options)?;
//!     // One row per declared tensor and one for the input: alpha1, x1.
//!     assert!(report.passed, "{:#?}", report.tensors);
//! }
//! # Ok(()) }
//! ```

use serde::Serialize;

use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Precision};
use crate::gradcheck::{self, GradcheckConfig, GradcheckReport};
use crate::nn::layers::custom::contract;
use crate::nn::{init_params, standard_normal, Init, LayerSpec, NetSpec};
use crate::numgrad::{default_h, Strategy};

/// A layer file's text, checked against the contract ([`crate::nn::layers::custom`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WgslLayer {
    /// The name its messages give it (a file name).
    pub file: String,
    pub source: String,
}

impl WgslLayer {
    /// The layer in `source`, named `file` in messages; an error says what breaks the
    /// contract and where (a WGSL error at the file's line and column).
    pub fn from_wgsl(file: &str, source: &str) -> Result<WgslLayer> {
        contract::contract(file, source).map_err(Error::InvalidArgument)?;
        Ok(WgslLayer {
            file: file.to_string(),
            source: source.to_string(),
        })
    }

    /// The layer in the file at `path`.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<WgslLayer> {
        let path = path.as_ref();
        let source = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading the layer file {}", path.display()), e))?;
        WgslLayer::from_wgsl(&path.display().to_string(), &source)
    }

    /// The layer as a net's layer list holds it.
    pub fn spec(&self) -> LayerSpec {
        LayerSpec::Wgsl {
            path: self.file.clone(),
            source: self.source.clone(),
        }
    }
}

/// How [`check_layer`] checks.
#[derive(Clone, Debug)]
pub struct LayerCheckOptions {
    pub precision: Precision,
    /// Samples in the batch.
    pub batch: usize,
    /// Scores of the affine head after the layer.
    pub classes: usize,
    /// Seeds the batch, its labels, the head and the layer's declared random inits.
    pub seed: u64,
    /// Central-difference step [default: [`default_h`] of the precision].
    pub h: Option<f64>,
}

impl Default for LayerCheckOptions {
    fn default() -> Self {
        LayerCheckOptions {
            precision: Precision::F64,
            batch: 3,
            classes: 5,
            seed: 42,
            h: None,
        }
    }
}

/// Checks `layer`'s backward pass on inputs of `input_shape` per sample (`[D]` or
/// `[C, H, W]`): each declared tensor's gradient and the input gradient, numerical against
/// analytic, with [`gradcheck::check`]'s tolerances. The report's `passed` is the verdict; its
/// `tensors` name the element where each error is largest.
pub fn check_layer(
    ctx: &GpuContext,
    layer: &WgslLayer,
    input_shape: &[usize],
    options: &LayerCheckOptions,
) -> Result<GradcheckReport> {
    let image = match *input_shape {
        [d] => [1, 1, d],
        [c, h, w] => [c, h, w],
        _ => {
            return Err(Error::InvalidArgument(format!(
                "input shape {input_shape:?}: give [features] or [channels, height, width]"
            )))
        }
    };
    if options.batch == 0 || options.classes < 2 {
        return Err(Error::InvalidArgument(
            "a layer check needs a batch of at least 1 and at least 2 classes".into(),
        ));
    }
    let head = LayerSpec::Affine {
        units: options.classes,
    };
    let spec = NetSpec::sequential(image, vec![layer.spec(), head])?;
    spec.validate()?;
    let params = init_params(&spec, Init::Xavier, options.seed);
    let (x, labels) = random_batch(&spec, options);
    let (layers, layout) = spec.resolve()?;
    // The layer's own tensors and its input, not the head's.
    let mut tensors: Vec<String> = (layers[0].tensors().iter())
        .map(|&t| layout.tensors[t].name.clone())
        .collect();
    tensors.push("x1".into());
    let config = GradcheckConfig {
        precision: options.precision,
        h: options.h.unwrap_or_else(|| default_h(options.precision)),
        strategy: Strategy::Incremental,
        tensors,
        directions: 0,
        seed: options.seed,
        chunk: None,
        analytic_fault: None,
    };
    gradcheck::check(ctx, &spec, &params, &x, &labels, &config)
}

/// x ~ N(0, 1) [batch, D] and labels uniform over the classes, from the seed.
fn random_batch(spec: &NetSpec, options: &LayerCheckOptions) -> (Vec<f64>, Vec<u32>) {
    use rand::{RngExt, SeedableRng};
    // Another stream than the parameters' (seeded alike), so x is not W's first values.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(options.seed ^ 0x5eed_da7a);
    let x = (0..options.batch * spec.input)
        .map(|_| standard_normal(&mut rng))
        .collect();
    let labels = (0..options.batch)
        .map(|_| rng.random_range(0..options.classes as u32))
        .collect();
    (x, labels)
}
