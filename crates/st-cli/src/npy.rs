//! NumPy `.npy` files (format version 1.0; 2.0 and 3.0 read too): the header `st encode` writes
//! before its rows, and matrices read back for `st search` and `--calibration`.
//!
//! Layout: `\x93NUMPY`, major, minor, header length (u16 little-endian in 1.0, u32 in 2.0/3.0),
//! then a Python dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (R, C), }`
//! padded with spaces and ending in `\n` so the data starts at a multiple of 64 bytes, as numpy
//! writes it; then the rows, C order.

use std::path::Path;

use anyhow::{Context, Result, bail};
use st_pooling::{Precision, QuantizedRow};

const MAGIC: &[u8] = b"\x93NUMPY";

/// numpy's `descr` for rows of `precision`: what `quantize_embeddings` returns (float32,
/// int8 for int8 and binary, uint8 for uint8 and ubinary).
pub fn descr(precision: Precision) -> &'static str {
    match precision {
        Precision::Float32 => "<f4",
        Precision::Int8 | Precision::Binary => "|i1",
        Precision::Uint8 | Precision::Ubinary => "|u1",
    }
}

/// The header of a C-order `rows × cols` matrix of `descr`, padded to 64 bytes as numpy does.
pub fn header(descr: &str, rows: usize, cols: usize) -> Vec<u8> {
    let dict =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // magic (6) + version (2) + length (2) + dict + padding + '\n' ≡ 0 (mod 64)
    let unpadded = MAGIC.len() + 4 + dict.len() + 1;
    let padding = unpadded.next_multiple_of(64) - unpadded;
    let len = (dict.len() + padding + 1) as u16;
    let mut out = Vec::with_capacity(unpadded + padding);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(out.len() + padding, b' ');
    out.push(b'\n');
    out
}

/// The bytes of one row as it lies in the file.
pub fn row_bytes(row: &QuantizedRow, out: &mut Vec<u8>) {
    match row {
        QuantizedRow::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        QuantizedRow::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        QuantizedRow::U8(v) => out.extend_from_slice(v),
    }
}

/// A 2-D matrix read from an `.npy` file.
pub struct Matrix {
    /// float32 (float64 files are read into f32), int8 or uint8 rows.
    pub rows: Vec<QuantizedRow>,
    pub cols: usize,
}

/// Reads a 2-D C-order matrix of float32, float64 (as f32), int8 or uint8.
pub fn read(path: &Path) -> Result<Matrix> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display();
    let (dict, data) = split_header(&bytes).with_context(|| format!("{name}: not a .npy file"))?;
    let field = |key: &str| {
        dict_field(dict, key).with_context(|| format!("{name}: header has no `{key}`: {dict}"))
    };
    let descr = field("descr")?.trim_matches(['\'', '"']).to_string();
    if field("fortran_order")? != "False" {
        bail!("{name}: Fortran-order arrays are not supported (save with numpy's default C order)");
    }
    let shape = field("shape")?;
    let dims: Vec<usize> = shape
        .trim_matches(['(', ')'])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .with_context(|| format!("{name}: bad shape {shape}"))
        })
        .collect::<Result<_>>()?;
    let [n, cols] = dims[..] else {
        bail!("{name}: expected a 2-D matrix (rows, dim), found shape {shape}");
    };
    let item = match descr.as_str() {
        "<f4" => 4,
        "<f8" => 8,
        "|i1" | "|u1" => 1,
        other => bail!(
            "{name}: dtype `{other}` is not supported; expected float32 (<f4), float64 (<f8), int8 (|i1) or uint8 (|u1)"
        ),
    };
    if data.len() != n * cols * item {
        bail!(
            "{name}: shape ({n}, {cols}) of {descr} needs {} data bytes, the file has {}",
            n * cols * item,
            data.len()
        );
    }
    let rows = if cols == 0 {
        vec![QuantizedRow::F32(Vec::new()); n]
    } else {
        data.chunks(cols * item)
            .map(|r| decode(&descr, r))
            .collect()
    };
    Ok(Matrix { rows, cols })
}

fn decode(descr: &str, row: &[u8]) -> QuantizedRow {
    match descr {
        "<f4" => QuantizedRow::F32(
            row.chunks(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect(),
        ),
        "<f8" => QuantizedRow::F32(
            row.chunks(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
        ),
        "|i1" => QuantizedRow::I8(row.iter().map(|&b| b as i8).collect()),
        _ => QuantizedRow::U8(row.to_vec()),
    }
}

/// The header dict and the data after it.
fn split_header(bytes: &[u8]) -> Result<(&str, &[u8])> {
    if bytes.len() < 10 || !bytes.starts_with(MAGIC) {
        bail!("it does not start with \\x93NUMPY");
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize,
            12,
        ),
        v => bail!("format version {v} is not supported"),
    };
    let end = start + len;
    if bytes.len() < end {
        bail!("the header is cut short");
    }
    let dict = std::str::from_utf8(&bytes[start..end]).context("the header is not text")?;
    Ok((dict.trim(), &bytes[end..]))
}

/// The value of `'key':` in a header dict: a quoted string, a tuple or a word.
fn dict_field<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let at = dict.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = dict[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = match rest.chars().next()? {
        '(' => rest.find(')')? + 1,
        q @ ('\'' | '"') => rest[1..].find(q)? + 2,
        _ => rest.find([',', '}'])?,
    };
    Some(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_numpys_byte_for_byte() {
        // np.save(f, np.zeros((3, 5), np.float32)) with numpy 2.4.
        let want =
            b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5), }";
        let got = header("<f4", 3, 5);
        assert_eq!(got.len(), 128);
        assert_eq!(&got[..want.len()], want);
        assert!(got[want.len()..127].iter().all(|&b| b == b' '));
        assert_eq!(got[127], b'\n');
    }

    #[test]
    fn written_matrices_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.npy");
        let rows = [
            QuantizedRow::I8(vec![-128, 0, 127]),
            QuantizedRow::I8(vec![1, 2, 3]),
        ];
        let mut bytes = header("|i1", 2, 3);
        rows.iter().for_each(|r| row_bytes(r, &mut bytes));
        std::fs::write(&path, bytes).unwrap();
        let m = read(&path).unwrap();
        assert_eq!(m.cols, 3);
        assert_eq!(m.rows, rows);
    }

    #[test]
    fn truncated_data_and_bad_headers_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.npy");
        let mut bytes = header("<f4", 2, 3);
        bytes.extend_from_slice(&[0; 20]);
        std::fs::write(&path, &bytes).unwrap();
        let err = format!("{:#}", read(&path).err().unwrap());
        assert!(
            err.contains("bad.npy") && err.contains("24 data bytes"),
            "{err}"
        );
        std::fs::write(&path, b"{\"text\": 1}").unwrap();
        let err = format!("{:#}", read(&path).err().unwrap());
        assert!(err.contains("bad.npy: not a .npy file"), "{err}");
    }
}
