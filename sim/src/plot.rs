//! `--plot FILE.svg`: throughput and p99 over the run, and the latency
//! histogram, drawn with plotters' SVG backend.

use std::path::Path;

use plotters::coord::types::{RangedCoordf64, RangedCoordu64};
use plotters::prelude::*;

use crate::report::Report;

const WIDTH: u32 = 900;
const PANEL: u32 = 300;

pub fn draw(report: &Report, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (WIDTH, PANEL * 3)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((3, 1));
    let [throughput, p99, histogram] = panels.as_slice() else {
        return Err("plot layout".into());
    };
    let seconds = report.timeline.len().max(1) as u64;
    let points = |f: &dyn Fn(&crate::report::TimelinePoint) -> f64| -> Vec<(u64, f64)> {
        report.timeline.iter().map(|p| (p.second, f(p))).collect()
    };

    let requests = points(&|p| p.requests as f64);
    let logins = points(&|p| p.logins as f64);
    let top = requests.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = timeline(throughput, "throughput (per second)", seconds, top)?;
    for (series, name, colour) in [(requests, "requests", BLUE), (logins, "logins", GREEN)] {
        chart
            .draw_series(LineSeries::new(series, &colour))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;

    let tail = points(&|p| p.p99_us as f64 / 1000.0);
    let top = tail.iter().map(|p| p.1).fold(0.1, f64::max) * 1.1;
    timeline(p99, "p99 latency per request (ms)", seconds, top)?
        .draw_series(LineSeries::new(tail, &RED))
        .map_err(|e| e.to_string())?;

    // Buckets double from 1 µs; the x axis is the bucket's index (log2 µs).
    let buckets = &report.latency_histogram;
    let top = buckets.iter().map(|b| b.1).max().unwrap_or(1).max(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(histogram)
        .caption("requests by latency (log2 of us)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..buckets.len().max(1) as u32, 0.0..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("latency up to 2^x us")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(buckets.iter().enumerate().map(|(i, (_, count))| {
            let x = i as u32;
            Rectangle::new([(x, 0.0), (x + 1, *count as f64)], BLUE.mix(0.6).filled())
        }))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

type Panel<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type TimelineChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordu64, RangedCoordf64>>;

/// A panel with seconds of the run across and `0..top` up.
fn timeline<'a, 'b>(
    panel: &'a Panel<'b>,
    caption: &str,
    seconds: u64,
    top: f64,
) -> Result<TimelineChart<'a, 'b>, String> {
    let mut chart = ChartBuilder::on(panel)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0..seconds, 0.0..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("second of the run")
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(chart)
}
