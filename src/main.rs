//! The `wgrad` command line: a thin layer over the library.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use wgrad::gpu::{list_adapters, AdapterOptions, GpuContext, Precision};
use wgrad::nn::NamedTensor;
use wgrad::nn::{Activation, Init, NetSpec};
use wgrad::numgrad::{self, Strategy};
use wgrad::optim::Optimizer;
use wgrad::{bench, checkpoint, data, gradcheck, train, Result};

#[derive(Parser)]
#[command(
    name = "wgrad",
    version,
    about = "Train MNIST-sized nets on any GPU (wgpu/WGSL), and check their gradients numerically"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a net on MNIST (the bundled 10k subset unless --data is given).
    Train(TrainArgs),
    /// Check backprop against batched numerical gradients, per tensor.
    Gradcheck(GradcheckArgs),
    /// Time analytic and numerical gradients (each strategy and precision, and the book's loop).
    Bench(BenchArgs),
    /// List the GPU adapters wgpu can see.
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The flags that describe a net.
#[derive(Args, Clone)]
struct NetArgs {
    /// Hidden layer sizes, comma-separated (50 is the book's TwoLayerNet) [default: train
    /// 256,128 with BatchNorm; gradcheck and bench 50]. Given sizes make a plain MLP unless
    /// --batchnorm is added.
    #[arg(long, value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    /// Model: mlp (shaped by --hidden, --activation, --batchnorm, --dropout) or simple-conv
    /// (the book's SimpleConvNet: conv 30×5×5, ReLU, max-pool 2, affine 100, ReLU, affine 10).
    #[arg(long, default_value = "mlp")]
    model: String,
    /// An explicit layer list instead of --model, e.g.
    /// "conv16x3p1,bn,relu,maxpool2,affine100,relu,dropout0.3,affine10" (see README).
    #[arg(long)]
    layers: Option<String>,
    /// BatchNorm after every hidden affine layer (mlp).
    #[arg(long)]
    batchnorm: bool,
    /// Dropout probability after every hidden activation (mlp).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    dropout: f64,
    /// Hidden nonlinearity: any activation layer's word (relu, sigmoid, …; see --layers).
    #[arg(long, default_value = "relu")]
    activation: String,
    /// Weight init: he, xavier, or a standard deviation such as 0.01 [default: train he;
    /// gradcheck and bench 0.01, as the book's TwoLayerNet].
    #[arg(long)]
    init: Option<String>,
    /// L2 weight decay λ (the loss gains λ/2·Σ‖W‖², as in the book).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    weight_decay: f64,
    /// Seed for initialisation and shuffling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Folder holding the four standard MNIST files (gzip or raw); default: the bundled subset.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Use the adapter whose name contains this (see `wgrad devices`).
    #[arg(long)]
    adapter: Option<String>,
    /// Start from the parameters in this safetensors file (tensors W1, b1, …).
    #[arg(long)]
    init_from: Option<PathBuf>,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    net: NetArgs,
    /// sgd, momentum, nesterov, adagrad, rmsprop, adam or adamw (PyTorch's update rules)
    /// [default: momentum for mlp, adam for convnets].
    #[arg(long)]
    optimizer: Option<String>,
    /// Learning rate (default: 0.1 for the bare run's momentum SGD, else PyTorch's default).
    #[arg(long, allow_hyphen_values = true)]
    lr: Option<f64>,
    /// Momentum (sgd, momentum, nesterov, rmsprop).
    #[arg(long, allow_hyphen_values = true)]
    momentum: Option<f64>,
    /// Dampening (sgd/momentum).
    #[arg(long, allow_hyphen_values = true)]
    dampening: Option<f64>,
    /// Adam/AdamW β1.
    #[arg(long, allow_hyphen_values = true)]
    beta1: Option<f64>,
    /// Adam/AdamW β2.
    #[arg(long, allow_hyphen_values = true)]
    beta2: Option<f64>,
    /// ε of AdaGrad, RMSprop, Adam, AdamW.
    #[arg(long, allow_hyphen_values = true)]
    eps: Option<f64>,
    /// RMSprop smoothing constant α.
    #[arg(long, allow_hyphen_values = true)]
    alpha: Option<f64>,
    /// AdaGrad learning-rate decay.
    #[arg(long, allow_hyphen_values = true)]
    lr_decay: Option<f64>,
    /// AdaGrad initial accumulator value.
    #[arg(long, allow_hyphen_values = true)]
    initial_accumulator: Option<f64>,
    /// Use AMSGrad (Adam/AdamW).
    #[arg(long)]
    amsgrad: bool,
    /// Centered RMSprop.
    #[arg(long)]
    centered: bool,
    /// The optimizer's own weight decay (PyTorch's weight_decay: L2 added to the gradient; for
    /// AdamW the decoupled decay, default 0.01).
    #[arg(long, allow_hyphen_values = true)]
    optim_weight_decay: Option<f64>,
    /// Epochs [default: 20 for mlp, 10 for convnets].
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// f32 (default) or f64 (needs SHADER_F64).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Training steps recorded per GPU submit.
    #[arg(long, default_value_t = 40)]
    steps_per_submit: usize,
    /// Write the trained parameters here (safetensors; checked for writability before training).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Print one JSON object on stdout at the end.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GradcheckArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Check on the central N×N window of each image (a reduced input for convnets, as the
    /// book's ch07 check uses 10×10).
    #[arg(long)]
    crop: Option<usize>,
    /// Check on the first N training images (the book uses 3).
    #[arg(long, default_value_t = 3)]
    batch: usize,
    /// f64 (default where the adapter has SHADER_F64) or f32.
    #[arg(long)]
    precision: Option<String>,
    /// Central-difference step [default: 1e-5 in f64, 5e-3 in f32, near ∛ε].
    #[arg(long, allow_hyphen_values = true)]
    h: Option<f64>,
    /// incremental (default) or full.
    #[arg(long, default_value = "incremental")]
    strategy: String,
    /// Only these tensors, comma-separated (e.g. W1,b2).
    #[arg(long, value_delimiter = ',')]
    params: Vec<String>,
    /// Train this many steps (momentum SGD, lr 0.1, batch 100) before checking.
    #[arg(long, default_value_t = 0)]
    after_steps: usize,
    /// Also check K random directions (directional derivatives).
    #[arg(long, default_value_t = 0)]
    directions: usize,
    /// Perturbed losses per GPU chunk [default: from the device limits].
    #[arg(long)]
    chunk: Option<usize>,
    /// Write both gradients here as safetensors (analytic.W1, numeric.W1, …).
    #[arg(long)]
    save_grads: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Use the central N×N window of each image.
    #[arg(long)]
    crop: Option<usize>,
    /// Batch: the first N training images.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Precisions to time, comma-separated [default: f64 (where the adapter has it) and f32].
    #[arg(long, value_delimiter = ',')]
    precision: Vec<String>,
    /// Variants: incremental, full, sequential (the book's loop: one pair per submit).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "incremental,full,sequential"
    )]
    variants: Vec<String>,
    /// Variants predicted to exceed this many seconds are timed on a prefix and extrapolated.
    #[arg(long, default_value_t = 20.0)]
    budget: f64,
    /// Best of this many runs.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    quiet_mesa_runtime_dir();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => run_train(args),
        Command::Gradcheck(args) => run_gradcheck(args),
        Command::Bench(args) => run_bench(args),
        Command::Devices { json } => run_devices(json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wgrad: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Mesa prints "XDG_RUNTIME_DIR is invalid or not set" on every start without it; the warning
/// is harmless, but noise on every run. Point it at a private folder when it is unset (before
/// any thread exists, so setting the variable is sound).
fn quiet_mesa_runtime_dir() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let uid = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("wgrad-runtime-{uid}"));
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        let private = std::fs::metadata(&dir)
            .map(|m| m.is_dir() && m.uid() == uid && m.permissions().mode() & 0o077 == 0)
            .unwrap_or(false);
        if private {
            std::env::set_var("XDG_RUNTIME_DIR", &dir);
        }
    }
}

fn run_devices(json: bool) -> Result<ExitCode> {
    let adapters = list_adapters();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&adapters).expect("serialisable")
        );
    } else if adapters.is_empty() {
        println!("no adapters found: install a Vulkan driver, or lavapipe with `apt-get install -y mesa-vulkan-drivers libvulkan1`");
    } else {
        println!(
            "{:<3} {:<36} {:<8} {:<12} {:<4} {:<9} {:<10} driver",
            "#", "name", "backend", "type", "f64", "subgroups", "timestamps"
        );
        for a in &adapters {
            let yes = |b: bool| if b { "yes" } else { "no" };
            println!(
                "{:<3} {:<36} {:<8} {:<12} {:<4} {:<9} {:<10} {} {}",
                a.index,
                a.name,
                a.backend,
                a.device_type,
                yes(a.f64),
                yes(a.subgroups),
                yes(a.timestamps),
                a.driver,
                a.driver_info
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Per-command defaults of the net flags.
struct NetDefaults {
    hidden: &'static [usize],
    /// BatchNorm when --hidden is not given (the default net is a recipe; a net the user sizes
    /// is plain unless --batchnorm is asked for, so the book's nets stay the book's).
    batchnorm: bool,
    init: &'static str,
}

/// The bare `wgrad train`: 784-256-128-10 with BatchNorm, which reached 0.954–0.961 test
/// accuracy over three seeds on the bundled set (784-100-100-10 without it: 0.949–0.953).
const TRAIN_NET: NetDefaults = NetDefaults {
    hidden: &[256, 128],
    batchnorm: true,
    init: "he",
};
const CHECK_NET: NetDefaults = NetDefaults {
    hidden: &[50],
    batchnorm: false,
    init: "0.01",
};

impl NetArgs {
    fn init(&self, defaults: &NetDefaults) -> Result<Init> {
        self.init.as_deref().unwrap_or(defaults.init).parse()
    }

    fn spec(&self, data: &data::Dataset, defaults: &NetDefaults) -> Result<NetSpec> {
        let activation: Activation = self.activation.parse()?;
        let layers = match (&self.layers, self.model.as_str()) {
            (Some(text), "mlp") => Some(text.clone()),
            (Some(_), _) => {
                return Err(wgrad::Error::InvalidArgument(
                    "give either --model or --layers, not both".into(),
                ))
            }
            (None, "mlp") => None,
            (None, name) => Some(wgrad::nn::layers::named_model(name)?.to_string()),
        };
        let image = [1, data.rows, data.cols];
        let mut spec = match layers {
            Some(text) => {
                if self.batchnorm || self.dropout != 0.0 || self.hidden.is_some() {
                    return Err(wgrad::Error::InvalidArgument(
                        "--hidden, --batchnorm and --dropout shape the mlp model; with --model or --layers write them into the layer list".into(),
                    ));
                }
                let spec = NetSpec::sequential(image, wgrad::nn::layers::parse_layers(&text)?)?;
                if spec.output != 10 {
                    return Err(wgrad::Error::InvalidArgument(format!(
                        "the last layer gives {} class scores but MNIST has 10 classes: end the spec with affine10",
                        spec.output
                    )));
                }
                spec
            }
            None => {
                let hidden = self.hidden.as_deref().unwrap_or(defaults.hidden);
                let mut spec = NetSpec::mlp(data.image_size(), hidden, 10, activation);
                spec.image = image;
                if self.batchnorm || (self.hidden.is_none() && defaults.batchnorm) {
                    spec = spec.with_batchnorm();
                }
                spec.with_dropout(self.dropout)
            }
        };
        spec.weight_decay = self.weight_decay;
        spec.validate()?;
        Ok(spec)
    }

    fn load_data(&self) -> Result<data::Mnist> {
        Ok(match &self.data {
            Some(dir) => data::load_dir(dir)?,
            None => data::bundled()?,
        })
    }

    fn context(&self) -> Result<GpuContext> {
        let ctx = GpuContext::new(&AdapterOptions {
            name: self.adapter.clone(),
        })?;
        eprintln!("wgrad: adapter {}", ctx.describe());
        Ok(ctx)
    }

    /// BatchNorm running statistics stored beside the parameters in `--init-from`, if any.
    fn initial_state(&self, spec: &NetSpec) -> Result<Vec<NamedTensor>> {
        let Some(path) = &self.init_from else {
            return Ok(Vec::new());
        };
        let (layers, layout) = spec.resolve()?;
        let mut out = Vec::new();
        for (mean, var, c) in wgrad::nn::model::state_names(&layers, &layout) {
            for name in [mean, var] {
                if let Some(v) = checkpoint::load_optional(path, &name, &[c])? {
                    out.push((name, vec![c], v));
                }
            }
        }
        Ok(out)
    }

    fn initial_params(&self, spec: &NetSpec) -> Result<Option<Vec<f64>>> {
        self.init_from
            .as_ref()
            .map(|p| checkpoint::load(p, &spec.layout()).map(|c| c.params))
            .transpose()
    }
}

impl TrainArgs {
    /// The bare run's recipes: momentum SGD (lr 0.1) for MLPs, Adam (lr 1e-3) for convnets,
    /// as the PyTorch anchors that wgrad is measured against train them.
    fn is_convnet(&self) -> bool {
        self.net.layers.is_some() || self.net.model != "mlp"
    }

    fn epochs(&self) -> usize {
        self.epochs
            .unwrap_or(if self.is_convnet() { 10 } else { 20 })
    }

    fn optimizer(&self) -> Result<Optimizer> {
        let name = self.optimizer.clone().unwrap_or_else(|| {
            if self.is_convnet() {
                "adam"
            } else {
                "momentum"
            }
            .to_string()
        });
        let default_lr = match name.as_str() {
            "momentum" => Some(0.1),
            _ => None,
        };
        let mut opt = Optimizer::from_name(&name, self.lr.or(default_lr))?;
        let set = |slot: &mut f64, v: Option<f64>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        match &mut opt {
            Optimizer::Sgd {
                momentum,
                dampening,
                weight_decay,
                ..
            } => {
                set(momentum, self.momentum);
                set(dampening, self.dampening);
                set(weight_decay, self.optim_weight_decay);
            }
            Optimizer::Adagrad {
                eps,
                lr_decay,
                initial_accumulator,
                weight_decay,
                ..
            } => {
                set(eps, self.eps);
                set(lr_decay, self.lr_decay);
                set(initial_accumulator, self.initial_accumulator);
                set(weight_decay, self.optim_weight_decay);
            }
            Optimizer::Rmsprop {
                alpha,
                eps,
                momentum,
                centered,
                weight_decay,
                ..
            } => {
                set(alpha, self.alpha);
                set(eps, self.eps);
                set(momentum, self.momentum);
                *centered = self.centered;
                set(weight_decay, self.optim_weight_decay);
            }
            Optimizer::Adam {
                beta1,
                beta2,
                eps,
                amsgrad,
                weight_decay,
                ..
            }
            | Optimizer::Adamw {
                beta1,
                beta2,
                eps,
                amsgrad,
                weight_decay,
                ..
            } => {
                set(beta1, self.beta1);
                set(beta2, self.beta2);
                set(eps, self.eps);
                *amsgrad = self.amsgrad;
                set(weight_decay, self.optim_weight_decay);
            }
        }
        opt.validate()?;
        Ok(opt)
    }
}

fn run_train(args: TrainArgs) -> Result<ExitCode> {
    // Every argument is checked before the data is read or the GPU is touched.
    let optimizer = args.optimizer()?;
    let init = args.net.init(&TRAIN_NET)?;
    let precision: Precision = args.precision.parse()?;
    if let Some(path) = &args.save {
        checkpoint::ensure_writable(path)?;
    }
    let mnist = args.net.load_data()?;
    let spec = args.net.spec(&mnist.train, &TRAIN_NET)?;
    let initial_params = args.net.initial_params(&spec)?;
    let initial_state = args.net.initial_state(&spec)?;
    let config = train::TrainConfig {
        spec: spec.clone(),
        init,
        optimizer,
        epochs: args.epochs(),
        batch_size: args.batch_size,
        seed: args.net.seed,
        precision,
        initial_params,
        initial_state,
        steps_per_submit: args.steps_per_submit,
        verbose: true,
        interrupt: Some(stop_on_signal()),
        ..Default::default()
    };
    config.validate(&mnist.train)?;
    let ctx = args.net.context()?;
    let report = train::train(&ctx, &mnist, &config, None)?;
    if report.interrupted {
        eprintln!(
            "wgrad: interrupted after step {} of {}: evaluated and {} as it stands",
            report.steps,
            config.epochs * (mnist.train.len() / config.batch_size),
            if args.save.is_some() {
                "saved"
            } else {
                "reported"
            }
        );
    }
    eprintln!(
        "wgrad: test accuracy {:.4}, train accuracy {:.4}, {:.1} s ({:.0} samples/s)",
        report.test_accuracy, report.train_accuracy, report.seconds, report.samples_per_second
    );
    if let Some(path) = &args.save {
        let mut meta = BTreeMap::new();
        meta.insert("format".into(), "wgrad-mlp".into());
        meta.insert(
            "spec".into(),
            serde_json::to_string(&spec).expect("serialisable"),
        );
        meta.insert("init".into(), init.to_string());
        meta.insert(
            "test_accuracy".into(),
            format!("{:.6}", report.test_accuracy),
        );
        checkpoint::save_with_state(path, &spec.layout(), &report.params, &report.state, &meta)?;
        eprintln!("wgrad: saved {}", path.display());
    }
    if args.json {
        let mut value = serde_json::to_value(&report).expect("serialisable");
        value["adapter"] = ctx.adapter_json();
        value["optimizer"] = serde_json::to_value(&config.optimizer).expect("serialisable");
        value["spec"] = serde_json::to_value(&spec).expect("serialisable");
        // The widths --hidden gives, readable without walking the layer list.
        value["spec"]["hidden"] = serde_json::json!(spec.hidden_units());
        value["precision"] = serde_json::json!(precision);
        println!("{value}");
    }
    // 128 + SIGINT, as a shell reports a process that Ctrl-C ended.
    Ok(if report.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// A flag that Ctrl-C, SIGTERM or SIGHUP sets, so that training stops after the submit in
/// flight and the run is evaluated and saved rather than lost. A second signal ends the process
/// at once.
fn stop_on_signal() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let installed = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nwgrad: stopping after the current steps (again to quit at once)");
    });
    if let Err(e) = installed {
        eprintln!("wgrad: Ctrl-C will not save the run: {e}");
    }
    stop
}

/// Parameters for a check: a checkpoint, or the init; then `after_steps` of training.
fn check_params(
    net: &NetArgs,
    ctx: &GpuContext,
    spec: &NetSpec,
    mnist: &data::Mnist,
    after_steps: usize,
) -> Result<Vec<f64>> {
    wgrad::nn::model::check_fits(ctx, spec, 1, Precision::F32)?;
    let params = match net.initial_params(spec)? {
        Some(p) => p,
        None => wgrad::nn::init_params(spec, net.init(&CHECK_NET)?, net.seed),
    };
    if after_steps == 0 {
        return Ok(params);
    }
    let config = train::TrainConfig {
        spec: spec.clone(),
        optimizer: Optimizer::from_name("momentum", Some(0.1))?,
        epochs: after_steps.div_ceil((mnist.train.len() / 100).max(1)),
        max_steps: Some(after_steps),
        seed: net.seed,
        initial_params: Some(params),
        ..Default::default()
    };
    Ok(train::train(ctx, mnist, &config, None)?.params)
}

fn run_gradcheck(args: GradcheckArgs) -> Result<ExitCode> {
    let strategy: Strategy = args.strategy.parse()?;
    if let Some(path) = &args.save_grads {
        checkpoint::ensure_writable(path)?;
    }
    let mnist = cropped(args.net.load_data()?, args.crop)?;
    let spec = args.net.spec(&mnist.train, &CHECK_NET)?;
    let (x, labels) = gradcheck::first_batch(&mnist.train, args.batch)?;
    let ctx = args.net.context()?;
    let precision = match &args.precision {
        Some(p) => p.parse()?,
        None if ctx.supports(Precision::F64) => Precision::F64,
        None => {
            eprintln!("wgrad: adapter has no f64 (SHADER_F64): checking in f32, where per-element central differences are unreliable");
            Precision::F32
        }
    };
    let params = check_params(&args.net, &ctx, &spec, &mnist, args.after_steps)?;
    let config = gradcheck::GradcheckConfig {
        precision,
        h: args.h.unwrap_or_else(|| numgrad::default_h(precision)),
        strategy,
        tensors: args.params.clone(),
        directions: args.directions,
        seed: args.net.seed,
        chunk: args.chunk,
        analytic_fault: None,
    };
    let report = gradcheck::check(&ctx, &spec, &params, &x, &labels, &config)?;
    if let Some(path) = &args.save_grads {
        save_grads(path, &spec, &report)?;
    }
    if args.json {
        let mut value = serde_json::to_value(&report).expect("serialisable");
        value["adapter"] = ctx.adapter_json();
        println!("{value}");
    } else {
        print_gradcheck(&report);
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_gradcheck(r: &gradcheck::GradcheckReport) {
    println!(
        "gradcheck: {} batch {}, {} strategy, h = {:e}, loss {:.6}",
        r.precision, r.batch, r.strategy, r.h, r.loss
    );
    println!(
        "{:<6} {:>8} {:>13} {:>13} {:<14} {:>13} {:>6} {:<7}",
        "tensor", "numel", "mean |a-n|", "max rel err", "at", "norm rel err", "kinks", "verdict"
    );
    for t in &r.tensors {
        println!(
            "{:<6} {:>8} {:>13.3e} {:>13.3e} {:<14} {:>13.3e} {:>6} {}",
            t.name,
            t.numel,
            t.mean_abs_diff,
            t.max_rel_err,
            format!("{:?}", t.max_rel_err_at),
            t.norm_rel_err,
            t.kink_crossings,
            if t.passed { "pass" } else { "FAIL" }
        );
    }
    for (i, d) in r.directions.iter().enumerate() {
        println!(
            "direction {i}: analytic {:.10e} numeric {:.10e} rel err {:.2e} {}",
            d.analytic,
            d.numeric,
            d.rel_err,
            if d.passed { "pass" } else { "FAIL" }
        );
    }
    let kinks: usize = r.tensors.iter().map(|t| t.kink_crossings).sum();
    println!(
        "{} perturbed losses in {:.3} s (setup {:.3} s), analytic gradient {:.4} s; {} kink crossings excluded; tolerance: ‖a-n‖ ≤ {:e}·‖a‖ + {}·√numel{}",
        r.perturbed_losses,
        r.seconds_numeric,
        r.seconds_numeric_setup,
        r.seconds_analytic,
        kinks,
        r.tolerance.norm_tol,
        if r.tolerance.noise_factor > 0.0 {
            format!(
                "({:e} + {}·noise measured at 2h)",
                r.tolerance.norm_atol, r.tolerance.noise_factor
            )
        } else {
            format!("{:e}", r.tolerance.norm_atol)
        },
        if r.tolerance.per_element {
            format!(", |a-n| ≤ {:e} + {:e}·max(|a|,|n|)", r.tolerance.atol, r.tolerance.rtol)
        } else {
            String::new()
        }
    );
    if let Some(why) = &r.degenerate {
        println!("DEGENERATE: {why}");
    }
    println!("{}", if r.passed { "PASSED" } else { "FAILED" });
}

fn save_grads(
    path: &std::path::Path,
    spec: &NetSpec,
    r: &gradcheck::GradcheckReport,
) -> Result<()> {
    use checkpoint::TensorData;
    let layout = spec.layout();
    let mut tensors = Vec::new();
    for t in layout
        .tensors
        .iter()
        .filter(|t| r.tensors.iter().any(|c| c.name == t.name))
    {
        for (prefix, values) in [("analytic", &r.analytic), ("numeric", &r.numeric)] {
            let v = values[t.offset..t.offset + t.numel].to_vec();
            let data = match r.precision {
                Precision::F64 => TensorData::F64(v),
                Precision::F32 => TensorData::F32(v.iter().map(|&a| a as f32).collect()),
            };
            tensors.push((format!("{prefix}.{}", t.name), t.shape.clone(), data));
        }
    }
    let mut meta = BTreeMap::new();
    meta.insert("precision".into(), r.precision.to_string());
    meta.insert("strategy".into(), r.strategy.to_string());
    meta.insert("h".into(), format!("{:e}", r.h));
    checkpoint::save_tensors(path, &tensors, &meta)
}

/// The data with every image cut to its central `size`×`size` window (when asked).
fn cropped(mnist: data::Mnist, size: Option<usize>) -> Result<data::Mnist> {
    let Some(size) = size else { return Ok(mnist) };
    let crop = |d: &data::Dataset| {
        d.center_crop(size).ok_or_else(|| {
            wgrad::Error::InvalidArgument(format!(
                "--crop {size} does not fit {}×{} images: use 1 to {}",
                d.rows,
                d.cols,
                d.rows.min(d.cols)
            ))
        })
    };
    Ok(data::Mnist {
        train: crop(&mnist.train)?,
        test: crop(&mnist.test)?,
    })
}

fn run_bench(args: BenchArgs) -> Result<ExitCode> {
    for v in &args.variants {
        if !["incremental", "full", "sequential"].contains(&v.as_str()) {
            return Err(wgrad::Error::InvalidArgument(format!(
                "unknown variant '{v}': use incremental, full or sequential"
            )));
        }
    }
    let mnist = cropped(args.net.load_data()?, args.crop)?;
    let spec = args.net.spec(&mnist.train, &CHECK_NET)?;
    let (x, labels) = gradcheck::first_batch(&mnist.train, args.batch)?;
    let ctx = args.net.context()?;
    let precisions: Vec<Precision> = if args.precision.is_empty() {
        [Precision::F64, Precision::F32]
            .into_iter()
            .filter(|p| ctx.supports(*p))
            .collect()
    } else {
        args.precision
            .iter()
            .map(|p| p.parse())
            .collect::<Result<_>>()?
    };
    let params = check_params(&args.net, &ctx, &spec, &mnist, 0)?;
    let config = bench::BenchConfig {
        precisions,
        variants: args.variants.clone(),
        budget_seconds: args.budget,
        repeats: args.repeats,
    };
    let report = bench::run(&ctx, &spec, &params, &x, &labels, &config)?;
    if args.json {
        let mut value = serde_json::to_value(&report).expect("serialisable");
        value["adapter"] = ctx.adapter_json();
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "bench: {} parameters, batch {}, adapter {}",
        report.parameters,
        report.batch,
        ctx.describe()
    );
    for (p, s) in &report.analytic {
        println!("analytic gradient ({p}): {:.3} ms", s * 1e3);
    }
    println!(
        "{:<12} {:<5} {:>10} {:>10} {:>14} {:>12} {:>8}",
        "variant", "prec", "seconds", "losses", "losses/s", "vs analytic", "note"
    );
    for n in &report.numeric {
        let analytic = report
            .analytic
            .iter()
            .find(|a| a.0 == n.precision)
            .map(|a| a.1)
            .unwrap_or(f64::NAN);
        println!(
            "{:<12} {:<5} {:>10.3} {:>10} {:>14.0} {:>11.0}x {:>8}",
            n.strategy,
            n.precision.to_string(),
            n.seconds,
            n.perturbed_losses,
            n.perturbed_losses_per_second,
            n.seconds / analytic,
            if n.extrapolated {
                format!("extrapolated from {}", n.measured_losses)
            } else {
                String::new()
            }
        );
    }
    let seconds_of = |variant: &str, p: Precision| {
        report
            .numeric
            .iter()
            .find(|n| n.strategy == variant && n.precision == p)
            .map(|n| n.seconds)
    };
    for p in &config.precisions {
        if let (Some(inc), Some(seq)) =
            (seconds_of("incremental", *p), seconds_of("sequential", *p))
        {
            println!(
                "{p}: incremental is {:.0}x faster than the book's loop on the same GPU",
                seq / inc
            );
        }
        if let (Some(inc), Some(full)) = (seconds_of("incremental", *p), seconds_of("full", *p)) {
            println!("{p}: incremental is {:.1}x faster than full", full / inc);
        }
    }
    Ok(ExitCode::SUCCESS)
}
