//! `wgrad devices`: the adapters wgpu sees.

use std::process::ExitCode;

use wgrad::gpu::list_adapters;
use wgrad::{report, Result};

/// The examples under `wgrad devices --help`.
pub const EXAMPLES: &str = "Examples:
  wgrad devices
  wgrad devices --json";

pub fn run_devices(json: bool) -> Result<ExitCode> {
    let adapters = list_adapters();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&adapters).expect("serialisable")
        );
    } else {
        print!("{}", report::devices_text(&adapters));
    }
    Ok(ExitCode::SUCCESS)
}
