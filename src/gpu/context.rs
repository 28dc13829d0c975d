//! Choosing an adapter and opening a device on it.
//!
//! wgpu silently falls back to a GL adapter (no f64, no subgroups) when the Vulkan driver is
//! missing, so we always say which adapter runs, rank real GPUs and Vulkan first, and fail with
//! an install hint when nothing usable is there.

use serde::Serialize;

use super::Precision;
use crate::error::{Error, Result};

const INSTALL_HINT: &str = "install a Vulkan driver for your GPU, or software Vulkan (lavapipe) \
with `apt-get install -y mesa-vulkan-drivers libvulkan1`";

/// How to pick an adapter. Empty fields fall back to `WGPU_BACKEND` / `WGPU_ADAPTER_NAME`.
#[derive(Clone, Debug, Default)]
pub struct AdapterOptions {
    /// Case-insensitive substring of the adapter name (`--adapter`).
    pub name: Option<String>,
}

/// What `wgrad devices` prints for each adapter.
#[derive(Clone, Debug, Serialize)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub f64: bool,
    pub subgroups: bool,
    pub timestamps: bool,
    pub max_storage_binding_mib: u64,
}

impl AdapterSummary {
    fn of(index: usize, adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let features = adapter.features();
        AdapterSummary {
            index,
            name: info.name,
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver,
            driver_info: info.driver_info,
            f64: features.contains(wgpu::Features::SHADER_F64),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            max_storage_binding_mib: adapter.limits().max_storage_buffer_binding_size >> 20,
        }
    }
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    wgpu::Instance::new(desc)
}

fn enumerate(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    pollster::block_on(instance.enumerate_adapters(backends))
}

/// Every adapter wgpu can see, in the order `--adapter` would rank them.
pub fn list_adapters() -> Vec<AdapterSummary> {
    let instance = instance();
    let mut adapters = enumerate(&instance);
    adapters.sort_by_key(rank);
    adapters
        .iter()
        .enumerate()
        .map(|(i, a)| AdapterSummary::of(i, a))
        .collect()
}

/// Lower is better: a real GPU before a software one, Vulkan/Metal/DX12 before GL, f64 first.
fn rank(adapter: &wgpu::Adapter) -> (u8, u8, u8) {
    let info = adapter.get_info();
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    let f64 = u8::from(!adapter.features().contains(wgpu::Features::SHADER_F64));
    (backend, device, f64)
}

/// An open device on the chosen adapter.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    pub(crate) modules: super::kernel::ModuleCache,
    /// The first error the device reported outside an error scope, or its loss. wgpu's default
    /// is to panic; wgrad reports it at the next wait instead, as an error with the step reached.
    fault: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl GpuContext {
    /// Picks the best adapter (or the one named) and opens a device with f64 and timestamps
    /// where the adapter has them.
    pub fn new(options: &AdapterOptions) -> Result<Self> {
        let instance = instance();
        let mut adapters = enumerate(&instance);
        if adapters.is_empty() {
            return Err(Error::NoAdapter(format!(
                "wgpu found no adapter at all; {INSTALL_HINT}"
            )));
        }
        let wanted = options
            .name
            .clone()
            .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok());
        if let Some(wanted) = wanted.as_deref().filter(|w| !w.is_empty()) {
            let needle = wanted.to_lowercase();
            let names: Vec<String> = adapters
                .iter()
                .map(|a| format!("{} ({:?})", a.get_info().name, a.get_info().backend))
                .collect();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&needle));
            if adapters.is_empty() {
                return Err(Error::NoAdapter(format!(
                    "no adapter name contains '{wanted}'; available: {} (see `wgrad devices`)",
                    names.join(", ")
                )));
            }
        }
        adapters.sort_by_key(rank);
        Self::open(adapters.swap_remove(0))
    }

    /// Every adapter a gradient check can spread over (`gradcheck --adapter all`), best first:
    /// those of the best adapter's backend, since wgpu lists a device once per backend that
    /// reaches it (lavapipe as Vulkan and as GL); and software adapters only where there is no
    /// GPU, as a check split evenly waits for its slowest adapter.
    pub fn open_all() -> Result<Vec<Self>> {
        let mut adapters = enumerate(&instance());
        adapters.sort_by_key(rank);
        let Some(best) = adapters.first().map(|a| a.get_info()) else {
            return Err(Error::NoAdapter(format!(
                "wgpu found no adapter at all; {INSTALL_HINT}"
            )));
        };
        let on_host = |info: &wgpu::AdapterInfo| info.device_type == wgpu::DeviceType::Cpu;
        adapters.retain(|a| {
            let info = a.get_info();
            info.backend == best.backend && (on_host(&best) || !on_host(&info))
        });
        adapters.into_iter().map(Self::open).collect()
    }

    /// Opens a device on `adapter` with f64 and timestamps where it has them.
    fn open(adapter: wgpu::Adapter) -> Result<Self> {
        let info = adapter.get_info();
        if info.backend == wgpu::Backend::Gl {
            eprintln!(
                "wgrad: warning: running on the GL backend ({}), which lacks f64; {INSTALL_HINT}",
                info.name
            );
        }
        let optional = wgpu::Features::SHADER_F64
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let features = adapter.features() & optional;
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgrad"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::Gpu(format!("could not open a device on '{}': {e}", info.name)))?;
        let fault: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
        let record = |fault: &std::sync::Arc<std::sync::Mutex<Option<String>>>| {
            let fault = fault.clone();
            move |message: String| {
                let mut first = fault.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert(message);
            }
        };
        let on_error = record(&fault);
        device.on_uncaptured_error(std::sync::Arc::new(move |e: wgpu::Error| {
            on_error(e.to_string())
        }));
        let on_loss = record(&fault);
        device.set_device_lost_callback(move |reason, message| {
            on_loss(format!("the device was lost ({reason:?}): {message}"))
        });
        Ok(GpuContext {
            device,
            queue,
            info,
            limits,
            features,
            modules: Default::default(),
            fault,
        })
    }

    /// The error the device reported since it was opened, if any.
    pub fn check(&self) -> Result<()> {
        let fault = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        match fault.as_deref() {
            None => Ok(()),
            Some(message) => Err(Error::Gpu(format!(
                "the GPU reported an error: {message}; try a smaller --batch-size or narrower \
                 layers, or another adapter (`wgrad devices`)"
            ))),
        }
    }

    pub fn supports(&self, precision: Precision) -> bool {
        match precision {
            Precision::F32 => true,
            Precision::F64 => self.features.contains(wgpu::Features::SHADER_F64),
        }
    }

    /// Fails with a clear message when the adapter cannot run `precision`.
    pub fn require(&self, precision: Precision) -> Result<()> {
        if self.supports(precision) {
            Ok(())
        } else {
            Err(Error::MissingFeature {
                adapter: self.describe(),
                feature: "SHADER_F64 (64-bit floats in shaders)",
                hint: format!(
                    "use --precision f32, or an adapter with f64 (Vulkan on NVIDIA/AMD, or lavapipe); {INSTALL_HINT}"
                ),
            })
        }
    }

    /// "NAME (Backend, DeviceType)".
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?})",
            self.info.name, self.info.backend, self.info.device_type
        )
    }

    /// The adapter as JSON: name, backend, device_type.
    pub fn adapter_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.info.name,
            "backend": format!("{:?}", self.info.backend),
            "device_type": format!("{:?}", self.info.device_type),
            "driver": self.info.driver,
        })
    }

    /// Blocks until all submitted work is done, and fails if the device reported an error.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
        self.check()
    }

    /// Largest element count one storage binding may hold for a given element size.
    pub fn max_binding_elems(&self, elem_bytes: usize) -> usize {
        (self.limits.max_storage_buffer_binding_size as usize)
            .min(self.limits.max_buffer_size as usize)
            / elem_bytes
    }
}
