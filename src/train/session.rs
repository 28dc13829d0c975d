//! A run on the GPU between its setup and its end: the recorded step submitted in chunks, the
//! stops for step records and periodic checkpoints, interrupts, and reading the run's state back
//! or putting a stored one in place. The host looks at the GPU only between submits.

use std::time::Instant;

use super::{
    kernel, EpochReport, Evaluator, Hooks, MetricsRecord, Progress, RecordKind, RunState,
    StateWord, StatsWord, TrainConfig, STATE_WORDS,
};
use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuBuffer, GpuContext};
use crate::nn::Model;
use crate::optim::{GpuOptimizer, LrPlan};

pub(super) struct Session<'a> {
    pub ctx: &'a GpuContext,
    pub config: &'a TrainConfig,
    /// Each step's learning rate, for the records (the GPU holds its own table).
    pub lr_plan: LrPlan,
    pub model: &'a Model,
    pub optimizer: &'a GpuOptimizer,
    /// The step counter, batch cursor and divergence flag (u32 words).
    pub state: &'a GpuBuffer,
    /// The epoch's running sums (reals).
    pub stats: &'a GpuBuffer,
    /// The last `steps_per_submit` steps' losses, step t at t % steps_per_submit.
    pub step_losses: &'a GpuBuffer,
    /// One training step, recorded once.
    pub step: &'a [Dispatch],
    pub evaluator: &'a Evaluator,
    pub sets: super::EvalSets<'a>,
    pub bar: indicatif::ProgressBar,
}

/// Where the last step record left the epoch's running sums.
struct Window {
    loss_sum: f64,
    correct_sum: f64,
    steps: u64,
    at: Instant,
}

impl Session<'_> {
    /// The learning rate of the last step taken.
    fn last_lr(&self, progress: &Progress) -> f64 {
        let step = progress.steps.saturating_sub(1);
        self.lr_plan.lr(step as usize)
    }

    /// Trains epoch `epoch` on until `end` of its steps are done and evaluates it. False if an
    /// interrupt stopped it first (the figures are then of the steps done).
    pub fn epoch(
        &self,
        epoch: usize,
        end: usize,
        progress: &mut Progress,
        hooks: &mut Hooks,
    ) -> Result<(EpochReport, bool)> {
        let (precision, start) = (self.config.precision, Instant::now());
        if progress.steps_into_epoch == 0 {
            self.state
                .write_u32(self.ctx, StateWord::Batch as usize, &[0]);
            // The epoch's sums (loss, last loss, correct) start again.
            self.stats.write_real(self.ctx, 0, &[0.0; 3], precision);
        }
        let before = progress.steps;
        let reached = self.until(epoch, end, progress, hooks);
        let train_seconds = start.elapsed().as_secs_f64();
        progress.train_seconds += train_seconds;
        let reached = reached.map_err(|e| match e {
            Error::Gpu(message) => Error::Gpu(format!(
                "{message} (training had reached step {}; a periodic checkpoint, if any was \
                 asked for, holds the run up to its step)",
                progress.steps
            )),
            other => other,
        })?;
        let loss_sum = self.stats.read_real(self.ctx, precision)?[StatsWord::LossSum as usize];
        let train_loss = loss_sum / progress.steps_into_epoch as f64;
        let mut report = self
            .evaluator
            .epoch(self.ctx, &self.sets, epoch, train_loss)?;
        report.step = progress.steps;
        report.lr = self.last_lr(progress);
        report.seconds = start.elapsed().as_secs_f64();
        let samples = (progress.steps - before) as f64 * self.config.batch_size as f64;
        report.samples_per_second = samples / train_seconds;
        Ok((report, reached))
    }

    /// Books a finished epoch into `progress`, hands out its periodic and best checkpoints, and
    /// says whether early stopping ends the run here.
    pub fn finish_epoch(
        &self,
        epoch: usize,
        report: EpochReport,
        progress: &mut Progress,
        hooks: &mut Hooks,
    ) -> Result<bool> {
        progress.history.push(report);
        progress.epochs_done = epoch;
        progress.steps_into_epoch = 0;
        progress.epoch_sums = [0.0; 3];
        let due = self.config.checkpoint_every;
        if due.is_some_and(|every| every.due_after_epoch(epoch, progress.steps)) {
            self.checkpoint(progress, hooks)?;
        }
        let best = super::best_epoch(&progress.history);
        if best == Some(epoch) {
            if let Some(save) = hooks.on_best.as_deref_mut() {
                save(&self.read(progress)?)?;
            }
        }
        Ok(match (self.config.patience, best) {
            (Some(patience), Some(best)) => epoch - best >= patience,
            _ => false,
        })
    }

    /// Runs the epoch on until `progress.steps_into_epoch` is `end`, stopping for each step
    /// record and periodic step checkpoint on the way. False if an interrupt stopped it first.
    fn until(
        &self,
        epoch: usize,
        end: usize,
        progress: &mut Progress,
        hooks: &mut Hooks,
    ) -> Result<bool> {
        let config = self.config;
        let [loss_sum, _, correct_sum] = progress.epoch_sums;
        let mut window = Window {
            loss_sum: if progress.steps_into_epoch > 0 {
                loss_sum
            } else {
                0.0
            },
            correct_sum: if progress.steps_into_epoch > 0 {
                correct_sum
            } else {
                0.0
            },
            steps: progress.steps,
            at: Instant::now(),
        };
        while progress.steps_into_epoch < end {
            if progress.steps_into_epoch > 0 && self.interrupted() {
                return Ok(false);
            }
            let left = end - progress.steps_into_epoch;
            let every = config.checkpoint_every;
            let to_checkpoint = every.and_then(|e| e.steps_to_next(progress.steps));
            let to_log = (config.log_every).map(|n| n - (progress.steps % n as u64) as usize);
            let count = [Some(left), to_checkpoint, to_log]
                .into_iter()
                .flatten()
                .min();
            let count = count.expect("left is always there");
            let done = self.submit_steps(count, hooks)?;
            progress.steps += done as u64;
            progress.steps_into_epoch += done;
            if done < count {
                return Ok(false);
            }
            if to_log == Some(count) {
                self.log_steps(epoch, progress, &mut window, hooks)?;
            }
            // A checkpoint at the epoch's end waits for the epoch's figures.
            if to_checkpoint == Some(count) && count < left {
                self.checkpoint(progress, hooks)?;
            }
        }
        Ok(true)
    }

    /// Hands [`Hooks::on_steps`] the figures of the steps since the last record.
    fn log_steps(
        &self,
        epoch: usize,
        progress: &Progress,
        window: &mut Window,
        hooks: &mut Hooks,
    ) -> Result<()> {
        let Some(on_steps) = hooks.on_steps.as_deref_mut() else {
            return Ok(());
        };
        let sums = self.stats.read_real(self.ctx, self.config.precision)?;
        let (loss_sum, correct_sum) = (
            sums[StatsWord::LossSum as usize],
            sums[StatsWord::CorrectSum as usize],
        );
        let steps = (progress.steps - window.steps) as f64;
        let samples = steps * self.config.batch_size as f64;
        let seconds = window.at.elapsed().as_secs_f64();
        on_steps(&MetricsRecord {
            kind: RecordKind::Step,
            epoch,
            step: progress.steps,
            lr: self.last_lr(progress),
            train_loss: (loss_sum - window.loss_sum) / steps,
            train_accuracy: Some((correct_sum - window.correct_sum) / samples),
            seconds,
            samples_per_second: samples / seconds,
            ..Default::default()
        });
        *window = Window {
            loss_sum,
            correct_sum,
            steps: progress.steps,
            at: Instant::now(),
        };
        Ok(())
    }

    /// Runs `count` steps, `steps_per_submit` to a submit, reading the state words after each
    /// submit to stop at divergence and to move the progress bar. Fewer if an interrupt came.
    /// Hands [`Hooks::on_step_losses`] the submit's step losses.
    fn submit_steps(&self, count: usize, hooks: &mut Hooks) -> Result<usize> {
        let mut done = 0;
        // An interrupt is seen after a submit, so every call makes progress.
        while done < count && (done == 0 || !self.interrupted()) {
            let chunk = self.config.steps_per_submit.min(count - done);
            kernel::submit(self.ctx, self.step, chunk);
            done += chunk;
            let words = self.state.read_u32(self.ctx)?;
            if let Some(on_step_losses) = hooks.on_step_losses.as_deref_mut() {
                let kept = self
                    .step_losses
                    .read_real(self.ctx, self.config.precision)?;
                let end = words[StateWord::Step as usize] as usize;
                let losses: Vec<f64> = (end - chunk..end).map(|t| kept[t % kept.len()]).collect();
                on_step_losses(&losses);
            }
            let diverged = words[StateWord::Diverged as usize];
            if diverged != 0 {
                self.bar.finish_and_clear();
                let stats = self.stats.read_real(self.ctx, self.config.precision)?;
                return Err(Error::Diverged {
                    step: u64::from(diverged),
                    value: format!("{}", stats[StatsWord::DivergedLoss as usize]),
                });
            }
            self.bar
                .set_position(u64::from(words[StateWord::Step as usize]));
        }
        Ok(done)
    }

    /// The test set's figures on the final weights: the last epoch's, when it evaluated the
    /// test set; else (with a validation set) the one evaluation of it, now.
    pub fn final_test(&self, last: &EpochReport) -> Result<super::Evaluation> {
        match (last.test_loss, last.test_accuracy) {
            (Some(loss), Some(accuracy)) => Ok(super::Evaluation { loss, accuracy }),
            _ => {
                let (dispatches, data) = self.sets.test;
                self.evaluator.run(self.ctx, dispatches, data)
            }
        }
    }

    /// Whether an interrupt (a Ctrl-C or SIGTERM handler's flag) has come.
    pub fn interrupted(&self) -> bool {
        let flag = self.config.interrupt.as_deref();
        flag.is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// The run's full state after the last submit.
    pub fn read(&self, progress: &Progress) -> Result<RunState> {
        let mut progress = progress.clone();
        if progress.steps_into_epoch > 0 {
            let sums = self.stats.read_real(self.ctx, self.config.precision)?;
            progress.epoch_sums = [
                sums[StatsWord::LossSum as usize],
                sums[StatsWord::LastLoss as usize],
                sums[StatsWord::CorrectSum as usize],
            ];
        }
        Ok(RunState {
            progress,
            params: self.model.read_params(self.ctx)?,
            state: self.model.read_state(self.ctx)?,
            optimizer: self.optimizer.read_state(self.ctx)?,
        })
    }

    pub fn checkpoint(&self, progress: &Progress, hooks: &mut Hooks) -> Result<()> {
        match hooks.on_checkpoint.as_deref_mut() {
            Some(save) => save(&self.read(progress)?),
            None => Ok(()),
        }
    }

    /// Puts a stored run's optimizer state, step counter, batch cursor and epoch sums back on
    /// the GPU (the parameters and statistics went in with the model), and returns its progress.
    pub fn restore(
        &self,
        run: &RunState,
        steps_per_epoch: usize,
        total_steps: u64,
    ) -> Result<Progress> {
        let p = &run.progress;
        p.check(steps_per_epoch).map_err(|e| {
            Error::InvalidArgument(format!("the run to resume cannot be continued: {e}"))
        })?;
        if p.steps >= total_steps {
            return Err(Error::InvalidArgument(format!(
                "the run has already taken {} steps ({} epochs); ask for more epochs (--epochs {} \
                 or more) to train on",
                p.steps,
                p.epochs_done,
                p.epochs_done + 1
            )));
        }
        self.optimizer.write_state(self.ctx, &run.optimizer)?;
        let mut words = [0u32; STATE_WORDS];
        words[StateWord::Step as usize] = p.steps as u32;
        words[StateWord::Batch as usize] = p.steps_into_epoch as u32;
        self.state.write_u32(self.ctx, 0, &words);
        self.stats
            .write_real(self.ctx, 0, &p.epoch_sums, self.config.precision);
        Ok(p.clone())
    }
}
