//! `cargo xtask experiments [TABLE...] [--seeds 42,43,44] [--backend B]`: reruns the training
//! experiments in `docs/experiments/TABLE/*.toml` and writes `docs/experiments/TABLE.md`.
//!
//! Each TOML file is one row, an ordinary `st train --config` file. Rows run in file-name order;
//! a row whose first line is `# start_from = "ROW"` starts from that row's trained model (same
//! seed): transfer learning and "pre-train a head, then freeze it". A row whose first line is
//! `# stage` is a starting point only and gets no line of its own in the table. Paths to data
//! are relative to the repository, as `../shared/datasets/...`.
//!
//! A row with a line `# sweep: KEY = [V1, V2, ...]` (a dotted config key, e.g. `lr.head_lr`)
//! tries each value on the first seed and keeps the one whose best evaluation (the `[[eval]]`
//! data, a dev set) scores highest; the other seeds run that value only. A row with `[[test]]`
//! data is reported on it: the best model picked on `[[eval]]`, scored once, so neither the
//! checkpoint nor the setting is chosen on the numbers shown.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

#[derive(Clone)]
pub struct RunResult {
    /// What the table shows: test metrics when the row has `[[test]]` data, else the best
    /// evaluation's.
    metrics: BTreeMap<String, f64>,
    /// The best evaluation's score (mean of each task's main metric ×100): what a sweep picks by.
    dev_score: f64,
    trainable: u64,
    step_ms: f64,
    steps: u64,
}

/// A row's `# sweep: KEY = [V1, V2, ...]` line: a dotted config key and the values to try.
struct Sweep {
    key: String,
    values: Vec<toml::Value>,
}

impl Sweep {
    fn parse(text: &str, row: &Path) -> Result<Option<Self>> {
        let mut lines = text.lines().filter_map(|l| l.strip_prefix("# sweep: "));
        let Some(line) = lines.next() else {
            return Ok(None);
        };
        if lines.next().is_some() {
            bail!("{}: one `# sweep:` line per row", row.display());
        }
        let bad = || {
            format!(
                "{}: `# sweep: {line}` is not `KEY = [V1, V2, ...]`",
                row.display()
            )
        };
        let (key, _) = line.split_once('=').with_context(bad)?;
        let table: toml::Table = format!("values {}", &line[key.len()..])
            .parse()
            .with_context(bad)?;
        let values = match table.get("values") {
            Some(toml::Value::Array(v)) if !v.is_empty() => v.clone(),
            _ => bail!(bad()),
        };
        Ok(Some(Self {
            key: key.trim().to_string(),
            values,
        }))
    }

    fn describe(&self, value: &toml::Value) -> String {
        format!("{} = {value}", self.key)
    }
}

/// Sets the dotted `key` (`lr.head_lr`) in a config, creating tables on the way.
fn set_key(config: &mut toml::Table, key: &str, value: toml::Value) -> Result<()> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("split yields one part at least");
    let mut table = config;
    for part in parts {
        table = table
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("`{part}` in `{key}` is not a table"))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

/// One run of a row: its config file, seed, the value of its sweep, and where it starts from.
struct Run<'a> {
    config: &'a Path,
    seed: u64,
    setting: Option<(&'a str, &'a toml::Value)>,
    start: Option<PathBuf>,
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

/// A table's row configs, by the number their names start with (row 10 follows row 9).
fn rows_of(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut rows: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("no experiment table {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    rows.sort_by_cached_key(|p| {
        let name = p
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
        (digits.parse::<u64>().unwrap_or(u64::MAX), name)
    });
    Ok(rows)
}

/// One row's outcome: per-seed results of its chosen setting, and what its sweep tried.
pub struct RowResults {
    name: String,
    label: String,
    /// Each value the sweep tried (as `KEY = V`) with its dev score on the first seed.
    tried: Vec<(String, f64)>,
    /// Index into `tried` of the value the seeds ran with.
    pick: Option<usize>,
    runs: Vec<RunResult>,
}

impl RowResults {
    /// The suffix of the run folders of the chosen setting.
    fn suffix(&self) -> String {
        self.pick.map_or(String::new(), |i| format!("-v{i}"))
    }
}

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
    fn run_row(&self, run: &Run, out: &Path) -> Result<RunResult> {
        let config = run.config;
        let text = std::fs::read_to_string(config)
            .with_context(|| format!("reading {}", config.display()))?;
        let mut table: toml::Table = text
            .parse()
            .with_context(|| format!("parsing {}", config.display()))?;
        let model = run.start.as_deref().unwrap_or(self.model);
        for (key, value) in [
            ("model", toml::Value::from(model.display().to_string())),
            ("output", out.display().to_string().into()),
            ("seed", (run.seed as i64).into()),
        ] {
            table.insert(key.into(), value);
        }
        if let Some((key, value)) = run.setting {
            set_key(&mut table, key, value.clone())?;
        }
        let effective = toml::to_string(&table)?
            .replace("../shared/datasets", &self.datasets.display().to_string());
        std::fs::create_dir_all(out.parent().expect("runs live in a folder"))?;
        let key: String = effective
            .lines()
            .filter(|l| !l.starts_with("output = ") && !l.trim().is_empty())
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
                dev_score: v["dev_score"].as_f64().unwrap_or(f64::NAN),
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
                "dev_score": result.dev_score,
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
        let work = self.root.join("target/experiments").join(table);
        let mut results: Vec<RowResults> = Vec::new();
        // Row name → the folder suffix of its chosen setting, for rows that start from it.
        let mut chosen: BTreeMap<String, String> = BTreeMap::new();
        for row in rows_of(&dir)? {
            let name = row.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&row)?;
            let first = text.lines().next().unwrap_or("");
            let stage = first.trim() == "# stage";
            let start_from = first
                .strip_prefix("# start_from = ")
                .map(|s| s.trim().trim_matches('"').to_string());
            let start = |seed: u64| {
                start_from.as_ref().map(|s| {
                    let suffix = chosen.get(s).map_or("", String::as_str);
                    work.join(format!("{s}-s{seed}{suffix}"))
                })
            };
            let sweep = Sweep::parse(&text, &row)?;
            let label = text
                .lines()
                .find_map(|l| l.strip_prefix("# row: "))
                .unwrap_or(&name)
                .to_string();
            let results_of_row = self.run_seeds(table, &row, sweep.as_ref(), &start, &work)?;
            let suffix = results_of_row.suffix();
            chosen.insert(name.clone(), suffix.clone());
            if !stage {
                let first_run = work.join(format!("{name}-s{}{suffix}", self.seeds[0]));
                self.plot(table, &name, &first_run)?;
                results.push(RowResults {
                    name,
                    label,
                    ..results_of_row
                });
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

    /// Every seed of one row; with a sweep, first every value on the first seed, then the
    /// best of them on the others.
    fn run_seeds(
        &self,
        table: &str,
        row: &Path,
        sweep: Option<&Sweep>,
        start: &dyn Fn(u64) -> Option<PathBuf>,
        work: &Path,
    ) -> Result<RowResults> {
        let name = row.file_stem().unwrap().to_string_lossy().into_owned();
        let run = |seed: u64, value: Option<usize>| -> Result<RunResult> {
            let setting = sweep
                .zip(value)
                .map(|(s, i)| (s.key.as_str(), &s.values[i]));
            let suffix = value.map_or(String::new(), |i| format!("-v{i}"));
            let out = work.join(format!("{name}-s{seed}{suffix}"));
            let shown = sweep.zip(value).map(|(s, i)| s.describe(&s.values[i]));
            eprintln!(
                "== {table}/{name} seed {seed}{}",
                shown.map_or(String::new(), |s| format!(", {s}"))
            );
            let run = Run {
                config: row,
                seed,
                setting,
                start: start(seed),
            };
            let r = self.run_row(&run, &out)?;
            eprintln!(
                "   {:?}, dev score {:.2}, {} trainable, {:.0} ms/step",
                r.metrics, r.dev_score, r.trainable, r.step_ms
            );
            Ok(r)
        };
        let first = self.seeds[0];
        let mut tried = Vec::new();
        if let Some(sweep) = sweep {
            for i in 0..sweep.values.len() {
                tried.push((sweep.describe(&sweep.values[i]), run(first, Some(i))?));
            }
        }
        // The highest dev score, the earlier value on a tie; NaN (no evaluation) never wins.
        let score = |i: usize| {
            let s: f64 = tried[i].1.dev_score;
            if s.is_nan() { f64::NEG_INFINITY } else { s }
        };
        let pick = (0..tried.len()).max_by(|&a, &b| score(a).total_cmp(&score(b)).then(b.cmp(&a)));
        let mut runs = Vec::new();
        for &seed in &self.seeds {
            match pick {
                Some(i) if seed == first => runs.push(tried[i].1.clone()),
                _ => runs.push(run(seed, pick)?),
            }
        }
        Ok(RowResults {
            name,
            label: String::new(),
            tried: tried.into_iter().map(|(s, r)| (s, r.dev_score)).collect(),
            pick,
            runs,
        })
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
        let shown = match summary.test.is_empty() {
            true => &summary.metrics,
            false => &summary.test,
        };
        for (task, m) in shown {
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
            dev_score: st_runlog::mean_main_metric(&summary.metrics)
                .map_or(f64::NAN, |v| v * 100.0),
            trainable,
            step_ms,
            steps,
        })
    }

    /// Curves of a row's first-seed `run`, for the docs to embed.
    fn plot(&self, table: &str, name: &str, run: &Path) -> Result<()> {
        let plots = self.root.join("docs/experiments/plots");
        std::fs::create_dir_all(&plots)?;
        let svg = plots.join(format!("{table}-{name}.svg"));
        if !run.join(st_runlog::METRICS_LOG).is_file() {
            return Ok(());
        }
        let status = Command::new(self.st)
            .arg("plot")
            .arg(run)
            .arg("--output")
            .arg(&svg)
            .status()?;
        if !status.success() {
            bail!("st plot failed on {}", run.display());
        }
        Ok(())
    }

    /// The table's Markdown: a row per config, a column per metric (mean ± std over seeds),
    /// then what each sweep tried.
    fn markdown(&self, table: &str, results: &[RowResults]) -> String {
        let mut columns: Vec<String> = results
            .iter()
            .flat_map(|r| r.runs.iter().flat_map(|x| x.metrics.keys().cloned()))
            .collect();
        columns.sort();
        columns.dedup();
        let swept = results.iter().any(|r| r.pick.is_some());
        let seeds: Vec<String> = self.seeds.iter().map(u64::to_string).collect();
        let mut md = format!(
            "<!-- written by `cargo xtask experiments {table} --seeds {}` ({} backend); do not edit -->\n\n| row |",
            seeds.join(","),
            self.backend
        );
        for c in &columns {
            md.push_str(&format!(" {c} |"));
        }
        if swept {
            md.push_str(" setting (swept) |");
        }
        md.push_str(" trainable params | steps | ms/step | config | curves |\n|---|");
        md.push_str(&"---|".repeat(columns.len() + 5 + usize::from(swept)));
        md.push('\n');
        for row in results {
            md.push_str(&markdown_row(table, row, &columns, swept));
        }
        if swept {
            md.push_str(&format!(
                "\nSweeps: each value on seed {}, scored by the best evaluation on the row's \
                 `[[eval]]` (dev) data (mean of each task's main metric); the highest ran on \
                 every seed.\n\n| row | tried: dev score |\n|---|---|\n",
                self.seeds[0]
            ));
            for row in results.iter().filter(|r| r.pick.is_some()) {
                let tried: Vec<String> = row
                    .tried
                    .iter()
                    .enumerate()
                    .map(|(i, (setting, score))| {
                        let mark = if Some(i) == row.pick { "**" } else { "" };
                        format!("{mark}{setting}: {score:.2}{mark}")
                    })
                    .collect();
                md.push_str(&format!("| {} | {} |\n", row.name, tried.join("; ")));
            }
        }
        md
    }
}

/// One line of a table: the row's label, each metric's mean ± std over seeds, the rest.
fn markdown_row(table: &str, row: &RowResults, columns: &[String], swept: bool) -> String {
    let runs = &row.runs;
    // A `|` in the label would end the cell.
    let mut md = format!("| {} |", row.label.replace('|', "\\|"));
    for c in columns {
        let v: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.metrics.get(c).copied())
            .collect();
        match v.len() {
            0 => md.push_str(" – |"),
            1 => md.push_str(&format!(" {:.2} |", v[0])),
            _ => {
                let (m, s) = mean_std(&v);
                md.push_str(&format!(" {m:.2} ± {s:.2} |"));
            }
        }
    }
    if swept {
        let setting = row.pick.map_or("–", |i| row.tried[i].0.as_str());
        md.push_str(&format!(" {setting} |"));
    }
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
    // Early stopping ends seeds at different steps.
    let fewest = runs.iter().map(|r| r.steps).min().unwrap_or(0);
    let most = runs.iter().map(|r| r.steps).max().unwrap_or(0);
    let steps = match fewest == most {
        true => most.to_string(),
        false => format!("{fewest}–{most}"),
    };
    let name = &row.name;
    md.push_str(&format!(
        " {} | {steps} | {ms} | [{name}.toml]({table}/{name}.toml) | [svg](plots/{table}-{name}.svg) |\n",
        runs[0].trainable,
    ));
    md
}
