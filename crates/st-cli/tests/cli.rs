//! The `st` binary end to end, on the real all-MiniLM-L6-v2 (fetched on first use).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::{failed, manifest_dir, model_dir, ok, st_with_stdin};

/// The STS Benchmark folder: `$ST_DATASETS`, `../shared/datasets` beside the repository, the st
/// cache, else fetched from its origin (st_hub::datasets).
fn stsb_dir() -> PathBuf {
    let lookup = st_hub::datasets::Lookup::from_env(Some(&manifest_dir().join("../..")));
    lookup
        .dataset("stsb", &mut |m| eprintln!("{m}"))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn st(args: &[&str]) -> Output {
    st_with_stdin(args, None)
}

fn lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn model() -> &'static str {
    model_dir().to_str().unwrap()
}

#[test]
fn encode_writes_one_line_per_input_in_order() {
    let texts = [
        "A man is eating food.",
        "",
        "   ",
        "Café 🍕",
        "A man is riding a horse.",
    ];
    let mut args = vec!["encode", "--model", model(), "--batch-size", "2"];
    args.extend(texts);
    let out = lines(&ok(&st(&args)));
    assert_eq!(out.len(), texts.len());
    for (line, text) in out.iter().zip(texts) {
        assert_eq!(line["text"], text);
        let emb = line["embedding"].as_array().unwrap();
        assert_eq!(emb.len(), 384);
        let norm: f64 = emb
            .iter()
            .map(|v| v.as_f64().unwrap().powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{text:?}: norm {norm}");
    }
    // Each line's embedding is its own text's: equal to that text encoded alone, and not to
    // any other text's (blank texts tokenize alike, so they are one text here).
    let vector = |line: &serde_json::Value| -> Vec<f64> {
        let emb = line["embedding"].as_array().unwrap();
        emb.iter().map(|v| v.as_f64().unwrap()).collect()
    };
    let alone: Vec<Vec<f64>> = texts
        .iter()
        .map(|t| vector(&lines(&ok(&st(&["encode", "--model", model(), t])))[0]))
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for (i, line) in out.iter().enumerate() {
        let got = vector(line);
        for (j, other) in alone.iter().enumerate() {
            let c = dot(&got, other);
            if texts[i].trim() == texts[j].trim() {
                assert!(c > 0.9999, "line {i} vs {:?} alone: cosine {c}", texts[j]);
            } else {
                assert!(c < 0.99, "line {i} is as close to {:?}: {c}", texts[j]);
            }
        }
    }
}

#[test]
fn jsonl_input_keeps_tabs_and_newlines_and_output_file_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"text\": \"a\\tb\"}\n{\"text\": \"line one\\nline two\"}\n",
    )
    .unwrap();
    let output = dir.path().join("out.jsonl");
    let stdout = ok(&st(&[
        "encode",
        "--model",
        model(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]));
    assert!(stdout.is_empty(), "data went to the file, not stdout");
    let out = lines(&std::fs::read_to_string(&output).unwrap());
    assert_eq!(out[0]["text"], "a\tb");
    assert_eq!(out[1]["text"], "line one\nline two");
    // No temporary file left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn stdin_plain_text_is_read_line_by_line() {
    let out = lines(&ok(&st_with_stdin(
        &["encode", "--model", model(), "--input", "-"],
        Some(b"first\nsecond\n"),
    )));
    assert_eq!(out.len(), 2);
    assert_eq!(out[1]["text"], "second");
}

#[test]
fn overlong_inputs_warn_once() {
    let long = "word ".repeat(600);
    let out = st(&["encode", "--model", model(), &long, &long, "short"]);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("warning:").count(), 1, "{stderr}");
    assert!(
        stderr.contains("2 input(s) longer than 256 tokens"),
        "{stderr}"
    );
}

#[test]
fn pooling_and_normalize_flags_change_the_output() {
    let out = lines(&ok(&st(&[
        "encode",
        "--model",
        model(),
        "--pooling",
        "cls,max",
        "--no-normalize",
        "hello",
    ])));
    let emb = out[0]["embedding"].as_array().unwrap();
    assert_eq!(emb.len(), 768);
    let norm: f64 = emb
        .iter()
        .map(|v| v.as_f64().unwrap().powi(2))
        .sum::<f64>()
        .sqrt();
    assert!((norm - 1.0).abs() > 0.1, "not normalized: {norm}");
}

#[test]
fn invalid_utf8_is_an_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, b"fine\nbroken \xff\n").unwrap();
    let err = failed(&st(&[
        "encode",
        "--model",
        model(),
        "--input",
        input.to_str().unwrap(),
    ]));
    assert!(err.contains("in.txt:2") && err.contains("UTF-8"), "{err}");
}

#[test]
fn missing_or_corrupt_model_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() && entry.file_name() != "model.safetensors" {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let copy = dir.path().to_str().unwrap();
    let err = failed(&st(&["encode", "--model", copy, "x"]));
    assert!(err.contains("model.safetensors"), "{err}");

    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage",
    )
    .unwrap();
    let err = failed(&st(&["encode", "--model", copy, "x"]));
    assert!(err.contains("model.safetensors"), "{err}");

    std::fs::write(
        dir.path().join("config.json"),
        b"{\"model_type\": \"bert\", \"hidden_size\": ",
    )
    .unwrap();
    let err = failed(&st(&["encode", "--model", copy, "x"]));
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn similarity_finds_the_seed_neighbours() {
    let stdout = ok(&st(&[
        "similarity",
        "--model",
        model(),
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
        "A man is riding a horse.",
        "A woman is playing violin.",
        "Two men pushed carts through the woods.",
    ]));
    let rows: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 6);
    assert!(rows[0].trim_end().ends_with("[2]"), "{stdout}");
    assert!(rows[1].trim_end().ends_with("[1]"), "{stdout}");
    assert!(rows[0].contains("0.755"), "food vs bread ≈ 0.755: {stdout}");
}

#[test]
fn sts_benchmark_matches_the_published_score() {
    let data = stsb_dir().join("sts-test.csv");
    let stdout = ok(&st(&[
        "eval",
        "sts",
        "--model",
        model(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]));
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let score = result["spearman_cosine"].as_f64().unwrap();
    assert_eq!(result["pairs"], 1379);
    assert!(
        (score - 82.03).abs() <= 0.1,
        "Spearman ×100 = {score}, published 82.03"
    );
}

/// `--dtype int8` (the default backend's int8 projections and embeddings): every embedding
/// within cosine 0.99 of float32's but not equal to it, the weights ≤ 0.3× float32's bytes,
/// and STS-B test within 0.5 of the float32 score.
#[test]
fn int8_stays_close_to_float32() {
    let texts = [
        "A man is playing a guitar.",
        "The new movie is awesome",
        "Two dogs run across a snowy field while children watch from the road.",
        "ok",
    ];
    let encode = |dtype: &str| {
        let mut args = vec!["encode", "--model", model(), "--dtype", dtype];
        args.extend(texts);
        lines(&ok(&st(&args)))
            .iter()
            .map(|l| {
                let e = l["embedding"].as_array().unwrap();
                e.iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let (float, int8) = (encode("float32"), encode("int8"));
    // The int8 model holds int8 weights only: ≤ 0.3× the float32 model's bytes.
    let weight_bytes = |dtype: &str| {
        let out = st(&[
            "encode",
            "--model",
            model(),
            "--dtype",
            dtype,
            "--timing",
            "ok",
        ]);
        assert!(out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let timing: serde_json::Value = serde_json::from_str(stderr.trim().lines().last().unwrap())
            .unwrap_or_else(|e| panic!("--timing printed {stderr}: {e}"));
        timing["weight_bytes"].as_f64().unwrap()
    };
    let ratio = weight_bytes("int8") / weight_bytes("float32");
    assert!(ratio <= 0.3, "int8 weights are {ratio:.3}× float32's");
    for (i, (a, b)) in float.iter().zip(&int8).enumerate() {
        assert_ne!(a, b, "text {i}: int8 gave float32's numbers");
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        assert!(
            dot >= 0.99,
            "text {i}: cosine {dot} (embeddings are normalized)"
        );
    }
    let data = stsb_dir().join("sts-test.csv");
    let stdout = ok(&st(&[
        "eval",
        "sts",
        "--model",
        model(),
        "--dtype",
        "int8",
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]));
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let score = result["spearman_cosine"].as_f64().unwrap();
    assert!((score - 82.03).abs() <= 0.5, "int8 Spearman ×100 = {score}");
}

/// Half floats on flex are slower than float32, so they are refused with the way out;
/// `--precision` is now the output precision, and its old compute-type values point to --dtype.
#[test]
fn dtype_flags_refuse_slow_modes_and_precision_points_to_dtype() {
    let err = failed(&st(&[
        "encode",
        "--model",
        model(),
        "--dtype",
        "bf16",
        "hi",
    ]));
    assert!(
        err.contains("slower than float32") && err.contains("--dtype int8"),
        "{err}"
    );
    for (old, dtype) in [("bf16", "--dtype bf16"), ("f16", "--dtype f16")] {
        let err = failed(&st(&[
            "encode",
            "--model",
            model(),
            "--precision",
            old,
            "hi",
        ]));
        assert!(
            err.contains(dtype) && err.contains("output embeddings' precision"),
            "{err}"
        );
    }
    ok(&st(&[
        "encode",
        "--model",
        model(),
        "--precision",
        "fp32",
        "hi",
    ]));
}

#[test]
fn info_describes_the_model() {
    let stdout = ok(&st(&["info", "--model", model(), "--json"]));
    let info: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(info["layers"], 6);
    assert_eq!(info["hidden_size"], 384);
    assert_eq!(info["parameters"], 22_713_216);
    assert_eq!(info["pooling"], "mean");
    assert_eq!(info["normalize"], true);
    assert_eq!(info["max_seq_length"], 256);
}

#[test]
fn bad_flags_fail_with_a_message_not_a_panic() {
    let err = failed(&st(&[
        "encode",
        "--model",
        model(),
        "--pooling",
        "median",
        "x",
    ]));
    assert!(
        err.contains("median") && err.contains("weightedmean"),
        "{err}"
    );
    let err = failed(&st(&[
        "encode",
        "--model",
        model(),
        "--batch-size",
        "0",
        "x",
    ]));
    assert!(err.contains("--batch-size"), "{err}");
    let err = failed(&st(&["encode", "--model", "./no/such/dir", "x"]));
    assert!(err.contains("./no/such/dir"), "{err}");
}

#[test]
fn train_eval_predict_round_trip() {
    let data = manifest_dir().join("../../datasets/topic_sentiment");
    let (train, test) = (data.join("train.jsonl"), data.join("test.jsonl"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let stdout = ok(&st(&[
        "train",
        "--model",
        model(),
        "--train",
        train.to_str().unwrap(),
        "--eval",
        test.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--max-steps",
        "6",
        "--batch-size",
        "16",
        "--lr",
        "1e-4",
        "--head-lr",
        "3e-3",
        "--json",
    ]));
    let summary: st_runlog::TrainSummary = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary.steps, 6);
    assert!(summary.trainable_params > 0 && summary.median_step_ms.is_some_and(|ms| ms > 0.0));
    for task in ["topic", "sentiment"] {
        assert!(summary.metrics[task]["accuracy"].is_finite(), "{summary:?}");
    }
    for file in [
        "heads.json",
        "heads.safetensors",
        "model.safetensors",
        "modules.json",
        "metrics.jsonl",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }

    let stdout = ok(&st(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--json",
    ]));
    let metrics: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        metrics["topic"]["accuracy"], summary.metrics["topic"]["accuracy"],
        "eval agrees with training"
    );

    let input = dir.path().join("texts.txt");
    std::fs::write(
        &input,
        "The striker scored twice.\nThe bakery served stale bread.\n",
    )
    .unwrap();
    let predicted = lines(&ok(&st(&[
        "predict",
        "--model",
        out.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ])));
    assert_eq!(predicted.len(), 2);
    let p = predicted[0]["topic"]["probability"].as_f64().unwrap();
    assert!(p > 0.0 && p <= 1.0);
    assert!(predicted[1]["sentiment"]["label"].is_string());

    // The trained folder is also a plain sentence-transformers model.
    let emb = lines(&ok(&st(&[
        "encode",
        "--model",
        out.to_str().unwrap(),
        "hello",
    ])));
    assert_eq!(emb[0]["embedding"].as_array().unwrap().len(), 384);

    // Eval data with a task the model lacks is refused by file and line.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"text\": \"x\", \"labels\": {\"color\": \"red\"}}\n",
    )
    .unwrap();
    let err = failed(&st(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        bad.to_str().unwrap(),
    ]));
    assert!(
        err.contains("bad.jsonl:1") && err.contains("color"),
        "{err}"
    );
}

#[test]
fn outputs_that_are_not_regular_files_are_written_in_place() {
    use std::os::unix::fs::FileTypeExt;
    let encode_to = |output: &str| st(&["encode", "--model", model(), "hi", "--output", output]);
    let is_device = |path: &str| {
        std::fs::metadata(path)
            .unwrap()
            .file_type()
            .is_char_device()
    };
    // A full device: the write fails, st says so naming the path once, and the node stays.
    let err = failed(&encode_to("/dev/full"));
    assert_eq!(err.matches("/dev/full").count(), 1, "{err}");
    assert!(!err.contains(".tmp-"), "{err}");
    assert!(is_device("/dev/full"));
    ok(&encode_to("/dev/null"));
    assert!(is_device("/dev/null"));
    // An output folder is refused without leaving a temporary beside it.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out");
    std::fs::create_dir(&target).unwrap();
    let err = failed(&encode_to(target.to_str().unwrap()));
    assert!(err.contains("is a folder"), "{err}");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn a_reader_that_stops_early_ends_st_quietly() {
    use std::io::BufRead;
    let mut args = vec!["encode", "--model", model(), "--batch-size", "1"];
    let texts: Vec<String> = (0..64).map(|i| format!("sentence number {i}")).collect();
    args.extend(texts.iter().map(String::as_str));
    let mut child = Command::new(env!("CARGO_BIN_EXE_st"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    drop(stdout); // `| head -1`
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(first.contains("sentence number 0"), "{first}");
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(!stderr.to_lowercase().contains("pipe"), "{stderr}");
}
