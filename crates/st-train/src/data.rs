//! Labelled examples: our multi-task JSONL format and readers for public datasets.
//!
//! Every reader keeps where each example came from, so a bad line or an unknown label is reported
//! as `file:line`, never skipped silently.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use st_heads::HeadKind;

use crate::TrainError;

/// A label for one task on one example.
#[derive(Debug, Clone, PartialEq)]
pub enum Label {
    /// Sentence or pair classification: one class name.
    Class(String),
    /// Token classification: one IOB2 tag per word.
    Tags(Vec<String>),
    /// Similarity of a pair (readers of public datasets scale it to [0, 1]).
    Score(f64),
    /// Retrieval: the record's second text is the anchor's positive (a third, a hard negative).
    Ranked,
}

/// The task name retrieval records (`anchor`, `positive`) are trained under, unless renamed.
pub const RETRIEVAL_TASK: &str = "retrieval";

/// One labelled text, pair or triplet. Examples may carry labels for some tasks only (partial
/// labels).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The text; of a pair, the first one; of a retrieval record, the anchor.
    pub text: String,
    /// The words, for examples with token labels (then `text` is the words joined by spaces).
    pub words: Option<Vec<String>>,
    /// The texts after `text`: a pair's second text, or a retrieval record's positive and
    /// optional negative. Empty for single texts.
    pub paired: Vec<String>,
    pub labels: BTreeMap<String, Label>,
    pub file: Arc<PathBuf>,
    pub line: usize,
}

impl Example {
    /// `file:line` of this example.
    pub fn origin(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }

    /// All the example's texts: `text`, then `paired`.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.text.as_str()).chain(self.paired.iter().map(String::as_str))
    }

    /// The kind of task `label` labels on this example: a class on one text is sentence
    /// classification, on a pair pair classification; a score is similarity.
    pub fn kind_of(&self, label: &Label) -> HeadKind {
        match label {
            Label::Class(_) if self.paired.is_empty() => HeadKind::Sentence,
            Label::Class(_) => HeadKind::PairClassification,
            Label::Tags(_) => HeadKind::Token,
            Label::Score(_) => HeadKind::Similarity,
            Label::Ranked => HeadKind::Retrieval,
        }
    }
}

/// Dataset formats st reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// st's own format: `{"text": ..., "labels": {"task": "label"}}` or
    /// `{"tokens": [...], "labels": {"task": ["O", "B-X", ...]}}`, one object per line.
    Jsonl,
    /// SST-2 TSV (`sentence<TAB>label`, header), labels 0/1 → negative/positive. Task `sentiment`.
    Sst2,
    /// TREC (`COARSE:fine question`, latin-1), coarse labels. Task `topic`.
    Trec,
    /// TREC with the 50 fine labels (`COARSE:fine`). Task `topic`.
    TrecFine,
    /// BANKING77 CSV (`text,category`, RFC 4180 quoting). Task `intent`.
    Banking77,
    /// SNIPS split folder (`seq.in`, `seq.out`, `label`). Tasks `intent` and `slots`.
    Snips,
    /// WNUT-17 CoNLL (`token<TAB>tag`, blank line between sentences). Task `ner`.
    Wnut17,
    /// STS Benchmark CSV (tab-separated: genre, file, year, id, score, sentence1, sentence2).
    /// Task `sts`, a similarity with the 0–5 score scaled to [0, 1] (score / 5, as
    /// sentence-transformers' STS-B training script does).
    Stsb,
    /// SICK (tab-separated with a header: pair_ID, sentence_A, sentence_B, relatedness_score,
    /// entailment_judgment). Tasks `relatedness` (similarity, the 1–5 score scaled to [0, 1]) and
    /// `entailment` (pair classification: entailment, neutral, contradiction).
    Sick,
    /// MSR Paraphrase (tab-separated with a header: Quality, #1 ID, #2 ID, #1 String,
    /// #2 String). Task `paraphrase`, pair classification: paraphrase / not_paraphrase.
    Msrp,
}

impl Format {
    /// Guesses the format from a path: `.jsonl` files, SNIPS folders, and the public file names.
    pub fn guess(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_string_lossy().to_lowercase();
        let full = path.to_string_lossy().to_lowercase();
        if name.ends_with(".jsonl") {
            Some(Format::Jsonl)
        } else if path.join("seq.in").is_file() {
            Some(Format::Snips)
        } else if full.contains("sst2") && name.ends_with(".tsv") {
            Some(Format::Sst2)
        } else if name.ends_with(".label") {
            Some(Format::Trec)
        } else if full.contains("banking77") && name.ends_with(".csv") {
            Some(Format::Banking77)
        } else if name.ends_with(".conll") || full.contains("wnut17") {
            Some(Format::Wnut17)
        } else if name.starts_with("sts-") && name.ends_with(".csv") {
            Some(Format::Stsb)
        } else if name.starts_with("sick") && name.ends_with(".txt") {
            Some(Format::Sick)
        } else if name.starts_with("msr-para") && name.ends_with(".tsv") {
            Some(Format::Msrp)
        } else {
            None
        }
    }
}

/// Where to read a dataset and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    pub path: PathBuf,
    /// Format; guessed from the path when absent.
    #[serde(default)]
    pub format: Option<Format>,
    /// Renames tasks of the format (`{"sentiment" = "task_b"}`).
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Leave out this many examples first (before `limit`): the rows of a training file after
    /// the ones a run trains on make a held-out dev set.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skip: usize,
    /// Read at most this many examples (the first ones after `skip`), e.g. for quick runs.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Keep only these tasks' labels (after `rename`), e.g. SICK's `relatedness` without its
    /// `entailment`; examples left without a label are dropped. Empty: every task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
}

impl DataSpec {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            format: None,
            rename: BTreeMap::new(),
            skip: 0,
            limit: None,
            tasks: Vec::new(),
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn err(path: &Path, line: usize, message: impl Into<String>) -> TrainError {
    TrainError::Data {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

fn read_utf8(path: &Path) -> Result<String, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| err(path, 0, e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        err(path, line, "invalid UTF-8")
    })
}

/// Reads a dataset. Every example's task names pass through `spec.rename`.
pub fn load(spec: &DataSpec) -> Result<Vec<Example>, TrainError> {
    let path = &spec.path;
    let format = match spec.format.or_else(|| Format::guess(path)) {
        Some(f) => f,
        None => {
            return Err(err(
                path,
                0,
                "cannot tell the dataset format from the name: set `format` \
                 (jsonl, sst2, trec, trec_fine, banking77, snips, wnut17, stsb, sick, msrp)",
            ));
        }
    };
    if !path.exists() {
        return Err(err(path, 0, "no such file or folder"));
    }
    let mut examples = match format {
        Format::Jsonl => read_jsonl(path)?,
        Format::Sst2 => read_sst2(path)?,
        Format::Trec => read_trec(path, false)?,
        Format::TrecFine => read_trec(path, true)?,
        Format::Banking77 => read_banking77(path)?,
        Format::Snips => read_snips(path)?,
        Format::Wnut17 => read_conll(path, "ner")?,
        Format::Stsb => read_stsb(path)?,
        Format::Sick => read_sick(path)?,
        Format::Msrp => read_msrp(path)?,
    };
    if spec.skip > 0 && spec.skip >= examples.len() {
        return Err(err(
            path,
            0,
            format!(
                "`skip = {}` leaves no examples: the file has {}",
                spec.skip,
                examples.len()
            ),
        ));
    }
    examples.drain(..spec.skip);
    if let Some(n) = spec.limit {
        examples.truncate(n);
    }
    if !spec.rename.is_empty() {
        for ex in &mut examples {
            ex.labels = std::mem::take(&mut ex.labels)
                .into_iter()
                .map(|(task, label)| (spec.rename.get(&task).cloned().unwrap_or(task), label))
                .collect();
        }
    }
    if !spec.tasks.is_empty() {
        for ex in &mut examples {
            ex.labels.retain(|task, _| spec.tasks.contains(task));
        }
        examples.retain(|ex| !ex.labels.is_empty());
    }
    if examples.is_empty() {
        return Err(err(path, 0, "no examples"));
    }
    Ok(examples)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRecord {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tokens: Option<Vec<String>>,
    /// Shorthand for a single token task named `tags`.
    #[serde(default)]
    tags: Option<Vec<String>>,
    /// A pair: `text1` and `text2`.
    #[serde(default)]
    text1: Option<String>,
    #[serde(default)]
    text2: Option<String>,
    /// A retrieval record: `anchor`, `positive` and an optional hard `negative`.
    #[serde(default)]
    anchor: Option<String>,
    #[serde(default)]
    positive: Option<String>,
    #[serde(default)]
    negative: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, serde_json::Value>,
}

/// The texts of a record, by its shape.
enum Texts {
    One(String),
    Words(Vec<String>),
    Pair(String, String),
    Retrieval(Vec<String>),
}

impl JsonRecord {
    /// Takes the record's texts out, checking it has exactly one shape.
    fn texts(&mut self) -> Result<Texts, String> {
        let pair = self.text1.is_some() || self.text2.is_some();
        let retrieval = self.anchor.is_some() || self.positive.is_some() || self.negative.is_some();
        let shapes = [self.text.is_some(), self.tokens.is_some(), pair, retrieval];
        if shapes.iter().filter(|&&s| s).count() != 1 {
            return Err(
                "a record has exactly one of `text`, `tokens`, `text1` + `text2`, or \
                        `anchor` + `positive` (+ `negative`)"
                    .into(),
            );
        }
        if let Some(text) = self.text.take() {
            return Ok(Texts::One(text));
        }
        if let Some(words) = self.tokens.take() {
            return Ok(Texts::Words(words));
        }
        if pair {
            return match (self.text1.take(), self.text2.take()) {
                (Some(a), Some(b)) => Ok(Texts::Pair(a, b)),
                _ => Err("a pair needs both `text1` and `text2`".into()),
            };
        }
        match (self.anchor.take(), self.positive.take()) {
            (Some(anchor), Some(positive)) => Ok(Texts::Retrieval(
                [Some(anchor), Some(positive), self.negative.take()]
                    .into_iter()
                    .flatten()
                    .collect(),
            )),
            _ => Err("a retrieval record needs both `anchor` and `positive`".into()),
        }
    }
}

/// One label of a JSONL record; `pair` says whether the record is a pair (numbers are
/// similarity scores there).
fn json_label(task: &str, value: serde_json::Value, pair: bool) -> Result<Option<Label>, String> {
    Ok(Some(match value {
        serde_json::Value::String(s) => Label::Class(s),
        serde_json::Value::Number(x) if pair => match x.as_f64().filter(|x| x.is_finite()) {
            Some(x) => Label::Score(x),
            None => return Err(format!("task `{task}`: score {x} is not a finite number")),
        },
        // A number or a boolean is not a class name: `3` and `"3"` would silently become the
        // same class, `true` a class called "true".
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
            return Err(format!(
                "task `{task}`: label {value} must be a string (write \"{value}\" for a class \
                 named {value}; a number is a similarity score, on a `text1`/`text2` pair)"
            ));
        }
        serde_json::Value::Array(items) if !pair => Label::Tags(
            items
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => Ok(s),
                    other => Err(format!("task `{task}`: tag {other} is not a string")),
                })
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Null => return Ok(None), // explicitly unlabelled
        other => {
            return Err(format!(
                "task `{task}`: label {other} must be a string, a list of tags (on `tokens`) \
                 or a score (on a pair)"
            ));
        }
    }))
}

/// Checks that every token task has one tag per word, and that tags come with words.
fn check_tags(labels: &BTreeMap<String, Label>, words: Option<&Vec<String>>) -> Result<(), String> {
    for (task, label) in labels {
        let Label::Tags(tags) = label else { continue };
        let Some(words) = words else {
            return Err(format!(
                "task `{task}` has tags but the record has no `tokens`"
            ));
        };
        if tags.len() != words.len() {
            return Err(format!(
                "task `{task}`: {} tags for {} tokens",
                tags.len(),
                words.len()
            ));
        }
    }
    Ok(())
}

/// One JSONL line as an example.
fn json_example(line: &str, file: &Arc<PathBuf>, n: usize) -> Result<Example, TrainError> {
    let fail = |message: String| err(file, n, message);
    let mut rec: JsonRecord =
        serde_json::from_str(line).map_err(|e| fail(format!("invalid record: {e}")))?;
    let texts = rec.texts().map_err(fail)?;
    let pair = matches!(texts, Texts::Pair(..));
    let mut labels = BTreeMap::new();
    for (task, value) in std::mem::take(&mut rec.labels) {
        if let Some(label) = json_label(&task, value, pair).map_err(fail)? {
            labels.insert(task, label);
        }
    }
    if let Some(tags) = rec.tags.take() {
        labels.insert("tags".into(), Label::Tags(tags));
    }
    let (text, words, paired) = match texts {
        Texts::One(text) => (text, None, Vec::new()),
        Texts::Words(words) => (words.join(" "), Some(words), Vec::new()),
        Texts::Pair(a, b) => (a, None, vec![b]),
        Texts::Retrieval(mut texts) => {
            if !labels.is_empty() {
                return Err(fail(format!(
                    "a retrieval record (`anchor`, `positive`) has no `labels`: it trains the \
                     task `{RETRIEVAL_TASK}` (rename it with the data source's `rename`)"
                )));
            }
            labels.insert(RETRIEVAL_TASK.into(), Label::Ranked);
            let anchor = texts.remove(0);
            (anchor, None, texts)
        }
    };
    check_tags(&labels, words.as_ref()).map_err(fail)?;
    Ok(Example {
        text,
        words,
        paired,
        labels,
        file: file.clone(),
        line: n,
    })
}

fn read_jsonl(path: &Path) -> Result<Vec<Example>, TrainError> {
    let text = read_utf8(path)?;
    let file = Arc::new(path.to_path_buf());
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| json_example(line, &file, i + 1))
        .collect()
}

fn single(task: &str, label: String) -> BTreeMap<String, Label> {
    BTreeMap::from([(task.to_string(), Label::Class(label))])
}

fn read_sst2(path: &Path) -> Result<Vec<Example>, TrainError> {
    let text = read_utf8(path)?;
    let file = Arc::new(path.to_path_buf());
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if n == 1 && line.starts_with("sentence") || line.trim().is_empty() {
            continue;
        }
        let (sentence, label) = line
            .rsplit_once('\t')
            .ok_or_else(|| err(path, n, "expected `sentence<TAB>label`"))?;
        let label = match label.trim() {
            "0" => "negative",
            "1" => "positive",
            other => return Err(err(path, n, format!("label `{other}` is not 0 or 1"))),
        };
        out.push(Example {
            text: sentence.trim().to_string(),
            words: None,
            paired: Vec::new(),
            labels: single("sentiment", label.into()),
            file: file.clone(),
            line: n,
        });
    }
    Ok(out)
}

fn read_trec(path: &Path, fine: bool) -> Result<Vec<Example>, TrainError> {
    // TREC's training file is latin-1: every byte is one character.
    let bytes = std::fs::read(path).map_err(|e| err(path, 0, e.to_string()))?;
    let text: String = bytes.iter().map(|&b| b as char).collect();
    let file = Arc::new(path.to_path_buf());
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let (label, question) = line
            .split_once(' ')
            .ok_or_else(|| err(path, n, "expected `COARSE:fine question`"))?;
        let (coarse, _) = label
            .split_once(':')
            .ok_or_else(|| err(path, n, format!("label `{label}` is not COARSE:fine")))?;
        out.push(Example {
            text: question.trim().to_string(),
            words: None,
            paired: Vec::new(),
            labels: single("topic", if fine { label } else { coarse }.to_string()),
            file: file.clone(),
            line: n,
        });
    }
    Ok(out)
}

/// Splits RFC 4180 CSV into records of fields, with the line each record starts on.
fn parse_csv(text: &str, path: &Path) -> Result<Vec<(usize, Vec<String>)>, TrainError> {
    let mut records = Vec::new();
    let mut field = String::new();
    let mut fields = Vec::new();
    let mut chars = text.chars().peekable();
    let (mut line, mut start) = (1, 1);
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                fields.push(std::mem::take(&mut field));
                records.push((start, std::mem::take(&mut fields)));
                line += 1;
                start = line;
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err(err(path, start, "unterminated quoted field"));
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        records.push((start, fields));
    }
    Ok(records)
}

fn read_banking77(path: &Path) -> Result<Vec<Example>, TrainError> {
    let text = read_utf8(path)?;
    let file = Arc::new(path.to_path_buf());
    let mut out = Vec::new();
    for (k, (n, fields)) in parse_csv(&text, path)?.into_iter().enumerate() {
        if k == 0 && fields.first().is_some_and(|f| f == "text") {
            continue;
        }
        if fields.len() == 1 && fields[0].is_empty() {
            continue;
        }
        let [text, category] = fields.as_slice() else {
            return Err(err(
                path,
                n,
                format!("expected 2 fields (text,category), found {}", fields.len()),
            ));
        };
        out.push(Example {
            text: text.clone(),
            words: None,
            paired: Vec::new(),
            labels: single("intent", category.clone()),
            file: file.clone(),
            line: n,
        });
    }
    Ok(out)
}

fn read_snips(dir: &Path) -> Result<Vec<Example>, TrainError> {
    let seq_in = dir.join("seq.in");
    let seq_out = dir.join("seq.out");
    let label = dir.join("label");
    let (words, tags, intents) = (
        read_utf8(&seq_in)?,
        read_utf8(&seq_out)?,
        read_utf8(&label)?,
    );
    let (words, tags, intents): (Vec<&str>, Vec<&str>, Vec<&str>) = (
        words.lines().collect(),
        tags.lines().collect(),
        intents.lines().collect(),
    );
    if words.len() != tags.len() || words.len() != intents.len() {
        return Err(err(
            dir,
            0,
            format!(
                "seq.in, seq.out and label have {}, {} and {} lines",
                words.len(),
                tags.len(),
                intents.len()
            ),
        ));
    }
    let file = Arc::new(seq_in.clone());
    let mut out = Vec::new();
    for (i, ((w, t), intent)) in words.iter().zip(&tags).zip(&intents).enumerate() {
        let n = i + 1;
        let w: Vec<String> = w.split_whitespace().map(String::from).collect();
        let t: Vec<String> = t.split_whitespace().map(String::from).collect();
        if w.len() != t.len() {
            return Err(err(
                &seq_out,
                n,
                format!("{} tags for {} words", t.len(), w.len()),
            ));
        }
        out.push(Example {
            text: w.join(" "),
            labels: BTreeMap::from([
                (
                    "intent".to_string(),
                    Label::Class(intent.trim().to_string()),
                ),
                ("slots".to_string(), Label::Tags(t)),
            ]),
            words: Some(w),
            paired: Vec::new(),
            file: file.clone(),
            line: n,
        });
    }
    Ok(out)
}

fn read_conll(path: &Path, task: &str) -> Result<Vec<Example>, TrainError> {
    let text = read_utf8(path)?;
    let file = Arc::new(path.to_path_buf());
    let mut out = Vec::new();
    let (mut words, mut tags, mut start) = (Vec::new(), Vec::new(), 1);
    let mut flush = |words: &mut Vec<String>, tags: &mut Vec<String>, start: usize| {
        if !words.is_empty() {
            out.push(Example {
                text: words.join(" "),
                labels: BTreeMap::from([(task.to_string(), Label::Tags(std::mem::take(tags)))]),
                words: Some(std::mem::take(words)),
                paired: Vec::new(),
                file: file.clone(),
                line: start,
            });
        }
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            flush(&mut words, &mut tags, start);
            start = n + 1;
            continue;
        }
        let (word, tag) = line
            .split_once('\t')
            .ok_or_else(|| err(path, n, "expected `token<TAB>tag`"))?;
        // Some WNUT tokens carry a byte-order mark; it is not part of the word.
        let word = word.replace('\u{feff}', "");
        words.push(if word.is_empty() { "_".into() } else { word });
        tags.push(tag.trim().to_string());
    }
    flush(&mut words, &mut tags, start);
    Ok(out)
}

/// One scored sentence pair of the STS Benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct StsPair {
    pub score: f64,
    pub sentence1: String,
    pub sentence2: String,
}

/// Reads an STS Benchmark file: tab-separated, no quoting, fields genre, file, year, id, score,
/// sentence1, sentence2 (some rows carry extra source columns after these; they are ignored).
pub fn read_sts(path: &Path) -> Result<Vec<StsPair>, TrainError> {
    let text = read_utf8(path)?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() < 7 {
            return Err(err(
                path,
                n,
                format!(
                    "expected at least 7 tab-separated fields (genre, file, year, id, score, \
                     sentence1, sentence2), found {}",
                    fields.len()
                ),
            ));
        }
        let score = fields[4]
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| {
                err(
                    path,
                    n,
                    format!("field 5 (score) is not a finite number: {:?}", fields[4]),
                )
            })?;
        pairs.push(StsPair {
            score,
            sentence1: fields[5].to_string(),
            sentence2: fields[6].to_string(),
        });
    }
    if pairs.is_empty() {
        return Err(err(path, 0, "no sentence pairs"));
    }
    Ok(pairs)
}

/// One pair example with the given labels.
fn pair(file: &Arc<PathBuf>, line: usize, a: &str, b: &str, labels: Vec<(&str, Label)>) -> Example {
    Example {
        text: a.to_string(),
        words: None,
        paired: vec![b.to_string()],
        labels: labels
            .into_iter()
            .map(|(task, label)| (task.to_string(), label))
            .collect(),
        file: file.clone(),
        line,
    }
}

/// STS-B as similarity examples (task `sts`, score / 5).
fn read_stsb(path: &Path) -> Result<Vec<Example>, TrainError> {
    let file = Arc::new(path.to_path_buf());
    // read_sts skips blank lines; count them back to report true line numbers.
    let text = read_utf8(path)?;
    let lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, _)| i + 1);
    Ok(read_sts(path)?
        .into_iter()
        .zip(lines)
        .map(|(p, n)| {
            let score = Label::Score(p.score / 5.0);
            pair(&file, n, &p.sentence1, &p.sentence2, vec![("sts", score)])
        })
        .collect())
}

/// Tab-separated rows after a header line, split into exactly `fields` fields (quoting off: these
/// files hold unbalanced quotes). A byte-order mark and CR line ends are dropped.
fn tsv_rows(path: &Path, fields: usize) -> Result<Vec<(usize, Vec<String>)>, TrainError> {
    let text = read_utf8(path)?;
    let mut rows = Vec::new();
    for (i, line) in text
        .trim_start_matches('\u{feff}')
        .lines()
        .enumerate()
        .skip(1)
    {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let row: Vec<String> = line.split('\t').map(String::from).collect();
        if row.len() != fields {
            return Err(err(
                path,
                i + 1,
                format!(
                    "expected {fields} tab-separated fields, found {}",
                    row.len()
                ),
            ));
        }
        rows.push((i + 1, row));
    }
    Ok(rows)
}

fn number(path: &Path, line: usize, field: &str, what: &str) -> Result<f64, TrainError> {
    field
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| {
            err(
                path,
                line,
                format!("{what} {field:?} is not a finite number"),
            )
        })
}

/// SICK: relatedness (1–5 → [0, 1]) and entailment on the same pairs.
fn read_sick(path: &Path) -> Result<Vec<Example>, TrainError> {
    let file = Arc::new(path.to_path_buf());
    tsv_rows(path, 5)?
        .into_iter()
        .map(|(n, row)| {
            let score = number(path, n, &row[3], "relatedness_score")?;
            let entailment = match row[4].trim() {
                "ENTAILMENT" => "entailment",
                "NEUTRAL" => "neutral",
                "CONTRADICTION" => "contradiction",
                other => {
                    return Err(err(
                        path,
                        n,
                        format!("entailment_judgment `{other}` is not ENTAILMENT, NEUTRAL or CONTRADICTION"),
                    ));
                }
            };
            let labels = vec![
                ("relatedness", Label::Score((score - 1.0) / 4.0)),
                ("entailment", Label::Class(entailment.into())),
            ];
            Ok(pair(&file, n, &row[1], &row[2], labels))
        })
        .collect()
}

/// MSRP: is `#2 String` a paraphrase of `#1 String`.
fn read_msrp(path: &Path) -> Result<Vec<Example>, TrainError> {
    let file = Arc::new(path.to_path_buf());
    tsv_rows(path, 5)?
        .into_iter()
        .map(|(n, row)| {
            let label = match row[0].trim() {
                "1" => "paraphrase",
                "0" => "not_paraphrase",
                other => return Err(err(path, n, format!("Quality `{other}` is not 0 or 1"))),
            };
            let labels = vec![("paraphrase", Label::Class(label.into()))];
            Ok(pair(&file, n, &row[3], &row[4], labels))
        })
        .collect()
}

/// What the training data says about one task: its kind and, for classification, its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskShape {
    pub kind: HeadKind,
    /// Sorted label names (every tag seen, for token tasks); empty for similarity and retrieval.
    pub labels: BTreeSet<String>,
}

/// The shape of each task in `examples`. A task labelled two ways (a class on one record, a
/// score on another) is an error naming the second record.
pub fn task_shapes(examples: &[Example]) -> Result<BTreeMap<String, TaskShape>, TrainError> {
    let mut shapes: BTreeMap<String, TaskShape> = BTreeMap::new();
    for ex in examples {
        for (task, label) in &ex.labels {
            let kind = ex.kind_of(label);
            let shape = shapes.entry(task.clone()).or_insert_with(|| TaskShape {
                kind,
                labels: BTreeSet::new(),
            });
            if shape.kind != kind {
                return Err(err(
                    &ex.file,
                    ex.line,
                    format!(
                        "task `{task}` is a {} task here but a {} task in earlier records",
                        kind.name(),
                        shape.kind.name()
                    ),
                ));
            }
            match label {
                Label::Class(c) => {
                    shape.labels.insert(c.clone());
                }
                Label::Tags(t) => shape.labels.extend(t.iter().cloned()),
                Label::Score(_) | Label::Ranked => {}
            }
        }
    }
    Ok(shapes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn jsonl_numeric_and_boolean_labels_are_refused_by_line() {
        let dir = tempfile::tempdir().unwrap();
        for (i, label) in ["3", "true", "2.5"].iter().enumerate() {
            let name = format!("l{i}.jsonl");
            let body = format!(
                "{{\"text\": \"ok\", \"labels\": {{\"t\": \"a\"}}}}\n{{\"text\": \"x\", \"labels\": {{\"t\": {label}}}}}\n"
            );
            let p = write(dir.path(), &name, body.as_bytes());
            let e = load(&DataSpec::new(&p)).unwrap_err().to_string();
            assert!(e.contains(&format!("{name}:2")), "{e}");
            assert!(e.contains("must be a string"), "{e}");
        }
    }

    #[test]
    fn jsonl_partial_labels_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "d.jsonl",
            br#"{"text": "great match", "labels": {"topic": "sports", "sentiment": "positive"}}
{"text": "stocks fell", "labels": {"topic": "business"}}

{"tokens": ["Ann", "runs"], "labels": {"ner": ["B-PER", "O"]}}
"#,
        );
        let ex = load(&DataSpec::new(&p)).unwrap();
        assert_eq!(ex.len(), 3);
        assert_eq!(ex[1].labels.len(), 1);
        assert_eq!(ex[2].text, "Ann runs");
        assert_eq!(ex[2].line, 4);
        let shapes = task_shapes(&ex).unwrap();
        assert_eq!(shapes["ner"].kind, HeadKind::Token);
        assert_eq!(
            shapes["ner"].labels,
            BTreeSet::from(["B-PER".into(), "O".into()])
        );
    }

    #[test]
    fn jsonl_pairs_and_retrieval_records_say_their_task_kind() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "pairs.jsonl",
            br#"{"text1": "a cat", "text2": "a kitten", "labels": {"sts": 4.2, "nli": "entailment"}}
{"anchor": "q", "positive": "answer", "negative": "other"}
{"anchor": "q2", "positive": "answer2"}
"#,
        );
        let ex = load(&DataSpec::new(&p)).unwrap();
        assert_eq!(ex[0].paired, vec!["a kitten".to_string()]);
        assert_eq!(ex[0].labels["sts"], Label::Score(4.2));
        assert_eq!(
            ex[1].texts().collect::<Vec<_>>(),
            vec!["q", "answer", "other"]
        );
        assert_eq!(ex[2].paired.len(), 1);
        let shapes = task_shapes(&ex).unwrap();
        assert_eq!(shapes["sts"].kind, HeadKind::Similarity);
        assert_eq!(shapes["nli"].kind, HeadKind::PairClassification);
        assert_eq!(shapes[RETRIEVAL_TASK].kind, HeadKind::Retrieval);
    }

    #[test]
    fn jsonl_pair_mistakes_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&[u8], &str); 5] = [
            (
                br#"{"text": "x", "labels": {"sts": 3}}"#,
                "a number is a similarity score",
            ),
            (
                br#"{"text1": "x", "labels": {"sts": 3}}"#,
                "both `text1` and `text2`",
            ),
            (
                br#"{"text": "x", "text1": "y", "text2": "z"}"#,
                "exactly one of",
            ),
            (
                br#"{"anchor": "q", "positive": "p", "labels": {"t": "a"}}"#,
                "no `labels`",
            ),
            (
                br#"{"text1": "a", "text2": "b", "labels": {"t": ["O"]}}"#,
                "a score (on a pair)",
            ),
        ];
        for (record, expect) in cases {
            let p = write(
                dir.path(),
                "bad.jsonl",
                &[b"{\"text\": \"ok\"}\n", record].concat(),
            );
            let e = load(&DataSpec::new(&p)).unwrap_err().to_string();
            assert!(e.contains("bad.jsonl:2") && e.contains(expect), "{e}");
        }
        let p = write(
            dir.path(),
            "mixed.jsonl",
            b"{\"text\": \"x\", \"labels\": {\"t\": \"a\"}}\n{\"text1\": \"x\", \"text2\": \"y\", \"labels\": {\"t\": 0.5}}\n",
        );
        let e = task_shapes(&load(&DataSpec::new(&p)).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mixed.jsonl:2") && e.contains("similarity task here"),
            "{e}"
        );
    }

    #[test]
    fn tasks_keeps_only_the_named_tasks_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "t.jsonl",
            br#"{"text": "a", "labels": {"x": "1", "y": "2"}}
{"text": "b", "labels": {"y": "3"}}
"#,
        );
        let spec = DataSpec {
            tasks: vec!["x".into()],
            ..DataSpec::new(&p)
        };
        let ex = load(&spec).unwrap();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].labels.keys().collect::<Vec<_>>(), vec!["x"]);
    }

    #[test]
    fn sick_msrp_and_stsb_read_as_pair_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let sick = write(
            dir.path(),
            "SICK_x.txt",
            b"pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\r\n1\tA b\tC d\t4.5\tNEUTRAL\r\n",
        );
        let ex = load(&DataSpec::new(&sick)).unwrap();
        assert_eq!(ex[0].labels["relatedness"], Label::Score(0.875));
        assert_eq!(ex[0].labels["entailment"], Label::Class("neutral".into()));
        assert_eq!(
            (ex[0].text.as_str(), ex[0].paired[0].as_str()),
            ("A b", "C d")
        );
        let msrp = write(
            dir.path(),
            "msr-para-x.tsv",
            "\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n1\t1\t2\tHe said \"x.\tHe said x.\r\n".as_bytes(),
        );
        let ex = load(&DataSpec::new(&msrp)).unwrap();
        assert_eq!(
            ex[0].labels["paraphrase"],
            Label::Class("paraphrase".into())
        );
        assert_eq!(ex[0].text, "He said \"x.");
        let stsb = write(
            dir.path(),
            "sts-x.csv",
            b"main\tf\t2012\t1\t2.5\tA\tB\n\nmain\tf\t2012\t2\t5.0\tC\tD\n",
        );
        let ex = load(&DataSpec::new(&stsb)).unwrap();
        assert_eq!(ex[0].labels["sts"], Label::Score(0.5));
        assert_eq!((ex[1].line, &ex[1].labels["sts"]), (3, &Label::Score(1.0)));
        let bad = write(
            dir.path(),
            "SICK_bad.txt",
            b"h\tb\tc\td\te\n1\tA\tB\tx\tNEUTRAL\n",
        );
        let e = load(&DataSpec::new(&bad)).unwrap_err().to_string();
        assert!(
            e.contains("SICK_bad.txt:2") && e.contains("relatedness_score"),
            "{e}"
        );
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "d.jsonl",
            b"{\"text\": \"a\"}\n{\"txt\": \"b\"}\n",
        );
        let e = load(&DataSpec::new(&p)).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:2") && e.contains("txt"), "{e}");
        let p = write(
            dir.path(),
            "t.jsonl",
            b"{\"tokens\": [\"a\"], \"labels\": {\"ner\": [\"O\", \"O\"]}}\n",
        );
        let e = load(&DataSpec::new(&p)).unwrap_err().to_string();
        assert!(
            e.contains("t.jsonl:1") && e.contains("2 tags for 1 tokens"),
            "{e}"
        );
    }

    #[test]
    fn csv_handles_quotes_and_crlf() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "banking77.csv",
            b"text,category\r\n\"Hi, \"\"card\"\" late?\",card_arrival\r\nplain,other\r\n",
        );
        let ex = load(&DataSpec {
            format: Some(Format::Banking77),
            ..DataSpec::new(&p)
        })
        .unwrap();
        assert_eq!(ex[0].text, "Hi, \"card\" late?");
        assert_eq!(ex[0].labels["intent"], Label::Class("card_arrival".into()));
        assert_eq!(ex[1].line, 3);
    }

    #[test]
    fn trec_reads_latin1_and_coarse_or_fine_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "x.label",
            b"NUM:dist How far is Caf\xe9 ?\nHUM:ind Who ?\n",
        );
        let ex = load(&DataSpec::new(&p)).unwrap();
        assert_eq!(ex[0].text, "How far is Café ?");
        assert_eq!(ex[0].labels["topic"], Label::Class("NUM".into()));
        let fine = load(&DataSpec {
            format: Some(Format::TrecFine),
            ..DataSpec::new(&p)
        })
        .unwrap();
        assert_eq!(fine[1].labels["topic"], Label::Class("HUM:ind".into()));
    }

    #[test]
    fn sst2_rejects_unknown_labels_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "sst2.tsv",
            b"sentence\tlabel\ngood fun \t1\nmeh \t7\n",
        );
        let e = load(&DataSpec {
            format: Some(Format::Sst2),
            ..DataSpec::new(&p)
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("sst2.tsv:3") && e.contains("`7`"), "{e}");
    }

    #[test]
    fn conll_strips_bom_and_splits_sentences() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "w.conll",
            "\u{feff}Ann\tB-person\nruns\tO\n\nok\tO\n".as_bytes(),
        );
        let ex = load(&DataSpec::new(&p)).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].words.as_ref().unwrap()[0], "Ann");
        assert_eq!(ex[1].line, 4);
    }

    #[test]
    fn sts_rows_are_checked_and_extra_columns_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "sts.csv",
            b"g\tf\t2012\t1\t3.5\tone\ttwo\tcredit\n",
        );
        let pairs = read_sts(&p).unwrap();
        assert_eq!((pairs[0].score, pairs[0].sentence2.as_str()), (3.5, "two"));
        let p = write(
            dir.path(),
            "bad.csv",
            b"g\tf\t2012\t1\t5.0\ta\tb\ng\tf\t2012\t2\tfive\ta\tb\n",
        );
        let e = read_sts(&p).unwrap_err().to_string();
        assert!(e.contains("bad.csv:2") && e.contains("score"), "{e}");
        let p = write(dir.path(), "short.csv", b"only\tthree\tfields\n");
        let e = read_sts(&p).unwrap_err().to_string();
        assert!(
            e.contains("short.csv:1") && e.contains("7 tab-separated"),
            "{e}"
        );
    }

    #[test]
    fn rename_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "x.label", b"NUM:dist a ?\nHUM:ind b ?\n");
        let spec = DataSpec {
            rename: BTreeMap::from([("topic".into(), "task_a".into())]),
            limit: Some(1),
            ..DataSpec::new(&p)
        };
        let ex = load(&spec).unwrap();
        assert_eq!(ex.len(), 1);
        assert!(ex[0].labels.contains_key("task_a"));
    }

    #[test]
    fn skip_holds_out_the_first_rows_before_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "x.label",
            b"NUM:dist a ?\nHUM:ind b ?\nLOC:city c ?\nDESC:def d ?\n",
        );
        let spec = DataSpec {
            skip: 1,
            limit: Some(2),
            ..DataSpec::new(&p)
        };
        let texts: Vec<String> = load(&spec).unwrap().into_iter().map(|e| e.text).collect();
        assert_eq!(texts, ["b ?", "c ?"]);
        let e = load(&DataSpec {
            skip: 4,
            ..DataSpec::new(&p)
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("x.label") && e.contains("skip = 4"), "{e}");
    }
}
