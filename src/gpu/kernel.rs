//! Compute kernels: WGSL sources embedded in the binary, built over a precision prelude that
//! defines `real`, and turned into pipelines with explicit bind-group layouts.

use std::collections::HashMap;
use std::sync::Mutex;

use super::buffers::uniform;
use super::{GpuBuffer, GpuContext, Precision};
use crate::error::Result;
use crate::nn::CrossEntropy;

/// One WGSL file of shaders/, embedded so the binary runs from anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

/// The [`Shader`] of a file in shaders/. A shader that one layer alone uses is declared in that
/// layer's module (`src/nn/layers/`); the ones several parts share are in [`shaders`].
#[macro_export]
macro_rules! shader {
    ($file:literal) => {
        $crate::gpu::kernel::Shader {
            name: $file,
            source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file)),
        }
    };
}

/// The shader files that several layers or modules share.
pub mod shaders {
    use super::Shader;
    pub const MATMUL: Shader = shader!("matmul.wgsl");
    pub const ACTIVATION: Shader = shader!("activation.wgsl");
    pub const SOFTMAX_CE: Shader = shader!("softmax_ce.wgsl");
    pub const METRICS: Shader = shader!("metrics.wgsl");
    pub const L2: Shader = shader!("l2.wgsl");
    pub const GATHER: Shader = shader!("gather.wgsl");
    pub const OPTIM: Shader = shader!("optim.wgsl");
    pub const PERTURBED_MLP: Shader = shader!("perturbed_mlp.wgsl");
}

const PRELUDE_F32: &str = include_str!("../../shaders/precision_f32.wgsl");
const PRELUDE_F64: &str = include_str!("../../shaders/precision_f64.wgsl");

/// Files a shader may pull in with a line `#include "name"`: WGSL has no includes, so what
/// several shaders share (the trainer's word layout, the activation functions) is written once
/// here and pasted in. An include that is not listed fails loudly instead of compiling without it.
pub const INCLUDES: &[(&str, &str)] = &[
    ("words.wgsl", include_str!("../../shaders/words.wgsl")),
    (
        "cross_entropy.wgsl",
        include_str!("../../shaders/cross_entropy.wgsl"),
    ),
    (
        "softmax_row.wgsl",
        include_str!("../../shaders/softmax_row.wgsl"),
    ),
    (
        "activations.wgsl",
        include_str!("../../shaders/activations.wgsl"),
    ),
    (
        "moved_channel.wgsl",
        include_str!("../../shaders/moved_channel.wgsl"),
    ),
    (
        "dense_row.wgsl",
        include_str!("../../shaders/dense_row.wgsl"),
    ),
];

/// `source` with each `#include "name"` line replaced by that file (itself expanded).
fn expand_includes(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.trim().strip_prefix("#include ") {
            Some(name) => {
                let name = name.trim().trim_matches('"');
                let (_, text) = INCLUDES
                    .iter()
                    .find(|(file, _)| *file == name)
                    .unwrap_or_else(|| panic!("shader include \"{name}\" is not in INCLUDES"));
                expand_includes(text)
            }
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The text every shader built for `precision` starts with: the `real` alias and its helpers.
pub fn prelude(precision: Precision) -> &'static str {
    match precision {
        Precision::F32 => PRELUDE_F32,
        Precision::F64 => PRELUDE_F64,
    }
}

/// What the host sets between the prelude and every shader: the ε of `loss`'s log, which
/// cross_entropy.wgsl reads.
pub fn host_constants(loss: CrossEntropy) -> String {
    format!("const LOSS_EPS: real = {:e};", loss.eps())
}

/// Full WGSL text of `shader` built for `precision`: the prelude, the host's constants, the
/// shader.
pub fn source_for(shader: Shader, precision: Precision, loss: CrossEntropy) -> String {
    format!(
        "{}\n{}\n{}",
        prelude(precision),
        host_constants(loss),
        expand_includes(shader.source)
    )
}

/// Shader modules compiled so far, per file, precision and loss: a net builds dozens of
/// pipelines from a handful of files.
#[derive(Default)]
pub struct ModuleCache {
    modules: Mutex<HashMap<(&'static str, Precision, CrossEntropy), wgpu::ShaderModule>>,
}

impl ModuleCache {
    fn get(
        &self,
        ctx: &GpuContext,
        shader: Shader,
        precision: Precision,
        loss: CrossEntropy,
    ) -> wgpu::ShaderModule {
        let mut modules = self.modules.lock().expect("module cache poisoned");
        modules
            .entry((shader.name, precision, loss))
            .or_insert_with(|| {
                let source = source_for(shader, precision, loss);
                ctx.device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(shader.name),
                        source: wgpu::ShaderSource::Wgsl(source.into()),
                    })
            })
            .clone()
    }
}

/// How a kernel sees one binding (all in group 0, numbered in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    Uniform,
    Read,
    ReadWrite,
}

/// A compute pipeline and the layout its bind groups must follow.
#[derive(Clone)]
pub struct Kernel {
    pub name: String,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    bindings: Vec<Binding>,
}

impl Kernel {
    /// Builds `entry` of `shader` for `precision`, with override constants, for log-softmax's
    /// loss.
    pub fn new(
        ctx: &GpuContext,
        shader: Shader,
        entry: &str,
        precision: Precision,
        bindings: &[Binding],
        constants: &[(&str, f64)],
    ) -> Kernel {
        let loss = CrossEntropy::LogSoftmax;
        Kernel::build(ctx, shader, entry, (precision, loss), bindings, constants)
    }

    /// [`Kernel::new`] for the loss `loss`.
    fn build(
        ctx: &GpuContext,
        shader: Shader,
        entry: &str,
        (precision, loss): (Precision, CrossEntropy),
        bindings: &[Binding],
        constants: &[(&str, f64)],
    ) -> Kernel {
        let module = ctx.modules.get(ctx, shader, precision, loss);
        let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match b {
                        Binding::Uniform => wgpu::BufferBindingType::Uniform,
                        Binding::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Binding::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let label = format!("{}::{entry}/{precision}", shader.name);
        let layout = ctx
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&label),
                entries: &entries,
            });
        let pipeline_layout = ctx
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&label),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = ctx
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        Kernel {
            name: label,
            pipeline,
            layout,
            bindings: bindings.to_vec(),
        }
    }

    /// A ready-to-record dispatch of this kernel over `buffers` (one per binding, in order).
    pub fn dispatch(
        &self,
        ctx: &GpuContext,
        buffers: &[&wgpu::Buffer],
        workgroups: [u32; 3],
    ) -> Dispatch {
        assert_eq!(
            buffers.len(),
            self.bindings.len(),
            "kernel {} binding count",
            self.name
        );
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&self.name),
            layout: &self.layout,
            entries: &entries,
        });
        Dispatch {
            label: self.name.clone(),
            flops: None,
            pipeline: self.pipeline.clone(),
            bind_group,
            workgroups,
        }
    }
}

/// One recorded kernel launch: pipeline, bind group and grid, all built ahead of time.
#[derive(Clone)]
pub struct Dispatch {
    /// The kernel it launches (shader::entry/precision).
    pub label: String,
    /// Floating-point operations it performs, where counted (matmuls: 2·M·N·K per copy).
    pub flops: Option<u64>,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
}

impl Dispatch {
    /// The same launch, counted as `flops` floating-point operations.
    pub fn with_flops(self, flops: u64) -> Dispatch {
        Dispatch {
            flops: Some(flops),
            ..self
        }
    }

    /// The workgroup grid.
    pub fn workgroups(&self) -> [u32; 3] {
        self.workgroups
    }

    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        if self.workgroups.contains(&0) {
            return;
        }
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }
}

/// Records `dispatches` in order into one compute pass (wgpu inserts the barriers between them).
pub fn record_all(pass: &mut wgpu::ComputePass<'_>, dispatches: &[Dispatch]) {
    for d in dispatches {
        d.record(pass);
    }
}

/// Runs `dispatches` as one submit and waits for them.
pub fn run(ctx: &GpuContext, dispatches: &[Dispatch]) -> Result<()> {
    submit(ctx, dispatches, 1);
    ctx.wait()
}

/// Records `dispatches` `repeat` times in one command buffer and submits it without waiting.
pub fn submit(ctx: &GpuContext, dispatches: &[Dispatch], repeat: usize) {
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        for _ in 0..repeat {
            record_all(&mut pass, dispatches);
        }
    }
    ctx.queue.submit([encoder.finish()]);
}

/// Workgroups needed to cover `n` items with `per_group` items each.
pub fn groups(n: usize, per_group: usize) -> u32 {
    n.div_ceil(per_group) as u32
}

/// Elementwise kernels use 64 invocations a workgroup.
pub const ELEMENTWISE_GROUP: usize = 64;

/// A grid covering `n` elementwise invocations, folded into 2-D past the 65,535-workgroup
/// limit, and the row width (invocations per grid row) the shader needs to unfold it.
pub fn grid(n: usize) -> ([u32; 3], u32) {
    let g = n.div_ceil(ELEMENTWISE_GROUP).max(1);
    let x = g.min(65_535);
    let y = g.div_ceil(x);
    ([x as u32, y as u32, 1], (x * ELEMENTWISE_GROUP) as u32)
}

/// One entry point of a shader file, with the override constants it is built with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry {
    pub shader: Shader,
    pub name: &'static str,
    pub constants: &'static [(&'static str, f64)],
}

impl Entry {
    pub const fn new(shader: Shader, name: &'static str) -> Entry {
        Entry {
            shader,
            name,
            constants: &[],
        }
    }

    /// The same entry point built with override constants (a kink-counting or perturbed variant).
    pub const fn with(self, constants: &'static [(&'static str, f64)]) -> Entry {
        Entry { constants, ..self }
    }
}

/// A kernel's buffers, by name. Each shader's bind-group table has one bindings struct, whose
/// fields name the buffers at bindings 1, 2, … (binding 0 is the `Params` uniform, built from
/// [`KernelBindings::Params`]). A binding that an entry point of the table does not use is an
/// `Option` field; [`Kernels`] binds a placeholder there, so no call site fills slots by position.
pub trait KernelBindings {
    /// The shader's `Params` struct, `#[repr(C)]` and field for field.
    type Params: bytemuck::Pod;
    /// How the shader declares bindings 1, 2, …
    const ACCESS: &'static [Binding];
    /// The buffers of bindings 1, 2, …, with `unused` standing in for absent options.
    fn buffers<'a>(&'a self, unused: &'a Placeholders) -> Vec<&'a wgpu::Buffer>;
}

/// One-element buffers bound where an entry point's table has a binding it does not use (every
/// binding needs a buffer). Read and read-write ones are distinct, since one buffer may not be
/// bound both ways in one dispatch.
pub struct Placeholders {
    pub real: GpuBuffer,
    pub real_rw: GpuBuffer,
    pub word: GpuBuffer,
    pub word_rw: GpuBuffer,
}

impl Placeholders {
    /// `buffer`'s wgpu buffer, or the placeholder of that access.
    pub fn real<'a>(&'a self, buffer: Option<&'a GpuBuffer>) -> &'a wgpu::Buffer {
        &buffer.unwrap_or(&self.real).buffer
    }
    pub fn real_rw<'a>(&'a self, buffer: Option<&'a GpuBuffer>) -> &'a wgpu::Buffer {
        &buffer.unwrap_or(&self.real_rw).buffer
    }
    pub fn word<'a>(&'a self, buffer: Option<&'a GpuBuffer>) -> &'a wgpu::Buffer {
        &buffer.unwrap_or(&self.word).buffer
    }
    pub fn word_rw<'a>(&'a self, buffer: Option<&'a GpuBuffer>) -> &'a wgpu::Buffer {
        &buffer.unwrap_or(&self.word_rw).buffer
    }
}

/// A device and the pipelines built on it: what recording a dispatch needs.
#[derive(Clone, Copy)]
pub struct Gpu<'a> {
    pub ctx: &'a GpuContext,
    pub kernels: &'a Kernels,
}

impl Gpu<'_> {
    pub fn precision(&self) -> Precision {
        self.kernels.precision
    }
}

/// The compute pipelines of one device, precision and loss, built on first use
/// and kept: layers ask for their entry points by [`Entry`] and get a ready [`Dispatch`] back.
pub struct Kernels {
    pub precision: Precision,
    pub loss: CrossEntropy,
    built: Mutex<HashMap<String, Kernel>>,
    pub unused: Placeholders,
}

impl Kernels {
    /// Kernels for log-softmax's loss. Fails when the adapter cannot run `precision` (f64
    /// needs SHADER_F64).
    pub fn new(ctx: &GpuContext, precision: Precision) -> Result<Kernels> {
        Kernels::with_loss(ctx, precision, CrossEntropy::LogSoftmax)
    }

    /// Kernels whose loss kernels report `loss` (a net's `spec.conventions.cross_entropy()`).
    pub fn with_loss(
        ctx: &GpuContext,
        precision: Precision,
        loss: CrossEntropy,
    ) -> Result<Kernels> {
        ctx.require(precision)?;
        Ok(Kernels {
            precision,
            loss,
            built: Mutex::new(HashMap::new()),
            unused: Placeholders {
                real: GpuBuffer::real(ctx, "unused", 4, precision),
                real_rw: GpuBuffer::real(ctx, "unused_rw", 4, precision),
                word: GpuBuffer::zeroed(ctx, "unused_u32", 1, 4),
                word_rw: GpuBuffer::zeroed(ctx, "unused_u32_rw", 1, 4),
            },
        })
    }

    /// The pipeline of `entry` over the binding table `access`. A shader that fails validation
    /// is a bug in wgrad, not in the input, so it panics with wgpu's message.
    pub fn kernel(&self, ctx: &GpuContext, entry: &Entry, access: &[Binding]) -> Kernel {
        self.specialised(ctx, entry, &[], access)
    }

    /// [`Kernels::kernel`], with `sizes` added to the entry's override constants (see
    /// [`Kernels::dispatch_specialised`]).
    fn specialised(
        &self,
        ctx: &GpuContext,
        entry: &Entry,
        sizes: &[(&'static str, f64)],
        access: &[Binding],
    ) -> Kernel {
        let constants: Vec<(&str, f64)> = entry.constants.iter().chain(sizes).copied().collect();
        let key = format!("{}::{}{:?}", entry.shader.name, entry.name, constants);
        let mut built = self.built.lock().expect("kernel cache poisoned");
        built
            .entry(key)
            .or_insert_with(|| {
                let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
                let mut bindings = vec![Binding::Uniform];
                bindings.extend_from_slice(access);
                let kernel = Kernel::build(
                    ctx,
                    entry.shader,
                    entry.name,
                    (self.precision, self.loss),
                    &bindings,
                    &constants,
                );
                if let Some(e) = pollster::block_on(scope.pop()) {
                    panic!("building kernel {}: {e}", kernel.name);
                }
                kernel
            })
            .clone()
    }

    /// A dispatch of `entry` with its `Params` uniform and named buffers over `workgroups`.
    pub fn dispatch<B: KernelBindings>(
        &self,
        ctx: &GpuContext,
        entry: &Entry,
        params: &B::Params,
        bindings: &B,
        workgroups: [u32; 3],
    ) -> Dispatch {
        self.dispatch_specialised(ctx, entry, &[], params, bindings, workgroups)
    }

    /// [`Kernels::dispatch`] of `entry` specialised to `sizes`: override constants known only at
    /// run time (a batch's rows, a net's classes), which fix loop bounds so that the compiler can
    /// unroll them. Each set of values builds its own pipeline.
    pub fn dispatch_specialised<B: KernelBindings>(
        &self,
        ctx: &GpuContext,
        entry: &Entry,
        sizes: &[(&'static str, f64)],
        params: &B::Params,
        bindings: &B,
        workgroups: [u32; 3],
    ) -> Dispatch {
        let kernel = self.specialised(ctx, entry, sizes, B::ACCESS);
        let params = uniform(ctx, entry.name, params);
        let mut buffers = vec![&params];
        buffers.extend(bindings.buffers(&self.unused));
        kernel.dispatch(ctx, &buffers, workgroups)
    }
}
