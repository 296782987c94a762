//! `cargo xtask experiments [TABLE...] [--seeds 42,43,44] [--backend B]`: reruns the training
//! experiments in `docs/experiments/TABLE/*.toml` and writes `docs/experiments/TABLE.md`.
//!
//! Each TOML file is one row, an ordinary `st train --config` file. Rows run in file-name order;
//! a row whose first line is `# start_from = "ROW"` starts from that row's trained model (same
//! seed): transfer learning and "pre-train a head, then freeze it". A row whose first line is
//! `# stage` is a starting point only and gets no line of its own in the table. Paths to data
//! are relative to the repository, as `../shared/datasets/...`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

#[derive(Clone)]
pub struct RunResult {
    metrics: BTreeMap<String, f64>,
    trainable: u64,
    step_ms: f64,
    steps: u64,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Runs already done in this invocation, by their config minus the output line: tables that
/// share a row (the plain fine-tune is the baseline of three tables) train it once.
type Done = std::cell::RefCell<BTreeMap<String, (PathBuf, RunResult)>>;

/// The datasets the experiment configs name (as `../shared/datasets/NAME/...`).
pub const DATASETS: &[&str] = &["trec", "sst2", "snips", "stsb", "sick", "msrp"];

pub struct Experiments<'a> {
    pub done: Done,
    pub root: &'a Path,
    pub st: &'a Path,
    /// sha256 of the `st` binary: part of every cached result's key, so a rebuilt `st`
    /// reruns the rows instead of reusing numbers another binary produced.
    pub st_sha256: String,
    pub backend: &'a str,
    pub model: &'a Path,
    pub datasets: PathBuf,
    pub seeds: Vec<u64>,
}

impl Experiments<'_> {
    fn run_row(
        &self,
        config: &Path,
        out: &Path,
        seed: u64,
        start: Option<&Path>,
    ) -> Result<RunResult> {
        let text = std::fs::read_to_string(config)
            .with_context(|| format!("reading {}", config.display()))?;
        // Top-level keys come before the first table, so prepending overrides is valid TOML
        // once the originals are dropped.
        let model = start.unwrap_or(self.model);
        let mut body: Vec<&str> = Vec::new();
        for line in text.lines() {
            let key = line.split('=').next().unwrap_or("").trim();
            if matches!(key, "model" | "output" | "seed") && !line.trim_start().starts_with('#') {
                continue;
            }
            body.push(line);
        }
        let effective = format!(
            "model = {:?}\noutput = {:?}\nseed = {seed}\n{}\n",
            model.display().to_string(),
            out.display().to_string(),
            body.join("\n")
        );
        let effective =
            effective.replace("../shared/datasets", &self.datasets.display().to_string());
        std::fs::create_dir_all(out.parent().expect("runs live in a folder"))?;
        let key: String = effective
            .lines()
            .filter(|l| !l.starts_with("output = ") && !l.starts_with('#') && !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        // A finished run of the same config and backend (an earlier, interrupted invocation) is
        // kept: reruns resume where they stopped. Delete target/experiments to start over.
        let saved = out.with_extension("result.json");
        let key = format!("backend {}\nst {}\n{key}", self.backend, self.st_sha256);
        if let Ok(text) = std::fs::read_to_string(&saved)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && v["key"].as_str() == Some(key.as_str())
            && out.join("metrics.jsonl").is_file()
        {
            eprintln!("   finished earlier: {}", saved.display());
            let result = RunResult {
                metrics: serde_json::from_value(v["metrics"].clone())?,
                trainable: v["trainable"].as_u64().unwrap_or(0),
                step_ms: v["step_ms"].as_f64().unwrap_or(f64::NAN),
                steps: v["steps"].as_u64().unwrap_or(0),
            };
            self.done
                .borrow_mut()
                .insert(key, (out.to_path_buf(), result.clone()));
            return Ok(result);
        }
        let _ = std::fs::remove_dir_all(out);
        let _ = std::fs::remove_file(out);
        if let Some((dir, result)) = self.done.borrow().get(&key) {
            eprintln!("   same config as {}: reusing it", dir.display());
            #[cfg(unix)]
            std::os::unix::fs::symlink(dir, out)?;
            return Ok(result.clone());
        }
        let effective_path = out.with_extension("toml");
        std::fs::write(&effective_path, effective)?;
        let result = self.train(config, &effective_path, out)?;
        std::fs::write(
            &saved,
            serde_json::json!({
                "key": key,
                "st_sha256": self.st_sha256,
                "metrics": result.metrics,
                "trainable": result.trainable,
                "step_ms": result.step_ms,
                "steps": result.steps,
            })
            .to_string(),
        )?;
        // The run is finished: its resume state (weights + AdamW moments, ~4× the model) is
        // only dead weight on disk. The model and metrics.jsonl stay for `start_from` and plots.
        let resume = out.join("resume");
        if resume.is_dir() {
            std::fs::remove_dir_all(&resume)
                .with_context(|| format!("removing {}", resume.display()))?;
        }
        self.done
            .borrow_mut()
            .insert(key, (out.to_path_buf(), result.clone()));
        Ok(result)
    }

    /// Runs every row of one table for every seed and writes its Markdown table.
    pub fn run_table(&self, table: &str) -> Result<()> {
        let dir = self.root.join("docs/experiments").join(table);
        let mut rows: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("no experiment table {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        // By the number a config's name starts with, so row 10 follows row 9.
        rows.sort_by_cached_key(|p| {
            let name = p
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
            (digits.parse::<u64>().unwrap_or(u64::MAX), name)
        });
        let work = self.root.join("target/experiments").join(table);
        // row name → per-seed results
        let mut results: Vec<(String, String, Vec<RunResult>)> = Vec::new();
        for row in &rows {
            let name = row.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(row)?;
            let first = text.lines().next().unwrap_or("");
            let stage = first.trim() == "# stage";
            let start_from = first
                .strip_prefix("# start_from = ")
                .map(|s| s.trim().trim_matches('"').to_string());
            let label = text
                .lines()
                .find_map(|l| l.strip_prefix("# row: "))
                .unwrap_or(&name)
                .to_string();
            let mut per_seed = Vec::new();
            for &seed in &self.seeds {
                let out = work.join(format!("{name}-s{seed}"));
                let start = start_from
                    .as_ref()
                    .map(|s| work.join(format!("{s}-s{seed}")));
                eprintln!("== {table}/{name} seed {seed}");
                let r = self.run_row(row, &out, seed, start.as_deref())?;
                eprintln!(
                    "   {:?}, {} trainable, {:.0} ms/step",
                    r.metrics, r.trainable, r.step_ms
                );
                per_seed.push(r);
            }
            if !stage {
                self.plot_first_seed(table, &name, &work)?;
                results.push((name, label, per_seed));
            }
        }
        let md = self.markdown(table, &results);
        let path = self
            .root
            .join("docs/experiments")
            .join(format!("{table}.md"));
        std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
        println!("{md}");
        Ok(())
    }

    /// Runs `st train --json` on the effective config and reads its summary and log.
    fn train(&self, config: &Path, effective_path: &Path, out: &Path) -> Result<RunResult> {
        let output = Command::new(self.st)
            .current_dir(self.root)
            .args(["--backend", self.backend, "train", "--json", "--config"])
            .arg(effective_path)
            .output()
            .with_context(|| format!("running st train for {}", config.display()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            bail!("st train failed on {}:\n{stderr}", config.display());
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let summary: st_runlog::TrainSummary = crate::last_json_line(&stdout, "st train --json")?;
        let mut metrics = BTreeMap::new();
        for (task, m) in &summary.metrics {
            // Each task's main metric, and a similarity task's Spearman on truncated embeddings.
            let shown = m.iter().filter(|(key, _)| {
                st_runlog::MAIN_METRICS.contains(&key.as_str()) || key.starts_with("spearman_at_")
            });
            for (key, v) in shown {
                metrics.insert(format!("{task} {key}"), v * 100.0);
            }
        }
        let log = st_runlog::read_log(&out.join(st_runlog::METRICS_LOG))?;
        let (steps, trainable) = (summary.steps as u64, summary.trainable_params as u64);
        let step_ms = st_runlog::median_step_ms(&log).unwrap_or(f64::NAN);
        Ok(RunResult {
            metrics,
            trainable,
            step_ms,
            steps,
        })
    }

    /// Curves of the first seed's run of a row, for the docs to embed.
    fn plot_first_seed(&self, table: &str, name: &str, work: &Path) -> Result<()> {
        let plots = self.root.join("docs/experiments/plots");
        std::fs::create_dir_all(&plots)?;
        let run = work.join(format!("{name}-s{}", self.seeds[0]));
        let svg = plots.join(format!("{table}-{name}.svg"));
        if !run.join(st_runlog::METRICS_LOG).is_file() {
            return Ok(());
        }
        let status = Command::new(self.st)
            .arg("plot")
            .arg(&run)
            .arg("--output")
            .arg(&svg)
            .status()?;
        if !status.success() {
            bail!("st plot failed on {}", run.display());
        }
        Ok(())
    }

    /// The table's Markdown: a row per config, a column per metric (mean ± std over seeds).
    fn markdown(&self, table: &str, results: &[(String, String, Vec<RunResult>)]) -> String {
        let mut columns: Vec<String> = results
            .iter()
            .flat_map(|(_, _, r)| r.iter().flat_map(|x| x.metrics.keys().cloned()))
            .collect();
        columns.sort();
        columns.dedup();
        let seeds: Vec<String> = self.seeds.iter().map(u64::to_string).collect();
        let mut md = format!(
            "<!-- written by `cargo xtask experiments {table} --seeds {}` ({} backend); do not edit -->\n\n| row |",
            seeds.join(","),
            self.backend
        );
        for c in &columns {
            md.push_str(&format!(" {c} |"));
        }
        md.push_str(" trainable params | steps | ms/step | config | curves |\n|---|");
        md.push_str(&"---|".repeat(columns.len() + 5));
        md.push('\n');
        for (name, label, runs) in results {
            // A `|` in the label would end the cell.
            md.push_str(&format!("| {} |", label.replace('|', "\\|")));
            for c in &columns {
                let v: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r.metrics.get(c).copied())
                    .collect();
                if v.is_empty() {
                    md.push_str(" – |");
                } else if v.len() == 1 {
                    md.push_str(&format!(" {:.2} |", v[0]));
                } else {
                    let (m, s) = mean_std(&v);
                    md.push_str(&format!(" {m:.2} ± {s:.2} |"));
                }
            }
            let r = &runs[0];
            // The fastest seed's median step: other jobs on the machine only add time.
            let ms = runs
                .iter()
                .map(|r| r.step_ms)
                .filter(|v| v.is_finite())
                .fold(f64::INFINITY, f64::min);
            let ms = if ms.is_finite() {
                format!("{ms:.0}")
            } else {
                "–".to_string() // no training step (everything frozen)
            };
            md.push_str(&format!(
                " {} | {} | {ms} | [{name}.toml]({table}/{name}.toml) | [svg](plots/{table}-{name}.svg) |\n",
                r.trainable, r.steps,
            ));
        }
        md
    }
}
