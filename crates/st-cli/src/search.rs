//! `st search`: queries against embeddings saved by `st encode`, as sentence-transformers'
//! `util.semantic_search` (cosine, best first), or by Hamming distance for binary corpora.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use st_backbone::EncoderBackend;
use st_pooling::{Precision, QuantizedRow, Ranges};

use crate::embeddings::{self, Saved};
use crate::{ModelArgs, embed, input, load};

#[derive(Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Embeddings to search, written by `st encode`: .npy or .jsonl (whose texts are shown).
    #[arg(long, value_name = "FILE")]
    pub corpus: PathBuf,
    /// A query (repeat for several).
    #[arg(long, short, value_name = "TEXT", required = true)]
    pub query: Vec<String>,
    /// Hits per query.
    #[arg(long, default_value_t = 10, value_name = "K")]
    pub top_k: usize,
    /// The corpus texts, one per line (or .jsonl), in the order they were encoded: shown with
    /// the hits of a .npy corpus.
    #[arg(long, value_name = "FILE")]
    pub texts: Option<PathBuf>,
    /// The --calibration file the int8 / uint8 corpus was encoded with: the queries are
    /// quantized with the same ranges.
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// Print one JSON line per query: {"query", "metric", "hits": [{"corpus_id", "score", "text"}]}.
    #[arg(long)]
    pub json: bool,
}

/// How a corpus is scored, from its rows' type and width.
enum Metric {
    /// float32 rows: cosine similarity, higher is nearer.
    Cosine,
    /// int8 / uint8 rows: the query quantized with the calibration ranges, then the cosine of
    /// the codes centred on zero (uint8 − 128 is int8's code).
    Codes(Ranges),
    /// binary / ubinary rows: packed sign bits, Hamming distance, lower is nearer.
    Hamming,
}

/// One result: a corpus row and its score (cosine, or Hamming distance).
struct Hit {
    corpus_id: usize,
    score: f64,
}

pub fn search<B: EncoderBackend>(args: SearchArgs, device: &B::Device) -> Result<()> {
    if args.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    let corpus = embeddings::read(&args.corpus)?;
    let texts = corpus_texts(&args, &corpus)?;
    let encoder = load::<B>(&args.model, device)?;
    let dim = encoder.output_dim();
    let metric = metric(&args, &corpus, dim)?;
    let queries: Vec<&str> = args.query.iter().map(String::as_str).collect();
    let embedded = embed(&encoder, &queries, &args.model, |i| {
        format!("query {}", i + 1)
    })?;
    for (query, embedding) in queries.iter().zip(&embedded.embeddings) {
        let hits = rank(&metric, embedding, &corpus.rows, args.top_k);
        print_hits(query, &metric, &hits, texts.as_deref(), args.json);
    }
    Ok(())
}

/// The texts shown with hits: `--texts FILE`, else the corpus's own (JSONL).
fn corpus_texts(args: &SearchArgs, corpus: &Saved) -> Result<Option<Vec<String>>> {
    let Some(path) = &args.texts else {
        return Ok(corpus.texts.clone());
    };
    let texts = input::read_texts(path)?;
    if texts.len() != corpus.rows.len() {
        bail!(
            "{} holds {} texts but {} holds {} embeddings: give the texts the corpus was encoded from",
            path.display(),
            texts.len(),
            args.corpus.display(),
            corpus.rows.len()
        );
    }
    Ok(Some(texts))
}

fn metric(args: &SearchArgs, corpus: &Saved, dim: usize) -> Result<Metric> {
    let name = args.corpus.display();
    let Some(first) = corpus.rows.first() else {
        bail!("{name}: the corpus holds no embeddings");
    };
    let packed = Precision::Binary.width(dim);
    match first {
        QuantizedRow::F32(_) if corpus.cols == dim => Ok(Metric::Cosine),
        QuantizedRow::I8(_) | QuantizedRow::U8(_) if corpus.cols == dim => {
            let Some(path) = &args.calibration else {
                bail!(
                    "{name} holds int8 / uint8 embeddings: give --calibration FILE, the file \
                     they were quantized with, so the queries get the same ranges"
                );
            };
            Ok(Metric::Codes(embeddings::read_calibration(path, dim)?))
        }
        QuantizedRow::I8(_) | QuantizedRow::U8(_) if corpus.cols == packed => Ok(Metric::Hamming),
        _ => bail!(
            "{name}: its embeddings are {} wide, the model's are {dim} ({packed} bytes packed \
             as binary): search with the model (and --truncate-dim) that encoded it",
            corpus.cols
        ),
    }
}

/// The `top_k` nearest rows, best first; equal scores in corpus order.
fn rank(metric: &Metric, query: &[f32], rows: &[QuantizedRow], top_k: usize) -> Vec<Hit> {
    let score: Box<dyn Fn(&QuantizedRow) -> f64> = match metric {
        Metric::Cosine => Box::new(move |row| cosine(query, &row.to_f32())),
        Metric::Codes(ranges) => {
            let q = centred(&st_pooling::quantize(query, Precision::Int8, Some(ranges)));
            Box::new(move |row| cosine(&q, &centred(row)))
        }
        Metric::Hamming => {
            let q = st_pooling::pack_bits(query);
            Box::new(move |row| st_pooling::hamming(&q, &bytes(row)) as f64)
        }
    };
    let mut hits: Vec<Hit> = rows
        .iter()
        .enumerate()
        .map(|(corpus_id, row)| Hit {
            corpus_id,
            score: score(row),
        })
        .collect();
    let lower_is_better = matches!(metric, Metric::Hamming);
    hits.sort_by(|a, b| {
        let order = b.score.total_cmp(&a.score);
        let order = if lower_is_better {
            order.reverse()
        } else {
            order
        };
        order.then(a.corpus_id.cmp(&b.corpus_id))
    });
    hits.truncate(top_k);
    hits
}

/// Cosine similarity as sentence-transformers' cos_sim: each side divided by max(‖v‖, 1e-12).
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let norm = |v: &[f32]| {
        v.iter()
            .map(|&x| x as f64 * x as f64)
            .sum::<f64>()
            .sqrt()
            .max(1e-12)
    };
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    dot / (norm(a) * norm(b))
}

/// int8 codes as they are; uint8 codes minus 128 (the same bucket's int8 code).
fn centred(row: &QuantizedRow) -> Vec<f32> {
    match row {
        QuantizedRow::U8(v) => v.iter().map(|&x| x as f32 - 128.0).collect(),
        other => other.to_f32(),
    }
}

/// Packed bits as numpy.packbits gives them: binary's int8 bytes are packed − 128, which is the
/// packed byte with its top bit flipped.
fn bytes(row: &QuantizedRow) -> Vec<u8> {
    match row {
        QuantizedRow::I8(v) => v.iter().map(|&x| x as u8 ^ 0x80).collect(),
        QuantizedRow::U8(v) => v.clone(),
        QuantizedRow::F32(_) => unreachable!("Hamming corpora are integer"),
    }
}

fn print_hits(query: &str, metric: &Metric, hits: &[Hit], texts: Option<&[String]>, json: bool) {
    let metric_name = match metric {
        Metric::Hamming => "hamming",
        _ => "cosine",
    };
    let text = |id: usize| texts.map(|t| t[id].as_str());
    if json {
        let hits: Vec<serde_json::Value> = hits
            .iter()
            .map(|h| {
                let mut hit = serde_json::json!({"corpus_id": h.corpus_id, "score": h.score});
                if let Some(t) = text(h.corpus_id) {
                    hit["text"] = t.into();
                }
                hit
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"query": query, "metric": metric_name, "hits": hits})
        );
        return;
    }
    println!("query: {query}");
    for (rank, h) in hits.iter().enumerate() {
        let score = match metric {
            Metric::Hamming => format!("{:>6}", h.score),
            _ => format!("{:>6.4}", h.score),
        };
        let shown = text(h.corpus_id)
            .map(|t| format!("  {t}"))
            .unwrap_or_default();
        println!("{:>4}. {score}  [{}]{shown}", rank + 1, h.corpus_id);
    }
}
