//! STS Benchmark files.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// One scored sentence pair.
#[derive(Debug, Clone, PartialEq)]
pub struct StsPair {
    pub score: f64,
    pub sentence1: String,
    pub sentence2: String,
}

/// Reads an STS Benchmark file: tab-separated, no quoting, fields genre, file, year, id, score,
/// sentence1, sentence2 (some rows carry extra source columns after these; they are ignored).
pub fn read_sts(path: &Path) -> Result<Vec<StsPair>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{}: invalid UTF-8: {e}", path.display()))?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() < 7 {
            bail!(
                "{}: expected at least 7 tab-separated fields (genre, file, year, id, score, \
                 sentence1, sentence2), found {}",
                at(),
                fields.len()
            );
        }
        let score: f64 = fields[4].trim().parse().with_context(|| {
            format!("{}: field 5 (score) is not a number: {:?}", at(), fields[4])
        })?;
        pairs.push(StsPair {
            score,
            sentence1: fields[5].to_string(),
            sentence2: fields[6].to_string(),
        });
    }
    if pairs.is_empty() {
        bail!("{}: no sentence pairs", path.display());
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_rows_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sts.csv");
        std::fs::write(
            &path,
            "g\tf\t2012\t1\t5.0\ta\tb\ng\tf\t2012\t2\tfive\ta\tb\n",
        )
        .unwrap();
        let err = format!("{:#}", read_sts(&path).unwrap_err());
        assert!(err.contains("sts.csv:2") && err.contains("score"), "{err}");
        std::fs::write(&path, "only\tthree\tfields\n").unwrap();
        let err = format!("{:#}", read_sts(&path).unwrap_err());
        assert!(
            err.contains("sts.csv:1") && err.contains("7 tab-separated"),
            "{err}"
        );
    }

    #[test]
    fn extra_columns_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sts.csv");
        std::fs::write(&path, "g\tf\t2012\t1\t3.5\tone\ttwo\tcredit\textra\n").unwrap();
        let pairs = read_sts(&path).unwrap();
        assert_eq!(pairs[0].score, 3.5);
        assert_eq!(pairs[0].sentence2, "two");
    }
}
