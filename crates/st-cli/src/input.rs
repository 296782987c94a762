//! Reading texts to encode: plain lines, or JSONL objects with a `text` field.

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Texts read one line at a time, so `st encode` holds a window of the input, not all of it.
/// A `.jsonl` source holds one `{"text": ...}` per line (blank lines skipped); anything else
/// is one text per line (empty lines are empty texts; a final newline ends the last line).
/// Errors name the source and line.
pub struct TextSource {
    reader: Box<dyn BufRead>,
    jsonl: bool,
    name: String,
    line_no: usize,
}

/// One text and the line it came from (1-based), for messages.
pub struct Line {
    pub line_no: usize,
    pub text: String,
}

impl TextSource {
    /// Opens `path` (`-` is standard input).
    pub fn open(path: &Path) -> Result<Self> {
        let reader: Box<dyn BufRead> = if path == Path::new("-") {
            Box::new(BufReader::new(std::io::stdin()))
        } else {
            let file =
                std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
            Box::new(BufReader::new(file))
        };
        let jsonl = path.extension().is_some_and(|e| e == "jsonl");
        Ok(Self::new(reader, jsonl, path.display().to_string()))
    }

    /// Reads `reader`; `name` labels errors.
    pub fn new(reader: Box<dyn BufRead>, jsonl: bool, name: String) -> Self {
        Self {
            reader,
            jsonl,
            name,
            line_no: 0,
        }
    }

    /// The next `n` texts (fewer at the end of the input; none once it is exhausted).
    pub fn next_window(&mut self, n: usize) -> Result<Vec<Line>> {
        let mut window = Vec::with_capacity(n.min(4096));
        let mut raw = Vec::new();
        while window.len() < n {
            raw.clear();
            let read = self
                .reader
                .read_until(b'\n', &mut raw)
                .with_context(|| format!("reading {}", self.name))?;
            if read == 0 {
                break;
            }
            self.line_no += 1;
            if let Some(text) = self.parse_line(&raw)? {
                window.push(Line {
                    line_no: self.line_no,
                    text,
                });
            }
        }
        Ok(window)
    }

    /// Reads an already open plain-text file (the spooled standard input).
    pub fn from_file(file: std::fs::File) -> Self {
        Self::new(
            Box::new(BufReader::new(file)),
            false,
            "standard input".into(),
        )
    }

    /// How many texts remain (reading them, and checking them as [`TextSource::next_window`]
    /// does, without keeping them).
    pub fn count(mut self) -> Result<usize> {
        let mut n = 0;
        loop {
            let window = self.next_window(4096)?;
            if window.is_empty() {
                return Ok(n);
            }
            n += window.len();
        }
    }

    /// Every remaining text.
    pub fn read_all(mut self) -> Result<Vec<String>> {
        let lines = self.next_window(usize::MAX)?;
        Ok(lines.into_iter().map(|l| l.text).collect())
    }

    fn parse_line(&self, raw: &[u8]) -> Result<Option<String>> {
        let (name, line_no) = (&self.name, self.line_no);
        let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|e| {
            anyhow::anyhow!(
                "{name}:{line_no}: invalid UTF-8 at byte {} of the line",
                e.valid_up_to() + 1
            )
        })?;
        if !self.jsonl {
            return Ok(Some(line.to_string()));
        }
        if line.trim().is_empty() {
            return Ok(None); // blank lines separate nothing in JSONL
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{name}:{line_no}: invalid JSON: {e}"))?;
        match value.get("text") {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => bail!("{name}:{line_no}: field `text` must be a string"),
            None => {
                bail!("{name}:{line_no}: missing field `text` (expected {{\"text\": \"...\"}})")
            }
        }
    }
}

/// Reads every text from `path` (`-` is standard input); see [`TextSource`].
pub fn read_texts(path: &Path) -> Result<Vec<String>> {
    TextSource::open(path)?.read_all()
}

/// Copies standard input into a temporary file that has no name (it is unlinked at once, so
/// nothing is left behind however st ends), positioned at its start: input read twice.
pub fn spool_stdin() -> Result<std::fs::File> {
    use std::io::{Seek, SeekFrom};
    let dir = std::env::temp_dir();
    let path = dir.join(format!(".st-stdin-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let _ = std::fs::remove_file(&path);
    std::io::copy(&mut std::io::stdin().lock(), &mut file).context("reading standard input")?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

/// Splits `bytes` into texts; `name` labels errors.
#[cfg(test)]
fn parse_texts(bytes: &[u8], jsonl: bool, name: &str) -> Result<Vec<String>> {
    let reader = Box::new(std::io::Cursor::new(bytes.to_vec()));
    TextSource::new(reader, jsonl, name.to_string()).read_all()
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
    fn windows_split_the_input_without_losing_or_repeating_a_line() {
        let reader = Box::new(std::io::Cursor::new(b"a\n\nb\nc\nd".to_vec()));
        let mut source = TextSource::new(reader, false, "f".into());
        let mut seen = Vec::new();
        loop {
            let window = source.next_window(2).unwrap();
            if window.is_empty() {
                break;
            }
            seen.extend(window.into_iter().map(|l| (l.line_no, l.text)));
        }
        let expected: Vec<(usize, String)> = [(1, "a"), (2, ""), (3, "b"), (4, "c"), (5, "d")]
            .into_iter()
            .map(|(n, t)| (n, t.to_string()))
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(parse_texts(b"", false, "f").unwrap(), Vec::<String>::new());
        assert_eq!(parse_texts(b"\n", false, "f").unwrap(), vec![""]);
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
