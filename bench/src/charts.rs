//! The chapter's charts, drawn from the results as SVG: connections held
//! against server memory, and chat deliveries/s and p99 latency against the
//! number of clients.

use std::fs;
use std::ops::Range;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::coord::CoordTranslate;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use crate::plan::{Hold, Runs, SERVERS};
use crate::results::{Measurement, Results, Test, median};

/// One line of a chart: its legend and its points, sorted by x.
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
}

type Lines = Vec<Line>;

/// Which axes of a chart are logarithmic.
#[derive(Clone, Copy)]
enum Scale {
    Linear,
    LogY,
    LogLog,
}

const WIDTH: u32 = 760;
/// The plot's height; the legend goes below it, clear of the data.
const PLOT_HEIGHT: u32 = 420;
const LEGEND_ROW: u32 = 22;

/// Colours for the lines of one chart, in order: distinct for most kinds of
/// colour blindness (Okabe and Ito's palette, black first).
const COLORS: [RGBColor; 8] = [
    RGBColor(0, 0, 0),
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(230, 159, 0),
    RGBColor(120, 120, 120),
];

/// A marker per line too, so that lines differ without colour.
#[derive(Clone, Copy)]
enum Marker {
    Circle,
    Square,
    Triangle,
    Cross,
    OpenCircle,
    OpenSquare,
    OpenTriangle,
    Diamond,
}

const MARKERS: [Marker; 8] = [
    Marker::Circle,
    Marker::Square,
    Marker::Triangle,
    Marker::Cross,
    Marker::OpenCircle,
    Marker::OpenSquare,
    Marker::OpenTriangle,
    Marker::Diamond,
];

/// Write every chart into `dir`; returns the file names written.
pub fn draw_all(r: &Results, dir: &Path) -> Result<Vec<&'static str>> {
    // (file, caption, x axis, y axis, lines, scales)
    let charts: [(&str, &str, &str, &str, Lines, Scale); 4] = [
        (
            "held.svg",
            "Idle connections held vs server memory",
            "connections held",
            "server RSS (MiB)",
            held(r),
            Scale::Linear,
        ),
        (
            "chat-deliveries.svg",
            "Chat fan-out, unpaced: deliveries per second",
            "clients",
            "deliveries/s (millions)",
            deliveries(r),
            Scale::Linear,
        ),
        (
            "chat-p99.svg",
            "Chat p99 delivery latency at paced loads",
            "clients",
            "p99 latency (ms, log scale)",
            p99(r),
            Scale::LogY,
        ),
        (
            "ping-pong.svg",
            "One client's round trip among idle connections",
            "idle connections (log scale)",
            "server CPU per round trip (µs, log scale)",
            ping_pong(r),
            Scale::LogLog,
        ),
    ];
    let mut written = Vec::new();
    for (file, caption, x_desc, y_desc, lines, scale) in charts {
        // Log scales where the values span orders of magnitude: a cost in
        // proportion to N is then a straight rising line, a constant one flat.
        let (x_low, x_high) = log_range(&lines, |p| p.0);
        let (y_low, y_high) = log_range(&lines, |p| p.1);
        let (x, y) = (axis(&lines, |p| p.0), axis(&lines, |p| p.1));
        let svg = match scale {
            Scale::Linear => draw(caption, x_desc, y_desc, &lines, x, y)?,
            Scale::LogY => draw(
                caption,
                x_desc,
                y_desc,
                &lines,
                x,
                (y_low..y_high).log_scale(),
            )?,
            Scale::LogLog => draw(
                caption,
                x_desc,
                y_desc,
                &lines,
                (x_low..x_high).log_scale(),
                (y_low..y_high).log_scale(),
            )?,
        };
        let path = dir.join(file);
        fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(file);
    }
    Ok(written)
}

/// For each server of the idle runs: server CPU per round trip (µs) by the
/// number of idle connections.
fn ping_pong(r: &Results) -> Vec<Line> {
    let mut lines = Vec::new();
    for s in SERVERS.iter().filter(|s| s.idle_scaling) {
        let points = r
            .all(s.name, |t| matches!(t, Test::PingPong { .. }))
            .iter()
            .filter(|m| m.error.is_none())
            .filter_map(|m| match m.test {
                Test::PingPong { idle, .. } => {
                    Some((idle as f64, m.cpu_ns_per("/round_trips")? / 1000.0))
                }
                _ => None,
            })
            .collect();
        push_line(&mut lines, r.label(s.name).to_string(), points);
    }
    lines
}

/// For each server that held connections: RSS before (at 0) and with N open.
fn held(r: &Results) -> Vec<Line> {
    let mut lines = Vec::new();
    for s in SERVERS.iter().filter(|s| s.hold != Hold::No) {
        let runs = r.all(s.name, |t| {
            matches!(t, Test::Hold { .. } | Test::Join { .. })
        });
        let mut points: Vec<(f64, f64)> = runs
            .iter()
            .filter(|m| m.error.is_none())
            .filter_map(|m| {
                Some((
                    m.figure("/open_at_end")?,
                    m.figure("/server_rss_after")? / 1048576.0,
                ))
            })
            .collect();
        if let Some(before) = runs.iter().find_map(|m| m.figure("/server_rss_before")) {
            points.push((0.0, before / 1048576.0));
        }
        push_line(&mut lines, r.label(s.name).to_string(), points);
    }
    lines
}

/// For each chat server: unpaced deliveries/s by clients.
fn deliveries(r: &Results) -> Vec<Line> {
    let mut lines = Vec::new();
    for s in SERVERS
        .iter()
        .filter(|s| s.kind.chats() && s.runs == Runs::All)
    {
        let runs = r.all(s.name, |t| matches!(t, Test::Chat { rate: 0, .. }));
        let points = by_clients(&runs, |m| Some(m.figure("/deliveries_per_s")? / 1e6));
        push_line(&mut lines, r.label(s.name).to_string(), points);
    }
    lines
}

/// Chat runs as points (clients, `figure`), the median where a client count
/// has several runs.
fn by_clients(
    runs: &[&Measurement],
    figure: impl Fn(&Measurement) -> Option<f64>,
) -> Vec<(f64, f64)> {
    let mut counts: Vec<u32> = runs
        .iter()
        .filter_map(|m| match m.test {
            Test::Chat { clients, .. } => Some(clients),
            _ => None,
        })
        .collect();
    counts.sort_unstable();
    counts.dedup();
    counts
        .into_iter()
        .filter_map(|n| {
            let at: Vec<&Measurement> = runs
                .iter()
                .copied()
                .filter(|m| matches!(m.test, Test::Chat { clients, .. } if clients == n))
                .collect();
            Some((f64::from(n), median(&at, &figure)?))
        })
        .collect()
}

/// For each chat server and paced load: p99 latency by clients. A load is
/// named by its rate at the smallest client count (the others are scaled to
/// the same deliveries per second).
fn p99(r: &Results) -> Vec<Line> {
    let mut lines = Vec::new();
    for s in SERVERS
        .iter()
        .filter(|s| s.kind.chats() && s.runs == Runs::All)
    {
        let runs = r.all(
            s.name,
            |t| matches!(t, Test::Chat { rate, .. } if *rate > 0),
        );
        let base = runs
            .iter()
            .filter_map(|m| match m.test {
                Test::Chat { clients, .. } => Some(clients),
                _ => None,
            })
            .min();
        let Some(base) = base else { continue };
        let base: u32 = base;
        // Runs of the same load have the same rate × clients.
        let mut loads: Vec<u64> = Vec::new();
        for m in &runs {
            if let Test::Chat { clients, rate, .. } = m.test {
                let load = rate * u64::from(clients);
                if !loads.iter().any(|&l| close(l, load)) {
                    loads.push(load);
                }
            }
        }
        for load in loads {
            let at_load: Vec<&Measurement> = runs
                .iter()
                .copied()
                .filter(|m| {
                    matches!(m.test, Test::Chat { clients, rate, .. }
                        if close(rate * u64::from(clients), load))
                })
                .collect();
            let points = by_clients(&at_load, |m| Some(m.figure("/latency/p99_us")? / 1000.0));
            // What is held constant across client counts: deliveries a
            // second, each line going to every other client.
            let per_base = load / u64::from(base);
            let deliveries = per_base * u64::from(base.saturating_sub(1).max(1));
            let label = format!(
                "{}, {} deliveries/s",
                r.label(s.name),
                crate::table::count(deliveries as f64)
            );
            push_line(&mut lines, label, points);
        }
    }
    lines
}

/// Two loads within 2% of each other (rates are rounded when scaled).
fn close(a: u64, b: u64) -> bool {
    a.abs_diff(b) * 50 <= a.max(b)
}

fn push_line(lines: &mut Vec<Line>, label: String, mut points: Vec<(f64, f64)>) {
    if points.is_empty() {
        return;
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    lines.push(Line { label, points });
}

/// An axis from 0 to a little past the largest value.
fn axis(lines: &[Line], pick: fn(&(f64, f64)) -> f64) -> Range<f64> {
    let top = lines
        .iter()
        .flat_map(|l| l.points.iter().map(pick))
        .fold(0.0f64, f64::max);
    0.0..if top > 0.0 { top * 1.1 } else { 1.0 }
}

/// A log axis around every value: from half the smallest to twice the
/// largest (1 to 10 when there is none).
fn log_range(lines: &[Line], pick: fn(&(f64, f64)) -> f64) -> (f64, f64) {
    let values = lines.iter().flat_map(|l| l.points.iter().map(pick));
    let low = values
        .clone()
        .filter(|&v| v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let high = values.fold(0.0f64, f64::max);
    if low.is_finite() && high > 0.0 {
        (low / 2.0, high * 2.0)
    } else {
        (1.0, 10.0)
    }
}

/// One chart as SVG text: the plot, and below it the legend, one entry per
/// line with its colour, marker and label.
fn draw<X, Y>(
    caption: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
    x: X,
    y: Y,
) -> Result<String>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let legend_rows = lines.len().div_ceil(2) as u32;
    let height = PLOT_HEIGHT + legend_rows * LEGEND_ROW + 16;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (plot, legend) = root.split_vertically(PLOT_HEIGHT);
        let mut chart = ChartBuilder::on(&plot)
            .caption(caption, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x, y)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|v| crate::table::count(*v))
            .y_label_formatter(&|v| tick(*v))
            .max_light_lines(0)
            .draw()
            .map_err(plot_error)?;
        if lines.is_empty() {
            root.draw(&Text::new(
                "no figures (nothing measured)",
                (WIDTH as i32 / 2 - 110, PLOT_HEIGHT as i32 / 2),
                ("sans-serif", 16),
            ))
            .map_err(plot_error)?;
        }
        for (i, line) in lines.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let marker = MARKERS[i % MARKERS.len()];
            chart
                .draw_series(LineSeries::new(
                    line.points.iter().copied(),
                    ShapeStyle::from(color).stroke_width(2),
                ))
                .map_err(plot_error)?;
            let area = chart.plotting_area();
            for &p in &line.points {
                mark(area, p, marker, color)?;
            }
            // The legend: two columns under the plot.
            let x = 80 + (i as i32 % 2) * 340;
            let y = 8 + (i as i32 / 2) * LEGEND_ROW as i32;
            legend
                .draw(&PathElement::new(
                    vec![(x, y + 8), (x + 28, y + 8)],
                    ShapeStyle::from(color).stroke_width(2),
                ))
                .map_err(plot_error)?;
            mark(&legend, (x + 14, y + 8), marker, color)?;
            legend
                .draw(&Text::new(
                    line.label.clone(),
                    (x + 36, y),
                    ("sans-serif", 15),
                ))
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// A marker at `at` on `area` (chart or pixel coordinates), drawn in
/// pixels around the point whatever the axes.
fn mark<DB: DrawingBackend, CT: CoordTranslate>(
    area: &DrawingArea<DB, CT>,
    at: CT::From,
    marker: Marker,
    color: RGBColor,
) -> Result<()>
where
    CT::From: Clone + 'static,
{
    let filled = ShapeStyle::from(color).filled();
    let open = ShapeStyle::from(color).stroke_width(2);
    let base = EmptyElement::at(at);
    match marker {
        Marker::Circle => area.draw(&(base + Circle::new((0, 0), 4, filled))),
        Marker::OpenCircle => area.draw(&(base + Circle::new((0, 0), 4, open))),
        Marker::Square => area.draw(&(base + Rectangle::new([(-4, -4), (4, 4)], filled))),
        Marker::OpenSquare => area.draw(&(base + Rectangle::new([(-4, -4), (4, 4)], open))),
        Marker::Triangle => area.draw(&(base + TriangleMarker::new((0, 0), 5, filled))),
        Marker::OpenTriangle => area.draw(&(base + TriangleMarker::new((0, 0), 5, open))),
        Marker::Cross => area.draw(&(base + Cross::new((0, 0), 4, open))),
        Marker::Diamond => {
            area.draw(&(base + Polygon::new(vec![(0, -5), (5, 0), (0, 5), (-5, 0)], filled)))
        }
    }
    .map_err(plot_error)
}

/// A tick label: whole numbers from 10 up, otherwise as few decimals as
/// show the value (`2.5`, `0.04`).
fn tick(v: f64) -> String {
    if v.abs() >= 10.0 {
        crate::table::count(v)
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// plotters' errors carry the backend's error type; keep only the message.
fn plot_error(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot draw a chart: {err}")
}
