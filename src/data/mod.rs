//! The data sets `--data` reads, all as labelled images of C×H×W bytes: MNIST and anything in
//! its IDX format (Fashion-MNIST and KMNIST under MNIST's four names, EMNIST under its own, any
//! IDX set whose labels run 0..K−1), CIFAR-10's binary version, and the real 10k-image MNIST
//! subset compiled into the binary, so that training works from any directory and without a
//! download. `folder.rs` tells the layouts apart by their file names, `idx.rs` and `cifar.rs`
//! parse the files.

mod cifar;
mod folder;
mod gpu;
pub(crate) mod idx;

pub use folder::canonical_path;
pub use gpu::GpuDataset;

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::ops::Range;
use std::path::PathBuf;

pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

const STANDARD_FILES: &str = "the folder must hold the four standard MNIST files \
    train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and \
    t10k-labels-idx1-ubyte, each raw or gzip-compressed with a .gz suffix";

const EMNIST_FILES: &str = "an EMNIST split is four files, \
    emnist-<split>-train-images-idx3-ubyte, emnist-<split>-train-labels-idx1-ubyte, \
    emnist-<split>-test-images-idx3-ubyte and emnist-<split>-test-labels-idx1-ubyte, each raw \
    or gzip-compressed with a .gz suffix";

/// Every layout a data folder may have, for the errors about a folder that holds none.
const LAYOUTS: &str = "MNIST's four files train-images-idx3-ubyte, train-labels-idx1-ubyte, \
    t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (also Fashion-MNIST, KMNIST, or any IDX \
    set under those names); an EMNIST split's four files \
    emnist-<split>-{train,test}-{images-idx3,labels-idx1}-ubyte (IDX files raw or with .gz); or \
    CIFAR-10's binary version, data_batch_1.bin to data_batch_5.bin and test_batch.bin (or the \
    cifar-10-batches-bin folder that holds them)";

const REDOWNLOAD: &str = "download the file again";

/// Where the bundled files live in the repository, so that errors point at something findable.
const BUNDLED_DIR: &str = "src/data/mnist-10k";

/// Why a data set could not be loaded. Every message names the file (or folder) and, where
/// there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "data folder {path} does not exist or is not a folder (nor an EMNIST split named as \
         FOLDER/emnist-<split>): name a folder that holds {LAYOUTS}"
    )]
    MissingDir { path: PathBuf },

    #[error(
        "{dir} holds no data set that wgrad reads: it looked for {LAYOUTS}; put one of them in \
         the folder, or name the folder that holds them"
    )]
    NoDataset { dir: PathBuf },

    #[error(
        "{dir} holds several EMNIST splits ({}): name one as {} (its four files are read, the \
         others left alone)",
        .splits.join(", "),
        .dir.join(format!("emnist-{}", .splits[0])).display()
    )]
    SeveralEmnistSplits { dir: PathBuf, splits: Vec<String> },

    #[error("{name} not found in {dir} (tried {name}.gz and {name}): {need}")]
    MissingFile {
        dir: PathBuf,
        name: String,
        /// What the folder must hold.
        need: &'static str,
    },

    #[error(
        "{name} not found in {dir}: a CIFAR-10 folder holds the binary version's six batches, \
         data_batch_1.bin to data_batch_5.bin and test_batch.bin; extract \
         cifar-10-binary.tar.gz again"
    )]
    MissingBatch { dir: PathBuf, name: String },

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
        "{file}: label {label} at index {index} makes {classes} classes (labels 0 to {label}), \
         but {missing} no image in the training or test labels: labels must number the \
         classes 0 to K−1 (only class 0 may be empty, as in EMNIST letters), so the file is \
         corrupt or not a labels file; {REDOWNLOAD}",
        classes = usize::from(*.label) + 1,
    )]
    MissingClasses {
        file: String,
        index: usize,
        label: u8,
        /// The classes without an image, as "class 4 has" or "classes 4, 7-9 have".
        missing: String,
    },

    #[error(
        "{file}: record {index} has label {label}, not a CIFAR-10 class 0-9, so the file is not \
         a CIFAR-10 binary batch (CIFAR-100's records hold two label bytes) or it is corrupt; \
         {REDOWNLOAD}"
    )]
    BadLabel {
        file: String,
        index: usize,
        label: u8,
    },

    #[error(
        "{file} holds {len} bytes, not one or more whole CIFAR-10 records (3073 bytes each: a \
         label byte and 3×32×32 pixels), so it is truncated or not a CIFAR-10 binary batch; \
         {REDOWNLOAD}"
    )]
    RecordSize { file: String, len: u64 },

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

/// Labelled images, stored as the raw bytes of their files so that a 60k set costs 47 MB rather
/// than four or eight times that; batches are converted to floats on demand.
#[derive(Clone, PartialEq, Eq)]
pub struct Dataset {
    /// `len() * image_size()` bytes, image after image, each channel-major as a convolution
    /// reads it (C planes of `rows`×`cols`, each row-major), 0 (dark) to 255.
    pub images: Vec<u8>,
    /// One class `0..classes` per image.
    pub labels: Vec<u8>,
    /// Colour planes per image: 1 for the IDX sets, 3 (red, green, blue) for CIFAR-10.
    pub channels: usize,
    pub rows: usize,
    pub cols: usize,
    /// The class count of the data set this comes from (its training and test images
    /// together), the net's class scores: every label is below it.
    pub classes: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image (C·H·W): the input width of a net trained on this set.
    pub fn image_size(&self) -> usize {
        self.channels * self.rows * self.cols
    }

    /// (C, H, W) of one image, as [`crate::nn::NetSpec`]'s `image`.
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.rows, self.cols]
    }

    /// The raw pixels of image `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.image_size();
        &self.images[i * size..(i + 1) * size]
    }

    /// Images `range` as pixel / 255, concatenated: a `range.len() × image_size()` matrix, as
    /// the CPU reference expects.
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
        self.with(
            self.images[..n * self.image_size()].to_vec(),
            self.labels[..n].to_vec(),
        )
    }

    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.image_size());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        self.with(images, indices.iter().map(|&i| self.labels[i]).collect())
    }

    /// Other images and labels of the same shape and classes.
    fn with(&self, images: Vec<u8>, labels: Vec<u8>) -> Dataset {
        Dataset {
            images,
            labels,
            ..*self
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

    /// The central `size`×`size` window of every image (of each of its channels): a reduced
    /// input for cheap gradient checks of convnets (the book's ch07 check uses 10×10 inputs).
    pub fn center_crop(&self, size: usize) -> Option<Dataset> {
        if size == 0 || size > self.rows || size > self.cols {
            return None;
        }
        let (top, left) = ((self.rows - size) / 2, (self.cols - size) / 2);
        let mut images = Vec::with_capacity(self.len() * self.channels * size * size);
        for plane in self.images.chunks_exact(self.rows * self.cols) {
            for r in top..top + size {
                let start = r * self.cols + left;
                images.extend_from_slice(&plane[start..start + size]);
            }
        }
        Some(Dataset {
            images,
            labels: self.labels.clone(),
            rows: size,
            cols: size,
            ..*self
        })
    }

    /// Every image (plane) mirrored about its main diagonal, rows becoming columns: EMNIST
    /// stores its images so, and this sets them upright (as torchvision's `EMNIST` does).
    pub fn transposed(&self) -> Dataset {
        let (rows, cols) = (self.rows, self.cols);
        let mut images = Vec::with_capacity(self.images.len());
        for plane in self.images.chunks_exact(rows * cols) {
            for c in 0..cols {
                images.extend((0..rows).map(|r| plane[r * cols + c]));
            }
        }
        Dataset {
            images,
            labels: self.labels.clone(),
            rows: cols,
            cols: rows,
            ..*self
        }
    }

    fn pixels(&self, range: Range<usize>) -> &[u8] {
        let size = self.image_size();
        &self.images[range.start * size..range.end * size]
    }

    /// An IDX images file and its labels file, with the class count still to be set (see
    /// [`number_classes`]).
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
            channels: 1,
            rows: parsed.rows,
            cols: parsed.cols,
            classes: 0,
        })
    }
}

/// Pixels are left out: a derived Debug would print megabytes.
impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("len", &self.len())
            .field("channels", &self.channels)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("classes", &self.classes)
            .finish_non_exhaustive()
    }
}

/// A data set's training and test parts (of any layout: the name is MNIST's, the first one
/// read). Both have the same shape and class count.
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
    /// Colour planes per image; checkpoints written before there were colour images lack it,
    /// and held greyscale data.
    #[serde(default = "one_channel")]
    pub channels: usize,
    pub rows: usize,
    pub cols: usize,
    /// SHA-256 over train images, train labels, test images, test labels, each preceded by its
    /// length.
    pub sha256: String,
}

fn one_channel() -> usize {
    1
}

impl fmt::Display for DataIdentity {
    /// "60000 training and 10000 test images of 28×28 (3×32×32 in colour), sha256 …"
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (train, test) = (self.train_images, self.test_images);
        write!(f, "{train} training and {test} test images of ")?;
        if self.channels != 1 {
            write!(f, "{}×", self.channels)?;
        }
        write!(f, "{}×{}, sha256 {}", self.rows, self.cols, self.sha256)
    }
}

impl Mnist {
    /// The class count, the same for both parts.
    pub fn classes(&self) -> usize {
        self.train.classes
    }

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
            channels: self.train.channels,
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

/// The four files of an IDX set, in the order [train images, train labels, test images, test
/// labels], its class count set from the labels.
fn parse_four(files: [IdxFile<'_>; 4]) -> Result<Mnist, DataError> {
    let [train_images, train_labels, test_images, test_labels] = files;
    let mut train = Dataset::from_idx(&train_images, &train_labels)?;
    let mut test = Dataset::from_idx(&test_images, &test_labels)?;
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
    let classes = number_classes([
        (&train.labels[..], &train_labels.name[..]),
        (&test.labels[..], &test_labels.name[..]),
    ])?;
    (train.classes, test.classes) = (classes, classes);
    Ok(Mnist { train, test })
}

/// The class count of an IDX set: K = its largest label + 1, over training and test labels
/// together (a class that only the test set has is still a class). Every class but 0 must have
/// an image, so that a corrupt label cannot quietly add classes: class 0 may be empty because
/// some sets number their classes from 1 (EMNIST letters: 1 to 26, so K = 27, as torchvision
/// keeps them).
fn number_classes(parts: [(&[u8], &str); 2]) -> Result<usize, DataError> {
    let mut counts = [0usize; 256];
    for &label in parts.iter().flat_map(|(labels, _)| labels.iter()) {
        counts[usize::from(label)] += 1;
    }
    let Some(largest) = (0..256).rev().find(|&c| counts[c] > 0) else {
        return Ok(0);
    };
    let missing: Vec<usize> = (1..largest).filter(|&c| counts[c] == 0).collect();
    if missing.is_empty() {
        return Ok(largest + 1);
    }
    let label = largest as u8;
    let (labels, file) = parts
        .into_iter()
        .find(|(labels, _)| labels.contains(&label))
        .expect("the largest label is in one of the parts");
    Err(DataError::MissingClasses {
        file: file.to_owned(),
        index: labels
            .iter()
            .position(|&l| l == label)
            .expect("found above"),
        label,
        missing: describe_classes(&missing),
    })
}

/// "class 4 has" or "classes 2, 4-9 have": ascending class numbers, runs joined.
fn describe_classes(classes: &[usize]) -> String {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &c in classes {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == c => *end = c,
            _ => runs.push((c, c)),
        }
    }
    let words: Vec<String> = (runs.iter())
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    match classes {
        [_] => format!("class {} has", words[0]),
        _ => format!("classes {} have", words.join(", ")),
    }
}

/// Loads the data set in `path`: MNIST's four files (or anything shipped under the same names,
/// such as Fashion-MNIST and KMNIST), an EMNIST split (one in the folder, or named as
/// `FOLDER/emnist-<split>`), or CIFAR-10's binary batches (in the folder or its
/// `cifar-10-batches-bin`). IDX files may be `NAME.gz` or the raw `NAME`; `.gz` wins when both
/// are present. A folder that holds none of these is an error that lists them.
pub fn load_dir(path: &std::path::Path) -> Result<Mnist, DataError> {
    folder::load(path)
}

/// The data in `dir` ([`load_dir`]), or the bundled set ([`bundled`]) when no folder is given.
pub fn load(dir: Option<&std::path::Path>) -> Result<Mnist, DataError> {
    match dir {
        Some(dir) => load_dir(dir),
        None => bundled(),
    }
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
