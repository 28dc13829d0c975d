//! The `wgrad` command line: a thin layer over the library.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use wgrad::gpu::{list_adapters, AdapterOptions, GpuContext, Precision};
use wgrad::nn::{Activation, Init, NetSpec};
use wgrad::optim::Optimizer;
use wgrad::{checkpoint, data, train, Result};

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
    /// Hidden layer sizes, comma-separated (e.g. 100,100; 50 is the book's TwoLayerNet).
    #[arg(long, value_delimiter = ',', default_value = "100,100")]
    hidden: Vec<usize>,
    /// Hidden nonlinearity: relu or sigmoid.
    #[arg(long, default_value = "relu")]
    activation: String,
    /// Weight init: he, xavier, or a standard deviation such as 0.01.
    #[arg(long, default_value = "he")]
    init: String,
    /// L2 weight decay λ (the loss gains λ/2·Σ‖W‖², as in the book).
    #[arg(long, default_value_t = 0.0)]
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
    /// sgd, momentum, nesterov, adagrad, rmsprop, adam or adamw (PyTorch's update rules).
    #[arg(long, default_value = "momentum")]
    optimizer: String,
    /// Learning rate (default: 0.1 for the bare run's momentum SGD, else PyTorch's default).
    #[arg(long)]
    lr: Option<f64>,
    /// Momentum (sgd, momentum, nesterov, rmsprop).
    #[arg(long)]
    momentum: Option<f64>,
    /// Dampening (sgd/momentum).
    #[arg(long)]
    dampening: Option<f64>,
    /// Adam/AdamW β1.
    #[arg(long)]
    beta1: Option<f64>,
    /// Adam/AdamW β2.
    #[arg(long)]
    beta2: Option<f64>,
    /// ε of AdaGrad, RMSprop, Adam, AdamW.
    #[arg(long)]
    eps: Option<f64>,
    /// RMSprop smoothing constant α.
    #[arg(long)]
    alpha: Option<f64>,
    /// AdaGrad learning-rate decay.
    #[arg(long)]
    lr_decay: Option<f64>,
    /// AdaGrad initial accumulator value.
    #[arg(long)]
    initial_accumulator: Option<f64>,
    /// Use AMSGrad (Adam/AdamW).
    #[arg(long)]
    amsgrad: bool,
    /// Centered RMSprop.
    #[arg(long)]
    centered: bool,
    /// The optimizer's own weight decay (PyTorch's weight_decay: L2 added to the gradient; for
    /// AdamW the decoupled decay, default 0.01).
    #[arg(long)]
    optim_weight_decay: Option<f64>,
    #[arg(long, default_value_t = 20)]
    epochs: usize,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => run_train(args),
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

impl NetArgs {
    fn spec(&self, input: usize) -> Result<NetSpec> {
        let activation: Activation = self.activation.parse()?;
        let mut spec = NetSpec::mlp(input, &self.hidden, 10, activation);
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

    fn initial_params(&self, spec: &NetSpec) -> Result<Option<Vec<f64>>> {
        self.init_from
            .as_ref()
            .map(|p| checkpoint::load(p, &spec.layout()).map(|c| c.params))
            .transpose()
    }
}

impl TrainArgs {
    fn optimizer(&self) -> Result<Optimizer> {
        let default_lr = match self.optimizer.as_str() {
            "momentum" => Some(0.1),
            _ => None,
        };
        let mut opt = Optimizer::from_name(&self.optimizer, self.lr.or(default_lr))?;
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
    let init: Init = args.net.init.parse()?;
    let precision: Precision = args.precision.parse()?;
    if let Some(path) = &args.save {
        checkpoint::ensure_writable(path)?;
    }
    let mnist = args.net.load_data()?;
    let spec = args.net.spec(mnist.train.image_size())?;
    let initial_params = args.net.initial_params(&spec)?;
    let config = train::TrainConfig {
        spec: spec.clone(),
        init,
        optimizer,
        epochs: args.epochs,
        batch_size: args.batch_size,
        seed: args.net.seed,
        precision,
        initial_params,
        steps_per_submit: args.steps_per_submit,
        verbose: true,
        ..Default::default()
    };
    config.validate(&mnist.train)?;
    let ctx = args.net.context()?;
    let report = train::train(&ctx, &mnist, &config, None)?;
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
        checkpoint::save(path, &spec.layout(), &report.params, &meta)?;
        eprintln!("wgrad: saved {}", path.display());
    }
    if args.json {
        let mut value = serde_json::to_value(&report).expect("serialisable");
        value["adapter"] = ctx.adapter_json();
        value["optimizer"] = serde_json::to_value(&config.optimizer).expect("serialisable");
        value["spec"] = serde_json::to_value(&spec).expect("serialisable");
        value["precision"] = serde_json::json!(precision);
        println!("{value}");
    }
    Ok(ExitCode::SUCCESS)
}
