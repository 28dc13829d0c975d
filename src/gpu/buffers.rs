//! Storage buffers of the shader scalar type `real` (f32 or f64), uploads and readbacks.
//!
//! The host side always speaks f64; conversion happens at the boundary so the same host code
//! drives both precisions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use wgpu::util::DeviceExt;

use super::GpuContext;
use crate::error::{Error, Result};

/// The scalar type `real` that every shader is built over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F64,
}

impl Precision {
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F64 => 8,
        }
    }

    /// Packs host values as this precision's bytes.
    pub fn encode(self, values: &[f64]) -> Vec<u8> {
        match self {
            Precision::F32 => {
                let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
                bytemuck::cast_slice(&v).to_vec()
            }
            Precision::F64 => bytemuck::cast_slice(values).to_vec(),
        }
    }

    pub fn decode(self, bytes: &[u8]) -> Vec<f64> {
        match self {
            Precision::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(bytes)
                .into_iter()
                .map(f64::from)
                .collect(),
            Precision::F64 => bytemuck::pod_collect_to_vec::<u8, f64>(bytes),
        }
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Precision::F32),
            "f64" | "float64" => Ok(Precision::F64),
            other => Err(Error::InvalidArgument(format!(
                "unknown precision '{other}': use 'f32' or 'f64'"
            ))),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F64 => "f64",
        })
    }
}

/// A storage buffer and the number of elements it holds. A clone is another handle to the same
/// buffer.
#[derive(Clone)]
pub struct GpuBuffer {
    pub buffer: wgpu::Buffer,
    pub len: usize,
    pub elem_bytes: usize,
}

/// Storage buffers are whole vec4s of f64, so that a kernel may read any of them four elements
/// at a time (matmul.wgsl's vec4 views); the tail past `len` is zero and never read back.
const VEC4_BYTES: usize = 32;

const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

impl GpuBuffer {
    /// A zeroed buffer of `len` elements of `elem_bytes` each (at least one element, since
    /// empty bindings are not allowed).
    pub fn zeroed(ctx: &GpuContext, label: &str, len: usize, elem_bytes: usize) -> Self {
        let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (len.max(1) * elem_bytes).next_multiple_of(VEC4_BYTES) as u64,
            usage: STORAGE,
            mapped_at_creation: false,
        });
        GpuBuffer {
            buffer,
            len,
            elem_bytes,
        }
    }

    /// A zeroed buffer of `bytes` for a uniform array, filled by copies.
    pub fn uniform_array(ctx: &GpuContext, label: &str, bytes: usize) -> Self {
        let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        GpuBuffer {
            buffer,
            len: bytes,
            elem_bytes: 1,
        }
    }

    pub fn real(ctx: &GpuContext, label: &str, len: usize, precision: Precision) -> Self {
        Self::zeroed(ctx, label, len, precision.bytes())
    }

    pub fn from_bytes(ctx: &GpuContext, label: &str, bytes: &[u8], elem_bytes: usize) -> Self {
        let mut contents = bytes.to_vec();
        contents.resize(bytes.len().max(elem_bytes).next_multiple_of(VEC4_BYTES), 0);
        let buffer = ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &contents,
                usage: STORAGE,
            });
        GpuBuffer {
            buffer,
            len: bytes.len() / elem_bytes,
            elem_bytes,
        }
    }

    pub fn from_real(ctx: &GpuContext, label: &str, values: &[f64], precision: Precision) -> Self {
        Self::from_bytes(ctx, label, &precision.encode(values), precision.bytes())
    }

    pub fn from_u32(ctx: &GpuContext, label: &str, values: &[u32]) -> Self {
        Self::from_bytes(ctx, label, bytemuck::cast_slice(values), 4)
    }

    pub fn write_real(
        &self,
        ctx: &GpuContext,
        offset: usize,
        values: &[f64],
        precision: Precision,
    ) {
        ctx.queue.write_buffer(
            &self.buffer,
            (offset * precision.bytes()) as u64,
            &precision.encode(values),
        );
    }

    pub fn write_u32(&self, ctx: &GpuContext, offset: usize, values: &[u32]) {
        ctx.queue.write_buffer(
            &self.buffer,
            (offset * 4) as u64,
            bytemuck::cast_slice(values),
        );
    }

    /// Copies elements `range` back to the host (waits for the GPU).
    pub fn read_bytes(&self, ctx: &GpuContext, range: std::ops::Range<usize>) -> Result<Vec<u8>> {
        let start = (range.start * self.elem_bytes) as u64;
        let size = (range.len() * self.elem_bytes) as u64;
        if size == 0 {
            return Ok(Vec::new());
        }
        let padded = size.next_multiple_of(4);
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: padded,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&self.buffer, start, &staging, 0, padded);
        ctx.queue.submit([encoder.finish()]);
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        ctx.wait()?;
        rx.recv()
            .map_err(|_| Error::Gpu("readback callback never ran".into()))?
            .map_err(|e| Error::Gpu(format!("mapping a readback buffer failed: {e}")))?;
        let data = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("reading a mapped buffer failed: {e:?}")))?;
        let out = data[..size as usize].to_vec();
        drop(data);
        staging.unmap();
        Ok(out)
    }

    pub fn read_real(&self, ctx: &GpuContext, precision: Precision) -> Result<Vec<f64>> {
        self.read_real_range(ctx, precision, 0..self.len)
    }

    pub fn read_real_range(
        &self,
        ctx: &GpuContext,
        precision: Precision,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<f64>> {
        Ok(precision.decode(&self.read_bytes(ctx, range)?))
    }

    pub fn read_u32(&self, ctx: &GpuContext) -> Result<Vec<u32>> {
        Ok(bytemuck::pod_collect_to_vec(
            &self.read_bytes(ctx, 0..self.len)?,
        ))
    }
}

/// A uniform buffer holding one `#[repr(C)]` parameter block, written once.
pub fn uniform<T: bytemuck::Pod>(ctx: &GpuContext, label: &str, value: &T) -> wgpu::Buffer {
    ctx.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::bytes_of(value),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        })
}
