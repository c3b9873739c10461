//! `--plot FILE.svg`: throughput and p99 over the run, and latency by
//! percentile per operation, drawn with plotters' SVG backend, under a
//! title giving the run's configuration.
//!
//! Made to be read at a glance: rates in thousands per second, latency in
//! milliseconds, and the latency curve on the axis HdrHistogram's plots
//! use (p50, p90, p99, p99.9, p99.99 equally spaced), where the tail that
//! a mean or a bar chart hides takes most of the width.

use std::path::Path;

use plotters::coord::types::{RangedCoordf64, RangedCoordu64};
use plotters::prelude::*;

use crate::report::{CURVE_TOP, Report};

const WIDTH: u32 = 1000;
const PANEL: u32 = 300;
const TITLE: u32 = 40;

pub fn draw(report: &Report, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (WIDTH, PANEL * 3 + TITLE)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(&report.title(), ("sans-serif", 18))
        .map_err(|e| e.to_string())?;
    let panels = root.split_evenly((3, 1));
    let [throughput, p99, curves] = panels.as_slice() else {
        return Err("plot layout".into());
    };
    let seconds = report.timeline.len().max(1) as u64;
    // A second's figure is drawn where that second ends.
    let points = |f: &dyn Fn(&crate::report::TimelinePoint) -> f64| -> Vec<(u64, f64)> {
        report
            .timeline
            .iter()
            .map(|p| (p.second + 1, f(p)))
            .collect()
    };

    let requests = points(&|p| p.requests as f64 / 1000.0);
    let logins = points(&|p| p.logins as f64 / 1000.0);
    let top = requests.iter().map(|p| p.1).fold(0.001, f64::max) * 1.15;
    let per_second = "thousand per second";
    let mut chart = timeline(throughput, "throughput", per_second, seconds, top)?;
    for (series, name, colour) in [(requests, "requests", BLUE), (logins, "logins", GREEN)] {
        chart
            .draw_series(LineSeries::new(series, colour.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    legend(&mut chart)?;

    let tail = points(&|p| p.p99_us as f64 / 1000.0);
    let top = tail.iter().map(|p| p.1).fold(0.01, f64::max) * 1.15;
    let caption = "p99 latency per request, each second";
    timeline(p99, caption, "ms", seconds, top)?
        .draw_series(LineSeries::new(tail, RED.stroke_width(2)))
        .map_err(|e| e.to_string())?;

    percentile_curves(curves, report)
}

/// Latency (ms) against percentile, one line per operation.
fn percentile_curves(panel: &Panel<'_>, report: &Report) -> Result<(), String> {
    // x is "decades of 1/(1-q)": p90 is 1, p99 2, p99.9 3, p99.99 4.
    let decades = |percentile: f64| -(1.0 - percentile / 100.0).log10();
    let last = decades(CURVE_TOP);
    let top = report
        .latency_curves
        .values()
        .flatten()
        .map(|p| p.us as f64 / 1000.0)
        .fold(0.01, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(panel)
        .caption(
            "latency by percentile (p50 to p99.99), per operation",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        // From p0 (the curves start at p50), so that the ticks fall on
        // whole decades: 0%, 90%, 99%, 99.9%, 99.99% (a little room past
        // the last, so that its tick is drawn).
        .build_cartesian_2d(0.0..last + 0.05, 0.0..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .x_labels(5)
        .y_desc("ms")
        .x_label_formatter(&|d| percentile_label(100.0 * (1.0 - 10f64.powf(-d))))
        .y_label_formatter(&|v| number(*v))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, curve)) in report.latency_curves.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let line = curve
            .iter()
            .map(|p| (decades(p.percentile), p.us as f64 / 1000.0));
        chart
            .draw_series(LineSeries::new(line, colour.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    legend(&mut chart)
}

type Panel<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type Chart<'a, 'b, X> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, RangedCoordf64>>;
type TimelineChart<'a, 'b> = Chart<'a, 'b, RangedCoordu64>;

/// A panel with seconds of the run across and `0..top` (in `unit`) up.
fn timeline<'a, 'b>(
    panel: &'a Panel<'b>,
    caption: &str,
    unit: &str,
    seconds: u64,
    top: f64,
) -> Result<TimelineChart<'a, 'b>, String> {
    let mut chart = ChartBuilder::on(panel)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0..seconds, 0.0..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("second of the run")
        .y_desc(unit)
        .y_label_formatter(&|v| number(*v))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(chart)
}

/// Draws the series' labels in the chart's upper left corner.
fn legend<'a, 'b: 'a, X: Ranged>(chart: &mut Chart<'a, 'b, X>) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

/// An axis value with no more digits than it needs: 600, 2.5, 0.35.
fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 || magnitude == 0.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}").trim_end_matches(".0").to_owned()
    } else {
        let text = format!("{value:.2}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// `50%`, `99%`, `99.9%`, `99.99%`.
fn percentile_label(percentile: f64) -> String {
    let text = format!("{percentile:.2}");
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_carry_no_needless_digits() {
        assert_eq!(number(600.0), "600");
        assert_eq!(number(12.5), "12.5");
        assert_eq!(number(12.0), "12");
        assert_eq!(number(2.5), "2.5");
        assert_eq!(number(0.35), "0.35");
        assert_eq!(number(0.0), "0");
        assert_eq!(percentile_label(50.0), "50%");
        assert_eq!(percentile_label(99.0), "99%");
        assert_eq!(percentile_label(99.9), "99.9%");
        assert_eq!(percentile_label(99.99), "99.99%");
    }

    #[test]
    fn a_plot_is_titled_with_the_run_and_labelled_in_its_units() {
        use crate::report::{Op, Recorder, RunSetup};
        use std::time::{Duration, Instant};
        let start = Instant::now();
        let mut recorder = Recorder::new(start);
        for i in 0..3_000u64 {
            let due = start + Duration::from_millis(i);
            let done = due + Duration::from_micros(200 + i % 700);
            recorder.request(Op::Challenge, due, done);
            recorder.request(Op::Verify, due, done + Duration::from_micros(300));
        }
        let setup = RunSetup {
            mode: "closed loop, 256 logins in flight, 4 streams per connection".into(),
            mix: "login=100".into(),
            connections: 2,
            users: 1000,
            ..RunSetup::default()
        };
        let report = recorder.report(Duration::from_millis(3_500), setup);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.svg");
        draw(&report, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| t.split_once('>'))
            .filter_map(|(_, t)| t.split_once("</text>"))
            .map(|(t, _)| t.trim())
            .collect();
        assert!(texts.contains(&report.title().as_str()), "{texts:?}");
        assert!(
            report
                .title()
                .contains("1000 users, mix login=100, 2 connections")
        );
        for text in [
            "thousand per second",
            "ms",
            "0%",
            "90%",
            "99%",
            "99.9%",
            "99.99%",
            "challenge",
            "verify",
        ] {
            assert!(texts.contains(&text), "{text:?} missing from {texts:?}");
        }
        // No raw floats on an axis (the old plot said `500000.0`).
        assert!(!texts.iter().any(|t| t.ends_with(".0")), "{texts:?}");
    }
}
