//! numpy's `.npz` archives (`np.savez` and `np.savez_compressed`): a zip file of `.npy` arrays,
//! each entry `NAME.npy`. Read wherever a safetensors weights file is, so that the weights of the
//! book's nets (saved from numpy as W1, b1, …) load as they are.
//!
//! The `.npy` header is a Python dict literal (`{'descr': '<f8', 'fortran_order': False,
//! 'shape': (30, 1, 5, 5), }`); numpy's format 1.0–3.0 is read here (a few dozen lines), so the
//! only dependency is `zip` for the archive.

use std::io::{Cursor, Read};

/// A float dtype numpy writes, as stored (byte order aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyDtype {
    F16,
    F32,
    F64,
}

impl NpyDtype {
    pub fn size(self) -> usize {
        match self {
            NpyDtype::F16 => 2,
            NpyDtype::F32 => 4,
            NpyDtype::F64 => 8,
        }
    }
}

/// One array of an archive: its name (the entry's, without `.npy`), shape, and data in
/// little-endian, row-major (C) order whatever the file's byte order and layout.
#[derive(Clone, Debug)]
pub struct NpyArray {
    pub name: String,
    pub shape: Vec<usize>,
    /// A float dtype, or the `descr` numpy wrote when it is not one (an int or object array):
    /// such an array is only an error when a net asks for it by name.
    pub dtype: Result<NpyDtype, String>,
    pub data: Vec<u8>,
}

/// `PK\x03\x04` (a zip with entries) or `PK\x05\x06` (an empty one).
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

/// Every array of an `.npz` archive. Errors say what is wrong with which entry.
pub fn read(bytes: &[u8]) -> Result<Vec<NpyArray>, String> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| format!("not a readable zip archive ({e})"))?;
    let mut arrays = Vec::with_capacity(archive.len().min(1024));
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| format!("entry {i} of the archive cannot be read ({e})"))?;
        let entry_name = (entry.name())
            .map_err(|e| format!("entry {i} has no readable name ({e})"))?
            .to_string();
        let Some(name) = entry_name.strip_suffix(".npy") else {
            return Err(format!(
                "entry {entry_name} is not a .npy array; an .npz holds NAME.npy entries as \
                 numpy's savez writes them"
            ));
        };
        let name = name.to_string();
        let array = read_npy(&mut entry, &name).map_err(|e| format!("array {name}: {e}"))?;
        arrays.push(array);
    }
    Ok(arrays)
}

/// A `.npy` stream: magic, version, header, then the data.
fn read_npy(input: &mut impl Read, name: &str) -> Result<NpyArray, String> {
    let mut magic = [0u8; 8];
    input
        .read_exact(&mut magic)
        .map_err(|e| format!("truncated .npy header ({e})"))?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (no \\x93NUMPY magic)".into());
    }
    let header_len = match magic[6] {
        1 => {
            let mut len = [0u8; 2];
            input.read_exact(&mut len).map_err(|e| e.to_string())?;
            u16::from_le_bytes(len) as usize
        }
        2 | 3 => {
            let mut len = [0u8; 4];
            input.read_exact(&mut len).map_err(|e| e.to_string())?;
            u32::from_le_bytes(len) as usize
        }
        v => {
            return Err(format!(
                ".npy format version {v} is not one numpy writes (1, 2, 3)"
            ))
        }
    };
    if header_len > 1 << 16 {
        return Err(format!(".npy header of {header_len} bytes is not numpy's"));
    }
    let mut header = vec![0u8; header_len];
    input
        .read_exact(&mut header)
        .map_err(|e| format!("truncated .npy header ({e})"))?;
    let header = String::from_utf8_lossy(&header);
    let descr = dict_value(&header, "descr")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"').to_string();
    let fortran = match dict_value(&header, "fortran_order")?.as_str() {
        "True" => true,
        "False" => false,
        other => return Err(format!("fortran_order is {other}, not True or False")),
    };
    let shape = parse_shape(&dict_value(&header, "shape")?)?;
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= 1 << 34)
        .ok_or_else(|| format!("shape {shape:?} is too large for weights"))?;
    let (dtype, big_endian) = parse_descr(&descr);
    let Ok(float) = dtype else {
        return Ok(NpyArray {
            name: name.to_string(),
            shape,
            dtype: Err(descr),
            data: Vec::new(),
        });
    };
    let size = float.size();
    let want = numel * size;
    // Read what the header promises and no more; the buffer grows with the data actually there,
    // so a lying header cannot size an allocation.
    let mut data = Vec::new();
    input
        .take(want as u64)
        .read_to_end(&mut data)
        .map_err(|e| format!("data cannot be read ({e})"))?;
    if data.len() != want {
        return Err(format!(
            "truncated: shape {shape:?} of {descr} needs {want} bytes, the entry holds {}",
            data.len()
        ));
    }
    if big_endian {
        data.chunks_exact_mut(size).for_each(|c| c.reverse());
    }
    if fortran && shape.len() > 1 {
        data = fortran_to_c(&data, &shape, size);
    }
    Ok(NpyArray {
        name: name.to_string(),
        shape,
        dtype: Ok(float),
        data,
    })
}

/// The text after `'key':` in the header dict, up to the next top-level comma.
fn dict_value(header: &str, key: &str) -> Result<String, String> {
    let at = [format!("'{key}':"), format!("\"{key}\":")]
        .iter()
        .find_map(|k| header.find(k.as_str()).map(|i| i + k.len()))
        .ok_or_else(|| format!("the .npy header has no '{key}': {header}"))?;
    let rest = header[at..].trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')').map(|i| i + 1)
    } else {
        rest.find([',', '}'])
    }
    .ok_or_else(|| format!("the .npy header's '{key}' is cut short: {header}"))?;
    Ok(rest[..end].trim().to_string())
}

/// `(30, 1, 5, 5)`, `(10,)` or `()`.
fn parse_shape(text: &str) -> Result<Vec<usize>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("shape {text} is not a tuple"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("shape {text} has a dimension that is not a count"))
        })
        .collect()
}

/// `<f8`, `>f4`, `=f2`, `|f8`…: the float dtype and whether it is big-endian.
fn parse_descr(descr: &str) -> (Result<NpyDtype, ()>, bool) {
    let (order, kind) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '=' | '|')) => (c, &descr[1..]),
        _ => ('=', descr),
    };
    let big = order == '>' || (order == '=' && cfg!(target_endian = "big"));
    let dtype = match kind {
        "f2" | "e" => Ok(NpyDtype::F16),
        "f4" | "f" => Ok(NpyDtype::F32),
        "f8" | "d" => Ok(NpyDtype::F64),
        _ => Err(()),
    };
    (dtype, big)
}

/// Column-major data (numpy's `fortran_order`, e.g. a saved `W.T`) in row-major order.
fn fortran_to_c(data: &[u8], shape: &[usize], size: usize) -> Vec<u8> {
    let numel: usize = shape.iter().product();
    let mut out = vec![0u8; data.len()];
    let mut index = vec![0usize; shape.len()];
    for c in 0..numel {
        // Fortran offset of the C-order multi-index.
        let mut f = 0;
        let mut stride = 1;
        for (i, d) in index.iter().zip(shape) {
            f += i * stride;
            stride *= d;
        }
        out[c * size..(c + 1) * size].copy_from_slice(&data[f * size..(f + 1) * size]);
        for k in (0..shape.len()).rev() {
            index[k] += 1;
            if index[k] < shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn reads_c_fortran_and_big_endian_arrays() {
        let values: Vec<u8> = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let c = read_npy(&mut &npy("<f8", false, "(2, 3)", &values)[..], "c").unwrap();
        assert_eq!((c.shape.clone(), c.dtype), (vec![2, 3], Ok(NpyDtype::F64)));
        assert_eq!(c.data, values);
        // The same bytes column-major: element [0, 1] is the third value.
        let f = read_npy(&mut &npy("<f8", true, "(2, 3)", &values)[..], "f").unwrap();
        let second = f64::from_le_bytes(f.data[8..16].try_into().unwrap());
        assert_eq!(second, 3.0);
        let be: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let b = read_npy(&mut &npy(">f4", false, "(2,)", &be)[..], "b").unwrap();
        assert_eq!(
            f32::from_le_bytes(b.data[4..8].try_into().unwrap()),
            -2.0,
            "big-endian data is swapped"
        );
    }

    #[test]
    fn truncated_or_foreign_arrays_are_named() {
        let err = read_npy(&mut &npy("<f8", false, "(4,)", &[0; 16])[..], "w").unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        let ints = read_npy(&mut &npy("<i8", false, "(2,)", &[0; 16])[..], "i").unwrap();
        assert_eq!(ints.dtype, Err("<i8".to_string()));
        let err = read_npy(&mut &b"PK\x03\x04 not npy"[..], "x").unwrap_err();
        assert!(err.contains("magic"), "{err}");
    }
}
