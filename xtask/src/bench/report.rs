//! The bench's results as typed data (`--json` serializes [`Report`]), the goals of the
//! performance issue judged on them, and docs/benchmarks.md rendered from them.

use serde::Serialize;

use super::{Runtime, Settings, Side};

#[derive(Serialize)]
pub struct Report {
    pub cpu: String,
    pub threads: usize,
    pub cpus_visible: usize,
    pub backends: Vec<String>,
    /// Bench sentences encoded per run, and their mean length.
    pub sentences: usize,
    pub words_per_sentence: f64,
    pub tokens_per_sentence: f64,
    /// all-MiniLM-L6-v2's forward FLOPs per bench sentence (padding not counted).
    pub flops_per_sentence: f64,
    /// The first row is the headline: bench sentences, all-MiniLM-L6-v2, batch 32.
    pub encode: Vec<EncodeRow>,
    pub quality: Vec<Quality>,
    pub stsb: Vec<Sts>,
    pub ceiling: Vec<Ceiling>,
    pub start: Vec<ColdStart>,
    pub training: Vec<TrainStep>,
    pub streaming: Option<Streaming>,
    pub goals: Vec<Goal>,
}

/// One input × model × batch size, every side's median throughput.
#[derive(Serialize)]
pub struct EncodeRow {
    pub measure: String,
    pub model: String,
    pub batch: usize,
    pub sentences: usize,
    pub results: Vec<SideRate>,
}

#[derive(Serialize)]
pub struct SideRate {
    pub side: Side,
    pub sentences_per_s: f64,
    pub peak_rss_mb: f64,
    /// MB the model's weights hold in memory (st sides, from `st encode --timing`).
    pub weight_mb: Option<f64>,
}

/// A reduced dtype's minimum cosine to the same program's float32 embeddings.
#[derive(Serialize)]
pub struct Quality {
    pub side: Side,
    pub min_cosine_to_fp32: f64,
}

/// STS-B test Spearman (cosine, ×100).
#[derive(Serialize)]
pub struct Sts {
    pub side: Side,
    pub spearman: f64,
}

#[derive(Serialize)]
pub struct Ceiling {
    pub side: Side,
    /// Best of 5 products of two 2048×2048 matrices.
    pub matmul_peak_gflops: f64,
    /// The headline encode's useful FLOPs per second.
    pub encode_gflops: f64,
}

#[derive(Serialize)]
pub struct ColdStart {
    pub side: Side,
    pub seconds: f64,
    pub peak_rss_mb: f64,
}

#[derive(Serialize)]
pub struct TrainStep {
    pub side: Side,
    pub step_ms: f64,
}

#[derive(Serialize)]
pub struct Streaming {
    pub peak_rss_mb_5k_lines: f64,
    pub peak_rss_mb_50k_lines: f64,
}

/// One goal of the performance issue, judged on this run.
#[derive(Serialize)]
pub struct Goal {
    pub name: String,
    pub target: f64,
    pub higher_is_better: bool,
    /// None when this run did not measure it (a backend or environment left out).
    pub measured: Option<f64>,
    pub met: bool,
    /// The section of docs/performance.md that explains a miss.
    pub why: &'static str,
}

impl EncodeRow {
    pub fn rate(&self, side: &Side) -> Option<f64> {
        self.results
            .iter()
            .find(|r| &r.side == side)
            .map(|r| r.sentences_per_s)
    }

    /// `side`'s throughput over Python ST on PyTorch's.
    pub fn ratio(&self, side: &Side) -> Option<f64> {
        Some(self.rate(side)? / self.rate(&Side::TORCH)?)
    }

    fn weight_mb(&self, side: &Side) -> Option<f64> {
        self.results
            .iter()
            .find(|r| &r.side == side)
            .and_then(|r| r.weight_mb)
    }

    fn rss(&self, side: &Side) -> Option<f64> {
        self.results
            .iter()
            .find(|r| &r.side == side)
            .map(|r| r.peak_rss_mb)
    }
}

fn st(backend: &str, dtype: &str) -> Side {
    Side::st(backend, dtype)
}

fn onnx(runtime: Runtime) -> Side {
    Side::Python { runtime }
}

impl Report {
    pub fn new(settings: &Settings, sentences: usize, texts: &[String]) -> Self {
        let words = texts.iter().map(|t| t.split(' ').count()).sum::<usize>();
        Report {
            cpu: cpu_name(),
            threads: settings.threads,
            cpus_visible: std::thread::available_parallelism().map_or(1, |n| n.get()),
            backends: settings.backends.clone(),
            sentences,
            words_per_sentence: words as f64 / sentences as f64,
            tokens_per_sentence: f64::NAN,
            flops_per_sentence: f64::NAN,
            encode: Vec::new(),
            quality: Vec::new(),
            stsb: Vec::new(),
            ceiling: Vec::new(),
            start: Vec::new(),
            training: Vec::new(),
            streaming: None,
            goals: Vec::new(),
        }
    }

    /// The headline input's `(flops, tokens)` as `st encode --timing` counted them.
    pub fn set_work(&mut self, (flops, tokens): (f64, f64), sentences: usize) {
        self.flops_per_sentence = flops / sentences as f64;
        self.tokens_per_sentence = tokens / sentences as f64;
    }

    fn min_cosine(&self, side: &Side) -> Option<f64> {
        self.quality
            .iter()
            .find(|q| &q.side == side)
            .map(|q| q.min_cosine_to_fp32)
    }

    fn spearman(&self, side: &Side) -> Option<f64> {
        self.stsb
            .iter()
            .find(|s| &s.side == side)
            .map(|s| s.spearman)
    }

    fn train_ratio(&self, backend: &str) -> Option<f64> {
        let ms = |side: &Side| self.training.iter().find(|t| &t.side == side);
        Some(ms(&st(backend, "float32"))?.step_ms / ms(&Side::TORCH)?.step_ms)
    }

    /// Judges every goal of the performance issue on this run's numbers.
    pub fn set_goals(&mut self) {
        let [headline, short, ..] = &self.encode[..] else {
            return;
        };
        let flex = st("flex", "float32");
        let int8 = st("flex", "int8");
        let mut goals = Vec::new();
        let mut goal = |name: String, target: Option<f64>, higher, measured, why| {
            if let Some(target) = target {
                goals.push(Goal::judge(name, target, higher, measured, why));
            }
        };
        for (row, what) in [(headline, "bench sentences"), (short, "short sentences")] {
            goal(
                format!("fp32 encode ÷ Python, flex, {what} (batch 32)"),
                Some(1.0),
                true,
                row.ratio(&flex),
                "fp32-on-flex",
            );
        }
        goal(
            "stretch: flex fp32 ÷ Python at least ONNX Runtime fp32's".into(),
            headline.ratio(&onnx(Runtime::Onnx)),
            true,
            headline.ratio(&flex),
            "fp32-on-flex",
        );
        goal(
            "int8 encode ÷ Python fp32, flex (batch 32)".into(),
            Some(2.5),
            true,
            headline.ratio(&int8),
            "int8-on-flex",
        );
        goal(
            "int8 min cosine to fp32 per sentence, flex".into(),
            Some(0.99),
            true,
            self.min_cosine(&int8),
            "int8-on-flex",
        );
        goal(
            "int8 STS-B test Spearman, flex (within 0.5 of fp32's)".into(),
            self.spearman(&flex).map(|s| s - 0.5),
            true,
            self.spearman(&int8),
            "int8-on-flex",
        );
        goal(
            "int8 weights in memory ÷ float32's, flex".into(),
            Some(0.3),
            false,
            headline
                .weight_mb(&int8)
                .zip(headline.weight_mb(&flex))
                .map(|(a, b)| a / b),
            "int8-on-flex",
        );
        goal(
            "stretch: flex int8 ÷ Python at least ONNX Runtime int8's".into(),
            headline.ratio(&onnx(Runtime::OnnxInt8)),
            true,
            headline.ratio(&int8),
            "int8-on-flex",
        );
        self.backend_goals(&mut goal);
        self.goals = goals;
    }

    /// Goals on the best backend, start-up, memory and training.
    fn backend_goals(
        &self,
        goal: &mut impl FnMut(String, Option<f64>, bool, Option<f64>, &'static str),
    ) {
        let headline = &self.encode[0];
        let best = |dtype: &str| {
            self.backends
                .iter()
                .filter_map(|b| headline.ratio(&st(b, dtype)))
                .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))))
        };
        goal(
            "fp32 encode ÷ Python, best backend (batch 32)".into(),
            Some(1.2),
            true,
            best("float32"),
            "the-compute-ceiling",
        );
        goal(
            "bf16 encode ÷ Python fp32, best backend (batch 32)".into(),
            (self.backends.len() > 1).then_some(2.0),
            true,
            best("bf16"),
            "encode-on-tch-one-reshape-worth-46-in-bf16",
        );
        let flex = st("flex", "float32");
        let cold = self.start.iter().find(|c| c.side == flex);
        goal(
            "cold start to first embedding (s), default build".into(),
            Some(0.3),
            false,
            cold.map(|c| c.seconds),
            "what-meets-the-goals",
        );
        goal(
            "peak RSS ÷ Python, encode, default build".into(),
            Some(1.0 / 3.0),
            false,
            headline
                .rss(&flex)
                .zip(headline.rss(&Side::TORCH))
                .map(|(a, b)| a / b),
            "what-meets-the-goals",
        );
        for (backend, target) in [("flex", 1.5), ("tch", 1.0)] {
            goal(
                format!("training step ÷ PyTorch, {backend}"),
                self.backends.iter().any(|b| b == backend).then_some(target),
                false,
                self.train_ratio(backend),
                "training-step",
            );
        }
    }
}

impl Goal {
    fn judge(
        name: String,
        target: f64,
        higher_is_better: bool,
        measured: Option<f64>,
        why: &'static str,
    ) -> Self {
        let met = measured.is_some_and(|m| {
            if higher_is_better {
                m >= target
            } else {
                m <= target
            }
        });
        Goal {
            name,
            target,
            higher_is_better,
            measured,
            met,
            why,
        }
    }

    fn markdown(&self) -> String {
        let sign = if self.higher_is_better { "≥" } else { "≤" };
        let status = match self.measured {
            None => "not measured".to_string(),
            Some(_) if self.met => "met".to_string(),
            Some(m) => format!(
                "missed by {:.2}: [why](performance.md#{})",
                (m - self.target).abs(),
                self.why
            ),
        };
        let measured = self.measured.map_or("—".into(), |m| format!("{m:.3}"));
        format!(
            "| {} | {sign} {:.3} | {measured} | {status} |\n",
            self.name, self.target
        )
    }
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default()
}

/// `| a | b |` and its separator line.
fn header(columns: &[String]) -> String {
    format!(
        "| {} |\n|{}\n",
        columns.join(" | "),
        "---|".repeat(columns.len())
    )
}

impl Report {
    pub fn markdown(&self, quick: bool) -> String {
        let mut doc = self.intro(quick);
        doc.push_str(&self.encode_table());
        doc.push_str(&self.quality_tables());
        doc.push_str(&self.start_and_training_tables());
        doc.push_str("## Goals\n\n");
        doc.push_str(&header(&[
            "goal".into(),
            "target".into(),
            "measured".into(),
            "status".into(),
        ]));
        for g in &self.goals {
            doc.push_str(&g.markdown());
        }
        doc.push('\n');
        doc.push_str(&self.ceiling_table());
        doc.push_str(
            "Ratios matter more than absolute times on shared machines. Where the time goes and \
why goals are missed: [performance.md](performance.md); which backend to pick: \
[backends.md](backends.md).\n",
        );
        doc
    }

    fn intro(&self, quick: bool) -> String {
        format!(
            "# Benchmarks\n\nWritten by `cargo xtask bench{} --backends {}` on {} ({} threads per \
side, {} CPUs visible), median of the timed runs per side after a warm-up, sides alternating. \
{} generated bench sentences ({:.1} words, {:.1} tokens mean); short sentences are 3–12 words. \
Python: sentence-transformers 6.2 + PyTorch from `cargo xtask pyenv`; ONNX Runtime: \
sentence-transformers 5.2 with `backend=\"onnx\"` and its dynamic int8 export \
(`export_dynamic_quantized_onnx_model`), in its own environment. st: release build; flex is \
measured with the default build (no libtorch to load), the other backends with a build that \
has their features. `--dtype int8` on flex runs every encoder projection (smoothed, \
SmoothQuant-style) and the word embeddings in int8; bf16 elsewhere runs the whole BERT in \
bfloat16.\n\n",
            if quick { " --quick" } else { "" },
            self.backends.join(","),
            self.cpu,
            self.threads,
            self.cpus_visible,
            self.sentences,
            self.words_per_sentence,
            self.tokens_per_sentence,
        )
    }

    /// Sentences/s per side, and in parentheses ÷ Python ST on PyTorch.
    fn encode_table(&self) -> String {
        let mut sides: Vec<&Side> = Vec::new();
        for r in self.encode.iter().flat_map(|row| &row.results) {
            if !sides.contains(&&r.side) {
                sides.push(&r.side);
            }
        }
        let mut columns = vec!["input".to_string(), "model".into(), "batch".into()];
        columns.extend(sides.iter().map(|s| s.label()));
        let mut out = String::from(
            "## Encode\n\nSentences per second (higher is better); in parentheses, ÷ Python ST on \
PyTorch fp32 in the same row.\n\n",
        );
        out.push_str(&header(&columns));
        for row in &self.encode {
            out.push_str(&format!(
                "| {} | {} | {} |",
                row.measure, row.model, row.batch
            ));
            for side in &sides {
                match (row.rate(side), row.ratio(side)) {
                    (Some(rate), Some(ratio)) => {
                        out.push_str(&format!(" {rate:.1} ({ratio:.2}×) |"))
                    }
                    _ => out.push_str(" — |"),
                }
            }
            out.push('\n');
        }
        out.push('\n');
        out
    }

    fn quality_tables(&self) -> String {
        let mut out = String::from(
            "## Reduced precision: distance to float32\n\nMinimum cosine, over a sample of the \
bench sentences, between a side's embeddings and the same program's float32 ones; STS-B test \
Spearman (cosine, ×100) of flex in both dtypes.\n\n",
        );
        out.push_str(&header(&["side".into(), "min cosine to its fp32".into()]));
        for q in &self.quality {
            out.push_str(&format!(
                "| {} | {:.5} |\n",
                q.side.label(),
                q.min_cosine_to_fp32
            ));
        }
        out.push('\n');
        out.push_str(&header(&["side".into(), "STS-B test Spearman".into()]));
        for s in &self.stsb {
            out.push_str(&format!("| {} | {:.2} |\n", s.side.label(), s.spearman));
        }
        out.push('\n');
        out
    }

    fn start_and_training_tables(&self) -> String {
        let mut out = String::from(
            "## Start-up, memory, training\n\nCold start: a new process encoding \"hello \
world\" (load, tokenize, encode, print). Peak RSS of the headline encode, and the bytes \
the model's weights hold once loaded (`st encode --timing`; an int8 model releases the float \
weights int8 replaces, but loads them first, so its peak RSS is the float model's).\n\n",
        );
        out.push_str(&header(&[
            "side".into(),
            "cold start (s)".into(),
            "peak RSS, cold start (MB)".into(),
            "peak RSS, encode (MB)".into(),
            "weights in memory (MB)".into(),
        ]));
        let mb = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.0}"));
        for c in &self.start {
            let encode = mb(self.encode[0].rss(&c.side));
            let weights = mb(self.encode[0].weight_mb(&c.side));
            out.push_str(&format!(
                "| {} | {:.2} | {:.0} | {encode} | {weights} |\n",
                c.side.label(),
                c.seconds,
                c.peak_rss_mb
            ));
        }
        out.push_str(
            "\nTraining step: encoder + two classification heads, batch 32 × 64 tokens, \
forward, backward and AdamW (lower is better).\n\n",
        );
        out.push_str(&header(&[
            "side".into(),
            "ms per step".into(),
            "÷ PyTorch".into(),
        ]));
        let torch = self.training.iter().find(|t| t.side == Side::TORCH);
        for t in &self.training {
            let ratio = torch.map_or(f64::NAN, |p| t.step_ms / p.step_ms);
            out.push_str(&format!(
                "| {} | {:.0} | {ratio:.2}× |\n",
                t.side.label(),
                t.step_ms
            ));
        }
        if let Some(s) = &self.streaming {
            out.push_str(&format!(
                "\nMemory on long inputs (`st encode --input`, flex, lines truncated at 16 \
tokens, output to `/dev/null`): peak RSS {:.0} MB for 5,000 lines, {:.0} MB for 50,000 \
({:.2}×): the input is read, sorted and encoded in windows of 4,096 texts and written as it \
goes.\n",
                s.peak_rss_mb_5k_lines,
                s.peak_rss_mb_50k_lines,
                s.peak_rss_mb_50k_lines / s.peak_rss_mb_5k_lines
            ));
        }
        out.push('\n');
        out
    }

    fn ceiling_table(&self) -> String {
        let mut out = format!(
            "## Compute ceiling\n\nall-MiniLM-L6-v2 needs {:.1} MFLOP per bench sentence \
(`BertConfig::forward_flops`, padding not counted). Matmul peak: best of 5 products of two \
2048×2048 matrices on the same backend, dtype and threads (`st info --matmul-peak`; \
`torch.matmul` for Python).\n\n",
            self.flops_per_sentence / 1e6
        );
        out.push_str(&header(&[
            "side".into(),
            "matmul peak (GFLOP/s)".into(),
            "encode, batch 32 (GFLOP/s)".into(),
            "share of peak".into(),
            "sentences/s at 100% of peak".into(),
        ]));
        for c in &self.ceiling {
            out.push_str(&format!(
                "| {} | {:.0} | {:.0} | {:.0}% | {:.0} |\n",
                c.side.label(),
                c.matmul_peak_gflops,
                c.encode_gflops,
                100.0 * c.encode_gflops / c.matmul_peak_gflops,
                c.matmul_peak_gflops * 1e9 / self.flops_per_sentence
            ));
        }
        out.push('\n');
        out
    }
}
