//! The `wgrad` command line: a thin layer over the library.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use wgrad::gpu::{list_adapters, AdapterOptions, GpuContext, Precision};
use wgrad::nn::NamedTensor;
use wgrad::nn::{Activation, Init, NetSpec};
use wgrad::numgrad::{self, Strategy};
use wgrad::optim::{LrSchedule, Optimizer, Schedule};
use wgrad::train::{RunRecord, RunState};
use wgrad::{bench, checkpoint, data, gradcheck, plot, train, Result};

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
    /// Train a net (on the bundled 10k MNIST subset unless --data names another data set).
    Train(Box<TrainArgs>),
    /// Check backprop against batched numerical gradients, per tensor.
    Gradcheck(GradcheckArgs),
    /// Time analytic and numerical gradients (each strategy and precision, and the book's loop).
    Bench(BenchArgs),
    /// Loss, accuracy, per-class precision and recall, and the confusion matrix of a saved net.
    Eval(EvalArgs),
    /// Classify pictures with a saved net: PNGs of any size or colour type, or IDX image files.
    Predict(PredictArgs),
    /// Draw loss and accuracy curves from metrics files (.jsonl or .csv), one run or several.
    Plot(PlotArgs),
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
    /// (the book's SimpleConvNet: conv 30×5×5, ReLU, max-pool 2, affine 100, ReLU, affine K for
    /// the data's K classes).
    #[arg(long, default_value = "mlp")]
    model: String,
    /// An explicit layer list instead of --model, e.g.
    /// "conv16x3p1,bn,relu,maxpool2,affine100,relu,dropout0.3,affine10" (see README); it ends in
    /// affineK for the data's K classes.
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
    /// Data folder: MNIST's four IDX files (or Fashion-MNIST's, KMNIST's, any IDX set's under
    /// those names), an EMNIST split (or FOLDER/emnist-<split> to pick one), or CIFAR-10's
    /// binary batches [default: the bundled MNIST subset].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Use the adapter whose name contains this (see `wgrad devices`).
    #[arg(long)]
    adapter: Option<String>,
    /// Start from the parameters in this safetensors file (tensors W1, b1, …). A wgrad
    /// checkpoint brings its net: no net flags are needed.
    #[arg(long)]
    init_from: Option<PathBuf>,
}

/// The flags given on the command line (not left at their defaults), by clap id.
struct Given(std::collections::BTreeSet<String>);

impl Given {
    fn of(matches: Option<&ArgMatches>) -> Given {
        let Some(m) = matches else {
            return Given(Default::default());
        };
        let ids = m.ids().map(|id| id.as_str().to_string());
        let given = ids.filter(|id| m.value_source(id) == Some(ValueSource::CommandLine));
        Given(given.collect())
    }

    fn any(&self, ids: &[&str]) -> bool {
        ids.iter().any(|id| self.0.contains(*id))
    }
}

/// The flags that shape the net (beside --init and --weight-decay).
const NET_SHAPE_FLAGS: &[&str] = &[
    "hidden",
    "model",
    "layers",
    "batchnorm",
    "dropout",
    "activation",
];

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
    /// Learning-rate schedule, per optimizer step with PyTorch's formulas: constant,
    /// step:EPOCHS:GAMMA (StepLR at epoch ends), cosine (CosineAnnealingLR down to --min-lr) or
    /// onecycle (OneCycleLR with max_lr = --lr, cycling the momentum or β1 where there is one).
    #[arg(long, default_value = "constant")]
    lr_schedule: String,
    /// The cosine schedule's floor (PyTorch's eta_min).
    #[arg(long, allow_hyphen_values = true)]
    min_lr: Option<f64>,
    /// Ramp the learning rate as lr·(k+1)/N over the first N steps, before the schedule.
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
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
    /// Write the run here at the end (safetensors: the parameters under their names, plus the
    /// optimizer state and the run's record, so that --resume can continue it). Checked for
    /// writability before training.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Continue the run in this full-state checkpoint (from --save, --checkpoint-every or an
    /// interrupt) bit for bit: the net, optimizer and settings come from it. --epochs extends it.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Write full-state checkpoints every N epochs, or every N steps with an s (500s), beside
    /// --save (or wgrad-run.safetensors) as NAME.stepS.safetensors.
    #[arg(long)]
    checkpoint_every: Option<train::CheckpointEvery>,
    /// Periodic checkpoints to keep; older ones this run wrote are deleted.
    #[arg(long, default_value_t = 2)]
    keep: usize,
    /// Write a record per epoch (and per --log-every steps) here while training: .jsonl or
    /// .csv. A resumed run appends to it.
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Hold out this fraction of the training set, per class and seeded, for validation; the
    /// epochs are then judged on it, and the test set is evaluated once, at the end.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    val_fraction: f64,
    /// With --val-fraction, evaluate the test set after every epoch too.
    #[arg(long)]
    eval_test_every_epoch: bool,
    /// Stop after N epochs without a lower validation loss (needs --val-fraction).
    #[arg(long)]
    patience: Option<usize>,
    /// Keep the run at its epoch of lowest validation loss here (a full-state checkpoint;
    /// needs a validation split, from --val-fraction or the resumed run).
    #[arg(long)]
    save_best: Option<PathBuf>,
    /// Also write a metrics record every N steps.
    #[arg(long, requires = "metrics", value_parser = clap::value_parser!(u64).range(1..))]
    log_every: Option<u64>,
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
    /// Write both gradients here as safetensors (analytic.W1, numeric.W1, …; analytic.x2 for
    /// the input of a custom layer 2).
    #[arg(long)]
    save_grads: Option<PathBuf>,
    /// Draw a histogram of each tensor's element-wise relative errors here (.svg or .png).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// A checkpoint written by `wgrad train` (--save, --save-best, --checkpoint-every, or an
    /// interrupt); the net is built from it alone.
    checkpoint: PathBuf,
    /// The data folder [default: the run's own, else the bundled set].
    #[arg(long)]
    data: Option<PathBuf>,
    /// test, train, or val (the run's own --val-fraction split; train is what remains of it).
    #[arg(long, default_value = "test")]
    split: String,
    #[command(flatten)]
    run: StoredNetArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// How `eval` and `predict` run a stored net.
#[derive(Args)]
struct StoredNetArgs {
    /// f32 or f64 [default: the run's precision, else f32].
    #[arg(long)]
    precision: Option<String>,
    #[arg(long)]
    adapter: Option<String>,
}

impl StoredNetArgs {
    fn precision(&self, net: &checkpoint::StoredNet) -> Result<Precision> {
        Ok(match (&self.precision, &net.run) {
            (Some(p), _) => p.parse()?,
            (None, Some(run)) => run.config.precision,
            (None, None) => Precision::F32,
        })
    }

    /// The adapter named (or the best one), said on stderr.
    fn context(&self) -> Result<GpuContext> {
        NetArgs::open_adapter(self.adapter.clone())
    }
}

#[derive(Args)]
struct PredictArgs {
    /// A checkpoint written by `wgrad train`; the net is built from it alone.
    checkpoint: PathBuf,
    /// PNG pictures (any size, colour type or bit depth), each made into the net's input as
    /// MNIST's digits were: greyscale, inverted when the background is light, the digit fitted
    /// into the central 20×20 of 28×28 and centred by mass. IDX image files (raw or gzip): one
    /// prediction per image, taken as they are when of the net's size.
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Show the K most probable classes of each picture.
    #[arg(long, value_name = "K", default_value_t = 3)]
    top: usize,
    /// Never invert: bright pixels are ink even on a light background.
    #[arg(long)]
    no_invert: bool,
    #[command(flatten)]
    run: StoredNetArgs,
    /// Print one JSON document on stdout: an array of {file, index (IDX only), top: [{class,
    /// probability}], blank (when no ink was found)}.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PlotArgs {
    /// Metrics files the trainer wrote: JSON Lines (.jsonl) or CSV (.csv) with a header row.
    /// Several are overlaid, each named by its file stem.
    #[arg(required = true, value_name = "RUN")]
    runs: Vec<PathBuf>,
    /// The picture to write: .svg or .png.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Against epoch (epoch records) or step (every record, step records' batch losses too).
    #[arg(long, default_value = "epoch", value_name = "epoch|step")]
    x: String,
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
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let given = |name| Given::of(matches.subcommand_matches(name));
    let result = match cli.command {
        Command::Train(args) => run_train(*args, &given("train")),
        Command::Gradcheck(args) => run_gradcheck(args, &given("gradcheck")),
        Command::Bench(args) => run_bench(args, &given("bench")),
        Command::Eval(args) => run_eval(args),
        Command::Predict(args) => run_predict(args),
        Command::Plot(args) => run_plot(args),
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

    fn spec(&self, data: &data::Dataset, defaults: &NetDefaults, given: &Given) -> Result<NetSpec> {
        if let Some(mut spec) = self.stored_spec(given)? {
            spec.weight_decay = self.weight_decay;
            spec.validate()?;
            return Ok(spec);
        }
        let activation: Activation = self.activation.parse()?;
        let layers = match (&self.layers, self.model.as_str()) {
            (Some(text), "mlp") => Some(text.clone()),
            (Some(_), _) => {
                return Err(wgrad::Error::InvalidArgument(
                    "give either --model or --layers, not both".into(),
                ))
            }
            (None, "mlp") => None,
            (None, name) => Some(wgrad::nn::layers::named_model(name, data.classes)?),
        };
        let (image, classes) = (data.shape(), data.classes);
        if classes < 2 {
            return Err(wgrad::Error::InvalidArgument(format!(
                "the data's labels give {classes} class(es): a classifier needs at least 2 \
                 (labels 0 to K−1)"
            )));
        }
        let mut spec = match layers {
            Some(text) => {
                if self.batchnorm || self.dropout != 0.0 || self.hidden.is_some() {
                    return Err(wgrad::Error::InvalidArgument(
                        "--hidden, --batchnorm and --dropout shape the mlp model; with --model or --layers write them into the layer list".into(),
                    ));
                }
                let spec = NetSpec::sequential(image, wgrad::nn::layers::parse_layers(&text)?)?;
                if spec.output != classes {
                    return Err(wgrad::Error::InvalidArgument(format!(
                        "the last layer gives {} class scores but the data has {classes} classes \
                         (labels 0 to {}): end the spec with affine{classes}",
                        spec.output,
                        classes - 1
                    )));
                }
                spec
            }
            None => {
                let hidden = self.hidden.as_deref().unwrap_or(defaults.hidden);
                let mut spec = NetSpec::mlp(data.image_size(), hidden, classes, activation);
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

    /// The net that a wgrad checkpoint given to --init-from describes, unless net flags describe
    /// one (a plain numpy/PyTorch file has no description: the flags' net is used).
    fn stored_spec(&self, given: &Given) -> Result<Option<NetSpec>> {
        let Some(path) = &self.init_from else {
            return Ok(None);
        };
        if given.any(NET_SHAPE_FLAGS) {
            return Ok(None);
        }
        checkpoint::stored_spec(path, &checkpoint::read_metadata(path)?)
    }

    fn load_data(&self) -> Result<data::Mnist> {
        Ok(data::load(self.data.as_deref())?)
    }

    fn context(&self) -> Result<GpuContext> {
        Self::open_adapter(self.adapter.clone())
    }

    /// The adapter named (or the best one), said on stderr.
    fn open_adapter(name: Option<String>) -> Result<GpuContext> {
        let ctx = GpuContext::new(&AdapterOptions { name })?;
        eprintln!("wgrad: adapter {}", ctx.describe());
        Ok(ctx)
    }

    /// The parameters in `--init-from`, and the BatchNorm running statistics stored beside
    /// them, if any.
    fn initial(&self, spec: &NetSpec) -> Result<Option<(Vec<f64>, Vec<NamedTensor>)>> {
        (self.init_from.as_ref())
            .map(|path| checkpoint::load_with_state(path, spec))
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
        self.override_hyperparameters(&mut opt);
        opt.validate()?;
        Ok(opt)
    }

    /// The learning-rate schedule the flags describe.
    fn schedule(&self) -> Result<LrSchedule> {
        self.schedule_from(self.lr_schedule.parse()?, self.warmup_steps)
    }

    /// The stored schedule with what the given flags change in it.
    fn schedule_over(&self, given: &Given, stored: &LrSchedule) -> Result<LrSchedule> {
        let schedule = if given.any(&["lr_schedule"]) {
            self.lr_schedule.parse()?
        } else {
            stored.schedule
        };
        let warmup = if given.any(&["warmup_steps"]) {
            self.warmup_steps
        } else {
            stored.warmup_steps
        };
        self.schedule_from(schedule, warmup)
    }

    /// `schedule` with the cosine floor from --min-lr, if given, and `warmup_steps`.
    fn schedule_from(&self, mut schedule: Schedule, warmup_steps: usize) -> Result<LrSchedule> {
        match (&mut schedule, self.min_lr) {
            (Schedule::Cosine { min_lr }, Some(floor)) => *min_lr = floor,
            (_, None) => {}
            (other, Some(_)) => {
                return Err(wgrad::Error::InvalidArgument(format!(
                    "--min-lr is the cosine schedule's floor, and this run's schedule is {other}:                      drop --min-lr or use --lr-schedule cosine"
                )))
            }
        }
        Ok(LrSchedule {
            schedule,
            warmup_steps,
        })
    }

    /// Sets the hyperparameters that flags give (a learning rate, a momentum, …) in `opt`.
    fn override_hyperparameters(&self, opt: &mut Optimizer) {
        let set = |slot: &mut f64, v: Option<f64>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        match opt {
            Optimizer::Sgd {
                lr,
                momentum,
                dampening,
                weight_decay,
                ..
            } => {
                set(lr, self.lr);
                set(momentum, self.momentum);
                set(dampening, self.dampening);
                set(weight_decay, self.optim_weight_decay);
            }
            Optimizer::Adagrad {
                lr,
                eps,
                lr_decay,
                initial_accumulator,
                weight_decay,
                ..
            } => {
                set(lr, self.lr);
                set(eps, self.eps);
                set(lr_decay, self.lr_decay);
                set(initial_accumulator, self.initial_accumulator);
                set(weight_decay, self.optim_weight_decay);
            }
            Optimizer::Rmsprop {
                lr,
                alpha,
                eps,
                momentum,
                centered,
                weight_decay,
                ..
            } => {
                set(lr, self.lr);
                set(alpha, self.alpha);
                set(eps, self.eps);
                set(momentum, self.momentum);
                *centered |= self.centered;
                set(weight_decay, self.optim_weight_decay);
            }
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
                amsgrad,
                weight_decay,
            }
            | Optimizer::Adamw {
                lr,
                beta1,
                beta2,
                eps,
                amsgrad,
                weight_decay,
                ..
            } => {
                set(lr, self.lr);
                set(beta1, self.beta1);
                set(beta2, self.beta2);
                set(eps, self.eps);
                *amsgrad |= self.amsgrad;
                set(weight_decay, self.optim_weight_decay);
            }
        }
    }
}

fn run_train(args: TrainArgs, given: &Given) -> Result<ExitCode> {
    // Every argument is checked before the data is read or the GPU is touched.
    let run_file = args.output_files()?;
    let (mut config, mnist, data_dir) = match &args.resume {
        Some(path) => args.resumed(path, given)?,
        None => args.fresh(given)?,
    };
    let signals = Signals::install();
    config.verbose = true;
    config.interrupt = Some(signals.stop.clone());
    config.checkpoint_every = args.checkpoint_every;
    config.log_every = args.log_every.map(|n| n as usize);
    config.validate(&mnist.train)?;
    if args.save_best.is_some() && config.val_fraction == 0.0 {
        return Err(wgrad::Error::InvalidArgument(
            "--save-best keeps the epoch of lowest validation loss: give --val-fraction too \
             (e.g. 0.1)"
                .into(),
        ));
    }
    let ctx = args.net.context()?;
    // Hashing the data is only worth it when a checkpoint is written.
    let identity = std::cell::OnceCell::new();
    let record = |run: &RunState| {
        let data = identity.get_or_init(|| mnist.identity()).clone();
        RunRecord::new(&config, run, data, data_dir.clone())
    };
    let mut rotation = checkpoint::Rotation::new(&run_file, args.keep);
    let mut on_checkpoint = |run: &RunState| -> Result<()> {
        let path = rotation.write(run, &record(run), &run_metadata(&config, run))?;
        eprintln!("wgrad: checkpoint {}", path.display());
        Ok(())
    };
    let metrics = match &args.metrics {
        Some(path) => Some(train::MetricsFile::open(path, args.resume.is_some())?),
        None => None,
    };
    let metrics = std::cell::RefCell::new(metrics);
    // A metrics file that cannot be written to mid-run is not worth the run: say so and go on.
    let log = |record: &train::MetricsRecord| {
        if let Some(file) = metrics.borrow_mut().as_mut() {
            if let Err(e) = file.write(record) {
                eprintln!("wgrad: warning: {e}");
            }
        }
    };
    let mut on_epoch = |e: &train::EpochReport| log(&e.into());
    let mut on_steps = |r: &train::MetricsRecord| log(r);
    let mut on_best = |run: &RunState| -> Result<()> {
        match &args.save_best {
            Some(path) => {
                checkpoint::save_run(path, run, &record(run), &run_metadata(&config, run))
            }
            None => Ok(()),
        }
    };
    let hooks = train::Hooks {
        on_epoch: Some(&mut on_epoch),
        on_checkpoint: Some(&mut on_checkpoint),
        on_steps: Some(&mut on_steps),
        on_best: Some(&mut on_best),
    };
    let report = train::train_with(&ctx, &mnist, &config, hooks)?;
    eprintln!(
        "wgrad: test accuracy {:.4}, train accuracy {:.4}, {:.1} s ({:.0} samples/s)",
        report.test_accuracy, report.train_accuracy, report.seconds, report.samples_per_second
    );
    if let (true, Some(best)) = (report.stopped_early, report.best_epoch) {
        eprintln!(
            "wgrad: stopped early: the validation loss has not gone below epoch {best}'s for {} \
             epochs (--patience)",
            report.epochs - best
        );
    }
    let save = |path: &Path| {
        let (run, meta) = (&report.run, run_metadata(&config, &report.run));
        checkpoint::save_run(path, run, &record(run), &meta)
    };
    let steps_in_run = config.epochs * (mnist.train.len() / config.batch_size);
    save_at_end(&args, &report, steps_in_run, save)?;
    if args.json {
        println!("{}", train_json(&report, &config, &ctx));
    }
    Ok(if report.interrupted {
        ExitCode::from(signals.exit_code())
    } else {
        ExitCode::SUCCESS
    })
}

/// Writes the run to --save, or an interrupted one without --save to a file of its own (it is
/// never thrown away), and says how to resume it.
fn save_at_end(
    args: &TrainArgs,
    report: &train::TrainReport,
    steps_in_run: usize,
    save: impl Fn(&Path) -> Result<()>,
) -> Result<()> {
    let path = match (&args.save, report.interrupted) {
        (Some(path), _) => path.clone(),
        (None, true) => PathBuf::from(format!(
            "wgrad-interrupted-step{}.safetensors",
            report.steps
        )),
        (None, false) => return Ok(()),
    };
    save(&path)?;
    eprintln!("wgrad: saved {}", path.display());
    if report.interrupted {
        eprintln!(
            "wgrad: interrupted at step {} of {steps_in_run}; continue the run with:\n  wgrad \
             train --resume {}",
            report.steps,
            path.display()
        );
    }
    Ok(())
}

/// `train --json`: the report, with the adapter, optimizer, net and precision it ran with.
fn train_json(
    report: &train::TrainReport,
    config: &train::TrainConfig,
    ctx: &GpuContext,
) -> serde_json::Value {
    let spec = &config.spec;
    let mut value = serde_json::to_value(report).expect("serialisable");
    value["adapter"] = ctx.adapter_json();
    value["optimizer"] = serde_json::to_value(&config.optimizer).expect("serialisable");
    value["lr_schedule"] = serde_json::to_value(config.schedule).expect("serialisable");
    value["spec"] = serde_json::to_value(spec).expect("serialisable");
    // The widths --hidden gives, readable without walking the layer list.
    value["spec"]["hidden"] = serde_json::json!(spec.hidden_units());
    value["precision"] = serde_json::json!(config.precision);
    value
}

/// The readable metadata beside the run's record: numpy and PyTorch users see these keys.
fn run_metadata(config: &train::TrainConfig, run: &RunState) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::new();
    meta.insert("format".into(), "wgrad-mlp".into());
    let spec = serde_json::to_string(&config.spec).expect("serialisable");
    meta.insert("spec".into(), spec);
    meta.insert("init".into(), config.init.to_string());
    meta.insert("step".into(), run.progress.steps.to_string());
    let last = run.progress.history.last();
    if let Some(accuracy) = last.and_then(|e| e.test_accuracy) {
        meta.insert("test_accuracy".into(), format!("{accuracy:.6}"));
    }
    if let Some(accuracy) = last.and_then(|e| e.val_accuracy) {
        meta.insert("val_accuracy".into(), format!("{accuracy:.6}"));
    }
    meta
}

/// The optimizer's flags.
const OPTIMIZER_FLAGS: &[&str] = &[
    "optimizer",
    "lr",
    "momentum",
    "dampening",
    "beta1",
    "beta2",
    "eps",
    "alpha",
    "lr_decay",
    "initial_accumulator",
    "amsgrad",
    "centered",
    "optim_weight_decay",
];

impl TrainArgs {
    /// Checks that every file the run will write can be written, before any training time is
    /// spent; returns the base path of the periodic checkpoints.
    fn output_files(&self) -> Result<PathBuf> {
        for path in [&self.save, &self.save_best].into_iter().flatten() {
            checkpoint::ensure_writable(path)?;
        }
        let run_file =
            (self.save.clone()).unwrap_or_else(|| PathBuf::from("wgrad-run.safetensors"));
        if self.checkpoint_every.is_some() {
            if self.keep == 0 {
                return Err(wgrad::Error::InvalidArgument(
                    "--keep must be at least 1: the periodic checkpoints to keep".into(),
                ));
            }
            checkpoint::ensure_writable(&run_file)?;
        }
        Ok(run_file)
    }

    /// A new run as the flags describe it, the data it trains on, and that data's folder.
    fn fresh(&self, given: &Given) -> Result<(train::TrainConfig, data::Mnist, Option<PathBuf>)> {
        let optimizer = self.optimizer()?;
        let init = self.net.init(&TRAIN_NET)?;
        let precision: Precision = self.precision.parse()?;
        let mnist = self.net.load_data()?;
        let spec = self.net.spec(&mnist.train, &TRAIN_NET, given)?;
        let initial = self.net.initial(&spec)?;
        let config = train::TrainConfig {
            initial_params: initial.as_ref().map(|(p, _)| p.clone()),
            initial_state: initial.map(|(_, s)| s).unwrap_or_default(),
            spec,
            init,
            optimizer,
            schedule: self.schedule()?,
            epochs: self.epochs(),
            batch_size: self.batch_size,
            seed: self.net.seed,
            precision,
            steps_per_submit: self.steps_per_submit,
            val_fraction: self.val_fraction,
            eval_test_every_epoch: self.eval_test_every_epoch,
            patience: self.patience,
            ..Default::default()
        };
        Ok((config, mnist, data_folder(self.net.data.as_deref())?))
    }

    /// The run stored at `path`, to continue on its own data (or the same data in another
    /// folder) until --epochs, or the run's own epoch count.
    fn resumed(
        &self,
        path: &std::path::Path,
        given: &Given,
    ) -> Result<(train::TrainConfig, data::Mnist, Option<PathBuf>)> {
        if given.any(&["init_from"]) {
            return Err(wgrad::Error::InvalidArgument(
                "give either --resume (continue a run) or --init-from (start one from weights), \
                 not both"
                    .into(),
            ));
        }
        let (record, run) = checkpoint::load_run(path)?;
        let dir = self.net.data.clone().or(record.data_dir.clone());
        let mnist = data::load(dir.as_deref())?;
        let found = mnist.identity();
        if found != record.data {
            return Err(wgrad::Error::InvalidArgument(format!(
                "{} was trained on {}, but {} holds {found}: point --data at the run's data",
                path.display(),
                record.data,
                dir.map_or("the bundled set".into(), |d| d.display().to_string()),
            )));
        }
        self.check_agrees(given, &record.config, &mnist)?;
        let mut config = record.config;
        config.epochs = self.epochs.unwrap_or(config.epochs);
        config.resume = Some(run);
        Ok((config, mnist, data_folder(dir.as_deref())?))
    }

    /// Refuses flags that would make a resumed run another run, naming both values.
    fn check_agrees(
        &self,
        given: &Given,
        stored: &train::TrainConfig,
        mnist: &data::Mnist,
    ) -> Result<()> {
        let clash = |ours: String, theirs: String| {
            Err(wgrad::Error::InvalidArgument(format!(
                "{ours} contradicts the checkpoint, whose run has {theirs}: drop the flag to \
                 resume the run as it was, or start a new run from its weights with --init-from"
            )))
        };
        let precision: Precision = self.precision.parse()?;
        let settings = [
            (
                "batch-size",
                self.batch_size.to_string(),
                stored.batch_size.to_string(),
            ),
            ("seed", self.net.seed.to_string(), stored.seed.to_string()),
            (
                "steps-per-submit",
                self.steps_per_submit.to_string(),
                stored.steps_per_submit.to_string(),
            ),
            (
                "precision",
                precision.to_string(),
                stored.precision.to_string(),
            ),
            (
                "val-fraction",
                self.val_fraction.to_string(),
                stored.val_fraction.to_string(),
            ),
            (
                "eval-test-every-epoch",
                self.eval_test_every_epoch.to_string(),
                stored.eval_test_every_epoch.to_string(),
            ),
            (
                "patience",
                epochs_or_none(self.patience),
                epochs_or_none(stored.patience),
            ),
        ];
        for (flag, ours, theirs) in settings {
            if given.any(&[flag.replace('-', "_").as_str()]) && ours != theirs {
                return clash(format!("--{flag} {ours}"), format!("{flag} {theirs}"));
            }
        }
        if given.any(&["init"]) {
            let init = self.net.init(&TRAIN_NET)?;
            if init != stored.init {
                return clash(format!("--init {init}"), format!("init {}", stored.init));
            }
        }
        if given.any(NET_SHAPE_FLAGS) || given.any(&["weight_decay"]) {
            let spec = self.net.spec(&mnist.train, &TRAIN_NET, given)?;
            if spec != stored.spec {
                let describe =
                    |s: &NetSpec| format!("{} (weight decay {})", layer_list(s), s.weight_decay);
                let ours = format!("the net the flags describe, {},", describe(&spec));
                return clash(ours, format!("the net {}", describe(&stored.spec)));
            }
        }
        if given.any(&["lr_schedule", "min_lr", "warmup_steps"]) {
            let requested = self.schedule_over(given, &stored.schedule)?;
            if requested != stored.schedule {
                let json = |s: &LrSchedule| serde_json::to_string(s).expect("serialisable");
                let ours = format!("the schedule the flags describe, {},", json(&requested));
                return clash(ours, format!("the schedule {}", json(&stored.schedule)));
            }
        }
        if given.any(OPTIMIZER_FLAGS) {
            let requested = if given.any(&["optimizer"]) {
                self.optimizer()?
            } else {
                let mut o = stored.optimizer.clone();
                self.override_hyperparameters(&mut o);
                o
            };
            if requested != stored.optimizer {
                let json = |o: &Optimizer| serde_json::to_string(o).expect("serialisable");
                let ours = format!("the optimizer the flags describe, {},", json(&requested));
                return clash(ours, format!("the optimizer {}", json(&stored.optimizer)));
            }
        }
        Ok(())
    }
}

fn epochs_or_none(epochs: Option<usize>) -> String {
    epochs.map_or("none".into(), |n| n.to_string())
}

/// A net's layers as --layers writes them.
fn layer_list(spec: &NetSpec) -> String {
    let words: Vec<String> = spec.layers.iter().map(|l| l.to_string()).collect();
    words.join(",")
}

/// The data folder as an absolute path (None: the bundled set), so that a checkpoint's record
/// finds it from any working directory.
fn data_folder(dir: Option<&std::path::Path>) -> Result<Option<PathBuf>> {
    dir.map(|d| {
        data::canonical_path(d)
            .map_err(|e| wgrad::Error::io(format!("resolving the data folder {}", d.display()), e))
    })
    .transpose()
}

/// Ctrl-C, SIGTERM and SIGHUP: the first sets `stop`, so that training stops after the submit
/// in flight and the run is saved rather than lost, and records which signal came; a second ends
/// the process at once, writing nothing.
struct Signals {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// 128 + the signal's number, as a shell reports a process the signal ended.
    code: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Signals {
    fn install() -> Signals {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        use signal_hook::flag;
        let signals = Signals {
            stop: Default::default(),
            code: Default::default(),
        };
        for signal in [SIGINT, SIGTERM, SIGHUP] {
            let code = 128 + signal as usize;
            // The shutdown is registered first, so it sees the flag as the earlier signal left it.
            let installed =
                flag::register_conditional_shutdown(signal, code as i32, signals.stop.clone())
                    .and_then(|_| flag::register_usize(signal, signals.code.clone(), code))
                    .and_then(|_| flag::register(signal, signals.stop.clone()));
            if let Err(e) = installed {
                eprintln!("wgrad: signal {signal} will not save the run: {e}");
            }
        }
        signals
    }

    fn exit_code(&self) -> u8 {
        match self.code.load(std::sync::atomic::Ordering::SeqCst) {
            0 => 130,
            code => code as u8,
        }
    }
}

fn run_eval(args: EvalArgs) -> Result<ExitCode> {
    if !["test", "train", "val"].contains(&args.split.as_str()) {
        return Err(wgrad::Error::InvalidArgument(format!(
            "unknown split '{}': use test, train or val",
            args.split
        )));
    }
    let net = checkpoint::load_net(&args.checkpoint)?;
    let config = net.run.as_ref().map(|r| &r.config);
    let dir = (args.data.clone()).or_else(|| net.run.as_ref().and_then(|r| r.data_dir.clone()));
    let mnist = data::load(dir.as_deref())?;
    let set = match (args.split.as_str(), config) {
        ("test", _) => mnist.test,
        ("train", Some(config)) => config.split(&mnist.train).0.into_owned(),
        ("train", None) => mnist.train,
        (_, Some(config)) if config.val_fraction > 0.0 => {
            (config.split(&mnist.train).1).expect("a validation part")
        }
        _ => {
            return Err(wgrad::Error::InvalidArgument(format!(
                "{} holds no validation split: it was not trained with --val-fraction; use \
                 --split test or train",
                args.checkpoint.display()
            )))
        }
    };
    let precision = args.run.precision(&net)?;
    net.spec.check_data(&set)?;
    let ctx = args.run.context()?;
    let stored = (&net.spec, &net.params[..], &net.state[..]);
    let report = wgrad::evaluate::evaluate(&ctx, stored, &set, precision)?;
    if args.json {
        let mut value = serde_json::to_value(&report).expect("serialisable");
        value["split"] = serde_json::json!(args.split);
        value["adapter"] = ctx.adapter_json();
        println!("{value}");
    } else {
        print_eval(&report, &args.split);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_eval(r: &wgrad::evaluate::EvalReport, split: &str) {
    println!(
        "eval: {} set, {} images: loss {:.4}, accuracy {:.4}",
        split, r.images, r.loss, r.accuracy
    );
    let share = |v: Option<f64>| v.map_or("    –".to_string(), |v| format!("{v:.3}"));
    println!("class  precision  recall  support");
    for c in &r.classes {
        let (p, rc) = (share(c.precision), share(c.recall));
        println!("{:>5}  {p:>9}  {rc:>6}  {:>7}", c.class, c.support);
    }
    println!("confusion matrix (rows: true class, columns: predicted):");
    let header: Vec<String> = (0..r.confusion.len()).map(|c| format!("{c:>5}")).collect();
    println!("     {}", header.join(""));
    for (t, row) in r.confusion.iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|n| format!("{n:>5}")).collect();
        println!("{t:>5}{}", cells.join(""));
    }
}

fn run_predict(args: PredictArgs) -> Result<ExitCode> {
    use wgrad::predict;
    if args.files.is_empty() {
        return Err(wgrad::Error::InvalidArgument(format!(
            "no pictures given: name one or more PNG or IDX image files after the checkpoint, \
             as in `wgrad predict {} digit.png`",
            args.checkpoint.display()
        )));
    }
    if args.top == 0 {
        return Err(wgrad::Error::InvalidArgument(
            "--top 0 shows no class: give 1 or more".into(),
        ));
    }
    let net = checkpoint::load_net(&args.checkpoint)?;
    let precision = args.run.precision(&net)?;
    let shape = predict::input_shape(&net.spec, net.run.as_ref())?;
    // Every file is read before the GPU is opened, so that a bad one is reported at once.
    let mut inputs = Vec::new();
    for file in &args.files {
        inputs.extend(predict::read_file(file, shape, !args.no_invert)?);
    }
    let ctx = args.run.context()?;
    let stored = (&net.spec, &net.params[..], &net.state[..]);
    let probabilities = predict::predict(&ctx, stored, &inputs, shape, precision)?;
    let k = args.top.min(net.spec.output);
    let text = if args.json {
        format!("{}\n", predictions_json(&inputs, &probabilities, k))
    } else {
        predictions_text(&inputs, &probabilities, k)
    };
    write_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` on stdout. A reader that has gone (`wgrad predict … | head`) is no error: an
/// IDX file of thousands of images makes long output.
fn write_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(wgrad::Error::io("writing the predictions to stdout", e))
        }
        _ => Ok(()),
    }
}

/// An array of {file, index (IDX only), top: [{class, probability}], blank (only when true)}.
fn predictions_json(
    inputs: &[wgrad::predict::Input],
    probabilities: &[Vec<f64>],
    k: usize,
) -> serde_json::Value {
    let values = inputs.iter().zip(probabilities).map(|(input, p)| {
        let mut value = serde_json::json!({"file": input.file});
        if let Some(index) = input.index {
            value["index"] = index.into();
        }
        let top = wgrad::predict::top(p, k);
        value["top"] = serde_json::to_value(top).expect("serialisable");
        if input.blank {
            value["blank"] = true.into();
        }
        value
    });
    serde_json::Value::Array(values.collect())
}

/// One line a picture: `digit.png: 7 (0.981), 9 (0.012), 2 (0.004)`, `set.idx[3]: …` for IDX.
fn predictions_text(
    inputs: &[wgrad::predict::Input],
    probabilities: &[Vec<f64>],
    k: usize,
) -> String {
    let mut text = String::new();
    for (input, p) in inputs.iter().zip(probabilities) {
        let name = match input.index {
            Some(i) => format!("{}[{i}]", input.file),
            None => input.file.clone(),
        };
        let guesses: Vec<String> = (wgrad::predict::top(p, k).iter())
            .map(|g| format!("{} ({:.3})", g.class, g.probability))
            .collect();
        let blank = if input.blank {
            " (no ink found: the picture is all background)"
        } else {
            ""
        };
        text += &format!("{name}: {}{blank}\n", guesses.join(", "));
    }
    text
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
    let params = match net.initial(spec)? {
        Some((p, _)) => p,
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
    Ok(train::train(ctx, mnist, &config, None)?.run.params)
}

fn run_gradcheck(args: GradcheckArgs, given: &Given) -> Result<ExitCode> {
    let strategy: Strategy = args.strategy.parse()?;
    if let Some(path) = &args.save_grads {
        checkpoint::ensure_writable(path)?;
    }
    if let Some(path) = &args.plot {
        plot::check_output(path)?;
    }
    let mnist = cropped(args.net.load_data()?, args.crop)?;
    let spec = args.net.spec(&mnist.train, &CHECK_NET, given)?;
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
    if let Some(path) = &args.plot {
        plot::plot_gradcheck(&report, &spec.layout(), path)?;
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
            match (t.passed, t.failed_at_h.is_some()) {
                (true, false) => "pass",
                (true, true) => "pass*",
                (false, false) => "FAIL",
                (false, true) => "FAIL*",
            }
        );
    }
    for input in &r.inputs {
        println!(
            "{}: the input of layer {} (a custom layer), [batch, features]",
            input.name,
            input.layer + 1
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
        "{} perturbed losses{} in {:.3} s (setup {:.3} s), analytic gradient {:.4} s; {} kink crossings excluded; tolerance: ‖a-n‖ ≤ {:e}·‖a‖ + {}·√numel{}",
        r.perturbed_losses,
        match r.idle_losses {
            0 => String::new(),
            idle => format!(" ({idle} of them exact without a pass: first-layer inputs 0 in every sample)"),
        },
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
    for t in &r.tensors {
        if let Some(at_h) = &t.failed_at_h {
            println!(
                "* {}: failed against the central differences at h (norm rel err {:.3e}, max rel err {:.3e}, {} elements failing); its row compares the extrapolation from h and h/2, (4·n(h/2) − n(h))/3, which cancels their h² truncation error but not a wrong gradient",
                t.name, at_h.norm_rel_err, at_h.max_rel_err, at_h.elements_failed
            );
        }
    }
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
    // (name, shape, analytic, numeric): the checked parameter tensors, then the inputs.
    let params = (layout.tensors.iter())
        .filter(|t| r.tensors.iter().any(|c| c.name == t.name))
        .map(|t| {
            let range = t.offset..t.offset + t.numel;
            let (a, n) = (&r.analytic[range.clone()], &r.numeric[range]);
            (&t.name, &t.shape, a, n)
        });
    let inputs = (r.inputs.iter()).map(|i| (&i.name, &i.shape, &i.analytic[..], &i.numeric[..]));
    let mut tensors = Vec::new();
    for (name, shape, analytic, numeric) in params.chain(inputs) {
        for (prefix, values) in [("analytic", analytic), ("numeric", numeric)] {
            let data = match r.precision {
                Precision::F64 => TensorData::F64(values.to_vec()),
                Precision::F32 => TensorData::F32(values.iter().map(|&a| a as f32).collect()),
            };
            tensors.push((format!("{prefix}.{name}"), shape.clone(), data));
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

fn run_plot(args: PlotArgs) -> Result<ExitCode> {
    let x: plot::XAxis = args.x.parse()?;
    plot::check_output(&args.output)?;
    let names = plot::run_names(&args.runs);
    let runs = (args.runs.iter().zip(names))
        .map(|(path, name)| plot::Run::read(path, name))
        .collect::<Result<Vec<_>>>()?;
    plot::plot_runs(&runs, x, &args.output)?;
    Ok(ExitCode::SUCCESS)
}

fn run_bench(args: BenchArgs, given: &Given) -> Result<ExitCode> {
    for v in &args.variants {
        if !["incremental", "full", "sequential"].contains(&v.as_str()) {
            return Err(wgrad::Error::InvalidArgument(format!(
                "unknown variant '{v}': use incremental, full or sequential"
            )));
        }
    }
    let mnist = cropped(args.net.load_data()?, args.crop)?;
    let spec = args.net.spec(&mnist.train, &CHECK_NET, given)?;
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
