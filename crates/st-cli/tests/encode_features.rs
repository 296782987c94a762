//! `st encode`'s sentence-transformers features (--truncate-dim, .npy output, --precision,
//! prompts) and `st search`, against Python sentence-transformers 6.2.0 on the real
//! all-MiniLM-L6-v2: `tests/fixtures/encode_features.json` and `calibration.npy`, written by
//! `xtask/py/encode_features.py` (`cargo xtask reference` reruns it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{failed, manifest_dir, model_dir, ok, st_with_stdin};

use serde_json::Value;

fn model() -> &'static str {
    model_dir().to_str().unwrap()
}

fn fixtures() -> PathBuf {
    manifest_dir().join("tests/fixtures")
}

fn reference() -> &'static Value {
    static REF: OnceLock<Value> = OnceLock::new();
    REF.get_or_init(|| {
        let path = fixtures().join("encode_features.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (rerun xtask/py/encode_features.py)",
                path.display()
            )
        });
        serde_json::from_str(&text).unwrap()
    })
}

fn sentences() -> Vec<&'static str> {
    reference()["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

fn st(args: &[&str], stdin: Option<&[u8]>) -> Output {
    st_with_stdin(args, stdin)
}

/// `st search` of the query "x" against `corpus` with `extra` flags, which must fail: its stderr.
fn search_fails(corpus: &str, extra: &[&str]) -> String {
    let mut args = vec!["search", "--model", model(), "--corpus", corpus, "-q", "x"];
    args.extend_from_slice(extra);
    failed(&st(&args, None))
}

/// `st encode --model MiniLM EXTRA... SENTENCES...`, JSONL embeddings as f64 rows.
fn encode(extra: &[&str]) -> Vec<Vec<f64>> {
    let mut args = vec!["encode", "--model", model()];
    args.extend(extra);
    args.extend(sentences());
    ok(&st(&args, None))
        .lines()
        .map(|l| numbers(&serde_json::from_str::<Value>(l).unwrap()["embedding"]))
        .collect()
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(numbers).collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b)).max(1e-12)
}

fn max_abs_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f64::max)
}

/// Every row within cosine 0.9999 and `tol` per value of Python's; returns the max |diff|.
fn assert_matches_python(got: &[Vec<f64>], want: &[Vec<f64>], tol: f64, what: &str) -> f64 {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let c = cosine(g, w);
        assert!(c >= 0.9999, "{what}: sentence {i}: cosine {c} to Python");
    }
    let diff = max_abs_diff(got, want);
    assert!(diff <= tol, "{what}: max |diff| {diff} > {tol}");
    eprintln!("{what}: max |diff| to Python {diff:.2e}");
    diff
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[test]
fn truncate_dim_cuts_after_normalize_as_sentence_transformers() {
    let r = reference();
    let dim = r["truncate_dim"].as_u64().unwrap().to_string();
    let got = encode(&["--truncate-dim", &dim]);
    let want = matrix(&r["truncated"]);
    assert!(got.iter().all(|e| e.len() == 128));
    assert_matches_python(&got, &want, 1e-4, "--truncate-dim 128");
    // Python does not renormalize: the cut vectors are shorter than 1, and so are ours.
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (norm(g) - norm(w)).abs() < 1e-4 && norm(w) < 0.99,
            "{} vs {}",
            norm(g),
            norm(w)
        );
    }
    let got = encode(&["--truncate-dim", &dim, "--normalize-embeddings"]);
    assert_matches_python(
        &got,
        &matrix(&r["truncated_normalized"]),
        1e-4,
        "+ --normalize-embeddings",
    );
    assert!(got.iter().all(|e| (norm(e) - 1.0).abs() < 1e-5));
}

#[test]
fn truncate_dim_out_of_range_is_refused_and_similarity_uses_it() {
    for (n, words) in [
        ("0", "at least 1"),
        ("385", "larger than the model's embedding dimension (384)"),
    ] {
        let err = failed(&st(
            &["encode", "--model", model(), "--truncate-dim", n, "x"],
            None,
        ));
        assert!(
            err.contains("--truncate-dim") && err.contains(words),
            "{err}"
        );
    }
    // similarity's cosine of the first two sentences, at 128 dimensions, is Python's.
    let (a, b) = (sentences()[0], sentences()[1]);
    let table = ok(&st(
        &[
            "similarity",
            "--model",
            model(),
            "--truncate-dim",
            "128",
            a,
            b,
        ],
        None,
    ));
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    let got: f64 = row[row.len() - 2].parse().unwrap();
    let t = matrix(&reference()["truncated"]);
    let want = cosine(&t[0], &t[1]);
    let full = matrix(&reference()["float32"]);
    assert!((got - want).abs() <= 1.5e-3, "{table}\nPython: {want}");
    assert!(
        (want - cosine(&full[0], &full[1])).abs() > 5e-3,
        "truncation changes the cosine"
    );
}

/// A `.npy` file: (descr, shape, data bytes), checked against numpy's layout.
fn parse_npy(bytes: &[u8]) -> (String, (usize, usize), Vec<u8>) {
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!(
        (10 + len) % 64,
        0,
        "data aligned to 64 bytes as numpy writes it"
    );
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(
        header.ends_with('\n') && header.contains("'fortran_order': False"),
        "{header}"
    );
    let descr = header.split("'descr': '").nth(1).unwrap()[..3].to_string();
    let shape = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let dims: Vec<usize> = shape
        .split(',')
        .map(|d| d.trim().parse().unwrap())
        .collect();
    (descr, (dims[0], dims[1]), bytes[10 + len..].to_vec())
}

fn f32_rows(data: &[u8], cols: usize) -> Vec<Vec<f64>> {
    data.chunks(cols * 4)
        .map(|r| {
            r.chunks(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect()
        })
        .collect()
}

/// The Python of the reference environment, when it is there (`cargo xtask pyenv`).
fn python() -> Option<PathBuf> {
    let path = std::env::var_os("ST_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/st/pyenv/bin/python"))
        })?;
    path.is_file().then_some(path)
}

/// numpy's view of a .npy file: "dtype shape" and the values as JSON.
fn numpy_load(python: &Path, path: &Path) -> (String, Value) {
    let script = "import json, sys, numpy as np\n\
                  a = np.load(sys.argv[1])\n\
                  print(a.dtype.str, a.shape)\n\
                  print(json.dumps(a.tolist()))";
    let out = Command::new(python)
        .args(["-c", script])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, values) = text.split_once('\n').unwrap();
    (head.to_string(), serde_json::from_str(values).unwrap())
}

#[test]
fn npy_output_is_one_matrix_in_input_order_from_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("e.npy");
    let out_s = out.to_str().unwrap();
    let mut args = vec![
        "encode",
        "--model",
        model(),
        "--batch-size",
        "3",
        "--output",
        out_s,
    ];
    args.extend(sentences());
    assert!(ok(&st(&args, None)).is_empty());
    let bytes = std::fs::read(&out).unwrap();
    let (descr, (rows, cols), data) = parse_npy(&bytes);
    assert_eq!(
        (descr.as_str(), rows, cols),
        ("<f4", sentences().len(), 384)
    );
    let got = f32_rows(&data, cols);
    assert_matches_python(&got, &matrix(&reference()["float32"]), 1e-4, ".npy float32");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary left"
    );

    // The same matrix from a text file and from standard input (counted before the header).
    let text: String = sentences().iter().map(|s| format!("{s}\n")).collect();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, &text).unwrap();
    let from_file = dir.path().join("f.npy");
    let f = from_file.to_str().unwrap();
    ok(&st(
        &[
            "encode",
            "--model",
            model(),
            "--input",
            input.to_str().unwrap(),
            "-o",
            f,
        ],
        None,
    ));
    assert_eq!(std::fs::read(&from_file).unwrap(), bytes);
    ok(&st(
        &["encode", "--model", model(), "--input", "-", "-o", f],
        Some(text.as_bytes()),
    ));
    assert_eq!(std::fs::read(&from_file).unwrap(), bytes);
    ok(&st(
        &["encode", "--model", model(), "-o", f],
        Some(text.as_bytes()),
    ));
    assert_eq!(std::fs::read(&from_file).unwrap(), bytes);

    if let Some(python) = python() {
        let (head, values) = numpy_load(&python, &out);
        assert_eq!(head, format!("<f4 ({}, 384)", sentences().len()));
        assert_eq!(
            max_abs_diff(&matrix(&values), &got),
            0.0,
            "numpy reads what we wrote"
        );
    } else {
        eprintln!("no reference Python (cargo xtask pyenv): numpy's own check skipped");
    }
}

#[test]
fn unknown_output_extensions_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("e.csv");
    let err = failed(&st(
        &[
            "encode",
            "--model",
            model(),
            "-o",
            out.to_str().unwrap(),
            "x",
        ],
        None,
    ));
    assert!(
        err.contains("e.csv") && err.contains(".jsonl") && err.contains(".npy"),
        "{err}"
    );
    assert!(!out.exists());
    // An empty input gives an empty (0, 384) matrix.
    let out = dir.path().join("empty.npy");
    ok(&st(
        &["encode", "--model", model(), "-o", out.to_str().unwrap()],
        Some(b""),
    ));
    let (descr, shape, data) = parse_npy(&std::fs::read(&out).unwrap());
    assert_eq!((descr.as_str(), shape, data.len()), ("<f4", (0, 384), 0));
}

/// Integer rows of a JSON matrix.
fn codes(v: &Value) -> Vec<Vec<i64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        })
        .collect()
}

/// Python's float32 embeddings, exactly (JSON doubles of float32 values).
fn python_f32() -> Vec<Vec<f32>> {
    matrix(&reference()["float32"])
        .iter()
        .map(|r| r.iter().map(|&x| x as f32).collect())
        .collect()
}

fn row_codes(row: &st_pooling::QuantizedRow) -> Vec<i64> {
    match row {
        st_pooling::QuantizedRow::I8(v) => v.iter().map(|&x| x as i64).collect(),
        st_pooling::QuantizedRow::U8(v) => v.iter().map(|&x| x as i64).collect(),
        st_pooling::QuantizedRow::F32(_) => panic!("float row"),
    }
}

/// The calibration embeddings of the fixture, as f32 rows (a plain .npy of float32).
fn calibration_rows() -> Vec<Vec<f32>> {
    let bytes = std::fs::read(fixtures().join("calibration.npy")).unwrap();
    let (descr, (_, cols), data) = parse_npy(&bytes);
    assert_eq!(descr, "<f4");
    f32_rows(&data, cols)
        .iter()
        .map(|r| r.iter().map(|&x| x as f32).collect())
        .collect()
}

/// The quantization itself, on Python's own float32 embeddings: every code equals
/// `quantize_embeddings`' (ranges from the embeddings, or from the calibration set).
#[test]
fn quantization_is_bit_identical_to_quantize_embeddings() {
    use st_pooling::{Precision, Ranges, quantize};
    let floats = python_f32();
    let data = Ranges::from_rows(floats.iter().map(Vec::as_slice)).unwrap();
    let calibration = calibration_rows();
    let calibrated = Ranges::from_rows(calibration.iter().map(Vec::as_slice)).unwrap();
    let q = &reference()["quantized"];
    for (key, precision, ranges) in [
        ("int8", Precision::Int8, Some(&data)),
        ("uint8", Precision::Uint8, Some(&data)),
        ("binary", Precision::Binary, None),
        ("ubinary", Precision::Ubinary, None),
        ("int8_calibrated", Precision::Int8, Some(&calibrated)),
        ("uint8_calibrated", Precision::Uint8, Some(&calibrated)),
    ] {
        let got: Vec<Vec<i64>> = floats
            .iter()
            .map(|e| row_codes(&quantize(e, precision, ranges)))
            .collect();
        assert_eq!(got, codes(&q[key]), "{key}");
    }
}

/// Codes from st's own embeddings: equal to Python's but for values that sit within float
/// noise of a bucket edge (or of 0, for the sign bits): with ranges from the data, each
/// dimension's maximum lands on 255.0 or just under it (254) depending on the last bit of the
/// arithmetic, so up to 1% of the codes may differ by one. Returns how many differ.
fn assert_codes_close(got: &[Vec<i64>], want: &[Vec<i64>], what: &str) -> usize {
    assert_eq!(got.len(), want.len(), "{what}");
    let mut differ = 0;
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len(), "{what}");
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() <= 1, "{what}: code {a} vs Python's {b}");
            differ += usize::from(a != b);
        }
    }
    let total: usize = want.iter().map(Vec::len).sum();
    assert!(
        differ * 100 <= total,
        "{what}: {differ} of {total} codes differ"
    );
    eprintln!("{what}: {differ} of {total} codes differ from Python's by 1");
    differ
}

fn encode_codes(extra: &[&str]) -> Vec<Vec<i64>> {
    let mut args = vec!["encode", "--model", model()];
    args.extend(extra);
    args.extend(sentences());
    ok(&st(&args, None))
        .lines()
        .map(|l| {
            let line: Value = serde_json::from_str(l).unwrap();
            line["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn encode_precisions_match_python_in_jsonl_and_npy() {
    let q = &reference()["quantized"];
    let calibration = fixtures().join("calibration.npy");
    let cal = calibration.to_str().unwrap();
    for (key, extra) in [
        ("int8", vec!["--precision", "int8"]),
        ("uint8", vec!["--precision", "uint8"]),
        ("binary", vec!["--precision", "binary"]),
        ("ubinary", vec!["--precision", "ubinary"]),
        (
            "int8_calibrated",
            vec!["--precision", "int8", "--calibration", cal],
        ),
        (
            "uint8_calibrated",
            vec!["--precision", "uint8", "--calibration", cal],
        ),
    ] {
        assert_codes_close(&encode_codes(&extra), &codes(&q[key]), key);
    }
    let got = encode_codes(&["--truncate-dim", "128", "--precision", "binary"]);
    assert!(got.iter().all(|r| r.len() == 16));
    assert_codes_close(
        &got,
        &codes(&reference()["truncated_binary"]),
        "128 dims, binary",
    );

    // .npy: numpy's dtypes, the same codes as JSONL.
    let dir = tempfile::tempdir().unwrap();
    for (precision, descr, cols) in [
        ("int8", "|i1", 384),
        ("uint8", "|u1", 384),
        ("binary", "|i1", 48),
        ("ubinary", "|u1", 48),
    ] {
        let out = dir.path().join(format!("{precision}.npy"));
        let mut args = vec!["encode", "--model", model(), "--precision", precision];
        args.extend(["-o", out.to_str().unwrap()]);
        args.extend(sentences());
        ok(&st(&args, None));
        let (d, shape, data) = parse_npy(&std::fs::read(&out).unwrap());
        assert_eq!(
            (d.as_str(), shape),
            (descr, (sentences().len(), cols)),
            "{precision}"
        );
        let signed = descr == "|i1";
        let got: Vec<Vec<i64>> = data
            .chunks(cols)
            .map(|r| {
                r.iter()
                    .map(|&b| if signed { b as i8 as i64 } else { b as i64 })
                    .collect()
            })
            .collect();
        assert_eq!(
            got,
            encode_codes(&["--precision", precision]),
            "{precision}: .npy = JSONL"
        );
        if let Some(python) = python() {
            let (head, values) = numpy_load(&python, &out);
            let numpy_dtype = if signed { "|i1" } else { "|u1" };
            assert_eq!(
                head,
                format!("{numpy_dtype} ({}, {cols})", sentences().len())
            );
            assert_eq!(codes(&values), got, "numpy reads {precision}");
        }
    }
}

#[test]
fn precision_misuse_is_explained() {
    let calibration = fixtures().join("calibration.npy");
    let cal = calibration.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["encode", "--model", model()];
        args.extend(extra);
        failed(&st(&args, None))
    };
    let err = run(&["--precision", "int8", "just one"]);
    assert!(
        err.contains("--calibration") && err.contains("one embedding"),
        "{err}"
    );
    let err = run(&["--calibration", cal, "a", "b"]);
    assert!(err.contains("--precision int8 or uint8"), "{err}");
    let err = run(&[
        "--precision",
        "int8",
        "--calibration",
        cal,
        "--truncate-dim",
        "64",
        "a",
    ]);
    assert!(
        err.contains("calibration.npy") && err.contains("384 wide") && err.contains("64"),
        "{err}"
    );
    let err = run(&["--precision", "int4", "a"]);
    assert!(err.contains("int4") && err.contains("ubinary"), "{err}");
}

/// `st encode` of the fixture sentences into `dir/NAME` with `extra` flags.
fn encode_corpus(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let mut args = vec!["encode", "--model", model(), "-o", out.to_str().unwrap()];
    args.extend(extra);
    args.extend(sentences());
    ok(&st(&args, None));
    out
}

/// `st search --json` lines: per query, [(corpus_id, score, text)].
fn search(corpus: &Path, extra: &[&str]) -> Vec<Vec<(usize, f64, Option<String>)>> {
    let s = &reference()["search"];
    let mut args = vec![
        "search",
        "--model",
        model(),
        "--corpus",
        corpus.to_str().unwrap(),
    ];
    args.extend(["--top-k", "3", "--json"]);
    for q in s["queries"].as_array().unwrap() {
        args.extend(["--query", q.as_str().unwrap()]);
    }
    args.extend(extra);
    ok(&st(&args, None))
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["hits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    let text = h.get("text").map(|t| t.as_str().unwrap().to_string());
                    (
                        h["corpus_id"].as_u64().unwrap() as usize,
                        h["score"].as_f64().unwrap(),
                        text,
                    )
                })
                .collect()
        })
        .collect()
}

#[test]
fn search_ranks_as_semantic_search_on_npy_and_jsonl_corpora() {
    let dir = tempfile::tempdir().unwrap();
    let want: Vec<Vec<(usize, f64)>> = reference()["search"]["cosine_hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            let hits = q.as_array().unwrap();
            hits.iter()
                .map(|h| {
                    (
                        h["corpus_id"].as_u64().unwrap() as usize,
                        h["score"].as_f64().unwrap(),
                    )
                })
                .collect()
        })
        .collect();
    let texts = dir.path().join("corpus.txt");
    let lines: String = sentences().iter().map(|s| format!("{s}\n")).collect();
    std::fs::write(&texts, lines).unwrap();
    let npy = encode_corpus(dir.path(), "c.npy", &[]);
    let jsonl = encode_corpus(dir.path(), "c.jsonl", &[]);
    let with_texts = ["--texts", texts.to_str().unwrap()];
    for (what, got) in [
        (".npy", search(&npy, &[])),
        (".npy + --texts", search(&npy, &with_texts)),
        (".jsonl", search(&jsonl, &[])),
    ] {
        let mut max_diff: f64 = 0.0;
        for (g, w) in got.iter().zip(&want) {
            let ids: Vec<usize> = g.iter().map(|h| h.0).collect();
            assert_eq!(ids, w.iter().map(|h| h.0).collect::<Vec<_>>(), "{what}");
            for (h, (id, score)) in g.iter().zip(w) {
                max_diff = max_diff.max((h.1 - score).abs());
                let text = h.2.as_deref();
                assert_eq!(text.is_some(), what != ".npy", "{what}: text shown?");
                if let Some(t) = text {
                    assert_eq!(t, sentences()[*id]);
                }
            }
        }
        assert!(
            max_diff < 1e-5,
            "{what}: scores differ from Python's by {max_diff}"
        );
        eprintln!("search {what}: ids as semantic_search, max |score diff| {max_diff:.1e}");
    }
    // Human output: the query, then rank, score, row and text.
    let q = reference()["search"]["queries"][0].as_str().unwrap();
    let c = jsonl.to_str().unwrap();
    let text = ok(&st(
        &[
            "search",
            "--model",
            model(),
            "--corpus",
            c,
            "-q",
            q,
            "--top-k",
            "1",
        ],
        None,
    ));
    assert_eq!(text.lines().next().unwrap(), format!("query: {q}"));
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .ends_with("[0]  A man is eating food."),
        "{text}"
    );
}

#[test]
fn search_binary_corpora_by_hamming_distance() {
    let dir = tempfile::tempdir().unwrap();
    let hamming = codes(&reference()["search"]["hamming"]);
    let want: Vec<Vec<(usize, f64)>> = hamming
        .iter()
        .map(|d| {
            let mut ranked: Vec<(usize, f64)> = d.iter().map(|&x| x as f64).enumerate().collect();
            ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            ranked.truncate(3);
            ranked
        })
        .collect();
    for precision in ["ubinary", "binary"] {
        for ext in ["npy", "jsonl"] {
            let corpus = encode_corpus(
                dir.path(),
                &format!("{precision}.{ext}"),
                &["--precision", precision],
            );
            let got: Vec<Vec<(usize, f64)>> = search(&corpus, &[])
                .into_iter()
                .map(|q| q.into_iter().map(|h| (h.0, h.1)).collect())
                .collect();
            assert_eq!(
                got, want,
                "{precision} .{ext}: Hamming distances as numpy's"
            );
        }
    }
}

#[test]
fn search_scalar_corpora_need_their_calibration_and_bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let calibration = fixtures().join("calibration.npy");
    let cal = calibration.to_str().unwrap();
    let corpus = encode_corpus(
        dir.path(),
        "i8.npy",
        &["--precision", "int8", "--calibration", cal],
    );
    let c = corpus.to_str().unwrap();
    let err = failed(&st(
        &["search", "--model", model(), "--corpus", c, "-q", "x"],
        None,
    ));
    assert!(
        err.contains("--calibration") && err.contains("i8.npy"),
        "{err}"
    );
    // With the ranges, the codes rank the same nearest sentences as float32 does.
    let got = search(&corpus, &["--calibration", cal]);
    let hits = &reference()["search"]["cosine_hits"];
    for (q, g) in got.iter().enumerate() {
        assert_eq!(
            g[0].0 as u64,
            hits[q][0]["corpus_id"].as_u64().unwrap(),
            "query {q}"
        );
    }
    // A corpus of another width, texts that do not line up, and --top-k 0 are refused.
    let float = encode_corpus(dir.path(), "f.npy", &[]);
    let f = float.to_str().unwrap();
    let err = search_fails(f, &["--truncate-dim", "128"]);
    assert!(
        err.contains("f.npy") && err.contains("384 wide") && err.contains("128"),
        "{err}"
    );
    let texts = dir.path().join("t.txt");
    std::fs::write(&texts, "one\ntwo\n").unwrap();
    let t = texts.to_str().unwrap();
    let err = search_fails(f, &["--texts", t]);
    assert!(
        err.contains("t.txt holds 2 texts") && err.contains("8 embeddings"),
        "{err}"
    );
    let err = search_fails(f, &["--top-k", "0"]);
    assert!(err.contains("--top-k"), "{err}");
}

/// A copy of MiniLM (files linked, not copied) with its pooling config and
/// config_sentence_transformers.json changed as the fixture script changed them.
fn model_copy(dir: &Path, pooling: Option<Value>, st_config: Option<&Value>) -> PathBuf {
    let copy = dir.join("model");
    std::fs::create_dir_all(copy.join("1_Pooling")).unwrap();
    for entry in std::fs::read_dir(model()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::os::unix::fs::symlink(entry.path(), copy.join(entry.file_name())).unwrap();
        }
    }
    let pooling_path = Path::new(model()).join("1_Pooling/config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(pooling_path).unwrap()).unwrap();
    for (k, v) in pooling.iter().flat_map(|p| p.as_object().unwrap()) {
        config[k] = v.clone();
    }
    std::fs::write(copy.join("1_Pooling/config.json"), config.to_string()).unwrap();
    if let Some(st_config) = st_config {
        let path = copy.join("config_sentence_transformers.json");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(path, st_config.to_string()).unwrap();
    }
    copy
}

fn encode_with(model: &Path, extra: &[&str]) -> Vec<Vec<f64>> {
    let mut args = vec!["encode", "--model", model.to_str().unwrap()];
    args.extend(extra);
    args.extend(sentences());
    ok(&st(&args, None))
        .lines()
        .map(|l| numbers(&serde_json::from_str::<Value>(l).unwrap()["embedding"]))
        .collect()
}

#[test]
fn a_prompt_changes_the_embedding_as_in_python() {
    let r = reference();
    let prompt = r["prompt"].as_str().unwrap();
    let got = encode(&["--prompt", prompt]);
    assert_matches_python(
        &got,
        &matrix(&r["prompt_included"]),
        1e-4,
        "--prompt (included)",
    );
    let plain = matrix(&r["float32"]);
    for (i, (g, p)) in got.iter().zip(&plain).enumerate() {
        assert!(
            cosine(g, p) < 0.99,
            "sentence {i}: the prompt changed nothing"
        );
    }
    // include_prompt false: the prompt's tokens are left out of mean and cls pooling.
    for (key, pooling) in [
        (
            "prompt_excluded_mean",
            serde_json::json!({"include_prompt": false}),
        ),
        (
            "prompt_excluded_cls",
            serde_json::json!({"include_prompt": false, "pooling_mode_mean_tokens": false,
                               "pooling_mode_cls_token": true}),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let copy = model_copy(dir.path(), Some(pooling), None);
        let got = encode_with(&copy, &["--prompt", prompt]);
        assert_matches_python(&got, &matrix(&r[key]), 1e-4, key);
        if key == "prompt_excluded_mean" {
            // Python's own numbers tell exclusion from inclusion apart (cosine ≤ 0.984 here).
            let included = matrix(&r["prompt_included"]);
            assert!(got.iter().zip(&included).all(|(g, i)| cosine(g, i) < 0.99));
        }
    }
}

#[test]
fn prompts_by_name_and_by_default_come_from_the_model_config() {
    let r = reference();
    let dir = tempfile::tempdir().unwrap();
    let copy = model_copy(dir.path(), None, Some(&r["st_config"]));
    let got = encode_with(&copy, &[]);
    assert_matches_python(
        &got,
        &matrix(&r["default_prompt"]),
        1e-4,
        "default_prompt_name",
    );
    let got = encode_with(&copy, &["--prompt-name", "passage"]);
    assert_matches_python(
        &got,
        &matrix(&r["prompt_name_passage"]),
        1e-4,
        "--prompt-name passage",
    );
    // An empty --prompt is no prompt, default or not (as `encode(prompt="")`).
    let got = encode_with(&copy, &["--prompt", ""]);
    assert_matches_python(&got, &matrix(&r["float32"]), 1e-4, "--prompt ''");
    let c = copy.to_str().unwrap();
    let err = failed(&st(
        &["encode", "--model", c, "--prompt-name", "nope", "x"],
        None,
    ));
    assert!(
        err.contains("nope") && err.contains("passage, query"),
        "{err}"
    );
    // A default that names no prompt is refused naming the file.
    let bad = serde_json::json!({"prompts": {"query": "q: "}, "default_prompt_name": "doc"});
    let dir = tempfile::tempdir().unwrap();
    let copy = model_copy(dir.path(), None, Some(&bad));
    let err = failed(&st(
        &["encode", "--model", copy.to_str().unwrap(), "x"],
        None,
    ));
    assert!(
        err.contains("config_sentence_transformers.json") && err.contains("`doc`"),
        "{err}"
    );
}

/// `st info` shows the prompts, the default one and a saved truncate_dim; `st encode` cuts to
/// that truncate_dim as Python's `encode` does when the model carries one.
#[test]
fn info_shows_prompts_and_truncate_dim_which_encode_applies() {
    let r = reference();
    let mut config = r["st_config"].clone();
    config["truncate_dim"] = 128.into();
    let dir = tempfile::tempdir().unwrap();
    let copy = model_copy(dir.path(), None, Some(&config));
    let c = copy.to_str().unwrap();
    let info: Value =
        serde_json::from_str(ok(&st(&["info", "--model", c, "--json"], None)).trim()).unwrap();
    assert_eq!(info["prompts"], r["st_config"]["prompts"]);
    assert_eq!(info["default_prompt_name"], "query");
    assert_eq!(
        (&info["truncate_dim"], &info["embedding_dim"]),
        (&128.into(), &128.into())
    );

    let table = ok(&st(&["info", "--model", c], None));
    let row = |key: &str| -> String {
        let line = table.lines().find(|l| l.trim_start().starts_with(key));
        line.unwrap_or_else(|| panic!("no {key} row in\n{table}"))
            .into()
    };
    assert!(
        row("prompts").ends_with(r#"passage: "passage: ", query: "query: " (default)"#),
        "{table}"
    );
    assert!(row("truncate_dim").ends_with(" 128"), "{table}");

    // No --truncate-dim: the model's own (and its default prompt) apply.
    let got = encode_with(&copy, &[]);
    assert!(got.iter().all(|e| e.len() == 128));
    let want: Vec<Vec<f64>> = matrix(&r["default_prompt"])
        .into_iter()
        .map(|e| e[..128].to_vec())
        .collect();
    assert_matches_python(&got, &want, 1e-4, "saved truncate_dim");

    // A model without prompts or truncate_dim says so.
    let info: Value =
        serde_json::from_str(ok(&st(&["info", "--model", model(), "--json"], None)).trim())
            .unwrap();
    assert_eq!(info["prompts"], serde_json::json!({}));
    assert!(info["default_prompt_name"].is_null() && info["truncate_dim"].is_null());
    let table = ok(&st(&["info", "--model", model()], None));
    assert!(
        table.contains("prompts  none") && !table.contains("truncate_dim"),
        "{table}"
    );
}
