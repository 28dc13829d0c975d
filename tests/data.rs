//! The public data API against the real bundled subset and against small synthetic folders (IDX
//! under MNIST's and EMNIST's names, CIFAR-10's binary batches), one per way a user's folder can
//! be wrong.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use tempfile::TempDir;
use wgrad::data::{self, DataError, Dataset, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS};

const IMAGES_MAGIC: u32 = 2051;
const LABELS_MAGIC: u32 = 2049;

fn idx(magic: u32, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut bytes = magic.to_be_bytes().to_vec();
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(body);
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// `count` 2×2 images whose pixels encode their index, with labels cycling through the digits.
fn images_file(count: u32) -> Vec<u8> {
    let pixels: Vec<u8> = (0..count * 4).map(|p| (p % 256) as u8).collect();
    idx(IMAGES_MAGIC, &[count, 2, 2], &pixels)
}

fn labels_file(count: u32) -> Vec<u8> {
    let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
    idx(LABELS_MAGIC, &[count], &labels)
}

/// A valid raw folder: 5 training and 3 test samples of 2×2 pixels.
fn valid_folder() -> TempDir {
    let dir = TempDir::new().unwrap();
    write(dir.path(), TRAIN_IMAGES, &images_file(5));
    write(dir.path(), TRAIN_LABELS, &labels_file(5));
    write(dir.path(), TEST_IMAGES, &images_file(3));
    write(dir.path(), TEST_LABELS, &labels_file(3));
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

fn load_error(dir: &Path) -> (DataError, String) {
    let err = data::load_dir(dir).expect_err("the folder should not load");
    let msg = err.to_string();
    (err, msg)
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for part in parts {
        assert!(msg.contains(part), "message lacks {part:?}: {msg}");
    }
}

#[test]
fn bundled_has_8004_train_and_1996_test_images_of_28x28() {
    let mnist = data::bundled().unwrap();
    assert_eq!((mnist.train.len(), mnist.test.len()), (8004, 1996));
    for set in [&mnist.train, &mnist.test] {
        assert_eq!((set.rows, set.cols, set.image_size()), (28, 28, 784));
        assert_eq!(set.images.len(), set.len() * 784);
    }
}

#[test]
fn bundled_labels_are_digits_with_the_documented_class_counts() {
    let mnist = data::bundled().unwrap();
    let mut counts = [0usize; 10];
    for &label in mnist.train.labels.iter().chain(&mnist.test.labels) {
        counts[usize::from(label)] += 1;
    }
    assert_eq!(
        counts,
        [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    );
}

#[test]
fn bundled_images_look_like_digits() {
    let mnist = data::bundled().unwrap();
    let first = mnist.train.image(0);
    // MNIST digits sit on a black background with the ink centred: the border is blank and the
    // image is neither empty nor saturated.
    assert_eq!(first[0], 0);
    assert_eq!(first[783], 0);
    let ink = first.iter().filter(|&&p| p > 0).count();
    assert!((50..400).contains(&ink), "{ink} inked pixels");
}

#[test]
fn raw_and_gzip_folders_load_the_same_as_bundled() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/data/mnist-10k");
    let gz_dir = TempDir::new().unwrap();
    let raw_dir = TempDir::new().unwrap();
    for name in [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS] {
        let compressed = fs::read(source.join(format!("{name}.gz"))).unwrap();
        let mut raw = Vec::new();
        GzDecoder::new(&compressed[..])
            .read_to_end(&mut raw)
            .unwrap();
        write(gz_dir.path(), &format!("{name}.gz"), &compressed);
        write(raw_dir.path(), name, &raw);
    }
    let bundled = data::bundled().unwrap();
    assert!(data::load_dir(gz_dir.path()).unwrap() == bundled);
    assert!(data::load_dir(raw_dir.path()).unwrap() == bundled);
}

#[test]
fn folder_may_mix_raw_and_gzip_files() {
    let dir = valid_folder();
    let raw = data::load_dir(dir.path()).unwrap();
    fs::remove_file(dir.path().join(TRAIN_IMAGES)).unwrap();
    write(
        dir.path(),
        &format!("{TRAIN_IMAGES}.gz"),
        &gzip(&images_file(5)),
    );
    assert_eq!(data::load_dir(dir.path()).unwrap(), raw);
}

#[test]
fn synthetic_folder_keeps_pixels_labels_and_shape() {
    let mnist = data::load_dir(valid_folder().path()).unwrap();
    assert_eq!((mnist.train.len(), mnist.test.len()), (5, 3));
    assert_eq!((mnist.train.rows, mnist.train.cols), (2, 2));
    assert_eq!(mnist.train.labels, [0, 1, 2, 3, 4]);
    assert_eq!(mnist.train.image(1), [4, 5, 6, 7]);
}

#[test]
fn accessors_scale_pixels_to_unit_range() {
    let set = Dataset {
        images: vec![0, 51, 255, 102, 1, 2, 3, 4],
        labels: vec![7, 3],
        channels: 1,
        rows: 2,
        cols: 2,
        classes: 10,
    };
    assert!(!set.is_empty());
    assert_eq!(set.images_f64(0..1), [0.0, 0.2, 1.0, 0.4]);
    assert_eq!(set.images_f32(0..1), [0.0, 0.2, 1.0, 0.4]);
    assert_eq!(
        set.images_f32(1..2),
        [1.0 / 255.0, 2.0 / 255.0, 3.0 / 255.0, 4.0 / 255.0]
    );
    assert_eq!(set.images_f64(0..2).len(), 8);
    assert!(set.images_f64(1..1).is_empty());
}

#[test]
fn take_keeps_the_first_samples_and_clamps_to_the_set() {
    let mnist = data::bundled().unwrap();
    let first = mnist.train.take(10);
    assert_eq!(first.len(), 10);
    assert_eq!(first.labels, mnist.train.labels[..10]);
    assert_eq!(first.images, mnist.train.images[..10 * 784]);
    assert_eq!(first.image(9), mnist.train.image(9));
    assert_eq!(mnist.test.take(60_000).len(), 1996);
    assert!(mnist.test.take(0).is_empty());
}

#[test]
fn debug_shows_shape_not_pixels() {
    let debug = format!("{:?}", data::bundled().unwrap().train);
    assert_mentions(&debug, &["8004", "28"]);
    assert!(debug.len() < 100, "{debug}");
}

#[test]
fn missing_folder_is_named() {
    let parent = TempDir::new().unwrap();
    let missing = parent.path().join("no-such-mnist");
    let (err, msg) = load_error(&missing);
    assert!(matches!(err, DataError::MissingDir { .. }), "{err:?}");
    assert_mentions(
        &msg,
        &[
            &missing.display().to_string(),
            "does not exist",
            TRAIN_IMAGES,
        ],
    );
}

#[test]
fn missing_file_is_named_with_both_candidates_and_the_folder() {
    let dir = valid_folder();
    fs::remove_file(dir.path().join(TEST_LABELS)).unwrap();
    let (err, msg) = load_error(dir.path());
    assert!(
        matches!(&err, DataError::MissingFile { name, .. } if name == TEST_LABELS),
        "{err:?}"
    );
    assert_mentions(
        &msg,
        &[
            &format!("{TEST_LABELS}.gz and {TEST_LABELS}"),
            &dir.path().display().to_string(),
            "four standard MNIST files",
        ],
    );
}

#[test]
fn corrupt_gzip_is_named() {
    let dir = valid_folder();
    fs::remove_file(dir.path().join(TRAIN_LABELS)).unwrap();
    let mut bytes = gzip(&labels_file(5));
    bytes.truncate(bytes.len() / 2);
    let path = write(dir.path(), &format!("{TRAIN_LABELS}.gz"), &bytes);
    let (err, msg) = load_error(dir.path());
    assert!(matches!(err, DataError::Gzip { .. }), "{err:?}");
    assert_mentions(
        &msg,
        &[&path.display().to_string(), "corrupt gzip", "download"],
    );
}

#[test]
fn wrong_magic_is_named_with_found_and_expected() {
    let dir = valid_folder();
    let path = write(dir.path(), TEST_IMAGES, &labels_file(3));
    let (err, msg) = load_error(dir.path());
    assert!(
        matches!(
            err,
            DataError::BadMagic {
                found: 2049,
                expected: 2051,
                ..
            }
        ),
        "{err:?}"
    );
    assert_mentions(
        &msg,
        &[&path.display().to_string(), "2049", "2051", "swapped"],
    );
}

#[test]
fn truncated_images_file_is_named_with_byte_counts() {
    let dir = valid_folder();
    let mut bytes = images_file(5);
    bytes.truncate(bytes.len() - 3);
    let path = write(dir.path(), TRAIN_IMAGES, &bytes);
    let (err, msg) = load_error(dir.path());
    assert!(
        matches!(
            err,
            DataError::Truncated {
                expected: 36,
                found: 33,
                ..
            }
        ),
        "{err:?}"
    );
    assert_mentions(
        &msg,
        &[&path.display().to_string(), "truncated", "36", "33"],
    );
}

#[test]
fn truncated_labels_file_is_named_with_byte_counts() {
    let dir = valid_folder();
    let mut bytes = labels_file(3);
    bytes.pop();
    let path = write(dir.path(), TEST_LABELS, &bytes);
    let (err, msg) = load_error(dir.path());
    assert!(
        matches!(
            err,
            DataError::Truncated {
                expected: 11,
                found: 10,
                ..
            }
        ),
        "{err:?}"
    );
    assert_mentions(
        &msg,
        &[&path.display().to_string(), "truncated", "11", "10"],
    );
}

#[test]
fn trailing_bytes_are_rejected() {
    let dir = valid_folder();
    let mut bytes = labels_file(5);
    bytes.extend([1, 2]);
    let path = write(dir.path(), TRAIN_LABELS, &bytes);
    let (err, msg) = load_error(dir.path());
    assert!(matches!(err, DataError::TrailingBytes { .. }), "{err:?}");
    assert_mentions(&msg, &[&path.display().to_string(), "2 bytes after"]);
}

#[test]
fn image_and_label_counts_must_match() {
    let dir = valid_folder();
    let labels = write(dir.path(), TRAIN_LABELS, &labels_file(4));
    let (err, msg) = load_error(dir.path());
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                images: 5,
                labels: 4,
                ..
            }
        ),
        "{err:?}"
    );
    let images = dir.path().join(TRAIN_IMAGES);
    assert_mentions(
        &msg,
        &[
            &images.display().to_string(),
            &labels.display().to_string(),
            "5 images",
            "4 labels",
        ],
    );
}

#[test]
fn a_gap_in_the_classes_is_named_with_the_label_that_makes_it() {
    // Training labels 0-4, test labels 4, 12, 0: 13 classes, of which 5-11 have no image, the
    // mark of a corrupt label rather than of a 13-class set.
    let dir = valid_folder();
    let path = write(
        dir.path(),
        TEST_LABELS,
        &idx(LABELS_MAGIC, &[3], &[4, 12, 0]),
    );
    let (err, msg) = load_error(dir.path());
    assert!(
        matches!(
            err,
            DataError::MissingClasses {
                index: 1,
                label: 12,
                ..
            }
        ),
        "{err:?}"
    );
    assert_mentions(
        &msg,
        &[
            &path.display().to_string(),
            "label 12 at index 1 makes 13 classes",
            "classes 5-11 have no image",
            "0 to K−1",
        ],
    );
}

#[test]
fn train_and_test_image_shapes_must_match() {
    let dir = valid_folder();
    write(
        dir.path(),
        TEST_IMAGES,
        &idx(IMAGES_MAGIC, &[3, 1, 4], &[0; 12]),
    );
    let (err, msg) = load_error(dir.path());
    assert!(matches!(err, DataError::ShapeMismatch { .. }), "{err:?}");
    assert_mentions(&msg, &[TRAIN_IMAGES, TEST_IMAGES, "2×2", "1×4"]);
}

#[test]
fn data_errors_keep_their_message_in_the_crate_error() {
    let dir = valid_folder();
    write(
        dir.path(),
        TEST_LABELS,
        &idx(LABELS_MAGIC, &[3], &[4, 12, 0]),
    );
    let data_msg = load_error(dir.path()).1;
    let crate_err: wgrad::Error = data::load_dir(dir.path()).unwrap_err().into();
    assert_eq!(crate_err.to_string(), data_msg);
}

/// The validation split keeps each class's share, is the same for the same seed, and leaves no
/// image in both parts or in neither.
#[test]
fn a_stratified_split_keeps_class_shares_and_is_seeded() {
    let bundled = data::bundled().unwrap();
    let train = bundled.train.take(3000);
    let (rest, val) = train.split_stratified(0.1, 5);
    assert_eq!(rest.len() + val.len(), train.len());
    for class in 0..10u8 {
        let count = |d: &Dataset| d.labels.iter().filter(|&&l| l == class).count();
        let want = (count(&train) as f64 * 0.1).round() as usize;
        assert_eq!(count(&val), want, "class {class}");
    }
    // Every image lands in exactly one part: the parts' images together are the whole set's.
    let key = |d: &Dataset, i: usize| (d.image(i).to_vec(), d.labels[i]);
    let mut whole: Vec<_> = (0..train.len()).map(|i| key(&train, i)).collect();
    let mut parts: Vec<_> = (0..rest.len()).map(|i| key(&rest, i)).collect();
    parts.extend((0..val.len()).map(|i| key(&val, i)));
    whole.sort();
    parts.sort();
    assert!(whole == parts);
    assert!(train.split_stratified(0.1, 5).1 == val);
    assert!(train.split_stratified(0.1, 6).1 != val);
}

// ---------------------------------------------------------------------------------------------
// Class counts: K = the largest label + 1, over training and test labels together

/// An IDX folder under `names` (train images, train labels, test images, test labels) with 2×2
/// images and the given labels.
fn folder_with_labels(names: [&str; 4], train: &[u8], test: &[u8]) -> TempDir {
    let dir = TempDir::new().unwrap();
    for (images, labels, set) in [(names[0], names[1], train), (names[2], names[3], test)] {
        write(dir.path(), images, &images_file(set.len() as u32));
        write(
            dir.path(),
            labels,
            &idx(LABELS_MAGIC, &[set.len() as u32], set),
        );
    }
    dir
}

const MNIST_NAMES: [&str; 4] = [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS];

#[test]
fn the_class_count_follows_the_largest_label() {
    let train: Vec<u8> = (0..40).map(|i| i % 12).collect();
    let set = data::load_dir(folder_with_labels(MNIST_NAMES, &train, &[3, 0, 11]).path()).unwrap();
    assert_eq!(
        (set.train.classes, set.test.classes, set.classes()),
        (12, 12, 12)
    );
    assert_eq!(data::bundled().unwrap().classes(), 10);
}

#[test]
fn a_class_only_the_test_set_has_is_still_a_class() {
    let set = data::load_dir(folder_with_labels(MNIST_NAMES, &[0, 1, 2], &[3, 1]).path()).unwrap();
    assert_eq!(set.classes(), 4);
}

/// EMNIST letters number their 26 classes from 1, as torchvision keeps them: 27 class scores,
/// class 0 never the answer.
#[test]
fn class_zero_may_be_empty() {
    let letters: Vec<u8> = (0..52).map(|i| i % 26 + 1).collect();
    let set = data::load_dir(folder_with_labels(MNIST_NAMES, &letters, &[26, 1]).path()).unwrap();
    assert_eq!(set.classes(), 27);
}

#[test]
fn a_single_missing_class_is_named_alone() {
    let dir = folder_with_labels(MNIST_NAMES, &[0, 1, 3, 3], &[0]);
    let (err, msg) = load_error(dir.path());
    assert!(
        matches!(
            err,
            DataError::MissingClasses {
                index: 2,
                label: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert_mentions(&msg, &[TRAIN_LABELS, "class 2 has no image"]);
}

// ---------------------------------------------------------------------------------------------
// EMNIST

fn emnist_names(split: &str) -> [String; 4] {
    [
        "train-images-idx3",
        "train-labels-idx1",
        "test-images-idx3",
        "test-labels-idx1",
    ]
    .map(|part| format!("emnist-{split}-{part}-ubyte"))
}

fn emnist_folder(dir: &Path, split: &str, train: &[u8], test: &[u8]) {
    let [a, b, c, d] = emnist_names(split);
    let made = folder_with_labels([&a, &b, &c, &d], train, test);
    for name in [a, b, c, d] {
        let gz = gzip(&fs::read(made.path().join(&name)).unwrap());
        write(dir, &format!("{name}.gz"), &gz);
    }
}

/// EMNIST stores each image transposed (row r of the file is column r of the letter); the
/// loader turns them upright, as torchvision does, and a non-square image swaps its sides.
#[test]
fn emnist_images_are_set_upright() {
    let dir = TempDir::new().unwrap();
    let [train_images, train_labels, test_images, test_labels] = emnist_names("digits");
    // Upright, the single image is 2 rows × 3 columns, [[1, 2, 3], [4, 5, 6]]: the file holds
    // its transpose, 3 rows × 2 columns.
    let stored = idx(IMAGES_MAGIC, &[1, 3, 2], &[1, 4, 2, 5, 3, 6]);
    write(dir.path(), &train_images, &stored);
    write(dir.path(), &test_images, &stored);
    write(dir.path(), &train_labels, &idx(LABELS_MAGIC, &[1], &[1]));
    write(dir.path(), &test_labels, &idx(LABELS_MAGIC, &[1], &[0]));
    let set = data::load_dir(dir.path()).unwrap();
    for part in [&set.train, &set.test] {
        assert_eq!(part.shape(), [1, 2, 3]);
        assert_eq!(part.image(0), [1, 2, 3, 4, 5, 6]);
    }
}

#[test]
fn an_emnist_folder_of_one_split_loads_with_its_classes() {
    let dir = TempDir::new().unwrap();
    let train: Vec<u8> = (0..94).map(|i| i % 47).collect();
    emnist_folder(dir.path(), "balanced", &train, &[46, 0, 5]);
    let set = data::load_dir(dir.path()).unwrap();
    assert_eq!(
        (set.train.len(), set.test.len(), set.classes()),
        (94, 3, 47)
    );
    assert_eq!(set.test.labels, [46, 0, 5]);
}

/// The EMNIST archive holds every split in one folder: the folder alone is ambiguous, and
/// `FOLDER/emnist-<split>` picks one.
#[test]
fn several_emnist_splits_are_listed_and_one_is_picked_by_name() {
    let dir = TempDir::new().unwrap();
    emnist_folder(dir.path(), "letters", &[1, 2, 3], &[2]);
    emnist_folder(dir.path(), "digits", &[0, 1], &[1]);
    let (err, msg) = load_error(dir.path());
    assert!(
        matches!(err, DataError::SeveralEmnistSplits { .. }),
        "{err:?}"
    );
    let pick = dir.path().join("emnist-digits");
    assert_mentions(&msg, &["digits, letters", &pick.display().to_string()]);
    assert_eq!(
        data::load_dir(&dir.path().join("emnist-letters"))
            .unwrap()
            .classes(),
        4
    );
    assert_eq!(data::load_dir(&pick).unwrap().classes(), 2);
    // A checkpoint records the split by its absolute name, though no file has it.
    let relative = Path::new(".").join("emnist-digits");
    let cwd_file = data::canonical_path(&relative).unwrap();
    assert_eq!(
        cwd_file,
        std::env::current_dir()
            .unwrap()
            .canonicalize()
            .unwrap()
            .join("emnist-digits")
    );
    assert_eq!(
        data::canonical_path(&pick).unwrap(),
        dir.path().canonicalize().unwrap().join("emnist-digits")
    );
}

#[test]
fn a_missing_emnist_file_is_named_with_the_split_layout() {
    let dir = TempDir::new().unwrap();
    emnist_folder(dir.path(), "mnist", &[0, 1], &[1]);
    let gone = "emnist-mnist-test-labels-idx1-ubyte";
    fs::remove_file(dir.path().join(format!("{gone}.gz"))).unwrap();
    let (err, msg) = load_error(dir.path());
    assert!(matches!(err, DataError::MissingFile { .. }), "{err:?}");
    assert_mentions(&msg, &[gone, "an EMNIST split is four files"]);
    let (_, msg) = load_error(&dir.path().join("emnist-bymerge"));
    assert_mentions(&msg, &["emnist-bymerge-train-images-idx3-ubyte not found"]);
}

// ---------------------------------------------------------------------------------------------
// CIFAR-10's binary version

const CIFAR_RECORD: usize = 3073;

/// `labels.len()` records; image i's channel c holds pixel value 10·c + i at every position,
/// but for (row 1, column 2) of the green plane, which holds 200 + i.
fn cifar_batch(labels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(labels.len() * CIFAR_RECORD);
    for (i, &label) in labels.iter().enumerate() {
        bytes.push(label);
        for c in 0..3 {
            for p in 0..1024 {
                let marked = c == 1 && p == 32 + 2;
                bytes.push(if marked {
                    200 + i as u8
                } else {
                    (10 * c + i) as u8
                });
            }
        }
    }
    bytes
}

fn cifar_folder(dir: &Path) {
    for n in 1..=5 {
        write(
            dir,
            &format!("data_batch_{n}.bin"),
            &cifar_batch(&[n, 9, 0]),
        );
    }
    write(dir, "test_batch.bin", &cifar_batch(&[3, 4]));
}

#[test]
fn a_cifar_folder_loads_colour_images_channel_major() {
    let dir = TempDir::new().unwrap();
    cifar_folder(dir.path());
    let set = data::load_dir(dir.path()).unwrap();
    assert_eq!(
        (set.train.len(), set.test.len(), set.classes()),
        (15, 2, 10)
    );
    assert_eq!(
        set.train.labels,
        [1, 9, 0, 2, 9, 0, 3, 9, 0, 4, 9, 0, 5, 9, 0]
    );
    for part in [&set.train, &set.test] {
        assert_eq!((part.shape(), part.image_size()), ([3, 32, 32], 3072));
    }
    let image = set.test.image(1);
    assert_eq!(
        (image[0], image[1023], image[1024], image[2048], image[3071]),
        (1, 1, 11, 21, 21)
    );
    assert_eq!(image[1024 + 32 + 2], 201);
    let identity = set.identity();
    assert_eq!(
        (identity.channels, identity.rows, identity.cols),
        (3, 32, 32)
    );
}

#[test]
fn the_cifar_archive_folder_is_found_from_its_parent() {
    let parent = TempDir::new().unwrap();
    let nested = parent.path().join("cifar-10-batches-bin");
    fs::create_dir(&nested).unwrap();
    cifar_folder(&nested);
    assert_eq!(
        data::load_dir(parent.path()).unwrap(),
        data::load_dir(&nested).unwrap()
    );
}

#[test]
fn a_missing_cifar_batch_is_named() {
    let dir = TempDir::new().unwrap();
    cifar_folder(dir.path());
    fs::remove_file(dir.path().join("data_batch_4.bin")).unwrap();
    let (err, msg) = load_error(dir.path());
    assert!(matches!(err, DataError::MissingBatch { .. }), "{err:?}");
    assert_mentions(
        &msg,
        &[
            "data_batch_4.bin not found",
            "data_batch_1.bin to data_batch_5.bin",
            "extract",
        ],
    );
}

#[test]
fn a_truncated_cifar_batch_is_named_with_its_length() {
    let dir = TempDir::new().unwrap();
    cifar_folder(dir.path());
    let mut bytes = cifar_batch(&[1, 2]);
    bytes.truncate(bytes.len() - 100);
    let path = write(dir.path(), "data_batch_2.bin", &bytes);
    let (err, msg) = load_error(dir.path());
    assert!(
        matches!(err, DataError::RecordSize { len: 6046, .. }),
        "{err:?}"
    );
    assert_mentions(
        &msg,
        &[
            &path.display().to_string(),
            "6046 bytes",
            "3073 bytes each",
            "download",
        ],
    );
}

#[test]
fn a_cifar_label_past_nine_is_named_with_its_record() {
    let dir = TempDir::new().unwrap();
    cifar_folder(dir.path());
    let path = write(dir.path(), "test_batch.bin", &cifar_batch(&[3, 4, 10]));
    let (err, msg) = load_error(dir.path());
    assert!(
        matches!(
            err,
            DataError::BadLabel {
                index: 2,
                label: 10,
                ..
            }
        ),
        "{err:?}"
    );
    assert_mentions(
        &msg,
        &[
            &path.display().to_string(),
            "record 2 has label 10",
            "class 0-9",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// A folder of none of them; colour crops

#[test]
fn a_folder_of_no_known_layout_lists_them_all() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "notes.txt", b"nothing here");
    let (err, msg) = load_error(dir.path());
    assert!(matches!(err, DataError::NoDataset { .. }), "{err:?}");
    assert_mentions(
        &msg,
        &[
            &dir.path().display().to_string(),
            "holds no data set",
            TRAIN_IMAGES,
            "emnist-<split>-",
            "data_batch_1.bin",
            "test_batch.bin",
            "cifar-10-batches-bin",
        ],
    );
}

#[test]
fn a_centre_crop_cuts_every_channel_alike() {
    // One 2-channel 4×4 image: channel c, row r, column k holds 100·c + 10·r + k.
    let images: Vec<u8> = (0..2u8)
        .flat_map(|c| (0..4u8).flat_map(move |r| (0..4u8).map(move |k| 100 * c + 10 * r + k)))
        .collect();
    let set = Dataset {
        images,
        labels: vec![0],
        channels: 2,
        rows: 4,
        cols: 4,
        classes: 2,
    };
    let crop = set.center_crop(2).unwrap();
    assert_eq!(crop.shape(), [2, 2, 2]);
    assert_eq!(crop.image(0), [11, 12, 21, 22, 111, 112, 121, 122]);
    let t = set.transposed();
    assert_eq!(&t.image(0)[..4], [0, 10, 20, 30]);
    assert_eq!(&t.image(0)[16..20], [100, 110, 120, 130]);
}

/// Checkpoints written before colour data record no channel count: they held greyscale.
#[test]
fn an_identity_without_channels_is_greyscale() {
    let old = r#"{"train_images":5,"test_images":3,"rows":2,"cols":2,"sha256":"ab"}"#;
    let identity: data::DataIdentity = serde_json::from_str(old).unwrap();
    assert_eq!(identity.channels, 1);
    assert_eq!(
        identity.to_string(),
        "5 training and 3 test images of 2×2, sha256 ab"
    );
}

/// What `NetSpec::check_data` refuses before training or evaluation: images of another size, a
/// convnet's images of the same size in another shape, and more classes than class scores.
#[test]
fn a_net_takes_data_of_its_size_shape_and_classes() {
    use wgrad::nn::layers::parse_layers;
    use wgrad::nn::{Activation, NetSpec};
    let colour = |classes| Dataset {
        images: vec![0; 2 * 3 * 4 * 4],
        labels: vec![0, 1],
        channels: 3,
        rows: 4,
        cols: 4,
        classes,
    };
    let conv = NetSpec::sequential([3, 4, 4], parse_layers("conv2x3,affine10").unwrap()).unwrap();
    conv.check_data(&colour(10)).unwrap();
    let err = conv.check_data(&colour(11)).unwrap_err().to_string();
    assert_mentions(&err, &["10 outputs", "11 classes (labels 0 to 10)"]);
    // 48 pixels as one 6×8 plane: the size fits, the shape does not.
    let grey = Dataset {
        channels: 1,
        rows: 6,
        cols: 8,
        ..colour(10)
    };
    let err = conv.check_data(&grey).unwrap_err().to_string();
    assert_mentions(&err, &["the images are 6×8", "images of 3×4×4"]);
    let err = NetSpec::sequential([1, 7, 7], parse_layers("conv2x3,affine10").unwrap())
        .unwrap()
        .check_data(&grey)
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["6×8 = 48 pixels", "input size is 49"]);
    // A net made for flat inputs takes any shape of its size.
    NetSpec::mlp(48, &[5], 10, Activation::Relu)
        .check_data(&grey)
        .unwrap();
}
