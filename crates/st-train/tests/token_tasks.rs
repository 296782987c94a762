//! Token classification on tokenizers that split words into pieces differently from BERT's
//! WordPiece: the tiny RoBERTa (byte-level BPE, `Ġ` marks a word after a space) and XLM-R
//! (sentencepiece Unigram, `▁` marks every word) folders of st-backbone's parity tests.
//!
//! Word labels must sit on each word's first sub-token, and the ids of a word-labelled example
//! must be those of its sentence (what the encoder sees when it encodes or predicts the text).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn_autodiff::Autodiff;
use burn_flex::Flex;
use burn_store::ModuleSnapshot;
use st_heads::IGNORE;
use st_pooling::SentenceEncoder;
use st_train::batch::{head_specs, prepare};
use st_train::evaluate::kinds_of;
use st_train::kinds::Target;
use st_train::{DataSpec, Decay, Event, LayerwiseLrDecay, TaskOptions, TrainConfig, train};

type B = Autodiff<Flex>;

fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn fixture_model(family: &str) -> PathBuf {
    manifest_dir()
        .join("../st-backbone/tests/fixtures")
        .join(family)
        .join("model")
}

fn words(sentence: &str) -> Vec<String> {
    sentence.split_whitespace().map(String::from).collect()
}

/// A sentence whose words split into several pieces in both vocabularies, some with a lone
/// space-marker piece first (`Ġ in`, `▁ in`), one with a two-byte character (`ü`: `ZÃ ¼`);
/// short enough for the fixtures' 24 tokens.
const SENTENCE: &str = "The engineer in Zürich paints";

/// The pieces of [`SENTENCE`] and the index of each word's first piece, as Python
/// `tokenizers` gives them for the sentence (`Tokenizer.from_file(...).encode(SENTENCE)`:
/// `tokens`, and the first position of each value of `word_ids`), checked by hand.
fn expected_pieces(family: &str) -> (Vec<&'static str>, Vec<usize>) {
    match family {
        "roberta" => (
            vec![
                "<s>", "The", "Ġ", "en", "g", "in", "e", "er", "Ġ", "in", "Ġ", "ZÃ", "¼", "ric",
                "h", "Ġpa", "in", "ts", "</s>",
            ],
            vec![1, 2, 8, 10, 15],
        ),
        "xlm-roberta" => (
            vec![
                "<s>",
                "▁T",
                "he",
                "▁engineer",
                "▁",
                "in",
                "▁Zürich",
                "▁pa",
                "in",
                "t",
                "s",
                "</s>",
            ],
            vec![1, 3, 4, 6, 7],
        ),
        other => panic!("no expectation for {other}"),
    }
}

/// The example's ids are its sentence's, and each word's tag lands on its first piece.
#[test]
fn word_labels_sit_on_the_first_piece_of_each_word() {
    for family in ["roberta", "xlm-roberta"] {
        let encoder =
            SentenceEncoder::<Flex>::from_dir(fixture_model(family), &Default::default()).unwrap();
        let words = words(SENTENCE);
        let (encoded, starts) = encoder.tokenize_words(&words).unwrap();
        let sentence = encoder.tokenize(&[SENTENCE]).unwrap().remove(0);
        assert_eq!(
            encoded.ids, sentence.ids,
            "{family}: ids differ from the sentence's"
        );

        let (pieces, firsts) = expected_pieces(family);
        let tokens: Vec<String> = encoded
            .ids
            .iter()
            .map(|&id| encoder.tokenizer.inner().id_to_token(id).unwrap())
            .collect();
        assert_eq!(tokens, pieces, "{family}: pieces");
        let mut want = vec![None; tokens.len()];
        for (word, &at) in firsts.iter().enumerate() {
            want[at] = Some(word);
        }
        assert_eq!(starts, want, "{family}: first pieces");

        // Through the trainer's data preparation: the tag ids land on those pieces only.
        let examples = token_examples(std::slice::from_ref(&words));
        let specs = head_specs(&examples, &BTreeMap::new(), encoder.embedding_dim()).unwrap();
        let model =
            st_heads::MultiTaskModel::new(encoder.clone(), specs.clone(), &Default::default())
                .unwrap();
        let rows = prepare(&encoder, &specs, &kinds_of(&model), &examples).unwrap();
        let Some(Target::Tokens(targets)) = &rows[0].targets[0] else {
            panic!("{family}: not a token target");
        };
        for (i, target) in targets.iter().enumerate() {
            let want = match starts[i] {
                Some(w) => specs[0].label_id(&tag(&words[w])).unwrap() as i64,
                None => IGNORE,
            };
            assert_eq!(
                *target, want,
                "{family}: target of piece {i} ({})",
                tokens[i]
            );
        }
    }
}

/// Every sentence of the fixture corpus (accents, punctuation, digits): ids equal to the
/// sentence's, and exactly one first piece per word, in word order (none is truncated).
#[test]
fn every_word_gets_one_first_piece() {
    let corpus = [
        "A man is eating food.",
        "Hi",
        "Prices: 12.50 €!",
        "naïve café?",
        "Her brother repairs an old wooden boat.",
        "Two  spaces and\ta tab",
    ];
    for family in ["roberta", "xlm-roberta", "distilbert"] {
        let encoder =
            SentenceEncoder::<Flex>::from_dir(fixture_model(family), &Default::default()).unwrap();
        for sentence in corpus {
            let words = words(sentence);
            let (encoded, starts) = encoder.tokenize_words(&words).unwrap();
            let joined = words.join(" ");
            let plain = encoder.tokenize(&[joined.as_str()]).unwrap().remove(0);
            assert_eq!(encoded.ids, plain.ids, "{family}: {sentence:?}");
            assert!(!encoded.truncated);
            let firsts: Vec<usize> = starts.iter().flatten().copied().collect();
            assert_eq!(
                firsts,
                (0..words.len()).collect::<Vec<_>>(),
                "{family}: {sentence:?}"
            );
        }
    }
}

/// The tag of a word: an entity when it is capitalized, else outside.
fn tag(word: &str) -> String {
    if word.starts_with(char::is_uppercase) {
        "B-ENT".into()
    } else {
        "O".into()
    }
}

fn token_examples(sentences: &[Vec<String>]) -> Vec<st_train::Example> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tags.jsonl");
    write_token_data(&path, sentences);
    st_train::data::load(&DataSpec::new(&path)).unwrap()
}

/// `{"tokens": [...], "labels": {"ner": [...]}}` per sentence.
fn write_token_data(path: &Path, sentences: &[Vec<String>]) {
    let lines: Vec<String> = sentences
        .iter()
        .map(|words| {
            let tags: Vec<String> = words.iter().map(|w| tag(w)).collect();
            serde_json::json!({ "tokens": words, "labels": { "ner": tags } }).to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Short sentences (within the fixtures' 24 tokens) mixing capitalized names and plain words.
fn training_sentences() -> Vec<Vec<String>> {
    let names = ["Anna", "Zürich", "Bob", "Paris", "Maria", "Berlin"];
    let rest = ["saw", "the", "old", "boat", "near", "a", "red", "house"];
    (0..48)
        .map(|i| {
            let mut words = vec![names[i % names.len()].to_string()];
            words.extend((0..4).map(|k| rest[(i * 3 + k * 5) % rest.len()].to_string()));
            words.push(names[(i / 2 + 1) % names.len()].to_string());
            words
        })
        .collect()
}

/// Every float tensor of a module, by path.
fn snapshot<M: Module<B>>(m: &M) -> BTreeMap<String, Vec<f32>> {
    m.collect(None, None, false)
        .into_iter()
        .map(|s| {
            let data = s.to_data().unwrap().convert::<f32>();
            (s.full_path(), data.to_vec::<f32>().unwrap())
        })
        .collect()
}

/// Twenty full-batch steps of one token task on each fixture: every loss finite, the last
/// steps' loss well below the first's, and the encoder's layers moved.
#[test]
fn a_token_task_trains_on_bpe_and_unigram_models() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tags.jsonl");
    let sentences = training_sentences();
    write_token_data(&data, &sentences);
    for family in ["roberta", "xlm-roberta"] {
        let model = fixture_model(family);
        let out = dir.path().join(family);
        let losses = train_token_task(&model, &data, &out, sentences.len());
        let first = losses[0];
        let last = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
        eprintln!("{family}: loss {first:.4} → {last:.4} ({losses:?})");
        assert!(
            losses.iter().all(|l| l.is_finite()),
            "{family}: losses {losses:?}"
        );
        assert!(last < 0.5 * first, "{family}: loss {first} → {last}");

        let before = SentenceEncoder::<B>::from_dir(&model, &Default::default()).unwrap();
        let after = st_train::load_trained::<B>(&out, &Default::default()).unwrap();
        let (b, a) = (snapshot(&before), snapshot(&after.encoder));
        let moved = b
            .iter()
            .filter(|(path, values)| path.contains("encoder.layer.") && a[*path] != **values)
            .count();
        assert!(moved > 10, "{family}: only {moved} encoder tensors moved");
    }
}

fn train_token_task(model: &Path, data: &Path, out: &Path, examples: usize) -> Vec<f64> {
    let mut c = TrainConfig::new(model.to_string_lossy(), vec![DataSpec::new(data)], out);
    c.batch_size = examples;
    c.epochs = 20;
    c.max_steps = Some(20);
    c.warmup_ratio = 0.0;
    c.schedule = Decay::Constant;
    c.lr = LayerwiseLrDecay::flat(3e-3);
    let no_dropout = TaskOptions {
        dropout: Some(0.0),
        ..Default::default()
    };
    c.tasks = BTreeMap::from([("ner".to_string(), no_dropout)]);
    let mut losses = Vec::new();
    train::<B>(&c, model, &Default::default(), &mut |e| {
        if let Event::Step { losses: l, .. } = e {
            losses.extend(l.iter().map(|(_, loss, _)| *loss));
        }
    })
    .unwrap();
    assert_eq!(losses.len(), 20);
    losses
}
