//! The incremental routes through a net's trailing MLP: perturbed losses computed from the
//! unperturbed activations, recomputing only what a one-element change touches.
//!
//! Two kernels serve a tail of blocks Affine → [BatchNorm | LayerNorm] → act → [Dropout], ending
//! in an Affine: shaders/perturbed_mlp.wgsl when no block normalises (each sample on its own, so
//! samples whose input to the perturbed weight is 0 cost nothing and long batches split across
//! dispatches), shaders/perturbed_norm_mlp.wgsl when one does (BatchNorm couples the samples, so
//! an invocation keeps all N rows; a tail whose invocation would pass lavapipe's loop limit is
//! left to the recomputing routes). Dropout is its fixed mask during a check, in both. Under
//! ReLU the plain kernel skips the dense layers above a perturbed unit while its change stays in
//! their linear regime ([`super::linear_regime`]).

use bytemuck::{Pod, Zeroable};

use super::linear_regime::{cost, linear_regime, HiddenAbove, LinearRegime};
use super::EngineBuffers;
use crate::error::Result;
use crate::gpu::kernel::{grid, shaders, Binding, Entry, KernelBindings, Placeholders};
use crate::gpu::{Dispatch, Gpu, GpuBuffer, GpuContext};
use crate::nn::layers::layernorm::LAYERNORM_EPS;
use crate::nn::layers::Saved;
use crate::nn::{Activation, Layer, Model, Workspace};

/// One block of the tail.
struct Block {
    /// Its affine layer.
    affine: usize,
    /// Its BatchNorm or LayerNorm layer (None: none; never in the last block).
    norm: Option<usize>,
    /// Whether a change to one unit changes whole rows (LayerNorm), not one column.
    row_mode: bool,
    /// Its activation layer (None in the last block).
    act: Option<usize>,
    /// Its dropout layer, whose mask the kernels apply.
    dropout: Option<usize>,
}

/// The trailing blocks of a net (all of an MLP) that a kernel evaluates incrementally.
pub(super) struct MlpTail {
    /// Index of its first (affine) layer.
    pub start: usize,
    blocks: Vec<Block>,
    /// Block widths [input, out₁, …, classes].
    widths: Vec<usize>,
    activation: Activation,
    /// Whether a block normalises (the norm kernel's tail).
    normalised: bool,
}

impl MlpTail {
    /// The longest tail of `model` that a kernel serves, one kind of activation throughout.
    pub fn of(model: &Model, rows: usize) -> Option<MlpTail> {
        (0..model.layers.len())
            .filter_map(|start| MlpTail::from(model, start))
            .find(|tail| {
                !tail.normalised
                    || (tail.norm_iterations(rows) <= LOOP_BUDGET
                        && tail.blocks.len() <= MAX_NORM_BLOCKS)
            })
    }

    /// The tail from layer `start`, if the layers from there on are one.
    fn from(model: &Model, start: usize) -> Option<MlpTail> {
        let layers = &model.layers;
        let mut blocks = Vec::new();
        let mut activation = None;
        let mut i = start;
        let at = |i: usize, kind: fn(&Layer) -> bool| layers.get(i).filter(|l| kind(l)).map(|_| i);
        loop {
            let affine = at(i, |l| matches!(l, Layer::Affine(_)))?;
            i += 1;
            if i == layers.len() {
                blocks.push(Block {
                    affine,
                    norm: None,
                    row_mode: false,
                    act: None,
                    dropout: None,
                });
                break;
            }
            let norm = at(i, |l| {
                matches!(l, Layer::BatchNorm(_) | Layer::LayerNorm(_))
            });
            i += usize::from(norm.is_some());
            let Some(Layer::Activation(act)) = layers.get(i) else {
                return None;
            };
            if activation.is_some_and(|a| a != act.kind) {
                return None;
            }
            activation = Some(act.kind);
            let act = Some(i);
            i += 1;
            let dropout = at(i, |l| matches!(l, Layer::Dropout(_)));
            i += usize::from(dropout.is_some());
            blocks.push(Block {
                affine,
                norm,
                row_mode: norm.is_some_and(|i| matches!(layers[i], Layer::LayerNorm(_))),
                act,
                dropout,
            });
        }
        let mut widths = vec![if start == 0 {
            model.spec.input
        } else {
            model.sizes[start - 1]
        }];
        widths.extend(blocks.iter().map(|b| model.sizes[b.affine]));
        Some(MlpTail {
            start,
            normalised: blocks.iter().any(|b| b.norm.is_some()),
            blocks,
            widths,
            activation: activation.unwrap_or(Activation::Relu),
        })
    }

    pub fn max_width(&self) -> usize {
        *self.widths[1..].iter().max().expect("at least one layer")
    }

    /// Reals of scratch one perturbation needs.
    pub fn scratch_per_eval(&self, rows: usize) -> usize {
        if self.normalised {
            // The perturbed column, two [N, F] buffers, and two one-row buffers for tails whose
            // samples are independent above the perturbed block.
            rows + 2 * rows * self.max_width() + 2 * self.max_width()
        } else {
            2 * self.max_width()
        }
    }

    /// The most loop iterations one invocation of the norm kernel runs (the perturbed block's
    /// column or rows, the next affine, every block above densely, the loss), over where the
    /// perturbation may lie.
    fn norm_iterations(&self, n: usize) -> usize {
        let w = &self.widths;
        let depth = self.blocks.len();
        let above = |l: usize| -> usize {
            (l + 1..depth - 1)
                .map(|k| 5 * n * w[k + 1] + n * w[k + 1] * w[k + 2])
                .sum::<usize>()
                + 3 * n * w[depth]
        };
        (0..depth)
            .map(|l| {
                let here = match &self.blocks[l] {
                    _ if l + 1 == depth => n * w[l + 1],
                    // LayerNorm: each row recomputed, then a dense product for it.
                    Block {
                        norm: Some(_),
                        row_mode: true,
                        ..
                    } => 4 * n * w[l + 1] + n * w[l + 1] * w[l + 2],
                    // One column, then a rank-one update of the next affine output.
                    _ => 6 * n + n * w[l + 2],
                };
                // And, below the logits, the comparison of each row with the base pass.
                let compare = if l + 1 < depth { n * w[l + 2] } else { 0 };
                here + compare + above(l)
            })
            .max()
            .unwrap_or(0)
    }

    /// The unperturbed affine outputs, norm outputs, activations (after dropout) and dropout
    /// masks of every block, side by side in one read-only buffer, and the layer table (`words`
    /// a block) that locates them.
    fn base_activations(
        &self,
        ctx: &GpuContext,
        model: &Model,
        theta: &[f64],
        base: &Workspace,
    ) -> Result<(GpuBuffer, Vec<u32>)> {
        let mut table = Vec::new();
        let sums = self.layer_norm_sums(ctx, model, theta, base)?;
        let regimes: Vec<Option<[GpuBuffer; 2]>> = (self
            .linear_regimes(ctx, model, theta, base)?)
        .into_iter()
        .map(|r| {
            r.map(|r| {
                [("linear_rows", &r.rows), ("linear_bounds", &r.bounds)]
                    .map(|(name, v)| GpuBuffer::from_real(ctx, name, v, model.precision))
            })
        })
        .collect();
        let mut concat = Concat::default();
        let mut norm_at = 0;
        let tensor = |t: usize| model.layout.tensors[t].offset;
        for (l, block) in self.blocks.iter().enumerate() {
            let Layer::Affine(affine) = &model.layers[block.affine] else {
                unreachable!("a block starts with its affine layer")
            };
            let z = concat.place(&base.out[block.affine]);
            let (norm_kind, gamma, beta, y) = match block.norm.map(|i| (i, &model.layers[i])) {
                Some((i, Layer::BatchNorm(bn))) => (1, tensor(bn.gamma), tensor(bn.beta), i),
                Some((i, Layer::LayerNorm(ln))) => (2, tensor(ln.gamma), tensor(ln.beta), i),
                _ => (0, 0, 0, block.affine),
            };
            let y = if block.norm.is_some() {
                concat.place(&base.out[y])
            } else {
                z
            };
            let a = match (block.act, block.dropout) {
                (_, Some(d)) => concat.place(&base.out[d]),
                (Some(act), None) => concat.place(&base.out[act]),
                (None, None) => 0,
            };
            let mask = match block.dropout.map(|d| base.saved(d)) {
                Some(Saved::Mask(mask)) => concat.place(mask),
                _ => NONE as usize,
            };
            let (w, b) = (tensor(affine.weight), tensor(affine.bias));
            let (ins, outs) = (self.widths[l], self.widths[l + 1]);
            if self.normalised {
                let sums = sums[l].as_ref().map_or(NONE as usize, |s| concat.place(s));
                let norm = if norm_kind == 0 {
                    NONE as usize
                } else {
                    norm_at
                };
                norm_at += if norm_kind == 0 { 0 } else { 2 * outs };
                let row = [
                    ins, outs, w, b, z, norm_kind, gamma, beta, y, a, mask, sums, norm,
                ];
                table.extend(row.map(|v| v as u32));
            } else {
                let [rows, bounds] = match &regimes[l] {
                    Some([rows, bounds]) => [concat.place(rows), concat.place(bounds)],
                    None => [NONE as usize; 2],
                };
                table.extend([ins, outs, w, b, z, a, mask, rows, bounds].map(|v| v as u32));
            }
        }
        let joined = GpuBuffer::real(ctx, "base_activations", concat.len, model.precision);
        let parts: Vec<_> = (concat.sources.iter())
            .map(|&src| (src, 0, src.len))
            .collect();
        copy_in_turn(ctx, &joined, &parts);
        Ok((joined, table))
    }

    /// For each block with a hidden block above it, under ReLU and within the host budgets, its
    /// [`LinearRegime`]: the logit rows and intervals that let perturbed_mlp.wgsl skip the dense
    /// layers above.
    fn linear_regimes(
        &self,
        ctx: &GpuContext,
        model: &Model,
        theta: &[f64],
        base: &Workspace,
    ) -> Result<Vec<Option<LinearRegime>>> {
        let depth = self.blocks.len();
        let none = || (0..depth).map(|_| None).collect();
        if self.normalised || self.activation != Activation::Relu {
            return Ok(none());
        }
        let (n, classes) = (base.rows, self.widths[depth]);
        // Which blocks get one: each within the time budget, all together within the memory
        // budget (they share the base buffer's binding), the nearest the logits first.
        let mut reals = 0;
        let mut wanted = vec![false; depth];
        for l in (0..depth.saturating_sub(2)).rev() {
            let width = self.widths[l + 1];
            let size = n * width * (classes + 2);
            wanted[l] = cost(n, width, &self.widths[l + 2..]) <= LINEAR_REGIME_COST
                && reals + size <= LINEAR_REGIME_REALS;
            reals += if wanted[l] { size } else { 0 };
        }
        let Some(lowest) = wanted.iter().position(|&w| w) else {
            return Ok(none());
        };
        let weights: Vec<&[f64]> = (self.blocks.iter().enumerate())
            .map(|(l, block)| {
                let Layer::Affine(affine) = &model.layers[block.affine] else {
                    unreachable!("a block starts with its affine layer")
                };
                let len = self.widths[l] * self.widths[l + 1];
                &theta[model.layout.tensors[affine.weight].offset..][..len]
            })
            .collect();
        // The pre-activations and dropout masks of the hidden blocks above the lowest block
        // served, read back once for all the blocks served.
        let read = |b: &GpuBuffer, len: usize| b.read_real_range(ctx, model.precision, 0..len);
        let above = lowest + 1..depth - 1;
        let mut reads = Vec::new();
        for k in above.clone() {
            let block = &self.blocks[k];
            let units = n * self.widths[k + 1];
            let mask = match block.dropout.map(|d| base.saved(d)) {
                Some(Saved::Mask(mask)) => Some(read(mask, units)?),
                _ => None,
            };
            reads.push((read(&base.out[block.affine], units)?, mask));
        }
        let hidden: Vec<HiddenAbove> = (above.zip(&reads))
            .map(|(k, (pre, mask))| HiddenAbove {
                weight: weights[k],
                pre,
                mask: mask.as_deref(),
            })
            .collect();
        Ok((0..depth)
            .map(|l| {
                wanted[l].then(|| {
                    let above = &hidden[l - lowest..];
                    linear_regime(n, self.widths[l + 1], above, weights[depth - 1])
                })
            })
            .collect())
    }

    /// For each LayerNorm block under ReLU, its per-sample sums [U_n, V_n] over the units the
    /// base pass leaves active (perturbed_norm_mlp.wgsl's layer_norm_row_update):
    /// U_n = Σ m_c·γ_c·(z_c − μ_n)·W_{l+1}[c, :] and V_n = Σ m_c·γ_c·W_{l+1}[c, :], formed in f64.
    fn layer_norm_sums(
        &self,
        ctx: &GpuContext,
        model: &Model,
        theta: &[f64],
        base: &Workspace,
    ) -> Result<Vec<Option<GpuBuffer>>> {
        let (precision, n) = (model.precision, base.rows);
        let mut all = Vec::new();
        for (l, block) in self.blocks.iter().enumerate() {
            let Some(Layer::LayerNorm(ln)) = block.norm.map(|i| &model.layers[i]) else {
                all.push(None);
                continue;
            };
            if self.activation != Activation::Relu {
                all.push(None);
                continue;
            }
            let Layer::Affine(next) = &model.layers[self.blocks[l + 1].affine] else {
                unreachable!("a block starts with its affine layer")
            };
            let (f, outs) = (self.widths[l + 1], self.widths[l + 2]);
            let read = |b: &GpuBuffer| b.read_real_range(ctx, precision, 0..n * f);
            let z = read(&base.out[block.affine])?;
            let y = read(&base.out[block.norm.expect("a LayerNorm block")])?;
            let mask = match block.dropout.map(|d| base.saved(d)) {
                Some(Saved::Mask(mask)) => Some(read(mask)?),
                _ => None,
            };
            let gamma = &theta[model.layout.tensors[ln.gamma].offset..][..f];
            let w = &theta[model.layout.tensors[next.weight].offset..][..f * outs];
            let mut sums = vec![0.0; 2 * n * outs];
            for (s, row) in sums.chunks_mut(2 * outs).enumerate() {
                let z = &z[s * f..][..f];
                let mean = z.iter().sum::<f64>() / f as f64;
                let (u, v) = row.split_at_mut(outs);
                for c in (0..f).filter(|&c| y[s * f + c] > 0.0) {
                    let scale = gamma[c] * mask.as_ref().map_or(1.0, |m| m[s * f + c]);
                    for (k, w) in w[c * outs..][..outs].iter().enumerate() {
                        u[k] += scale * (z[c] - mean) * w;
                        v[k] += scale * w;
                    }
                }
            }
            all.push(Some(GpuBuffer::from_real(
                ctx,
                "layer_norm_sums",
                &sums,
                precision,
            )));
        }
        Ok(all)
    }

    /// The kernel's dispatches and the buffers they keep alive; `theta` is the parameters as the
    /// host read them.
    pub fn dispatches(
        &self,
        gpu: &Gpu,
        model: &Model,
        theta: &[f64],
        base: &Workspace,
        chunk: usize,
        bufs: &EngineBuffers,
    ) -> Result<(Vec<Dispatch>, Vec<GpuBuffer>)> {
        let (concat, table_words) = self.base_activations(gpu.ctx, model, theta, base)?;
        let table = if self.normalised {
            let bytes = MAX_NORM_BLOCKS * TABLE_WORDS * 4;
            let table = GpuBuffer::uniform_array(gpu.ctx, "layer_table", bytes);
            let words = bytemuck::cast_slice(&table_words);
            gpu.ctx.queue.write_buffer(&table.buffer, 0, words);
            table
        } else {
            GpuBuffer::from_u32(gpu.ctx, "layer_table", &table_words)
        };
        let input = if self.start == 0 {
            &base.x
        } else {
            &base.out[self.start - 1]
        };
        let n = base.rows;
        let scratch_len = chunk * self.scratch_per_eval(n);
        let scratch = GpuBuffer::real(gpu.ctx, "scratch", scratch_len, model.precision);
        let shared = Shared {
            layers: &table,
            theta: &model.params,
            x: input,
            labels: &base.labels,
            base: &concat,
            base_loss: &base.row_loss,
            bufs,
            scratch: &scratch,
        };
        let uniform_bytes = gpu.ctx.limits.max_uniform_buffer_binding_size as usize;
        if self.normalised && uniform_bytes < UNIFORM_BYTES {
            return Err(crate::Error::InvalidArgument(format!(
                "this adapter's uniform buffers hold {uniform_bytes} bytes, under the 64 KiB the incremental kernel for normalised MLPs binds: use --strategy full"
            )));
        }
        let (dispatches, extra) = if self.normalised {
            let eps = GpuBuffer::from_real(
                gpu.ctx,
                "norm_eps",
                &[model.spec.conventions.batchnorm_eps(), LAYERNORM_EPS],
                model.precision,
            );
            let top = self.batchnorm_top_pays(model, n);
            let (consts, logits_fit) =
                self.top_constants(gpu.ctx, model, n, top, &concat, &table_words);
            let (base_uniform, base_fits) = base_uniform(gpu.ctx, &concat);
            let (norm_consts, norms_fit) = norm_constants(gpu.ctx, model, &table_words);
            let norm = NormKernel {
                eps: &eps,
                top,
                consts: &consts,
                base_uniform: &base_uniform,
                base_fits,
                logits_fit,
                norm_consts: &norm_consts,
                norms_fit,
            };
            (
                vec![self.norm_dispatch(gpu, model, n, chunk, &shared, norm)],
                vec![eps, consts, base_uniform, norm_consts],
            )
        } else {
            (self.mlp_dispatches(gpu, model, n, chunk, &shared)?, vec![])
        };
        let mut kept = vec![concat, table, scratch];
        kept.extend(extra);
        Ok((dispatches, kept))
    }

    /// perturbed_mlp.wgsl, one dispatch per slice of the batch.
    fn mlp_dispatches(
        &self,
        gpu: &Gpu,
        model: &Model,
        n: usize,
        chunk: usize,
        shared: &Shared,
    ) -> Result<Vec<Dispatch>> {
        let (groups, row_width) = grid(chunk);
        let slice = samples_per_dispatch(&self.widths).ok_or_else(|| {
            crate::Error::InvalidArgument(
                "this net's layers are too wide for the incremental kernel (one sample's update exceeds the 65,535 loop iterations lavapipe allows an invocation): use --strategy full".into(),
            )
        })?;
        let bindings = PerturbedMlpBindings { shared };
        Ok((0..n)
            .step_by(slice)
            .map(|begin| {
                let params = PerturbedMlpParams {
                    perturbations: chunk as u32,
                    depth: self.blocks.len() as u32,
                    n: n as u32,
                    classes: model.spec.output as u32,
                    scratch_stride: self.scratch_per_eval(n) as u32,
                    row_width,
                    n_begin: begin as u32,
                    n_end: (begin + slice).min(n) as u32,
                };
                gpu.kernels.dispatch_specialised(
                    gpu.ctx,
                    &PERTURBED_MLP,
                    &[self.activation_constant()],
                    &params,
                    &bindings,
                    groups,
                )
            })
            .collect())
    }

    /// Both kernels' ACTIVATION override: the hidden layers' [`Activation::code`].
    fn activation_constant(&self) -> (&'static str, f64) {
        ("ACTIVATION", f64::from(self.activation.code()))
    }

    /// Whether perturbed_norm_mlp.wgsl's batchnorm_top serves this tail: a block whose changes
    /// move one column (not a LayerNorm block, whose changes move whole rows and never reach the
    /// top) under a BatchNorm block under the logits, a batch whose logits fit its registers, and
    /// enough work through it to repay building a pipeline specialised to the batch (about 0.3 s
    /// on lavapipe, against about 0.1 µs saved per perturbation and column of the BatchNorm
    /// block).
    fn batchnorm_top_pays(&self, model: &Model, n: usize) -> bool {
        let classes = model.spec.output;
        let depth = self.blocks.len();
        if depth < 3 || n > TOP_ROWS || classes > TOP_CLASSES || n * classes > TOP_LOGITS {
            return false;
        }
        let (under, top) = (&self.blocks[depth - 3], &self.blocks[depth - 2]);
        if top.norm.is_none() || top.row_mode || under.row_mode {
            return false;
        }
        if self.top_constants_len(n, classes) > UNIFORM_BYTES / model.precision.bytes() {
            return false;
        }
        let w = &self.widths;
        let norm_params = if under.norm.is_some() {
            2 * w[depth - 2]
        } else {
            0
        };
        let perturbations = 2 * (w[depth - 3] * w[depth - 2] + w[depth - 2] + norm_params);
        perturbations * w[depth - 1] >= TOP_WORK
    }

    /// Reals of the logits' weight [F, C] and bias [C] in the norm kernel's `top_consts`.
    fn logits_constants_len(&self, classes: usize) -> usize {
        (self.widths[self.blocks.len() - 1] + 1) * classes
    }

    /// Reals of all of `top_consts` with batchnorm_top's constants: the logits', then the
    /// BatchNorm block's z, y and mask (with dropout) [N, F], its γ and β [F].
    fn top_constants_len(&self, n: usize, classes: usize) -> usize {
        let depth = self.blocks.len();
        let f = self.widths[depth - 1];
        let per_row = if self.blocks[depth - 2].dropout.is_some() {
            3
        } else {
            2
        };
        self.logits_constants_len(classes) + per_row * n * f + 2 * f
    }

    /// The norm kernel's `top_consts` uniform array, copied from θ and the base activations:
    /// the logits' weight and bias where they fit (the returned flag, its LOGITS_UNIFORM), and
    /// batchnorm_top's constants after them when `top`; zeros where nothing fits.
    fn top_constants(
        &self,
        ctx: &GpuContext,
        model: &Model,
        n: usize,
        top: bool,
        concat: &GpuBuffer,
        table: &[u32],
    ) -> (GpuBuffer, bool) {
        let classes = model.spec.output;
        let logits_fit =
            self.logits_constants_len(classes) <= UNIFORM_BYTES / model.precision.bytes();
        if !logits_fit {
            return (uniform_copies(ctx, "top_constants", &[]), false);
        }
        let depth = self.blocks.len();
        let field = |block: usize, word: usize| table[TABLE_WORDS * block + word] as usize;
        let (k, logits) = (depth - 2, depth - 1);
        let f = self.widths[depth - 1];
        let theta = &model.params;
        let mut parts = vec![
            (theta, field(logits, 2), f * classes),
            (theta, field(logits, 3), classes),
        ];
        if top {
            parts.extend([(concat, field(k, 4), n * f), (concat, field(k, 8), n * f)]);
            if field(k, 10) != NONE as usize {
                parts.push((concat, field(k, 10), n * f));
            }
            parts.extend([(theta, field(k, 6), f), (theta, field(k, 7), f)]);
        }
        (uniform_copies(ctx, "top_constants", &parts), true)
    }

    /// perturbed_norm_mlp.wgsl over the whole batch.
    fn norm_dispatch(
        &self,
        gpu: &Gpu,
        model: &Model,
        n: usize,
        chunk: usize,
        shared: &Shared,
        norm: NormKernel,
    ) -> Dispatch {
        let (groups, row_width) = grid(chunk);
        let params = PerturbedNormParams {
            perturbations: chunk as u32,
            depth: self.blocks.len() as u32,
            n: n as u32,
            classes: model.spec.output as u32,
            scratch_stride: self.scratch_per_eval(n) as u32,
            max_width: self.max_width() as u32,
            row_width,
            _pad: 0,
        };
        let flag = |set: bool| f64::from(u8::from(set));
        let mut constants = vec![
            self.activation_constant(),
            ("BASE_UNIFORM", flag(norm.base_fits)),
            ("LOGITS_UNIFORM", flag(norm.logits_fit)),
            ("NORM_UNIFORM", flag(norm.norms_fit)),
        ];
        if norm.top {
            constants.extend([("ROWS", n as f64), ("CLASSES", model.spec.output as f64)]);
        }
        let bindings = PerturbedNormBindings {
            shared,
            norm: &norm,
        };
        gpu.kernels.dispatch_specialised(
            gpu.ctx,
            &PERTURBED_NORM_MLP,
            &constants,
            &params,
            &bindings,
            groups,
        )
    }
}

/// What both kernels read and write.
struct Shared<'a> {
    /// The layer table.
    layers: &'a GpuBuffer,
    theta: &'a GpuBuffer,
    /// The tail's input [N, D].
    x: &'a GpuBuffer,
    labels: &'a GpuBuffer,
    /// The unperturbed activations and masks of every block.
    base: &'a GpuBuffer,
    /// [N] per-sample unperturbed loss.
    base_loss: &'a GpuBuffer,
    bufs: &'a EngineBuffers,
    scratch: &'a GpuBuffer,
}

impl Shared<'_> {
    /// Both kernels' binding order: the read-only inputs, then `extra` (the norm kernel's eps),
    /// then the per-perturbation outputs and scratch.
    fn buffers<'b>(&'b self, extra: Option<&'b GpuBuffer>) -> Vec<&'b wgpu::Buffer> {
        let reads = [
            self.layers,
            self.theta,
            self.x,
            self.labels,
            self.base,
            self.base_loss,
            &self.bufs.pert,
            &self.bufs.h,
        ];
        let writes = [&self.bufs.out_loss, &self.bufs.out_flips, self.scratch];
        (reads.into_iter().chain(extra).chain(writes))
            .map(|b| &b.buffer)
            .collect()
    }
}

/// Words of the layer table a block (the norm kernel's).
const TABLE_WORDS: usize = 13;

/// Blocks the norm kernel's layer table holds (a uniform array of 208 vec4 there); a deeper
/// normalised tail is left to the recomputing routes.
const MAX_NORM_BLOCKS: usize = 64;

/// Bytes of the uniform arrays the kernels declare (UNIFORM_VEC4S in the precision preludes):
/// WebGPU's default uniform binding limit.
const UNIFORM_BYTES: usize = 64 << 10;

/// A layer table offset that points nowhere: no dropout mask, no LayerNorm sums (the kernels'
/// NONE).
const NONE: u32 = u32::MAX;

/// Most multiply-adds the host spends on one block's [`LinearRegime`] (about 0.1 s), and most
/// reals the rows and intervals of all blocks take; a block past either takes the dense layers
/// throughout.
const LINEAR_REGIME_COST: usize = 100_000_000;
const LINEAR_REGIME_REALS: usize = 4 << 20;

/// The most rows, classes and logits of a batch that perturbed_norm_mlp.wgsl's batchnorm_top
/// holds in registers (its MAX_ROWS, MAX_CLASSES and MAX_LOGITS).
const TOP_ROWS: usize = 8;
const TOP_CLASSES: usize = 16;
const TOP_LOGITS: usize = 64;
/// Perturbations times columns of the BatchNorm block below which batchnorm_top does not repay
/// its pipeline (0.3 s / 0.1 µs): `--hidden 100,100 --batchnorm` has 15.7M and gains 1.3 s from
/// it, the test suite's small BatchNorm nets have under 0.1M and would lose 0.3 s.
const TOP_WORK: usize = 3 << 20;

/// Loop iterations an invocation may run on lavapipe (65,535, with room for the bookkeeping).
const LOOP_BUDGET: usize = 60_000;

/// perturbed_mlp.wgsl's Params.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PerturbedMlpParams {
    /// Invocations in this dispatch.
    perturbations: u32,
    /// Affine layers.
    depth: u32,
    n: u32,
    classes: u32,
    /// Reals of scratch per invocation.
    scratch_stride: u32,
    row_width: u32,
    /// This dispatch's slice of the batch.
    n_begin: u32,
    n_end: u32,
}

/// perturbed_mlp.wgsl's buffers.
struct PerturbedMlpBindings<'a> {
    shared: &'a Shared<'a>,
}

impl KernelBindings for PerturbedMlpBindings<'_> {
    type Params = PerturbedMlpParams;
    const ACCESS: &'static [Binding] = &[
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::ReadWrite,
    ];
    fn buffers<'a>(&'a self, _: &'a Placeholders) -> Vec<&'a wgpu::Buffer> {
        self.shared.buffers(None)
    }
}

const PERTURBED_MLP: Entry = Entry::new(shaders::PERTURBED_MLP, "perturbed_losses");

/// perturbed_norm_mlp.wgsl's Params.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PerturbedNormParams {
    /// Invocations in this dispatch.
    perturbations: u32,
    /// Blocks.
    depth: u32,
    n: u32,
    classes: u32,
    /// Reals of scratch per invocation: N + 2·N·max_width.
    scratch_stride: u32,
    max_width: u32,
    row_width: u32,
    _pad: u32,
}

/// What the norm kernel adds to the plain kernel's bindings, and whether batchnorm_top serves.
struct NormKernel<'a> {
    /// [BatchNorm eps, LayerNorm eps]
    eps: &'a GpuBuffer,
    top: bool,
    consts: &'a GpuBuffer,
    /// The base activations as a uniform array, where they fit (`base_fits`).
    base_uniform: &'a GpuBuffer,
    base_fits: bool,
    /// `consts` holds the logits' weight and bias (LOGITS_UNIFORM).
    logits_fit: bool,
    /// Every normalised block's γ and β as a uniform array, where they fit (`norms_fit`).
    norm_consts: &'a GpuBuffer,
    norms_fit: bool,
}

/// perturbed_norm_mlp.wgsl's buffers: perturbed_mlp.wgsl's, the norms' eps, and its uniform
/// arrays.
struct PerturbedNormBindings<'a> {
    shared: &'a Shared<'a>,
    norm: &'a NormKernel<'a>,
}

impl KernelBindings for PerturbedNormBindings<'_> {
    type Params = PerturbedNormParams;
    const ACCESS: &'static [Binding] = &[
        Binding::Uniform,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::Uniform,
        Binding::Uniform,
        Binding::Uniform,
    ];
    fn buffers<'a>(&'a self, _: &'a Placeholders) -> Vec<&'a wgpu::Buffer> {
        let norm = self.norm;
        let mut buffers = self.shared.buffers(Some(norm.eps));
        buffers.extend([
            &norm.consts.buffer,
            &norm.base_uniform.buffer,
            &norm.norm_consts.buffer,
        ]);
        buffers
    }
}

const PERTURBED_NORM_MLP: Entry = Entry::new(
    crate::shader!("perturbed_norm_mlp.wgsl"),
    "perturbed_losses",
);

/// Copies `parts` into `dst` one after another from its start, each (source, offset, length)
/// in the source's elements, in one submit.
fn copy_in_turn(ctx: &GpuContext, dst: &GpuBuffer, parts: &[(&GpuBuffer, usize, usize)]) {
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    let mut at = 0;
    for &(src, from, len) in parts {
        let bytes = src.elem_bytes as u64;
        let (from, size) = (from as u64 * bytes, len as u64 * bytes);
        encoder.copy_buffer_to_buffer(&src.buffer, from, &dst.buffer, at, size);
        at += size;
    }
    ctx.queue.submit([encoder.finish()]);
}

/// A uniform array of `UNIFORM_BYTES` holding `parts` ([`copy_in_turn`]); zeros past them.
fn uniform_copies(
    ctx: &GpuContext,
    label: &str,
    parts: &[(&GpuBuffer, usize, usize)],
) -> GpuBuffer {
    let uniform = GpuBuffer::uniform_array(ctx, label, UNIFORM_BYTES);
    copy_in_turn(ctx, &uniform, parts);
    uniform
}

/// The base activations in a uniform array, and whether they fit in it (the norm kernel's
/// BASE_UNIFORM; zeros when they do not).
fn base_uniform(ctx: &GpuContext, concat: &GpuBuffer) -> (GpuBuffer, bool) {
    let fits = concat.len * concat.elem_bytes <= UNIFORM_BYTES;
    let parts: &[_] = if fits {
        &[(concat, 0, concat.len)]
    } else {
        &[]
    };
    (uniform_copies(ctx, "base_uniform", parts), fits)
}

/// Every normalised block's γ then β [out] from θ in a uniform array, in block order (the
/// offsets its layer table rows name in word 12), and whether they fit in it (the norm kernel's
/// NORM_UNIFORM; zeros when they do not).
fn norm_constants(ctx: &GpuContext, model: &Model, table: &[u32]) -> (GpuBuffer, bool) {
    let theta = &model.params;
    let parts: Vec<_> = (table.chunks(TABLE_WORDS))
        .filter(|row| row[12] != NONE)
        .flat_map(|row| [6, 7].map(|word| (theta, row[word] as usize, row[1] as usize)))
        .collect();
    let reals: usize = parts.iter().map(|&(_, _, len)| len).sum();
    let fits = reals * theta.elem_bytes <= UNIFORM_BYTES;
    let parts = if fits { &parts[..] } else { &[] };
    (uniform_copies(ctx, "norm_constants", parts), fits)
}

/// Buffers to be copied one after another into one ([`copy_in_turn`]), and their total length.
#[derive(Default)]
struct Concat<'a> {
    sources: Vec<&'a GpuBuffer>,
    len: usize,
}

impl<'a> Concat<'a> {
    /// Appends `src`; returns its offset in the joined buffer.
    fn place(&mut self, src: &'a GpuBuffer) -> usize {
        let at = self.len;
        self.sources.push(src);
        self.len += src.len;
        at
    }
}

/// Samples one incremental dispatch may take: lavapipe stops a shader invocation after 65,535
/// loop iterations in all, and each sample costs up to the rank-one update of the layer above
/// the perturbed one, the dense layers above that, and three passes over the classes.
fn samples_per_dispatch(widths: &[usize]) -> Option<usize> {
    let dense: usize = widths.windows(2).skip(2).map(|w| w[0] * w[1] + w[1]).sum();
    let per_sample =
        widths[1..].iter().max().copied().unwrap_or(1) + dense + 3 * widths[widths.len() - 1] + 8;
    (per_sample <= 60_000).then(|| (30_000 / per_sample).max(1))
}
