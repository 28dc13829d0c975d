//! `wgrad train`: the flags, and the run with its checkpoints, metrics file and signals.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use wgrad::gpu::Precision;
use wgrad::train::{RunRecord, RunState, Signals};
use wgrad::{checkpoint, data, report, train, Result};

use super::net::{data_folder, NetArgs, TRAIN_NET};
use super::Given;

/// The examples under `wgrad train --help`.
pub const EXAMPLES: &str = "Examples:
  wgrad train                                   # 784-256-128-10 + BatchNorm, momentum SGD, 20 epochs
  wgrad train --model simple-conv --save net.safetensors   # the book's SimpleConvNet, Adam
  wgrad train --hidden 50 --init 0.01 --optimizer sgd --lr 0.1 --epochs 125   # TwoLayerNet
  wgrad train --layers conv16x3p1,bn,relu,maxpool2,affine100,relu,affine10
  wgrad train --resume net.safetensors --epochs 30      # continue a run, bit for bit
  wgrad train --init-from weights.npz --model simple-conv   # start from numpy weights";

/// The net and how each training step trains it: what `wgrad train` and `wgrad bench train`
/// share.
#[derive(Args)]
pub struct RecipeArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// sgd, momentum, nesterov, adagrad, rmsprop, adam or adamw (PyTorch's update rules)
    /// [default: momentum for mlp, adam for convnets].
    #[arg(long)]
    pub optimizer: Option<String>,
    /// Learning rate (default: 0.1 for the bare run's momentum SGD, else PyTorch's default).
    #[arg(long, allow_hyphen_values = true)]
    pub lr: Option<f64>,
    /// Momentum (sgd, momentum, nesterov, rmsprop).
    #[arg(long, allow_hyphen_values = true)]
    pub momentum: Option<f64>,
    /// Dampening (sgd/momentum).
    #[arg(long, allow_hyphen_values = true)]
    pub dampening: Option<f64>,
    /// Adam/AdamW β1.
    #[arg(long, allow_hyphen_values = true)]
    pub beta1: Option<f64>,
    /// Adam/AdamW β2.
    #[arg(long, allow_hyphen_values = true)]
    pub beta2: Option<f64>,
    /// ε of AdaGrad, RMSprop, Adam, AdamW.
    #[arg(long, allow_hyphen_values = true)]
    pub eps: Option<f64>,
    /// RMSprop smoothing constant α.
    #[arg(long, allow_hyphen_values = true)]
    pub alpha: Option<f64>,
    /// AdaGrad learning-rate decay.
    #[arg(long, allow_hyphen_values = true)]
    pub lr_decay: Option<f64>,
    /// AdaGrad initial accumulator value.
    #[arg(long, allow_hyphen_values = true)]
    pub initial_accumulator: Option<f64>,
    /// Use AMSGrad (Adam/AdamW).
    #[arg(long)]
    pub amsgrad: bool,
    /// Centered RMSprop.
    #[arg(long)]
    pub centered: bool,
    /// The optimizer's own weight decay (PyTorch's weight_decay: L2 added to the gradient; for
    /// AdamW the decoupled decay, default 0.01).
    #[arg(long, allow_hyphen_values = true)]
    pub optim_weight_decay: Option<f64>,
    /// Learning-rate schedule, per optimizer step with PyTorch's formulas: constant,
    /// step:EPOCHS:GAMMA (StepLR at epoch ends), cosine (CosineAnnealingLR down to --min-lr) or
    /// onecycle (OneCycleLR with max_lr = --lr, cycling the momentum or β1 where there is one).
    #[arg(long, default_value = "constant")]
    pub lr_schedule: String,
    /// The cosine schedule's floor (PyTorch's eta_min).
    #[arg(long, allow_hyphen_values = true)]
    pub min_lr: Option<f64>,
    /// Ramp the learning rate as lr·(k+1)/N over the first N steps, before the schedule.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// f32 (default) or f64 (needs SHADER_F64).
    #[arg(long, default_value = "f32")]
    pub precision: String,
    /// Training steps recorded per GPU submit.
    #[arg(long, default_value_t = 40)]
    pub steps_per_submit: usize,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Epochs [default: 20 for mlp, 10 for convnets].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Write the run here at the end (safetensors: the parameters under their names, plus the
    /// optimizer state and the run's record, so that --resume can continue it). Checked for
    /// writability before training.
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Continue the run in this full-state checkpoint (from --save, --checkpoint-every or an
    /// interrupt) bit for bit: the net, optimizer and settings come from it. --epochs extends it.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Write full-state checkpoints every N epochs, or every N steps with an s (500s), beside
    /// --save (or wgrad-run.safetensors) as NAME.stepS.safetensors.
    #[arg(long)]
    pub checkpoint_every: Option<train::CheckpointEvery>,
    /// Periodic checkpoints to keep; older ones this run wrote are deleted.
    #[arg(long, default_value_t = 2)]
    pub keep: usize,
    /// Write a record per epoch (and per --log-every steps) here while training: .jsonl or
    /// .csv. A resumed run appends to it.
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// Hold out this fraction of the training set, per class and seeded, for validation; the
    /// epochs are then judged on it, and the test set is evaluated once, at the end.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub val_fraction: f64,
    /// With --val-fraction, evaluate the test set after every epoch too.
    #[arg(long)]
    pub eval_test_every_epoch: bool,
    /// Stop after N epochs without a lower validation loss (needs --val-fraction).
    #[arg(long)]
    pub patience: Option<usize>,
    /// Keep the run at its epoch of lowest validation loss here (a full-state checkpoint;
    /// needs a validation split, from --val-fraction or the resumed run).
    #[arg(long)]
    pub save_best: Option<PathBuf>,
    /// Also write a metrics record every N steps.
    #[arg(long, requires = "metrics", value_parser = clap::value_parser!(u64).range(1..))]
    pub log_every: Option<u64>,
    /// Print one JSON object on stdout at the end.
    #[arg(long)]
    pub json: bool,
}

pub fn run_train(args: TrainArgs, given: &Given) -> Result<ExitCode> {
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
    let ctx = args.recipe.net.context()?;
    // Hashing the data is only worth it when a checkpoint is written.
    let identity = std::cell::OnceCell::new();
    let record = |run: &RunState| {
        let data = identity.get_or_init(|| mnist.identity()).clone();
        RunRecord::new(&config, run, data, data_dir.clone())
    };
    let mut rotation = checkpoint::Rotation::new(&run_file, args.keep);
    let mut on_checkpoint = |run: &RunState| -> Result<()> {
        let path = rotation.write(run, &record(run), &checkpoint::run_metadata(&config, run))?;
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
            Some(path) => checkpoint::save_run(
                path,
                run,
                &record(run),
                &checkpoint::run_metadata(&config, run),
            ),
            None => Ok(()),
        }
    };
    let hooks = train::Hooks {
        on_epoch: Some(&mut on_epoch),
        on_checkpoint: Some(&mut on_checkpoint),
        on_steps: Some(&mut on_steps),
        on_best: Some(&mut on_best),
        on_step_losses: None,
        after_run: None,
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
        let (run, meta) = (&report.run, checkpoint::run_metadata(&config, &report.run));
        checkpoint::save_run(path, run, &record(run), &meta)
    };
    let steps_in_run = config.epochs * (mnist.train.len() / config.batch_size);
    save_at_end(&args, &report, steps_in_run, save)?;
    if args.json {
        println!("{}", report::train_json(&report, &config, &ctx));
    }
    Ok(if report.interrupted {
        ExitCode::from(signals.exit_code())
    } else {
        ExitCode::SUCCESS
    })
}

/// Writes the run to --save, or an interrupted one without --save to a file of its own (it is
/// never thrown away), and says how to resume it.
pub fn save_at_end(
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

impl TrainArgs {
    /// Checks that every file the run will write can be written, before any training time is
    /// spent; returns the base path of the periodic checkpoints.
    pub fn output_files(&self) -> Result<PathBuf> {
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
    pub fn fresh(
        &self,
        given: &Given,
    ) -> Result<(train::TrainConfig, data::Mnist, Option<PathBuf>)> {
        let (mut config, mnist) = self.recipe.config(self.epochs(), given)?;
        config.val_fraction = self.val_fraction;
        config.eval_test_every_epoch = self.eval_test_every_epoch;
        config.patience = self.patience;
        let data_dir = data_folder(self.recipe.net.data.as_deref())?;
        Ok((config, mnist, data_dir))
    }
}

impl RecipeArgs {
    /// A new run of `epochs` epochs of the net and recipe these flags describe, and the data it
    /// trains on.
    pub fn config(
        &self,
        epochs: usize,
        given: &Given,
    ) -> Result<(train::TrainConfig, data::Mnist)> {
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
            epochs,
            batch_size: self.batch_size,
            seed: self.net.seed,
            precision,
            steps_per_submit: self.steps_per_submit,
            ..Default::default()
        };
        Ok((config, mnist))
    }
}
