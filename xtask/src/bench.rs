//! `cargo xtask bench`: st against Python sentence-transformers, side by side, same machine,
//! same model, same inputs, same thread count; sides alternate (A B A B) so drift hits both.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
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

pub struct Settings {
    pub quick: bool,
    pub json: bool,
    pub threads: usize,
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
    let st_cmd = |args: &[&str]| {
        let mut c = Command::new(st);
        c.args(["--threads", &threads]).args(args);
        c.env("RAYON_NUM_THREADS", &threads);
        c
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

    let mut rows: Vec<(String, f64, f64, String)> = Vec::new();
    let mut report = serde_json::Map::new();
    let mut encode_rss = (0f64, 0f64);
    for batch in [32usize, 128] {
        let b = batch.to_string();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        // Warm both sides once (page cache, lazy init), then alternate.
        for i in 0..=runs {
            let r = measure(&mut st_cmd(&[
                "encode",
                "--model",
                model,
                "--input",
                input.to_str().unwrap(),
                "--output",
                "/dev/null",
                "--batch-size",
                &b,
                "--timing",
            ]))?;
            let p = measure(&mut py(&["encode", model, input.to_str().unwrap(), &b]))?;
            if i > 0 {
                ours.push(n as f64 / json_field(&r.stderr, "encode_s")?);
                theirs.push(n as f64 / json_field(&p.stdout, "encode_s")?);
                encode_rss = (
                    encode_rss.0.max(r.peak_rss_mb),
                    encode_rss.1.max(p.peak_rss_mb),
                );
            }
        }
        let (o, t) = (median(ours), median(theirs));
        rows.push((
            format!("encode, batch {batch} (sentences/s)"),
            o,
            t,
            "higher is better".into(),
        ));
        report.insert(format!("encode_b{batch}_st"), o.into());
        report.insert(format!("encode_b{batch}_python"), t.into());
    }
    let (mut cold_ours, mut cold_theirs) = (Vec::new(), Vec::new());
    let mut cold_rss = (0f64, 0f64);
    for _ in 0..runs.max(2) {
        let r = measure(&mut st_cmd(&["encode", "--model", model, "hello world"]))?;
        let p = measure(&mut py(&["cold", model]))?;
        cold_ours.push(r.wall_s);
        cold_theirs.push(p.wall_s);
        cold_rss = (cold_rss.0.max(r.peak_rss_mb), cold_rss.1.max(p.peak_rss_mb));
    }
    let (co, ct) = (median(cold_ours), median(cold_theirs));
    rows.push((
        "cold start to first embedding (s)".into(),
        co,
        ct,
        "lower is better".into(),
    ));
    rows.push((
        "peak RSS, encode (MB)".into(),
        encode_rss.0,
        encode_rss.1,
        "lower is better".into(),
    ));
    rows.push((
        "peak RSS, cold start (MB)".into(),
        cold_rss.0,
        cold_rss.1,
        "lower is better".into(),
    ));

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
    let out_dir = work.join("train-run");
    let steps = train_steps.to_string();
    let r = measure(&mut st_cmd(&[
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
    ]))?;
    let _ = r;
    let log = std::fs::read_to_string(out_dir.join("metrics.jsonl"))?;
    let st_steps: Vec<f64> = log
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()?
                .get("step_ms")?
                .as_f64()
        })
        .skip(train_steps.min(5))
        .collect();
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
    let (so, sp) = (median(st_steps), median(py_steps));
    rows.push((
        "training step, batch 32 × 64 tokens, 2 heads (ms)".into(),
        so,
        sp,
        "lower is better".into(),
    ));

    let ratio = |a: f64, b: f64| a / b;
    report.insert(
        "encode_throughput_ratio".into(),
        ratio(rows[0].1, rows[0].2).into(),
    );
    report.insert(
        "encode_throughput_ratio_default".into(),
        ratio(rows[0].1, rows[0].2).into(),
    );
    report.insert(
        "encode_throughput_ratio_b128".into(),
        ratio(rows[1].1, rows[1].2).into(),
    );
    report.insert("reduced_precision_ratio".into(), serde_json::Value::Null);
    report.insert("cold_start_s".into(), co.into());
    report.insert("cold_start_ratio".into(), ratio(co, ct).into());
    report.insert(
        "peak_rss_ratio".into(),
        ratio(encode_rss.0, encode_rss.1).into(),
    );
    report.insert("train_step_ratio".into(), ratio(so, sp).into());
    report.insert("backend".into(), "flex".into());
    report.insert("threads".into(), settings.threads.into());
    report.insert("sentences".into(), n.into());
    report.insert("words_per_sentence_mean".into(), tokens_mean.into());

    let mut table = String::from(
        "| measure | st (flex) | Python ST / PyTorch | st ÷ Python | |\n|---|---|---|---|---|\n",
    );
    for (name, o, t, note) in &rows {
        table.push_str(&format!(
            "| {name} | {o:.2} | {t:.2} | {:.2}× | {note} |\n",
            o / t
        ));
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let doc = format!(
        "# Benchmarks\n\nWritten by `cargo xtask bench{}` on {} ({} threads per side, {} CPUs visible), \
all-MiniLM-L6-v2, {n} generated sentences ({tokens_mean:.1} words mean), median of {runs} run(s) \
per side after a warm-up, sides alternating. Python: sentence-transformers + torch from \
`cargo xtask pyenv`. st: release build, flex backend.\n\n{table}\n\
Ratios matter more than absolute times on shared machines. Reduced-precision modes and other \
backends are not benchmarked yet. Where the time goes: [performance.md](performance.md).\n",
        if settings.quick { " --quick" } else { "" },
        cpu,
        settings.threads,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    );
    if !settings.quick {
        std::fs::write(root.join("docs/benchmarks.md"), &doc)?;
    }
    eprintln!("{table}");
    if settings.json {
        println!("{}", serde_json::Value::Object(report));
    }
    Ok(())
}
