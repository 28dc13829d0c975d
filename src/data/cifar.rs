//! CIFAR-10's binary version: five training batches and a test batch, each a run of 3073-byte
//! records, a label byte (0-9) and a 32×32 colour image as 1024 red, 1024 green and 1024 blue
//! bytes, each plane row-major. That is already the channel-major layout a convolution reads,
//! so the pixels are kept as stored.

use std::path::Path;

use super::{DataError, Dataset, Mnist};

/// The folder the archive unpacks to, accepted when its parent is given.
pub(super) const FOLDER: &str = "cifar-10-batches-bin";
const TRAIN_BATCHES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
const TEST_BATCH: &str = "test_batch.bin";

const CHANNELS: usize = 3;
const SIDE: usize = 32;
const IMAGE: usize = CHANNELS * SIDE * SIDE;
const RECORD: usize = 1 + IMAGE;
/// The format's own class count: its labels are checked against it, not counted.
const CLASSES: usize = 10;

/// Whether `dir` holds any of the six batch files (then all six must be there).
pub(super) fn holds_batches(dir: &Path) -> bool {
    (TRAIN_BATCHES.iter().chain([&TEST_BATCH])).any(|name| dir.join(name).exists())
}

/// All six batches: training from data_batch_1 to 5 in order, test from test_batch. A missing
/// batch is an error rather than a smaller set, since the archive always holds all six.
pub(super) fn load(dir: &Path) -> Result<Mnist, DataError> {
    // Every file is found before any is read, as for the IDX sets.
    if let Some(name) = (TRAIN_BATCHES.iter().chain([&TEST_BATCH])).find(|n| !dir.join(n).is_file())
    {
        return Err(DataError::MissingBatch {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        });
    }
    let mut train = empty();
    for name in TRAIN_BATCHES {
        read_batch(&dir.join(name), &mut train)?;
    }
    let mut test = empty();
    read_batch(&dir.join(TEST_BATCH), &mut test)?;
    Ok(Mnist { train, test })
}

fn empty() -> Dataset {
    Dataset {
        images: Vec::new(),
        labels: Vec::new(),
        channels: CHANNELS,
        rows: SIDE,
        cols: SIDE,
        classes: CLASSES,
    }
}

/// Appends the records of the batch at `path` to `set`.
fn read_batch(path: &Path, set: &mut Dataset) -> Result<(), DataError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        file: file.clone(),
        source,
    })?;
    parse_records(&file, &bytes, set)
}

/// Checks and appends records; `file` names the batch in errors.
pub(super) fn parse_records(file: &str, bytes: &[u8], set: &mut Dataset) -> Result<(), DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(DataError::RecordSize {
            file: file.to_owned(),
            len: bytes.len() as u64,
        });
    }
    set.images.reserve(bytes.len() / RECORD * IMAGE);
    for (index, record) in bytes.chunks_exact(RECORD).enumerate() {
        let label = record[0];
        if usize::from(label) >= CLASSES {
            return Err(DataError::BadLabel {
                file: file.to_owned(),
                index,
                label,
            });
        }
        set.labels.push(label);
        set.images.extend_from_slice(&record[1..]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two records whose bytes count up from their label, so any offset error shows.
    fn two_records() -> Vec<u8> {
        (0..2 * RECORD).map(|i| (i % 251) as u8 % 10).collect()
    }

    #[test]
    fn records_keep_label_and_channel_major_pixels() {
        let mut bytes = vec![7u8];
        // Red plane 1, green 2, blue 3, so a reader that interleaves channels mixes them.
        for plane in 1..=3u8 {
            bytes.extend(std::iter::repeat_n(plane, SIDE * SIDE));
        }
        bytes[1 + 5] = 200; // red, row 0, column 5
        bytes[1 + SIDE * SIDE + SIDE + 2] = 201; // green, row 1, column 2
        let mut set = empty();
        parse_records("b", &bytes, &mut set).unwrap();
        assert_eq!(set.labels, [7]);
        assert_eq!(set.shape(), [3, 32, 32]);
        let image = set.image(0);
        assert_eq!((image[5], image[1024 + 32 + 2]), (200, 201));
        assert_eq!(
            (image[0], image[1024], image[2048], image[3071]),
            (1, 2, 3, 3)
        );
    }

    #[test]
    fn batches_append() {
        let mut set = empty();
        parse_records("a", &two_records(), &mut set).unwrap();
        parse_records("b", &two_records()[..RECORD], &mut set).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.images.len(), 3 * IMAGE);
    }

    #[test]
    fn partial_and_empty_batches_are_record_size_errors() {
        for len in [0, RECORD - 1, RECORD + 1, 2 * RECORD - 1] {
            let err = parse_records("batch", &two_records()[..len], &mut empty()).unwrap_err();
            assert!(
                matches!(err, DataError::RecordSize { len: l, .. } if l == len as u64),
                "{err}"
            );
        }
    }

    #[test]
    fn label_ten_is_named_with_its_record() {
        let mut bytes = two_records();
        bytes[RECORD] = 10;
        let err = parse_records("batch", &bytes, &mut empty()).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::BadLabel {
                    index: 1,
                    label: 10,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("record 1 has label 10"));
    }
}
