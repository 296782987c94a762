//! Reading texts to encode: plain lines, or JSONL objects with a `text` field.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Reads texts from `path` (`-` is standard input). A `.jsonl` file holds one `{"text": ...}` per
/// line; anything else is one text per line. Errors name the file and line.
pub fn read_texts(path: &Path) -> Result<Vec<String>> {
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading standard input")?;
    } else {
        bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    }
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    parse_texts(&bytes, jsonl, &path.display().to_string())
}

/// Splits `bytes` into texts; `name` labels errors.
pub fn parse_texts(bytes: &[u8], jsonl: bool, name: &str) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body.is_empty() && !bytes.is_empty() {
        // A file holding one newline: one empty text.
        if !jsonl {
            texts.push(String::new());
        }
        return Ok(texts);
    }
    if bytes.is_empty() {
        return Ok(texts);
    }
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|e| {
            anyhow::anyhow!(
                "{name}:{line_no}: invalid UTF-8 at byte {} of the line",
                e.valid_up_to() + 1
            )
        })?;
        if !jsonl {
            texts.push(line.to_string());
            continue;
        }
        if line.trim().is_empty() {
            continue; // blank lines separate nothing in JSONL
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{name}:{line_no}: invalid JSON: {e}"))?;
        match value.get("text") {
            Some(serde_json::Value::String(s)) => texts.push(s.clone()),
            Some(_) => bail!("{name}:{line_no}: field `text` must be a string"),
            None => {
                bail!("{name}:{line_no}: missing field `text` (expected {{\"text\": \"...\"}})")
            }
        }
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_keep_empty_lines_but_not_the_final_newline() {
        let t = parse_texts(b"a\n\n  \nb\r\n", false, "f").unwrap();
        assert_eq!(t, vec!["a", "", "  ", "b"]);
    }

    #[test]
    fn jsonl_texts_may_hold_tabs_and_newlines() {
        let t = parse_texts(
            b"{\"text\": \"a\\tb\\nc\"}\n\n{\"text\": \"\"}\n",
            true,
            "f",
        )
        .unwrap();
        assert_eq!(t, vec!["a\tb\nc", ""]);
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let err = parse_texts(b"ok\nbad \xff here\n", false, "in.txt").unwrap_err();
        assert!(
            err.to_string().starts_with("in.txt:2: invalid UTF-8"),
            "{err}"
        );
    }

    #[test]
    fn bad_jsonl_names_the_line_and_field() {
        let err = parse_texts(b"{\"text\": \"a\"}\n{\"txt\": 1}\n", true, "in.jsonl").unwrap_err();
        assert!(
            err.to_string().contains("in.jsonl:2: missing field `text`"),
            "{err}"
        );
        let err = parse_texts(b"{nope\n", true, "in.jsonl").unwrap_err();
        assert!(
            err.to_string().contains("in.jsonl:1: invalid JSON"),
            "{err}"
        );
    }
}
