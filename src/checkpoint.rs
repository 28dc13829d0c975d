//! Checkpoints as safetensors files, so that numpy and PyTorch can read what we train and we can
//! read what they write.
//!
//! Parameters are stored as F32, one tensor per layout entry (`W1` [in, out], `b1` \[out], …), with
//! free-form string metadata in the header. Writes go to a sibling temp file that is renamed over
//! the target, so a crash or a full disk never leaves a half-written checkpoint where a good one
//! used to be.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use safetensors::tensor::View;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::gpu::Precision;
use crate::nn::{unravel, NamedTensor, ParamLayout};
use crate::optim::OptimizerState;
use crate::train::{RunRecord, RunState};

/// Values of one tensor handed to [`save_tensors`]; the variant picks the dtype in the file.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// Indices (a gradcheck shard's elements).
    U32(Vec<u32>),
    /// Flags, 0 or 1 (a gradcheck shard's kink crossings).
    U8(Vec<u8>),
}

impl TensorData {
    fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::U32(v) => v.len(),
            TensorData::U8(v) => v.len(),
        }
    }

    fn dtype(&self) -> Dtype {
        match self {
            TensorData::F32(_) => Dtype::F32,
            TensorData::F64(_) => Dtype::F64,
            TensorData::U32(_) => Dtype::U32,
            TensorData::U8(_) => Dtype::U8,
        }
    }

    fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::U8(v) => v.clone(),
        }
    }
}

impl From<Vec<f32>> for TensorData {
    fn from(v: Vec<f32>) -> Self {
        TensorData::F32(v)
    }
}

impl From<Vec<f64>> for TensorData {
    fn from(v: Vec<f64>) -> Self {
        TensorData::F64(v)
    }
}

/// Parameters read back from a checkpoint, laid out as the [`ParamLayout`] they were loaded for.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub params: Vec<f64>,
    /// Empty for files written without metadata (numpy's and PyTorch's `save_file` by default).
    pub metadata: BTreeMap<String, String>,
}

/// Checks, before any training time is spent, that a checkpoint can later be written to `path`.
pub fn ensure_writable(path: &Path) -> Result<()> {
    let (dir, name) = split_target(path)?;
    if path.is_dir() {
        return Err(is_a_directory(path));
    }
    match fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(checkpoint_error(
                path,
                format!(
                    "{} is not a folder; choose a checkpoint path inside an existing folder",
                    dir.display()
                ),
            ))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(checkpoint_error(
                path,
                format!(
                    "folder {} does not exist; create it first (mkdir -p {}) or choose another \
                     path",
                    dir.display(),
                    dir.display()
                ),
            ))
        }
        Err(e) => {
            return Err(Error::io(
                format!("checking the checkpoint folder {}", dir.display()),
                e,
            ))
        }
    }
    // Permission bits do not tell the whole story (read-only mounts, ACLs, quotas), so the only
    // reliable test is to create a file the same way `save` will.
    let probe = sibling_name(&dir, &name, "probe");
    match OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(file) => {
            drop(file);
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(checkpoint_error(
            path,
            format!(
                "cannot create files in folder {} ({e}); fix its permissions or choose another \
                 path",
                dir.display()
            ),
        )),
    }
}

/// Writes the parameters as one F32 tensor per layout tensor, plus `metadata` in the header.
///
/// Refuses, writing nothing, if any value is NaN or infinite, or too large for f32: a checkpoint
/// of broken weights would silently poison every run resumed from it.
pub fn save(
    path: &Path,
    layout: &ParamLayout,
    params: &[f64],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    save_with_state(path, layout, params, &[], metadata)
}

/// [`save`], plus named state tensors that are not parameters (BatchNorm's running statistics),
/// held to the same finiteness check.
pub fn save_with_state(
    path: &Path,
    layout: &ParamLayout,
    params: &[f64],
    state: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let named = named_params(path, layout, params)?
        .chain(state.iter().map(|(n, s, v)| (n.clone(), s, v.as_slice())));
    let tensors = finite_tensors(path, named, Precision::F32)?;
    save_tensors(path, &tensors, metadata)
}

/// A full-state checkpoint: the parameters and BatchNorm statistics under the names [`save`]
/// gives them, each optimizer slot per tensor as `{slot}.{tensor}` (`exp_avg.W1`, as
/// `torch.optim`'s `state_dict` names its state), all in the run's precision so that nothing is
/// rounded, and the [`RunRecord`] as JSON metadata under [`RunRecord::KEY`], beside `metadata`.
pub fn save_run(
    path: &Path,
    run: &RunState,
    record: &RunRecord,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let layout = record.config.spec.layout();
    let mut named: Vec<(String, &Vec<usize>, &[f64])> =
        named_params(path, &layout, &run.params)?.collect();
    named.extend(
        run.state
            .iter()
            .map(|(n, s, v)| (n.clone(), s, v.as_slice())),
    );
    for (slot, values) in &run.optimizer.slots {
        named.extend(
            named_params(path, &layout, values)?.map(|(n, s, v)| (format!("{slot}.{n}"), s, v)),
        );
    }
    let tensors = finite_tensors(path, named.into_iter(), record.config.precision)?;
    let mut metadata = metadata.clone();
    let json = serde_json::to_string(record)
        .map_err(|e| checkpoint_error(path, format!("cannot encode the run's record: {e}")))?;
    metadata.insert(RunRecord::KEY.into(), json);
    save_tensors(path, &tensors, &metadata)
}

/// A full-state checkpoint from [`save_run`]: the run's record and state, every tensor checked
/// against the net the record describes.
pub fn load_run(path: &Path) -> Result<(RunRecord, RunState)> {
    let bytes = read_file(path)?;
    let (file, metadata) = parse(path, &bytes)?;
    let json = metadata.get(RunRecord::KEY).ok_or_else(|| {
        checkpoint_error(
            path,
            format!(
                "holds parameters but not a run to resume (no {} metadata); start a new run \
                 from it with --init-from",
                RunRecord::KEY
            ),
        )
    })?;
    let record: RunRecord = serde_json::from_str(json).map_err(|e| {
        checkpoint_error(
            path,
            format!("its {} metadata cannot be read: {e}", RunRecord::KEY),
        )
    })?;
    let invalid =
        |e: Error| checkpoint_error(path, format!("describes a run wgrad cannot rebuild: {e}"));
    record.config.spec.validate().map_err(invalid)?;
    record.config.optimizer.validate().map_err(invalid)?;
    let (layers, layout) = record.config.spec.resolve().map_err(invalid)?;
    let params = read_params(path, &file, &layout, "")?;
    let mut state = Vec::new();
    for (mean, var, c) in crate::nn::model::state_names(&layers, &layout) {
        for name in [mean, var] {
            let values = read_tensor(path, &file, &name, &[c])?.ok_or_else(|| {
                checkpoint_error(
                    path,
                    format!("has no tensor {name}, which the run's BatchNorm needs"),
                )
            })?;
            state.push((name, vec![c], values));
        }
    }
    let mut slots = Vec::new();
    for slot in record.config.optimizer.slot_names().into_iter().flatten() {
        slots.push((
            slot.to_string(),
            read_params(path, &file, &layout, &format!("{slot}."))?,
        ));
    }
    let run = RunState {
        progress: record.progress.clone(),
        params,
        state,
        optimizer: OptimizerState {
            slots,
            beta_powers: record.beta_powers,
        },
    };
    Ok((record, run))
}

/// A net read back from a wgrad checkpoint alone: its description, parameters and BatchNorm
/// statistics, and the run it came from when the file holds one.
pub struct StoredNet {
    pub spec: crate::nn::NetSpec,
    pub params: Vec<f64>,
    pub state: Vec<NamedTensor>,
    pub run: Option<RunRecord>,
}

/// The parameters of `spec` in a safetensors file, and whichever of its BatchNorm running
/// statistics the file holds (a numpy or PyTorch file may hold none).
pub fn load_with_state(
    path: &Path,
    spec: &crate::nn::NetSpec,
) -> Result<(Vec<f64>, Vec<NamedTensor>)> {
    let (layers, layout) = spec.resolve()?;
    let bytes = read_file(path)?;
    let (file, _) = parse(path, &bytes)?;
    let params = read_params(path, &file, &layout, "")?;
    let mut state = Vec::new();
    for (mean, var, c) in crate::nn::model::state_names(&layers, &layout) {
        for name in [mean, var] {
            if let Some(values) = read_tensor(path, &file, &name, &[c])? {
                state.push((name, vec![c], values));
            }
        }
    }
    Ok((params, state))
}

/// The net that a checkpoint's `spec` metadata describes (None: the file does not say, as a
/// numpy or PyTorch file does not).
pub fn stored_spec(
    path: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<Option<crate::nn::NetSpec>> {
    let Some(json) = metadata.get("spec") else {
        return Ok(None);
    };
    serde_json::from_str(json).map(Some).map_err(|e| {
        checkpoint_error(
            path,
            format!(
                "its spec metadata cannot be read ({e}); describe the net with flags \
                 (--hidden, --layers, …)"
            ),
        )
    })
}

/// The readable metadata beside the run's record, for [`save_run`]: numpy and PyTorch users see
/// these keys (`format`, `spec`, `init`, `step`, `test_accuracy`, `val_accuracy`).
pub fn run_metadata(
    config: &crate::train::TrainConfig,
    run: &RunState,
) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::new();
    meta.insert("format".into(), "wgrad-mlp".into());
    let spec = serde_json::to_string(&config.spec).expect("serialisable");
    meta.insert("spec".into(), spec);
    meta.insert("init".into(), config.init.to_string());
    meta.insert("step".into(), run.progress.steps.to_string());
    let last = run.progress.history.last();
    if let Some(accuracy) = last.and_then(|e| e.test_accuracy) {
        meta.insert("test_accuracy".into(), format!("{accuracy:.6}"));
    }
    if let Some(accuracy) = last.and_then(|e| e.val_accuracy) {
        meta.insert("val_accuracy".into(), format!("{accuracy:.6}"));
    }
    meta
}

/// The net in a checkpoint written by `wgrad train` (a full-state checkpoint, or one with the
/// net in its `spec` metadata).
pub fn load_net(path: &Path) -> Result<StoredNet> {
    let metadata = read_metadata(path)?;
    if metadata.contains_key(RunRecord::KEY) {
        let (record, run) = load_run(path)?;
        return Ok(StoredNet {
            spec: record.config.spec.clone(),
            params: run.params,
            state: run.state,
            run: Some(record),
        });
    }
    let spec = stored_spec(path, &metadata)?.ok_or_else(|| {
        checkpoint_error(
            path,
            "does not say which net it holds (no spec metadata), as a numpy or PyTorch file \
             does not: describe the net with the flags it was trained with, as for `wgrad train \
             --init-from`, e.g. `--model simple-conv`, `--hidden 100,100` or `--layers …`",
        )
    })?;
    let invalid =
        |e: Error| checkpoint_error(path, format!("describes a net wgrad cannot build: {e}"));
    spec.validate().map_err(invalid)?;
    let (params, state) = load_with_state(path, &spec)?;
    Ok(StoredNet {
        spec,
        params,
        state,
        run: None,
    })
}

/// Periodic full-state checkpoints beside a base path (`run.safetensors` →
/// `run.step600.safetensors`), keeping the newest `keep` that this process wrote; files it did
/// not write are never deleted.
pub struct Rotation {
    base: PathBuf,
    keep: usize,
    written: std::collections::VecDeque<PathBuf>,
}

impl Rotation {
    pub fn new(base: &Path, keep: usize) -> Rotation {
        Rotation {
            base: base.to_path_buf(),
            keep,
            written: Default::default(),
        }
    }

    /// Where the checkpoint at `steps` goes.
    pub fn path_for(&self, steps: u64) -> PathBuf {
        let stem = self.base.file_stem().unwrap_or_default().to_string_lossy();
        let ext = self
            .base
            .extension()
            .map_or("safetensors".into(), |e| e.to_string_lossy());
        self.base
            .with_file_name(format!("{stem}.step{steps}.{ext}"))
    }

    /// Writes `run` atomically, then deletes the oldest of this run's checkpoints beyond `keep`.
    pub fn write(
        &mut self,
        run: &RunState,
        record: &RunRecord,
        metadata: &BTreeMap<String, String>,
    ) -> Result<PathBuf> {
        let path = self.path_for(run.progress.steps);
        save_run(&path, run, record, metadata)?;
        if self.written.back() != Some(&path) {
            self.written.push_back(path.clone());
        }
        while self.written.len() > self.keep {
            let old = self.written.pop_front().expect("more than keep ≥ 0");
            match fs::remove_file(&old) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(Error::io(
                        format!("deleting the old checkpoint {}", old.display()),
                        e,
                    ))
                }
                _ => {}
            }
        }
        Ok(path)
    }
}

/// The layout's tensors over an arena, by name; an arena of the wrong length is refused.
fn named_params<'a>(
    path: &Path,
    layout: &'a ParamLayout,
    arena: &'a [f64],
) -> Result<impl Iterator<Item = (String, &'a Vec<usize>, &'a [f64])>> {
    if arena.len() != layout.total {
        return Err(checkpoint_error(
            path,
            format!(
                "refusing to write: got {} parameters but the net's layout has {}",
                arena.len(),
                layout.total
            ),
        ));
    }
    Ok(layout.tensors.iter().map(|t| {
        (
            t.name.clone(),
            &t.shape,
            &arena[t.offset..t.offset + t.numel],
        )
    }))
}

/// The tensors in `precision`, refused (naming the tensor and index) if any value is not finite
/// there: a checkpoint of broken weights would silently poison every run resumed from it.
fn finite_tensors<'a>(
    path: &Path,
    named: impl Iterator<Item = (String, &'a Vec<usize>, &'a [f64])>,
    precision: Precision,
) -> Result<Vec<(String, Vec<usize>, TensorData)>> {
    let mut tensors = Vec::new();
    for (name, shape, values) in named {
        // Checked after narrowing so that finite f64 values beyond f32's range are caught too.
        let data = match precision {
            Precision::F32 => TensorData::F32(values.iter().map(|&v| v as f32).collect()),
            Precision::F64 => TensorData::F64(values.to_vec()),
        };
        let bad = match &data {
            TensorData::F32(v) => v.iter().position(|v| !v.is_finite()),
            TensorData::F64(v) => v.iter().position(|v| !v.is_finite()),
            TensorData::U32(_) | TensorData::U8(_) => None,
        };
        if let Some(i) = bad {
            let what = if values[i].is_finite() {
                format!("{} (too large for f32)", values[i])
            } else {
                values[i].to_string()
            };
            return Err(checkpoint_error(
                path,
                format!(
                    "refusing to write: tensor {} holds {what} at {:?}; training has diverged, so \
                     lower the learning rate rather than saving these weights",
                    name,
                    unravel(i, shape)
                ),
            ));
        }
        tensors.push((name, shape.clone(), data));
    }
    Ok(tensors)
}

/// Writes arbitrary named tensors (e.g. `analytic.W1`, `numeric.W1` in f64) atomically.
///
/// Unlike [`save`] this accepts non-finite values: a gradient dump is most useful exactly when
/// something has gone wrong.
pub fn save_tensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, TensorData)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let (dir, name) = split_target(path)?;
    if path.is_dir() {
        return Err(is_a_directory(path));
    }
    let mut seen = HashSet::new();
    for (tensor_name, shape, data) in tensors {
        // The header is a JSON object keyed by name, so a duplicate would silently drop a tensor
        // and "__metadata__" would collide with the metadata entry.
        if tensor_name.is_empty() || tensor_name == "__metadata__" {
            return Err(checkpoint_error(
                path,
                format!("cannot write a tensor named {tensor_name:?}"),
            ));
        }
        if !seen.insert(tensor_name.as_str()) {
            return Err(checkpoint_error(
                path,
                format!("tensor name {tensor_name} is given twice"),
            ));
        }
        let numel = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| {
                checkpoint_error(
                    path,
                    format!("tensor {tensor_name} has an overflowing shape {shape:?}"),
                )
            })?;
        if numel != data.len() {
            return Err(checkpoint_error(
                path,
                format!(
                    "tensor {tensor_name} has shape {shape:?} ({numel} values) but {} values were \
                     given",
                    data.len()
                ),
            ));
        }
    }
    let views: Vec<(&str, RawTensor)> = tensors
        .iter()
        .map(|(n, shape, data)| {
            let raw = RawTensor {
                dtype: data.dtype(),
                shape: shape.clone(),
                bytes: data.to_le_bytes(),
            };
            (n.as_str(), raw)
        })
        .collect();
    // Omitting an empty __metadata__ keeps the header identical to what numpy/PyTorch write.
    let header_metadata = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>()
    });
    let bytes = safetensors::serialize(views, header_metadata)
        .map_err(|e| checkpoint_error(path, format!("cannot encode safetensors: {e}")))?;
    write_atomically(path, &dir, &name, &bytes)
}

/// Reads a safetensors file whose tensors fit `layout`; any float dtype numpy or PyTorch writes
/// (F32, F64, F16, BF16) is accepted, and tensors the layout does not name are ignored.
pub fn load(path: &Path, layout: &ParamLayout) -> Result<Checkpoint> {
    let bytes = read_file(path)?;
    let (file, metadata) = parse(path, &bytes)?;
    let params = read_params(path, &file, layout, "")?;
    Ok(Checkpoint { params, metadata })
}

/// The arena of `layout`, each tensor read under its name with `prefix` (an optimizer slot's
/// `exp_avg.`, or nothing for the parameters).
fn read_params(
    path: &Path,
    file: &Tensors,
    layout: &ParamLayout,
    prefix: &str,
) -> Result<Vec<f64>> {
    // The layout may come from the file's own metadata: no allocation is sized by it before it
    // is checked against what the file can hold (two bytes a value at the least, F16).
    let stored = file.stored_bytes();
    if layout.total > stored / 2 {
        return Err(checkpoint_error(
            path,
            format!(
                "the net needs {} parameters but the file's tensors hold {stored} bytes; it is \
                 not a checkpoint of this net",
                layout.total
            ),
        ));
    }
    let mut params = vec![0.0; layout.total];
    for t in &layout.tensors {
        let name = format!("{prefix}{}", t.name);
        let view = file.get(&name).ok_or_else(|| {
            let mut names = file.names();
            names.sort_unstable();
            let holds = if names.is_empty() {
                "it holds no tensors".to_string()
            } else {
                format!("it holds: {}", names.join(", "))
            };
            checkpoint_error(
                path,
                format!("has no tensor named {name}, which the net needs; {holds}"),
            )
        })?;
        if view.shape != t.shape.as_slice() {
            return Err(checkpoint_error(
                path,
                shape_mismatch(&name, &view.shape, &t.shape),
            ));
        }
        let out = &mut params[t.offset..t.offset + t.numel];
        view.decode(out).map_err(|dtype| {
            checkpoint_error(
                path,
                format!(
                    "tensor {name} has dtype {dtype}; only F32, F64, F16 and BF16 can be loaded"
                ),
            )
        })?;
        // Loading NaN weights would only surface later as a NaN loss, far from the cause.
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(checkpoint_error(
                path,
                format!(
                    "tensor {name} holds {} at {:?}; these weights cannot be used",
                    out[i],
                    unravel(i, &t.shape)
                ),
            ));
        }
    }
    Ok(params)
}

/// One tensor by name, if the file has it with that shape (for optional state such as
/// BatchNorm's running statistics); a tensor of another shape is an error.
pub fn load_optional(path: &Path, name: &str, shape: &[usize]) -> Result<Option<Vec<f64>>> {
    let bytes = read_file(path)?;
    let (file, _) = parse(path, &bytes)?;
    read_tensor(path, &file, name, shape)
}

fn read_tensor(
    path: &Path,
    file: &Tensors,
    name: &str,
    shape: &[usize],
) -> Result<Option<Vec<f64>>> {
    let Some(view) = file.get(name) else {
        return Ok(None);
    };
    if view.shape != shape {
        return Err(checkpoint_error(
            path,
            shape_mismatch(name, &view.shape, shape),
        ));
    }
    let mut out = vec![0.0; shape.iter().product()];
    view.decode(&mut out).map_err(|dtype| {
        checkpoint_error(
            path,
            format!("tensor {name} has dtype {dtype}; only F32, F64, F16 and BF16 can be loaded"),
        )
    })?;
    if out.iter().any(|v| !v.is_finite()) {
        return Err(checkpoint_error(
            path,
            format!("tensor {name} holds non-finite values"),
        ));
    }
    Ok(Some(out))
}

/// The header metadata alone, e.g. to show how a checkpoint was trained before building its net.
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let bytes = read_file(path)?;
    Ok(parse(path, &bytes)?.1)
}

/// An owned tensor in its on-disk encoding, for `safetensors::serialize`.
struct RawTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn checkpoint_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn is_a_directory(path: &Path) -> Error {
    checkpoint_error(
        path,
        format!(
            "is a directory, not a file; give a file path such as {}",
            path.join("model.safetensors").display()
        ),
    )
}

/// The folder the file lives in (`.` for a bare file name) and the file name.
fn split_target(path: &Path) -> Result<(PathBuf, OsString)> {
    let name = path.file_name().ok_or_else(|| {
        checkpoint_error(
            path,
            "is not a file path; give one such as model.safetensors",
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_os_string()))
}

/// A hidden name next to the target, unique across processes (pid) and threads (counter); it
/// lives in the same folder because a rename is only atomic within one filesystem.
fn sibling_name(dir: &Path, name: &OsString, kind: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut s = OsString::from(".");
    s.push(name);
    s.push(format!(".{kind}-{}-{n}", std::process::id()));
    dir.join(s)
}

fn write_atomically(path: &Path, dir: &Path, name: &OsString, bytes: &[u8]) -> Result<()> {
    let tmp = sibling_name(dir, name, "tmp");
    let written = (|| -> std::io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        // Without this the rename can reach the disk before the data, and a crash would leave
        // an empty or partial file under the checkpoint's name.
        file.sync_all()?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(
            format!(
                "writing checkpoint {} (via {})",
                path.display(),
                tmp.display()
            ),
            e,
        ));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(
            format!("replacing checkpoint {}", path.display()),
            e,
        ));
    }
    // Makes the rename itself durable. Best effort: some filesystems refuse to fsync a folder,
    // and the new file is already complete and in place by now.
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    match fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            Err(checkpoint_error(path, "no such file; check the path"))
        }
        Err(_) if path.is_dir() => Err(is_a_directory(path)),
        Err(e) => Err(Error::io(
            format!("reading checkpoint {}", path.display()),
            e,
        )),
    }
}

/// The tensors of a weights file as read: safetensors, or numpy's `.npz` (told apart by the zip
/// magic), under the same names.
enum Tensors<'a> {
    Safetensors(SafeTensors<'a>),
    Npz(Vec<crate::npz::NpyArray>),
}

/// One tensor of a [`Tensors`]: its shape, its dtype (or the foreign type it has), its bytes.
struct TensorRef<'b> {
    shape: Vec<usize>,
    dtype: std::result::Result<Dtype, String>,
    data: &'b [u8],
}

impl TensorRef<'_> {
    /// The values as f64; Err names a dtype that cannot be loaded.
    fn decode(&self, out: &mut [f64]) -> std::result::Result<(), String> {
        let dtype = self.dtype.clone()?;
        decode(dtype, self.data, out).map_err(|d| d.to_string())
    }
}

impl<'a> Tensors<'a> {
    fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        use crate::npz::NpyDtype;
        match self {
            Tensors::Safetensors(file) => {
                let view = file.tensor(name).ok()?;
                Some(TensorRef {
                    shape: view.shape().to_vec(),
                    dtype: Ok(view.dtype()),
                    data: view.data(),
                })
            }
            Tensors::Npz(arrays) => {
                let a = arrays.iter().find(|a| a.name == name)?;
                let dtype = match &a.dtype {
                    Ok(NpyDtype::F16) => Ok(Dtype::F16),
                    Ok(NpyDtype::F32) => Ok(Dtype::F32),
                    Ok(NpyDtype::F64) => Ok(Dtype::F64),
                    Err(descr) => Err(format!("{descr} (numpy)")),
                };
                Some(TensorRef {
                    shape: a.shape.clone(),
                    dtype,
                    data: &a.data,
                })
            }
        }
    }

    fn names(&self) -> Vec<String> {
        match self {
            Tensors::Safetensors(file) => file.names().into_iter().map(str::to_string).collect(),
            Tensors::Npz(arrays) => arrays.iter().map(|a| a.name.clone()).collect(),
        }
    }

    /// The bytes the tensors hold, to bound what a layout may ask of the file.
    fn stored_bytes(&self) -> usize {
        match self {
            Tensors::Safetensors(file) => file.tensors().iter().map(|(_, v)| v.data().len()).sum(),
            Tensors::Npz(arrays) => arrays.iter().map(|a| a.data.len()).sum(),
        }
    }
}

/// The tensors and the header's `__metadata__` (empty when the writer left it out, and for an
/// `.npz`, which has none).
fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<(Tensors<'a>, BTreeMap<String, String>)> {
    if crate::npz::is_zip(bytes) {
        let arrays = crate::npz::read(bytes).map_err(|e| {
            checkpoint_error(
                path,
                format!(
                    "is a zip file but not a readable .npz: {e}; expected numpy's savez or \
                     savez_compressed output"
                ),
            )
        })?;
        return Ok((Tensors::Npz(arrays), BTreeMap::new()));
    }
    let not_safetensors = |e: safetensors::SafeTensorError| {
        checkpoint_error(
            path,
            format!(
                "not a safetensors file, or a truncated one ({e}); expected a file written by \
                 wgrad or by safetensors' save_file, or numpy's .npz"
            ),
        )
    };
    // `SafeTensors` keeps the parsed header private, so the metadata comes from a second,
    // header-only parse; it is tiny next to the tensor data.
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(not_safetensors)?;
    let metadata = header
        .metadata()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let file = SafeTensors::deserialize(bytes).map_err(not_safetensors)?;
    Ok((Tensors::Safetensors(file), metadata))
}

fn shape_mismatch(name: &str, found: &[usize], needed: &[usize]) -> String {
    let mut msg =
        format!("tensor {name} has shape {found:?} in the file but the net needs {needed:?}");
    if found.len() == 2 && needed.len() == 2 && found[0] == needed[1] && found[1] == needed[0] {
        msg.push_str(
            " (it looks transposed: wgrad stores W as [in, out], while PyTorch's \
             nn.Linear.weight is [out, in], so save weight.T)",
        );
    } else {
        msg.push_str("; the checkpoint was saved for a net with other layer sizes");
    }
    msg
}

/// Decodes little-endian floats into `out`; the element count was already checked via the shape.
/// Works on byte chunks because tensors from other writers need not be aligned in the file.
fn decode(dtype: Dtype, data: &[u8], out: &mut [f64]) -> std::result::Result<(), Dtype> {
    match dtype {
        Dtype::F32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes(c.try_into().unwrap()) as f64;
            }
        }
        Dtype::F64 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(8)) {
                *o = f64::from_le_bytes(c.try_into().unwrap());
            }
        }
        Dtype::F16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16_to_f64(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        Dtype::BF16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                // bf16 is the top half of an f32.
                let bits = (u16::from_le_bytes([c[0], c[1]]) as u32) << 16;
                *o = f32::from_bits(bits) as f64;
            }
        }
        other => return Err(other),
    }
    Ok(())
}

/// IEEE 754 binary16 → f64, exact (no half-float crate needed for one conversion).
fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        0x1f if frac == 0.0 => sign * f64::INFINITY,
        0x1f => f64::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Activation, NetSpec};
    use tempfile::TempDir;

    fn layout() -> ParamLayout {
        NetSpec::mlp(4, &[3], 2, Activation::Relu).layout()
    }

    /// Values that are not exactly representable in f32, so rounding is exercised.
    fn params(layout: &ParamLayout) -> Vec<f64> {
        (0..layout.total)
            .map(|i| (i as f64 * 0.37 - 1.1).sin() / 3.0)
            .collect()
    }

    fn metadata() -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "spec".to_string(),
                r#"{"input":4,"hidden":[3]}"#.to_string(),
            ),
            ("step".to_string(), "1200".to_string()),
        ])
    }

    fn message(err: Error) -> String {
        err.to_string()
    }

    /// Files in `dir`, to prove no temp or probe file is left behind.
    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Writes tensors the way numpy/PyTorch would: no metadata, arbitrary dtypes.
    fn write_foreign(path: &Path, tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>) {
        let views: Vec<(String, RawTensor)> = tensors
            .into_iter()
            .map(|(n, dtype, shape, bytes)| {
                (
                    n,
                    RawTensor {
                        dtype,
                        shape,
                        bytes,
                    },
                )
            })
            .collect();
        fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// The layout's tensors from `params`, in f32, in a foreign-style file.
    fn layout_tensors(
        layout: &ParamLayout,
        params: &[f64],
    ) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
        layout
            .tensors
            .iter()
            .map(|t| {
                let v: Vec<f32> = params[t.offset..t.offset + t.numel]
                    .iter()
                    .map(|&x| x as f32)
                    .collect();
                (t.name.clone(), Dtype::F32, t.shape.clone(), f32_bytes(&v))
            })
            .collect()
    }

    #[test]
    fn round_trip_keeps_values_at_f32_precision_and_metadata() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("model.safetensors");
        let layout = layout();
        let params = params(&layout);
        save(&path, &layout, &params, &metadata()).unwrap();

        let ck = load(&path, &layout).unwrap();
        let expected: Vec<f64> = params.iter().map(|&v| v as f32 as f64).collect();
        assert_eq!(ck.params, expected);
        assert_eq!(ck.metadata, metadata());
        assert_eq!(read_metadata(&path).unwrap(), metadata());
        assert_eq!(entries(dir.path()), ["model.safetensors"]);

        // Each tensor is stored under its layout name and shape, readable without our layout.
        let bytes = fs::read(&path).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        for t in &layout.tensors {
            let view = file.tensor(&t.name).unwrap();
            assert_eq!(view.dtype(), Dtype::F32);
            assert_eq!(view.shape(), t.shape.as_slice());
        }
        assert_eq!(file.len(), layout.tensors.len());
    }

    #[test]
    fn file_without_metadata_loads() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("numpy.safetensors");
        let layout = layout();
        let params = params(&layout);
        write_foreign(&path, layout_tensors(&layout, &params));

        let ck = load(&path, &layout).unwrap();
        assert!(ck.metadata.is_empty());
        assert_eq!(ck.params[0], params[0] as f32 as f64);
        assert!(read_metadata(&path).unwrap().is_empty());
    }

    #[test]
    fn empty_metadata_writes_no_metadata_entry() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("m.safetensors");
        let layout = layout();
        save(&path, &layout, &params(&layout), &BTreeMap::new()).unwrap();
        let bytes = fs::read(&path).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        assert!(header.metadata().is_none());
        assert!(load(&path, &layout).unwrap().metadata.is_empty());
    }

    #[test]
    fn wrong_shape_names_tensor_and_both_shapes() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("m.safetensors");
        let small = NetSpec::mlp(4, &[3], 2, Activation::Relu);
        let big = NetSpec::mlp(4, &[5], 2, Activation::Relu);
        save(
            &path,
            &small.layout(),
            &params(&small.layout()),
            &metadata(),
        )
        .unwrap();

        let msg = message(load(&path, &big.layout()).unwrap_err());
        assert!(
            msg.contains("tensor W1 has shape [4, 3] in the file but the net needs [4, 5]"),
            "{msg}"
        );
        assert!(msg.contains("m.safetensors"), "{msg}");
    }

    #[test]
    fn transposed_weight_gets_a_hint() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("torch.safetensors");
        let layout = layout();
        let mut tensors = layout_tensors(&layout, &params(&layout));
        tensors[0].2 = vec![3, 4];
        write_foreign(&path, tensors);
        let msg = message(load(&path, &layout).unwrap_err());
        assert!(
            msg.contains("[3, 4] in the file but the net needs [4, 3]"),
            "{msg}"
        );
        assert!(msg.contains("transposed"), "{msg}");
    }

    #[test]
    fn missing_tensor_lists_what_the_file_has() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("m.safetensors");
        let layout = layout();
        let tensors = layout_tensors(&layout, &params(&layout));
        let without_b2: Vec<_> = tensors.into_iter().filter(|t| t.0 != "b2").collect();
        write_foreign(&path, without_b2);

        let msg = message(load(&path, &layout).unwrap_err());
        assert!(msg.contains("no tensor named b2"), "{msg}");
        assert!(msg.contains("W1, W2, b1"), "{msg}");
    }

    #[test]
    fn garbage_empty_and_truncated_files_are_not_safetensors() {
        let dir = TempDir::new().unwrap();
        let layout = layout();
        let good = dir.path().join("good.safetensors");
        save(&good, &layout, &params(&layout), &metadata()).unwrap();
        let bytes = fs::read(&good).unwrap();

        let cases: [(&str, &[u8]); 4] = [
            (
                "garbage.safetensors",
                b"this is certainly not a safetensors file at all",
            ),
            ("empty.safetensors", b""),
            ("truncated.safetensors", &bytes[..bytes.len() - 5]),
            ("header-only.safetensors", &bytes[..20]),
        ];
        for (name, content) in cases {
            let path = dir.path().join(name);
            fs::write(&path, content).unwrap();
            let msg = message(load(&path, &layout).unwrap_err());
            assert!(msg.contains("not a safetensors file"), "{name}: {msg}");
            assert!(msg.contains(name), "{name}: {msg}");
            assert!(read_metadata(&path).is_err());
        }
    }

    #[test]
    fn missing_file_is_named() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("nope.safetensors");
        let msg = message(load(&path, &layout()).unwrap_err());
        assert!(
            msg.contains("nope.safetensors") && msg.contains("no such file"),
            "{msg}"
        );
    }

    #[test]
    fn non_finite_values_refuse_to_write_and_leave_nothing() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("m.safetensors");
        let layout = layout();
        let b1 = layout.get("b1").unwrap().offset;
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300] {
            let mut p = params(&layout);
            p[b1 + 2] = bad;
            let msg = message(save(&path, &layout, &p, &metadata()).unwrap_err());
            assert!(msg.contains("tensor b1") && msg.contains("[2]"), "{msg}");
            assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
        }

        // Nor does a refused save touch a good checkpoint already there.
        save(&path, &layout, &params(&layout), &metadata()).unwrap();
        let mut p = params(&layout);
        p[5] = f64::NAN;
        let msg = message(save(&path, &layout, &p, &metadata()).unwrap_err());
        assert!(msg.contains("tensor W1 holds NaN at [1, 2]"), "{msg}");
        assert_eq!(entries(dir.path()), ["m.safetensors"]);
        assert!(load(&path, &layout)
            .unwrap()
            .params
            .iter()
            .all(|v| v.is_finite()));
    }

    #[test]
    fn ensure_writable_accepts_a_folder_we_can_write() {
        let dir = TempDir::new().unwrap();
        ensure_writable(&dir.path().join("m.safetensors")).unwrap();
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn ensure_writable_rejects_missing_folder_and_directory_path() {
        let dir = TempDir::new().unwrap();
        let missing = dir.path().join("no-such-dir").join("m.safetensors");
        let msg = message(ensure_writable(&missing).unwrap_err());
        assert!(
            msg.contains("no-such-dir") && msg.contains("does not exist"),
            "{msg}"
        );

        let msg = message(ensure_writable(dir.path()).unwrap_err());
        assert!(msg.contains("is a directory"), "{msg}");

        let file = dir.path().join("plain-file");
        fs::write(&file, b"x").unwrap();
        let msg = message(ensure_writable(&file.join("m.safetensors")).unwrap_err());
        assert!(msg.contains("not a folder"), "{msg}");
    }

    #[test]
    fn save_into_missing_folder_fails_and_directory_target_is_refused() {
        let dir = TempDir::new().unwrap();
        let layout = layout();
        let missing = dir.path().join("no-such-dir").join("m.safetensors");
        assert!(save(&missing, &layout, &params(&layout), &metadata()).is_err());
        let msg = message(save(dir.path(), &layout, &params(&layout), &metadata()).unwrap_err());
        assert!(msg.contains("is a directory"), "{msg}");
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn f64_tensors_load_exactly() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("f64.safetensors");
        let layout = layout();
        let params = params(&layout);
        let tensors: Vec<_> = layout
            .tensors
            .iter()
            .map(|t| {
                let v = params[t.offset..t.offset + t.numel].to_vec();
                (t.name.clone(), t.shape.clone(), TensorData::F64(v))
            })
            .collect();
        save_tensors(&path, &tensors, &BTreeMap::new()).unwrap();
        assert_eq!(load(&path, &layout).unwrap().params, params);
    }

    #[test]
    fn f16_and_bf16_tensors_convert() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("half.safetensors");
        let layout = NetSpec::mlp(2, &[], 2, Activation::Relu).layout();
        // 1.0, -2.0, 0.5, smallest subnormal 2^-24
        let w: Vec<u8> = [0x3C00u16, 0xC000, 0x3800, 0x0001]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        // 1.0, -0.15625 (exact in bf16)
        let b: Vec<u8> = [0x3F80u16, 0xBE20]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        write_foreign(
            &path,
            vec![
                ("W1".into(), Dtype::F16, vec![2, 2], w),
                ("b1".into(), Dtype::BF16, vec![2], b),
            ],
        );
        let ck = load(&path, &layout).unwrap();
        assert_eq!(ck.params, [1.0, -2.0, 0.5, 2f64.powi(-24), 1.0, -0.15625]);
    }

    #[test]
    fn unsupported_dtype_is_named() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("int.safetensors");
        let layout = NetSpec::mlp(2, &[], 2, Activation::Relu).layout();
        write_foreign(
            &path,
            vec![
                ("W1".into(), Dtype::I32, vec![2, 2], vec![0; 16]),
                ("b1".into(), Dtype::F32, vec![2], vec![0; 8]),
            ],
        );
        let msg = message(load(&path, &layout).unwrap_err());
        assert!(msg.contains("tensor W1 has dtype I32"), "{msg}");
    }

    #[test]
    fn extra_tensors_are_ignored() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("extra.safetensors");
        let layout = layout();
        let params = params(&layout);
        let mut tensors = layout_tensors(&layout, &params);
        tensors.push((
            "optimizer.momentum.W1".into(),
            Dtype::F32,
            vec![4, 3],
            f32_bytes(&[0.5; 12]),
        ));
        tensors.push((
            "step".into(),
            Dtype::I64,
            vec![],
            7i64.to_le_bytes().to_vec(),
        ));
        write_foreign(&path, tensors);
        let ck = load(&path, &layout).unwrap();
        let expected: Vec<f64> = params.iter().map(|&v| v as f32 as f64).collect();
        assert_eq!(ck.params, expected);
    }

    #[test]
    fn save_replaces_an_existing_file_atomically() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("m.safetensors");
        let layout = layout();
        let first = params(&layout);
        save(&path, &layout, &first, &metadata()).unwrap();
        // A hard link keeps the old inode reachable: if save rewrote the file in place (where a
        // crash could leave it half-written), the link would see the new contents too.
        let old = dir.path().join("old-link");
        fs::hard_link(&path, &old).unwrap();

        let second: Vec<f64> = first.iter().map(|v| v * 2.0 + 1.0).collect();
        let meta2 = BTreeMap::from([("step".to_string(), "2400".to_string())]);
        save(&path, &layout, &second, &meta2).unwrap();

        let new = load(&path, &layout).unwrap();
        assert_eq!(
            new.params,
            second.iter().map(|&v| v as f32 as f64).collect::<Vec<_>>()
        );
        assert_eq!(new.metadata, meta2);
        let before = load(&old, &layout).unwrap();
        assert_eq!(
            before.params,
            first.iter().map(|&v| v as f32 as f64).collect::<Vec<_>>()
        );
        assert_eq!(entries(dir.path()), ["m.safetensors", "old-link"]);
    }

    #[test]
    fn save_tensors_writes_named_f64_gradients() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("grads.safetensors");
        let g = vec![0.1, f64::NAN, 1e-300];
        let tensors = vec![
            (
                "analytic.b1".to_string(),
                vec![3],
                TensorData::F64(g.clone()),
            ),
            (
                "numeric.b1".to_string(),
                vec![3],
                TensorData::F32(vec![0.1, 0.2, 0.3]),
            ),
        ];
        save_tensors(&path, &tensors, &metadata()).unwrap();
        let bytes = fs::read(&path).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let view = file.tensor("analytic.b1").unwrap();
        assert_eq!(view.dtype(), Dtype::F64);
        let mut out = [0.0; 3];
        decode(view.dtype(), view.data(), &mut out).unwrap();
        assert_eq!(out[0], 0.1);
        assert!(out[1].is_nan());
        assert_eq!(out[2], 1e-300);
        assert_eq!(file.tensor("numeric.b1").unwrap().dtype(), Dtype::F32);
        assert_eq!(read_metadata(&path).unwrap(), metadata());
    }

    #[test]
    fn save_tensors_rejects_bad_input_without_writing() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("bad.safetensors");
        let dup = vec![
            ("a".to_string(), vec![1], TensorData::F32(vec![1.0])),
            ("a".to_string(), vec![1], TensorData::F32(vec![2.0])),
        ];
        assert!(
            message(save_tensors(&path, &dup, &BTreeMap::new()).unwrap_err()).contains("twice")
        );
        let wrong_len = vec![("a".to_string(), vec![2, 2], TensorData::F64(vec![1.0; 3]))];
        let msg = message(save_tensors(&path, &wrong_len, &BTreeMap::new()).unwrap_err());
        assert!(
            msg.contains("shape [2, 2] (4 values) but 3 values"),
            "{msg}"
        );
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn bare_file_name_means_current_folder() {
        assert_eq!(
            split_target(Path::new("m.safetensors")).unwrap(),
            (PathBuf::from("."), OsString::from("m.safetensors"))
        );
        assert!(split_target(Path::new("/")).is_err());
    }

    #[test]
    fn f16_special_values() {
        assert_eq!(f16_to_f64(0x7C00), f64::INFINITY);
        assert_eq!(f16_to_f64(0xFC00), f64::NEG_INFINITY);
        assert!(f16_to_f64(0x7E00).is_nan());
        assert_eq!(f16_to_f64(0x7BFF), 65504.0);
        assert_eq!(f16_to_f64(0x8000), 0.0);
        assert_eq!(unravel(5, &[4, 3]), [1, 2]);
    }
}
