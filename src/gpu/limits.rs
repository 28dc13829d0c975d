//! Sizes the kernels accept. lavapipe stops a shader invocation after 65,535 loop iterations,
//! counted over all its loops, and then leaves the outputs it has not yet written unwritten,
//! silently; these limits keep every kernel's loops below that (README, "Notes on lavapipe").

/// Widest layer: the matmul loops over a layer's inputs, and its other loops take a few more
/// (65,520 inputs were computed right, 65,530 were not), so the limit keeps 31 spare.
pub const MAX_WIDTH: usize = 65_504;

/// Most classes a net's last layer may have: softmax cross-entropy makes three passes over a
/// row's classes in one invocation (max, sum of exponentials, gradient), under the same 65,535
/// iterations (21,000 classes were computed right, 22,000 were not).
pub const MAX_CLASSES: usize = 21_800;

/// Most parameters a net may have: the shaders index the parameter arena with u32.
pub const MAX_PARAMS: usize = u32::MAX as usize;

/// Most rows per batch: the backward matmul and column sums loop over the rows.
pub const MAX_ROWS: usize = 32_768;

/// Memory the host can still hand out (Linux's MemAvailable), if the system says.
pub fn host_memory_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
