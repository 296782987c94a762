//! `st encode`: texts → embeddings, streamed a window at a time, in the output precision and
//! format asked for.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use indicatif::ProgressBar;
use st_backbone::EncoderBackend;
use st_pooling::{EncodeOutput, Precision, QuantizedRow, Ranges, SentenceEncoder};

use crate::output::{EmbeddingWriter, Format};
use crate::{ModelArgs, Truncations, embed_window, input, load, progress_bar};

#[derive(Args)]
pub struct EncodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Texts to encode.
    pub texts: Vec<String>,
    /// Read texts from FILE ('-' for standard input).
    #[arg(long, short, value_name = "FILE", conflicts_with = "texts")]
    pub input: Option<PathBuf>,
    /// Write to FILE instead of standard output, atomically. The extension picks the format:
    /// .jsonl (one {"text", "embedding"} per line, as on standard output) or .npy (one numpy
    /// matrix, rows in input order; dtype float32, int8 or uint8 as --precision gives). A path
    /// without an extension (/dev/null, a FIFO) gets JSONL.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Precision of the output embeddings, as sentence-transformers' `precision=`:
    /// float32; int8 / uint8 (each dimension's [min, max] cut into 256 buckets; the ranges come
    /// from --calibration, else from all the embeddings of this run, which are then held in
    /// memory); binary / ubinary (one sign bit per dimension, packed 8 to a byte as
    /// numpy.packbits; binary is each byte − 128, as int8). Not the model's compute type:
    /// that is --dtype.
    #[arg(long, default_value = "float32", value_name = "PRECISION", value_parser = parse_precision)]
    pub precision: Precision,
    /// Embeddings whose per-dimension minimum and maximum set the int8 / uint8 ranges
    /// (sentence-transformers' calibration_embeddings): a .npy float matrix, or a .jsonl with
    /// an "embedding" array per line (as `st encode` writes). Their width must be the output
    /// width (after --truncate-dim).
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// Print load and encode times as one JSON line on stderr (used by `cargo xtask bench`).
    #[arg(long)]
    pub timing: bool,
}

/// `--precision`: sentence-transformers' output precisions. The old meaning of the flag (the
/// model's compute type, now `--dtype`) is refused with the way out.
fn parse_precision(s: &str) -> Result<Precision, String> {
    match s {
        "bf16" | "bfloat16" | "f16" | "fp16" | "float16" => {
            let dtype = if s.starts_with('b') { "bf16" } else { "f16" };
            Err(format!(
                "--precision sets the output embeddings' precision (float32, int8, uint8, \
                 binary, ubinary), as in sentence-transformers; for the model's compute type \
                 use --dtype {dtype}"
            ))
        }
        "fp32" => Ok(Precision::Float32),
        _ => s.parse(),
    }
}

/// Texts `st encode` sorts by length and encodes together: enough for batches of similar
/// length to form, few enough that memory stays flat however long the input is.
const ENCODE_WINDOW: usize = 4096;

/// What `--timing` reports, summed over windows.
#[derive(Default)]
struct EncodeTotals {
    /// Encoding alone: reading input and writing output are left out, as in Python's timing.
    seconds: f64,
    sentences: usize,
    tokens: usize,
    padded_tokens: usize,
    flops: f64,
}

impl EncodeTotals {
    fn add<B: EncoderBackend>(&mut self, out: &EncodeOutput, encoder: &SentenceEncoder<B>) {
        self.sentences += out.tokens.len();
        self.tokens += out.tokens.iter().sum::<usize>();
        self.padded_tokens += out.padded_tokens;
        self.flops += out
            .tokens
            .iter()
            .map(|&n| encoder.bert_config.forward_flops(n))
            .sum::<f64>();
    }

    fn report(&self, loaded: std::time::Duration, weight_bytes: usize) {
        eprintln!(
            "{}",
            serde_json::json!({
                "load_s": loaded.as_secs_f64(),
                "weight_bytes": weight_bytes,
                "encode_s": self.seconds,
                "sentences": self.sentences,
                "tokens": self.tokens,
                "padded_tokens": self.padded_tokens,
                "flops": self.flops,
                "gflop_per_s": self.flops / self.seconds / 1e9,
            })
        );
    }
}

pub fn encode<B: EncoderBackend>(args: EncodeArgs, device: &B::Device) -> Result<()> {
    let format = Format::of(args.output.as_deref())?;
    if args.calibration.is_some() && !args.precision.needs_ranges() {
        bail!("--calibration sets int8 / uint8 ranges: use it with --precision int8 or uint8");
    }
    let (mut source, rows) = open_source(&args, format)?;
    let started = std::time::Instant::now();
    let encoder = load::<B>(&args.model, device)?;
    let loaded = started.elapsed();
    let dim = encoder.output_dim();
    let mut quantizer = Quantizer::new(args.precision, args.calibration.as_deref(), dim)?;
    let width = args.precision.width(dim);
    let mut writer =
        EmbeddingWriter::open(args.output.as_deref(), format, args.precision, rows, width)?;
    let bar = if args.input.is_some() || args.texts.len() > args.model.batch_size {
        progress_bar(None)
    } else {
        ProgressBar::hidden()
    };
    let (mut totals, mut truncations) = (EncodeTotals::default(), Truncations::default());
    loop {
        let window = source.next_window(ENCODE_WINDOW)?;
        if window.is_empty() {
            break;
        }
        let label = |i: usize| match &args.input {
            Some(path) => format!("{}:{}", path.display(), window[i].line_no),
            None => format!("argument {}", window[i].line_no),
        };
        let texts: Vec<&str> = window.iter().map(|l| l.text.as_str()).collect();
        let window_started = std::time::Instant::now();
        let out = embed_window(&encoder, &texts, &args.model, &bar, label)?;
        totals.seconds += window_started.elapsed().as_secs_f64();
        truncations.add(&out, label);
        totals.add(&out, &encoder);
        quantizer.push(&texts, out.embeddings, &mut writer)?;
    }
    bar.finish_and_clear();
    quantizer.finish(&mut writer)?;
    writer.finish()?;
    truncations.warn(encoder.max_seq_length());
    if args.timing {
        totals.report(loaded, encoder.bert.weight_bytes());
    }
    Ok(())
}

/// Turns float embeddings into the output precision and hands them to the writer. int8 /
/// uint8 without calibration need every embedding's range first, so those are held back to the
/// end, as sentence-transformers quantizes the whole `encode` output at once.
struct Quantizer {
    precision: Precision,
    ranges: Option<Ranges>,
    held: Option<(Vec<String>, Vec<Vec<f32>>)>,
}

impl Quantizer {
    fn new(precision: Precision, calibration: Option<&Path>, dim: usize) -> Result<Self> {
        let ranges = match calibration {
            Some(path) => Some(crate::embeddings::read_calibration(path, dim)?),
            None => None,
        };
        let hold = precision.needs_ranges() && ranges.is_none();
        Ok(Self {
            precision,
            ranges,
            held: hold.then(Default::default),
        })
    }

    fn push(
        &mut self,
        texts: &[&str],
        embeddings: Vec<Vec<f32>>,
        writer: &mut EmbeddingWriter,
    ) -> Result<()> {
        if let Some((held_texts, held)) = &mut self.held {
            held_texts.extend(texts.iter().map(|t| t.to_string()));
            held.extend(embeddings);
            return Ok(());
        }
        let rows: Vec<QuantizedRow> = embeddings
            .iter()
            .map(|e| st_pooling::quantize(e, self.precision, self.ranges.as_ref()))
            .collect();
        writer.write(texts, &rows)
    }

    /// Quantizes and writes what was held back, with ranges from all of it.
    fn finish(mut self, writer: &mut EmbeddingWriter) -> Result<()> {
        let Some((texts, embeddings)) = self.held.take() else {
            return Ok(());
        };
        let p = self.precision;
        match embeddings.len() {
            0 => return Ok(()),
            1 => bail!(
                "--precision {p} needs ranges, and one embedding has none: give --calibration \
                 FILE (embeddings of representative texts), as sentence-transformers requires"
            ),
            n if n < 100 => eprintln!(
                "warning: {p} ranges come from only {n} embeddings; --calibration FILE with \
                 more representative embeddings gives steadier buckets"
            ),
            _ => {}
        }
        self.ranges = Ranges::from_rows(embeddings.iter().map(Vec::as_slice));
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        self.push(&texts, embeddings, writer)
    }
}

/// The texts to encode and, for `.npy` (whose header comes first), how many there are:
/// arguments are counted, a file is read twice, standard input is first copied to an unnamed
/// temporary file.
fn open_source(args: &EncodeArgs, format: Format) -> Result<(input::TextSource, Option<usize>)> {
    let from_stdin =
        args.texts.is_empty() && args.input.as_deref().is_none_or(|p| p == Path::new("-"));
    if format != Format::Npy || !from_stdin {
        let rows = match (&args.input, format) {
            (_, Format::Jsonl) => None,
            (Some(path), Format::Npy) => Some(input::TextSource::open(path)?.count()?),
            (None, Format::Npy) => Some(args.texts.len()),
        };
        return Ok((encode_source(args)?, rows));
    }
    check_stdin_is_not_a_terminal(args)?;
    let mut file = input::spool_stdin()?;
    let rows = input::TextSource::from_file(file.try_clone()?).count()?;
    file.seek(SeekFrom::Start(0))?;
    Ok((input::TextSource::from_file(file), Some(rows)))
}

/// Standard input at a terminal with nothing else given: the user forgot the texts.
fn check_stdin_is_not_a_terminal(args: &EncodeArgs) -> Result<()> {
    if args.input.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!("nothing to encode: give TEXT arguments, --input FILE, or pipe text in");
    }
    Ok(())
}

/// The texts `st encode` reads: `--input FILE`, the arguments, or piped standard input.
fn encode_source(args: &EncodeArgs) -> Result<input::TextSource> {
    if let Some(path) = &args.input {
        return input::TextSource::open(path);
    }
    if args.texts.is_empty() {
        check_stdin_is_not_a_terminal(args)?;
        return input::TextSource::open(Path::new("-"));
    }
    // Arguments may hold newlines: hand them over as JSONL, one text a line.
    let mut jsonl = Vec::new();
    for text in &args.texts {
        serde_json::to_writer(&mut jsonl, &serde_json::json!({ "text": text }))?;
        jsonl.push(b'\n');
    }
    let reader = Box::new(std::io::Cursor::new(jsonl));
    Ok(input::TextSource::new(reader, true, "arguments".into()))
}
