//! `st train`, `st eval` (task heads) and `st predict`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use st_backbone::{AutodiffEncoderBackend, EncoderBackend};
use st_train::predict::PredictInput;
use st_train::{
    DataSpec, Decay, Event, Freeze, FreezePlan, LayerwiseLrDecay, Sampling, TaskPrediction,
    TrainConfig, Weighting,
};

/// The commented example printed by `st train --print-config`.
pub const EXAMPLE_CONFIG: &str = include_str!("example-train.toml");

#[derive(Args)]
pub struct TrainArgs {
    /// A TOML file with every training setting (see --print-config). Other flags then only
    /// override `output`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["train", "eval", "test"])]
    config: Option<PathBuf>,
    /// Print a complete, commented example config and exit.
    #[arg(long)]
    print_config: bool,
    /// Model folder or Hugging Face id to start from.
    #[arg(long, short, default_value = st_hub::DEFAULT_MODEL)]
    model: String,
    /// Training data (repeat for several sources). JSONL `{"text": ..., "labels": {"task": "label"}}`,
    /// pairs `{"text1": ..., "text2": ..., "labels": {"sts": 4.2}}` (a number: similarity; a
    /// class: pair classification), retrieval `{"anchor": ..., "positive": ...[, "negative": ...]}`;
    /// or a public set: sst2 .tsv, trec .label, banking77 .csv, snips split folder, wnut17 .conll,
    /// STS-B sts-*.csv, SICK_*.txt, MSRP msr-para-*.tsv.
    #[arg(long, value_name = "FILE")]
    train: Vec<PathBuf>,
    /// Evaluation data, same formats (evaluated after every epoch; picks the best model).
    #[arg(long, value_name = "FILE")]
    eval: Vec<PathBuf>,
    /// Test data, same formats: the best model is scored on it once, after training, so no
    /// choice is made on it (report these numbers; --eval's are picked as the best).
    #[arg(long, value_name = "FILE")]
    test: Vec<PathBuf>,
    /// Folder for the best model, metrics.jsonl and the run's config.
    #[arg(long, short, value_name = "DIR")]
    output: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Stop after this many steps instead of epochs.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Base learning rate (top of the network and heads).
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    /// Layer-wise learning-rate decay factor (1 = flat).
    #[arg(long, default_value_t = 1.0)]
    layer_decay: f64,
    /// Learning rate of the task heads (default: --lr).
    #[arg(long)]
    head_lr: Option<f64>,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 128)]
    max_seq_length: usize,
    /// Freezing rule (repeatable): none, all, backbone, embeddings, bottom:K, head:NAME.
    #[arg(long, value_name = "RULE")]
    freeze: Vec<Freeze>,
    /// Task sampling: which source each step's batch comes from. round_robin, proportional,
    /// temperature:T (p ∝ size^(1/T)), or all_tasks (one batch of every source per step,
    /// weighted losses summed: use it with --weighting uncertainty or dwa).
    #[arg(long, default_value = "proportional", value_parser = parse_sampling)]
    sampling: Sampling,
    /// Loss weighting: static, uncertainty, dwa, rlw (random weights each step) or famo.
    #[arg(long, default_value = "static", value_parser = parse_weighting)]
    weighting: Weighting,
    /// Learning-rate decay after warm-up: linear, cosine, constant.
    #[arg(long, default_value = "linear", value_parser = parse_decay)]
    schedule: Decay,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Continue an interrupted run from OUTPUT/resume/ (written after every evaluation).
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Replace a trained model already in OUTPUT (without it, st refuses).
    #[arg(long)]
    overwrite: bool,
    /// Print the run's summary as JSON on stdout (steps, trainable parameters, the best
    /// evaluation's metrics, the test metrics, median step time: `st_runlog::TrainSummary`).
    #[arg(long)]
    json: bool,
}

fn parse_sampling(s: &str) -> Result<Sampling, String> {
    match s {
        "round_robin" | "round-robin" => Ok(Sampling::RoundRobin),
        "proportional" => Ok(Sampling::Proportional),
        "all_tasks" | "all-tasks" => Ok(Sampling::AllTasks),
        _ => match s.strip_prefix("temperature:").map(str::parse::<f64>) {
            Some(Ok(t)) if t > 0.0 => Ok(Sampling::Temperature { t }),
            _ => {
                Err("expected round_robin, proportional, all_tasks or temperature:T (T > 0)".into())
            }
        },
    }
}

fn parse_weighting(s: &str) -> Result<Weighting, String> {
    match s {
        "static" => Ok(Weighting::default()),
        "uncertainty" => Ok(Weighting::Uncertainty),
        "dwa" => Ok(Weighting::Dwa { temperature: 2.0 }),
        "rlw" => Ok(Weighting::Rlw),
        "famo" => Ok(Weighting::Famo {
            lr: 0.025,
            gamma: 0.01,
        }),
        _ => Err("expected static, uncertainty, dwa, rlw or famo".into()),
    }
}

fn parse_decay(s: &str) -> Result<Decay, String> {
    match s {
        "linear" => Ok(Decay::Linear),
        "cosine" => Ok(Decay::Cosine),
        "constant" => Ok(Decay::Constant),
        _ => Err("expected linear, cosine or constant".into()),
    }
}

fn config_from(args: &TrainArgs) -> Result<TrainConfig> {
    if let Some(path) = &args.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut config: TrainConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if let Some(out) = &args.output {
            config.output = out.clone();
        }
        config.resume |= args.resume;
        config.overwrite |= args.overwrite;
        config
            .validate()
            .with_context(|| format!("in {}", path.display()))?;
        return Ok(config);
    }
    if args.train.is_empty() {
        bail!("give --train FILE (or --config FILE; see --print-config)");
    }
    let Some(output) = &args.output else {
        bail!("give --output DIR for the trained model");
    };
    let mut config = TrainConfig::new(
        args.model.clone(),
        args.train.iter().map(DataSpec::new).collect(),
        output,
    );
    config.eval = args.eval.iter().map(DataSpec::new).collect();
    config.test = args.test.iter().map(DataSpec::new).collect();
    config.epochs = args.epochs;
    config.max_steps = args.max_steps;
    config.lr = LayerwiseLrDecay {
        base: args.lr,
        decay: args.layer_decay,
        head_lr: args.head_lr,
        overrides: vec![],
    };
    config.batch_size = args.batch_size;
    config.max_seq_length = args.max_seq_length;
    config.freeze = FreezePlan {
        rules: args.freeze.clone(),
        gradual: None,
    };
    config.sampling = args.sampling;
    config.weighting = args.weighting.clone();
    config.schedule = args.schedule;
    config.seed = args.seed;
    config.resume = args.resume;
    config.overwrite = args.overwrite;
    config.validate()?;
    Ok(config)
}

fn table(metrics: &BTreeMap<String, BTreeMap<String, f64>>) -> String {
    let mut out = String::new();
    for (task, m) in metrics {
        let cells: Vec<String> = m
            .iter()
            .filter(|(k, _)| k.as_str() != "n")
            .map(|(k, v)| format!("{k} {:.2}", v * 100.0))
            .collect();
        let n = m.get("n").copied().unwrap_or(0.0);
        out.push_str(&format!("  {task:<14} {}  (n={n})\n", cells.join("  ")));
    }
    out
}

pub fn train<B: AutodiffEncoderBackend>(args: TrainArgs, device: &B::Device) -> Result<()> {
    if args.print_config {
        print!("{EXAMPLE_CONFIG}");
        return Ok(());
    }
    let config = config_from(&args)?;
    let model_dir = st_hub::resolve(&config.model, &mut |m| eprintln!("{m}"))?;
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:25}] {msg} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut smoothed: BTreeMap<String, f64> = BTreeMap::new();
    let summary = st_train::train::<B>(&config, &model_dir, device, &mut |event| match event {
        Event::Groups(t) => eprintln!("parameter groups:\n{t}"),
        Event::Note(note) => bar.suspend(|| eprintln!("{note}")),
        Event::Step {
            step,
            total,
            losses,
        } => {
            bar.set_length(*total as u64);
            bar.set_position(*step as u64);
            for (task, loss, _) in losses {
                let e = smoothed.entry(task.clone()).or_insert(*loss);
                *e = 0.9 * *e + 0.1 * loss;
            }
            let msg: Vec<String> = smoothed
                .iter()
                .map(|(t, l)| format!("{t} {l:.3}"))
                .collect();
            bar.set_message(format!("loss: {}", msg.join(", ")));
        }
        Event::Eval {
            epoch,
            metrics,
            best,
        } => {
            bar.suspend(|| {
                eprintln!(
                    "epoch {epoch}{}:\n{}",
                    if *best { " (best so far, saved)" } else { "" },
                    table(metrics)
                )
            });
        }
        Event::Test(metrics) => {
            bar.suspend(|| eprintln!("test (best model):\n{}", table(metrics)));
        }
    })?;
    bar.finish_and_clear();
    if summary.steps == 0 {
        eprintln!(
            "nothing trained (every parameter frozen): baseline metrics only, no model written to {}",
            config.output.display()
        );
    } else {
        eprintln!(
            "{} steps, {} trainable parameters; best model in {}",
            summary.steps,
            summary.trainable_params,
            config.output.display()
        );
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", table(&summary.metrics));
        if !summary.test.is_empty() {
            print!("test (best model):\n{}", table(&summary.test));
        }
    }
    Ok(())
}

/// Resolves and loads a model trained by `st train` (encoder + heads).
fn load_trained<B: EncoderBackend>(
    model: &str,
    device: &B::Device,
) -> Result<st_heads::MultiTaskModel<B>> {
    let dir = st_hub::resolve(model, &mut |m| eprintln!("{m}"))?;
    st_train::load_trained::<B>(&dir, device).with_context(|| {
        format!(
            "loading a trained model (with heads.json) from {}",
            dir.display()
        )
    })
}

pub fn eval<B: EncoderBackend>(
    model: &str,
    data: &[PathBuf],
    json: bool,
    device: &B::Device,
) -> Result<()> {
    let model = load_trained::<B>(model, device)?;
    let specs: Vec<DataSpec> = data.iter().map(DataSpec::new).collect();
    let metrics = st_train::evaluate_on(&model, &specs, 64)?;
    for (task, values) in &metrics {
        if let Some((name, value)) = values.iter().find(|(_, v)| !v.is_finite()) {
            bail!(
                "task `{task}`: {name} is {value}: the model produces non-finite outputs \
                 (diverged or corrupt weights), so no metrics are reported"
            );
        }
    }
    if json {
        println!("{}", serde_json::to_string(&metrics)?);
    } else {
        print!("{}", table(&metrics));
    }
    Ok(())
}

/// Texts to predict on: the arguments, or a file (`.jsonl` records with `text`, or `text1` and
/// `text2` for pairs; else one text per line). With `pairs`, the arguments go two by two.
fn predict_inputs(
    texts: Vec<String>,
    input: Option<&Path>,
    pairs: bool,
) -> Result<Vec<Vec<String>>> {
    match input {
        Some(path) if path.extension().is_some_and(|e| e == "jsonl") => {
            let examples = st_train::data::load(&DataSpec {
                format: Some(st_train::Format::Jsonl),
                ..DataSpec::new(path)
            })?;
            Ok(examples
                .into_iter()
                .map(|e| e.texts().map(String::from).collect())
                .collect())
        }
        Some(path) => Ok(crate::input::read_texts(path)?
            .into_iter()
            .map(|t| vec![t])
            .collect()),
        None if texts.is_empty() => bail!("give TEXT arguments or --input FILE"),
        None if pairs && texts.len() % 2 == 1 => {
            bail!("--pair takes texts two by two: {} is odd", texts.len())
        }
        None if pairs => Ok(texts.chunks(2).map(<[String]>::to_vec).collect()),
        None => Ok(texts.into_iter().map(|t| vec![t]).collect()),
    }
}

pub fn predict<B: EncoderBackend>(
    model: &str,
    texts: Vec<String>,
    input: Option<PathBuf>,
    pairs: bool,
    device: &B::Device,
) -> Result<()> {
    let jsonl = input.is_some();
    let inputs = predict_inputs(texts, input.as_deref(), pairs)?;
    let model = load_trained::<B>(model, device)?;
    let refs: Vec<PredictInput> = inputs
        .iter()
        .map(|t| match t.as_slice() {
            [a, b, ..] => PredictInput::Pair(a, b),
            [a] => PredictInput::Text(a),
            [] => unreachable!("every input has a text"),
        })
        .collect();
    let predictions = st_train::predict(&model, &refs, 32)?;
    check_finite(&predictions)?;
    for (texts, p) in inputs.iter().zip(predictions) {
        if jsonl {
            let mut line = serde_json::Map::new();
            match texts.as_slice() {
                [a] => drop(line.insert("text".into(), a.clone().into())),
                [a, b, ..] => {
                    line.insert("text1".into(), a.clone().into());
                    line.insert("text2".into(), b.clone().into());
                }
                [] => {}
            }
            for (task, v) in p {
                line.insert(task, serde_json::to_value(v)?);
            }
            println!("{}", serde_json::Value::Object(line));
        } else {
            println!("{}", texts.join("  |  "));
            for (task, v) in p {
                println!("  {task}: {}", describe(&v));
            }
        }
    }
    Ok(())
}

/// A diverged or corrupt model gives NaN probabilities: refuse to print them as answers.
fn check_finite(predictions: &[BTreeMap<String, TaskPrediction>]) -> Result<()> {
    for (i, p) in predictions.iter().enumerate() {
        for (task, v) in p {
            let value = match v {
                TaskPrediction::Sentence { probability, .. } => *probability,
                TaskPrediction::Similarity { similarity } => *similarity,
                TaskPrediction::Token { .. } => 0.0,
            };
            if !value.is_finite() {
                bail!(
                    "task `{task}`, input {}: the model's output is not finite (diverged or \
                     corrupt weights), so no predictions are printed",
                    i + 1
                );
            }
        }
    }
    Ok(())
}

fn describe(prediction: &TaskPrediction) -> String {
    match prediction {
        TaskPrediction::Sentence { label, probability } => format!("{label} ({probability:.3})"),
        TaskPrediction::Token { words, tags } => words
            .iter()
            .zip(tags)
            .map(|(w, t)| format!("{w}/{t}"))
            .collect::<Vec<_>>()
            .join(" "),
        TaskPrediction::Similarity { similarity } => format!("similarity {similarity:.4}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_example_config_parses() {
        let config: TrainConfig = toml::from_str(EXAMPLE_CONFIG).unwrap();
        assert_eq!(config.train.len(), 2);
        assert_eq!(
            (config.eval[0].skip, config.train[0].limit),
            (4500, Some(4500))
        );
        assert_eq!(config.test.len(), 2);
        assert_eq!(config.lr.decay, 0.9);
        assert_eq!(config.sampling, Sampling::Temperature { t: 2.0 });
        assert_eq!(config.tasks["sentiment"].hidden, Some(256));
    }

    #[test]
    fn unknown_config_keys_are_refused_by_name() {
        let text = EXAMPLE_CONFIG.replace("epochs = 3", "epochz = 3");
        let err = toml::from_str::<TrainConfig>(&text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("epochz"), "{err}");
    }
}
