//! Optimizers, with the update rules and defaults of PyTorch's `torch.optim` (so runs compare
//! one to one), executed on the GPU by `shaders/optim.wgsl` over the whole parameter arena.
//!
//! Where the book ("Deep Learning from Scratch") differs:
//! - Momentum: the book keeps v ← μv − lr·g, θ ← θ + v; PyTorch keeps b ← μb + g, θ ← θ − lr·b.
//!   With a constant learning rate the two are the same trajectory.
//! - Nesterov: the book uses a reformulated update; we use PyTorch's (g + μb).
//! - Adam: the book adds ε to the *uncorrected* √v (and uses ε = 1e-7); PyTorch, and wgrad, add ε
//!   to the bias-corrected √v̂ with ε = 1e-8.
//! - AdaGrad: the book's ε is 1e-7, PyTorch's (and ours) 1e-10.

pub mod schedule;

pub use schedule::{Horizon, LrPlan, LrSchedule, Schedule, StepHyper};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::gpu::kernel::{grid, shaders, Binding, Entry, KernelBindings, Placeholders};
use crate::gpu::{Gpu, GpuBuffer, GpuContext};

/// An optimizer and every hyperparameter it takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Optimizer {
    /// Plain, momentum or Nesterov SGD (`torch.optim.SGD`).
    Sgd {
        lr: f64,
        momentum: f64,
        dampening: f64,
        nesterov: bool,
        weight_decay: f64,
    },
    /// `torch.optim.Adagrad`.
    Adagrad {
        lr: f64,
        lr_decay: f64,
        eps: f64,
        initial_accumulator: f64,
        weight_decay: f64,
    },
    /// `torch.optim.RMSprop`.
    Rmsprop {
        lr: f64,
        alpha: f64,
        eps: f64,
        momentum: f64,
        centered: bool,
        weight_decay: f64,
    },
    /// `torch.optim.Adam` (L2 weight decay added to the gradient).
    Adam {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        amsgrad: bool,
        weight_decay: f64,
    },
    /// `torch.optim.AdamW` (decoupled weight decay: θ ← θ·(1 − lr·wd) before the Adam step).
    Adamw {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        amsgrad: bool,
        weight_decay: f64,
    },
}

/// The optimizer names the CLI accepts.
pub const OPTIMIZER_NAMES: &[&str] = &[
    "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw",
];

impl Optimizer {
    /// PyTorch's defaults for `name`; `lr` overrides the default learning rate when given.
    /// "momentum" is SGD with momentum 0.9, "nesterov" SGD with Nesterov momentum 0.9.
    pub fn from_name(name: &str, lr: Option<f64>) -> Result<Self, Error> {
        let pick = |default: f64| lr.unwrap_or(default);
        let opt = match name.to_ascii_lowercase().as_str() {
            "sgd" => Optimizer::Sgd {
                lr: pick(0.01),
                momentum: 0.0,
                dampening: 0.0,
                nesterov: false,
                weight_decay: 0.0,
            },
            "momentum" => Optimizer::Sgd {
                lr: pick(0.01),
                momentum: 0.9,
                dampening: 0.0,
                nesterov: false,
                weight_decay: 0.0,
            },
            "nesterov" => Optimizer::Sgd {
                lr: pick(0.01),
                momentum: 0.9,
                dampening: 0.0,
                nesterov: true,
                weight_decay: 0.0,
            },
            "adagrad" => Optimizer::Adagrad {
                lr: pick(0.01),
                lr_decay: 0.0,
                eps: 1e-10,
                initial_accumulator: 0.0,
                weight_decay: 0.0,
            },
            "rmsprop" => Optimizer::Rmsprop {
                lr: pick(0.01),
                alpha: 0.99,
                eps: 1e-8,
                momentum: 0.0,
                centered: false,
                weight_decay: 0.0,
            },
            "adam" => Optimizer::Adam {
                lr: pick(1e-3),
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                amsgrad: false,
                weight_decay: 0.0,
            },
            "adamw" => Optimizer::Adamw {
                lr: pick(1e-3),
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                amsgrad: false,
                weight_decay: 1e-2,
            },
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown optimizer '{other}': use one of {}",
                    OPTIMIZER_NAMES.join(", ")
                )))
            }
        };
        opt.validate()?;
        Ok(opt)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd { nesterov: true, .. } => "nesterov",
            Optimizer::Sgd { momentum, .. } if *momentum != 0.0 => "momentum",
            Optimizer::Sgd { .. } => "sgd",
            Optimizer::Adagrad { .. } => "adagrad",
            Optimizer::Rmsprop { .. } => "rmsprop",
            Optimizer::Adam { .. } => "adam",
            Optimizer::Adamw { .. } => "adamw",
        }
    }

    pub fn lr(&self) -> f64 {
        match *self {
            Optimizer::Sgd { lr, .. }
            | Optimizer::Adagrad { lr, .. }
            | Optimizer::Rmsprop { lr, .. }
            | Optimizer::Adam { lr, .. }
            | Optimizer::Adamw { lr, .. } => lr,
        }
    }

    /// The momentum a one-cycle schedule may cycle: SGD's and RMSprop's when they use one, and
    /// Adam's β1.
    pub fn momentum(&self) -> Option<f64> {
        match *self {
            Optimizer::Sgd { momentum, .. } | Optimizer::Rmsprop { momentum, .. } => {
                (momentum > 0.0).then_some(momentum)
            }
            Optimizer::Adam { beta1, .. } | Optimizer::Adamw { beta1, .. } => Some(beta1),
            Optimizer::Adagrad { .. } => None,
        }
    }

    /// How many per-parameter state slots (each the size of the arena) the update needs.
    pub fn state_slots(&self) -> usize {
        match self {
            Optimizer::Sgd { momentum, .. } => usize::from(*momentum != 0.0),
            Optimizer::Adagrad { .. } => 1,
            Optimizer::Rmsprop {
                momentum, centered, ..
            } => 1 + usize::from(*momentum != 0.0) + usize::from(*centered),
            Optimizer::Adam { amsgrad, .. } | Optimizer::Adamw { amsgrad, .. } => {
                2 + usize::from(*amsgrad)
            }
        }
    }

    /// What each of optim.wgsl's three state slots holds for this optimizer, named as
    /// `torch.optim`'s `state_dict` names it; `None` where the slot is unused.
    pub fn slot_names(&self) -> [Option<&'static str>; 3] {
        let used = |name, on: bool| on.then_some(name);
        match *self {
            Optimizer::Sgd { momentum, .. } => {
                [used("momentum_buffer", momentum != 0.0), None, None]
            }
            Optimizer::Adagrad { .. } => [Some("sum"), None, None],
            Optimizer::Rmsprop {
                momentum, centered, ..
            } => [
                Some("square_avg"),
                used("momentum_buffer", momentum != 0.0),
                used("grad_avg", centered),
            ],
            Optimizer::Adam { amsgrad, .. } | Optimizer::Adamw { amsgrad, .. } => [
                Some("exp_avg"),
                Some("exp_avg_sq"),
                used("max_exp_avg_sq", amsgrad),
            ],
        }
    }

    /// Rejects the values PyTorch rejects, with the flag to change.
    pub fn validate(&self) -> Result<(), Error> {
        let lr = self.lr();
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "learning rate must be a finite number > 0, got {lr} (--lr)"
            )));
        }
        let check = |name: &str, v: f64, lo: f64, hi: f64, hi_open: bool| {
            let ok = v.is_finite() && v >= lo && if hi_open { v < hi } else { v <= hi };
            if ok {
                Ok(())
            } else {
                let close = if hi_open { ")" } else { "]" };
                Err(Error::InvalidArgument(format!(
                    "{name} must lie in [{lo}, {hi}{close}, got {v} (--{})",
                    name.replace('_', "-")
                )))
            }
        };
        let wd = |v: f64| check("weight_decay", v, 0.0, f64::MAX, false);
        match *self {
            Optimizer::Sgd {
                momentum,
                dampening,
                nesterov,
                weight_decay,
                ..
            } => {
                check("momentum", momentum, 0.0, 1.0, true)?;
                check("dampening", dampening, 0.0, 1.0, false)?;
                wd(weight_decay)?;
                if nesterov && (momentum <= 0.0 || dampening != 0.0) {
                    return Err(Error::InvalidArgument(
                        "Nesterov momentum needs momentum > 0 and dampening 0".into(),
                    ));
                }
            }
            Optimizer::Adagrad {
                lr_decay,
                eps,
                initial_accumulator,
                weight_decay,
                ..
            } => {
                check("lr_decay", lr_decay, 0.0, f64::MAX, false)?;
                check("eps", eps, 0.0, f64::MAX, false)?;
                check(
                    "initial_accumulator",
                    initial_accumulator,
                    0.0,
                    f64::MAX,
                    false,
                )?;
                wd(weight_decay)?;
            }
            Optimizer::Rmsprop {
                alpha,
                eps,
                momentum,
                weight_decay,
                ..
            } => {
                check("alpha", alpha, 0.0, 1.0, false)?;
                check("eps", eps, 0.0, f64::MAX, false)?;
                check("momentum", momentum, 0.0, 1.0, true)?;
                wd(weight_decay)?;
            }
            Optimizer::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            }
            | Optimizer::Adamw {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                check("beta1", beta1, 0.0, 1.0, true)?;
                check("beta2", beta2, 0.0, 1.0, true)?;
                check("eps", eps, 0.0, f64::MAX, false)?;
                wd(weight_decay)?;
            }
        }
        Ok(())
    }
}

/// An optimizer's state on the GPU (up to three arena-sized slots, the bias-correction powers)
/// and its update dispatch over a model's arena.
pub struct GpuOptimizer {
    pub optimizer: Optimizer,
    /// The update, recorded once over the buffers below.
    update: crate::gpu::Dispatch,
    slots: [GpuBuffer; 3],
    /// [β1ᵗ, β2ᵗ], advanced by repeated products on the GPU, in slot t mod 2 of two.
    powers: GpuBuffer,
    /// The GPU step counter, whose t picks the slot of the powers.
    state: GpuBuffer,
    precision: crate::gpu::Precision,
}

/// An optimizer's state read back from the GPU, to be stored and written back bit for bit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OptimizerState {
    /// Each used slot: its `state_dict` name and one value per arena parameter.
    pub slots: Vec<(String, Vec<f64>)>,
    /// [β1ᵗ, β2ᵗ] as the GPU holds them. Not recomputed from t on resume: pow(β, t) need not
    /// equal the product the GPU formed step by step, and a resumed run must be the same run.
    pub beta_powers: [f64; 2],
}

/// optim.wgsl's `hyper` buffer: every optimizer's hyperparameters in one layout, zero where an
/// optimizer has none (uploaded in the working precision, so not a uniform).
#[derive(Clone, Copy, Debug, Default)]
struct Hyper {
    lr: f64,
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    alpha: f64,
    lr_decay: f64,
}

impl Hyper {
    /// In optim.wgsl's order.
    fn words(self) -> [f64; 9] {
        [
            self.lr,
            self.momentum,
            self.dampening,
            self.weight_decay,
            self.beta1,
            self.beta2,
            self.eps,
            self.alpha,
            self.lr_decay,
        ]
    }
}

/// optim.wgsl's flag: `hyper` holds a row per step after its constants.
const SCHEDULED: u32 = 16;
/// optim.wgsl's flag: the net follows the book, whose Momentum, Nesterov and Adam differ from
/// torch.optim's in form.
const BOOK: u32 = 32;

/// optim.wgsl's flag: the momentum may be nonzero, so a slot holds a momentum buffer.
const MOMENTUM: u32 = 64;
/// optim.wgsl's flag: the update adds the gradient of the loss's L2 term.
const L2: u32 = 128;

/// optim.wgsl's quad: the parameters each invocation updates, one vector.
const QUAD: usize = 4;

/// optim.wgsl's Params.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct OptimParams {
    numel: u32,
    /// numel / 4, rounded up.
    quads: u32,
    row_width: u32,
    _pad: u32,
}

/// optim.wgsl's buffers.
struct OptimBindings<'a> {
    hyper: &'a GpuBuffer,
    theta: &'a GpuBuffer,
    grad: &'a GpuBuffer,
    /// Per-parameter state slots (momentum buffer, moments, square averages, …).
    slots: &'a [GpuBuffer; 3],
    /// [β1ᵗ, β2ᵗ]
    powers: &'a GpuBuffer,
    /// The GPU step counter.
    state: &'a GpuBuffer,
    /// λ_i / 2 of the loss's L2 term, if it has one.
    half_decay: Option<&'a GpuBuffer>,
}

impl KernelBindings for OptimBindings<'_> {
    type Params = OptimParams;
    const ACCESS: &'static [Binding] = &[
        Binding::Read,
        Binding::ReadWrite,
        Binding::Read,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::Read,
        Binding::Read,
    ];
    fn buffers<'a>(&'a self, unused: &'a Placeholders) -> Vec<&'a wgpu::Buffer> {
        let [s1, s2, s3] = self.slots;
        let mut buffers = [
            self.hyper,
            self.theta,
            self.grad,
            s1,
            s2,
            s3,
            self.powers,
            self.state,
        ]
        .map(|b| &b.buffer)
        .to_vec();
        buffers.push(unused.real(self.half_decay));
        buffers
    }
}

impl Optimizer {
    /// optim.wgsl's entry point, flags and hyperparameters for this optimizer, and the value
    /// its first state slot starts from.
    fn plan(&self) -> (&'static str, u32, Hyper, f64) {
        let amsgrad_flag = |amsgrad: bool| if amsgrad { 2 } else { 0 };
        match *self {
            Optimizer::Sgd {
                lr,
                momentum,
                dampening,
                nesterov,
                weight_decay,
            } => {
                let hyper = Hyper {
                    lr,
                    momentum,
                    dampening,
                    weight_decay,
                    ..Default::default()
                };
                ("sgd", u32::from(nesterov), hyper, 0.0)
            }
            Optimizer::Adagrad {
                lr,
                lr_decay,
                eps,
                initial_accumulator,
                weight_decay,
            } => {
                let hyper = Hyper {
                    lr,
                    weight_decay,
                    eps,
                    lr_decay,
                    ..Default::default()
                };
                ("adagrad", 0, hyper, initial_accumulator)
            }
            Optimizer::Rmsprop {
                lr,
                alpha,
                eps,
                momentum,
                centered,
                weight_decay,
            } => {
                let hyper = Hyper {
                    lr,
                    momentum,
                    weight_decay,
                    eps,
                    alpha,
                    ..Default::default()
                };
                ("rmsprop", if centered { 4 } else { 0 }, hyper, 0.0)
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
            } => {
                let hyper = Hyper {
                    lr,
                    weight_decay,
                    beta1,
                    beta2,
                    eps,
                    ..Default::default()
                };
                let decoupled = if matches!(self, Optimizer::Adamw { .. }) {
                    8
                } else {
                    0
                };
                ("adam", decoupled | amsgrad_flag(amsgrad), hyper, 0.0)
            }
        }
    }
}

impl GpuOptimizer {
    /// `state` is the GPU step counter (its word 0 is t, the steps completed). `schedule`, if
    /// any, holds a row for every step the run will take ([`LrPlan::table`]). Where `model`'s
    /// loss has the book's L2 term, the update adds its gradient, so the step before it must
    /// record [`crate::nn::Recorder::layer_gradients`], not `backward`.
    pub fn new(
        gpu: &Gpu,
        model: &crate::nn::Model,
        optimizer: &Optimizer,
        schedule: Option<&[StepHyper]>,
        state: &GpuBuffer,
    ) -> crate::Result<Self> {
        optimizer.validate()?;
        let (ctx, precision, numel) = (gpu.ctx, model.precision, model.layout.total);
        let (entry, mut flags, hyper, initial) = optimizer.plan();
        if model.spec.conventions == crate::nn::Conventions::Book {
            flags |= BOOK;
        }
        let scheduled_momentum =
            schedule.is_some_and(|rows| rows.iter().any(|r| r.momentum != 0.0));
        if hyper.momentum != 0.0 || scheduled_momentum {
            flags |= MOMENTUM;
        }
        let half_decay = model.l2_half_decay();
        if half_decay.is_some() {
            flags |= L2;
        }
        let mut hyper = hyper.words().to_vec();
        if let Some(rows) = schedule {
            flags |= SCHEDULED;
            hyper.extend(
                rows.iter()
                    .flat_map(|r| [r.lr, r.momentum, r.bias_correction1]),
            );
        }
        let slot = |i: usize, fill: f64| {
            GpuBuffer::from_real(
                ctx,
                &format!("optim_state{i}"),
                &vec![fill; numel],
                precision,
            )
        };
        let slots = [slot(0, initial), slot(1, 0.0), slot(2, 0.0)];
        let powers = GpuBuffer::from_real(ctx, "powers", &[1.0; 4], precision);
        let bindings = OptimBindings {
            hyper: &GpuBuffer::from_real(ctx, "hyper", &hyper, precision),
            theta: &model.params,
            grad: &model.grads,
            slots: &slots,
            powers: &powers,
            state,
            half_decay,
        };
        let quads = numel.div_ceil(QUAD);
        let (groups, row_width) = grid(quads);
        let params = OptimParams {
            numel: numel as u32,
            quads: quads as u32,
            row_width,
            _pad: 0,
        };
        // The options are override constants: a branch on a uniform would make lavapipe read
        // every slot lane by lane (optim.wgsl's header).
        let options = [("FLAGS", f64::from(flags))];
        let update = gpu.kernels.dispatch_specialised(
            ctx,
            &Entry::new(shaders::OPTIM, entry),
            &options,
            &params,
            &bindings,
            groups,
        );
        Ok(GpuOptimizer {
            optimizer: optimizer.clone(),
            update,
            slots,
            powers,
            state: state.clone(),
            precision,
        })
    }

    /// The update, to record after the backward pass of each step.
    pub fn update(&self) -> &crate::gpu::Dispatch {
        &self.update
    }

    /// The used slots and the β powers, as they stand after the last submit.
    pub fn read_state(&self, ctx: &GpuContext) -> crate::Result<OptimizerState> {
        let mut slots = Vec::new();
        for (buffer, name) in self.slots.iter().zip(self.optimizer.slot_names()) {
            if let Some(name) = name {
                slots.push((name.to_string(), buffer.read_real(ctx, self.precision)?));
            }
        }
        let powers = self.powers.read_real(ctx, self.precision)?;
        let slot = 2 * (self.state.read_u32(ctx)?[0] as usize % 2);
        Ok(OptimizerState {
            slots,
            beta_powers: [powers[slot], powers[slot + 1]],
        })
    }

    /// Puts back a state from [`GpuOptimizer::read_state`] of the same optimizer and arena.
    pub fn write_state(&self, ctx: &GpuContext, state: &OptimizerState) -> crate::Result<()> {
        let names = self.optimizer.slot_names();
        for (name, values) in &state.slots {
            let i = names.iter().position(|n| *n == Some(name.as_str()));
            let numel = self.slots[0].len;
            let Some(i) = i.filter(|_| values.len() == numel) else {
                return Err(Error::InvalidArgument(format!(
                    "optimizer state {name} ({} values) does not belong to {} over {numel} \
                     parameters",
                    values.len(),
                    self.optimizer.name()
                )));
            };
            self.slots[i].write_real(ctx, 0, values, self.precision);
        }
        // Into both slots, so that the next update finds them whatever the step counter says.
        let [b1, b2] = state.beta_powers;
        self.powers
            .write_real(ctx, 0, &[b1, b2, b1, b2], self.precision);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults `torch.optim` documents (PyTorch 2.x signatures), pinned one by one so that a
    /// changed constant fails here rather than silently changing every run. The learning rates of
    /// "sgd", "momentum" and "nesterov" are the book's (0.01); PyTorch's SGD defaults to 1e-3.
    #[test]
    fn defaults_are_pytorchs() {
        let defaults = |name: &str| Optimizer::from_name(name, None).unwrap();
        let sgd = |momentum, nesterov| Optimizer::Sgd {
            lr: 0.01,
            momentum,
            dampening: 0.0,
            nesterov,
            weight_decay: 0.0,
        };
        assert_eq!(defaults("sgd"), sgd(0.0, false));
        assert_eq!(defaults("momentum"), sgd(0.9, false));
        assert_eq!(defaults("nesterov"), sgd(0.9, true));
        // torch.optim.Adagrad(lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
        // eps=1e-10)
        assert_eq!(
            defaults("adagrad"),
            Optimizer::Adagrad {
                lr: 1e-2,
                lr_decay: 0.0,
                eps: 1e-10,
                initial_accumulator: 0.0,
                weight_decay: 0.0,
            }
        );
        // torch.optim.RMSprop(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
        // centered=False)
        assert_eq!(
            defaults("rmsprop"),
            Optimizer::Rmsprop {
                lr: 1e-2,
                alpha: 0.99,
                eps: 1e-8,
                momentum: 0.0,
                centered: false,
                weight_decay: 0.0,
            }
        );
        // torch.optim.Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False)
        assert_eq!(
            defaults("adam"),
            Optimizer::Adam {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                amsgrad: false,
                weight_decay: 0.0,
            }
        );
        // torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
        // amsgrad=False)
        assert_eq!(
            defaults("adamw"),
            Optimizer::Adamw {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                amsgrad: false,
                weight_decay: 1e-2,
            }
        );
    }

    #[test]
    fn a_given_learning_rate_replaces_only_the_learning_rate() {
        let adam = Optimizer::from_name("adam", Some(0.25)).unwrap();
        assert_eq!(adam.lr(), 0.25);
        let Optimizer::Adam { beta1, beta2, .. } = adam else {
            panic!("adam is Adam: {adam:?}")
        };
        assert_eq!((beta1, beta2), (0.9, 0.999));
    }
}
