//! `cargo xtask bench`: st against Python sentence-transformers, side by side, same machine,
//! same model, same inputs, same thread count; sides alternate (A B A B) so drift hits both.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::stats::median;

/// What one measured process did.
struct Run {
    wall_s: f64,
    peak_rss_mb: f64,
    stdout: String,
    stderr: String,
}

/// Runs a command to completion, sampling its peak resident set (VmHWM) from /proc.
fn measure(cmd: &mut Command) -> Result<Run> {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let status_path = PathBuf::from(format!("/proc/{}/status", child.id()));
    let mut peak_kb = 0f64;
    let out = loop {
        if let Ok(text) = std::fs::read_to_string(&status_path)
            && let Some(line) = text.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kb: f64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            peak_kb = peak_kb.max(kb);
        }
        if child.try_wait()?.is_some() {
            break child.wait_with_output()?;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let run = Run {
        wall_s: started.elapsed().as_secs_f64(),
        peak_rss_mb: peak_kb / 1024.0,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    if !out.status.success() {
        bail!("{cmd:?} failed:\n{}", run.stderr);
    }
    Ok(run)
}

/// A deterministic generator (SplitMix64) for the benchmark texts.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const WORDS: &[&str] = &[
    "the",
    "a",
    "model",
    "sentence",
    "embedding",
    "quickly",
    "market",
    "river",
    "teacher",
    "computer",
    "garden",
    "music",
    "across",
    "under",
    "bright",
    "quiet",
    "history",
    "science",
    "runs",
    "builds",
    "reads",
    "writes",
    "finds",
    "city",
    "mountain",
    "children",
    "data",
    "small",
    "large",
    "because",
    "while",
    "after",
    "before",
    "network",
    "language",
    "result",
    "today",
    "engineer",
    "library",
    "coffee",
    "weather",
    "morning",
    "evening",
    "answer",
    "question",
    "improves",
    "measures",
    "compares",
    "with",
    "without",
    "every",
    "some",
    "many",
    "new",
    "old",
];

/// `n` English-like sentences of 5–60 words, the same on every machine.
fn sentences(n: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            let len = 5 + rng.below(56);
            let words: Vec<&str> = (0..len).map(|_| WORDS[rng.below(WORDS.len())]).collect();
            let mut s = words.join(" ");
            s.push('.');
            s[..1].to_uppercase() + &s[1..]
        })
        .collect()
}

/// Peak RSS of `st encode` (flex) on 5,000 and on 50,000 input lines, as a markdown paragraph:
/// the encoder streams its input in windows, so the two must be about equal. Lines are short and
/// truncated at 16 tokens so the run takes about a minute; memory, not speed, is measured.
fn streaming_memory(flex_st: &Path, model: &str, work: &Path, threads: &str) -> Result<String> {
    let mut peaks = Vec::new();
    for n in [5_000, 50_000] {
        let input = work.join(format!("stream-{n}.txt"));
        let texts: Vec<String> = sentences(n, 7)
            .into_iter()
            .map(|s| s[..s.len().min(80)].to_string())
            .collect();
        std::fs::write(&input, texts.join("\n") + "\n")?;
        let mut cmd = Command::new(flex_st);
        cmd.args([
            "--threads",
            threads,
            "encode",
            "--model",
            model,
            "--max-seq-length",
            "16",
        ])
        .arg("--input")
        .arg(&input)
        .args(["--output", "/dev/null"]);
        peaks.push(measure(&mut cmd)?.peak_rss_mb);
        let _ = std::fs::remove_file(&input);
    }
    Ok(format!(
        "Memory on long inputs (`st encode --input`, flex, lines truncated at 16 tokens, output \
to `/dev/null`): peak RSS {:.0} MB for 5,000 lines, {:.0} MB for 50,000 ({:.2}×): the input is \
read, sorted and encoded in windows of 4,096 texts and written as it goes.\n",
        peaks[0],
        peaks[1],
        peaks[1] / peaks[0]
    ))
}

pub struct Settings {
    pub quick: bool,
    pub json: bool,
    pub threads: usize,
    /// Backends compiled into `st` and measured, flex first.
    pub backends: Vec<String>,
    /// The default build (flex only), which flex is measured with.
    pub flex_st: PathBuf,
}

pub fn run(
    root: &Path,
    model_dir: &Path,
    python: &Path,
    st: &Path,
    settings: &Settings,
) -> Result<()> {
    let work = root.join("target").join("bench");
    std::fs::create_dir_all(&work)?;
    let (n, runs, train_steps) = if settings.quick {
        (500, 1, 8)
    } else {
        (2000, 3, 25)
    };
    // A warm-up run per side (page cache, lazy init) before the timed ones; --quick times the
    // first run and checks bf16 drift on fewer sentences, to stay under five minutes.
    let (warmups, sample_n) = if settings.quick { (0, 50) } else { (1, 200) };
    let backends = &settings.backends;
    let threads = settings.threads.to_string();
    let texts = sentences(n, 2026);
    let tokens_mean = texts.iter().map(|t| t.split(' ').count()).sum::<usize>() as f64 / n as f64;
    let input = work.join("sentences.txt");
    std::fs::write(&input, texts.join("\n") + "\n")?;
    let bench_py = root.join("xtask/py/bench.py");
    let model = model_dir.to_str().context("model path is not UTF-8")?;
    let py = |args: &[&str]| {
        let mut c = Command::new(python);
        c.arg(&bench_py).args(args);
        c.env("ST_BENCH_THREADS", &threads)
            .env("OMP_NUM_THREADS", &threads);
        c
    };
    let st_cmd = |backend: &str, args: &[&str]| {
        let mut c = Command::new(if backend == "flex" {
            settings.flex_st.as_path()
        } else {
            st
        });
        c.args(["--threads", &threads, "--backend", backend])
            .args(args);
        c.env("RAYON_NUM_THREADS", &threads)
            .env("OMP_NUM_THREADS", &threads);
        c
    };
    // `st encode` of one input file at one --dtype; `extra`: batch size, --timing.
    let st_encode =
        |backend: &str, dtype: &str, input: &Path, output: &str, extra: &[&str]| -> Result<Run> {
            let mut args = vec![
                "encode",
                "--dtype",
                dtype,
                "--model",
                model,
                "--input",
                input.to_str().context("input path is not UTF-8")?,
                "--output",
                output,
            ];
            args.extend_from_slice(extra);
            measure(&mut st_cmd(backend, &args))
        };
    // One timed `st encode` of the whole input: its stderr carries {"encode_s": ...}.
    let encode_timed = |backend: &str, batch: &str, dtype: &str| -> Result<Run> {
        st_encode(
            backend,
            dtype,
            &input,
            "/dev/null",
            &["--batch-size", batch, "--timing"],
        )
    };
    let json_field = |text: &str, key: &str| -> Result<f64> {
        let line = text
            .lines()
            .rev()
            .find(|l| l.contains(key))
            .context("no timing line")?;
        let v: serde_json::Value = serde_json::from_str(line)?;
        v[key].as_f64().context("timing field missing")
    };

    // One row per measure: st's value per backend (in `backends` order), then Python's.
    struct Row {
        name: String,
        st: Vec<f64>,
        python: f64,
        higher_is_better: bool,
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut report = serde_json::Map::new();
    let mut encode_rss = (vec![0f64; backends.len()], 0f64);
    // The FLOPs and tokens the input needs (st counts them; the tokenizer is the same).
    let mut work_done = (0f64, 0f64);
    for batch in [32usize, 128] {
        let b = batch.to_string();
        let mut ours = vec![Vec::new(); backends.len()];
        let mut theirs = Vec::new();
        // Warm every side once (not with --quick), then alternate the sides.
        for i in 0..runs + warmups {
            for (k, backend) in backends.iter().enumerate() {
                let r = encode_timed(backend, &b, "float32")?;
                if i >= warmups {
                    ours[k].push(n as f64 / json_field(&r.stderr, "encode_s")?);
                    encode_rss.0[k] = encode_rss.0[k].max(r.peak_rss_mb);
                }
                work_done = (
                    json_field(&r.stderr, "flops")?,
                    json_field(&r.stderr, "tokens")?,
                );
            }
            let p = measure(&mut py(&["encode", model, input.to_str().unwrap(), &b]))?;
            if i >= warmups {
                theirs.push(n as f64 / json_field(&p.stdout, "encode_s")?);
                encode_rss.1 = encode_rss.1.max(p.peak_rss_mb);
            }
        }
        let st: Vec<f64> = ours.into_iter().map(median).collect();
        let python = median(theirs);
        for (backend, v) in backends.iter().zip(&st) {
            report.insert(format!("encode_b{batch}_{backend}"), (*v).into());
        }
        report.insert(format!("encode_b{batch}_python"), python.into());
        rows.push(Row {
            name: format!("encode, batch {batch} (sentences/s)"),
            st,
            python,
            higher_is_better: true,
        });
    }
    // Reduced precision: every backend in its fast reduced dtype (int8 on flex, which has no
    // half-float kernels; bf16 elsewhere), batch 32, alternating with Python fp32; and how far
    // its embeddings move from its own fp32 ones (minimum cosine over 200 sentences).
    let reduced_dtype = |backend: &str| if backend == "flex" { "int8" } else { "bf16" };
    struct Reduced {
        backend: String,
        dtype: &'static str,
        rate: f64,
        ratio: f64,
        min_cos: f64,
    }
    let sample = work.join("sample.txt");
    std::fs::write(&sample, texts[..sample_n.min(n)].join("\n") + "\n")?;
    let embed = |backend: &str, dtype: &str| -> Result<Vec<Vec<f64>>> {
        let out = work.join(format!("sample-{backend}-{dtype}.jsonl"));
        st_encode(
            backend,
            dtype,
            &sample,
            out.to_str().context("output path is not UTF-8")?,
            &[],
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
    };
    let mut reduced: Vec<Reduced> = Vec::new();
    {
        let mut ours = vec![Vec::new(); backends.len()];
        let mut theirs = Vec::new();
        for i in 0..runs + warmups {
            for (k, backend) in backends.iter().enumerate() {
                let r = encode_timed(backend, "32", reduced_dtype(backend))?;
                if i >= warmups {
                    ours[k].push(n as f64 / json_field(&r.stderr, "encode_s")?);
                }
            }
            let p = measure(&mut py(&["encode", model, input.to_str().unwrap(), "32"]))?;
            if i >= warmups {
                theirs.push(n as f64 / json_field(&p.stdout, "encode_s")?);
            }
        }
        let python = median(theirs);
        for (backend, rates) in backends.iter().zip(ours) {
            let dtype = reduced_dtype(backend);
            let (full, half) = (embed(backend, "float32")?, embed(backend, dtype)?);
            let min_cos = full
                .iter()
                .zip(&half)
                .map(|(a, b)| {
                    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
                    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
                    dot / (na * nb)
                })
                .fold(f64::INFINITY, f64::min);
            let rate = median(rates);
            reduced.push(Reduced {
                backend: backend.clone(),
                dtype,
                rate,
                ratio: rate / python,
                min_cos,
            });
        }
    }
    let mut reduced_table = String::from(
        "| backend | --dtype | encode, batch 32 (sentences/s) | ÷ Python fp32 | min cosine to its fp32 |\n|---|---|---|---|---|\n",
    );
    for r in &reduced {
        reduced_table.push_str(&format!(
            "| {} | {} | {:.1} | {:.2}× | {:.5} |\n",
            r.backend, r.dtype, r.rate, r.ratio, r.min_cos
        ));
    }
    // The best bf16 backend whose embeddings stay within the 0.999 cosine the goal allows.
    let best_reduced = reduced
        .iter()
        .filter(|r| r.dtype == "bf16" && r.min_cos >= 0.999)
        .max_by(|a, b| a.ratio.total_cmp(&b.ratio));
    let flex_int8 = reduced.iter().find(|r| r.dtype == "int8");

    // Compute ceiling: the FLOPs a sentence needs against each side's measured matmul peak
    // (best of 5 2048×2048 products, same backend and threads).
    let flops_per_sentence = work_done.0 / n as f64;
    let tokens_per_sentence = work_done.1 / n as f64;
    let st_peak = |backend: &str, dtype: &str| -> Result<f64> {
        let r = measure(&mut st_cmd(
            backend,
            &["info", "--matmul-peak", "--dtype", dtype, "--json"],
        ))?;
        json_field(&r.stdout, "gflop_per_s")
    };
    // (side, precision, matmul peak GFLOP/s, encode sentences/s at batch 32)
    let mut ceiling: Vec<(String, &str, f64, f64)> = Vec::new();
    for (k, backend) in backends.iter().enumerate() {
        ceiling.push((
            format!("st {backend}"),
            "fp32",
            st_peak(backend, "float32")?,
            rows[0].st[k],
        ));
    }
    for r in reduced.iter().filter(|r| r.dtype == "bf16") {
        let side = format!("st {}", r.backend);
        ceiling.push((side, "bf16", st_peak(&r.backend, "bf16")?, r.rate));
    }
    let python_peak = json_field(
        &measure(&mut py(&["matmul", "2048", "fp32"]))?.stdout,
        "gflop_per_s",
    )?;
    ceiling.push(("Python ST".into(), "fp32", python_peak, rows[0].python));
    let mut ceiling_table = String::from(
        "| side | precision | matmul peak (GFLOP/s) | encode, batch 32 (GFLOP/s) | share of peak | sentences/s at 100% of peak |\n|---|---|---|---|---|---|\n",
    );
    for (side, precision, peak, rate) in &ceiling {
        let achieved = rate * flops_per_sentence / 1e9;
        ceiling_table.push_str(&format!(
            "| {side} | {precision} | {peak:.0} | {achieved:.0} | {:.0}% | {:.0} |\n",
            100.0 * achieved / peak,
            peak * 1e9 / flops_per_sentence
        ));
        let key = side.replace("st ", "").replace("Python ST", "python");
        report.insert(
            format!("matmul_peak_gflops_{key}_{precision}"),
            (*peak).into(),
        );
        report.insert(
            format!("encode_peak_fraction_{key}_{precision}"),
            (achieved / peak).into(),
        );
    }
    report.insert("flops_per_sentence".into(), flops_per_sentence.into());
    report.insert("tokens_per_sentence".into(), tokens_per_sentence.into());

    let mut cold_ours = vec![Vec::new(); backends.len()];
    let mut cold_theirs = Vec::new();
    let mut cold_rss = (vec![0f64; backends.len()], 0f64);
    for _ in 0..runs.max(2) {
        for (k, backend) in backends.iter().enumerate() {
            let r = measure(&mut st_cmd(
                backend,
                &["encode", "--model", model, "hello world"],
            ))?;
            cold_ours[k].push(r.wall_s);
            cold_rss.0[k] = cold_rss.0[k].max(r.peak_rss_mb);
        }
        let p = measure(&mut py(&["cold", model]))?;
        cold_theirs.push(p.wall_s);
        cold_rss.1 = cold_rss.1.max(p.peak_rss_mb);
    }
    rows.push(Row {
        name: "cold start to first embedding (s)".into(),
        st: cold_ours.into_iter().map(median).collect(),
        python: median(cold_theirs),
        higher_is_better: false,
    });
    rows.push(Row {
        name: "peak RSS, encode (MB)".into(),
        st: encode_rss.0,
        python: encode_rss.1,
        higher_is_better: false,
    });
    rows.push(Row {
        name: "peak RSS, cold start (MB)".into(),
        st: cold_rss.0,
        python: cold_rss.1,
        higher_is_better: false,
    });

    // Training step: encoder + two heads, batch 32, 64 tokens.
    let train_data = work.join("train.jsonl");
    let long = sentences(256, 7);
    let mut lines = String::new();
    for (i, t) in long.iter().enumerate() {
        let text = format!("{t} {t} {t}"); // ≥ 64 tokens: every row fills the 64-token window
        lines.push_str(&serde_json::json!({"text": text, "labels": {"topic": format!("t{}", i % 4), "sentiment": if i % 3 == 0 {"neg"} else {"pos"}}}).to_string());
        lines.push('\n');
    }
    std::fs::write(&train_data, lines)?;
    let steps = train_steps.to_string();
    let mut step_ms = Vec::new();
    for backend in backends {
        let out_dir = work.join(format!("train-run-{backend}"));
        let _ = std::fs::remove_dir_all(&out_dir);
        measure(&mut st_cmd(
            backend,
            &[
                "train",
                "--model",
                model,
                "--train",
                train_data.to_str().unwrap(),
                "--output",
                out_dir.to_str().unwrap(),
                "--max-steps",
                &steps,
                "--batch-size",
                "32",
                "--max-seq-length",
                "64",
            ],
        ))?;
        let log = std::fs::read_to_string(out_dir.join("metrics.jsonl"))?;
        let ms: Vec<f64> = log
            .lines()
            .filter_map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()?
                    .get("step_ms")?
                    .as_f64()
            })
            .skip(train_steps.min(5))
            .collect();
        step_ms.push(median(ms));
    }
    let p = measure(&mut py(&[
        "train",
        model,
        train_data.to_str().unwrap(),
        &steps,
    ]))?;
    let pv: serde_json::Value = serde_json::from_str(p.stdout.lines().last().unwrap_or("{}"))?;
    let py_steps: Vec<f64> = pv["step_ms"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_f64())
                .skip(train_steps.min(5))
                .collect()
        })
        .unwrap_or_default();
    rows.push(Row {
        name: "training step, batch 32 × 64 tokens, 2 heads (ms)".into(),
        st: step_ms,
        python: median(py_steps),
        higher_is_better: false,
    });

    // Short sentences (3–12 words, ≤ 16 tokens): per-batch overhead weighs more than matmuls.
    let short_input = work.join("short.txt");
    let short: Vec<String> = sentences(n, 99)
        .into_iter()
        .map(|s| {
            s.split(' ')
                .take(3 + s.len() % 10)
                .collect::<Vec<_>>()
                .join(" ")
                + "."
        })
        .collect();
    std::fs::write(&short_input, short.join("\n") + "\n")?;
    let (mut ours, mut theirs) = (vec![Vec::new(); backends.len()], Vec::new());
    for i in 0..runs + warmups {
        for (k, backend) in backends.iter().enumerate() {
            let r = st_encode(
                backend,
                "float32",
                &short_input,
                "/dev/null",
                &["--batch-size", "32", "--timing"],
            )?;
            if i >= warmups {
                ours[k].push(n as f64 / json_field(&r.stderr, "encode_s")?);
            }
        }
        let p = measure(&mut py(&[
            "encode",
            model,
            short_input.to_str().unwrap(),
            "32",
        ]))?;
        if i >= warmups {
            theirs.push(n as f64 / json_field(&p.stdout, "encode_s")?);
        }
    }
    rows.push(Row {
        name: "encode short sentences (≤ 16 tokens), batch 32 (sentences/s)".into(),
        st: ours.into_iter().map(median).collect(),
        python: median(theirs),
        higher_is_better: true,
    });
    let short_row = rows.len() - 1;

    // Ratios st ÷ Python; "best" picks the backend with the best ratio for that measure.
    let best = |row: &Row| -> (f64, &str) {
        let mut pick = (f64::NAN, "");
        for (v, b) in row.st.iter().zip(backends) {
            let r = v / row.python;
            let better = if row.higher_is_better {
                r > pick.0
            } else {
                r < pick.0
            };
            if pick.0.is_nan() || better {
                pick = (r, b);
            }
        }
        pick
    };
    let (enc_best, enc_backend) = best(&rows[0]);
    report.insert("encode_throughput_ratio".into(), enc_best.into());
    report.insert("encode_throughput_ratio_backend".into(), enc_backend.into());
    report.insert(
        "encode_throughput_ratio_default".into(),
        (rows[0].st[0] / rows[0].python).into(),
    );
    let (b128, b128_backend) = best(&rows[1]);
    report.insert("encode_throughput_ratio_b128".into(), b128.into());
    report.insert(
        "encode_throughput_ratio_b128_backend".into(),
        b128_backend.into(),
    );
    for r in &reduced {
        let (b, d) = (&r.backend, r.dtype);
        report.insert(format!("{d}_encode_b32_{b}"), r.rate.into());
        report.insert(format!("{d}_ratio_{b}"), r.ratio.into());
        report.insert(format!("{d}_min_cosine_{b}"), r.min_cos.into());
    }
    match best_reduced {
        Some(r) => {
            report.insert("reduced_precision_ratio".into(), r.ratio.into());
            report.insert(
                "reduced_precision_backend".into(),
                format!("{} bf16", r.backend).into(),
            );
            report.insert("reduced_precision_min_cosine".into(), r.min_cos.into());
        }
        None => {
            report.insert("reduced_precision_ratio".into(), serde_json::Value::Null);
        }
    }
    // Cold start and memory are goals for the default build, which is flex.
    report.insert("cold_start_backend".into(), "flex".into());
    report.insert("peak_rss_backend".into(), "flex".into());
    report.insert(
        "encode_throughput_ratio_default_backend".into(),
        "flex".into(),
    );
    report.insert("cold_start_s".into(), rows[2].st[0].into());
    report.insert(
        "cold_start_ratio".into(),
        (rows[2].st[0] / rows[2].python).into(),
    );
    report.insert(
        "peak_rss_ratio".into(),
        (rows[3].st[0] / rows[3].python).into(),
    );
    let (train_best, train_backend) = best(&rows[5]);
    report.insert("train_step_ratio".into(), train_best.into());
    report.insert("train_step_ratio_backend".into(), train_backend.into());
    for (b, v) in backends.iter().zip(&rows[5].st) {
        report.insert(format!("train_step_ms_{b}"), (*v).into());
    }
    report.insert("train_step_ms_pytorch".into(), rows[5].python.into());
    report.insert(
        "encode_short_ratio_flex".into(),
        (rows[short_row].st[0] / rows[short_row].python).into(),
    );
    report.insert("backends".into(), backends.clone().into());
    report.insert("threads".into(), settings.threads.into());
    report.insert("sentences".into(), n.into());
    report.insert("words_per_sentence_mean".into(), tokens_mean.into());

    let mut table = String::from("| measure |");
    for b in backends {
        table.push_str(&format!(" st {b} |"));
    }
    table.push_str(" Python ST / PyTorch |");
    for b in backends {
        table.push_str(&format!(" {b} ÷ Python |"));
    }
    table.push_str(" |\n|---|");
    table.push_str(&"---|".repeat(2 * backends.len() + 2));
    table.push('\n');
    for row in &rows {
        table.push_str(&format!("| {} |", row.name));
        for v in &row.st {
            table.push_str(&format!(" {v:.2} |"));
        }
        table.push_str(&format!(" {:.2} |", row.python));
        for v in &row.st {
            table.push_str(&format!(" {:.2}× |", v / row.python));
        }
        table.push_str(if row.higher_is_better {
            " higher is better |\n"
        } else {
            " lower is better |\n"
        });
    }
    // Where each goal of the performance issue stands.
    // `why`: the section of performance.md that explains a miss.
    let goal = |name: &str, value: f64, target: f64, higher: bool, from: &str, why: &str| {
        let met = if higher {
            value >= target
        } else {
            value <= target
        };
        let shown = format!("{target:.2}");
        let shown = shown.trim_end_matches('0').trim_end_matches('.');
        format!(
            "| {name} | {} {shown} | {value:.2} ({from}) | {} |\n",
            if higher { "≥" } else { "≤" },
            if met {
                "met".to_string()
            } else {
                let by = if higher {
                    target - value
                } else {
                    value - target
                };
                format!("missed by {by:.2}: [why](performance.md#{why})")
            }
        )
    };
    let mut goals = String::from("| goal | target | measured | status |\n|---|---|---|---|\n");
    goals.push_str(&goal(
        "fp32 encode ÷ Python, best backend (batch 32)",
        enc_best,
        1.2,
        true,
        enc_backend,
        "the-compute-ceiling",
    ));
    goals.push_str(&goal(
        "fp32 encode ÷ Python, flex (batch 32)",
        rows[0].st[0] / rows[0].python,
        1.0,
        true,
        "flex",
        "encode-on-flex-the-default-build-why-10-python-is-out-of-reach",
    ));
    goals.push_str(&goal(
        "fp32 encode ÷ Python, flex, short sentences (batch 32)",
        rows[short_row].st[0] / rows[short_row].python,
        1.0,
        true,
        "flex",
        "encode-on-flex-the-default-build-why-10-python-is-out-of-reach",
    ));
    match flex_int8 {
        Some(r) if r.min_cos >= 0.99 => goals.push_str(&goal(
            &format!(
                "int8 encode ÷ Python fp32, flex (min cosine to fp32 {:.5})",
                r.min_cos
            ),
            r.ratio,
            2.5,
            true,
            "flex",
            "int8-on-flex",
        )),
        Some(r) => goals.push_str(&format!(
            "| int8 encode ÷ Python fp32, flex | ≥ 2.5, cosine ≥ 0.99 | min cosine {:.5} | missed |\n",
            r.min_cos
        )),
        None => {}
    }
    match best_reduced {
        Some(r) => goals.push_str(&goal(
            &format!(
                "bf16 encode ÷ Python fp32, best backend (min cosine to fp32 {:.5})",
                r.min_cos
            ),
            r.ratio,
            2.0,
            true,
            &r.backend,
            "encode-on-tch-one-reshape-worth-46-in-bf16",
        )),
        None => goals.push_str(
            "| bf16 encode ÷ Python fp32 | ≥ 2 | no backend kept cosine ≥ 0.999 | missed |\n",
        ),
    }
    goals.push_str(&goal(
        "cold start (s), default build",
        rows[2].st[0],
        0.3,
        false,
        "flex",
        "what-meets-the-goals",
    ));
    goals.push_str(&goal(
        "peak RSS ÷ Python, encode, default build",
        rows[3].st[0] / rows[3].python,
        1.0 / 3.0,
        false,
        "flex",
        "what-meets-the-goals",
    ));
    for (backend, target) in [("flex", 1.5), ("tch", 1.0)] {
        if let Some(k) = backends.iter().position(|b| b == backend) {
            goals.push_str(&goal(
                &format!("training step ÷ PyTorch, {backend}"),
                rows[5].st[k] / rows[5].python,
                target,
                false,
                backend,
                "training-step",
            ));
        }
    }

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mflop = flops_per_sentence / 1e6;
    let memory = if settings.quick {
        String::new()
    } else {
        streaming_memory(&settings.flex_st, model, &work, &threads)?
    };
    let doc = format!(
        "# Benchmarks\n\nWritten by `cargo xtask bench --backends {}` on {} ({} threads per side, {} CPUs \
visible), all-MiniLM-L6-v2, {n} generated sentences ({tokens_mean:.1} words mean), median of {runs} \
run(s) per side after a warm-up, sides alternating. Python: sentence-transformers + torch from \
`cargo xtask pyenv`. st: release build, fp32; flex is measured with the default build (no \
libtorch to load), the other backends with a build that has their features.\n\n{table}\n\
Reduced precision (`--dtype int8` on flex: projections in int8, the rest f32; `--dtype bf16` \
elsewhere: BERT weights and activations in bfloat16; pooling in f32), alternating with the same \
Python fp32 runs:\n\n{reduced_table}\n{memory}\n\
## Goals\n\n{goals}\n\
## Compute ceiling\n\nall-MiniLM-L6-v2 needs {mflop:.1} MFLOP per sentence on this input \
({tokens_per_sentence:.1} tokens mean; `BertConfig::forward_flops`, padding not counted). Matmul \
peak: best of 5 products of two 2048×2048 matrices on the same backend and threads \
(`st info --matmul-peak`; `torch.matmul` for Python).\n\n{ceiling_table}\n\
Ratios matter more than absolute times on shared machines. Where the time goes and why goals \
are missed: [performance.md](performance.md); which backend to pick: [backends.md](backends.md).\n",
        backends.join(","),
        cpu,
        settings.threads,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    );
    if !settings.quick {
        std::fs::write(root.join("docs/benchmarks.md"), &doc)?;
    }
    eprintln!("{table}\n{reduced_table}\n{ceiling_table}");
    if settings.json {
        println!("{}", serde_json::Value::Object(report));
    }
    Ok(())
}
