//! Where and how `st encode` writes embeddings: JSONL or `.npy` (chosen by `--output`'s
//! extension), to standard output or to a file that appears whole when done.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use st_pooling::{Precision, QuantizedRow};

use crate::npy;

/// Output formats, by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One `{"text": ..., "embedding": [...]}` per line.
    Jsonl,
    /// One numpy matrix, rows in input order.
    Npy,
}

impl Format {
    /// The format `--output PATH` asks for: `.jsonl` or `.npy`; a path without an extension
    /// (standard output, `/dev/null`, a FIFO) gets JSONL; any other extension is refused.
    pub fn of(output: Option<&Path>) -> Result<Format> {
        let Some(ext) = output.and_then(Path::extension) else {
            return Ok(Format::Jsonl);
        };
        match ext.to_str() {
            Some("jsonl") => Ok(Format::Jsonl),
            Some("npy") => Ok(Format::Npy),
            _ => bail!(
                "--output {}: unknown extension `.{}`; supported: .jsonl (one JSON object per \
                 line) and .npy (one numpy matrix)",
                output.expect("has an extension").display(),
                ext.to_string_lossy()
            ),
        }
    }
}

/// Standard output, or a file that appears whole when done.
pub enum Sink {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File(std::io::BufWriter<st_backbone::AtomicFile>),
}

impl Sink {
    pub fn open(output: Option<&Path>) -> Result<Self> {
        Ok(match output {
            Some(path) => Sink::File(std::io::BufWriter::new(st_backbone::AtomicFile::create(
                path,
            )?)),
            None => Sink::Stdout(std::io::BufWriter::new(std::io::stdout())),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File(w) => w,
        }
    }

    fn name(&self) -> String {
        match self {
            Sink::Stdout(_) => "standard output".into(),
            Sink::File(w) => w.get_ref().path().display().to_string(),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let name = self.name();
        self.writer()
            .write_all(bytes)
            .with_context(|| format!("writing {name}"))
    }

    fn finish(self) -> Result<()> {
        match self {
            Sink::Stdout(mut w) => w.flush().context("writing standard output"),
            Sink::File(w) => {
                let name = w.get_ref().path().display().to_string();
                let file = w
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .with_context(|| format!("writing {name}"))?;
                Ok(file.commit()?)
            }
        }
    }
}

/// Writes embeddings as they come, in input order.
pub struct EmbeddingWriter {
    sink: Sink,
    format: Format,
    /// Rows the `.npy` header announced; JSONL announces nothing.
    announced: Option<usize>,
    written: usize,
}

impl EmbeddingWriter {
    /// Opens the output. `.npy` writes its header now, so it needs the row count and the row
    /// width up front (`rows`, `width` values of `precision` per row).
    pub fn open(
        output: Option<&Path>,
        format: Format,
        precision: Precision,
        rows: Option<usize>,
        width: usize,
    ) -> Result<Self> {
        let mut sink = Sink::open(output)?;
        if format == Format::Npy {
            let rows = rows.expect(".npy output is opened with its row count");
            sink.write_all(&npy::header(npy::descr(precision), rows, width))?;
        }
        Ok(Self {
            sink,
            format,
            announced: rows,
            written: 0,
        })
    }

    /// Appends rows (and, in JSONL, their texts).
    pub fn write(&mut self, texts: &[&str], rows: &[QuantizedRow]) -> Result<()> {
        let mut bytes = Vec::new();
        for (text, embedding) in texts.iter().zip(rows) {
            bytes.clear();
            match self.format {
                Format::Jsonl => {
                    serde_json::to_writer(&mut bytes, &EncodedLine { text, embedding })?;
                    bytes.push(b'\n');
                }
                Format::Npy => npy::row_bytes(embedding, &mut bytes),
            }
            self.sink.write_all(&bytes)?;
            self.written += 1;
        }
        Ok(())
    }

    /// Completes the output: a file is renamed into place only now, and only when it holds
    /// as many rows as its header says.
    pub fn finish(self) -> Result<()> {
        if let Some(n) = self.announced.filter(|&n| n != self.written) {
            bail!(
                "the input changed while it was read: counted {n} texts, then encoded {}; \
                 nothing was written",
                self.written
            );
        }
        self.sink.finish()
    }
}

/// One output line of `st encode`: field order as written.
#[derive(serde::Serialize)]
struct EncodedLine<'a> {
    text: &'a str,
    embedding: &'a QuantizedRow,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_follows_the_extension_and_unknown_ones_are_listed() {
        assert_eq!(Format::of(None).unwrap(), Format::Jsonl);
        assert_eq!(
            Format::of(Some(Path::new("/dev/null"))).unwrap(),
            Format::Jsonl
        );
        assert_eq!(Format::of(Some(Path::new("a/b.npy"))).unwrap(), Format::Npy);
        assert_eq!(
            Format::of(Some(Path::new("b.jsonl"))).unwrap(),
            Format::Jsonl
        );
        let err = Format::of(Some(Path::new("out.csv")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("out.csv") && err.contains(".jsonl") && err.contains(".npy"),
            "{err}"
        );
    }
}
