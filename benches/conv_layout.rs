//! Direct convolution against im2col + matmul, for the book's SimpleConvNet layer (batch 100,
//! 1×28×28 input, 30 filters of 5×5): the measurement behind training and evaluation running the
//! convolution as im2col + matmul, while the perturbed copies of a gradient check keep the direct
//! kernel of shaders/conv.wgsl. The im2col path is the classic one: unfold the input into [N·OH·OW, C·K·K] rows,
//! multiply by Wᵀ with the (register-blocked) matmul kernel, and transpose NHWC back to NCHW.
//!
//! ```text
//! cargo bench --bench conv_layout
//! ```

use std::time::Duration;

use bytemuck::{Pod, Zeroable};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use wgrad::gpu::buffers::uniform;
use wgrad::gpu::kernel::{self, grid, shaders, Binding, Shader};
use wgrad::gpu::{GpuBuffer, GpuContext, Kernel, Precision};
use wgrad::nn::layers::conv;

const IM2COL: Shader = Shader {
    name: "bench_im2col",
    source: r#"
struct Params { n: u32, c: u32, h: u32, w: u32, k: u32, oh: u32, ow: u32, row_width: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<real>;
@group(0) @binding(2) var<storage, read_write> y: array<real>;

// col[(n·OH + oy)·OW + ox, (c·K + ky)·K + kx] = x[n, c, oy + ky, ox + kx]   (stride 1, no pad)
@compute @workgroup_size(64)
fn im2col(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * P.row_width + gid.x;
    let ckk = P.c * P.k * P.k;
    if (i >= P.n * P.oh * P.ow * ckk) { return; }
    let col = i % ckk;
    let row = i / ckk;
    let kx = col % P.k;
    let ky = (col / P.k) % P.k;
    let c = col / (P.k * P.k);
    let ox = row % P.ow;
    let oy = (row / P.ow) % P.oh;
    let n = row / (P.ow * P.oh);
    y[i] = x[((n * P.c + c) * P.h + oy + ky) * P.w + ox + kx];
}

// NHWC [N·OH·OW, F] (here: c = F) -> NCHW [N, F, OH, OW]
@compute @workgroup_size(64)
fn to_nchw(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * P.row_width + gid.x;
    let plane = P.oh * P.ow;
    if (i >= P.n * P.c * plane) { return; }
    let o = i % plane;
    let f = (i / plane) % P.c;
    let n = i / (plane * P.c);
    y[i] = x[(n * plane + o) * P.c + f];
}
"#,
};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct MatmulParams([u32; 16]);

const N: usize = 100;
const C: usize = 1;
const H: usize = 28;
const K: usize = 5;
const F: usize = 30;
const OH: usize = H - K + 1;

fn conv(c: &mut Criterion) {
    let ctx = GpuContext::new(&Default::default())
        .expect("a GPU adapter (lavapipe: mesa-vulkan-drivers)");
    eprintln!("benchmarking on {}", ctx.describe());
    let p = Precision::F32;
    let x = GpuBuffer::from_real(
        &ctx,
        "x",
        &(0..N * C * H * H)
            .map(|i| (i % 255) as f64 / 255.0)
            .collect::<Vec<_>>(),
        p,
    );
    // The arena: W [F, C, K, K] then b [F].
    let w_len = F * C * K * K;
    let theta = GpuBuffer::from_real(
        &ctx,
        "theta",
        &(0..w_len + F)
            .map(|i| ((i % 7) as f64 - 3.0) * 0.01)
            .collect::<Vec<_>>(),
        p,
    );
    let y = GpuBuffer::real(&ctx, "y", N * F * OH * OH, p);
    let dummy = GpuBuffer::real(&ctx, "dummy", 1, p);
    let dummy_u = GpuBuffer::zeroed(&ctx, "dummy_u", 4, 4);
    use Binding::*;

    // Direct: one invocation per output element.
    let direct = Kernel::new(
        &ctx,
        conv::SHADER,
        "conv_forward",
        p,
        &[Uniform, Read, Read, ReadWrite, Read, Read],
        &[],
    );
    let count = N * F * OH * OH;
    let (g, width) = grid(count);
    let params = [
        N,
        C,
        H,
        H,
        F,
        K,
        K,
        1,
        0,
        OH,
        OH,
        1,
        0,
        0,
        w_len,
        width as usize,
        0,
        N,
        0,
        0,
    ]
    .map(|v| v as u32);
    let u = uniform(&ctx, "conv", &params);
    let direct = [direct.dispatch(
        &ctx,
        &[
            &u,
            &x.buffer,
            &theta.buffer,
            &y.buffer,
            &dummy_u.buffer,
            &dummy.buffer,
        ],
        g,
    )];

    // im2col + matmul + transpose.
    let rows = N * OH * OH;
    let ckk = C * K * K;
    let col = GpuBuffer::real(&ctx, "col", rows * ckk, p);
    let nhwc = GpuBuffer::real(&ctx, "nhwc", rows * F, p);
    let unfold = Kernel::new(&ctx, IM2COL, "im2col", p, &[Uniform, Read, ReadWrite], &[]);
    let back = Kernel::new(&ctx, IM2COL, "to_nchw", p, &[Uniform, Read, ReadWrite], &[]);
    let matmul = Kernel::new(
        &ctx,
        shaders::MATMUL,
        "matmul",
        p,
        &[Uniform, Read, Read, Read, ReadWrite, Read, Read],
        &[],
    );
    let (g1, w1) = grid(rows * ckk);
    let u1 = uniform(
        &ctx,
        "im2col",
        &[N, C, H, H, K, OH, OH, w1 as usize].map(|v| v as u32),
    );
    // C[rows, F] = col[rows, CKK] · Wᵀ (B(k, f) = W[f, k]) + b, flags = ADD_BIAS.
    let mp = MatmulParams([
        rows as u32,
        F as u32,
        ckk as u32,
        1,
        0,
        ckk as u32,
        1,
        0,
        0,
        1,
        ckk as u32,
        w_len as u32,
        0,
        F as u32,
        0,
        0,
    ]);
    let u2 = uniform(&ctx, "matmul", &mp);
    let (g3, w3) = grid(count);
    let u3 = uniform(
        &ctx,
        "to_nchw",
        &[N, F, H, H, K, OH, OH, w3 as usize].map(|v| v as u32),
    );
    let im2col = [
        unfold.dispatch(&ctx, &[&u1, &x.buffer, &col.buffer], g1),
        matmul.dispatch(
            &ctx,
            &[
                &u2,
                &col.buffer,
                &theta.buffer,
                &theta.buffer,
                &nhwc.buffer,
                &dummy_u.buffer,
                &dummy.buffer,
            ],
            [kernel::groups(F, 32), kernel::groups(rows, 32), 1],
        ),
        back.dispatch(&ctx, &[&u3, &nhwc.buffer, &y.buffer], g3),
    ];

    // Both must compute the same thing before their speeds mean anything.
    kernel::run(&ctx, &direct).unwrap();
    let a = y.read_real(&ctx, p).unwrap();
    kernel::run(&ctx, &im2col).unwrap();
    let b = y.read_real(&ctx, p).unwrap();
    let diff = a
        .iter()
        .zip(&b)
        .map(|(u, v)| (u - v).abs())
        .fold(0.0, f64::max);
    assert!(
        diff < 1e-5,
        "direct and im2col convolutions differ by {diff}"
    );

    let mut group = c.benchmark_group("conv_forward_simpleconvnet_batch100");
    group.throughput(Throughput::Elements((2 * count * ckk) as u64));
    group.bench_function("direct", |bch| {
        bch.iter(|| kernel::run(&ctx, &direct).unwrap())
    });
    group.bench_function("im2col_matmul", |bch| {
        bch.iter(|| kernel::run(&ctx, &im2col).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = conv
}
criterion_main!(benches);
