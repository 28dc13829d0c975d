//! The two forward paths of a convolution layer, for the book's SimpleConvNet layer (batch 100,
//! 1×28×28 input, 30 filters of 5×5), both as src/nn/layers/conv.rs records them: the direct
//! kernel of shaders/conv.wgsl, which the perturbed copies of a gradient check run (each copy
//! reads its own change of W as it goes), and im2col + the filters packed + one matmul per
//! sample into NCHW, which training and evaluation run (a single copy keeps the unfolded input).
//! This measurement is why a single copy unfolds.
//!
//! ```text
//! cargo bench --bench conv_layout
//! ```

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use wgrad::gpu::{kernel, Dispatch, Gpu, GpuBuffer, GpuContext, Kernels, Precision};
use wgrad::nn::layers::{parse_layers, Forward, LayerOps, LayerState, Mode, Saved};
use wgrad::nn::{Layer, NetSpec};

const N: usize = 100;

fn conv(c: &mut Criterion) {
    let ctx = GpuContext::new(&Default::default())
        .expect("a GPU adapter (lavapipe: mesa-vulkan-drivers)");
    eprintln!("benchmarking on {}", ctx.describe());
    let p = Precision::F32;
    let kernels = Kernels::new(&ctx, p).unwrap();
    let gpu = Gpu {
        ctx: &ctx,
        kernels: &kernels,
    };
    let spec =
        NetSpec::sequential([1, 28, 28], parse_layers("conv30x5,affine10").unwrap()).unwrap();
    let (layers, layout) = spec.resolve().unwrap();
    let Layer::Conv(conv) = &layers[0] else {
        unreachable!("the first layer is the convolution")
    };
    let values = |len: usize, f: fn(usize) -> f64| (0..len).map(f).collect::<Vec<f64>>();
    let x = GpuBuffer::from_real(
        &ctx,
        "x",
        &values(N * 28 * 28, |i| (i % 255) as f64 / 255.0),
        p,
    );
    let theta = values(layout.total, |i| ((i % 7) as f64 - 3.0) * 0.01);
    let theta = GpuBuffer::from_real(&ctx, "theta", &theta, p);
    let y = GpuBuffer::real(&ctx, "y", N * conv.output_size(), p);
    let step = GpuBuffer::zeroed(&ctx, "step", 1, 4);
    let record = |saved: &Saved| -> Vec<Dispatch> {
        conv.forward(&Forward {
            gpu,
            theta: &theta,
            layout: &layout,
            rows: N,
            copies: 1,
            input: &x,
            input_shared: true,
            output: &y,
            saved,
            state: &LayerState::None,
            mode: Mode::Eval,
            step: &step,
            dropout_seed: 0,
            perturbation: None,
            activated: None,
        })
    };
    let direct = record(&Saved::Nothing);
    let unfolded = record(&conv.saved(&ctx, p, N, 1));

    // Both must compute the same thing before their speeds mean anything.
    kernel::run(&ctx, &direct).unwrap();
    let a = y.read_real(&ctx, p).unwrap();
    kernel::run(&ctx, &unfolded).unwrap();
    let b = y.read_real(&ctx, p).unwrap();
    let diff = (a.iter().zip(&b))
        .map(|(u, v)| (u - v).abs())
        .fold(0.0, f64::max);
    assert!(
        diff < 1e-5,
        "direct and im2col convolutions differ by {diff}"
    );

    let macs = N * conv.output_size() * conv.c * conv.k * conv.k;
    let mut group = c.benchmark_group("conv_forward_simpleconvnet_batch100");
    group.throughput(Throughput::Elements((2 * macs) as u64));
    group.bench_function("direct", |bch| {
        bch.iter(|| kernel::run(&ctx, &direct).unwrap())
    });
    group.bench_function("im2col_matmul", |bch| {
        bch.iter(|| kernel::run(&ctx, &unfolded).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = conv
}
criterion_main!(benches);
