//! SVG charts for CLI reports: generic helpers (atomic SVG writing, grouped bar charts) and the parity charts.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;
use pupil_runtime::parity::{GapReport, metrics::CONFIDENCE_BINS};

/// Default chart size in pixels.
pub const SIZE: (u32, u32) = (960, 540);

/// Renders with plotters into a string, then writes it atomically (never a half-written SVG).
pub fn write_svg(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend, plotters::coord::Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
        draw(&root)?;
        root.present().map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    }
    pupil_runtime::onnx::write_atomic(path, svg.as_bytes())?;
    Ok(())
}

/// Maps a plotters error into anyhow.
pub fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e}")
}

/// One named series of values, one per category.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub values: Vec<f64>,
}

/// A grouped bar chart: one group per category, one bar per series, with a legend.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    categories: &[String],
    series: &[Series],
    y_range: std::ops::Range<f64>,
) -> anyhow::Result<()> {
    if let Some(s) = series.iter().find(|s| s.values.len() != categories.len()) {
        return Err(anyhow!("series `{}` has {} values for {} categories", s.name, s.values.len(), categories.len()));
    }
    write_svg(path, SIZE, |root| {
        let n = categories.len().max(1) as f64;
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5f64..n - 0.5, y_range.clone())
            .map_err(plot_err)?;
        let cats = categories.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_labels(categories.len().min(40) + 1)
            .x_label_formatter(&move |x| {
                let i = x.round();
                if (x - i).abs() < 0.05 && i >= 0.0 {
                    cats.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(plot_err)?;
        let base = y_range.start;
        let k = series.len().max(1) as f64;
        let width = 0.8 / k;
        for (j, s) in series.iter().enumerate() {
            let color = Palette99::pick(j).to_rgba();
            let bars = s.values.iter().enumerate().map(move |(i, v)| {
                let x0 = i as f64 - 0.4 + j as f64 * width;
                Rectangle::new([(x0, base), (x0 + width * 0.92, v.max(base))], color.filled())
            });
            chart
                .draw_series(bars)
                .map_err(plot_err)?
                .label(s.name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(plot_err)?;
        Ok(())
    })
}

/// Parity: agreement per reference class, one bar per comparison.
pub fn parity_class_agreement(path: &Path, gaps: &[GapReport], labels: Option<&[String]>) -> anyhow::Result<()> {
    let classes = gaps.first().map(|g| g.comparison.classes).unwrap_or(0);
    let categories: Vec<String> =
        (0..classes).map(|c| labels.and_then(|l| l.get(c).cloned()).unwrap_or_else(|| c.to_string())).collect();
    let series: Vec<Series> = gaps
        .iter()
        .map(|g| Series {
            name: format!("{}: {} → {}", g.gap, g.reference, g.candidate),
            values: g.comparison.per_class.iter().map(|c| c.agreement.unwrap_or(0.0)).collect(),
        })
        .collect();
    let low = series.iter().flat_map(|s| s.values.iter().copied()).fold(1.0f64, f64::min);
    let y0 = if low > 0.9 { 0.9 } else { 0.0 };
    grouped_bars(path, "Top-1 agreement per reference class", "class", "agreement", &categories, &series, y0..1.0)
}

/// Parity: histogram of top-1 confidence of every model (the reference of the first comparison, then each candidate).
pub fn parity_confidence_histogram(path: &Path, gaps: &[GapReport]) -> anyhow::Result<()> {
    let mut series: Vec<Series> = vec![];
    let mut seen = std::collections::HashSet::new();
    let frac = |h: &[usize]| {
        let total: usize = h.iter().sum::<usize>().max(1);
        h.iter().map(|c| *c as f64 / total as f64).collect::<Vec<_>>()
    };
    for g in gaps {
        if seen.insert(g.reference.clone()) {
            series
                .push(Series { name: g.reference.clone(), values: frac(&g.comparison.reference_confidence_histogram) });
        }
        if seen.insert(g.candidate.clone()) {
            series
                .push(Series { name: g.candidate.clone(), values: frac(&g.comparison.candidate_confidence_histogram) });
        }
    }
    let w = 1.0 / CONFIDENCE_BINS as f64;
    let categories: Vec<String> = (0..CONFIDENCE_BINS).map(|i| format!("{:.2}", i as f64 * w)).collect();
    let top = series.iter().flat_map(|s| s.values.iter().copied()).fold(0.0f64, f64::max);
    grouped_bars(
        path,
        "Top-1 confidence (fraction of examples per 0.05 bin)",
        "confidence of the predicted class (bin start)",
        "fraction of examples",
        &categories,
        &series,
        0.0..(top * 1.08).max(0.01),
    )
}
