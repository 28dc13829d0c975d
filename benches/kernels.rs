//! Kernel benchmarks through the public API, sized to finish in a few minutes on lavapipe:
//!
//! - `train_step`: one whole training step (gather, forward, backward, metrics, momentum-SGD
//!   update, advance) of 784-100-100-10 at batch 100 in f32, timed as the trainer runs it: many
//!   steps recorded into one submit, then a single wait; reported per step.
//! - `matmul`: the matmul kernel alone, as the first affine layer's forward of a
//!   [1000×784]·[784×1000] product (plus bias), with throughput in FLOP (2·M·N·K per run).
//! - `evaluate`: one evaluation pass of 784-100-100-10 over the bundled test set (1,996 images),
//!   read-back of the sums included.
//! - `numerical_gradient`: all 79,520 perturbed losses of TwoLayerNet 784-50-10 (the book's
//!   check) by the incremental kernel, f64, batches 3 and 100, with throughput in losses.
//!
//! ```text
//! cargo bench --bench kernels
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

use wgrad::data;
use wgrad::data::GpuDataset;
use wgrad::gpu::{kernel, GpuBuffer, GpuContext, Precision};
use wgrad::nn::{
    init_params, Activation, Copies, Init, Kernels, Model, NetSpec, Recorder, Workspace,
};
use wgrad::optim::{GpuOptimizer, Optimizer};
use wgrad::train::{step_dispatches, Evaluator, StateWord, STATE_WORDS, STATS_WORDS};

const PRECISION: Precision = Precision::F32;
const BATCH: usize = 100;
/// Steps recorded per submit, as `wgrad train` does by default (`--steps-per-submit`).
const STEPS_PER_SUBMIT: usize = 40;

fn context() -> GpuContext {
    let ctx = GpuContext::new(&Default::default())
        .expect("a GPU adapter: install mesa-vulkan-drivers libvulkan1 for lavapipe");
    eprintln!("benchmarking on {}", ctx.describe());
    ctx
}

/// The bare `wgrad train` net: 784-100-100-10, ReLU, He init.
fn mlp() -> NetSpec {
    NetSpec::mlp(784, &[100, 100], 10, Activation::Relu)
}

fn train_step(c: &mut Criterion) {
    let ctx = context();
    let mnist = data::bundled().unwrap();
    let spec = mlp();
    let params = init_params(&spec, Init::He, 42);
    let kernels = Kernels::new(&ctx, PRECISION).unwrap();
    let model = Model::new(&ctx, &spec, &params, PRECISION).unwrap();
    let rec = Recorder {
        ctx: &ctx,
        kernels: &kernels,
        model: &model,
    };
    let train_set = GpuDataset::new(&ctx, &mnist.train);
    let ws = Workspace::new(&ctx, &model, BATCH, 1, true);
    let state = GpuBuffer::zeroed(&ctx, "state", STATE_WORDS, 4);
    let stats = GpuBuffer::real(&ctx, "stats", STATS_WORDS, PRECISION);
    let optimizer = Optimizer::from_name("momentum", Some(0.1)).unwrap();
    let optimizer = GpuOptimizer::new(&rec.gpu(), &model, &optimizer, None, &state).unwrap();

    let step_losses = GpuBuffer::real(&ctx, "step_losses", 1, PRECISION);

    // The step list `train::train` records.
    let buffers = (&state, &stats, &step_losses);
    let step = step_dispatches(&rec, &train_set, &ws, buffers, &optimizer);
    let steps_per_epoch = train_set.len / BATCH;
    let chunk_max = STEPS_PER_SUBMIT.min(steps_per_epoch);

    let mut group = c.benchmark_group("train_step");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("784-100-100-10/batch100/f32", |b| {
        b.iter_custom(|iters| {
            ctx.wait().unwrap();
            let start = Instant::now();
            let mut left = iters as usize;
            while left > 0 {
                let chunk = left.min(chunk_max);
                // Back to the first batch, so every step gathers real images rather than the
                // padding rows past the end of the epoch.
                state.write_u32(&ctx, StateWord::Batch as usize, &[0]);
                kernel::submit(&ctx, &step, chunk);
                left -= chunk;
            }
            ctx.wait().unwrap();
            start.elapsed()
        })
    });
    group.finish();

    // Momentum SGD at lr 0.1 on real digits stays finite however many steps ran.
    let words = state.read_u32(&ctx).unwrap();
    assert_eq!(
        words[StateWord::Diverged as usize],
        0,
        "the benchmark's training diverged"
    );
}

fn matmul(c: &mut Criterion) {
    const M: usize = 1000;
    const K: usize = 784;
    const N: usize = 1000;
    let ctx = context();
    let mnist = data::bundled().unwrap();
    let spec = NetSpec::mlp(K, &[N], 10, Activation::Relu);
    let params = init_params(&spec, Init::He, 42);
    let kernels = Kernels::new(&ctx, PRECISION).unwrap();
    let model = Model::new(&ctx, &spec, &params, PRECISION).unwrap();
    let rec = Recorder {
        ctx: &ctx,
        kernels: &kernels,
        model: &model,
    };
    let ws = Workspace::new(&ctx, &model, M, 1, false);
    let labels: Vec<u32> = mnist.test.labels[..M]
        .iter()
        .map(|&l| u32::from(l))
        .collect();
    ws.upload(&ctx, &mnist.test.images_f64(0..M), &labels, PRECISION);
    // The forward pass starts with layer 1's affine: pre1 [M, N] = x [M, K] · W1 [K, N] + b1.
    let affine = [rec.forward(&ws, &Copies::Single).swap_remove(0)];
    kernel::run(&ctx, &affine).unwrap();

    let mut group = c.benchmark_group("matmul");
    // One run takes a sizeable fraction of a second on lavapipe: flat sampling keeps the
    // iteration count (and the bench's duration) proportional to the sample size.
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(6));
    group.throughput(Throughput::Elements((2 * M * N * K) as u64));
    group.bench_function("affine_1000x784x1000/f32", |b| {
        b.iter_custom(|iters| {
            ctx.wait().unwrap();
            let start = Instant::now();
            kernel::submit(&ctx, &affine, iters as usize);
            ctx.wait().unwrap();
            start.elapsed()
        })
    });
    group.finish();
}

fn evaluate(c: &mut Criterion) {
    let ctx = context();
    let mnist = data::bundled().unwrap();
    let spec = mlp();
    let params = init_params(&spec, Init::He, 42);
    let kernels = Kernels::new(&ctx, PRECISION).unwrap();
    let model = Model::new(&ctx, &spec, &params, PRECISION).unwrap();
    let rec = Recorder {
        ctx: &ctx,
        kernels: &kernels,
        model: &model,
    };
    let test_set = GpuDataset::new(&ctx, &mnist.test);
    // Batches of 1000 rows, as the trainer evaluates.
    let evaluator = Evaluator::new(&ctx, &model, 1000);
    let dispatches = evaluator.batch_dispatches(&rec, &test_set);

    let mut group = c.benchmark_group("evaluate");
    group.throughput(Throughput::Elements(test_set.len as u64));
    group.bench_function("784-100-100-10/bundled_test/f32", |b| {
        b.iter(|| black_box(evaluator.run(&ctx, &dispatches, &test_set).unwrap()))
    });
    group.finish();
}

fn numerical_gradient(c: &mut Criterion) {
    use wgrad::numgrad::{default_h, PerturbedLossEngine, Strategy};
    let ctx = context();
    let mnist = data::bundled().unwrap();
    let spec = NetSpec::mlp(784, &[50], 10, Activation::Relu);
    let params = init_params(&spec, Init::Std(0.01), 0);
    let precision = Precision::F64;
    let kernels = Kernels::new(&ctx, precision).unwrap();
    let model = Model::new(&ctx, &spec, &params, precision).unwrap();
    let indices: Vec<usize> = (0..spec.layout().total).collect();
    let mut group = c.benchmark_group("numerical_gradient");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(2 * indices.len() as u64));
    for batch in [3, 100] {
        let (x, t) = wgrad::gradcheck::first_batch(&mnist.train, batch).unwrap();
        let engine = PerturbedLossEngine::new(
            &ctx,
            &kernels,
            &model,
            &x,
            &t,
            Strategy::Incremental,
            default_h(precision),
            None,
        )
        .unwrap();
        group.bench_function(format!("784-50-10/batch{batch}/f64/incremental"), |b| {
            b.iter(|| black_box(engine.gradient(&indices).unwrap()))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = train_step, matmul, evaluate, numerical_gradient
}
criterion_main!(benches);
