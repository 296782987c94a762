//! `st plot RUN_DIR`: training curves from a run's `metrics.jsonl`, as one SVG with four panels:
//! each task's loss, each task's evaluation metric, each parameter group's learning rate, and
//! each task's loss weight.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use st_runlog::LogRecord;

/// Named series of (step, value) points.
type Series = BTreeMap<String, Vec<(f64, f64)>>;

#[derive(Default)]
struct Curves {
    loss: Series,
    metric: Series,
    lr: Series,
    weight: Series,
}

fn read(path: &Path) -> Result<Curves> {
    let mut c = Curves::default();
    for record in st_runlog::read_log(path)? {
        match record {
            LogRecord::Step(s) => {
                let x = s.step as f64;
                for (series, values) in [
                    (&mut c.loss, s.losses),
                    (&mut c.lr, s.lr),
                    (&mut c.weight, s.weights),
                ] {
                    for (name, y) in values {
                        series.entry(name).or_default().push((x, y));
                    }
                }
            }
            LogRecord::Eval(e) => {
                for (task, metrics) in &e.eval {
                    if let Some((name, y)) = st_runlog::main_metric(metrics) {
                        c.metric
                            .entry(format!("{task} {name}"))
                            .or_default()
                            .push((e.step as f64, y));
                    }
                }
            }
            // One point after training, on other data: not a curve.
            LogRecord::Test(_) => {}
        }
    }
    if c.loss.is_empty() && c.metric.is_empty() {
        bail!("{}: no training steps or evaluations", path.display());
    }
    Ok(c)
}

/// Exponential moving average, so a noisy per-batch loss reads as a trend.
fn smooth(points: &[(f64, f64)], alpha: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len());
    let mut m = None;
    for &(x, y) in points {
        let s = match m {
            None => y,
            Some(prev) => alpha * prev + (1.0 - alpha) * y,
        };
        m = Some(s);
        out.push((x, s));
    }
    out
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    series: &Series,
    log_y: bool,
    (x0, x1): (f64, f64),
    markers: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let points = series.values().flatten();
    let (mut y0, mut y1) = (f64::MAX, f64::MIN);
    for &(_, y) in points {
        if !log_y || y > 0.0 {
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if series.is_empty() || y0 > y1 {
        area.titled(&format!("{title} (none logged)"), ("sans-serif", 16))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        return Ok(());
    }
    if y1 <= y0 {
        y1 = y0 + y0.abs().max(1e-12) * 0.1;
    }
    let pad = (y1 - y0) * 0.05;
    let mut chart = ChartBuilder::on(area);
    chart
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(56);
    let palette = |i: usize| Palette99::pick(i).to_rgba();
    macro_rules! draw {
        ($chart:expr, $fmt:expr) => {{
            let mut chart = $chart.map_err(|e| anyhow::anyhow!("{e:?}"))?;
            chart
                .configure_mesh()
                .x_desc("step")
                .y_label_formatter(&$fmt)
                .light_line_style(WHITE)
                .draw()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            for (i, (name, pts)) in series.iter().enumerate() {
                let color = palette(i);
                let pts: Vec<(f64, f64)> = pts
                    .iter()
                    .copied()
                    .filter(|(_, y)| !log_y || *y > 0.0)
                    .collect();
                if markers {
                    // Evaluations are few (one per epoch): show each one.
                    chart
                        .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                }
                chart
                    .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 11))
                .draw()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }};
    }
    if log_y {
        draw!(
            chart.build_cartesian_2d(x0..x1, (y0..y1).log_scale()),
            |y: &f64| format!("{y:.0e}")
        );
    } else {
        draw!(
            chart.build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad)),
            |y: &f64| format!("{y:.3}")
        );
    }
    Ok(())
}

/// Writes `out` (SVG) from `run_dir/metrics.jsonl`; returns a one-line summary.
pub fn plot(run_dir: &Path, out: &Path) -> Result<String> {
    let log = run_dir.join(st_runlog::METRICS_LOG);
    let curves = read(&log)?;
    let loss: Series = curves
        .loss
        .iter()
        .map(|(k, v)| (k.clone(), smooth(v, 0.9)))
        .collect();
    let tmp = out.with_extension("svg.tmp");
    {
        let root = SVGBackend::new(&tmp, (1200, 800)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let title = run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let root = root
            .titled(&title, ("sans-serif", 20))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let panels = root.split_evenly((2, 2));
        // One step axis for all four panels, so they line up.
        let steps = [&curves.loss, &curves.metric, &curves.lr, &curves.weight]
            .into_iter()
            .flat_map(|s| s.values().flatten().map(|p| p.0))
            .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
        let xs = if steps.1 > steps.0 {
            // A little room on the right, so the last evaluation's marker shows whole.
            (steps.0, steps.1 + (steps.1 - steps.0) * 0.02)
        } else {
            (steps.0.min(0.0), steps.0.max(0.0) + 1.0)
        };
        let loss_title = "training loss per task (smoothed)";
        panel(&panels[0], loss_title, &loss, false, xs, false)?;
        panel(
            &panels[1],
            "evaluation metric per task",
            &curves.metric,
            false,
            xs,
            true,
        )?;
        panel(
            &panels[2],
            "learning rate per group",
            &curves.lr,
            true,
            xs,
            false,
        )?;
        panel(
            &panels[3],
            "loss weight per task",
            &curves.weight,
            false,
            xs,
            false,
        )?;
        root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    let steps = curves
        .loss
        .values()
        .flat_map(|v| v.last())
        .map(|p| p.0)
        .fold(0.0, f64::max);
    Ok(format!(
        "{}: {} task(s), {} group(s), {steps} steps",
        out.display(),
        curves.loss.len().max(curves.metric.len()),
        curves.lr.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_log_becomes_an_svg_with_every_series() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = String::new();
        for step in 1..=20 {
            log.push_str(
                &serde_json::json!({
                    "step": step, "step_ms": 10.0, "epoch": 0,
                    "lr": {"layer.0": 1e-4 * step as f64, "head.topic": 2e-3},
                    "losses": {"topic": 1.0 / step as f64, "sentiment": 0.7},
                    "weights": {"topic": 1.0, "sentiment": 1.0},
                })
                .to_string(),
            );
            log.push('\n');
        }
        log.push_str(r#"{"epoch": 1, "step": 20, "eval": {"topic": {"accuracy": 0.9}, "sentiment": {"accuracy": 0.8}}, "best": true}"#);
        log.push('\n');
        std::fs::write(dir.path().join("metrics.jsonl"), log).unwrap();
        let out = dir.path().join("curves.svg");
        let summary = plot(dir.path(), &out).unwrap();
        assert!(summary.contains("2 group(s)"), "{summary}");
        let svg = std::fs::read_to_string(&out).unwrap();
        for label in [
            "topic",
            "sentiment",
            "head.topic",
            "layer.0",
            "topic accuracy",
        ] {
            assert!(svg.contains(label), "no {label} in the SVG");
        }
        assert!(svg.matches("<polyline").count() >= 8, "too few lines drawn");
    }

    #[test]
    fn a_broken_log_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("metrics.jsonl"),
            "{\"step\":1,\"step_ms\":1,\"epoch\":0,\"lr\":{},\"losses\":{},\"weights\":{}}\nnot json\n",
        )
        .unwrap();
        let err = plot(dir.path(), &dir.path().join("x.svg"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("metrics.jsonl:2"), "{err}");
    }
}
