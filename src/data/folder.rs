//! Which data set a folder holds, told by its file names, tried in this order: MNIST's four IDX
//! names (Fashion-MNIST and KMNIST use them too), an EMNIST split's four, CIFAR-10's binary
//! batches. EMNIST ships every split in one folder, so a split can also be named as
//! `FOLDER/emnist-<split>`, a path that is no file itself.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use super::{
    cifar, parse_four, DataError, IdxFile, Mnist, EMNIST_FILES, STANDARD_FILES, TEST_IMAGES,
    TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS,
};

/// An EMNIST file's name after `emnist-<split>`, in the order [`parse_four`] takes them.
const EMNIST_PARTS: [&str; 4] = [
    "-train-images-idx3-ubyte",
    "-train-labels-idx1-ubyte",
    "-test-images-idx3-ubyte",
    "-test-labels-idx1-ubyte",
];

pub(super) fn load(path: &Path) -> Result<Mnist, DataError> {
    if !path.is_dir() {
        return match emnist_prefix(path) {
            Some((dir, split)) => load_emnist(&dir, &split),
            None => Err(DataError::MissingDir {
                path: path.to_path_buf(),
            }),
        };
    }
    let dir = path;
    let mnist = [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS];
    if mnist.iter().any(|name| idx_file_exists(dir, name)) {
        return load_mnist(dir);
    }
    let splits = emnist_splits(dir)?;
    match &splits[..] {
        [] => {}
        [split] => return load_emnist(dir, split),
        _ => {
            return Err(DataError::SeveralEmnistSplits {
                dir: dir.to_path_buf(),
                splits,
            })
        }
    }
    if cifar::holds_batches(dir) {
        return cifar::load(dir);
    }
    let nested = dir.join(cifar::FOLDER);
    if nested.is_dir() {
        return cifar::load(&nested);
    }
    Err(DataError::NoDataset {
        dir: dir.to_path_buf(),
    })
}

/// `path` as an absolute path, for a checkpoint to find the data from any working directory. An
/// EMNIST split named as `FOLDER/emnist-<split>` is no file: its folder is resolved instead.
pub fn canonical_path(path: &Path) -> io::Result<PathBuf> {
    match std::fs::canonicalize(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => match emnist_prefix(path) {
            Some((dir, split)) => Ok(std::fs::canonicalize(dir)?.join(format!("emnist-{split}"))),
            None => Err(e),
        },
        resolved => resolved,
    }
}

/// (folder, split) of a path `FOLDER/emnist-<split>` whose folder exists.
fn emnist_prefix(path: &Path) -> Option<(PathBuf, String)> {
    let split = path.file_name()?.to_str()?.strip_prefix("emnist-")?;
    let dir = match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return None,
    };
    (!split.is_empty() && !path.exists() && dir.is_dir()).then(|| (dir.into(), split.into()))
}

fn idx_file_exists(dir: &Path, name: &str) -> bool {
    dir.join(name).exists() || dir.join(format!("{name}.gz")).exists()
}

/// The EMNIST splits with at least one file in `dir`, sorted.
fn emnist_splits(dir: &Path) -> Result<Vec<String>, DataError> {
    let io_error = |source| DataError::Io {
        file: dir.display().to_string(),
        source,
    };
    let mut splits = BTreeSet::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let name = entry.map_err(io_error)?.file_name();
        let Some(name) = name.to_str() else { continue };
        let name = name.strip_suffix(".gz").unwrap_or(name);
        let Some(rest) = name.strip_prefix("emnist-") else {
            continue;
        };
        let split = EMNIST_PARTS.iter().find_map(|part| rest.strip_suffix(part));
        if let Some(split) = split.filter(|s| !s.is_empty()) {
            splits.insert(split.to_owned());
        }
    }
    Ok(splits.into_iter().collect())
}

fn load_mnist(dir: &Path) -> Result<Mnist, DataError> {
    // All four are found before any is parsed, so a missing file is reported at once rather
    // than after decompressing 47 MB of training images.
    let read = |name| read_idx_file(dir, name, STANDARD_FILES);
    parse_four([
        read(TRAIN_IMAGES)?,
        read(TRAIN_LABELS)?,
        read(TEST_IMAGES)?,
        read(TEST_LABELS)?,
    ])
}

/// An EMNIST split, its images set upright: EMNIST stores each one transposed.
fn load_emnist(dir: &Path, split: &str) -> Result<Mnist, DataError> {
    let read = |part| read_idx_file(dir, &format!("emnist-{split}{part}"), EMNIST_FILES);
    let [train_images, train_labels, test_images, test_labels] = EMNIST_PARTS;
    let stored = parse_four([
        read(train_images)?,
        read(train_labels)?,
        read(test_images)?,
        read(test_labels)?,
    ])?;
    Ok(Mnist {
        train: stored.train.transposed(),
        test: stored.test.transposed(),
    })
}

/// `dir/name.gz`, else `dir/name`.
fn read_idx_file(
    dir: &Path,
    name: &str,
    need: &'static str,
) -> Result<IdxFile<'static>, DataError> {
    for candidate in [format!("{name}.gz"), name.to_owned()] {
        let path = dir.join(candidate);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let name = path.display().to_string();
                return Ok(IdxFile {
                    name,
                    bytes: Cow::Owned(bytes),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(DataError::Io {
                    file: path.display().to_string(),
                    source,
                });
            }
        }
    }
    Err(DataError::MissingFile {
        dir: dir.to_path_buf(),
        name: name.to_owned(),
        need,
    })
}
