//! Learning-rate schedules with the formulas of PyTorch's `torch.optim.lr_scheduler`, evaluated
//! on the host into one row per optimizer step. optim.wgsl indexes the rows with the GPU step
//! counter, so a run recorded once and replayed changes its learning rate every step without an
//! upload or a readback.
//!
//! Each schedule is PyTorch's closed form at the step k (from 0) that the optimizer is about to
//! take, i.e. the value `scheduler.get_last_lr()` has before the k-th `optimizer.step()` when the
//! scheduler is stepped once per optimizer step:
//! - `constant`: lr.
//! - `step:E:G` (StepLR stepped at epoch ends): lr·G^⌊e/E⌋, e the epochs completed before step k.
//! - `cosine` (CosineAnnealingLR, T_max = the schedule's steps): η_min + (lr − η_min)·(1 + cos(πj/T))/2.
//! - `onecycle` (OneCycleLR, max_lr = lr, pct_start 0.3, div_factor 25, final_div_factor 1e4,
//!   cosine annealing, base/max momentum 0.85/0.95). Momentum (or Adam's β1) cycles where the
//!   optimizer has one; Adam's bias correction then uses the β1 of the step, as PyTorch's does.
//!
//! `--warmup-steps N` goes in front (as PyTorch's SequentialLR with milestones `[N]`): step k < N
//! takes lr·(k+1)/N; the cosine and one-cycle schedules then start at j = k − N and span the
//! remaining steps. StepLR keeps counting the run's epochs, since it steps at epoch ends.

use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Optimizer;
use crate::error::Error;

/// OneCycleLR's defaults in PyTorch.
const PCT_START: f64 = 0.3;
const DIV_FACTOR: f64 = 25.0;
const FINAL_DIV_FACTOR: f64 = 1e4;
const BASE_MOMENTUM: f64 = 0.85;
const MAX_MOMENTUM: f64 = 0.95;

/// The shape of the learning rate over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    #[default]
    Constant,
    /// StepLR: multiply by `gamma` every `epochs` epochs.
    Step { epochs: usize, gamma: f64 },
    /// CosineAnnealingLR from the optimizer's lr down to `min_lr` at the run's last step.
    Cosine { min_lr: f64 },
    /// OneCycleLR with PyTorch's defaults and max_lr = the optimizer's lr.
    Onecycle,
}

/// A schedule and the linear warmup in front of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub schedule: Schedule,
    pub warmup_steps: usize,
}

/// The run a schedule spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Horizon {
    pub steps_per_epoch: usize,
    /// The run's optimizer steps, warmup included.
    pub total_steps: usize,
}

/// The hyperparameters of one optimizer step that a schedule sets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepHyper {
    pub lr: f64,
    /// The momentum (SGD, RMSprop) or β1 (Adam, AdamW) of this step: the optimizer's own unless
    /// the one-cycle schedule cycles it; 0 for AdaGrad.
    pub momentum: f64,
    /// Adam's 1 − β1ᵗ at this step t = k + 1 with this step's β1, as PyTorch evaluates it
    /// (`beta1 ** step`, C's pow); 0 for the other optimizers.
    pub bias_correction1: f64,
}

/// A schedule bound to an optimizer and a run: what each step's hyperparameters are.
#[derive(Clone, Debug, PartialEq)]
pub struct LrPlan {
    pub schedule: LrSchedule,
    pub optimizer: Optimizer,
    pub horizon: Horizon,
}

impl LrSchedule {
    /// No schedule: the optimizer's own, constant hyperparameters.
    pub fn is_constant(&self) -> bool {
        self.schedule == Schedule::Constant && self.warmup_steps == 0
    }

    /// Refuses a schedule that the run cannot follow, naming the fix.
    pub fn validate(&self, optimizer: &Optimizer, horizon: Horizon) -> Result<(), Error> {
        let invalid = |m: String| Err(Error::InvalidArgument(m));
        let total = horizon.total_steps;
        // A warmup alone may span the run; a schedule behind it needs steps of its own.
        let scheduled = self.schedule != Schedule::Constant;
        if scheduled && self.warmup_steps >= total {
            return invalid(format!(
                "--warmup-steps {} leaves none of the run's {total} steps to the {} schedule: \
                 use fewer warmup steps or more epochs",
                self.warmup_steps, self.schedule
            ));
        }
        let after_warmup = total.saturating_sub(self.warmup_steps);
        match self.schedule {
            Schedule::Step { epochs: 0, .. } => {
                invalid("--lr-schedule step:E:GAMMA needs E ≥ 1 epochs".into())
            }
            Schedule::Step { gamma, .. } if !(gamma > 0.0 && gamma.is_finite()) => invalid(
                format!("--lr-schedule step: GAMMA must be a positive number, got {gamma}"),
            ),
            Schedule::Cosine { min_lr } if !(0.0..=optimizer.lr()).contains(&min_lr) => {
                invalid(format!(
                    "--min-lr {min_lr} must lie between 0 and the learning rate {}",
                    optimizer.lr()
                ))
            }
            Schedule::Onecycle if one_cycle_phase_end(after_warmup) <= 0.0 => invalid(format!(
                "--lr-schedule onecycle needs at least 4 steps after warmup to rise and fall, \
                 and this run has {after_warmup}: train longer or use another schedule"
            )),
            _ => Ok(()),
        }
    }

    /// Step k's hyperparameters for `optimizer` over `horizon`.
    pub fn at(&self, optimizer: &Optimizer, horizon: Horizon, k: usize) -> StepHyper {
        let base = optimizer.lr();
        let own_momentum = optimizer.momentum().unwrap_or(0.0);
        let warmup = self.warmup_steps;
        let (lr, momentum) = if k < warmup {
            let momentum = match (self.schedule, optimizer.momentum()) {
                (Schedule::Onecycle, Some(_)) => MAX_MOMENTUM,
                _ => own_momentum,
            };
            (base * (k + 1) as f64 / warmup as f64, momentum)
        } else {
            let j = k - warmup;
            let span = horizon.total_steps - warmup;
            match self.schedule {
                Schedule::Constant => (base, own_momentum),
                Schedule::Step { epochs, gamma } => {
                    let decays = (k / horizon.steps_per_epoch) / epochs;
                    (base * gamma.powf(decays as f64), own_momentum)
                }
                Schedule::Cosine { min_lr } => {
                    let lr = min_lr
                        + (base - min_lr) * (1.0 + (PI * j as f64 / span as f64).cos()) / 2.0;
                    (lr, own_momentum)
                }
                Schedule::Onecycle => {
                    let (lr, cycled) = one_cycle(base, j, span);
                    (lr, optimizer.momentum().map_or(0.0, |_| cycled))
                }
            }
        };
        let bias_correction1 = match optimizer {
            Optimizer::Adam { .. } | Optimizer::Adamw { .. } => 1.0 - momentum.powf((k + 1) as f64),
            _ => 0.0,
        };
        StepHyper {
            lr,
            momentum,
            bias_correction1,
        }
    }
}

/// OneCycleLR's last step of the rising phase, `float(pct_start * total_steps) - 1`.
fn one_cycle_phase_end(total_steps: usize) -> f64 {
    PCT_START * total_steps as f64 - 1.0
}

/// OneCycleLR's (lr, momentum) at step `j` of `total` (`get_lr` with two phases and cosine
/// annealing).
fn one_cycle(max_lr: f64, j: usize, total: usize) -> (f64, f64) {
    let initial_lr = max_lr / DIV_FACTOR;
    let min_lr = initial_lr / FINAL_DIV_FACTOR;
    let rise_end = one_cycle_phase_end(total);
    let last = (total - 1) as f64;
    let step = j as f64;
    // (start_step, end_step, lr from → to, momentum from → to)
    let (start, end, lr, momentum) = if step <= rise_end {
        (
            0.0,
            rise_end,
            (initial_lr, max_lr),
            (MAX_MOMENTUM, BASE_MOMENTUM),
        )
    } else {
        (
            rise_end,
            last,
            (max_lr, min_lr),
            (BASE_MOMENTUM, MAX_MOMENTUM),
        )
    };
    let pct = (step - start) / (end - start);
    (
        anneal_cos(lr.0, lr.1, pct),
        anneal_cos(momentum.0, momentum.1, pct),
    )
}

/// PyTorch's `_annealing_cos`: from `start` at pct 0 to `end` at pct 1 along half a cosine.
fn anneal_cos(start: f64, end: f64, pct: f64) -> f64 {
    let cos_out = (PI * pct).cos() + 1.0;
    end + (start - end) / 2.0 * cos_out
}

impl LrPlan {
    /// Step k's hyperparameters.
    pub fn at(&self, k: usize) -> StepHyper {
        self.schedule.at(&self.optimizer, self.horizon, k)
    }

    /// The learning rate of step k.
    pub fn lr(&self, k: usize) -> f64 {
        self.at(k).lr
    }

    /// Every step's row, for the GPU; None when the schedule is constant (the optimizer's own
    /// hyperparameters apply).
    pub fn table(&self) -> Option<Vec<StepHyper>> {
        (!self.schedule.is_constant())
            .then(|| (0..self.horizon.total_steps).map(|k| self.at(k)).collect())
    }
}

impl FromStr for Schedule {
    type Err = Error;

    /// `constant`, `step:EPOCHS:GAMMA`, `cosine` or `onecycle` (the cosine floor is set apart,
    /// by --min-lr).
    fn from_str(s: &str) -> Result<Self, Error> {
        let unknown = || {
            Error::InvalidArgument(format!(
                "unknown learning-rate schedule '{s}': use constant, step:EPOCHS:GAMMA (e.g. \
                 step:10:0.1), cosine or onecycle"
            ))
        };
        match s.split(':').collect::<Vec<_>>()[..] {
            ["constant"] => Ok(Schedule::Constant),
            ["cosine"] => Ok(Schedule::Cosine { min_lr: 0.0 }),
            ["onecycle"] => Ok(Schedule::Onecycle),
            ["step", epochs, gamma] => Ok(Schedule::Step {
                epochs: epochs.parse().map_err(|_| unknown())?,
                gamma: gamma.parse().map_err(|_| unknown())?,
            }),
            _ => Err(unknown()),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Constant => write!(f, "constant"),
            Schedule::Step { epochs, gamma } => write!(f, "step:{epochs}:{gamma}"),
            Schedule::Cosine { .. } => write!(f, "cosine"),
            Schedule::Onecycle => write!(f, "onecycle"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn horizon(total_steps: usize) -> Horizon {
        Horizon {
            steps_per_epoch: 10,
            total_steps,
        }
    }

    #[test]
    fn parses_every_schedule_and_refuses_others() {
        assert_eq!("constant".parse::<Schedule>().unwrap(), Schedule::Constant);
        assert_eq!(
            "step:3:0.5".parse::<Schedule>().unwrap(),
            Schedule::Step {
                epochs: 3,
                gamma: 0.5
            }
        );
        assert_eq!(
            "cosine".parse::<Schedule>().unwrap(),
            Schedule::Cosine { min_lr: 0.0 }
        );
        assert_eq!("onecycle".parse::<Schedule>().unwrap(), Schedule::Onecycle);
        for bad in ["", "step", "step:3", "step:x:0.5", "cos", "onecycle:2"] {
            let e = bad.parse::<Schedule>().unwrap_err().to_string();
            assert!(e.contains("step:EPOCHS:GAMMA"), "{bad}: {e}");
        }
    }

    #[test]
    fn one_cycle_needs_room_to_rise_and_fall() {
        let opt = Optimizer::from_name("adam", None).unwrap();
        let onecycle = LrSchedule {
            schedule: Schedule::Onecycle,
            warmup_steps: 0,
        };
        assert!(onecycle.validate(&opt, horizon(3)).is_err());
        assert!(onecycle.validate(&opt, horizon(4)).is_ok());
        let warm = LrSchedule {
            warmup_steps: 2,
            ..onecycle
        };
        assert!(warm.validate(&opt, horizon(5)).is_err());
        assert!(warm.validate(&opt, horizon(6)).is_ok());
    }

    #[test]
    fn momentum_cycles_only_where_the_optimizer_has_one() {
        let onecycle = LrSchedule {
            schedule: Schedule::Onecycle,
            warmup_steps: 0,
        };
        let h = horizon(100);
        for (name, cycles) in [
            ("sgd", false),
            ("momentum", true),
            ("adagrad", false),
            ("adam", true),
        ] {
            let opt = Optimizer::from_name(name, None).unwrap();
            let first = onecycle.at(&opt, h, 0).momentum;
            assert_eq!(first, if cycles { MAX_MOMENTUM } else { 0.0 }, "{name}");
        }
    }
}
