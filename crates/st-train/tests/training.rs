//! The training engine on a tiny random BERT and the repository's small topic/sentiment set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn_autodiff::Autodiff;
use burn_flex::Flex;
use burn_store::ModuleSnapshot;
use st_backbone::{BertConfig, BertTokenizer};
use st_pooling::{Pooling, PoolingMode, SentenceEncoder};
use st_train::{
    DataSpec, Decay, Event, Freeze, FreezePlan, LayerwiseLrDecay, TrainConfig, load_trained, train,
};

type B = Autodiff<Flex>;

fn dataset(name: &str) -> PathBuf {
    manifest_dir()
        .join("../../datasets/topic_sentiment")
        .join(name)
}

/// A 2-layer random BERT saved as a sentence-transformers folder, with a vocabulary covering
/// the dataset's words.
fn tiny_model(dir: &Path) {
    tiny_model_of(dir, "bert");
}

/// [`tiny_model`] as another `model_type` that runs on BERT's vocabulary (MPNet: its
/// relative-position table comes with it).
fn tiny_model_of(dir: &Path, model_type: &str) {
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
    let mpnet = model_type == "mpnet";
    let config = BertConfig {
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        model_type: model_type.into(),
        relative_attention_num_buckets: mpnet.then_some(32),
        max_position_embeddings: if mpnet { 514 } else { 512 },
        ..BertConfig::tiny(vocab.len())
    };
    let device = Default::default();
    let bert = config.init::<Flex>(false, &device);
    let tokenizer = BertTokenizer::from_dir(dir, 64).unwrap();
    let pooling = Pooling::new([PoolingMode::Mean], config.hidden_size).unwrap();
    let encoder = SentenceEncoder::new(bert, config, tokenizer, pooling, true).unwrap();
    encoder.save_pretrained(dir).unwrap();
}

/// Burn's CPU random generator is process-wide and a run's seed resets it, so runs in parallel
/// test threads would draw from each other's stream: each test holds this lock while training.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The lock, a scratch folder, and a tiny model saved in it: every training test's start.
fn setup() -> (
    std::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
    PathBuf,
) {
    let guard = serial();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    tiny_model(&model);
    (guard, dir, model)
}

fn config(model: &Path, out: &Path) -> TrainConfig {
    let mut c = TrainConfig::new(
        model.to_string_lossy(),
        vec![DataSpec::new(dataset("train.jsonl"))],
        out,
    );
    c.eval = vec![DataSpec::new(dataset("test.jsonl"))];
    c.batch_size = 16;
    c.tasks = BTreeMap::new();
    c
}

/// Every float tensor of a module, by path.
fn snapshot<M: Module<B>>(m: &M) -> BTreeMap<String, Vec<f32>> {
    m.collect(None, None, false)
        .into_iter()
        .map(|s| {
            (
                s.full_path(),
                s.to_data()
                    .unwrap()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .unwrap(),
            )
        })
        .collect()
}

#[test]
fn training_learns_both_tasks_and_saves_a_loadable_model() {
    let (_serial, dir, model) = setup();
    let out = dir.path().join("out");
    let mut c = config(&model, &out);
    c.epochs = 8;
    c.lr = LayerwiseLrDecay::flat(3e-3);
    let mut evals = Vec::new();
    let summary = train::<B>(&c, &model, &Default::default(), &mut |e| {
        if let Event::Eval { metrics, .. } = e {
            evals.push(metrics.clone());
        }
    })
    .unwrap();
    assert_eq!(evals.len(), 8);
    let topic = summary.metrics["topic"]["accuracy"];
    let sentiment = summary.metrics["sentiment"]["accuracy"];
    assert!(
        topic > 0.6 && sentiment > 0.6,
        "topic {topic}, sentiment {sentiment}"
    );
    // metrics.jsonl has one line per step and per evaluation.
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), summary.steps + 8);

    // The saved folder loads back with the same predictions as the metrics said.
    let loaded = load_trained::<Flex>(&out, &Default::default()).unwrap();
    assert_eq!(loaded.heads.len(), 2);
    assert!(out.join("modules.json").is_file() && out.join("1_Pooling/config.json").is_file());
}

#[test]
fn frozen_parameters_stay_bit_identical() {
    let (_serial, dir, model) = setup();
    let out = dir.path().join("out");
    let mut c = config(&model, &out);
    c.max_steps = Some(4);
    c.epochs = 1;
    c.lr = LayerwiseLrDecay::flat(1e-2);
    c.freeze = FreezePlan {
        rules: vec![Freeze::Bottom(1), Freeze::Head("sentiment".into())],
        gradual: None,
    };
    train::<B>(&c, &model, &Default::default(), &mut |_| {}).unwrap();

    let before = SentenceEncoder::<B>::from_dir(&model, &Default::default()).unwrap();
    let after = load_trained::<B>(&out, &Default::default()).unwrap();
    let (b, a) = (snapshot(&before), snapshot(&after.encoder));
    let mut frozen = 0;
    let mut moved = 0;
    for (path, values) in &b {
        let same = a[path] == *values;
        if path.contains("embeddings.") || path.contains("encoder.layer.0.") {
            assert!(same, "{path} is frozen but changed");
            frozen += 1;
        } else if path.contains("encoder.layer.1.") && path.ends_with("weight") {
            assert!(!same, "{path} trains but did not move");
            moved += 1;
        }
    }
    assert!(frozen > 10 && moved > 3, "{frozen} frozen, {moved} moved");

    // Same seed, twice the steps: the frozen sentiment head is still its (seeded) initial self,
    // the topic head has moved on.
    let out2 = dir.path().join("out2");
    let mut c2 = config(&model, &out2);
    c2.max_steps = Some(8);
    c2.epochs = 1;
    c2.lr = c.lr.clone();
    c2.freeze = c.freeze.clone();
    train::<B>(&c2, &model, &Default::default(), &mut |_| {}).unwrap();
    let longer = load_trained::<B>(&out2, &Default::default()).unwrap();
    let (h4, h8) = (snapshot(&after.heads), snapshot(&longer.heads));
    let topic = after.head_index("topic").unwrap();
    let sentiment = after.head_index("sentiment").unwrap();
    for (path, values) in &h4 {
        if path.starts_with(&format!("{sentiment}.")) {
            assert_eq!(&h8[path], values, "frozen head tensor {path} changed");
        } else if path.starts_with(&format!("{topic}.")) && path.ends_with("weight") {
            assert_ne!(
                &h8[path], values,
                "training head tensor {path} did not move"
            );
        }
    }
}

#[test]
fn each_group_moves_at_its_own_rate() {
    let (_serial, dir, model) = setup();
    let out = dir.path().join("out");
    let mut c = config(&model, &out);
    c.eval = vec![];
    c.max_steps = Some(1);
    c.warmup_ratio = 0.0;
    c.schedule = Decay::Constant;
    c.weight_decay = 0.0;
    c.max_grad_norm = None;
    c.lr = LayerwiseLrDecay {
        base: 1e-3,
        decay: 0.5,
        head_lr: Some(4e-3),
        overrides: vec![],
    };
    let mut table = String::new();
    train::<B>(&c, &model, &Default::default(), &mut |e| {
        if let Event::Groups(t) = e {
            table = t.clone();
        }
    })
    .unwrap();
    assert!(
        table.contains("layer.1") && table.contains("head.topic"),
        "{table}"
    );

    // Adam's first step moves every parameter with a non-zero gradient by ≈ lr: measure it.
    let before = snapshot(&SentenceEncoder::<B>::from_dir(&model, &Default::default()).unwrap());
    let after_model = load_trained::<B>(&out, &Default::default()).unwrap();
    let after = snapshot(&after_model.encoder);
    let step = |prefix: &str| -> f64 {
        let mut deltas: Vec<f64> = Vec::new();
        for (path, b) in &before {
            if path.contains(prefix) && path.ends_with("weight") {
                for (x, y) in b.iter().zip(&after[path]) {
                    let d = (x - y).abs() as f64;
                    if d > 1e-9 {
                        deltas.push(d);
                    }
                }
            }
        }
        deltas.sort_by(f64::total_cmp);
        deltas[deltas.len() / 2]
    };
    // 2 layers: layer.1 at base·0.5, layer.0 at base·0.25, embeddings at base·0.125.
    let (l1, l0, emb) = (
        step("encoder.layer.1."),
        step("encoder.layer.0."),
        step("embeddings."),
    );
    for (got, want) in [(l1, 5e-4), (l0, 2.5e-4), (emb, 1.25e-4)] {
        assert!(
            (got / want - 1.0).abs() < 0.1,
            "median step {got:e}, lr {want:e}"
        );
    }
}

#[test]
fn freezing_everything_reports_the_baseline() {
    let (_serial, dir, model) = setup();
    let mut c = config(&model, &dir.path().join("out"));
    c.freeze = FreezePlan {
        rules: vec![Freeze::All],
        gradual: None,
    };
    let summary = train::<B>(&c, &model, &Default::default(), &mut |_| {}).unwrap();
    assert_eq!(summary.steps, 0);
    assert_eq!(summary.trainable_params, 0);
    // The baseline is measured on every labelled test example, and nothing trained is saved.
    let test = st_train::data::load(&c.eval[0]).unwrap();
    let labelled = test
        .iter()
        .filter(|e| e.labels.contains_key("topic"))
        .count();
    assert!(labelled > 0);
    assert_eq!(summary.metrics["topic"]["n"], labelled as f64);
    let accuracy = summary.metrics["topic"]["accuracy"];
    assert!((0.0..=1.0).contains(&accuracy), "accuracy {accuracy}");
    assert!(!c.output.join("model.safetensors").exists());
}

#[test]
fn bad_configs_and_data_are_named() {
    let (_serial, dir, model) = setup();
    let out = dir.path().join("out");

    let mut c = config(&model, &out);
    c.tasks.insert("nonexistent".into(), Default::default());
    let e = train::<B>(&c, &model, &Default::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("nonexistent") && e.contains("topic"), "{e}");

    let bad = dir.path().join("eval.jsonl");
    std::fs::write(&bad, "{\"text\": \"x\", \"labels\": {\"topic\": \"sports\"}}\n{\"text\": \"y\", \"labels\": {\"topic\": \"weather\"}}\n").unwrap();
    let mut c = config(&model, &out);
    c.eval = vec![DataSpec::new(&bad)];
    let e = train::<B>(&c, &model, &Default::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("eval.jsonl:2") && e.contains("weather"), "{e}");
    // Test data is checked as eval data is, before any step (no log is written).
    let mut c = config(&model, &out);
    c.test = vec![DataSpec::new(&bad)];
    let e = train::<B>(&c, &model, &Default::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("eval.jsonl:2") && e.contains("weather"), "{e}");
    assert!(!out.join("metrics.jsonl").exists());

    let one = dir.path().join("one.jsonl");
    std::fs::write(&one, "{\"text\": \"x\", \"labels\": {\"t\": \"a\"}}\n{\"text\": \"y\", \"labels\": {\"t\": \"a\"}}\n").unwrap();
    let c = TrainConfig::new(model.to_string_lossy(), vec![DataSpec::new(&one)], &out);
    let e = train::<B>(&c, &model, &Default::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("single class"), "{e}");

    let mut c = config(&model, &out);
    c.freeze = FreezePlan {
        rules: vec![Freeze::Head("nope".into())],
        gradual: None,
    };
    let e = train::<B>(&c, &model, &Default::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("head:nope"), "{e}");
}

#[test]
fn a_seed_makes_runs_repeat() {
    let (_serial, dir, model) = setup();
    let run = |name: &str| {
        let out = dir.path().join(name);
        let mut c = config(&model, &out);
        c.max_steps = Some(3);
        c.lr = LayerwiseLrDecay::flat(1e-3);
        train::<B>(&c, &model, &Default::default(), &mut |_| {}).unwrap();
        let m = load_trained::<B>(&out, &Default::default()).unwrap();
        (snapshot(&m.encoder), snapshot(&m.heads))
    };
    let (e1, h1) = run("a");
    let (e2, h2) = run("b");
    assert_eq!(h1, h2, "heads differ between two runs with one seed");
    assert_eq!(e1, e2, "encoders differ between two runs with one seed");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The lines of a metrics log without their timings.
fn log_without_timings(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("step_ms");
            v
        })
        .collect()
}

#[test]
fn resume_reaches_the_same_parameters_as_an_unbroken_run() {
    let (_serial, dir, model) = setup();
    let (full, resumed) = (dir.path().join("full"), dir.path().join("resumed"));
    let mut c = config(&model, &full);
    c.epochs = 2;
    c.lr = LayerwiseLrDecay {
        base: 2e-3,
        decay: 0.8,
        head_lr: Some(5e-3),
        overrides: vec![],
    };
    c.weighting = st_train::Weighting::Uncertainty;
    // The unbroken run; after epoch 1 its folder is copied aside, as if it crashed there. Steps
    // logged after the checkpoint by a killed run are cut from the log on resume: add one.
    train::<B>(&c, &model, &Default::default(), &mut |e| {
        if let Event::Eval { epoch: 1, .. } = e {
            copy_dir(&full, &resumed);
            let log = resumed.join("metrics.jsonl");
            let mut text = std::fs::read_to_string(&log).unwrap();
            text.push_str("{\"step\": 13, \"killed\": true}\n");
            std::fs::write(&log, text).unwrap();
        }
    })
    .unwrap();
    let mut r = c.clone();
    r.output = resumed.clone();
    r.resume = true;
    let mut resumed_at = String::new();
    train::<B>(&r, &model, &Default::default(), &mut |e| {
        if let Event::Groups(t) = e {
            resumed_at.push_str(t);
        }
    })
    .unwrap();
    assert!(resumed_at.contains("resuming at step 13"), "{resumed_at}");
    assert_eq!(
        log_without_timings(&full.join("metrics.jsonl")),
        log_without_timings(&resumed.join("metrics.jsonl")),
        "the resumed log holds each step once, as the unbroken run's"
    );
    // Both runs end by writing their final state (every parameter with its id): it must agree
    // to the bit. (Optimizer records are hash maps, serialized in no fixed order.)
    use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
    let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let base = || load_trained::<B>(&full, &Default::default()).unwrap();
    let a = base()
        .load_file(full.join("resume/model"), &rec, &Default::default())
        .unwrap();
    let b = base()
        .load_file(resumed.join("resume/model"), &rec, &Default::default())
        .unwrap();
    assert_eq!(snapshot(&a), snapshot(&b), "parameters differ after resume");
    // The state's `log_bytes` counts the logs' step timings, which differ run to run.
    let state = |dir: &Path| {
        let text = std::fs::read(dir.join("resume/state.json")).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert!(v["log_bytes"].as_u64().unwrap() > 0);
        v.as_object_mut().unwrap().remove("log_bytes");
        v
    };
    assert_eq!(state(&full), state(&resumed), "resume state differs");
    for file in ["model.mpk", "uncertainty.mpk"] {
        let (x, y) = (
            full.join("resume").join(file),
            resumed.join("resume").join(file),
        );
        let (bx, by) = (std::fs::read(&x).unwrap(), std::fs::read(&y).unwrap());
        assert!(
            bx == by,
            "{file} differs after resume:\n{}\n{}",
            String::from_utf8_lossy(&bx)
                .chars()
                .take(3000)
                .collect::<String>(),
            String::from_utf8_lossy(&by)
                .chars()
                .take(3000)
                .collect::<String>()
        );
    }
}

#[test]
fn a_diverging_run_stops_with_the_task_named() {
    let (_serial, dir, model) = setup();
    let mut c = config(&model, &dir.path().join("out"));
    c.lr = LayerwiseLrDecay::flat(1e30);
    c.warmup_ratio = 0.0;
    c.max_grad_norm = None;
    let e = train::<B>(&c, &model, &Default::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("diverged") && e.contains("loss is") && e.contains("task `"),
        "{e}"
    );
    // It diverged before any evaluation: no checkpoint is claimed.
    assert!(e.contains("no checkpoint of this run"), "{e}");
    assert!(!dir.path().join("out/heads.json").exists());
}

#[test]
fn a_trained_model_is_kept_unless_overwrite_and_resume_needs_state() {
    let (_serial, dir, model) = setup();
    let out = dir.path().join("out");
    let mut c = config(&model, &out);
    c.resume = true;
    let e = train::<B>(&c, &model, &Default::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("no resume state") && e.contains("out"), "{e}");
    assert!(!out.exists(), "a refused --resume made {}", out.display());

    let mut c = config(&model, &out);
    c.max_steps = Some(2);
    train::<B>(&c, &model, &Default::default(), &mut |_| {}).unwrap();
    let first = std::fs::read(out.join("heads.safetensors")).unwrap();
    c.seed = 8;
    let e = train::<B>(&c, &model, &Default::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("already holds a trained model") && e.contains("--overwrite"),
        "{e}"
    );
    assert_eq!(std::fs::read(out.join("heads.safetensors")).unwrap(), first);

    c.overwrite = true;
    std::fs::write(out.join("notes.txt"), "old run").unwrap();
    train::<B>(&c, &model, &Default::default(), &mut |_| {}).unwrap();
    assert_ne!(std::fs::read(out.join("heads.safetensors")).unwrap(), first);
    // The old run's files are gone with it; the new log has the new run's 2 steps + 1 eval.
    assert!(!out.join("notes.txt").exists());
    assert_eq!(log_without_timings(&out.join("metrics.jsonl")).len(), 3);
    let siblings: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(siblings.is_empty(), "staging folders left: {siblings:?}");
}

#[test]
fn epochs_zero_and_bad_head_lr_are_refused_before_any_work() {
    let (_serial, dir, model) = setup();
    let out = dir.path().join("out");
    let mut c = config(&model, &out);
    c.epochs = 0;
    let e = train::<B>(&c, &model, &Default::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`epochs`") && e.contains("nothing would be trained"),
        "{e}"
    );
    let mut c = config(&model, &out);
    c.lr.head_lr = Some(-1.0);
    let e = train::<B>(&c, &model, &Default::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("--head-lr"), "{e}");
    assert!(!out.exists(), "a refused config wrote {}", out.display());
}

/// This package's folder, read when the program runs (cargo sets it for `cargo run` and
/// `cargo test`): a binary reused from a build cache shared between checkouts must still read
/// the files of the checkout it runs in.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

#[test]
fn all_tasks_sampling_sums_every_source_in_each_step() {
    let (_serial, dir, model) = setup();
    // The two-task set split into one source per task, as two real datasets would come.
    let text = std::fs::read_to_string(dataset("train.jsonl")).unwrap();
    let mut per_task: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for (task, label) in v["labels"].as_object().unwrap() {
            let row = serde_json::json!({"text": v["text"], "labels": {task.clone(): label}});
            per_task
                .entry(task.clone())
                .or_default()
                .push_str(&format!("{row}\n"));
        }
    }
    let mut c = config(&model, &dir.path().join("out"));
    c.train = per_task
        .iter()
        .map(|(task, rows)| {
            let path = dir.path().join(format!("{task}.jsonl"));
            std::fs::write(&path, rows).unwrap();
            DataSpec::new(path)
        })
        .collect();
    c.sampling = st_train::Sampling::AllTasks;
    c.weighting = st_train::Weighting::Uncertainty;
    c.epochs = 2;
    c.lr = LayerwiseLrDecay {
        head_lr: Some(2e-2),
        ..LayerwiseLrDecay::flat(1e-3)
    };
    let summary = train::<B>(&c, &model, &Default::default(), &mut |_| {}).unwrap();
    // An epoch is one pass over the examples: two 16-row batches per step.
    let rows: usize = per_task.values().map(|r| r.lines().count()).sum();
    assert_eq!(summary.steps, 2 * rows.div_ceil(16 * 2));
    let log = std::fs::read_to_string(dir.path().join("out/metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("losses").is_some())
        .collect();
    assert_eq!(steps.len(), summary.steps);
    for s in &steps {
        assert_eq!(s["losses"].as_object().unwrap().len(), 2, "{s}");
    }
    // The log-variances learn at the head rate: the weights leave 1 by more than rounding.
    let last = &steps.last().unwrap()["weights"];
    let moved = last
        .as_object()
        .unwrap()
        .values()
        .map(|w| (w.as_f64().unwrap() - 1.0).abs())
        .fold(0.0, f64::max);
    assert!(moved > 0.05, "uncertainty weights barely moved: {last}");
}

#[test]
fn two_accumulated_batches_of_16_equal_one_of_32() {
    let (_serial, dir, model) = setup();
    // Rows labelled for both tasks only: each task's loss is a mean over its labelled rows, so
    // with partial labels two halves would weigh rows differently from one batch.
    let text = std::fs::read_to_string(dataset("train.jsonl")).unwrap();
    let both: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"topic\"") && l.contains("\"sentiment\""))
        .collect();
    let data = dir.path().join("both.jsonl");
    std::fs::write(&data, both.join("\n") + "\n").unwrap();
    let run = |name: &str, batch_size: usize, grad_accumulation: usize| {
        let out = dir.path().join(name);
        let mut c = config(&model, &out);
        c.train = vec![DataSpec::new(&data)];
        c.eval = vec![];
        c.max_steps = Some(3);
        c.lr = LayerwiseLrDecay::flat(1e-3);
        c.batch_size = batch_size;
        c.grad_accumulation = grad_accumulation;
        // No head dropout (the tiny encoder has none): masks would differ between the shapes.
        for task in ["topic", "sentiment"] {
            c.tasks.insert(
                task.into(),
                st_train::TaskOptions {
                    dropout: Some(0.0),
                    ..Default::default()
                },
            );
        }
        train::<B>(&c, &model, &Default::default(), &mut |_| {}).unwrap();
        let m = load_trained::<B>(&out, &Default::default()).unwrap();
        let mut all = snapshot(&m.encoder);
        all.extend(snapshot(&m.heads));
        all
    };
    let (one, two) = (run("one", 32, 1), run("two", 16, 2));
    let start = snapshot(&SentenceEncoder::<B>::from_dir(&model, &Default::default()).unwrap());
    let mut worst = 0f32;
    for (path, a) in &one {
        for (x, y) in a.iter().zip(&two[path]) {
            worst = worst.max((x - y).abs());
        }
    }
    // f32 sums in a different order differ by a few ulps in the gradients; Adam's update
    // g/(sqrt(v) + 1e-8) magnifies them where a gradient is near zero. Measured: up to 4.5e-6
    // over 6 random tiny models. A real difference (another batch, a missing micro-batch)
    // moves weights by the step size, 1e-3 per step: the bound sits 20× below that.
    assert!(worst < 5e-5, "2 × 16 and 32 differ by up to {worst}");
    let moved = start.iter().filter(|(p, a)| &&one[*p] != a).count();
    assert!(
        moved > start.len() / 2,
        "training moved {moved} of {} encoder tensors",
        start.len()
    );
}

#[test]
fn a_head_on_the_first_token_trains_saves_and_answers_from_it() {
    let (_serial, dir, model) = setup();
    let out = dir.path().join("out");
    let mut c = config(&model, &out);
    c.epochs = 2;
    c.lr = LayerwiseLrDecay::flat(3e-3);
    c.tasks.insert(
        "topic".into(),
        st_train::TaskOptions {
            input: Some(st_heads::SentenceInput::Cls),
            ..Default::default()
        },
    );
    let summary = train::<B>(&c, &model, &Default::default(), &mut |_| {}).unwrap();
    let heads = std::fs::read_to_string(out.join("heads.json")).unwrap();
    assert_eq!(heads.matches("\"input\": \"cls\"").count(), 1, "{heads}");
    let saved = load_trained::<Flex>(&out, &Default::default()).unwrap();
    let again = st_train::evaluate_on(&saved, &c.eval, 64).unwrap();
    assert_eq!(again["topic"], summary.metrics["topic"]);
    // The topic head reads the first token's state: its logits are the classifier on it, and
    // not on the pooled embedding.
    let topic = saved.head_index("topic").unwrap();
    let encoded = saved
        .encoder
        .tokenize(&["the market rose", "a long quiet river bend"])
        .unwrap();
    let rows: Vec<_> = encoded.iter().collect();
    let input = st_backbone::TokenBatch::pad(&rows, 0).to_input::<Flex>(&Default::default());
    let (tokens, pooled) = saved.encoder.features(input.clone());
    let head = saved.heads[topic].classifier();
    let cls = head.forward(tokens.narrow(1, 0, 1).squeeze_dim::<2>(1));
    let Some(st_heads::HeadOutput::Sentence(logits)) = saved.forward(input, &[]).remove(topic)
    else {
        panic!("no sentence logits for topic");
    };
    let diff = |a: burn::tensor::Tensor<Flex, 2>, b: burn::tensor::Tensor<Flex, 2>| {
        (a - b).abs().max().into_scalar()
    };
    assert!(diff(logits.clone(), cls) < 1e-6);
    assert!(diff(logits, head.forward(pooled)) > 1e-4);
    // The option belongs to sentence heads only.
    let mut c = config(&model, &dir.path().join("refused"));
    c.tasks.insert(
        "sentiment".into(),
        st_train::TaskOptions {
            kind: Some(st_heads::HeadKind::Token),
            input: Some(st_heads::SentenceInput::Cls),
            ..Default::default()
        },
    );
    let err = train::<B>(&c, &model, &Default::default(), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("tasks.sentiment."), "{err}");
}

#[test]
fn the_best_evaluation_is_the_saved_model_and_patience_stops_the_run() {
    let (_serial, dir, model) = setup();
    let out = dir.path().join("out");
    let mut c = config(&model, &out);
    c.epochs = 12;
    c.lr = LayerwiseLrDecay::flat(3e-3);
    c.best_metric = Some("topic.accuracy".into());
    c.patience = Some(2);
    // The first 28 held-out examples pick the best model; the rest are its test.
    let held_out = DataSpec::new(dataset("test.jsonl"));
    c.eval = vec![DataSpec {
        limit: Some(28),
        ..held_out.clone()
    }];
    c.test = vec![DataSpec {
        skip: 28,
        ..held_out
    }];
    let mut tested = Vec::new();
    let summary = train::<B>(&c, &model, &Default::default(), &mut |e| {
        if let Event::Test(m) = e {
            tested.push(m.clone());
        }
    })
    .unwrap();
    let log = log_without_timings(&out.join("metrics.jsonl"));
    let evals: Vec<serde_json::Value> = log
        .iter()
        .filter(|v| v.get("eval").is_some())
        .cloned()
        .collect();
    let topic = |v: &serde_json::Value| v["eval"]["topic"]["accuracy"].as_f64().unwrap();
    // `best` marks each strict improvement of topic accuracy over every earlier evaluation.
    // Patience 2: the run goes on while fewer than 2 evaluations in a row missed, and stops at
    // the second miss. (The tiny model is random per process: whether it stops early varies.)
    let mut best_so_far = f64::NEG_INFINITY;
    let mut since_best = 0;
    for (i, v) in evals.iter().enumerate() {
        assert!(since_best < 2, "the run went on after 2 misses: {evals:?}");
        let improved = topic(v) > best_so_far;
        assert_eq!(v["best"], improved, "evaluation {}: {v}", i + 1);
        if improved {
            best_so_far = topic(v);
            since_best = 0;
        } else {
            since_best += 1;
        }
    }
    assert!(
        evals.len() == 12 || since_best == 2,
        "stopped after {} evaluations with {since_best} misses",
        evals.len()
    );
    assert_eq!(summary.steps, evals.len() * 13);
    // The saved model is the best evaluation's: evaluating it again gives its metrics.
    let best = evals.iter().rev().find(|v| v["best"] == true).unwrap();
    assert_eq!(summary.metrics["topic"]["accuracy"], topic(best));
    let saved = load_trained::<Flex>(&out, &Default::default()).unwrap();
    let again = st_train::evaluate_on(&saved, &c.eval, 64).unwrap();
    assert_eq!(again["topic"]["accuracy"], topic(best));
    // The test data is scored once, on that saved model, and is the log's last line.
    let test = st_train::evaluate_on(&saved, &c.test, 64).unwrap();
    assert_eq!(summary.test, test);
    assert_eq!(tested, std::slice::from_ref(&test));
    assert_eq!(
        summary.test["topic"]["n"] + summary.metrics["topic"]["n"],
        st_train::data::load(&DataSpec::new(dataset("test.jsonl")))
            .unwrap()
            .iter()
            .filter(|e| e.labels.contains_key("topic"))
            .count() as f64
    );
    let last: st_runlog::LogRecord = serde_json::from_value(log.last().unwrap().clone()).unwrap();
    assert_eq!(
        last,
        st_runlog::LogRecord::Test(st_runlog::TestRecord { test })
    );
}

#[test]
fn round_robin_alternates_sources_and_temperature_flattens_their_sizes() {
    let (_serial, dir, model) = setup();
    // One source per task, unbalanced: 160 topic rows, 20 sentiment rows.
    let text = std::fs::read_to_string(dataset("train.jsonl")).unwrap();
    let only = |task: &str, n: usize| {
        let rows: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter_map(|v| {
                let label = v["labels"].get(task)?.clone();
                Some(serde_json::json!({"text": v["text"], "labels": {task: label}}).to_string())
            })
            .take(n)
            .collect();
        let path = dir.path().join(format!("{task}.jsonl"));
        std::fs::write(&path, rows.join("\n") + "\n").unwrap();
        DataSpec::new(path)
    };
    let sources = vec![only("topic", 160), only("sentiment", 20)];
    // The task each of 60 steps trained, read from metrics.jsonl.
    let tasks_of = |name: &str, sampling: st_train::Sampling| -> Vec<String> {
        let out = dir.path().join(name);
        let mut c = config(&model, &out);
        c.train = sources.clone();
        c.eval = vec![];
        c.batch_size = 8;
        c.max_steps = Some(60);
        c.sampling = sampling;
        train::<B>(&c, &model, &Default::default(), &mut |_| {}).unwrap();
        log_without_timings(&out.join("metrics.jsonl"))
            .iter()
            .filter_map(|v| v.get("losses")?.as_object()?.keys().next().cloned())
            .collect()
    };
    let rr = tasks_of("rr", st_train::Sampling::RoundRobin);
    assert_eq!(rr.len(), 60);
    for (i, task) in rr.iter().enumerate() {
        let want = if i % 2 == 0 { "topic" } else { "sentiment" };
        assert_eq!(task, want, "step {}: {rr:?}", i + 1);
    }
    let topic_steps = |tasks: &[String]| tasks.iter().filter(|t| *t == "topic").count();
    // Proportional: p(topic) = 160/180 ≈ 0.89; T = 1000: p ≈ 0.5. 60 draws each, fixed seed.
    let proportional = topic_steps(&tasks_of("prop", st_train::Sampling::Proportional));
    let flat = topic_steps(&tasks_of(
        "temp",
        st_train::Sampling::Temperature { t: 1000.0 },
    ));
    assert!(
        proportional >= 45,
        "proportional: {proportional} of 60 topic"
    );
    assert!(
        (18..=42).contains(&flat),
        "temperature 1000: {flat} of 60 topic"
    );
}

/// Training, freezing and layer-wise groups on every architecture: a tiny MPNet built here and
/// the tiny RoBERTa, XLM-R and DistilBERT folders st-backbone's parity tests use. Four steps
/// with the bottom layer frozen: frozen tensors bit-identical, layer 1 moved, loss finite.
#[test]
fn every_family_trains_with_its_bottom_layer_frozen() {
    let (_serial, dir, _bert) = setup();
    let mpnet = dir.path().join("mpnet");
    tiny_model_of(&mpnet, "mpnet");
    let fixtures = manifest_dir().join("../st-backbone/tests/fixtures");
    let families = [
        ("mpnet", mpnet),
        ("roberta", fixtures.join("roberta/model")),
        ("xlm-roberta", fixtures.join("xlm-roberta/model")),
        ("distilbert", fixtures.join("distilbert/model")),
    ];
    for (family, model) in families {
        let out = dir.path().join(format!("out-{family}"));
        let mut c = config(&model, &out);
        c.max_steps = Some(4);
        c.epochs = 1;
        c.eval = vec![];
        c.lr = LayerwiseLrDecay::flat(1e-2);
        c.freeze = FreezePlan {
            rules: vec![Freeze::Bottom(1)],
            gradual: None,
        };
        let mut losses = Vec::new();
        train::<B>(&c, &model, &Default::default(), &mut |e| {
            if let Event::Step { losses: l, .. } = e {
                losses.extend(l.iter().map(|(_, loss, _)| *loss));
            }
        })
        .unwrap_or_else(|e| panic!("{family}: {e}"));
        assert!(
            !losses.is_empty() && losses.iter().all(|l| l.is_finite()),
            "{family}: losses {losses:?}"
        );
        let before = SentenceEncoder::<B>::from_dir(&model, &Default::default()).unwrap();
        let after = load_trained::<B>(&out, &Default::default()).unwrap();
        let (b, a) = (snapshot(&before), snapshot(&after.encoder));
        let (mut frozen, mut moved) = (0, 0);
        for (path, values) in &b {
            let same = a[path] == *values;
            if path.contains("embeddings.") || path.contains("encoder.layer.0.") {
                assert!(same, "{family}: {path} is frozen but changed");
                frozen += 1;
            } else if path.contains("encoder.layer.1.") && path.ends_with("weight") {
                assert!(!same, "{family}: {path} trains but did not move");
                moved += 1;
            }
        }
        assert!(
            frozen > 5 && moved > 3,
            "{family}: {frozen} frozen, {moved} moved"
        );
    }
}

/// Pair records built from the topic/sentiment set: consecutive texts as pairs, scored by how
/// many of the two labels they share (similarity `sts`), classified same or different topic
/// (`same_topic`); and retrieval records, each text's anchor being its first half.
fn pair_data(dir: &Path, source: &str, name: &str) -> (PathBuf, PathBuf) {
    let examples = st_train::data::load(&DataSpec::new(dataset(source))).unwrap();
    let label = |i: usize, task: &str| format!("{:?}", examples[i].labels.get(task));
    let mut pairs = String::new();
    let mut retrieval = String::new();
    for i in 0..examples.len() - 1 {
        let shared = ["topic", "sentiment"]
            .iter()
            .filter(|t| label(i, t) == label(i + 1, t))
            .count();
        let same = if label(i, "topic") == label(i + 1, "topic") {
            "same"
        } else {
            "different"
        };
        pairs.push_str(&format!(
            "{}\n",
            serde_json::json!({"text1": examples[i].text, "text2": examples[i + 1].text,
                "labels": {"sts": shared as f64 / 2.0, "same_topic": same}})
        ));
        let words: Vec<&str> = examples[i].text.split_whitespace().collect();
        let half = words.len().div_ceil(2);
        retrieval.push_str(&format!(
            "{}\n",
            serde_json::json!({"anchor": words[..half].join(" "), "positive": examples[i].text})
        ));
    }
    let (p, r) = (
        dir.join(format!("{name}-pairs.jsonl")),
        dir.join(format!("{name}-retrieval.jsonl")),
    );
    std::fs::write(&p, pairs).unwrap();
    std::fs::write(&r, retrieval).unwrap();
    (p, r)
}

#[test]
fn pair_tasks_train_beside_sentence_tasks_and_the_saved_model_answers_them() {
    let (_guard, dir, model) = setup();
    let (train_pairs, train_retrieval) = pair_data(dir.path(), "train.jsonl", "train");
    let (eval_pairs, eval_retrieval) = pair_data(dir.path(), "test.jsonl", "test");
    let out = dir.path().join("out");
    let mut c = config(&model, &out);
    c.train
        .extend([DataSpec::new(&train_pairs), DataSpec::new(&train_retrieval)]);
    c.eval
        .extend([DataSpec::new(&eval_pairs), DataSpec::new(&eval_retrieval)]);
    c.sampling = st_train::Sampling::AllTasks;
    c.weighting = st_train::Weighting::Famo {
        lr: 0.025,
        gamma: 0.01,
    };
    c.max_steps = Some(12);
    c.lr = LayerwiseLrDecay::flat(1e-3);
    c.tasks.insert(
        "retrieval".into(),
        st_train::TaskOptions {
            symmetric: true,
            matryoshka: Some(vec![32, 16]),
            ..Default::default()
        },
    );
    let mut sts_losses = Vec::new();
    let summary = train::<B>(&c, &model, &Default::default(), &mut |e| {
        if let Event::Step { losses, .. } = e {
            sts_losses.extend(
                losses
                    .iter()
                    .filter(|(t, ..)| t == "sts")
                    .map(|(_, l, _)| *l),
            );
        }
    })
    .unwrap();
    let m = &summary.metrics;
    for (task, metric) in [
        ("sts", "spearman"),
        ("sts", "pearson"),
        ("same_topic", "accuracy"),
        ("retrieval", "mrr_at_10"),
        ("retrieval", "recall_at_1"),
        ("topic", "accuracy"),
    ] {
        assert!(m[task][metric].is_finite(), "{task}.{metric}: {m:?}");
    }
    assert_eq!(
        sts_losses.len(),
        12,
        "all_tasks: a similarity loss every step"
    );
    // CoSENT is log(1 + Σ …) over the batch's ordered pairs: positive.
    assert!(
        sts_losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{sts_losses:?}"
    );

    // The saved folder: its heads say their kinds, its metrics are the best evaluation's, and a
    // pair gets its similarity and class.
    let heads = std::fs::read_to_string(out.join("heads.json")).unwrap();
    for kind in [
        "\"similarity\"",
        "\"pair_classification\"",
        "\"retrieval\"",
        "\"sentence\"",
    ] {
        assert!(heads.contains(kind), "{kind} missing from {heads}");
    }
    let trained = load_trained::<Flex>(&out, &Default::default()).unwrap();
    let again = st_train::evaluate_on(&trained, &c.eval, 64).unwrap();
    for (task, metric) in [
        ("sts", "spearman"),
        ("retrieval", "mrr_at_10"),
        ("same_topic", "accuracy"),
    ] {
        assert!(
            (again[task][metric] - m[task][metric]).abs() < 1e-4,
            "{task}: {again:?} vs {m:?}"
        );
    }
    pairs_get_pair_answers_and_texts_get_text_answers(&trained);
}

/// `st predict`'s library side on the pair-trained model: a pair gets the similarity and pair
/// classification tasks, a single text the sentence tasks.
fn pairs_get_pair_answers_and_texts_get_text_answers(trained: &st_heads::MultiTaskModel<Flex>) {
    use st_train::predict::PredictInput;
    let answers = st_train::predict(
        trained,
        &[
            PredictInput::Pair("the game was great", "the match was great"),
            PredictInput::Text("stocks fell"),
        ],
        8,
    )
    .unwrap();
    assert!(
        matches!(answers[0]["sts"], st_train::TaskPrediction::Similarity { similarity } if similarity.abs() <= 1.0 + 1e-6)
    );
    assert!(matches!(
        answers[0]["same_topic"],
        st_train::TaskPrediction::Sentence { .. }
    ));
    assert!(!answers[0].contains_key("topic") && answers[1].contains_key("topic"));
    assert!(!answers[1].contains_key("sts"));
}

#[test]
fn a_resumed_pair_run_with_famo_reaches_the_unbroken_runs_parameters() {
    let (_guard, dir, model) = setup();
    let (pairs, _) = pair_data(dir.path(), "train.jsonl", "train");
    let (full, resumed) = (dir.path().join("full"), dir.path().join("resumed"));
    let mut c = config(&model, &full);
    c.train.push(DataSpec::new(&pairs));
    c.eval = vec![DataSpec::new(&pairs)];
    c.sampling = st_train::Sampling::AllTasks;
    c.weighting = st_train::Weighting::Famo {
        lr: 0.025,
        gamma: 0.01,
    };
    c.epochs = 2;
    c.lr = LayerwiseLrDecay::flat(1e-3);
    // The unbroken run's folder, copied aside after epoch 1 as if it crashed there.
    train::<B>(&c, &model, &Default::default(), &mut |e| {
        if let Event::Eval { epoch: 1, .. } = e {
            copy_dir(&full, &resumed);
        }
    })
    .unwrap();
    let mut r = c.clone();
    r.output = resumed.clone();
    r.resume = true;
    train::<B>(&r, &model, &Default::default(), &mut |_| {}).unwrap();
    for file in ["model.mpk", "famo.json"] {
        let read = |dir: &Path| std::fs::read(dir.join("resume").join(file)).unwrap();
        assert!(read(&full) == read(&resumed), "{file} differs after resume");
    }
}
