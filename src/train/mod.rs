//! The trainer: uploads the data set once, records whole steps (gather, forward, backward,
//! update, metrics) into few submits, and reads back only at the end of a submit chunk (to see
//! divergence and move the progress bar) and after each epoch's evaluation.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::time::Instant;

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

mod log;
mod metrics;
mod resume;
mod session;
mod signals;

pub use log::{MetricsFile, MetricsRecord, RecordKind, CSV_COLUMNS};
pub use resume::{CheckpointEvery, Progress, RunRecord, RunState};
use session::Session;
pub use signals::Signals;

pub use metrics::{
    copy_loss, eval_metrics, train_metrics, train_step_loss, StateWord, StatsWord, STATE_WORDS,
    STATS_WORDS,
};

use crate::data::{Dataset, GpuDataset, Mnist};
use crate::error::{Error, Result};
use crate::gpu::{kernel, Dispatch, GpuBuffer, GpuContext, Precision};
use crate::nn::{
    init_params, Copies, Init, Kernels, Mode, Model, NamedTensor, NetSpec, Recorder, Workspace,
};
use crate::optim::{GpuOptimizer, Horizon, LrPlan, LrSchedule, Optimizer};

/// Everything a training run needs besides the data and the device. The serialised fields are
/// the run's settings, stored in full-state checkpoints; the skipped ones say how this session
/// starts and is watched.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub spec: NetSpec,
    pub init: Init,
    pub optimizer: Optimizer,
    /// The learning rate over the run (and the momentum, for one-cycle).
    #[serde(default)]
    pub schedule: LrSchedule,
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub precision: Precision,
    /// Start from these parameters (e.g. a checkpoint) instead of drawing them from `init`.
    #[serde(skip)]
    pub initial_params: Option<Vec<f64>>,
    /// BatchNorm running statistics to start from (e.g. from a checkpoint).
    #[serde(skip)]
    pub initial_state: Vec<NamedTensor>,
    /// Continue this run where it stood (a full-state checkpoint) instead of starting one.
    #[serde(skip)]
    pub resume: Option<RunState>,
    /// Hand the run's full state to [`Hooks::on_checkpoint`] this often.
    #[serde(skip)]
    pub checkpoint_every: Option<CheckpointEvery>,
    /// Hand a record of the last this-many steps to [`Hooks::on_steps`].
    #[serde(skip)]
    pub log_every: Option<usize>,
    /// Rows per evaluation batch.
    pub eval_batch: usize,
    /// Training steps recorded per submit; the host looks at the GPU only between submits.
    pub steps_per_submit: usize,
    /// Hold out this fraction of the training set, per class, for validation (0: none).
    #[serde(default)]
    pub val_fraction: f64,
    /// With a validation set, evaluate the test set after every epoch too, not only at the end.
    #[serde(default)]
    pub eval_test_every_epoch: bool,
    /// Stop after this many epochs without a lower validation loss.
    #[serde(default)]
    pub patience: Option<usize>,
    /// Stop after this many steps (the last epoch may be cut short).
    #[serde(skip)]
    pub max_steps: Option<usize>,
    /// Show a progress bar on stderr (only drawn when stderr is a terminal) and epoch lines.
    #[serde(skip)]
    pub verbose: bool,
    /// When set (by a Ctrl-C or SIGTERM handler), training stops after the submit in flight,
    /// evaluates, and returns what it has, marked interrupted.
    #[serde(skip)]
    pub interrupt: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Default for TrainConfig {
    /// The bare `wgrad train`: 784-256-128-10 ReLU with BatchNorm (He init), SGD with momentum
    /// 0.9 and lr 0.1, batch 100, 20 epochs.
    fn default() -> Self {
        let spec = NetSpec::mlp(784, &[256, 128], 10, crate::nn::Activation::Relu);
        TrainConfig {
            spec: spec.with_batchnorm(),
            init: Init::He,
            optimizer: Optimizer::from_name("momentum", Some(0.1)).expect("valid defaults"),
            schedule: LrSchedule::default(),
            epochs: 20,
            batch_size: 100,
            seed: 42,
            precision: Precision::F32,
            initial_params: None,
            initial_state: Vec::new(),
            resume: None,
            checkpoint_every: None,
            log_every: None,
            eval_batch: 1000,
            val_fraction: 0.0,
            eval_test_every_epoch: false,
            patience: None,
            steps_per_submit: 40,
            max_steps: None,
            interrupt: None,
            verbose: false,
        }
    }
}

impl TrainConfig {
    /// The net to train: its starting parameters (given, or drawn from `init`), its starting
    /// state, and dropout masks seeded from `seed`. A net too large for the adapter at batches of
    /// `rows` is refused before the parameters are drawn (not left to abort the allocator).
    fn model(&self, ctx: &GpuContext, rows: usize) -> Result<Model> {
        crate::nn::model::check_fits(ctx, &self.spec, rows, self.precision)?;
        let (params, state) = match (&self.resume, &self.initial_params) {
            (Some(run), _) => (run.params.clone(), &run.state),
            (None, Some(p)) => (p.clone(), &self.initial_state),
            (None, None) => (
                init_params(&self.spec, self.init, self.seed),
                &self.initial_state,
            ),
        };
        let mut model = Model::new(ctx, &self.spec, &params, self.precision)?;
        model.dropout_seed = self.seed as u32 ^ (self.seed >> 32) as u32;
        model.write_state(ctx, state);
        Ok(model)
    }

    /// The training set split into what the run trains on and its validation set (None
    /// without `val_fraction`).
    pub fn split<'d>(&self, train: &'d Dataset) -> (Cow<'d, Dataset>, Option<Dataset>) {
        if self.val_fraction == 0.0 {
            return (Cow::Borrowed(train), None);
        }
        let (rest, val) = train.split_stratified(self.val_fraction, self.seed);
        (Cow::Owned(rest), Some(val))
    }

    pub fn validate(&self, train: &Dataset) -> Result<()> {
        let (train, val) = self.split(train);
        self.validate_parts(&train, val.as_ref())
    }

    /// [`TrainConfig::validate`] on the training set already split by [`TrainConfig::split`].
    fn validate_parts(&self, train: &Dataset, val: Option<&Dataset>) -> Result<()> {
        self.spec.validate()?;
        self.optimizer.validate()?;
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(Error::InvalidArgument(format!(
                "--val-fraction must lie in [0, 1), got {}",
                self.val_fraction
            )));
        }
        if self.patience.is_some() && self.val_fraction == 0.0 {
            return Err(Error::InvalidArgument(
                "--patience watches the validation loss: give --val-fraction too (e.g. 0.1)".into(),
            ));
        }
        if self.patience == Some(0) {
            return Err(Error::InvalidArgument(
                "--patience must be at least 1 epoch".into(),
            ));
        }
        if val.is_some_and(|v| v.is_empty()) {
            return Err(Error::InvalidArgument(format!(
                "--val-fraction {} holds out no image of the {}: use a larger fraction",
                self.val_fraction,
                train.len()
            )));
        }
        if self.batch_size == 0 {
            return Err(Error::InvalidArgument(
                "batch size must be at least 1 (--batch-size)".into(),
            ));
        }
        if self.epochs == 0 {
            return Err(Error::InvalidArgument(
                "epochs must be at least 1 (--epochs)".into(),
            ));
        }
        if self.eval_batch == 0 || self.steps_per_submit == 0 {
            return Err(Error::InvalidArgument(
                "eval batch and steps per submit must be positive".into(),
            ));
        }
        let (layers, _) = self.spec.resolve()?;
        crate::nn::model::check_batch(&layers, self.batch_size)?;
        self.spec.check_data(train)?;
        if self.batch_size > train.len() {
            return Err(Error::InvalidArgument(format!(
                "batch size {} is larger than the training set ({} images): use --batch-size {} or less",
                self.batch_size,
                train.len(),
                train.len()
            )));
        }
        self.schedule.validate(&self.optimizer, self.horizon(train))
    }

    /// The run's steps over `train` (its part after any validation split). drop_last: every
    /// step sees a full batch; reshuffling each epoch covers the rest.
    fn horizon(&self, train: &Dataset) -> Horizon {
        let steps_per_epoch = train.len() / self.batch_size;
        let total_steps =
            (steps_per_epoch.saturating_mul(self.epochs)).min(self.max_steps.unwrap_or(usize::MAX));
        Horizon {
            steps_per_epoch,
            total_steps,
        }
    }

    /// The schedule over the run's steps on `train`.
    fn lr_plan(&self, train: &Dataset) -> LrPlan {
        LrPlan {
            schedule: self.schedule,
            optimizer: self.optimizer.clone(),
            horizon: self.horizon(train),
        }
    }
}

/// One epoch's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: usize,
    /// Steps the run had taken at the epoch's end.
    pub step: u64,
    /// The learning rate of the epoch's last step.
    pub lr: f64,
    /// Mean training loss over the epoch's steps (with the L2 term).
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// On the validation set, when the run holds one out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_accuracy: Option<f64>,
    /// On the test set, where it is evaluated: every epoch without a validation set, else only
    /// with `eval_test_every_epoch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
    /// The epoch's seconds, its evaluation included.
    pub seconds: f64,
    /// Training samples a second over the epoch's steps (evaluation excluded).
    pub samples_per_second: f64,
}

/// What a run produced.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub test_accuracy: f64,
    pub train_accuracy: f64,
    /// Mean training loss of the last epoch.
    pub final_loss: f64,
    pub test_loss: f64,
    pub epochs: usize,
    /// Steps the run has taken, counting those before a resume.
    pub steps: u64,
    /// Seconds of this session.
    pub seconds: f64,
    /// Seconds spent in training steps (evaluation excluded), over every session of the run.
    pub train_seconds: f64,
    /// Of this session's steps.
    pub samples_per_second: f64,
    /// Kernel launches in the recorded training step (those whose grid is empty record
    /// nothing and are not counted).
    pub dispatches_per_step: usize,
    /// Training stopped early at an interrupt (`steps` says where).
    pub interrupted: bool,
    /// The last epoch's validation figures, when the run holds a validation set out.
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    /// The epoch of the lowest validation loss.
    pub best_epoch: Option<usize>,
    /// `patience` epochs passed without a lower validation loss, so the run stopped there.
    pub stopped_early: bool,
    /// Every epoch of the run, a resumed run's earlier ones included; an interrupted epoch's
    /// figures come last.
    pub history: Vec<EpochReport>,
    /// Where the run ended: what a full-state checkpoint stores.
    #[serde(skip)]
    pub run: RunState,
}

impl EpochReport {
    /// The epoch's line on the terminal.
    fn line(&self, epochs: usize) -> String {
        let mut line = format!(
            "epoch {:>3}/{epochs}  loss {:.4}  train acc {:.4}",
            self.epoch, self.train_loss, self.train_accuracy
        );
        if let (Some(loss), Some(accuracy)) = (self.val_loss, self.val_accuracy) {
            line += &format!("  val loss {loss:.4}  val acc {accuracy:.4}");
        }
        if let Some(accuracy) = self.test_accuracy {
            line += &format!("  test acc {accuracy:.4}");
        }
        line + &format!("  ({:.2} s)", self.seconds)
    }
}

/// Accuracy and mean loss of `params` on a data set.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
}

/// Forward passes over a whole data set in batches, summing loss and correct counts on the GPU.
pub struct Evaluator {
    ws: Workspace,
    state: GpuBuffer,
    stats: GpuBuffer,
    precision: Precision,
}

impl Evaluator {
    pub fn new(ctx: &GpuContext, model: &Model, rows: usize) -> Evaluator {
        Evaluator {
            ws: Workspace::new(ctx, model, rows, 1, false),
            state: GpuBuffer::zeroed(ctx, "eval_state", STATE_WORDS, 4),
            stats: GpuBuffer::real(ctx, "eval_stats", STATS_WORDS, model.precision),
            precision: model.precision,
        }
    }

    /// The dispatches of one evaluation batch of `data` (gather at the eval cursor, forward,
    /// metrics), recorded once per data set and replayed.
    pub fn batch_dispatches(&self, rec: &Recorder, data: &GpuDataset) -> Vec<Dispatch> {
        let gpu = rec.gpu();
        let batch = (&self.ws.x, &self.ws.labels);
        let cursor = StateWord::EvalBatch as u32;
        let mut d = vec![data.gather(&gpu, batch, &self.state, cursor)];
        d.extend(rec.forward(&self.ws, &Copies::Single));
        d.push(eval_metrics(&gpu, &self.ws, &self.stats, &self.state));
        d
    }

    pub fn run(
        &self,
        ctx: &GpuContext,
        dispatches: &[Dispatch],
        data: &GpuDataset,
    ) -> Result<Evaluation> {
        self.state.write_u32(ctx, 0, &[0; STATE_WORDS]);
        self.stats
            .write_real(ctx, 0, &[0.0; STATS_WORDS], self.precision);
        kernel::submit(ctx, dispatches, data.len.div_ceil(self.ws.rows));
        let stats = self.stats.read_real(ctx, self.precision)?;
        let rows = stats[StatsWord::EvalRows as usize].max(1.0);
        Ok(Evaluation {
            loss: stats[StatsWord::EvalLoss as usize] / rows,
            accuracy: stats[StatsWord::EvalCorrect as usize] / rows,
        })
    }
}

/// A data set to evaluate: its evaluation dispatches (recorded once) and the data on the GPU.
pub(crate) type EvalSet<'a> = (&'a [Dispatch], &'a GpuDataset);

/// What an epoch is evaluated on.
#[derive(Clone, Copy)]
pub(crate) struct EvalSets<'a> {
    train: EvalSet<'a>,
    val: Option<EvalSet<'a>>,
    /// The test set, evaluated after every epoch only when `test_every_epoch` says so.
    test: EvalSet<'a>,
    test_every_epoch: bool,
}

impl Evaluator {
    /// Each image's class scores, `classes` to an image, image after image: the evaluation
    /// batches one submit each, with a readback of the logits after each.
    pub fn scores(
        &self,
        ctx: &GpuContext,
        dispatches: &[Dispatch],
        data: &GpuDataset,
        classes: usize,
    ) -> Result<Vec<f64>> {
        self.state.write_u32(ctx, 0, &[0; STATE_WORDS]);
        let logits = self.ws.out.last().expect("a net has layers");
        let mut scores = Vec::with_capacity(data.len * classes);
        for batch in 0..data.len.div_ceil(self.ws.rows) {
            kernel::submit(ctx, dispatches, 1);
            let rows = self.ws.rows.min(data.len - batch * self.ws.rows);
            scores.extend(logits.read_real_range(ctx, self.precision, 0..rows * classes)?);
        }
        Ok(scores)
    }

    /// Epoch `epoch`'s figures: its steps' mean loss, and accuracy and loss on the training set
    /// and the validation and test sets where they are evaluated (`seconds` is left for the
    /// caller).
    fn epoch(
        &self,
        ctx: &GpuContext,
        sets: &EvalSets,
        epoch: usize,
        train_loss: f64,
    ) -> Result<EpochReport> {
        let run = |(dispatches, data): EvalSet| self.run(ctx, dispatches, data);
        let train_eval = run(sets.train)?;
        let val = sets.val.map(run).transpose()?;
        let test = sets.test_every_epoch.then(|| run(sets.test)).transpose()?;
        Ok(EpochReport {
            epoch,
            train_loss,
            train_accuracy: train_eval.accuracy,
            val_loss: val.map(|e| e.loss),
            val_accuracy: val.map(|e| e.accuracy),
            test_loss: test.map(|e| e.loss),
            test_accuracy: test.map(|e| e.accuracy),
            ..Default::default()
        })
    }
}

/// The epoch of the lowest validation loss in `history` (the first, on a tie: an equal loss is
/// no improvement).
pub fn best_epoch(history: &[EpochReport]) -> Option<usize> {
    let mut best: Option<&EpochReport> = None;
    for e in history {
        if let Some(loss) = e.val_loss {
            if best.is_none_or(|b| b.val_loss.is_some_and(|bl| loss < bl)) {
                best = Some(e);
            }
        }
    }
    best.map(|e| e.epoch)
}

/// One training step, recorded once and replayed: gather the batch at the cursor, then
/// [`batch_step`] on it.
pub fn step_dispatches(
    rec: &Recorder,
    data: &GpuDataset,
    ws: &Workspace,
    buffers: (&GpuBuffer, &GpuBuffer, &GpuBuffer),
    optimizer: &GpuOptimizer,
) -> Vec<Dispatch> {
    let cursor = StateWord::Batch as u32;
    let mut step = vec![data.gather(&rec.gpu(), (&ws.x, &ws.labels), buffers.0, cursor)];
    step.extend(batch_step(rec, ws, buffers, optimizer));
    step
}

/// A training step on the batch in `ws`: the L2 penalty, forward, loss and metrics (the step's
/// loss kept in `step_losses` too) with the step counter moved on, backward, and the update.
pub fn batch_step(
    rec: &Recorder,
    ws: &Workspace,
    (state, stats, step_losses): (&GpuBuffer, &GpuBuffer, &GpuBuffer),
    optimizer: &GpuOptimizer,
) -> Vec<Dispatch> {
    let mut step = rec.l2_penalty(stats);
    // Dropout draws a new mask each step from the GPU step counter (state word 0).
    step.extend(rec.forward_logits(ws, Mode::Train, state));
    let classes = rec.model.spec.output;
    step.extend(train_step_loss(
        &rec.gpu(),
        ws,
        classes,
        (stats, state),
        step_losses,
    ));
    // The update adds the L2 term's gradient.
    step.extend(rec.layer_gradients(ws));
    step.push(optimizer.update().clone());
    step
}

/// Fisher–Yates from our own seeded stream, so the order is fixed by this code alone.
fn shuffle(rng: &mut rand_chacha::ChaCha8Rng, order: &mut [u32]) {
    use rand::RngExt;
    for i in (1..order.len()).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
}

/// Receives a run's full state; an error stops the run.
pub type OnCheckpoint<'a> = &'a mut dyn FnMut(&RunState) -> Result<()>;

/// Receives the losses of the steps a submit ran, in order.
pub type OnStepLosses<'a> = &'a mut dyn FnMut(&[f64]);

/// What a caller sees of a run as it goes.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Each epoch's figures as they come.
    pub on_epoch: Option<&'a mut dyn FnMut(&EpochReport)>,
    /// The run's full state at each [`TrainConfig::checkpoint_every`]; an error stops the run.
    pub on_checkpoint: Option<OnCheckpoint<'a>>,
    /// A record of the last [`TrainConfig::log_every`] steps, each time that many are done.
    pub on_steps: Option<&'a mut dyn FnMut(&MetricsRecord)>,
    /// Each step's loss (its batch's, before its update, with the L2 term), handed over after
    /// each submit for the steps it ran: the GPU keeps them, so no step waits for a readback.
    pub on_step_losses: Option<OnStepLosses<'a>>,
    /// The run's full state after each epoch that lowers the validation loss.
    pub on_best: Option<OnCheckpoint<'a>>,
    /// The recorded training step, once the run and its report are done (so that what it runs,
    /// such as timing each dispatch alone, changes nothing the report holds).
    pub after_run: Option<AfterRun<'a>>,
}

/// Receives the recorded training step after a run; an error fails the run.
pub type AfterRun<'a> = &'a mut dyn FnMut(&[Dispatch]) -> Result<()>;

/// Trains a net on `data.train`, evaluating on both sets after every epoch. `on_epoch` sees each
/// epoch's figures as they come.
pub fn train(
    ctx: &GpuContext,
    data: &Mnist,
    config: &TrainConfig,
    on_epoch: Option<&mut dyn FnMut(&EpochReport)>,
) -> Result<TrainReport> {
    let hooks = Hooks {
        on_epoch,
        ..Default::default()
    };
    train_with(ctx, data, config, hooks)
}

/// [`train`], continuing `config.resume` if given, and handing out step records and full-state
/// checkpoints as it goes.
pub fn train_with(
    ctx: &GpuContext,
    data: &Mnist,
    config: &TrainConfig,
    mut hooks: Hooks,
) -> Result<TrainReport> {
    let start = Instant::now();
    let precision = config.precision;
    let (train_data, val_data) = config.split(&data.train);
    config.validate_parts(&train_data, val_data.as_ref())?;
    let eval_rows = config.eval_batch.min(data.train.len().max(data.test.len()));
    let kernels = Kernels::with_loss(ctx, precision, config.spec.conventions.cross_entropy())?;
    let model = config.model(ctx, config.batch_size.max(eval_rows))?;
    let rec = Recorder {
        ctx,
        kernels: &kernels,
        model: &model,
    };
    let (train_set, test_set) = (
        GpuDataset::new(ctx, &train_data),
        GpuDataset::new(ctx, &data.test),
    );
    let val_set = val_data.as_ref().map(|v| GpuDataset::new(ctx, v));
    let ws = Workspace::new(ctx, &model, config.batch_size, 1, true);
    let state = GpuBuffer::zeroed(ctx, "state", STATE_WORDS, 4);
    let stats = GpuBuffer::real(ctx, "stats", STATS_WORDS, precision);
    // A submit's steps' losses, read once after it when a hook wants them.
    let step_losses = GpuBuffer::real(ctx, "step_losses", config.steps_per_submit, precision);
    let lr_plan = config.lr_plan(&train_data);
    let schedule = lr_plan.table();
    let optimizer = GpuOptimizer::new(
        &rec.gpu(),
        &model,
        &config.optimizer,
        schedule.as_deref(),
        &state,
    )?;
    let buffers = (&state, &stats, &step_losses);
    let step = step_dispatches(&rec, &train_set, &ws, buffers, &optimizer);
    let evaluator = Evaluator::new(ctx, &model, eval_rows);
    let eval_train = evaluator.batch_dispatches(&rec, &train_set);
    let eval_test = evaluator.batch_dispatches(&rec, &test_set);
    let eval_val = val_set
        .as_ref()
        .map(|v| (evaluator.batch_dispatches(&rec, v), v));
    let sets = EvalSets {
        train: (&eval_train, &train_set),
        val: eval_val.as_ref().map(|(d, v)| (&d[..], *v)),
        test: (&eval_test, &test_set),
        test_every_epoch: val_set.is_none() || config.eval_test_every_epoch,
    };

    let Horizon {
        steps_per_epoch,
        total_steps,
    } = lr_plan.horizon;
    let total_steps = total_steps as u64;
    let session = Session {
        ctx,
        config,
        lr_plan,
        model: &model,
        optimizer: &optimizer,
        state: &state,
        stats: &stats,
        step_losses: &step_losses,
        step: &step,
        evaluator: &evaluator,
        sets,
        bar: progress_bar(config.verbose, total_steps),
    };
    let mut progress = match &config.resume {
        Some(resumed) => session.restore(resumed, steps_per_epoch, total_steps)?,
        None => Progress::default(),
    };
    let began = Began {
        at: start,
        steps: progress.steps,
        train_seconds: progress.train_seconds,
    };
    session.bar.set_position(progress.steps);
    ctx.wait()?;
    let ending = run_epochs(
        &session,
        &train_set,
        (steps_per_epoch, total_steps),
        &mut progress,
        &mut hooks,
    )?;
    session.bar.finish_and_clear();
    let report = report(&session, progress, ending, total_steps, began)?;
    if let Some(look) = hooks.after_run {
        look(&step)?;
    }
    Ok(report)
}

/// Where this session of a run started: its clock, and the run's steps and training seconds.
struct Began {
    at: Instant,
    steps: u64,
    train_seconds: f64,
}

/// How [`run_epochs`] ended.
struct Ending {
    /// The figures of an epoch cut short (by an interrupt or --max-steps).
    unfinished: Option<EpochReport>,
    /// Early stopping ended the run.
    stopped_early: bool,
}

/// The run's report: its figures, the test set's on the final weights, and its state.
fn report(
    session: &Session,
    progress: Progress,
    ending: Ending,
    total_steps: u64,
    began: Began,
) -> Result<TrainReport> {
    let run = session.read(&progress)?;
    let best_epoch = best_epoch(&progress.history);
    let mut history = progress.history;
    history.extend(ending.unfinished);
    let last = history.last().expect("at least one epoch");
    let test = session.final_test(last)?;
    let session_steps = progress.steps - began.steps;
    let session_train_seconds = progress.train_seconds - began.train_seconds;
    let batch = session.config.batch_size as f64;
    Ok(TrainReport {
        test_accuracy: test.accuracy,
        train_accuracy: last.train_accuracy,
        final_loss: last.train_loss,
        test_loss: test.loss,
        val_loss: last.val_loss,
        val_accuracy: last.val_accuracy,
        best_epoch,
        stopped_early: ending.stopped_early,
        epochs: history.len(),
        steps: progress.steps,
        seconds: began.at.elapsed().as_secs_f64(),
        train_seconds: progress.train_seconds,
        samples_per_second: session_steps as f64 * batch / session_train_seconds,
        dispatches_per_step: (session.step.iter())
            .filter(|d| !d.workgroups().contains(&0))
            .count(),
        interrupted: !ending.stopped_early && progress.steps < total_steps,
        history,
        run,
    })
}

/// The epochs of a run from where `progress` stands, until the last, an interrupt, or early
/// stopping.
fn run_epochs(
    session: &Session,
    train_set: &GpuDataset,
    (steps_per_epoch, total_steps): (usize, u64),
    progress: &mut Progress,
    hooks: &mut Hooks,
) -> Result<Ending> {
    let config = session.config;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed ^ 0x5eed_0fda_7a00);
    let mut order: Vec<u32> = (0..train_set.len as u32).collect();
    // --max-steps may end training before `config.epochs` (the last epoch cut short).
    let epochs = (total_steps as usize).div_ceil(steps_per_epoch);
    for epoch in 1..=epochs {
        // Every epoch draws its shuffle, those a resumed run has done too, so that the order
        // and the stream are where the run left them.
        shuffle(&mut rng, &mut order);
        if epoch <= progress.epochs_done {
            continue;
        }
        // (A run stopped before it has figures to report takes a submit of steps first.)
        let reported = !progress.history.is_empty();
        if reported && progress.steps_into_epoch == 0 && session.interrupted() {
            break;
        }
        train_set.index.write_u32(session.ctx, 0, &order);
        let this_epoch = steps_per_epoch.min(total_steps as usize - (epoch - 1) * steps_per_epoch);
        let (report, reached) = session.epoch(epoch, this_epoch, progress, hooks)?;
        // The hook first: a metrics file has the epoch's record once its line is on screen.
        if let Some(f) = hooks.on_epoch.as_deref_mut() {
            f(&report);
        }
        if config.verbose {
            session.bar.suspend(|| eprintln!("{}", report.line(epochs)));
        }
        // An interrupted epoch, or one --max-steps cut short, is reported but not finished.
        if !reached || progress.steps_into_epoch < steps_per_epoch {
            return Ok(Ending {
                unfinished: Some(report),
                stopped_early: false,
            });
        }
        if session.finish_epoch(epoch, report, progress, hooks)? {
            return Ok(Ending {
                unfinished: None,
                stopped_early: true,
            });
        }
    }
    Ok(Ending {
        unfinished: None,
        stopped_early: false,
    })
}

/// Evaluates `params` on a data set.
pub fn evaluate(
    ctx: &GpuContext,
    spec: &NetSpec,
    params: &[f64],
    data: &Dataset,
    precision: Precision,
) -> Result<Evaluation> {
    evaluate_with_state(ctx, spec, params, &[], data, precision)
}

/// [`evaluate`] with BatchNorm running statistics (from a [`RunState`] or a checkpoint).
pub fn evaluate_with_state(
    ctx: &GpuContext,
    spec: &NetSpec,
    params: &[f64],
    state: &[NamedTensor],
    data: &Dataset,
    precision: Precision,
) -> Result<Evaluation> {
    with_evaluator(ctx, (spec, params, state), data, precision, |e, d, set| {
        e.run(ctx, d, set)
    })
}

/// Puts a net (parameters and BatchNorm statistics) and `data` on the GPU, records the
/// evaluation batch once, and hands the evaluator, its dispatches and the data to `f`.
pub(crate) fn with_evaluator<T>(
    ctx: &GpuContext,
    (spec, params, state): (&NetSpec, &[f64], &[NamedTensor]),
    data: &Dataset,
    precision: Precision,
    f: impl FnOnce(&Evaluator, &[Dispatch], &GpuDataset) -> Result<T>,
) -> Result<T> {
    let kernels = Kernels::with_loss(ctx, precision, spec.conventions.cross_entropy())?;
    let model = Model::new(ctx, spec, params, precision)?;
    model.write_state(ctx, state);
    let rec = Recorder {
        ctx,
        kernels: &kernels,
        model: &model,
    };
    let set = GpuDataset::new(ctx, data);
    let evaluator = Evaluator::new(ctx, &model, 1000.min(data.len().max(1)));
    let dispatches = evaluator.batch_dispatches(&rec, &set);
    f(&evaluator, &dispatches, &set)
}

fn progress_bar(verbose: bool, steps: u64) -> indicatif::ProgressBar {
    if !verbose || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {per_sec}  eta {eta}")
            .expect("valid template"),
    );
    bar
}
