//! The chapter's charts, drawn from the results as SVG: connections held
//! against server memory, and chat deliveries/s and p99 latency against the
//! number of clients.

use std::fs;
use std::ops::Range;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;

use crate::plan::{Kind, SERVERS};
use crate::results::{Measurement, Results, Test, median};

/// One line of a chart: its legend and its points, sorted by x.
struct Line {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

const WIDTH: u32 = 760;
const HEIGHT: u32 = 440;

/// A colour per server, the same in every chart.
fn color(server: &str) -> RGBColor {
    const COLORS: [RGBColor; 7] = [
        RGBColor(120, 120, 120),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(255, 127, 14),
        RGBColor(140, 86, 75),
        RGBColor(148, 103, 189),
    ];
    let i = SERVERS.iter().position(|s| s.name == server).unwrap_or(0);
    COLORS[i % COLORS.len()]
}

/// Write every chart into `dir`; returns the file names written.
pub fn draw_all(r: &Results, dir: &Path) -> Result<Vec<&'static str>> {
    let charts: [(&str, &str, &str, &str, Vec<Line>); 3] = [
        (
            "held.svg",
            "Idle connections held vs server memory",
            "connections held",
            "server RSS (MiB)",
            held(r),
        ),
        (
            "chat-deliveries.svg",
            "Chat fan-out, unpaced: deliveries per second",
            "clients",
            "deliveries/s (millions)",
            deliveries(r),
        ),
        (
            "chat-p99.svg",
            "Chat p99 delivery latency at paced rates",
            "clients",
            "p99 latency (ms)",
            p99(r),
        ),
    ];
    let mut written = Vec::new();
    for (file, caption, x_desc, y_desc, lines) in charts {
        let svg = draw(caption, x_desc, y_desc, &lines)?;
        let path = dir.join(file);
        fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(file);
    }
    Ok(written)
}

/// For each server that held connections: RSS before (at 0) and with N open.
fn held(r: &Results) -> Vec<Line> {
    let mut lines = Vec::new();
    for s in SERVERS.iter().filter(|s| s.hold) {
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
        push_line(&mut lines, s.name, r.label(s.name).to_string(), points);
    }
    lines
}

/// For each chat server: unpaced deliveries/s by clients.
fn deliveries(r: &Results) -> Vec<Line> {
    let mut lines = Vec::new();
    for s in SERVERS
        .iter()
        .filter(|s| s.kind == Kind::Chat && !s.connect_only)
    {
        let runs = r.all(s.name, |t| matches!(t, Test::Chat { rate: 0, .. }));
        let mut counts: Vec<u32> = runs
            .iter()
            .filter_map(|m| match m.test {
                Test::Chat { clients, .. } => Some(clients),
                _ => None,
            })
            .collect();
        counts.sort_unstable();
        counts.dedup();
        // The median where a client count has several runs.
        let points = counts
            .into_iter()
            .filter_map(|n| {
                let at: Vec<&Measurement> = runs
                    .iter()
                    .copied()
                    .filter(|m| matches!(m.test, Test::Chat { clients, .. } if clients == n))
                    .collect();
                let rate = median(&at, |m| m.figure("/deliveries_per_s"))?;
                Some((f64::from(n), rate / 1e6))
            })
            .collect();
        push_line(&mut lines, s.name, r.label(s.name).to_string(), points);
    }
    lines
}

/// For each chat server and paced load: p99 latency by clients. A load is
/// named by its rate at the smallest client count (the others are scaled to
/// the same deliveries per second).
fn p99(r: &Results) -> Vec<Line> {
    let mut lines = Vec::new();
    for s in SERVERS
        .iter()
        .filter(|s| s.kind == Kind::Chat && !s.connect_only)
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
            let points = runs
                .iter()
                .filter(|m| m.error.is_none())
                .filter_map(|m| {
                    let Test::Chat { clients, rate, .. } = m.test else {
                        return None;
                    };
                    if !close(rate * u64::from(clients), load) {
                        return None;
                    }
                    Some((f64::from(clients), m.figure("/latency/p99_us")? / 1000.0))
                })
                .collect();
            let label = format!(
                "{} at {} sends/s per {base} clients",
                r.label(s.name),
                crate::table::count((load / u64::from(base)) as f64)
            );
            push_line(&mut lines, s.name, label, points);
        }
    }
    // Several loads of one server would share its colour: shade them apart.
    for (i, line) in lines.iter_mut().enumerate() {
        if i >= 2 {
            let RGBColor(r, g, b) = line.color;
            let k = (i / 2) as u8;
            line.color = RGBColor(r / (k + 1), g / (k + 1), b / (k + 1));
        }
    }
    lines
}

/// Two loads within 2% of each other (rates are rounded when scaled).
fn close(a: u64, b: u64) -> bool {
    a.abs_diff(b) * 50 <= a.max(b)
}

fn push_line(lines: &mut Vec<Line>, server: &str, label: String, mut points: Vec<(f64, f64)>) {
    if points.is_empty() {
        return;
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    lines.push(Line {
        label,
        color: color(server),
        points,
    });
}

/// An axis from 0 to a little past the largest value.
fn axis(lines: &[Line], pick: fn(&(f64, f64)) -> f64) -> Range<f64> {
    let top = lines
        .iter()
        .flat_map(|l| l.points.iter().map(pick))
        .fold(0.0f64, f64::max);
    0.0..if top > 0.0 { top * 1.1 } else { 1.0 }
}

/// One chart as SVG text.
fn draw(caption: &str, x_desc: &str, y_desc: &str, lines: &[Line]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(axis(lines, |p| p.0), axis(lines, |p| p.1))
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|v| crate::table::count(*v))
            .max_light_lines(0)
            .draw()
            .map_err(plot_error)?;
        if lines.is_empty() {
            root.draw(&Text::new(
                "no figures (nothing measured)",
                (WIDTH as i32 / 2 - 110, HEIGHT as i32 / 2),
                ("sans-serif", 16),
            ))
            .map_err(plot_error)?;
        }
        for line in lines {
            let style = ShapeStyle::from(line.color).stroke_width(2);
            chart
                .draw_series(LineSeries::new(line.points.iter().copied(), style))
                .map_err(plot_error)?
                .label(&line.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart
                .draw_series(
                    line.points
                        .iter()
                        .map(|&p| Circle::new(p, 3, ShapeStyle::from(line.color).filled())),
                )
                .map_err(plot_error)?;
        }
        if !lines.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .draw()
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// plotters' errors carry the backend's error type; keep only the message.
fn plot_error(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot draw a chart: {err}")
}
