//! MNIST in the IDX format: the four standard files from a folder (gzip or raw), or the real
//! 10k-image subset compiled into the binary, so that training works from any directory and
//! without a download.

mod gpu;
pub(crate) mod idx;

pub use gpu::GpuDataset;

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

const STANDARD_FILES: &str = "the folder must hold the four standard MNIST files \
    train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and \
    t10k-labels-idx1-ubyte, each raw or gzip-compressed with a .gz suffix";

const REDOWNLOAD: &str = "download the file again";

/// Where the bundled files live in the repository, so that errors point at something findable.
const BUNDLED_DIR: &str = "src/data/mnist-10k";

/// Why MNIST could not be loaded. Every message names the file (or folder) and, where there is
/// one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("MNIST folder {path} does not exist or is not a folder: {STANDARD_FILES}")]
    MissingDir { path: PathBuf },

    #[error("{name} not found in {dir} (tried {name}.gz and {name}): {STANDARD_FILES}")]
    MissingFile { dir: PathBuf, name: String },

    #[error("cannot read {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "{file}: corrupt gzip data ({source}); {REDOWNLOAD}, or put the decompressed raw file \
         (without .gz) in its place"
    )]
    Gzip {
        file: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "{file}: magic number {found} ({found:#010x}, {found_kind}), expected {expected} \
         ({expected:#010x}, {expected_kind}); the file is not what its name says: check that \
         the images and labels files are not swapped or renamed, or {REDOWNLOAD}",
        found_kind = idx::describe_magic(*.found),
        expected_kind = idx::describe_magic(*.expected),
    )]
    BadMagic {
        file: String,
        found: u32,
        expected: u32,
    },

    #[error(
        "{file} is truncated: its IDX header calls for {expected} bytes (header included) but \
         it holds {found}; the file is incomplete, {REDOWNLOAD}"
    )]
    Truncated {
        file: String,
        expected: u64,
        found: u64,
    },

    #[error(
        "{file} has {extra} bytes after the {expected} its IDX header calls for ({found} in \
         all), so the header or the data is wrong; {REDOWNLOAD}",
        extra = .found - .expected,
    )]
    TrailingBytes {
        file: String,
        expected: u64,
        found: u64,
    },

    #[error("{file}: images are {rows}×{cols}, so they hold no pixels; {REDOWNLOAD}")]
    EmptyImage {
        file: String,
        rows: usize,
        cols: usize,
    },

    #[error(
        "{file}: label {label} at index {index} is not a digit 0-9, so this is not an MNIST \
         labels file or it is corrupt; {REDOWNLOAD}"
    )]
    BadLabel {
        file: String,
        index: usize,
        label: u8,
    },

    #[error(
        "{images_file} holds {images} images but {labels_file} holds {labels} labels; each \
         images file needs the labels file of the same set (train-* with train-*, t10k-* with \
         t10k-*)"
    )]
    CountMismatch {
        images_file: String,
        images: usize,
        labels_file: String,
        labels: usize,
    },

    #[error(
        "training images ({train_file}) are {train_rows}×{train_cols} but test images \
         ({test_file}) are {test_rows}×{test_cols}; train and test files must come from the \
         same data set"
    )]
    ShapeMismatch {
        train_file: String,
        train_rows: usize,
        train_cols: usize,
        test_file: String,
        test_rows: usize,
        test_cols: usize,
    },
}

/// Labelled greyscale images, stored as the raw bytes of the IDX file so that a 60k set costs
/// 47 MB rather than four or eight times that; batches are converted to floats on demand.
#[derive(Clone, PartialEq, Eq)]
pub struct Dataset {
    /// `len() * rows * cols` bytes, image after image, each row-major, 0 (background) to 255.
    pub images: Vec<u8>,
    /// One digit 0..=9 per image.
    pub labels: Vec<u8>,
    pub rows: usize,
    pub cols: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image: the input width of a net trained on this set.
    pub fn image_size(&self) -> usize {
        self.rows * self.cols
    }

    /// The raw pixels of image `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.image_size();
        &self.images[i * size..(i + 1) * size]
    }

    /// Images `range` as pixel / 255, concatenated row-major: a `range.len() × image_size()`
    /// matrix, as the CPU reference expects.
    ///
    /// # Panics
    /// If `range` reaches past `self.len()`.
    pub fn images_f64(&self, range: Range<usize>) -> Vec<f64> {
        self.pixels(range)
            .iter()
            .map(|&p| f64::from(p) / 255.0)
            .collect()
    }

    /// Images `range` as pixel / 255 in f32, the layout uploaded to the GPU.
    ///
    /// # Panics
    /// If `range` reaches past `self.len()`.
    pub fn images_f32(&self, range: Range<usize>) -> Vec<f32> {
        self.pixels(range)
            .iter()
            .map(|&p| f32::from(p) / 255.0)
            .collect()
    }

    /// The first `n` samples, or all of them if there are fewer, so that a size limit meant for
    /// the full MNIST also works on the bundled subset.
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset {
            images: self.images[..n * self.image_size()].to_vec(),
            labels: self.labels[..n].to_vec(),
            rows: self.rows,
            cols: self.cols,
        }
    }

    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.image_size());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Dataset {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            rows: self.rows,
            cols: self.cols,
        }
    }

    /// Splits off a validation set: of each class, `fraction` of its images (rounded), drawn by
    /// a seeded shuffle, so that both parts keep the class proportions (as scikit-learn's
    /// stratified split does). Returns (training part, validation part), each in file order.
    pub fn split_stratified(&self, fraction: f64, seed: u64) -> (Dataset, Dataset) {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x7a1_5e7);
        let mut classes = vec![Vec::new(); 256];
        for (i, &label) in self.labels.iter().enumerate() {
            classes[usize::from(label)].push(i);
        }
        let mut held = vec![false; self.len()];
        for members in &mut classes {
            for i in (1..members.len()).rev() {
                let j = rng.random_range(0..=i);
                members.swap(i, j);
            }
            let take = (members.len() as f64 * fraction).round() as usize;
            for &i in &members[..take] {
                held[i] = true;
            }
        }
        let (val, train): (Vec<usize>, Vec<usize>) = (0..self.len()).partition(|&i| held[i]);
        (self.select(&train), self.select(&val))
    }

    /// The central `size`×`size` window of every image: a reduced input for cheap gradient
    /// checks of convnets (the book's ch07 check uses 10×10 inputs).
    pub fn center_crop(&self, size: usize) -> Option<Dataset> {
        if size == 0 || size > self.rows || size > self.cols {
            return None;
        }
        let (top, left) = ((self.rows - size) / 2, (self.cols - size) / 2);
        let mut images = Vec::with_capacity(self.len() * size * size);
        for i in 0..self.len() {
            let image = self.image(i);
            for r in top..top + size {
                images.extend_from_slice(&image[r * self.cols + left..r * self.cols + left + size]);
            }
        }
        Some(Dataset {
            images,
            labels: self.labels.clone(),
            rows: size,
            cols: size,
        })
    }

    fn pixels(&self, range: Range<usize>) -> &[u8] {
        let size = self.image_size();
        &self.images[range.start * size..range.end * size]
    }

    fn from_idx(images: &IdxFile<'_>, labels: &IdxFile<'_>) -> Result<Dataset, DataError> {
        let parsed = idx::parse_images(&images.name, &images.bytes)?;
        let label_values = idx::parse_labels(&labels.name, &labels.bytes)?;
        if parsed.count != label_values.len() {
            return Err(DataError::CountMismatch {
                images_file: images.name.clone(),
                images: parsed.count,
                labels_file: labels.name.clone(),
                labels: label_values.len(),
            });
        }
        Ok(Dataset {
            images: parsed.pixels,
            labels: label_values,
            rows: parsed.rows,
            cols: parsed.cols,
        })
    }
}

/// Pixels are left out: a derived Debug would print megabytes.
impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("len", &self.len())
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mnist {
    pub train: Dataset,
    pub test: Dataset,
}

/// What a checkpoint records of the data a run trained on, so that a resume on other data is
/// refused rather than silently continued. The hash is of the decoded images and labels, so the
/// same data gzipped, raw, or in another folder is the same data.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataIdentity {
    pub train_images: usize,
    pub test_images: usize,
    pub rows: usize,
    pub cols: usize,
    /// SHA-256 over train images, train labels, test images, test labels, each preceded by its
    /// length.
    pub sha256: String,
}

impl Mnist {
    pub fn identity(&self) -> DataIdentity {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for part in [
            &self.train.images,
            &self.train.labels,
            &self.test.images,
            &self.test.labels,
        ] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        let digest = hash.finalize();
        DataIdentity {
            train_images: self.train.len(),
            test_images: self.test.len(),
            rows: self.train.rows,
            cols: self.train.cols,
            sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// A file's contents with the name that its errors should show.
struct IdxFile<'a> {
    name: String,
    bytes: Cow<'a, [u8]>,
}

/// The four standard files, in the order [train images, train labels, test images, test labels].
fn parse_four(files: [IdxFile<'_>; 4]) -> Result<Mnist, DataError> {
    let [train_images, train_labels, test_images, test_labels] = files;
    let train = Dataset::from_idx(&train_images, &train_labels)?;
    let test = Dataset::from_idx(&test_images, &test_labels)?;
    if (train.rows, train.cols) != (test.rows, test.cols) {
        return Err(DataError::ShapeMismatch {
            train_file: train_images.name,
            train_rows: train.rows,
            train_cols: train.cols,
            test_file: test_images.name,
            test_rows: test.rows,
            test_cols: test.cols,
        });
    }
    Ok(Mnist { train, test })
}

/// Loads MNIST (or anything shipped under the same four names, such as Fashion-MNIST) from
/// `dir`. Each file may be `NAME.gz` or the raw `NAME`; `.gz` wins when both are present.
pub fn load_dir(dir: &Path) -> Result<Mnist, DataError> {
    if !dir.is_dir() {
        return Err(DataError::MissingDir {
            path: dir.to_path_buf(),
        });
    }
    // All four are found before any is parsed, so a missing file is reported at once rather
    // than after decompressing 47 MB of training images.
    let read = |name| read_standard_file(dir, name);
    parse_four([
        read(TRAIN_IMAGES)?,
        read(TRAIN_LABELS)?,
        read(TEST_IMAGES)?,
        read(TEST_LABELS)?,
    ])
}

fn read_standard_file(dir: &Path, name: &str) -> Result<IdxFile<'static>, DataError> {
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
    })
}

/// The real MNIST subset in `src/data/mnist-10k` (8,004 train / 1,996 test, 28×28), compiled into
/// the binary so that it needs no files at run time.
pub fn bundled() -> Result<Mnist, DataError> {
    let bundled_file = |name: &str, bytes: &'static [u8]| IdxFile {
        name: format!("bundled {BUNDLED_DIR}/{name}.gz"),
        bytes: Cow::Borrowed(bytes),
    };
    parse_four([
        bundled_file(
            TRAIN_IMAGES,
            include_bytes!("mnist-10k/train-images-idx3-ubyte.gz"),
        ),
        bundled_file(
            TRAIN_LABELS,
            include_bytes!("mnist-10k/train-labels-idx1-ubyte.gz"),
        ),
        bundled_file(
            TEST_IMAGES,
            include_bytes!("mnist-10k/t10k-images-idx3-ubyte.gz"),
        ),
        bundled_file(
            TEST_LABELS,
            include_bytes!("mnist-10k/t10k-labels-idx1-ubyte.gz"),
        ),
    ])
}
