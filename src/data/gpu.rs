//! A data set resident on the GPU for a whole run, and the batch gather (shaders/gather.wgsl)
//! that picks each step's rows through an index buffer (the epoch's permutation) at a batch
//! cursor kept in a GPU state word, so no step uploads anything.
//!
//! Shapes: pixels [samples, D] as packed bytes, labels [samples], index [samples] ->
//! x [N, D] (pixel / 255), labels [N] (0xffffffff past the end).

use bytemuck::{Pod, Zeroable};

use super::Dataset;
use crate::gpu::kernel::{grid, shaders, Binding, Entry, KernelBindings, Placeholders};
use crate::gpu::{Dispatch, Gpu, GpuBuffer, GpuContext};

/// A data set on the GPU: pixels as packed bytes, labels, and an index (permutation).
pub struct GpuDataset {
    pub len: usize,
    pub features: usize,
    pixels: GpuBuffer,
    labels: GpuBuffer,
    pub index: GpuBuffer,
}

/// gather.wgsl's Params.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct GatherParams {
    /// Rows per batch.
    pub n: u32,
    pub features: u32,
    /// Valid entries of `index`.
    pub samples: u32,
    /// Which state word holds the batch number.
    pub cursor_slot: u32,
    pub row_width: u32,
    pub _pad: [u32; 3],
}

/// gather.wgsl's buffers.
pub struct GatherBindings<'a> {
    pub pixels: &'a GpuBuffer,
    pub labels: &'a GpuBuffer,
    pub index: &'a GpuBuffer,
    pub state: &'a GpuBuffer,
    pub x: &'a GpuBuffer,
    pub labels_out: &'a GpuBuffer,
}

impl KernelBindings for GatherBindings<'_> {
    type Params = GatherParams;
    const ACCESS: &'static [Binding] = &[
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::ReadWrite,
    ];
    fn buffers<'a>(&'a self, _: &'a Placeholders) -> Vec<&'a wgpu::Buffer> {
        vec![
            &self.pixels.buffer,
            &self.labels.buffer,
            &self.index.buffer,
            &self.state.buffer,
            &self.x.buffer,
            &self.labels_out.buffer,
        ]
    }
}

const GATHER: Entry = Entry::new(shaders::GATHER, "gather");

impl GpuDataset {
    pub fn new(ctx: &GpuContext, data: &Dataset) -> GpuDataset {
        let labels: Vec<u32> = data.labels.iter().map(|&l| u32::from(l)).collect();
        let identity: Vec<u32> = (0..data.len() as u32).collect();
        GpuDataset {
            len: data.len(),
            features: data.image_size(),
            pixels: GpuBuffer::from_bytes(ctx, "pixels", &data.images, 4),
            labels: GpuBuffer::from_u32(ctx, "labels", &labels),
            index: GpuBuffer::from_u32(ctx, "index", &identity),
        }
    }

    /// Gathers batch number `state[cursor_slot]` of `index` into `x` and `labels` ([rows, D], \[rows]).
    pub fn gather(
        &self,
        gpu: &Gpu,
        (x, labels): (&GpuBuffer, &GpuBuffer),
        state: &GpuBuffer,
        cursor_slot: u32,
    ) -> Dispatch {
        let rows = labels.len;
        // Rows of whole pixel words are unpacked a word (four pixels) an invocation.
        let quads = self.features.is_multiple_of(4);
        let per_invocation = if quads { 4 } else { 1 };
        let (groups, row_width) = grid(rows * self.features / per_invocation);
        let params = GatherParams {
            n: rows as u32,
            features: self.features as u32,
            samples: self.len as u32,
            cursor_slot,
            row_width,
            _pad: [0; 3],
        };
        let bindings = GatherBindings {
            pixels: &self.pixels,
            labels: &self.labels,
            index: &self.index,
            state,
            x,
            labels_out: labels,
        };
        let constants = [("QUADS", f64::from(u8::from(quads)))];
        gpu.kernels
            .dispatch_specialised(gpu.ctx, &GATHER, &constants, &params, &bindings, groups)
    }
}
