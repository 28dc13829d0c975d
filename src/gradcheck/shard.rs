//! A gradient check split into shards, each computed by its own process (a CI matrix job, a
//! Slurm array task) and written to a file, then merged into the whole check's report.
//!
//! A shard file is safetensors, as `--save-grads` writes, so that numpy and PyTorch read it:
//!
//! - per checked tensor T (W1, …, and x2 for a custom layer 2's input), the shard's elements of
//!   it: `index.T` (U32, flat indices into T), `numeric.T` (F64, their central differences at
//!   h), `kink.T` (U8, 1 where the ±h or ±2h pair crossed a kink) and, in an f32 check,
//!   `numeric_2h.T` (F64, at 2h, which measures the noise floor). Always F64: an f32 check's
//!   central differences are formed on the host in f64, and the merge must see them bit for bit.
//! - what the check runs on, so that merging needs neither the data nor the flags (nor a rerun
//!   of `--after-steps`): `params.W1`, … (F64, the parameters checked) and `batch.x` (F64,
//!   `[N, C·H·W]`), `batch.labels` (U32, `[N]`).
//! - metadata: `format` ([`FORMAT`]), `shard` ("K/N"), `check` (JSON, [`CheckIdentity`]: the
//!   net, precision, strategy, h, batch, tensors, directions, seed, element count and SHA-256s
//!   of the parameters and the batch), `stats` (JSON, [`ShareStats`]) and `adapter`.
//!
//! Shards are merged when their `check`s are equal, their N is one N and their K are 1 to N,
//! each once; anything else is refused before a report is made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{checked_tensors, GradcheckConfig, NumericShare, ShareStats, Subject};
use crate::checkpoint::{self, TensorData};
use crate::error::{Error, Result};
use crate::gpu::Precision;
use crate::nn::NetSpec;
use crate::numgrad::Strategy;

/// The `format` metadata of a shard file, with its version.
pub const FORMAT: &str = "wgrad gradcheck shard 1";

/// Shard K of N of a check's elements (1 ≤ K ≤ N): the elements at positions p ≡ K − 1
/// (mod N) of the check's element order ([`super::CheckedTensor`]).
///
/// Interleaved rather than contiguous, so that every shard gets about 1/N of every tensor and so
/// of every route of the perturbed-loss engine: contiguous parts would give one shard W1's
/// border pixels (inputs 0 in every sample, known without a pass) and another the dense layers,
/// and the whole check would wait for the slowest. Each element's central difference is an
/// evaluation of its own, whatever shard takes it, so the merged check is the same for any N.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shard {
    index: usize,
    count: usize,
}

impl Shard {
    /// Shard `index` (from 1) of `count`.
    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if count == 0 {
            return Err(Error::InvalidArgument(format!(
                "shard {index}/0: a check splits into at least 1 shard; use K/N with 1 ≤ K ≤ N, e.g. 1/3"
            )));
        }
        if index == 0 || index > count {
            return Err(Error::InvalidArgument(format!(
                "there is no shard {index}/{count}: shards count from 1 to N; use 1/{count} to {count}/{count}"
            )));
        }
        Ok(Shard { index, count })
    }

    /// K, from 1.
    pub fn index(&self) -> usize {
        self.index
    }

    /// N.
    pub fn count(&self) -> usize {
        self.count
    }

    /// This shard's items of `items`: those at k ≡ K − 1 (mod N).
    pub fn pick<T: Copy>(&self, items: &[T]) -> Vec<T> {
        (items.iter().skip(self.index - 1).step_by(self.count))
            .copied()
            .collect()
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Shard> {
        let parsed = s
            .split_once('/')
            .and_then(|(k, n)| Some((k.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) => Shard::new(index, count),
            None => Err(Error::InvalidArgument(format!(
                "'{s}' is not K/N: give this shard's number K and the number of shards N, e.g. 2/3"
            ))),
        }
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What makes two shards parts of one check: equal identities, equal checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckIdentity {
    pub spec: NetSpec,
    pub precision: Precision,
    pub strategy: Strategy,
    pub h: f64,
    pub batch: usize,
    /// The tensors checked, as --params names them (all when empty).
    pub tensors: Vec<String>,
    pub directions: usize,
    pub seed: u64,
    /// The elements the shards split.
    pub elements: usize,
    /// SHA-256 of the parameters' f64 bits.
    pub params_sha256: String,
    /// SHA-256 of the batch: the images' f64 bits, then the labels'.
    pub batch_sha256: String,
}

impl CheckIdentity {
    pub fn of(subject: &Subject) -> Result<CheckIdentity> {
        let Subject {
            spec,
            params,
            x,
            labels,
            config,
        } = *subject;
        let tensors = checked_tensors(spec, &config.tensors, labels.len())?;
        Ok(CheckIdentity {
            spec: spec.clone(),
            precision: config.precision,
            strategy: config.strategy,
            h: config.h,
            batch: labels.len(),
            tensors: config.tensors.clone(),
            directions: config.directions,
            seed: config.seed,
            elements: tensors.last().map_or(0, |t| t.positions.end),
            params_sha256: sha256(&[&bytes_of(params)]),
            batch_sha256: sha256(&[&bytes_of(x), &u32_bytes(labels)]),
        })
    }

    /// What differs between two identities: "h 0.00001 vs 0.00002", or what the net or a hash
    /// stands for.
    fn differences(&self, other: &CheckIdentity) -> Vec<String> {
        let (a, b) = (json(self), json(other));
        let a = a.as_object().expect("an identity is an object");
        (a.iter())
            .filter(|(key, value)| &b[key.as_str()] != *value)
            .map(|(key, value)| match key.as_str() {
                "spec" => "the net (--hidden, --layers, --weight-decay, …)".to_string(),
                "params_sha256" => {
                    "the parameters (--init, --seed, --after-steps, --init-from)".to_string()
                }
                "batch_sha256" => "the batch's images (--data, --crop)".to_string(),
                _ => format!("{key} {value} vs {}", b[key.as_str()]),
            })
            .collect()
    }
}

fn json(value: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(value).expect("serialisable")
}

fn sha256(parts: &[&[u8]]) -> String {
    let mut hash = Sha256::new();
    parts.iter().for_each(|p| hash.update(p));
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn bytes_of(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn u32_bytes(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes shard `shard` of the check of `subject`, its central differences `share`, as a shard
/// file (module docs), atomically.
pub fn save(
    path: &Path,
    subject: &Subject,
    shard: Shard,
    share: &NumericShare,
    adapter: &str,
) -> Result<()> {
    let identity = CheckIdentity::of(subject)?;
    let mut tensors: Vec<(String, Vec<usize>, TensorData)> = Vec::new();
    for t in checked_tensors(subject.spec, &subject.config.tensors, subject.labels.len())? {
        let (from, to) = (
            share.positions.partition_point(|&p| p < t.positions.start),
            share.positions.partition_point(|&p| p < t.positions.end),
        );
        let count = vec![to - from];
        let index = (share.positions[from..to].iter())
            .map(|&p| (p - t.positions.start) as u32)
            .collect();
        let kinks = share.kinks[from..to].iter().map(|&k| u8::from(k)).collect();
        tensors.push((
            format!("index.{}", t.name),
            count.clone(),
            TensorData::U32(index),
        ));
        let at_h = share.at_h[from..to].to_vec();
        tensors.push((format!("numeric.{}", t.name), count.clone(), at_h.into()));
        if let Some(wide) = &share.at_twice_h {
            let at_twice_h = wide[from..to].to_vec();
            tensors.push((
                format!("numeric_2h.{}", t.name),
                count.clone(),
                at_twice_h.into(),
            ));
        }
        tensors.push((format!("kink.{}", t.name), count, TensorData::U8(kinks)));
    }
    for t in &subject.spec.layout().tensors {
        let params = subject.params[t.offset..t.offset + t.numel].to_vec();
        tensors.push((format!("params.{}", t.name), t.shape.clone(), params.into()));
    }
    let batch = subject.labels.len();
    let x_shape = vec![batch, subject.x.len() / batch.max(1)];
    tensors.push(("batch.x".into(), x_shape, subject.x.to_vec().into()));
    let labels = TensorData::U32(subject.labels.to_vec());
    tensors.push(("batch.labels".into(), vec![batch], labels));
    let mut meta = BTreeMap::new();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("shard".into(), shard.to_string());
    meta.insert("check".into(), json(&identity).to_string());
    meta.insert("stats".into(), json(&share.stats).to_string());
    meta.insert("adapter".into(), adapter.into());
    checkpoint::save_tensors(path, &tensors, &meta)
}

/// A check read back from all of its shard files: what it runs on, and each shard's central
/// differences.
pub struct MergedShards {
    pub spec: NetSpec,
    pub params: Vec<f64>,
    pub x: Vec<f64>,
    pub labels: Vec<u32>,
    pub config: GradcheckConfig,
    pub shares: Vec<NumericShare>,
}

impl MergedShards {
    pub fn subject(&self) -> Subject<'_> {
        Subject {
            spec: &self.spec,
            params: &self.params,
            x: &self.x,
            labels: &self.labels,
            config: &self.config,
        }
    }
}

/// One shard file as read.
struct ShardFile {
    path: PathBuf,
    bytes: Vec<u8>,
    shard: Shard,
    identity: CheckIdentity,
    stats: ShareStats,
}

/// Reads the shard files `paths`, which must be every shard of one check, each once; `chunk`
/// is the merge's own (perturbations per GPU chunk for what it evaluates itself).
pub fn merge_files(paths: &[PathBuf], chunk: Option<usize>) -> Result<MergedShards> {
    let files = paths
        .iter()
        .map(|p| ShardFile::read(p))
        .collect::<Result<Vec<_>>>()?;
    let first = files
        .first()
        .ok_or_else(|| Error::InvalidArgument("--merge needs the shard files to merge".into()))?;
    for file in &files[1..] {
        let differences = first.identity.differences(&file.identity);
        if !differences.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{} and {} are shards of different checks ({}): merge the shards that one \
                 `wgrad gradcheck … --shard K/N` command line computed for every K",
                first.path.display(),
                file.path.display(),
                differences.join("; ")
            )));
        }
        if file.shard.count != first.shard.count {
            return Err(Error::InvalidArgument(format!(
                "{} is shard {} but {} is shard {}: merge the shards of one split, all K/N for \
                 one N",
                first.path.display(),
                first.shard,
                file.path.display(),
                file.shard
            )));
        }
    }
    let count = first.shard.count;
    let mut by_index: BTreeMap<usize, &ShardFile> = BTreeMap::new();
    for file in &files {
        if let Some(earlier) = by_index.insert(file.shard.index, file) {
            return Err(Error::InvalidArgument(format!(
                "{} and {} are both shard {}: give each shard once",
                earlier.path.display(),
                file.path.display(),
                file.shard
            )));
        }
    }
    if by_index.len() < count {
        // N comes from the files: name the first few missing, not all of them.
        let missing: Vec<String> = (1..=count)
            .filter(|k| !by_index.contains_key(k))
            .take(5)
            .map(|k| format!("{k}/{count}"))
            .collect();
        let more = match count - by_index.len() - missing.len() {
            0 => String::new(),
            more => format!(" and {more} more"),
        };
        let one = count - by_index.len() == 1;
        return Err(Error::InvalidArgument(format!(
            "shard{} {}{more} of the check {} missing: add {} (`wgrad gradcheck … --shard K/N \
             --save-grads FILE` with the other shards' flags writes one)",
            if one { "" } else { "s" },
            missing.join(", "),
            if one { "is" } else { "are" },
            if one { "its file" } else { "their files" },
        )));
    }

    let mut merged = first.check(chunk)?;
    merged.shares = (files.iter())
        .map(|f| f.share(&merged.spec, &merged.config.tensors, merged.labels.len()))
        .collect::<Result<_>>()?;
    Ok(merged)
}

impl ShardFile {
    fn read(path: &Path) -> Result<ShardFile> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::InvalidArgument(format!(
                "shard {}: no such file; check the path",
                path.display()
            )),
            _ => Error::io(format!("reading shard {}", path.display()), e),
        })?;
        let not_a_shard = |why: String| {
            Error::InvalidArgument(format!(
                "{} is not a gradcheck shard file ({why}): give the files that \
                 `wgrad gradcheck --shard K/N --save-grads FILE` wrote",
                path.display()
            ))
        };
        let (_, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| not_a_shard(format!("{e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let format = meta.get("format").map(String::as_str);
        if format != Some(FORMAT) {
            return Err(not_a_shard(match format {
                None => "it has no format metadata".into(),
                Some(other) => format!("its format is '{other}', this wgrad reads '{FORMAT}'"),
            }));
        }
        let field = |key: &str| {
            meta.get(key)
                .ok_or_else(|| not_a_shard(format!("it has no {key} metadata")))
        };
        let shard = field("shard")?
            .parse()
            .map_err(|e| not_a_shard(format!("its shard: {e}")))?;
        let identity = serde_json::from_str(field("check")?)
            .map_err(|e| not_a_shard(format!("its check cannot be read: {e}")))?;
        let stats = serde_json::from_str(field("stats")?)
            .map_err(|e| not_a_shard(format!("its stats cannot be read: {e}")))?;
        Ok(ShardFile {
            path: path.to_path_buf(),
            bytes,
            shard,
            identity,
            stats,
        })
    }

    fn tensors(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes).map_err(|e| self.broken(format!("{e}")))
    }

    fn broken(&self, why: String) -> Error {
        Error::InvalidArgument(format!(
            "shard {} is damaged ({why}): compute it again",
            self.path.display()
        ))
    }

    /// The check the shard belongs to, its net, parameters and batch checked against the
    /// identity's hashes, without shares yet; `chunk` is the merge's.
    fn check(&self, chunk: Option<usize>) -> Result<MergedShards> {
        let file = self.tensors()?;
        let identity = &self.identity;
        let spec = identity.spec.clone();
        let layout = spec.layout();
        let mut params = vec![0.0; layout.total];
        for t in &layout.tensors {
            let values = self.f64s(&file, &format!("params.{}", t.name), t.numel)?;
            params[t.offset..t.offset + t.numel].copy_from_slice(&values);
        }
        let x = self.f64s(&file, "batch.x", identity.batch * spec.input)?;
        let labels = self.u32s(&file, "batch.labels", identity.batch)?;
        if sha256(&[&bytes_of(&params)]) != identity.params_sha256
            || sha256(&[&bytes_of(&x), &u32_bytes(&labels)]) != identity.batch_sha256
        {
            let why = "its parameters or batch do not match its check's hashes";
            return Err(self.broken(why.into()));
        }
        let config = GradcheckConfig {
            precision: identity.precision,
            h: identity.h,
            strategy: identity.strategy,
            tensors: identity.tensors.clone(),
            directions: identity.directions,
            seed: identity.seed,
            chunk,
            analytic_fault: None,
        };
        Ok(MergedShards {
            spec,
            params,
            x,
            labels,
            config,
            shares: Vec::new(),
        })
    }

    /// The shard's central differences, at positions in the check's element order.
    fn share(&self, spec: &NetSpec, names: &[String], batch: usize) -> Result<NumericShare> {
        let file = self.tensors()?;
        let wide = self.identity.precision == Precision::F32;
        let mut share = NumericShare {
            positions: Vec::new(),
            at_h: Vec::new(),
            at_twice_h: wide.then(Vec::new),
            kinks: Vec::new(),
            stats: self.stats,
        };
        for t in checked_tensors(spec, names, batch)? {
            let name = &t.name;
            let count = file
                .tensor(&format!("index.{name}"))
                .map_err(|e| self.broken(format!("index.{name}: {e}")))?
                .shape()
                .iter()
                .product();
            let index = self.u32s(&file, &format!("index.{name}"), count)?;
            if let Some(bad) = index.iter().find(|&&i| i as usize >= t.positions.len()) {
                return Err(self.broken(format!(
                    "index.{name} holds {bad}, past {name}'s {} elements",
                    t.positions.len()
                )));
            }
            share
                .positions
                .extend(index.iter().map(|&i| t.positions.start + i as usize));
            share
                .at_h
                .extend(self.f64s(&file, &format!("numeric.{name}"), count)?);
            if let Some(out) = &mut share.at_twice_h {
                out.extend(self.f64s(&file, &format!("numeric_2h.{name}"), count)?);
            }
            let kinks = self.u8s(&file, &format!("kink.{name}"), count)?;
            share.kinks.extend(kinks.iter().map(|&k| k != 0));
        }
        if share.positions.windows(2).any(|w| w[0] >= w[1]) {
            return Err(self.broken("its indices do not ascend, each once".into()));
        }
        Ok(share)
    }

    /// The raw bytes of tensor `name`, which must have dtype `dtype` and `count` elements.
    fn raw<'f>(
        &self,
        file: &'f SafeTensors,
        name: &str,
        dtype: Dtype,
        count: usize,
    ) -> Result<&'f [u8]> {
        let view = file
            .tensor(name)
            .map_err(|e| self.broken(format!("{name}: {e}")))?;
        let numel: usize = view.shape().iter().product();
        if view.dtype() != dtype || numel != count {
            return Err(self.broken(format!(
                "{name} is {:?} × {numel}, not {dtype:?} × {count}",
                view.dtype()
            )));
        }
        Ok(view.data())
    }

    fn f64s(&self, file: &SafeTensors, name: &str, count: usize) -> Result<Vec<f64>> {
        let bytes = self.raw(file, name, Dtype::F64, count)?;
        Ok((bytes.chunks_exact(8))
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect())
    }

    fn u32s(&self, file: &SafeTensors, name: &str, count: usize) -> Result<Vec<u32>> {
        let bytes = self.raw(file, name, Dtype::U32, count)?;
        Ok((bytes.chunks_exact(4))
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect())
    }

    fn u8s(&self, file: &SafeTensors, name: &str, count: usize) -> Result<Vec<u8>> {
        Ok(self.raw(file, name, Dtype::U8, count)?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::Shard;

    #[test]
    fn shards_interleave_and_cover_every_item_once() {
        let items: Vec<usize> = (0..11).collect();
        let parts: Vec<Vec<usize>> = (1..=3)
            .map(|k| Shard::new(k, 3).unwrap().pick(&items))
            .collect();
        assert_eq!(parts[0], vec![0, 3, 6, 9]);
        assert_eq!(parts[1], vec![1, 4, 7, 10]);
        assert_eq!(parts[2], vec![2, 5, 8]);
        let mut all: Vec<usize> = parts.concat();
        all.sort_unstable();
        assert_eq!(all, items);
        // More shards than items: the last ones are empty, not an error.
        assert!(Shard::new(5, 5).unwrap().pick(&[1, 2]).is_empty());
    }

    #[test]
    fn shard_values_parse_or_say_what_is_wrong() {
        assert_eq!("2/3".parse::<Shard>().unwrap(), Shard::new(2, 3).unwrap());
        assert_eq!("2/3".parse::<Shard>().unwrap().to_string(), "2/3");
        for (bad, says) in [
            ("0/3", "1/3 to 3/3"),
            ("4/3", "no shard 4/3"),
            ("1/0", "at least 1 shard"),
            ("x", "'x' is not K/N"),
            ("2", "e.g. 2/3"),
            ("-1/3", "not K/N"),
        ] {
            let e = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
