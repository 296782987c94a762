//! Embeddings saved by `st encode`, read back: the corpus of `st search` and the
//! `--calibration` file of int8 / uint8 quantization.

use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, Result, bail};
use st_pooling::{QuantizedRow, Ranges};

use crate::npy;

/// A matrix of saved embeddings, with their texts when the file has them.
pub struct Saved {
    pub rows: Vec<QuantizedRow>,
    /// One per row (JSONL with a "text" on every line); `None` for `.npy`.
    pub texts: Option<Vec<String>>,
    /// Values per row.
    pub cols: usize,
}

/// Reads a `.npy` matrix or a `.jsonl` of `{"text": ..., "embedding": [...]}` lines. JSONL
/// integers (no decimal point, as `st encode --precision int8/uint8/binary/ubinary` writes them)
/// are codes: int8 when one is negative, else uint8; any decimal number makes the file float32.
pub fn read(path: &Path) -> Result<Saved> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => {
            let m = npy::read(path)?;
            Ok(Saved {
                rows: m.rows,
                texts: None,
                cols: m.cols,
            })
        }
        Some("jsonl") => read_jsonl(path),
        _ => bail!(
            "{}: unknown extension; embeddings are read from .npy or .jsonl files",
            path.display()
        ),
    }
}

/// One JSONL line: its numbers as written, and whether each was an integer.
struct Line {
    text: Option<String>,
    values: Vec<(f64, bool)>,
}

fn read_jsonl(path: &Path) -> Result<Saved> {
    let name = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("reading {name}"))?;
    let mut lines = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {name}"))?;
        if !line.trim().is_empty() {
            let parsed = parse_line(&line).with_context(|| format!("{name}:{}", i + 1))?;
            if let Some(first) = lines.first().map(|l: &(usize, Line)| l.1.values.len())
                && parsed.values.len() != first
            {
                bail!(
                    "{name}:{}: embedding has {} values, the first line {first}",
                    i + 1,
                    parsed.values.len()
                );
            }
            lines.push((i + 1, parsed));
        }
    }
    let cols = lines.first().map_or(0, |l| l.1.values.len());
    let integers = lines.iter().all(|(_, l)| l.values.iter().all(|v| v.1));
    let signed = lines
        .iter()
        .any(|(_, l)| l.values.iter().any(|v| v.0 < 0.0));
    let mut rows = Vec::with_capacity(lines.len());
    for (line_no, l) in &lines {
        rows.push(
            to_row(&l.values, integers, signed).with_context(|| format!("{name}:{line_no}"))?,
        );
    }
    let texts = lines
        .iter()
        .map(|(_, l)| l.text.clone())
        .collect::<Option<Vec<_>>>();
    Ok(Saved { rows, texts, cols })
}

fn parse_line(line: &str) -> Result<Line> {
    let value: serde_json::Value = serde_json::from_str(line).context("invalid JSON")?;
    let Some(embedding) = value.get("embedding") else {
        bail!("missing field `embedding` (expected {{\"text\": ..., \"embedding\": [...]}})");
    };
    let Some(array) = embedding.as_array() else {
        bail!("field `embedding` must be an array of numbers");
    };
    let values = array
        .iter()
        .map(|v| match v {
            serde_json::Value::Number(n) => Ok((n.as_f64().unwrap_or(f64::NAN), !n.is_f64())),
            _ => bail!("field `embedding` must hold only numbers"),
        })
        .collect::<Result<Vec<_>>>()?;
    let text = match value.get("text") {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => bail!("field `text` must be a string"),
    };
    Ok(Line { text, values })
}

fn to_row(values: &[(f64, bool)], integers: bool, signed: bool) -> Result<QuantizedRow> {
    let range = if signed { -128.0..=127.0 } else { 0.0..=255.0 };
    if !integers {
        return Ok(QuantizedRow::F32(
            values.iter().map(|v| v.0 as f32).collect(),
        ));
    }
    if let Some(v) = values.iter().find(|v| !range.contains(&v.0)) {
        bail!(
            "integer embedding value {} is outside {}: integer embeddings are int8 or uint8 codes",
            v.0,
            if signed { "-128..=127" } else { "0..=255" }
        );
    }
    Ok(if signed {
        QuantizedRow::I8(values.iter().map(|v| v.0 as i8).collect())
    } else {
        QuantizedRow::U8(values.iter().map(|v| v.0 as u8).collect())
    })
}

/// The int8 / uint8 ranges of `--calibration FILE`: its float embeddings' per-dimension
/// minimum and maximum. They must be `dim` wide (the output width).
pub fn read_calibration(path: &Path, dim: usize) -> Result<Ranges> {
    let name = path.display();
    let saved = read(path).context("reading the --calibration embeddings")?;
    if saved.rows.is_empty() {
        bail!("{name}: no embeddings to calibrate int8 / uint8 ranges with");
    }
    if saved.cols != dim {
        bail!(
            "{name}: calibration embeddings are {} wide, the output embeddings {dim} \
             (give embeddings of the same model, truncated alike)",
            saved.cols
        );
    }
    let mut floats = Vec::with_capacity(saved.rows.len());
    for row in &saved.rows {
        let QuantizedRow::F32(v) = row else {
            bail!("{name}: calibration embeddings must be float32 (st encode's default precision)");
        };
        floats.push(v.as_slice());
    }
    Ok(Ranges::from_rows(floats).expect("not empty"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_codes_and_floats_are_told_apart_by_their_notation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        std::fs::write(
            &path,
            "{\"text\":\"a\",\"embedding\":[1,-2]}\n\n{\"text\":\"b\",\"embedding\":[3,4]}\n",
        )
        .unwrap();
        let saved = read(&path).unwrap();
        assert_eq!(
            saved.rows,
            vec![QuantizedRow::I8(vec![1, -2]), QuantizedRow::I8(vec![3, 4])]
        );
        assert_eq!(saved.texts.unwrap(), vec!["a", "b"]);
        std::fs::write(&path, "{\"embedding\":[1.0,200]}\n").unwrap();
        let saved = read(&path).unwrap();
        assert_eq!(saved.rows, vec![QuantizedRow::F32(vec![1.0, 200.0])]);
        assert!(saved.texts.is_none());
    }

    #[test]
    fn bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        std::fs::write(&path, "{\"embedding\":[1.0,2.0]}\n{\"embedding\":[1.0]}\n").unwrap();
        let err = format!("{:#}", read(&path).err().unwrap());
        assert!(
            err.contains("c.jsonl:2") && err.contains("1 values"),
            "{err}"
        );
        std::fs::write(&path, "{\"text\":\"x\"}\n").unwrap();
        let err = format!("{:#}", read(&path).err().unwrap());
        assert!(
            err.contains("c.jsonl:1") && err.contains("`embedding`"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            read_calibration(&path.with_extension("csv"), 2)
                .err()
                .unwrap()
        );
        assert!(err.contains("unknown extension"), "{err}");
    }
}
