//! `rill perf plot`: latency (p50/p99/p999) against publish throughput from the JSON of
//! `rill perf workload`, as SVG: publish latency (send → ack) on the left, end-to-end latency
//! (send → received) on the right, a log latency axis, one line per file and percentile.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use plotters::coord::combinators::WithKeyPoints;
use plotters::prelude::*;

use crate::workload::{Percentiles, Results};

/// `rill perf plot RESULTS.json... --out FILE.svg`
#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Results written by `rill perf workload --json` (one series per file).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// SVG file to write.
    #[arg(long)]
    out: PathBuf,
    /// Title (default: the workload names).
    #[arg(long)]
    title: Option<String>,
    /// Leave out the unthrottled (max-rate) run of a sweep.
    #[arg(long)]
    throttled_only: bool,
}

/// One file's points: (records/s published, latency percentiles), by throughput.
struct Series {
    label: String,
    points: Vec<(f64, Percentiles, Percentiles)>,
}

type Pick = fn(&Percentiles) -> f64;

/// Colours that read on white (matplotlib's tab10), one per file × percentile.
const COLORS: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

const PERCENTILES: [(&str, Pick); 3] =
    [("p50", |p| p.p50), ("p99", |p| p.p99), ("p999", |p| p.p999)];

pub fn run(args: PlotArgs) -> Result<()> {
    let mut series = Vec::new();
    for f in &args.files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let r: Results =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
        let mut points: Vec<_> = r
            .runs
            .iter()
            .filter(|run| !args.throttled_only || run.target_rate > 0.0)
            .map(|run| {
                (
                    run.publish_rate,
                    run.publish_latency_ms.clone(),
                    run.e2e_latency_ms.clone(),
                )
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        series.push(Series {
            label: r.workload.name.clone(),
            points,
        });
    }
    if series.iter().all(|s| s.points.is_empty()) {
        bail!("no runs to plot");
    }
    let title = args.title.clone().unwrap_or_else(|| {
        let names: Vec<&str> = series.iter().map(|s| s.label.as_str()).collect();
        format!("latency vs throughput: {}", names.join(", "))
    });
    let svg = draw(&series, &title)?;
    std::fs::write(&args.out, svg).with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {}", args.out.display());
    Ok(())
}

fn draw(series: &[Series], title: &str) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1280, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let root = root
            .titled(title, ("sans-serif", 22))
            .map_err(|e| anyhow!("{e}"))?;
        let panels = root.split_evenly((1, 2));
        let x_max = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .fold(0.0f64, f64::max)
            .max(1.0)
            * 1.05;
        for (panel, (caption, e2e)) in panels.iter().zip([
            ("publish latency (send → ack)", false),
            ("end-to-end latency (send → received)", true),
        ]) {
            let pick =
                |p: &(f64, Percentiles, Percentiles)| if e2e { p.2.clone() } else { p.1.clone() };
            let values: Vec<f64> = series
                .iter()
                .flat_map(|s| s.points.iter())
                .flat_map(|p| {
                    let q = pick(p);
                    [q.p50, q.p99, q.p999]
                })
                .filter(|v| *v > 0.0)
                .collect();
            let y_min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let y_max = values.iter().copied().fold(0.0f64, f64::max);
            let (y_min, y_max) = if values.is_empty() {
                (0.1, 10.0)
            } else {
                ((y_min / 1.5).max(0.001), y_max * 1.5)
            };
            let mut chart = ChartBuilder::on(panel)
                .caption(caption, ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..x_max, log_axis(y_min, y_max))
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .configure_mesh()
                .x_desc("records/s published")
                .y_desc("latency (ms, log scale)")
                .light_line_style(RGBColor(242, 242, 242))
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| {
                    if *y >= 1.0 {
                        format!("{y:.0}")
                    } else {
                        format!("{y}")
                    }
                })
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
            for (si, s) in series.iter().enumerate() {
                for (pi, (name, get)) in PERCENTILES.iter().enumerate() {
                    let (r, g, b) = COLORS[(si * PERCENTILES.len() + pi) % COLORS.len()];
                    let color = RGBColor(r, g, b);
                    let pts: Vec<(f64, f64)> = s
                        .points
                        .iter()
                        .map(|p| (p.0, get(&pick(p))))
                        .filter(|(_, y)| *y > 0.0)
                        .collect();
                    let label = if series.len() > 1 {
                        format!("{} {name}", s.label)
                    } else {
                        (*name).to_owned()
                    };
                    chart
                        .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                        .map_err(|e| anyhow!("{e}"))?
                        .label(label)
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                        });
                    chart
                        .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                        .map_err(|e| anyhow!("{e}"))?;
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(svg)
}

/// A log latency axis labelled at 1, 2, 3 and 5 of every decade in range (plotters' own log key
/// points skip most decades).
fn log_axis(min: f64, max: f64) -> WithKeyPoints<LogCoord<f64>> {
    let axis: LogCoord<f64> = (min..max).log_scale().into();
    let mut keys = Vec::new();
    let mut decade = 10f64.powf(min.log10().floor());
    while decade <= max {
        for m in [1.0, 2.0, 3.0, 5.0] {
            let v = decade * m;
            if v >= min && v <= max {
                keys.push(v);
            }
        }
        decade *= 10.0;
    }
    axis.with_key_points(keys)
}
