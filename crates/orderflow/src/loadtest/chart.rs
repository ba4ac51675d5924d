//! The report's picture: rate, latency and lag over the run, as SVG.

use std::path::Path;

use plotters::prelude::*;

use super::timeline::Second;

/// One line of a panel: its legend, colour and points.
type Line<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// Draws five panels: offered and achieved events/s; latency p50 and p99 to the final
/// totals; latency p50 and p99 to the provisional figures (when measured); enricher and
/// aggregator lag; the cores used by the enricher, the aggregator and the broker. `notes`
/// are lines of text under the title (e.g. the drain's rate and the CPU per event).
pub fn draw(path: &Path, title: &str, notes: &[String], seconds: &[Second]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 1600)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (head, root) = root.split_vertically(notes.len() as u32 * 20 + 4);
    for (i, note) in notes.iter().enumerate() {
        head.draw(&Text::new(note.as_str(), (16, i as i32 * 20 + 2), ("sans-serif", 15)))?;
    }
    let panels = root.split_evenly((5, 1));
    let x_max = seconds.len().max(1) as f64;
    let series =
        |f: &dyn Fn(&Second) -> Option<f64>| -> Vec<(f64, f64)> { seconds.iter().filter_map(|s| f(s).map(|v| (s.t as f64, v))).collect() };
    let panel = |area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
                 caption: &str,
                 y_desc: &str,
                 lines: Vec<Line<'_>>|
     -> anyhow::Result<()> {
        let y_max = lines.iter().flat_map(|(_, _, pts)| pts.iter().map(|p| p.1)).fold(1.0_f64, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart.configure_mesh().x_desc("seconds since the replay started").y_desc(y_desc).draw()?;
        for (name, color, pts) in lines {
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        Ok(())
    };
    panel(
        &panels[0],
        "Events per second",
        "events/s",
        vec![
            ("offered", RGBColor(150, 150, 150), series(&|s| Some(s.offered as f64))),
            ("achieved (acknowledged)", BLUE, series(&|s| Some(s.achieved as f64))),
        ],
    )?;
    panel(
        &panels[1],
        "End-to-end latency: event sent to its window's total published",
        "ms",
        vec![
            ("p50", RGBColor(0, 140, 0), series(&|s| s.latency_p50_ms.map(|v| v as f64))),
            ("p99", RED, series(&|s| s.latency_p99_ms.map(|v| v as f64))),
        ],
    )?;
    panel(
        &panels[2],
        "Live screen latency: event acknowledged to visible in the provisional figures (aggregator /metrics)",
        "ms",
        vec![
            ("p50", RGBColor(0, 140, 0), series(&|s| s.visible_p50_ms.map(|v| v as f64))),
            ("p99", RED, series(&|s| s.visible_p99_ms.map(|v| v as f64))),
        ],
    )?;
    panel(
        &panels[3],
        "Consumer lag (records not yet committed)",
        "records",
        vec![
            ("enricher", MAGENTA, series(&|s| s.enricher_lag.map(|v| v as f64))),
            ("aggregator", RGBColor(200, 120, 0), series(&|s| s.aggregator_lag.map(|v| v as f64))),
        ],
    )?;
    panel(
        &panels[4],
        "CPU (user + system), from /proc",
        "cores",
        vec![
            ("enricher", MAGENTA, series(&|s| s.enricher_cpu)),
            ("aggregator", RGBColor(200, 120, 0), series(&|s| s.aggregator_cpu)),
            ("broker", RGBColor(0, 120, 200), series(&|s| s.broker_cpu)),
        ],
    )?;
    root.present()?;
    Ok(())
}
