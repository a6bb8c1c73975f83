//! Small SVG charts for benchmark reports, written as text (no drawing
//! crate): [`line_chart`] (y against x, one line per series) and
//! [`bar_chart`] (grouped bars). Pure functions from numbers to a
//! standalone SVG document.

use std::fmt::Write;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
/// Series with more points than this are drawn as plain lines.
pub const MARKED_POINTS: usize = 40;
/// Series colours, in order (then repeated).
pub const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// One line of a [`line_chart`].
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    /// (x, y) points, drawn in the given order; non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
}

/// Text made safe for SVG.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Axis ticks covering `[lo, hi]`: a "nice" step (1, 2 or 5 × 10^k) giving
/// at most about `max_ticks` ticks, starting at or below `lo` and ending at
/// or above `hi`.
pub fn ticks(lo: f64, hi: f64, max_ticks: usize) -> Vec<f64> {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() && hi >= lo {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
    let raw = span / max_ticks.max(1) as f64;
    // step = m × 10^e with m in {1, 2, 5}.
    let mut e = raw.log10().floor() as i32;
    let m = match [1.0, 2.0, 5.0]
        .into_iter()
        .find(|m| m * 10f64.powi(e) >= raw)
    {
        Some(m) => m,
        None => {
            e += 1;
            1.0
        }
    };
    // k × step computed as an integer over a power of ten, so 0.3 is 0.3.
    let at = |k: f64| {
        if e >= 0 {
            k * m * 10f64.powi(e)
        } else {
            k * m / 10f64.powi(-e)
        }
    };
    let step = at(1.0);
    let mut k = (lo / step).floor();
    let mut out = Vec::new();
    loop {
        let v = at(k);
        out.push(if v == 0.0 { 0.0 } else { v });
        if v >= hi || out.len() > 1000 {
            break;
        }
        k += 1.0;
    }
    if out.len() == 1 {
        out.push(at(k + 1.0));
    }
    out
}

/// A tick label: no more decimals than the step needs.
pub fn label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 || step <= 0.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.decimals$}")
}

struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn x(&self, v: f64) -> f64 {
        LEFT + (v - self.x0) / (self.x1 - self.x0).max(1e-12) * (WIDTH - LEFT - RIGHT)
    }
    fn y(&self, v: f64) -> f64 {
        HEIGHT - BOTTOM - (v - self.y0) / (self.y1 - self.y0).max(1e-12) * (HEIGHT - TOP - BOTTOM)
    }
}

fn header(out: &mut String, title: &str, x_label: &str, y_label: &str) {
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
         <text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{}</text>\n",
        WIDTH / 2.0,
        escape(title),
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        HEIGHT - 15.0,
        escape(x_label),
        TOP + (HEIGHT - TOP - BOTTOM) / 2.0,
        TOP + (HEIGHT - TOP - BOTTOM) / 2.0,
        escape(y_label),
    );
}

/// The y axis with grid lines; returns the frame's y range.
fn y_axis(out: &mut String, max_y: f64) -> (f64, f64) {
    let ys = ticks(0.0, if max_y > 0.0 { max_y } else { 1.0 }, 6);
    let step = ys.get(1).map_or(1.0, |b| b - ys[0]);
    let (y0, y1) = (ys[0], *ys.last().unwrap_or(&1.0));
    let f = Frame {
        x0: 0.0,
        x1: 1.0,
        y0,
        y1,
    };
    for v in &ys {
        let y = f.y(*v);
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            label(*v, step)
        );
    }
    let _ = writeln!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{LEFT}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        HEIGHT - BOTTOM,
        HEIGHT - BOTTOM,
        WIDTH - RIGHT,
        HEIGHT - BOTTOM
    );
    (y0, y1)
}

fn legend(out: &mut String, names: &[&str]) {
    for (i, name) in names.iter().enumerate() {
        let (x, y) = (LEFT + 12.0, TOP + 8.0 + 18.0 * i as f64);
        let _ = writeln!(
            out,
            "<rect x=\"{x}\" y=\"{y}\" width=\"14\" height=\"10\" fill=\"{}\"/>\n\
             <text x=\"{}\" y=\"{}\">{}</text>",
            COLOURS[i % COLOURS.len()],
            x + 20.0,
            y + 10.0,
            escape(name)
        );
    }
}

fn finite(p: &(f64, f64)) -> bool {
    p.0.is_finite() && p.1.is_finite()
}

/// A line chart of `series` (y from 0 up), with a marker and its value at
/// each point and a legend.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let pts = || {
        series
            .iter()
            .flat_map(|s| s.points.iter().filter(|p| finite(p)))
    };
    let (mut x_lo, mut x_hi) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    if !x_lo.is_finite() {
        (x_lo, x_hi) = (0.0, 1.0);
    }
    if x_hi <= x_lo {
        (x_lo, x_hi) = (x_lo - 0.5, x_hi + 0.5);
    }
    // Whole-number x (counts) gets a tick per number, when that is few.
    let whole = pts().all(|p| p.0.fract() == 0.0) && x_hi - x_lo <= 20.0;
    let xs = if whole {
        (x_lo as i64..=x_hi as i64).map(|v| v as f64).collect()
    } else {
        ticks(x_lo, x_hi, 8)
    };
    // A margin so markers and their labels stay inside.
    let pad = (x_hi - x_lo) * 0.06;
    let y_hi = pts().fold(0f64, |m, p| m.max(p.1));
    let mut out = String::new();
    header(&mut out, title, x_label, y_label);
    let (y0, y1) = y_axis(&mut out, y_hi * 1.08);
    let x_step = xs.get(1).map_or(1.0, |b| b - xs[0]);
    let f = Frame {
        x0: x_lo - pad,
        x1: x_hi + pad,
        y0,
        y1,
    };
    for v in xs.iter().filter(|v| **v >= x_lo && **v <= x_hi) {
        let x = f.x(*v);
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"black\"/>\n\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 5.0,
            HEIGHT - BOTTOM + 18.0,
            label(*v, x_step)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|p| finite(p))
            .map(|&(x, y)| format!("{:.1},{:.1}", f.x(x), f.y(y)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        // Markers and values only where they can be read (a time series
        // of hundreds of points is a line).
        if s.points.len() > MARKED_POINTS {
            continue;
        }
        for &(x, y) in s.points.iter().filter(|p| finite(p)) {
            let _ = writeln!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{colour}\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"{colour}\">{}</text>",
                f.x(x),
                f.y(y),
                f.x(x) + 5.0,
                // Alternate series label above and below their points.
                if i % 2 == 0 {
                    f.y(y) - 6.0
                } else {
                    f.y(y) + 14.0
                },
                short(y)
            );
        }
    }
    legend(
        &mut out,
        &series.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
    );
    out.push_str("</svg>\n");
    out
}

/// A value label with about three significant digits.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Grouped bars: one group per category, one bar per series in each
/// (`series[i].1[j]` is series i's value in category j), values printed
/// on the bars.
pub fn bar_chart(
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
) -> String {
    let y_hi = series
        .iter()
        .flat_map(|s| s.1.iter())
        .filter(|v| v.is_finite())
        .fold(0f64, |m, v| m.max(*v));
    let mut out = String::new();
    header(&mut out, title, "", y_label);
    let (y0, y1) = y_axis(&mut out, y_hi * 1.08);
    let f = Frame {
        x0: 0.0,
        x1: 1.0,
        y0,
        y1,
    };
    let groups = categories.len().max(1) as f64;
    let group_w = (WIDTH - LEFT - RIGHT) / groups;
    let bar_w = group_w * 0.8 / series.len().max(1) as f64;
    for (j, cat) in categories.iter().enumerate() {
        let gx = LEFT + group_w * j as f64;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            gx + group_w / 2.0,
            HEIGHT - BOTTOM + 18.0,
            escape(cat)
        );
        for (i, (_, values)) in series.iter().enumerate() {
            let Some(&v) = values.get(j).filter(|v| v.is_finite()) else {
                continue;
            };
            let x = gx + group_w * 0.1 + bar_w * i as f64;
            let (top, base) = (f.y(v.max(y0)), f.y(y0));
            let _ = writeln!(
                out,
                "<rect x=\"{x:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
                bar_w * 0.95,
                base - top,
                COLOURS[i % COLOURS.len()],
                x + bar_w * 0.475,
                top - 4.0,
                short(v)
            );
        }
    }
    legend(
        &mut out,
        &series.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_table() {
        let cases: Vec<(f64, f64, usize, Vec<f64>)> = vec![
            (0.0, 10.0, 5, vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]),
            (0.0, 9.0, 5, vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]),
            (1.0, 4.0, 8, vec![1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]),
            (0.0, 0.3, 3, vec![0.0, 0.1, 0.2, 0.3]),
            (0.0, 27.0, 6, vec![0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0]),
            // A flat range still gets an axis.
            (0.0, 0.0, 5, vec![0.0, 0.2]),
            (f64::NAN, 1.0, 5, vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        ];
        for (lo, hi, n, want) in cases {
            assert_eq!(ticks(lo, hi, n), want, "ticks({lo}, {hi}, {n})");
        }
    }

    #[test]
    fn labels_and_escapes() {
        for (v, step, want) in [
            (2.0, 1.0, "2"),
            (0.5, 0.5, "0.5"),
            (0.25, 0.05, "0.25"),
            (12.0, 2.0, "12"),
        ] {
            assert_eq!(label(v, step), want);
        }
        for (v, want) in [
            (1234.6, "1235"),
            (12.34, "12.3"),
            (1.234, "1.23"),
            (0.1234, "0.123"),
            (0.0, "0"),
        ] {
            assert_eq!(short(v), want);
        }
        assert_eq!(escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }

    fn count(hay: &str, needle: &str) -> usize {
        hay.matches(needle).count()
    }

    #[test]
    fn line_chart_draws_each_series() {
        let series = vec![
            Series {
                name: "sequential".into(),
                points: vec![(1.0, 8.0), (2.0, 16.0), (3.0, 24.0), (4.0, 32.0)],
            },
            Series {
                name: "parallel <2 ms>".into(),
                points: vec![(1.0, 8.0), (2.0, 8.2), (3.0, f64::NAN), (4.0, 8.5)],
            },
        ];
        let svg = line_chart("Commit latency", "backends", "p50 ms", &series);
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.ends_with("</svg>\n"));
        assert_eq!(count(&svg, "<polyline"), 2);
        // The NaN point is left out.
        assert_eq!(count(&svg, "<circle"), 7);
        assert!(svg.contains("parallel &lt;2 ms&gt;"));
        assert!(svg.contains(">Commit latency<"));
        // x from 1 to 4 spans the plot area but for a margin; y = 0 is at the bottom.
        let f = Frame {
            x0: 1.0 - 0.18,
            x1: 4.0 + 0.18,
            y0: 0.0,
            y1: 40.0,
        };
        assert!(f.x(1.0) > LEFT && f.x(1.0) < LEFT + 40.0);
        assert!(f.x(4.0) < WIDTH - RIGHT && f.x(4.0) > WIDTH - RIGHT - 40.0);
        assert_eq!(f.y(0.0), HEIGHT - BOTTOM);
        // Whole-number x: one tick per number, labelled without decimals.
        for n in 1..=4 {
            assert!(svg.contains(&format!(">{n}</text>")), "tick {n}");
        }
        assert!(!svg.contains(">1.5</text>"));
        assert!(svg.contains(&format!("{:.1},{:.1}", f.x(1.0), f.y(8.0))));
        // Every element opened is closed.
        assert_eq!(count(&svg, "<svg"), count(&svg, "</svg>"));
        assert_eq!(count(&svg, "<text"), count(&svg, "</text>"));
    }

    #[test]
    fn a_long_time_series_is_a_plain_line() {
        let long = Series {
            name: "commits/s".into(),
            points: (0..=MARKED_POINTS)
                .map(|i| (i as f64 * 0.25, 100.0))
                .collect(),
        };
        let short = Series {
            name: "few".into(),
            points: vec![(0.0, 1.0), (1.0, 2.0)],
        };
        let svg = line_chart("t", "s", "n", &[long, short]);
        assert_eq!(count(&svg, "<polyline"), 2);
        assert_eq!(count(&svg, "<circle"), 2, "only the short series is marked");
    }

    #[test]
    fn charts_survive_empty_input() {
        let svg = line_chart("t", "x", "y", &[]);
        assert!(svg.ends_with("</svg>\n"));
        let svg = bar_chart("t", "y", &[], &[]);
        assert!(svg.ends_with("</svg>\n"));
    }

    #[test]
    fn bar_chart_draws_a_bar_per_value() {
        let svg = bar_chart(
            "Fan-out",
            "ms",
            &["p50".into(), "p99".into()],
            &[
                ("parallel".into(), vec![4.0, 6.0]),
                ("sequential".into(), vec![12.0, f64::INFINITY]),
            ],
        );
        // Three bars plus the background and two legend swatches.
        assert_eq!(count(&svg, "<rect"), 3 + 1 + 2);
        assert!(svg.contains(">p99<"));
        assert!(svg.contains(">12.0<"));
        assert_eq!(count(&svg, "<text"), count(&svg, "</text>"));
    }
}
