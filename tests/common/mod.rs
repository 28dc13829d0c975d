//! Shared helpers of the GPU integration tests: one device (and one set of pipelines per
//! precision) per test binary, seeded problems, a runner that pushes one batch through a net on
//! the GPU and reads back everything the public API exposes, and the error measures.
//!
//! Every comparison is against `wgrad::reference`, the f64 CPU oracle. For f32 runs the oracle is
//! fed the f32-rounded parameters and inputs, so that it computes exactly the function the GPU was
//! given and the only difference left is the GPU's own rounding.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

pub mod cli;

use std::sync::OnceLock;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use wgrad::gpu::{kernel, AdapterOptions, GpuBuffer, GpuContext, Precision};
use wgrad::nn::spec::standard_normal;
use wgrad::nn::{Activation, Copies, Kernels, Layer, Model, NetSpec, Recorder, Workspace};
use wgrad::reference::RefMlp;

pub use wgrad::train::{train_metrics, STATE_WORDS, STATS_WORDS};

/// The device every test of this binary shares (opening one costs ~50 ms on lavapipe).
pub fn ctx() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| {
        let ctx = GpuContext::new(&AdapterOptions::default()).unwrap_or_else(|e| {
            panic!("the GPU tests need an adapter (software Vulkan will do): {e}")
        });
        eprintln!("GPU tests run on {}", ctx.describe());
        ctx
    })
}

/// The net pipelines for `precision`, built once per binary.
pub fn kernels(precision: Precision) -> &'static Kernels {
    static F32: OnceLock<Kernels> = OnceLock::new();
    static F64: OnceLock<Kernels> = OnceLock::new();
    let cell = match precision {
        Precision::F32 => &F32,
        Precision::F64 => &F64,
    };
    cell.get_or_init(|| {
        Kernels::new(ctx(), precision)
            .unwrap_or_else(|e| panic!("building the {precision} kernels: {e}"))
    })
}

/// Set to 1 to let the f64 cases skip (loudly) on an adapter without SHADER_F64.
pub const ALLOW_NO_F64: &str = "WGRAD_ALLOW_NO_F64";

/// Whether the f64 cases run. They are required: the gradient checks and the f64 oracle
/// comparisons are the point of these tests, and an adapter that silently lacks f64 (wgpu falls
/// back to GL without a Vulkan driver) would otherwise leave a green run that checked f32 alone.
/// Without SHADER_F64 this panics with the adapter's name, unless `WGRAD_ALLOW_NO_F64=1`, where it
/// returns false after saying on the terminal that the f64 cases are skipped.
pub fn f64_runs() -> bool {
    if ctx().supports(Precision::F64) {
        return true;
    }
    let allowed = std::env::var(ALLOW_NO_F64).is_ok_and(|v| v == "1");
    assert!(
        allowed,
        "{} has no SHADER_F64, which these tests need: install a Vulkan driver (lavapipe: \
         apt-get install mesa-vulkan-drivers libvulkan1), pick another adapter \
         (WGPU_ADAPTER_NAME, WGPU_BACKEND=vulkan), or set {ALLOW_NO_F64}=1 to skip the f64 cases",
        ctx().describe()
    );
    say_past_capture(&format!(
        "SKIPPED (f64): {} has no SHADER_F64 and {ALLOW_NO_F64}=1 is set: this test's f64 cases did not run",
        ctx().describe()
    ));
    false
}

/// Writes straight to the process's stderr: libtest captures only the print macros, so this
/// shows even for a passing test.
fn say_past_capture(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The precisions to test: f32, and f64 as [`f64_runs`] decides.
pub fn precisions() -> Vec<Precision> {
    if f64_runs() {
        vec![Precision::F32, Precision::F64]
    } else {
        vec![Precision::F32]
    }
}

pub fn normals(rng: &mut ChaCha8Rng, len: usize, std: f64) -> Vec<f64> {
    (0..len).map(|_| std * standard_normal(rng)).collect()
}

/// The values as the GPU holds them at `precision`.
pub fn round_to(precision: Precision, values: &[f64]) -> Vec<f64> {
    match precision {
        Precision::F32 => values.iter().map(|&v| f64::from(v as f32)).collect(),
        Precision::F64 => values.to_vec(),
    }
}

/// One batch through one net: parameters in the flat layout, inputs [N, input], labels [N].
#[derive(Clone, Debug)]
pub struct Problem {
    pub spec: NetSpec,
    pub params: Vec<f64>,
    pub x: Vec<f64>,
    pub labels: Vec<u32>,
}

impl Problem {
    /// Seeded random weights ~ N(0, (gain²/fan_in)), biases ~ N(0, 0.5²) (non-zero, so the bias
    /// paths are not tested at a special point), inputs ~ N(0, 1), labels spread over the classes.
    pub fn random(spec: &NetSpec, n: usize, seed: u64) -> Problem {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x = normals(&mut rng, n * spec.input, 1.0);
        let labels = (0..n)
            .map(|i| ((i as u64 * 7 + seed) % spec.output as u64) as u32)
            .collect();
        Problem::with_data(spec, x, labels, seed)
    }

    /// Given data, seeded random parameters as in [`Problem::random`].
    pub fn with_data(spec: &NetSpec, x: Vec<f64>, labels: Vec<u32>, seed: u64) -> Problem {
        assert_eq!(x.len(), labels.len() * spec.input);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
        let layout = spec.layout();
        let mut params = vec![0.0; layout.total];
        for t in &layout.tensors {
            let std = if t.is_weight() {
                1.5 / (t.shape[0] as f64).sqrt()
            } else {
                0.5
            };
            params[t.offset..t.offset + t.numel].copy_from_slice(&normals(&mut rng, t.numel, std));
        }
        Problem {
            spec: spec.clone(),
            params,
            x,
            labels,
        }
    }

    /// Like [`Problem::random`] (or [`Problem::with_data`] when `data` is given), trying seeds from
    /// `seed` on until no ReLU pre-activation lies within 1e-5 (relative to the layer's largest)
    /// of the kink, where f32 and f64 may legitimately disagree on the unit's state.
    pub fn kink_free(spec: &NetSpec, n: usize, seed: u64, data: Option<(&[f64], &[u32])>) -> Self {
        for s in seed..seed + 200 {
            let p = match data {
                Some((x, labels)) => Problem::with_data(spec, x.to_vec(), labels.to_vec(), s),
                None => Problem::random(spec, n, s),
            };
            if p.relu_margin() > 1e-5 {
                return p;
            }
        }
        panic!(
            "no seed in {seed}..{} keeps ReLU units off the kink",
            seed + 200
        );
    }

    pub fn n(&self) -> usize {
        self.labels.len()
    }

    /// This problem as the GPU sees it at `precision`.
    pub fn at(&self, precision: Precision) -> Problem {
        Problem {
            spec: self.spec.clone(),
            params: round_to(precision, &self.params),
            x: round_to(precision, &self.x),
            labels: self.labels.clone(),
        }
    }

    pub fn reference(&self) -> RefMlp {
        RefMlp::new(self.spec.clone())
    }

    /// Smallest |pre-activation| / largest, over every hidden ReLU layer (∞ without any).
    pub fn relu_margin(&self) -> f64 {
        if !self.spec.layers.contains(&Activation::Relu.spec()) {
            return f64::INFINITY;
        }
        let fwd = self.reference().forward(&self.params, &self.x, self.n());
        let hidden = &fwd.pre[..fwd.pre.len() - 1];
        hidden
            .iter()
            .map(|z| {
                let max = z.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                let min = z.iter().fold(f64::INFINITY, |m, v| m.min(v.abs()));
                min / max
            })
            .fold(f64::INFINITY, f64::min)
    }

    /// The slice of a flat parameter-shaped vector that holds tensor `name`.
    pub fn tensor<'v>(&self, values: &'v [f64], name: &str) -> &'v [f64] {
        let layout = self.spec.layout();
        let t = layout.get(name).expect("tensor in layout");
        &values[t.offset..t.offset + t.numel]
    }

    pub fn tensor_names(&self) -> Vec<String> {
        self.spec
            .layout()
            .tensors
            .iter()
            .map(|t| t.name.clone())
            .collect()
    }
}

/// Everything one GPU pass over a batch left behind.
#[derive(Clone, Debug)]
pub struct GpuOut {
    pub pre: Vec<Vec<f64>>,
    pub act: Vec<Vec<f64>>,
    pub row_loss: Vec<f64>,
    pub row_correct: Vec<u32>,
    /// Every parameter's gradient (only when run with gradients).
    pub grads: Option<Vec<f64>>,
    /// stats[1]: the step loss train_metrics wrote (mean data loss plus the L2 penalty).
    pub step_loss: f64,
    /// stats[3]: the L2 penalty l2_penalty wrote (0 without weight decay).
    pub penalty: f64,
}

/// Runs l2_penalty, forward, (backward,) train_metrics in one submit, as a training step does,
/// on a fresh model and workspace, and reads everything back.
pub fn run_gpu(precision: Precision, prob: &Problem, with_grads: bool) -> GpuOut {
    let ctx = ctx();
    let model = Model::new(ctx, &prob.spec, &prob.params, precision).expect("model");
    let ws = Workspace::new(ctx, &model, prob.n(), 1, with_grads);
    run_on(precision, prob, &model, &ws, with_grads)
}

/// [`run_gpu`] on a given model and workspace (whose parameters must already be `prob`'s);
/// `with_grads` must match how `ws` was built.
pub fn run_on(
    precision: Precision,
    prob: &Problem,
    model: &Model,
    ws: &Workspace,
    with_grads: bool,
) -> GpuOut {
    let ctx = ctx();
    let rec = Recorder {
        ctx,
        kernels: kernels(precision),
        model,
    };
    ws.upload(ctx, &prob.x, &prob.labels, precision);
    let stats = GpuBuffer::real(ctx, "stats", STATS_WORDS, precision);
    let state = GpuBuffer::zeroed(ctx, "state", STATE_WORDS, 4);
    let mut d = Vec::new();
    d.extend(rec.l2_penalty(&stats));
    d.extend(rec.forward(ws, &Copies::Single));
    if with_grads {
        d.extend(rec.backward(ws));
    }
    d.push(train_metrics(&rec.gpu(), ws, &stats, &state));
    kernel::run(ctx, &d).expect("GPU run");
    let read = |b: &GpuBuffer| b.read_real(ctx, precision).expect("readback");
    let stats = read(&stats);
    // An MLP's pre-activations are its affine layers' outputs (the last being the logits), its
    // hidden activations its activation layers' outputs.
    let outputs_of = |kind: fn(&Layer) -> bool| -> Vec<Vec<f64>> {
        (model.layers.iter().zip(&ws.out))
            .filter(|(layer, _)| kind(layer))
            .map(|(_, out)| read(out))
            .collect()
    };
    GpuOut {
        pre: outputs_of(|l| matches!(l, Layer::Affine(_))),
        act: outputs_of(|l| matches!(l, Layer::Activation(_))),
        row_loss: read(&ws.row_loss),
        row_correct: ws.row_correct.read_u32(ctx).expect("readback"),
        grads: with_grads.then(|| model.read_grads(ctx).expect("readback")),
        step_loss: stats[1],
        penalty: stats[3],
    }
}

/// ‖got − want‖₂ / ‖want‖₂ (absolute when `want` is all zeros).
pub fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let diff = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w) * (g - w))
        .sum::<f64>()
        .sqrt();
    let norm = want.iter().map(|w| w * w).sum::<f64>().sqrt();
    if norm == 0.0 {
        diff
    } else {
        diff / norm
    }
}

/// max |got − want| / max |want|: the worst element, relative to the tensor's value scale
/// (absolute when `want` is all zeros). NaN anywhere in `got` gives NaN, which fails every check.
pub fn scaled_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let mut worst = 0.0f64;
    for (g, w) in got.iter().zip(want) {
        let d = (g - w).abs();
        if d.is_nan() {
            return f64::NAN;
        }
        worst = worst.max(d);
    }
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    if scale == 0.0 {
        worst
    } else {
        worst / scale
    }
}

/// Fails with the measured error when `err` (NaN included) is not within `tol`. With
/// `WGRAD_TEST_ERRORS` set, prints every measured error (run with `--nocapture`), to see how much
/// room each tolerance leaves.
#[track_caller]
pub fn check(what: &str, err: f64, tol: f64) {
    if std::env::var_os("WGRAD_TEST_ERRORS").is_some() {
        eprintln!("{err:10.3e} / {tol:.0e}  {what}");
    }
    assert!(
        err <= tol,
        "{what}: error {err:.3e} exceeds tolerance {tol:.1e}"
    );
}

/// Bit patterns, so NaN == NaN and 0.0 != -0.0 for determinism checks.
pub fn bits(values: &[f64]) -> Vec<u64> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// The first `n` images of the bundled MNIST training set as pixel / 255, and their labels.
pub fn mnist_batch(n: usize) -> (Vec<f64>, Vec<u32>) {
    let mnist = wgrad::data::bundled().expect("bundled MNIST");
    let x = mnist.train.images_f64(0..n);
    let labels = mnist.train.labels[..n]
        .iter()
        .map(|&l| u32::from(l))
        .collect();
    (x, labels)
}
