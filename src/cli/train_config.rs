//! How `wgrad train`'s flags become a run: the optimizer and its hyperparameters, the schedule,
//! and a resumed run's settings, which a flag may not contradict.

use std::path::PathBuf;

use wgrad::gpu::Precision;
use wgrad::nn::NetSpec;
use wgrad::optim::{LrSchedule, Optimizer, Schedule};
use wgrad::{checkpoint, data, train, Result};

use super::net::{data_folder, layer_list, NET_SHAPE_FLAGS, TRAIN_NET};
use super::train::{RecipeArgs, TrainArgs};
use super::Given;

impl TrainArgs {
    pub fn epochs(&self) -> usize {
        let convnet = self.recipe.is_convnet();
        self.epochs.unwrap_or(if convnet { 10 } else { 20 })
    }
}

impl RecipeArgs {
    /// The bare run's recipes: momentum SGD (lr 0.1) for MLPs, Adam (lr 1e-3) for convnets,
    /// as the PyTorch anchors that wgrad is measured against train them.
    pub fn is_convnet(&self) -> bool {
        self.net.shape.layers.is_some() || self.net.shape.model != "mlp"
    }

    pub fn optimizer(&self) -> Result<Optimizer> {
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
    pub fn schedule(&self) -> Result<LrSchedule> {
        self.schedule_from(self.lr_schedule.parse()?, self.warmup_steps)
    }

    /// The stored schedule with what the given flags change in it.
    pub fn schedule_over(&self, given: &Given, stored: &LrSchedule) -> Result<LrSchedule> {
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
    pub fn schedule_from(&self, mut schedule: Schedule, warmup_steps: usize) -> Result<LrSchedule> {
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
    pub fn override_hyperparameters(&self, opt: &mut Optimizer) {
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

/// The optimizer's flags.
pub const OPTIMIZER_FLAGS: &[&str] = &[
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
    /// The run stored at `path`, to continue on its own data (or the same data in another
    /// folder) until --epochs, or the run's own epoch count.
    pub fn resumed(
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
        let dir = self.recipe.net.data.clone().or(record.data_dir.clone());
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
    pub fn check_agrees(
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
        let precision: Precision = self.recipe.precision.parse()?;
        let settings = [
            (
                "batch-size",
                self.recipe.batch_size.to_string(),
                stored.batch_size.to_string(),
            ),
            (
                "seed",
                self.recipe.net.seed.to_string(),
                stored.seed.to_string(),
            ),
            (
                "steps-per-submit",
                self.recipe.steps_per_submit.to_string(),
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
            let init = self.recipe.net.init(&TRAIN_NET)?;
            if init != stored.init {
                return clash(format!("--init {init}"), format!("init {}", stored.init));
            }
        }
        if given.any(NET_SHAPE_FLAGS) || given.any(&["weight_decay"]) {
            let spec = self.recipe.net.spec(&mnist.train, &TRAIN_NET, given)?;
            if spec != stored.spec {
                let describe =
                    |s: &NetSpec| format!("{} (weight decay {})", layer_list(s), s.weight_decay);
                let ours = format!("the net the flags describe, {},", describe(&spec));
                return clash(ours, format!("the net {}", describe(&stored.spec)));
            }
        }
        if given.any(&["lr_schedule", "min_lr", "warmup_steps"]) {
            let requested = self.recipe.schedule_over(given, &stored.schedule)?;
            if requested != stored.schedule {
                let json = |s: &LrSchedule| serde_json::to_string(s).expect("serialisable");
                let ours = format!("the schedule the flags describe, {},", json(&requested));
                return clash(ours, format!("the schedule {}", json(&stored.schedule)));
            }
        }
        if given.any(OPTIMIZER_FLAGS) {
            let requested = if given.any(&["optimizer"]) {
                self.recipe.optimizer()?
            } else {
                let mut o = stored.optimizer.clone();
                self.recipe.override_hyperparameters(&mut o);
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

pub fn epochs_or_none(epochs: Option<usize>) -> String {
    epochs.map_or("none".into(), |n| n.to_string())
}
