//! Measured processes and the benchmark's inputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// What one measured process did.
pub struct Run {
    pub wall_s: f64,
    pub peak_rss_mb: f64,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command to completion, sampling its peak resident set (VmHWM) from /proc.
pub fn measure(cmd: &mut Command) -> Result<Run> {
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
pub fn sentences(n: usize, seed: u64) -> Vec<String> {
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

/// Peak RSS of `st encode` (flex) on 5,000 and on 50,000 input lines: the encoder streams its
/// input in windows, so the two must be about equal. Lines are short and truncated at 16 tokens
/// so the run takes about a minute; memory, not speed, is measured.
pub fn streaming_memory(
    flex_st: &Path,
    model: &Path,
    work: &Path,
    threads: &str,
) -> Result<super::report::Streaming> {
    let mut peaks = Vec::new();
    for n in [5_000, 50_000] {
        let input = work.join(format!("stream-{n}.txt"));
        let texts: Vec<String> = sentences(n, 7)
            .into_iter()
            .map(|s| s[..s.len().min(80)].to_string())
            .collect();
        std::fs::write(&input, texts.join("\n") + "\n")?;
        let mut cmd = Command::new(flex_st);
        cmd.args(["--threads", threads, "encode", "--max-seq-length", "16"])
            .arg("--model")
            .arg(model)
            .arg("--input")
            .arg(&input)
            .args(["--output", "/dev/null"]);
        peaks.push(measure(&mut cmd)?.peak_rss_mb);
        let _ = std::fs::remove_file(&input);
    }
    Ok(super::report::Streaming {
        peak_rss_mb_5k_lines: peaks[0],
        peak_rss_mb_50k_lines: peaks[1],
    })
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`: a killed
/// bench leaves the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}
