//! Every optimizer on the GPU against the reference (PyTorch's update rules, in f64): five steps
//! on a small net with a fixed batch, the gradient recomputed on the GPU at every step, each step
//! built as train.rs builds it (forward, loss and step count, backward, update).
//! The reference replays the same five steps with `RefMlp::loss_and_grad` + `RefOptimizer::step`.
//!
//! What is compared after each step is the displacement θ_t − θ_0 (norm-wise relative error):
//! stricter than comparing θ_t itself, whose norm is dominated by the starting point. Tolerances:
//! 1e-10 in f64, 1e-4 in f32.
//!
//! A comparison only means something if the feature under test changes the trajectory, so every
//! case also names "ablations" (the same optimizer without momentum, without weight decay,
//! without centring, …) whose reference trajectory must differ from the case's by far more than
//! the tolerance.

mod common;

use common::*;
use wgrad::gpu::{kernel, Gpu, GpuBuffer, Precision};
use wgrad::nn::{Activation, Model, NetSpec, Recorder, Workspace};
use wgrad::optim::{GpuOptimizer, Horizon, LrPlan, LrSchedule, Optimizer, Schedule};
use wgrad::reference::RefOptimizer;
use wgrad::train::{batch_step, StateWord};

const STEPS: usize = 5;

fn tol(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => 1e-4,
        Precision::F64 => 1e-10,
    }
}

/// A smooth (Sigmoid) net, so that f32 and f64 never disagree about a ReLU unit's state as the
/// parameters move: 16-[12, 8]-10, 398 parameters, a fixed batch of 24 rows.
fn problem(model_weight_decay: f64) -> Problem {
    let mut spec = NetSpec::mlp(16, &[12, 8], 10, Activation::Sigmoid);
    spec.weight_decay = model_weight_decay;
    Problem::random(&spec, 24, 2024)
}

/// θ after each of `steps` GPU steps (forward, loss and step count, backward, update), one submit
/// per step.
fn gpu_trajectory(
    opt: &Optimizer,
    precision: Precision,
    prob: &Problem,
    steps: usize,
) -> Vec<Vec<f64>> {
    scheduled_gpu_trajectory(opt, None, precision, prob, steps)
}

/// As [`gpu_trajectory`], with the learning rate (and momentum) of `plan`'s steps.
fn scheduled_gpu_trajectory(
    opt: &Optimizer,
    plan: Option<&LrPlan>,
    precision: Precision,
    prob: &Problem,
    steps: usize,
) -> Vec<Vec<f64>> {
    let ctx = ctx();
    let model = Model::new(ctx, &prob.spec, &prob.params, precision).unwrap();
    let ws = Workspace::new(ctx, &model, prob.n(), 1, true);
    ws.upload(ctx, &prob.x, &prob.labels, precision);
    let state = GpuBuffer::zeroed(ctx, "state", STATE_WORDS, 4);
    let stats = GpuBuffer::real(ctx, "stats", STATS_WORDS, precision);
    let table = plan.and_then(LrPlan::table);
    let optimizer =
        GpuOptimizer::new(&gpu(precision), &model, opt, table.as_deref(), &state).unwrap();
    let step = train_step(precision, &model, &ws, &optimizer, &state, &stats);
    let trajectory = (0..steps)
        .map(|_| {
            kernel::run(ctx, &step).unwrap();
            model.read_params(ctx).unwrap()
        })
        .collect();
    let words = state.read_u32(ctx).unwrap();
    assert_eq!(words[0] as usize, steps, "GPU step counter t");
    trajectory
}

/// One training step's dispatches, as train.rs records them (minus the gather: the batch is
/// fixed).
fn train_step(
    precision: Precision,
    model: &Model,
    ws: &Workspace,
    optimizer: &GpuOptimizer,
    state: &GpuBuffer,
    stats: &GpuBuffer,
) -> Vec<wgrad::gpu::Dispatch> {
    let rec = Recorder {
        ctx: ctx(),
        kernels: kernels(precision),
        model,
    };
    let step_losses = GpuBuffer::real(ctx(), "step_losses", 1, precision);
    batch_step(&rec, ws, (state, stats, &step_losses), optimizer)
}

/// The same steps on the CPU: exact gradients, PyTorch's update, all in f64.
fn ref_trajectory(opt: &Optimizer, prob: &Problem, steps: usize) -> Vec<Vec<f64>> {
    scheduled_ref_trajectory(opt, None, prob, steps)
}

/// As [`ref_trajectory`], with `plan`'s learning rate and momentum written into the optimizer
/// before each step, as a PyTorch scheduler writes them into the param group.
fn scheduled_ref_trajectory(
    opt: &Optimizer,
    plan: Option<&LrPlan>,
    prob: &Problem,
    steps: usize,
) -> Vec<Vec<f64>> {
    let mlp = prob.reference();
    let mut theta = prob.params.clone();
    let mut ropt = RefOptimizer::new(opt, theta.len());
    (0..steps)
        .map(|k| {
            if let Some(plan) = plan {
                let row = plan.at(k);
                ropt.set_lr_and_momentum(row.lr, row.momentum);
            }
            let (_, g) = mlp.loss_and_grad(&theta, &prob.x, &prob.labels);
            ropt.step(&mut theta, &g);
            theta.clone()
        })
        .collect()
}

fn displacement(theta: &[f64], theta0: &[f64]) -> Vec<f64> {
    theta.iter().zip(theta0).map(|(t, t0)| t - t0).collect()
}

/// An optimizer to test, and variants lacking one of its features.
struct Case {
    name: String,
    opt: Optimizer,
    ablations: Vec<(&'static str, Optimizer)>,
}

/// Each base case as given, and again with the optimizer's own weight decay (the version without
/// it being that copy's ablation).
fn with_and_without_decay(base: Vec<Case>, decay: f64) -> Vec<Case> {
    let mut out = Vec::new();
    for case in base {
        let mut decayed = case.opt.clone();
        set_weight_decay(&mut decayed, decay);
        let mut ablations: Vec<(&'static str, Optimizer)> = case
            .ablations
            .iter()
            .map(|(what, o)| {
                let mut o = o.clone();
                set_weight_decay(&mut o, decay);
                (*what, o)
            })
            .collect();
        ablations.push(("weight decay", case.opt.clone()));
        out.push(Case {
            name: format!("{} wd={decay}", case.name),
            opt: decayed,
            ablations,
        });
        out.push(case);
    }
    out
}

fn set_weight_decay(opt: &mut Optimizer, value: f64) {
    match opt {
        Optimizer::Sgd { weight_decay, .. }
        | Optimizer::Adagrad { weight_decay, .. }
        | Optimizer::Rmsprop { weight_decay, .. }
        | Optimizer::Adam { weight_decay, .. }
        | Optimizer::Adamw { weight_decay, .. } => *weight_decay = value,
    }
}

fn run_cases(cases: &[Case], prob: &Problem) {
    for case in cases {
        case.opt.validate().unwrap();
        // The features under test must show in the trajectory.
        let want64 = ref_trajectory(&case.opt, prob, STEPS);
        let last = displacement(&want64[STEPS - 1], &prob.params);
        assert!(
            last.iter().any(|&d| d != 0.0),
            "{}: the parameters do not move",
            case.name
        );
        for (what, other) in &case.ablations {
            let theirs = ref_trajectory(other, prob, STEPS);
            let diff = rel_err(&displacement(&theirs[STEPS - 1], &prob.params), &last);
            if std::env::var_os("WGRAD_TEST_ERRORS").is_some() {
                eprintln!("ablation {diff:10.3e}  {}: without {what}", case.name);
            }
            assert!(
                diff > 1e-3,
                "{}: without {what} the trajectory moves by only {diff:.1e}; the test would not see that feature",
                case.name
            );
        }
        for precision in precisions() {
            let prob = prob.at(precision);
            let want = ref_trajectory(&case.opt, &prob, STEPS);
            let got = gpu_trajectory(&case.opt, precision, &prob, STEPS);
            for (t, (g, w)) in got.iter().zip(&want).enumerate() {
                check(
                    &format!("{precision} {} step {}: θ − θ0", case.name, t + 1),
                    rel_err(
                        &displacement(g, &prob.params),
                        &displacement(w, &prob.params),
                    ),
                    tol(precision),
                );
                check(
                    &format!("{precision} {} step {}: θ", case.name, t + 1),
                    rel_err(g, w),
                    tol(precision),
                );
            }
        }
    }
}

fn sgd(momentum: f64, dampening: f64, nesterov: bool) -> Optimizer {
    Optimizer::Sgd {
        lr: 0.1,
        momentum,
        dampening,
        nesterov,
        weight_decay: 0.0,
    }
}

#[test]
fn sgd_momentum_nesterov_dampening_match_reference() {
    let cases = vec![
        Case {
            name: "sgd".into(),
            opt: sgd(0.0, 0.0, false),
            ablations: vec![],
        },
        Case {
            name: "momentum 0.9".into(),
            opt: sgd(0.9, 0.0, false),
            ablations: vec![("momentum", sgd(0.0, 0.0, false))],
        },
        Case {
            name: "nesterov 0.9".into(),
            opt: sgd(0.9, 0.0, true),
            ablations: vec![("Nesterov", sgd(0.9, 0.0, false))],
        },
        Case {
            name: "momentum 0.9 dampening 0.3".into(),
            opt: sgd(0.9, 0.3, false),
            ablations: vec![("dampening", sgd(0.9, 0.0, false))],
        },
    ];
    run_cases(&with_and_without_decay(cases, 0.05), &problem(0.0));
}

#[test]
fn momentum_with_l2_in_the_loss_matches_reference() {
    // The net's own weight decay (λ·W added by l2_grad before the update) and the optimizer's.
    let mut opt = sgd(0.9, 0.0, false);
    set_weight_decay(&mut opt, 0.05);
    let cases = vec![Case {
        name: "momentum, λ=0.1 in the loss, wd=0.05".into(),
        opt,
        ablations: vec![],
    }];
    run_cases(&cases, &problem(0.1));
}

#[test]
fn adagrad_with_lr_decay_and_initial_accumulator_matches_reference() {
    let adagrad = |lr_decay, initial_accumulator| Optimizer::Adagrad {
        lr: 0.1,
        lr_decay,
        eps: 1e-10,
        initial_accumulator,
        weight_decay: 0.0,
    };
    let cases = vec![
        Case {
            name: "adagrad".into(),
            opt: adagrad(0.0, 0.0),
            ablations: vec![],
        },
        Case {
            name: "adagrad lr_decay 0.2, initial accumulator 0.5".into(),
            opt: adagrad(0.2, 0.5),
            ablations: vec![
                ("lr_decay", adagrad(0.0, 0.5)),
                ("initial accumulator", adagrad(0.2, 0.0)),
            ],
        },
    ];
    run_cases(&with_and_without_decay(cases, 0.05), &problem(0.0));
}

#[test]
fn rmsprop_plain_centered_momentum_match_reference() {
    let rmsprop = |momentum, centered| Optimizer::Rmsprop {
        lr: 0.01,
        alpha: 0.9,
        eps: 1e-8,
        momentum,
        centered,
        weight_decay: 0.0,
    };
    let cases = vec![
        Case {
            name: "rmsprop".into(),
            opt: rmsprop(0.0, false),
            ablations: vec![],
        },
        Case {
            name: "rmsprop centered".into(),
            opt: rmsprop(0.0, true),
            ablations: vec![("centring", rmsprop(0.0, false))],
        },
        Case {
            name: "rmsprop momentum 0.5".into(),
            opt: rmsprop(0.5, false),
            ablations: vec![("momentum", rmsprop(0.0, false))],
        },
        Case {
            name: "rmsprop centered momentum 0.5".into(),
            opt: rmsprop(0.5, true),
            ablations: vec![
                ("momentum", rmsprop(0.0, true)),
                ("centring", rmsprop(0.5, false)),
            ],
        },
    ];
    run_cases(&with_and_without_decay(cases, 0.05), &problem(0.0));
}

// β2 = 0.9 rather than 0.999 so that v shrinks within five steps for many elements, which is
// where AMSGrad departs from Adam. β1 = 0.8 differs from β2, so that a kernel that uses one where
// the other belongs (in a moment or a bias correction) leaves the reference's trajectory.
const BETA1: f64 = 0.8;
const BETA2: f64 = 0.9;

fn adam_with(beta1: f64, beta2: f64, amsgrad: bool, weight_decay: f64) -> Optimizer {
    Optimizer::Adam {
        lr: 0.01,
        beta1,
        beta2,
        eps: 1e-8,
        amsgrad,
        weight_decay,
    }
}

fn adam(amsgrad: bool, weight_decay: f64) -> Optimizer {
    adam_with(BETA1, BETA2, amsgrad, weight_decay)
}

fn adamw_with(beta1: f64, beta2: f64, amsgrad: bool, weight_decay: f64) -> Optimizer {
    Optimizer::Adamw {
        lr: 0.01,
        beta1,
        beta2,
        eps: 1e-8,
        amsgrad,
        weight_decay,
    }
}

fn adamw(amsgrad: bool, weight_decay: f64) -> Optimizer {
    adamw_with(BETA1, BETA2, amsgrad, weight_decay)
}

#[test]
fn adam_and_amsgrad_match_reference() {
    let cases = vec![
        Case {
            name: "adam".into(),
            opt: adam(false, 0.0),
            ablations: vec![("β1 and β2 in order", adam_with(BETA2, BETA1, false, 0.0))],
        },
        Case {
            name: "adam amsgrad".into(),
            opt: adam(true, 0.0),
            ablations: vec![
                ("AMSGrad", adam(false, 0.0)),
                ("β1 and β2 in order", adam_with(BETA2, BETA1, true, 0.0)),
            ],
        },
        Case {
            name: "adam with PyTorch's betas (0.9, 0.999)".into(),
            opt: adam_with(0.9, 0.999, false, 0.0),
            ablations: vec![("β1 and β2 in order", adam_with(0.999, 0.9, false, 0.0))],
        },
    ];
    run_cases(&with_and_without_decay(cases, 0.05), &problem(0.0));
}

#[test]
fn adamw_decoupled_decay_matches_reference() {
    let cases = vec![
        Case {
            name: "adamw wd=0".into(),
            opt: adamw(false, 0.0),
            ablations: vec![("β1 and β2 in order", adamw_with(BETA2, BETA1, false, 0.0))],
        },
        Case {
            name: "adamw wd=0.5".into(),
            opt: adamw(false, 0.5),
            ablations: vec![
                ("weight decay", adamw(false, 0.0)),
                // Decoupled, not L2: the same λ added to the gradient gives another trajectory.
                ("decoupling", adam(false, 0.5)),
            ],
        },
        Case {
            name: "adamw amsgrad wd=0.5".into(),
            opt: adamw(true, 0.5),
            ablations: vec![
                ("AMSGrad", adamw(false, 0.5)),
                ("β1 and β2 in order", adamw_with(BETA2, BETA1, true, 0.5)),
            ],
        },
    ];
    run_cases(&cases, &problem(0.0));
}

#[test]
fn scheduled_learning_rate_and_momentum_match_reference() {
    // Every step changes the learning rate, and one-cycle also the momentum (SGD, RMSprop) or
    // β1 (Adam, whose bias correction must then use this step's β1, not a running product).
    let schedules = [
        (Schedule::Onecycle, 0),
        (Schedule::Cosine { min_lr: 0.01 }, 2),
        (
            Schedule::Step {
                epochs: 1,
                gamma: 0.3,
            },
            0,
        ),
    ];
    let rmsprop = Optimizer::Rmsprop {
        lr: 0.01,
        alpha: 0.9,
        eps: 1e-8,
        momentum: 0.5,
        centered: false,
        weight_decay: 0.0,
    };
    let adagrad = Optimizer::Adagrad {
        lr: 0.1,
        lr_decay: 0.2,
        eps: 1e-10,
        initial_accumulator: 0.5,
        weight_decay: 0.0,
    };
    let prob = problem(0.0);
    for opt in [
        sgd(0.9, 0.0, true),
        rmsprop,
        adagrad,
        adam_with(0.8, 0.95, false, 0.0),
        adamw_with(0.8, 0.95, true, 0.05),
    ] {
        for (schedule, warmup_steps) in schedules {
            let plan = LrPlan {
                schedule: LrSchedule {
                    schedule,
                    warmup_steps,
                },
                optimizer: opt.clone(),
                horizon: Horizon {
                    steps_per_epoch: 2,
                    total_steps: STEPS,
                },
            };
            let name = format!("{} {schedule} warmup {warmup_steps}", opt.name());
            let want64 = scheduled_ref_trajectory(&opt, Some(&plan), &prob, STEPS);
            let constant = ref_trajectory(&opt, &prob, STEPS);
            let moved = rel_err(
                &displacement(&constant[STEPS - 1], &prob.params),
                &displacement(&want64[STEPS - 1], &prob.params),
            );
            assert!(
                moved > 1e-3,
                "{name}: the schedule barely changes the run ({moved:.1e})"
            );
            for precision in precisions() {
                let prob = prob.at(precision);
                let want = scheduled_ref_trajectory(&opt, Some(&plan), &prob, STEPS);
                let got = scheduled_gpu_trajectory(&opt, Some(&plan), precision, &prob, STEPS);
                for (t, (g, w)) in got.iter().zip(&want).enumerate() {
                    check(
                        &format!("{precision} {name} step {}: θ − θ0", t + 1),
                        rel_err(
                            &displacement(g, &prob.params),
                            &displacement(w, &prob.params),
                        ),
                        tol(precision),
                    );
                }
            }
        }
    }
}

#[test]
fn steps_recorded_into_one_submit_match_one_submit_per_step() {
    // train.rs records many steps into one submit: the step count that SGD's first-step momentum,
    // AdaGrad's lr decay and Adam's bias correction read must come from the GPU counter, so the
    // result must be bit-identical to submitting step by step.
    let prob = problem(0.01);
    for precision in precisions() {
        let prob = prob.at(precision);
        for opt in [
            sgd(0.9, 0.3, false),
            Optimizer::Adagrad {
                lr: 0.1,
                lr_decay: 0.2,
                eps: 1e-10,
                initial_accumulator: 0.5,
                weight_decay: 0.0,
            },
            adam(true, 0.01),
        ] {
            let one_by_one = gpu_trajectory(&opt, precision, &prob, STEPS);
            let ctx = ctx();
            let model = Model::new(ctx, &prob.spec, &prob.params, precision).unwrap();
            let ws = Workspace::new(ctx, &model, prob.n(), 1, true);
            ws.upload(ctx, &prob.x, &prob.labels, precision);
            let state = GpuBuffer::zeroed(ctx, "state", STATE_WORDS, 4);
            let stats = GpuBuffer::real(ctx, "stats", STATS_WORDS, precision);
            let optimizer = GpuOptimizer::new(&gpu(precision), &model, &opt, None, &state).unwrap();
            let step = train_step(precision, &model, &ws, &optimizer, &state, &stats);
            kernel::submit(ctx, &step, STEPS);
            ctx.wait().unwrap();
            let batched = model.read_params(ctx).unwrap();
            assert!(
                bits(&batched) == bits(&one_by_one[STEPS - 1]),
                "{precision} {}: {STEPS} steps in one submit differ from one submit per step",
                opt.name()
            );
            assert_eq!(state.read_u32(ctx).unwrap()[0] as usize, STEPS);
        }
    }
}

#[test]
fn optimizer_update_folds_its_grid_past_65535_workgroups() {
    // 16,863,002 parameters, four an invocation: the update runs on a 65,535 × 2 grid, and the
    // last quad runs two past the arena. The gradients are written straight into the model's
    // gradient buffer (no forward or backward), two steps of AMSGrad with weight decay, which
    // touches all three state slots and the bias-correction powers.
    let spec = NetSpec::mlp(800, &[21_000], 2, Activation::Relu);
    let numel = spec.layout().total;
    assert!(numel.div_ceil(4) > 65_535 * 64 && numel % 4 == 2);
    let precision = Precision::F32;
    let opt = adam(true, 0.01);
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(77);
    let theta0 = round_to(precision, &normals(&mut rng, numel, 0.05));
    let grads: Vec<Vec<f64>> = (0..2)
        .map(|_| round_to(precision, &normals(&mut rng, numel, 1.0)))
        .collect();

    let ctx = ctx();
    let model = Model::new(ctx, &spec, &theta0, precision).unwrap();
    let state = GpuBuffer::zeroed(ctx, "state", STATE_WORDS, 4);
    let optimizer = GpuOptimizer::new(&gpu(precision), &model, &opt, None, &state).unwrap();
    let step = [optimizer.update().clone()];

    let mut theta = theta0.clone();
    let mut ropt = RefOptimizer::new(&opt, numel);
    for (t, g) in grads.iter().enumerate() {
        model.grads.write_real(ctx, 0, g, precision);
        // A training step's loss kernel counts the step before its update runs.
        state.write_u32(ctx, StateWord::Step as usize, &[t as u32 + 1]);
        kernel::run(ctx, &step).unwrap();
        ropt.step(&mut theta, g);
        let got = model.read_params(ctx).unwrap();
        let fold = 65_535 * 64 * 4;
        check(
            &format!("folded adam step {}: θ − θ0 past the fold", t + 1),
            rel_err(
                &displacement(&got[fold..], &theta0[fold..]),
                &displacement(&theta[fold..], &theta0[fold..]),
            ),
            tol(precision),
        );
        check(
            &format!("folded adam step {}: θ − θ0", t + 1),
            rel_err(&displacement(&got, &theta0), &displacement(&theta, &theta0)),
            tol(precision),
        );
    }
}

/// The device and the `precision` pipelines, as layers and optimizers record with them.
fn gpu(precision: Precision) -> Gpu<'static> {
    Gpu {
        ctx: ctx(),
        kernels: kernels(precision),
    }
}

/// The book's Momentum, Nesterov and Adam (common/optimizer.py), in f64: what a net with the
/// book's conventions must follow.
fn book_trajectory(opt: &Optimizer, prob: &Problem, steps: usize) -> Vec<Vec<f64>> {
    let mlp = prob.reference();
    let mut theta = prob.params.clone();
    let (mut v, mut m) = (vec![0.0; theta.len()], vec![0.0; theta.len()]);
    (1..=steps as i32)
        .map(|t| {
            let (_, g) = mlp.loss_and_grad(&theta, &prob.x, &prob.labels);
            match *opt {
                Optimizer::Sgd {
                    lr,
                    momentum: mu,
                    nesterov,
                    ..
                } => {
                    for i in 0..theta.len() {
                        v[i] = mu * v[i] - lr * g[i];
                        theta[i] += match nesterov {
                            true => mu * mu * v[i] - (1.0 + mu) * lr * g[i],
                            false => v[i],
                        };
                    }
                }
                Optimizer::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    ..
                } => {
                    let lr_t = lr * (1.0 - beta2.powi(t)).sqrt() / (1.0 - beta1.powi(t));
                    for i in 0..theta.len() {
                        m[i] += (1.0 - beta1) * (g[i] - m[i]);
                        v[i] += (1.0 - beta2) * (g[i] * g[i] - v[i]);
                        theta[i] -= lr_t * m[i] / (v[i].sqrt() + eps);
                    }
                }
                _ => unreachable!("the book's forms differ only for momentum, Nesterov and Adam"),
            }
            theta.clone()
        })
        .collect()
}

#[test]
fn book_conventions_update_with_the_books_momentum_nesterov_and_adam() {
    let mut prob = problem(0.0);
    prob.spec.conventions = wgrad::nn::Conventions::Book;
    let adam = Optimizer::Adam {
        lr: 0.01,
        beta1: 0.8,
        beta2: 0.95,
        // Large beside √v, so that where the book puts it shows in the trajectory.
        eps: 1e-2,
        amsgrad: false,
        weight_decay: 0.0,
    };
    let cases = [
        ("momentum 0.8", sgd(0.8, 0.0, false), false),
        ("nesterov 0.7", sgd(0.7, 0.0, true), true),
        ("adam β1 0.8 β2 0.95", adam, true),
    ];
    for (name, opt, differs_from_torch) in cases {
        let want = book_trajectory(&opt, &prob, STEPS);
        let got = gpu_trajectory(&opt, Precision::F64, &prob, STEPS);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            let err = rel_err(
                &displacement(g, &prob.params),
                &displacement(w, &prob.params),
            );
            assert!(
                err < tol(Precision::F64),
                "{name}, step {}: {err:.2e}",
                k + 1
            );
        }
        // Where the book's form is another update than torch.optim's, the test must see it.
        let torch = ref_trajectory(&opt, &prob, STEPS);
        let apart = rel_err(
            &displacement(&torch[STEPS - 1], &prob.params),
            &displacement(&want[STEPS - 1], &prob.params),
        );
        assert_eq!(
            apart > 1e-3,
            differs_from_torch,
            "{name}: book and torch {apart:.1e} apart"
        );
    }
}
