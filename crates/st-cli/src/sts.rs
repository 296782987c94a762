//! STS Benchmark files and Spearman correlation.

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

/// Ranks starting at 1, ties sharing their average rank (as scipy's `rankdata`).
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let average = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = average;
        }
        i = j + 1;
    }
    ranks
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// Spearman rank correlation.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_share_the_average_rank() {
        assert_eq!(ranks(&[10.0, 20.0, 10.0, 30.0]), vec![1.5, 3.0, 1.5, 4.0]);
    }

    #[test]
    fn spearman_matches_known_values() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // scipy.stats.spearmanr([1,2,3,4,5],[5,6,7,8,7]) = 0.8207826816681233
        let r = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]);
        assert!((r - 0.8207826816681233).abs() < 1e-12, "{r}");
    }

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
