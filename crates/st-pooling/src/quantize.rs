//! Output precisions of embeddings, as sentence-transformers' `quantize_embeddings` computes them
//! (`sentence_transformers/util/quantization.py`, 6.2.0):
//!
//! - `int8` / `uint8`: per dimension, `[min, max]` (the [`Ranges`], from calibration embeddings
//!   or from the embeddings themselves) is cut into 255 steps; a value becomes
//!   `clip(floor((x - min) / step), 0, 255)` (minus 128 for `int8`). All arithmetic in f32, as
//!   numpy does it on float32 arrays, so the codes are bit-identical for identical inputs.
//! - `binary` / `ubinary`: `x > 0` bits packed 8 to a byte, most significant bit first, the last
//!   byte zero-padded (`numpy.packbits`); `binary` is the packed byte minus 128, as `int8`.

/// The precision of output embeddings (`precision=` of `SentenceTransformer.encode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    Float32,
    Int8,
    Uint8,
    Binary,
    Ubinary,
}

impl Precision {
    pub const ALL: [Precision; 5] = [
        Precision::Float32,
        Precision::Int8,
        Precision::Uint8,
        Precision::Binary,
        Precision::Ubinary,
    ];

    /// The name sentence-transformers uses.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Float32 => "float32",
            Precision::Int8 => "int8",
            Precision::Uint8 => "uint8",
            Precision::Binary => "binary",
            Precision::Ubinary => "ubinary",
        }
    }

    /// Whether the precision needs [`Ranges`] (the scalar quantizations).
    pub fn needs_ranges(self) -> bool {
        matches!(self, Precision::Int8 | Precision::Uint8)
    }

    /// Whether rows are packed bits.
    pub fn is_binary(self) -> bool {
        matches!(self, Precision::Binary | Precision::Ubinary)
    }

    /// Values per row for `dim`-wide float embeddings (bits are packed 8 to a byte).
    pub fn width(self, dim: usize) -> usize {
        if self.is_binary() {
            dim.div_ceil(8)
        } else {
            dim
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown precision `{s}`; expected one of: {}",
                    Precision::ALL.map(|p| p.name()).join(", ")
                )
            })
    }
}

/// Per-dimension minimum and maximum that `int8` / `uint8` quantization maps onto 0..=255.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranges {
    pub min: Vec<f32>,
    pub max: Vec<f32>,
}

impl Ranges {
    /// Column minima and maxima of `rows` (all of one width); `None` when there are no rows.
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = &'a [f32]>) -> Option<Self> {
        let mut rows = rows.into_iter();
        let first = rows.next()?;
        let mut ranges = Ranges {
            min: first.to_vec(),
            max: first.to_vec(),
        };
        for row in rows {
            ranges.add(row);
        }
        Some(ranges)
    }

    /// Widens the ranges to include `row`.
    pub fn add(&mut self, row: &[f32]) {
        for ((lo, hi), &x) in self.min.iter_mut().zip(&mut self.max).zip(row) {
            *lo = lo.min(x);
            *hi = hi.max(x);
        }
    }

    /// Embedding width the ranges cover.
    pub fn dim(&self) -> usize {
        self.min.len()
    }

    /// Bucket index 0..=255 of every value of `row`.
    fn buckets<'a>(&'a self, row: &'a [f32]) -> impl Iterator<Item = f32> + 'a {
        row.iter()
            .zip(self.min.iter().zip(&self.max))
            .map(|(&x, (&start, &end))| {
                let step = (end - start) / 255.0;
                let step = if step == 0.0 { 1.0 } else { step };
                ((x - start) / step).floor().clamp(0.0, 255.0)
            })
    }
}

/// One embedding in an output precision; serializes as a plain array of numbers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum QuantizedRow {
    /// `float32`.
    F32(Vec<f32>),
    /// `int8` and `binary`.
    I8(Vec<i8>),
    /// `uint8` and `ubinary`.
    U8(Vec<u8>),
}

impl QuantizedRow {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            QuantizedRow::F32(v) => v.len(),
            QuantizedRow::I8(v) => v.len(),
            QuantizedRow::U8(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f32 (exact for every precision), for scoring.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            QuantizedRow::F32(v) => v.clone(),
            QuantizedRow::I8(v) => v.iter().map(|&x| x as f32).collect(),
            QuantizedRow::U8(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
}

/// `numpy.packbits(row > 0)`: 8 signs a byte, the first value in the most significant bit.
pub fn pack_bits(row: &[f32]) -> Vec<u8> {
    row.chunks(8)
        .map(|chunk| {
            chunk
                .iter()
                .enumerate()
                .filter(|(_, x)| **x > 0.0)
                .fold(0u8, |byte, (i, _)| byte | (0x80 >> i))
        })
        .collect()
}

/// Quantizes one embedding. `ranges` must be `Some` (and as wide as `row`) for `int8` and
/// `uint8`; the other precisions ignore it.
///
/// # Panics
/// When `int8` / `uint8` get no ranges: callers compute or load them first.
pub fn quantize(row: &[f32], precision: Precision, ranges: Option<&Ranges>) -> QuantizedRow {
    match precision {
        Precision::Float32 => QuantizedRow::F32(row.to_vec()),
        Precision::Uint8 => {
            let ranges = ranges.expect("uint8 quantization needs ranges");
            QuantizedRow::U8(ranges.buckets(row).map(|q| q as u8).collect())
        }
        Precision::Int8 => {
            let ranges = ranges.expect("int8 quantization needs ranges");
            QuantizedRow::I8(ranges.buckets(row).map(|q| (q - 128.0) as i8).collect())
        }
        Precision::Ubinary => QuantizedRow::U8(pack_bits(row)),
        Precision::Binary => QuantizedRow::I8(
            pack_bits(row)
                .into_iter()
                .map(|b| (b as i16 - 128) as i8)
                .collect(),
        ),
    }
}

/// Number of differing bits between two packed rows (`ubinary` bytes; a `binary` byte is the
/// `ubinary` one with its top bit flipped).
pub fn hamming(a: &[u8], b: &[u8]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packbits_is_msb_first_and_pads_the_last_byte() {
        let row = [1.0, -1.0, 0.0, 2.0, 0.5, -0.1, 0.0, 3.0, 1.0, 1.0];
        // 1001 1001 | 11(000000)
        assert_eq!(pack_bits(&row), vec![0b1001_1001, 0b1100_0000]);
        assert_eq!(
            quantize(&row, Precision::Binary, None),
            QuantizedRow::I8(vec![25, 64]) // 153 − 128, 192 − 128
        );
    }

    #[test]
    fn scalar_quantization_spans_the_ranges_and_clips_outside() {
        let ranges = Ranges::from_rows([&[0.0f32, 1.0][..], &[510.0, 1.0][..]]).unwrap();
        // Column 0: step 2; column 1 is constant, so its step is 1.
        let q = quantize(&[201.0, 1.0], Precision::Uint8, Some(&ranges));
        assert_eq!(q, QuantizedRow::U8(vec![100, 0]));
        let q = quantize(&[-5.0, 7.5], Precision::Int8, Some(&ranges));
        assert_eq!(q, QuantizedRow::I8(vec![-128, -122])); // buckets 0 and 6, minus 128
        let q = quantize(&[999.0, 0.0], Precision::Uint8, Some(&ranges));
        assert_eq!(q, QuantizedRow::U8(vec![255, 0]));
    }

    #[test]
    fn names_parse_and_widths_count_packed_bytes() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        assert!("bf16".parse::<Precision>().unwrap_err().contains("ubinary"));
        assert_eq!(Precision::Binary.width(384), 48);
        assert_eq!(Precision::Ubinary.width(10), 2);
        assert_eq!(Precision::Int8.width(10), 10);
    }

    #[test]
    fn hamming_counts_differing_bits() {
        assert_eq!(hamming(&[0b1010_0000, 0xff], &[0b0110_0000, 0x0f]), 6);
    }
}
