//! `cargo xtask bench`: st against Python sentence-transformers, side by side, same machine,
//! same models, same inputs, same thread count; sides alternate (A B C A B C) so drift hits
//! every side alike.
//!
//! A *side* ([`Side`]) is one program that encodes: `st` on one backend at one `--dtype`, or
//! Python sentence-transformers on PyTorch (the baseline every ratio divides by) or on ONNX
//! Runtime (fp32 and its dynamic-int8 export: the CPU path Python users pick for speed). Each
//! section below measures some sides and fills one part of the typed [`report::Report`], which
//! renders docs/benchmarks.md and `--json`.

mod process;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::stats::median;
use process::{Run, measure, sentences};
use report::{ColdStart, EncodeRow, Quality, Report, SideRate, Sts, TrainStep};

pub struct Settings {
    pub quick: bool,
    pub json: bool,
    pub threads: usize,
    /// Backends compiled into `st` and measured, flex first.
    pub backends: Vec<String>,
    /// The default build (flex only), which flex is measured with.
    pub flex_st: PathBuf,
}

/// Where the programs and models are.
pub struct Paths {
    pub root: PathBuf,
    /// all-MiniLM-L6-v2: every measure.
    pub minilm: PathBuf,
    /// all-mpnet-base-v2: one encode row (768 hidden, 12 layers: matmuls dominate).
    pub mpnet: PathBuf,
    /// The reference environment's Python (PyTorch).
    pub python: PathBuf,
    /// The ONNX Runtime environment's Python.
    pub onnx_python: PathBuf,
    /// `st` with every backend in `Settings::backends`.
    pub st: PathBuf,
}

/// One program that encodes the benchmark's sentences.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "side", rename_all = "snake_case")]
pub enum Side {
    /// `st encode --backend BACKEND --dtype DTYPE`.
    St { backend: String, dtype: String },
    /// Python sentence-transformers on `runtime`.
    Python { runtime: Runtime },
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    /// PyTorch fp32: the baseline.
    Torch,
    /// ONNX Runtime fp32 (`backend="onnx"`).
    Onnx,
    /// ONNX Runtime on sentence-transformers' dynamic int8 export.
    OnnxInt8,
}

impl Runtime {
    fn arg(self) -> &'static str {
        match self {
            Runtime::Torch => "torch",
            Runtime::Onnx => "onnx",
            Runtime::OnnxInt8 => "onnx-int8",
        }
    }
}

impl Side {
    fn st(backend: &str, dtype: &str) -> Self {
        Side::St {
            backend: backend.into(),
            dtype: dtype.into(),
        }
    }

    const TORCH: Side = Side::Python {
        runtime: Runtime::Torch,
    };

    pub fn label(&self) -> String {
        match self {
            Side::St { backend, dtype } => format!("st {backend} {dtype}"),
            Side::Python {
                runtime: Runtime::Torch,
            } => "Python ST (PyTorch)".into(),
            Side::Python {
                runtime: Runtime::Onnx,
            } => "Python ST (ONNX Runtime)".into(),
            Side::Python {
                runtime: Runtime::OnnxInt8,
            } => "Python ST (ONNX Runtime int8)".into(),
        }
    }
}

/// A model the bench encodes with, as each side loads it.
struct Model {
    name: &'static str,
    dir: PathBuf,
    /// A copy with `onnx/` exports, for the ONNX Runtime sides.
    onnx_dir: Option<PathBuf>,
}

/// One encode measurement: the input, the batch size and the sides compared.
struct EncodeCase<'a> {
    measure: &'a str,
    model: &'a Model,
    input: &'a Path,
    sentences: usize,
    batch: usize,
    sides: Vec<Side>,
}

/// What one timed encode process reported.
struct EncodeRun {
    sentences_per_s: f64,
    peak_rss_mb: f64,
    /// `(flops, tokens)` for the whole input, from `st encode --timing`.
    work: Option<(f64, f64)>,
    /// Bytes the model's weights hold, from `st encode --timing`.
    weight_bytes: Option<f64>,
}

struct Bench<'a> {
    settings: &'a Settings,
    paths: &'a Paths,
    work: PathBuf,
    threads: String,
    /// Timed runs per side (median taken) and untimed warm-ups before them.
    runs: usize,
    warmups: usize,
}

pub fn run(settings: &Settings, paths: &Paths) -> Result<()> {
    let work = paths.root.join("target").join("bench");
    std::fs::create_dir_all(&work)?;
    let bench = Bench {
        settings,
        paths,
        threads: settings.threads.to_string(),
        runs: if settings.quick { 1 } else { 3 },
        warmups: if settings.quick { 0 } else { 1 },
        work,
    };
    let report = bench.measure_all()?;
    let doc = report.markdown(settings.quick);
    if !settings.quick {
        process::write_atomic(&paths.root.join("docs/benchmarks.md"), doc.as_bytes())?;
    }
    eprintln!("{doc}");
    if settings.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

impl Bench<'_> {
    fn measure_all(&self) -> Result<Report> {
        let n = if self.settings.quick { 300 } else { 2000 };
        let minilm = Model {
            name: "all-MiniLM-L6-v2",
            dir: self.paths.minilm.clone(),
            onnx_dir: Some(self.onnx_export(&self.paths.minilm)?),
        };
        let mpnet = Model {
            name: "all-mpnet-base-v2",
            dir: self.paths.mpnet.clone(),
            onnx_dir: None,
        };
        let texts = sentences(n, 2026);
        let input = self.write_input("sentences.txt", &texts)?;
        let short = self.write_input("short.txt", &short_sentences(n))?;
        let mpnet_n = n / 4;
        let mpnet_input = self.write_input("mpnet.txt", &texts[..mpnet_n])?;

        let mut report = Report::new(self.settings, n, &texts);
        let (row, work) = self.encode(EncodeCase {
            measure: "bench sentences",
            model: &minilm,
            input: &input,
            sentences: n,
            batch: 32,
            sides: self.headline_sides(),
        })?;
        report.set_work(work.context("st reported no FLOP count")?, n);
        report.encode.push(row);
        report.encode.push(
            self.encode(EncodeCase {
                measure: "short sentences (≤ 16 tokens)",
                model: &minilm,
                input: &short,
                sentences: n,
                batch: 32,
                sides: self.headline_sides(),
            })?
            .0,
        );
        report.encode.push(
            self.encode(EncodeCase {
                measure: "bench sentences",
                model: &minilm,
                input: &input,
                sentences: n,
                batch: 128,
                sides: self.fp32_sides(),
            })?
            .0,
        );
        report.encode.push(
            self.encode(EncodeCase {
                measure: "bench sentences",
                model: &mpnet,
                input: &mpnet_input,
                sentences: mpnet_n,
                batch: 32,
                sides: self.mpnet_sides(),
            })?
            .0,
        );
        report.quality = self.quality(&minilm, &texts)?;
        report.stsb = self.stsb()?;
        report.ceiling = self.ceiling(&report)?;
        report.start = self.cold_start()?;
        report.training = self.training()?;
        if !self.settings.quick {
            report.streaming = Some(process::streaming_memory(
                &self.settings.flex_st,
                &self.paths.minilm,
                &self.work,
                &self.threads,
            )?);
        }
        report.set_goals();
        Ok(report)
    }

    /// Every backend in float32 and in its fast reduced dtype, PyTorch, ONNX Runtime fp32/int8.
    fn headline_sides(&self) -> Vec<Side> {
        let mut sides = self.st_sides(&["float32"]);
        for backend in &self.settings.backends {
            sides.push(Side::st(backend, reduced_dtype(backend)));
        }
        sides.push(Side::TORCH);
        for runtime in [Runtime::Onnx, Runtime::OnnxInt8] {
            sides.push(Side::Python { runtime });
        }
        sides
    }

    fn fp32_sides(&self) -> Vec<Side> {
        let mut sides = self.st_sides(&["float32"]);
        sides.push(Side::TORCH);
        sides
    }

    /// MPNet runs the composed attention on flex (relative-position bias): measured in both
    /// flex dtypes and on the other backends in float32, against PyTorch.
    fn mpnet_sides(&self) -> Vec<Side> {
        let mut sides = self.fp32_sides();
        sides.insert(1, Side::st("flex", "int8"));
        sides
    }

    fn st_sides(&self, dtypes: &[&str]) -> Vec<Side> {
        let backends = &self.settings.backends;
        backends
            .iter()
            .flat_map(|b| dtypes.iter().map(move |d| Side::st(b, d)))
            .collect()
    }

    fn write_input(&self, name: &str, texts: &[String]) -> Result<PathBuf> {
        let path = self.work.join(name);
        std::fs::write(&path, texts.join("\n") + "\n")?;
        Ok(path)
    }

    /// A copy of `model` with ONNX Runtime's fp32 and dynamic-int8 exports, made once.
    fn onnx_export(&self, model: &Path) -> Result<PathBuf> {
        let out = self.work.join("onnx-model");
        let exported = out.join("onnx").join("model.onnx");
        if !exported.is_file() {
            eprintln!("exporting {} to ONNX (once)", model.display());
            measure(
                self.python(Runtime::Onnx)
                    .arg("onnx-export")
                    .arg(model)
                    .arg(&out),
            )?;
        }
        Ok(out)
    }

    /// `st --threads N --backend BACKEND ARGS...`: flex on the default build.
    fn st(&self, backend: &str) -> Command {
        let binary = if backend == "flex" {
            &self.settings.flex_st
        } else {
            &self.paths.st
        };
        let mut c = Command::new(binary);
        c.args(["--threads", &self.threads, "--backend", backend]);
        c.env("RAYON_NUM_THREADS", &self.threads)
            .env("OMP_NUM_THREADS", &self.threads);
        c
    }

    /// `python xtask/py/bench.py ...` in the environment `runtime` needs.
    fn python(&self, runtime: Runtime) -> Command {
        let python = match runtime {
            Runtime::Torch => &self.paths.python,
            Runtime::Onnx | Runtime::OnnxInt8 => &self.paths.onnx_python,
        };
        let mut c = Command::new(python);
        c.arg(self.paths.root.join("xtask/py/bench.py"));
        c.env("ST_BENCH_THREADS", &self.threads)
            .env("OMP_NUM_THREADS", &self.threads);
        c
    }

    /// One timed encode of `case.input` by `side`.
    fn encode_once(&self, side: &Side, case: &EncodeCase) -> Result<EncodeRun> {
        let batch = case.batch.to_string();
        let run = match side {
            Side::St { backend, dtype } => {
                let mut cmd = self.st(backend);
                cmd.args([
                    "encode",
                    "--dtype",
                    dtype,
                    "--batch-size",
                    &batch,
                    "--timing",
                ])
                .arg("--model")
                .arg(&case.model.dir)
                .arg("--input")
                .arg(case.input)
                .args(["--output", "/dev/null"]);
                measure(&mut cmd)?
            }
            Side::Python { runtime } => {
                let dir = match runtime {
                    Runtime::Torch => &case.model.dir,
                    _ => case.model.onnx_dir.as_ref().context("no ONNX export")?,
                };
                let mut cmd = self.python(*runtime);
                cmd.arg("encode")
                    .arg(dir)
                    .arg(case.input)
                    .args([batch.as_str(), runtime.arg()]);
                measure(&mut cmd)?
            }
        };
        let timing = if matches!(side, Side::St { .. }) {
            &run.stderr
        } else {
            &run.stdout
        };
        let work = match (json_field(timing, "flops"), json_field(timing, "tokens")) {
            (Ok(flops), Ok(tokens)) => Some((flops, tokens)),
            _ => None,
        };
        Ok(EncodeRun {
            sentences_per_s: case.sentences as f64 / json_field(timing, "encode_s")?,
            peak_rss_mb: run.peak_rss_mb,
            work,
            weight_bytes: json_field(timing, "weight_bytes").ok(),
        })
    }

    /// Every side of `case` in turn, warm-ups first, then `runs` timed rounds: one row of
    /// medians, and st's `(flops, tokens)` for the input.
    fn encode(&self, case: EncodeCase) -> Result<(EncodeRow, Option<(f64, f64)>)> {
        let sides: Vec<&Side> = case
            .sides
            .iter()
            .filter(|s| !is_onnx(s) || case.model.onnx_dir.is_some())
            .collect();
        eprintln!(
            "encode: {} × {} ({}), batch {}, {} sides",
            case.sentences,
            case.measure,
            case.model.name,
            case.batch,
            sides.len()
        );
        let mut rates = vec![Vec::new(); sides.len()];
        let mut rss = vec![0f64; sides.len()];
        let mut weights = vec![None; sides.len()];
        let mut work = None;
        for round in 0..self.runs + self.warmups {
            for (k, side) in sides.iter().enumerate() {
                let run = self.encode_once(side, &case)?;
                work = work.or(run.work);
                weights[k] = run.weight_bytes;
                if round >= self.warmups {
                    rates[k].push(run.sentences_per_s);
                    rss[k] = rss[k].max(run.peak_rss_mb);
                }
            }
        }
        let results = sides
            .into_iter()
            .zip(rates.into_iter().zip(rss).zip(weights))
            .map(|(side, ((rates, peak_rss_mb), weight_bytes))| SideRate {
                side: side.clone(),
                sentences_per_s: median(rates),
                peak_rss_mb,
                weight_mb: weight_bytes.map(|b| b / 1e6),
            })
            .collect();
        let row = EncodeRow {
            measure: case.measure.into(),
            model: case.model.name.into(),
            batch: case.batch,
            sentences: case.sentences,
            results,
        };
        Ok((row, work))
    }

    /// How far each reduced dtype moves the embeddings: minimum cosine to the same program's
    /// float32 embeddings over a sample of the bench sentences.
    fn quality(&self, model: &Model, texts: &[String]) -> Result<Vec<Quality>> {
        let sample_n = if self.settings.quick { 50 } else { 200 };
        let sample = self.write_input("sample.txt", &texts[..sample_n.min(texts.len())])?;
        let mut out = Vec::new();
        for backend in &self.settings.backends {
            let dtype = reduced_dtype(backend);
            let full = self.st_embeddings(backend, "float32", &model.dir, &sample)?;
            let reduced = self.st_embeddings(backend, dtype, &model.dir, &sample)?;
            out.push(Quality {
                side: Side::st(backend, dtype),
                min_cosine_to_fp32: min_cosine(&full, &reduced),
            });
        }
        if let Some(onnx_dir) = &model.onnx_dir {
            let run = measure(
                self.python(Runtime::Onnx)
                    .arg("onnx-cosine")
                    .arg(onnx_dir)
                    .arg(&sample),
            )?;
            out.push(Quality {
                side: Side::Python {
                    runtime: Runtime::OnnxInt8,
                },
                min_cosine_to_fp32: json_field(&run.stdout, "min_cosine")?,
            });
        }
        Ok(out)
    }

    fn st_embeddings(
        &self,
        backend: &str,
        dtype: &str,
        model: &Path,
        input: &Path,
    ) -> Result<Vec<Vec<f64>>> {
        let out = self.work.join(format!("sample-{backend}-{dtype}.jsonl"));
        measure(
            self.st(backend)
                .args(["encode", "--dtype", dtype, "--model"])
                .arg(model)
                .arg("--input")
                .arg(input)
                .arg("--output")
                .arg(&out),
        )?;
        std::fs::read_to_string(&out)?
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)?;
                Ok(v["embedding"]
                    .as_array()
                    .context("no embedding")?
                    .iter()
                    .filter_map(|x| x.as_f64())
                    .collect())
            })
            .collect()
    }

    /// STS-B test Spearman of flex in float32 and int8 (the int8 goal: within 0.5 of float32).
    fn stsb(&self) -> Result<Vec<Sts>> {
        let lookup = st_hub::datasets::Lookup::from_env(Some(&self.paths.root));
        let data = lookup
            .dataset("stsb", &mut |m| eprintln!("{m}"))?
            .join("sts-test.csv");
        let mut out = Vec::new();
        for dtype in ["float32", "int8"] {
            let run = measure(
                self.st("flex")
                    .args(["eval", "sts", "--json", "--dtype", dtype, "--model"])
                    .arg(&self.paths.minilm)
                    .arg("--data")
                    .arg(&data),
            )?;
            out.push(Sts {
                side: Side::st("flex", dtype),
                spearman: json_field(&run.stdout, "spearman_cosine")?,
            });
        }
        Ok(out)
    }

    /// Each side's matmul peak (best of 5 2048×2048 products) for the compute-ceiling table.
    fn ceiling(&self, report: &Report) -> Result<Vec<report::Ceiling>> {
        let headline = &report.encode[0];
        let mut out = Vec::new();
        for r in &headline.results {
            let peak = match &r.side {
                Side::St { backend, dtype } if dtype != "int8" => json_field(
                    &measure(self.st(backend).args([
                        "info",
                        "--matmul-peak",
                        "--dtype",
                        dtype,
                        "--json",
                    ]))?
                    .stdout,
                    "gflop_per_s",
                )?,
                Side::Python {
                    runtime: Runtime::Torch,
                } => json_field(
                    &measure(self.python(Runtime::Torch).args(["matmul", "2048", "fp32"]))?.stdout,
                    "gflop_per_s",
                )?,
                _ => continue,
            };
            out.push(report::Ceiling {
                side: r.side.clone(),
                matmul_peak_gflops: peak,
                encode_gflops: r.sentences_per_s * report.flops_per_sentence / 1e9,
            });
        }
        Ok(out)
    }

    /// Cold start to the first embedding, and its peak RSS: each backend in float32 (and flex
    /// in int8, whose weights are quantized at load), against Python.
    fn cold_start(&self) -> Result<Vec<ColdStart>> {
        let mut sides = self.st_sides(&["float32"]);
        sides.insert(1, Side::st("flex", "int8"));
        sides.push(Side::TORCH);
        let mut times = vec![Vec::new(); sides.len()];
        let mut rss = vec![0f64; sides.len()];
        for _ in 0..self.runs.max(2) {
            for (k, side) in sides.iter().enumerate() {
                let run = self.cold_once(side)?;
                times[k].push(run.wall_s);
                rss[k] = rss[k].max(run.peak_rss_mb);
            }
        }
        Ok(sides
            .into_iter()
            .zip(times.into_iter().zip(rss))
            .map(|(side, (t, peak_rss_mb))| ColdStart {
                side,
                seconds: median(t),
                peak_rss_mb,
            })
            .collect())
    }

    fn cold_once(&self, side: &Side) -> Result<Run> {
        match side {
            Side::St { backend, dtype } => measure(
                self.st(backend)
                    .args(["encode", "--dtype", dtype, "--model"])
                    .arg(&self.paths.minilm)
                    .arg("hello world"),
            ),
            Side::Python { runtime } => {
                measure(self.python(*runtime).arg("cold").arg(&self.paths.minilm))
            }
        }
    }

    /// One training step (encoder + two classification heads, batch 32 × 64 tokens) per
    /// backend and in PyTorch; the first steps (warm-up) are not counted.
    fn training(&self) -> Result<Vec<TrainStep>> {
        let steps = if self.settings.quick { 8 } else { 25 };
        let data = self.work.join("train.jsonl");
        std::fs::write(&data, train_lines())?;
        let mut out = Vec::new();
        for backend in &self.settings.backends {
            let dir = self.work.join(format!("train-run-{backend}"));
            let _ = std::fs::remove_dir_all(&dir);
            measure(
                self.st(backend)
                    .args(["train", "--model"])
                    .arg(&self.paths.minilm)
                    .arg("--train")
                    .arg(&data)
                    .arg("--output")
                    .arg(&dir)
                    .args(["--max-steps", &steps.to_string()])
                    .args(["--batch-size", "32", "--max-seq-length", "64"]),
            )?;
            let ms: Vec<f64> = st_runlog::read_log(&dir.join(st_runlog::METRICS_LOG))?
                .into_iter()
                .filter_map(|r| match r {
                    st_runlog::LogRecord::Step(s) => Some(s.step_ms),
                    st_runlog::LogRecord::Eval(_) | st_runlog::LogRecord::Test(_) => None,
                })
                .skip(steps.min(5))
                .collect();
            out.push(TrainStep {
                side: Side::st(backend, "float32"),
                step_ms: median(ms),
            });
        }
        let run = measure(
            self.python(Runtime::Torch)
                .arg("train")
                .arg(&self.paths.minilm)
                .arg(&data)
                .arg(steps.to_string()),
        )?;
        let v: serde_json::Value = serde_json::from_str(run.stdout.lines().last().unwrap_or(""))?;
        let ms: Vec<f64> = v["step_ms"]
            .as_array()
            .context("bench.py train printed no step_ms")?
            .iter()
            .filter_map(|v| v.as_f64())
            .skip(steps.min(5))
            .collect();
        out.push(TrainStep {
            side: Side::TORCH,
            step_ms: median(ms),
        });
        Ok(out)
    }
}

/// int8 on flex (no half-float kernels there); bf16 elsewhere.
fn reduced_dtype(backend: &str) -> &'static str {
    if backend == "flex" { "int8" } else { "bf16" }
}

fn is_onnx(side: &Side) -> bool {
    matches!(side, Side::Python { runtime } if *runtime != Runtime::Torch)
}

/// 3–12-word sentences (≤ 16 tokens): per-batch overhead weighs more than the matmuls.
fn short_sentences(n: usize) -> Vec<String> {
    sentences(n, 99)
        .into_iter()
        .map(|s| {
            s.split(' ')
                .take(3 + s.len() % 10)
                .collect::<Vec<_>>()
                .join(" ")
                + "."
        })
        .collect()
}

/// Training rows of ≥ 64 tokens (every row fills the 64-token window), two label sets.
fn train_lines() -> String {
    let mut lines = String::new();
    for (i, t) in sentences(256, 7).iter().enumerate() {
        let row = serde_json::json!({
            "text": format!("{t} {t} {t}"),
            "labels": {
                "topic": format!("t{}", i % 4),
                "sentiment": if i % 3 == 0 { "neg" } else { "pos" },
            },
        });
        lines.push_str(&row.to_string());
        lines.push('\n');
    }
    lines
}

/// The number `key` in the last line of `text` that has it (a JSON object).
fn json_field(text: &str, key: &str) -> Result<f64> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains(&format!("\"{key}\"")))
        .with_context(|| format!("no `{key}` in the output:\n{text}"))?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    v[key]
        .as_f64()
        .with_context(|| format!("`{key}` is not a number in {line}"))
}

fn min_cosine(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let nx = x.iter().map(|v| v * v).sum::<f64>().sqrt();
            let ny = y.iter().map(|v| v * v).sum::<f64>().sqrt();
            dot / (nx * ny)
        })
        .fold(f64::INFINITY, f64::min)
}
