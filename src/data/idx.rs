//! The IDX container that MNIST ships in: a big-endian header (magic number, then one u32 per
//! dimension) followed by one unsigned byte per element. Files may be gzip-compressed; the gzip
//! magic (1f 8b) cannot begin a raw IDX file, whose magic starts with two zero bytes, so sniffing
//! the content is unambiguous and a misnamed file still loads.

use std::borrow::Cow;
use std::io::Read;

use flate2::read::MultiGzDecoder;

use super::DataError;

/// Unsigned bytes, 3 dimensions (count, rows, cols).
pub(crate) const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Unsigned bytes, 1 dimension (count).
pub(crate) const LABELS_MAGIC: u32 = 0x0000_0801;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Images exactly as stored: `count` images of `rows`×`cols` bytes, row-major.
#[derive(Debug)]
pub(crate) struct Images {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

/// Parses an IDX image file (gzip or raw). `file` names it in every error.
pub(crate) fn parse_images(file: &str, bytes: &[u8]) -> Result<Images, DataError> {
    let data = decompress(file, bytes)?;
    let [count, rows, cols] = checked_dims::<3>(file, &data, IMAGES_MAGIC)?;
    if rows == 0 || cols == 0 {
        return Err(DataError::EmptyImage {
            file: file.to_owned(),
            rows,
            cols,
        });
    }
    let mut pixels = data.into_owned();
    // A memmove rather than a second 47 MB allocation for the full training set.
    pixels.drain(..header_len::<3>());
    Ok(Images {
        count,
        rows,
        cols,
        pixels,
    })
}

/// Parses an IDX label file (gzip or raw). Any byte is a label here: the class count, and the
/// check that the labels number the classes, come from both sets' labels together (see
/// `number_classes` in the parent module).
pub(crate) fn parse_labels(file: &str, bytes: &[u8]) -> Result<Vec<u8>, DataError> {
    let data = decompress(file, bytes)?;
    checked_dims::<1>(file, &data, LABELS_MAGIC)?;
    let mut labels = data.into_owned();
    labels.drain(..header_len::<1>());
    Ok(labels)
}

/// What a magic number says about a file, so that a swapped or foreign file is recognisable
/// from the error message alone.
pub(crate) fn describe_magic(magic: u32) -> &'static str {
    match magic {
        IMAGES_MAGIC => "IDX images",
        LABELS_MAGIC => "IDX labels",
        // Every IDX magic starts with two zero bytes; anything else is not IDX at all.
        m if m >> 16 == 0 => "IDX, but of another element type or rank",
        _ => "not an IDX file",
    }
}

fn decompress<'a>(file: &str, bytes: &'a [u8]) -> Result<Cow<'a, [u8]>, DataError> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut data = Vec::new();
    // The multi-member decoder also parses anything after the first member, so trailing
    // garbage is reported as corruption instead of being silently dropped.
    MultiGzDecoder::new(bytes)
        .read_to_end(&mut data)
        .map_err(|source| DataError::Gzip {
            file: file.to_owned(),
            source,
        })?;
    Ok(Cow::Owned(data))
}

const fn header_len<const RANK: usize>() -> usize {
    4 * (1 + RANK)
}

/// Checks the magic number and that the file holds exactly the bytes its header declares, and
/// returns the dimensions. Nothing is allocated from header values, so a corrupt header cannot
/// trigger a huge allocation.
fn checked_dims<const RANK: usize>(
    file: &str,
    data: &[u8],
    expected_magic: u32,
) -> Result<[usize; RANK], DataError> {
    let header_len = header_len::<RANK>();
    let truncated = |expected: u64| DataError::Truncated {
        file: file.to_owned(),
        expected,
        found: data.len() as u64,
    };
    if data.len() < 4 {
        return Err(truncated(header_len as u64));
    }
    let found_magic = read_u32_be(data, 0);
    if found_magic != expected_magic {
        return Err(DataError::BadMagic {
            file: file.to_owned(),
            found: found_magic,
            expected: expected_magic,
        });
    }
    if data.len() < header_len {
        return Err(truncated(header_len as u64));
    }
    let dims: [usize; RANK] = std::array::from_fn(|d| read_u32_be(data, 4 * (1 + d)) as usize);
    // Saturating: three u32 dimensions can exceed u64, and such a header is simply a file far
    // larger than the one we have.
    let payload = dims.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64));
    let expected = (header_len as u64).saturating_add(payload);
    let found = data.len() as u64;
    if found < expected {
        return Err(truncated(expected));
    }
    if found > expected {
        return Err(DataError::TrailingBytes {
            file: file.to_owned(),
            expected,
            found,
        });
    }
    Ok(dims)
}

fn read_u32_be(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::GzEncoder;
    use flate2::Compression;

    use super::*;

    fn idx(magic: u32, dims: &[u32], body: &[u8]) -> Vec<u8> {
        let mut bytes = magic.to_be_bytes().to_vec();
        for d in dims {
            bytes.extend(d.to_be_bytes());
        }
        bytes.extend(body);
        bytes
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// Two 2×3 images whose pixels count up, so any offset error shows.
    fn two_images() -> Vec<u8> {
        idx(
            IMAGES_MAGIC,
            &[2, 2, 3],
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 255],
        )
    }

    #[test]
    fn raw_images_keep_shape_and_pixel_order() {
        let images = parse_images("img", &two_images()).unwrap();
        assert_eq!((images.count, images.rows, images.cols), (2, 2, 3));
        assert_eq!(images.pixels, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 255]);
    }

    #[test]
    fn gzip_images_equal_raw_images() {
        let raw = parse_images("img", &two_images()).unwrap();
        let gz = parse_images("img.gz", &gzip(&two_images())).unwrap();
        assert_eq!(
            (gz.count, gz.rows, gz.cols),
            (raw.count, raw.rows, raw.cols)
        );
        assert_eq!(gz.pixels, raw.pixels);
    }

    #[test]
    fn raw_and_gzip_labels_are_equal() {
        let labels = idx(LABELS_MAGIC, &[4], &[0, 9, 3, 7]);
        assert_eq!(parse_labels("lab", &labels).unwrap(), [0, 9, 3, 7]);
        assert_eq!(
            parse_labels("lab.gz", &gzip(&labels)).unwrap(),
            [0, 9, 3, 7]
        );
    }

    #[test]
    fn empty_sets_are_valid() {
        let images = parse_images("img", &idx(IMAGES_MAGIC, &[0, 28, 28], &[])).unwrap();
        assert_eq!((images.count, images.pixels.len()), (0, 0));
        assert!(parse_labels("lab", &idx(LABELS_MAGIC, &[0], &[]))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn wrong_magic_names_file_found_and_expected() {
        let bytes = idx(0x0000_0903, &[2, 2, 3], &[0; 12]);
        let msg = parse_images("weird-file", &bytes).unwrap_err().to_string();
        assert!(msg.contains("weird-file"), "{msg}");
        assert!(msg.contains("2307") && msg.contains("2051"), "{msg}");
        assert!(msg.contains("another element type"), "{msg}");
    }

    #[test]
    fn labels_given_as_images_are_called_labels() {
        let labels = idx(LABELS_MAGIC, &[2], &[1, 2]);
        let err = parse_images("swapped", &labels).unwrap_err();
        assert!(matches!(
            err,
            DataError::BadMagic {
                found: LABELS_MAGIC,
                expected: IMAGES_MAGIC,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(
            msg.contains("IDX labels") && msg.contains("swapped"),
            "{msg}"
        );
    }

    #[test]
    fn text_file_is_not_idx() {
        let msg = parse_labels("notes.txt", b"hello world\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("notes.txt") && msg.contains("not an IDX file"),
            "{msg}"
        );
    }

    #[test]
    fn short_header_is_truncated() {
        let bytes = idx(IMAGES_MAGIC, &[2], &[]);
        let err = parse_images("img", &bytes).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    expected: 16,
                    found: 8,
                    ..
                }
            ),
            "{err}"
        );
        let err = parse_images("img", &[0, 0]).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    expected: 16,
                    found: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_pixels_are_truncated() {
        let mut bytes = two_images();
        bytes.pop();
        let err = parse_images("img", &bytes).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    expected: 28,
                    found: 27,
                    ..
                }
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("img") && msg.contains("28") && msg.contains("27"),
            "{msg}"
        );
    }

    #[test]
    fn missing_labels_are_truncated() {
        let err = parse_labels("lab", &idx(LABELS_MAGIC, &[5], &[1, 2, 3])).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    expected: 13,
                    found: 11,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = two_images();
        bytes.extend([0; 3]);
        let err = parse_images("img", &bytes).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::TrailingBytes {
                    expected: 28,
                    found: 31,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("3 bytes"));
    }

    #[test]
    fn huge_declared_dimensions_are_truncation_not_overflow() {
        let bytes = idx(IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &[0; 4]);
        let err = parse_images("img", &bytes).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    expected: u64::MAX,
                    found: 20,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn zero_sized_images_are_rejected() {
        let err = parse_images("img", &idx(IMAGES_MAGIC, &[3, 0, 28], &[])).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::EmptyImage {
                    rows: 0,
                    cols: 28,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn labels_above_nine_are_kept() {
        let labels = parse_labels("lab", &idx(LABELS_MAGIC, &[4], &[3, 9, 46, 255])).unwrap();
        assert_eq!(labels, [3, 9, 46, 255]);
    }

    #[test]
    fn corrupt_gzip_names_the_file() {
        let mut bytes = gzip(&two_images());
        let middle = bytes.len() / 2;
        bytes[middle..].iter_mut().for_each(|b| *b ^= 0x5a);
        let err = parse_images("img.gz", &bytes).unwrap_err();
        assert!(matches!(err, DataError::Gzip { .. }), "{err}");
        assert!(err.to_string().contains("img.gz"));
    }

    #[test]
    fn cut_off_gzip_is_corrupt() {
        let bytes = gzip(&two_images());
        let err = parse_images("img.gz", &bytes[..bytes.len() - 6]).unwrap_err();
        assert!(matches!(err, DataError::Gzip { .. }), "{err}");
    }

    #[test]
    fn garbage_after_gzip_member_is_corrupt() {
        let mut bytes = gzip(&two_images());
        bytes.extend(b"garbage");
        let err = parse_images("img.gz", &bytes).unwrap_err();
        assert!(matches!(err, DataError::Gzip { .. }), "{err}");
    }
}
