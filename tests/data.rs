//! The public data API against the real bundled subset and against small synthetic IDX folders,
//! one per way a user's MNIST folder can be wrong.

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
        rows: 2,
        cols: 2,
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
fn label_above_nine_is_named_with_index_and_value() {
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
            DataError::BadLabel {
                index: 1,
                label: 12,
                ..
            }
        ),
        "{err:?}"
    );
    assert_mentions(&msg, &[&path.display().to_string(), "label 12", "index 1"]);
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
