//! The chart: requests per second per target (top) and latency percentiles per target on a log
//! scale (bottom), one SVG file drawn with plotters' SVG backend.

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::report::Report;

const WIDTH_PX: u32 = 1100;
const ROW_PX: u32 = 26;
const PANEL_EXTRA_PX: u32 = 90;

fn family_color(family: &str) -> RGBColor {
    match family {
        "scd" => RGBColor(31, 119, 180),
        "null" => RGBColor(127, 127, 127),
        "redis" => RGBColor(214, 39, 40),
        "cluster" => RGBColor(148, 103, 189),
        _ => RGBColor(44, 160, 44),
    }
}

const PERCENTILE_COLORS: [RGBColor; 3] = [
    RGBColor(158, 202, 225),
    RGBColor(49, 130, 189),
    RGBColor(8, 48, 107),
];

/// Draws the chart of every target that ran into `path`.
pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    let rows: Vec<_> = report
        .targets
        .iter()
        .filter(|t| t.skipped.is_none())
        .collect();
    let n = rows.len().max(1);
    let panel_px = ROW_PX * n as u32 + PANEL_EXTRA_PX;
    let root = SVGBackend::new(path, (WIDTH_PX, panel_px * 2 + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let w = &report.workload;
    let title = format!(
        "{} · {} B · {} connections × {} in flight · {} s per target",
        w.kind.name(),
        w.size_bytes,
        w.connections,
        w.in_flight,
        report.duration_s
    );
    let root = root.titled(&title, ("sans-serif", 18)).map_err(plot_err)?;
    let (upper, lower) = root.split_vertically(panel_px);
    // Names listed top to bottom in run order: segment 0 is at the bottom of the axis.
    let name_of = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => (n - 1)
            .checked_sub(*i)
            .and_then(|k| rows.get(k))
            .map(|t| t.name.clone())
            .unwrap_or_default(),
        SegmentValue::Last => String::new(),
    };

    let rps_max = rows.iter().map(|t| t.requests_per_s).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&upper)
        .caption("requests per second (higher is better)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(190)
        .build_cartesian_2d(0f64..rps_max, (0..n).into_segmented())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&name_of)
        .x_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(rows.iter().enumerate().map(|(k, t)| {
            let i = n - 1 - k;
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (t.requests_per_s, SegmentValue::Exact(i + 1)),
                ],
                family_color(&t.family).filled(),
            );
            bar.set_margin(3, 3, 0, 0);
            bar
        }))
        .map_err(plot_err)?;

    let lat_max = rows.iter().map(|t| t.p999_us).fold(10.0, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(&lower)
        .caption(
            "latency per request, µs, log scale: p50 / p99 / p99.9 (lower is better)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(190)
        .build_cartesian_2d((1f64..lat_max).log_scale(), (0..n).into_segmented())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&name_of)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(plot_err)?;
    let seg_px = (chart.plotting_area().dim_in_pixel().1 / n as u32).max(3);
    for (p, color) in PERCENTILE_COLORS.iter().enumerate() {
        let series = chart
            .draw_series(rows.iter().enumerate().map(|(k, t)| {
                let i = n - 1 - k;
                let value = [t.p50_us, t.p99_us, t.p999_us][p].max(1.0);
                let mut bar = Rectangle::new(
                    [
                        (1.0, SegmentValue::Exact(i)),
                        (value, SegmentValue::Exact(i + 1)),
                    ],
                    color.filled(),
                );
                // Three thin bars side by side in the target's band: p50 at the top.
                let third = seg_px / 3;
                let top = p as u32 * third;
                let bottom = seg_px.saturating_sub((p as u32 + 1) * third);
                bar.set_margin(top + 1, bottom + 1, 0, 0);
                bar
            }))
            .map_err(plot_err)?;
        let label = ["p50", "p99", "p99.9"][p];
        let c = *color;
        series
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}
