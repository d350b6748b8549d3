//! SVG charts for `pupil profile`: the latency histogram and the per-operator time bars.

use std::path::Path;

use plotters::prelude::*;
use pupil_runtime::profile::ProfileReport;

use crate::charts::{plot_err, write_svg};

const SIZE: (u32, u32) = (900, 520);

/// Histogram of the timed runs, with p50 / p90 / p99 marked.
pub fn latency_histogram(report: &ProfileReport, title: &str, path: &Path) -> anyhow::Result<()> {
    let l = &report.latency;
    let samples = &l.samples_ms;
    let bins = ((samples.len() as f64).sqrt().ceil() as usize).clamp(5, 60);
    let lo = l.min_ms;
    let width = ((l.max_ms - l.min_ms) / bins as f64).max(1e-6);
    let mut counts = vec![0u32; bins];
    for s in samples {
        let i = (((s - lo) / width) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1);
    let ytop = top + top / 8 + 1;
    let hi = lo + width * bins as f64;
    write_svg(path, SIZE, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(lo..hi, 0u32..ytop)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(format!(
                "time per run of batch {} (ms), {} runs after {} warm-up",
                report.batch, l.runs, report.warmup
            ))
            .y_desc("runs")
            .x_label_formatter(&|v| format!("{v:.3}"))
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                let x0 = lo + i as f64 * width;
                Rectangle::new([(x0, 0), (x0 + width, c)], BLUE.mix(0.55).filled())
            }))
            .map_err(plot_err)?;
        for (name, v, color) in [("p50", l.p50_ms, GREEN), ("p90", l.p90_ms, MAGENTA), ("p99", l.p99_ms, RED)] {
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(v, 0), (v, ytop)], color.stroke_width(2))))
                .map_err(plot_err)?
                .label(format!("{name} {v:.3} ms"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        Ok(())
    })
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { format!("{}…", s.chars().take(n - 1).collect::<String>()) }
}

/// Horizontal bars: the `top` slowest nodes by share of operator time. Returns `false` (and writes nothing) when
/// the report has no per-operator timing.
pub fn operator_bars(report: &ProfileReport, title: &str, top: usize, path: &Path) -> anyhow::Result<bool> {
    let Some(ops) = &report.operators else {
        return Ok(false);
    };
    let rows: Vec<_> = ops.nodes.iter().take(top.max(1)).collect();
    if rows.is_empty() {
        return Ok(false);
    }
    // Slowest at the top: plotters draws index 0 at the bottom.
    let labels: Vec<String> = rows
        .iter()
        .rev()
        .map(|r| {
            let kernel = r.kernel.as_deref().map(|k| format!(" [{}]", shorten(k, 28))).unwrap_or_default();
            format!("{} · {}{}", shorten(&r.node, 28), r.op, kernel)
        })
        .collect();
    let shares: Vec<f64> = rows.iter().rev().map(|r| r.share_pct).collect();
    let xmax = (shares.iter().copied().fold(0.0, f64::max) * 1.1).clamp(1.0, 100.0);
    let n = rows.len();
    let height = (120 + 32 * n as u32).max(300);
    write_svg(path, (1100, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(430)
            .build_cartesian_2d(0f64..xmax, (0usize..n).into_segmented())
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc(format!(
                "share of operator time (%), mean of {} runs at batch {}, {} thread(s)",
                ops.runs, report.batch, report.threads
            ))
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(
                Histogram::horizontal(&chart)
                    .style(BLUE.mix(0.6).filled())
                    .margin(6)
                    .data(shares.iter().enumerate().map(|(i, s)| (i, *s))),
            )
            .map_err(plot_err)?;
        Ok(())
    })?;
    Ok(true)
}
