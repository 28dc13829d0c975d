//! Loss and accuracy curves of one run or several, side by side, with one legend for both.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{font, metrics, save, thousands, Drawn, Figure, PALETTE};
use crate::error::{Error, Result};
use metrics::{MetricsRecord, RecordKind};

/// What the curves are drawn against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XAxis {
    /// Epoch records against their epoch: the evaluated figures, one point per epoch.
    #[default]
    Epoch,
    /// Every record against its step, so that step records' batch losses show too.
    Step,
}

impl std::str::FromStr for XAxis {
    type Err = Error;
    fn from_str(s: &str) -> Result<XAxis> {
        match s {
            "epoch" => Ok(XAxis::Epoch),
            "step" => Ok(XAxis::Step),
            _ => Err(Error::InvalidArgument(format!(
                "unknown x axis '{s}' (--x): use epoch or step"
            ))),
        }
    }
}

impl std::fmt::Display for XAxis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XAxis::Epoch => "epoch",
            XAxis::Step => "step",
        })
    }
}

/// One run's records and the name its legend row shows.
#[derive(Clone, Debug)]
pub struct Run {
    pub name: String,
    /// Where the records came from, for error messages.
    pub path: PathBuf,
    pub records: Vec<MetricsRecord>,
}

impl Run {
    /// Reads `path` with [`super::read_metrics`], named `name`.
    pub fn read(path: &Path, name: String) -> Result<Run> {
        Ok(Run {
            name,
            path: path.to_path_buf(),
            records: metrics::read_metrics(path)?,
        })
    }
}

/// Legend names for files: their stems, as a run is usually named by its file; the paths as
/// given where two stems are the same (`a/run.jsonl` and `b/run.jsonl`), so that no two rows
/// of the legend read alike.
pub fn run_names(paths: &[PathBuf]) -> Vec<String> {
    let stem = |p: &PathBuf| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string())
    };
    let stems: Vec<String> = paths.iter().map(stem).collect();
    paths
        .iter()
        .zip(&stems)
        .map(|(p, s)| {
            if stems.iter().filter(|t| *t == s).count() > 1 {
                p.display().to_string()
            } else {
                s.clone()
            }
        })
        .collect()
}

/// Draws the loss and accuracy curves of `runs` against `x` into `out` (.svg or .png), written
/// atomically. Refuses a run that has nothing to draw against `x` (only step records, by epoch).
pub fn plot_runs(runs: &[Run], x: XAxis, out: &Path) -> Result<()> {
    super::check_output(out)?;
    if runs.is_empty() {
        return Err(Error::InvalidArgument(
            "no runs to plot: give one or more metrics files (.jsonl or .csv)".into(),
        ));
    }
    for run in runs {
        if x == XAxis::Epoch && !run.records.iter().any(|r| r.kind == RecordKind::Epoch) {
            return Err(Error::InvalidArgument(format!(
                "{} has only step records, and --x epoch draws epoch records: plot it with \
                 --x step",
                run.path.display()
            )));
        }
    }
    save(&Curves::new(runs, x), out)
}

/// The split a series measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Split {
    Train,
    Val,
    Test,
}

/// A series: one split's figures from one kind of record. Step records' train loss is a
/// batch's, epoch records' an evaluation's: drawn as one line they would zigzag between the two.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    split: Split,
    kind: RecordKind,
}

/// The legend's column order.
const KEYS: [Key; 6] = [
    Key::new(Split::Train, RecordKind::Epoch),
    Key::new(Split::Val, RecordKind::Epoch),
    Key::new(Split::Test, RecordKind::Epoch),
    Key::new(Split::Train, RecordKind::Step),
    Key::new(Split::Val, RecordKind::Step),
    Key::new(Split::Test, RecordKind::Step),
];

impl Key {
    const fn new(split: Split, kind: RecordKind) -> Key {
        Key { split, kind }
    }

    fn label(self) -> &'static str {
        match (self.split, self.kind) {
            (Split::Train, RecordKind::Epoch) => "train",
            (Split::Val, RecordKind::Epoch) => "validation",
            (Split::Test, RecordKind::Epoch) => "test",
            (Split::Train, RecordKind::Step) => "train, per step",
            (Split::Val, RecordKind::Step) => "validation, per step",
            (Split::Test, RecordKind::Step) => "test, per step",
        }
    }

    fn value(self, r: &MetricsRecord, metric: Metric) -> Option<f64> {
        match (self.split, metric) {
            (Split::Train, Metric::Loss) => r.train_loss,
            (Split::Train, Metric::Accuracy) => r.train_accuracy,
            (Split::Val, Metric::Loss) => r.val_loss,
            (Split::Val, Metric::Accuracy) => r.val_accuracy,
            (Split::Test, Metric::Loss) => r.test_loss,
            (Split::Test, Metric::Accuracy) => r.test_accuracy,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Metric {
    Loss,
    Accuracy,
}

/// How a line looks. With one run, colour tells the series apart; with several, colour tells
/// the runs apart and the dash the series, so that each run reads as one colour in both panels.
#[derive(Clone, Copy)]
struct Look {
    color: RGBAColor,
    /// Dash and gap lengths in pixels; solid when None.
    dash: Option<(u32, u32)>,
    width: u32,
    markers: bool,
}

fn look(run: usize, runs: usize, key: usize) -> Look {
    let k = KEYS[key];
    let step = k.kind == RecordKind::Step;
    let base = if runs == 1 {
        PALETTE[key % 3]
    } else {
        PALETTE[run % PALETTE.len()]
    };
    let dash = match (runs > 1, k.split) {
        (false, _) | (true, Split::Train) => None,
        (true, Split::Val) => Some((10, 6)),
        (true, Split::Test) => Some((3, 4)),
    };
    Look {
        // Per-step figures are many and noisy: a thin, faint line behind the evaluated ones.
        color: base.mix(if step { 0.6 } else { 1.0 }),
        dash,
        width: if step { 1 } else { 2 },
        markers: !step,
    }
}

struct Line {
    run: usize,
    key: usize,
    metric: Metric,
    points: Vec<(f64, f64)>,
}

struct Curves<'a> {
    runs: &'a [Run],
    x: XAxis,
    lines: Vec<Line>,
    /// Which series each run has (any finite point in either panel), by run then key.
    present: Vec<[bool; KEYS.len()]>,
}

impl<'a> Curves<'a> {
    fn new(runs: &'a [Run], x: XAxis) -> Curves<'a> {
        let mut lines = Vec::new();
        let mut present = vec![[false; KEYS.len()]; runs.len()];
        for (r, run) in runs.iter().enumerate() {
            for (k, key) in KEYS.iter().enumerate() {
                if x == XAxis::Epoch && key.kind == RecordKind::Step {
                    continue;
                }
                for metric in [Metric::Loss, Metric::Accuracy] {
                    let mut points: Vec<(f64, f64)> = (run.records.iter())
                        .filter(|rec| rec.kind == key.kind)
                        .filter_map(|rec| {
                            let at = match x {
                                XAxis::Epoch => rec.epoch,
                                XAxis::Step => rec.step,
                            };
                            // NaN or infinite figures (a diverging run) cannot be drawn.
                            let v = key.value(rec, metric).filter(|v| v.is_finite())?;
                            Some((at as f64, v))
                        })
                        .collect();
                    if points.is_empty() {
                        continue;
                    }
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    present[r][k] = true;
                    lines.push(Line {
                        run: r,
                        key: k,
                        metric,
                        points,
                    });
                }
            }
        }
        // Step lines first, so that the evaluated lines are drawn over them.
        lines.sort_by_key(|l| KEYS[l.key].kind == RecordKind::Epoch);
        Curves {
            runs,
            x,
            lines,
            present,
        }
    }

    fn x_range(&self) -> (f64, f64) {
        let xs = self.lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
        let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
        if !lo.is_finite() {
            (0.0, 1.0)
        } else if lo == hi {
            (lo - 1.0, hi + 1.0)
        } else {
            // A little room, so that the first and last markers are not cut by the frame.
            let pad = 0.02 * (hi - lo);
            (lo - pad, hi + pad)
        }
    }

    fn y_range(&self, metric: Metric) -> Option<(f64, f64)> {
        let ys = (self.lines.iter())
            .filter(|l| l.metric == metric)
            .flat_map(|l| l.points.iter().map(|p| p.1));
        let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
            (lo.min(y), hi.max(y))
        });
        if !lo.is_finite() {
            return None;
        }
        let span = (hi - lo).max(1e-3);
        Some(match metric {
            // Loss from 0, so that curves of different runs compare by height.
            Metric::Loss => (lo.min(0.0), hi + 0.05 * span),
            Metric::Accuracy => ((lo - 0.04 * span).max(0.0), hi + 0.04 * span),
        })
    }

    fn legend_rows(&self) -> usize {
        self.runs.len()
    }
}

const PANEL_HEIGHT: u32 = 600;
const MIN_WIDTH: u32 = 1400;
const ROW: u32 = 30;
const LEGEND_PAD: u32 = 18;
const SAMPLE: i32 = 46;

impl Figure for Curves<'_> {
    fn size(&self) -> (u32, u32) {
        let width = MIN_WIDTH.max(self.legend_width());
        let legend = 2 * LEGEND_PAD + ROW * self.legend_rows() as u32;
        (width, PANEL_HEIGHT + legend)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let (width, _) = self.size();
        let (panels, legend) = root.split_vertically(PANEL_HEIGHT);
        let (left, right) = panels.split_horizontally(width / 2);
        self.panel(&left, Metric::Loss)?;
        self.panel(&right, Metric::Accuracy)?;
        self.legend(&legend)?;
        Ok(())
    }
}

impl Curves<'_> {
    fn panel<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, metric: Metric) -> Drawn
    where
        DB::ErrorType: 'static,
    {
        let (title, y_desc) = match metric {
            Metric::Loss => ("Loss", "cross-entropy loss"),
            Metric::Accuracy => ("Accuracy", "accuracy"),
        };
        let (x0, x1) = self.x_range();
        let range = self.y_range(metric);
        let (y0, y1) = range.unwrap_or((0.0, 1.0));
        let mut chart = ChartBuilder::on(area)
            .caption(title, font(26.0))
            .margin_top(12)
            .margin_left(14)
            .margin_right(30)
            .margin_bottom(6)
            .x_label_area_size(56)
            .y_label_area_size(78)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        // Whole epochs or steps only: a tick at epoch 2.5 would name no record.
        let span = (x1 - x0).round() as usize;
        chart
            .configure_mesh()
            .x_labels((span + 1).clamp(2, 11))
            .y_labels(8)
            .x_label_formatter(&|v| {
                if (v - v.round()).abs() < 1e-6 {
                    thousands(v.round().max(0.0) as usize)
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| decimal(*v))
            .x_desc(self.x.to_string())
            .y_desc(y_desc)
            .label_style(font(16.0))
            .axis_desc_style(font(18.0))
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()?;
        if range.is_none() {
            let (w, h) = area.dim_in_pixel();
            let note = format!("no {y_desc} in these records");
            area.draw_text(&note, &font(18.0), (w as i32 / 2 - 110, h as i32 / 2))?;
        }
        for line in self.lines.iter().filter(|l| l.metric == metric) {
            let look = look(line.run, self.runs.len(), line.key);
            let style = ShapeStyle::from(look.color).stroke_width(look.width);
            let points = line.points.iter().copied();
            match look.dash {
                None => chart.draw_series(LineSeries::new(points, style))?,
                Some((dash, gap)) => {
                    chart.draw_series(DashedLineSeries::new(points, dash, gap, style))?
                }
            };
            // Markers show where the records are, which a straight segment hides; for long runs
            // they would only thicken the line. A lone point has no segment: only a marker shows it.
            let n = line.points.len();
            if (look.markers && n <= 60) || n == 1 {
                let dots = line
                    .points
                    .iter()
                    .map(|&p| Circle::new(p, 3, look.color.filled()));
                chart.draw_series(dots)?;
            }
        }
        Ok(())
    }

    fn used_keys(&self) -> Vec<usize> {
        (0..KEYS.len())
            .filter(|&k| self.present.iter().any(|p| p[k]))
            .collect()
    }

    /// Widths of the legend's name column and of one series cell, from the font's own metrics.
    fn legend_columns(&self) -> (u32, u32) {
        let text_width = |t: &str| {
            // Without a backend, estimate from the font directly (as the backends do).
            let style = font(17.0);
            style
                .font
                .box_size(t)
                .map(|(w, _)| w)
                .unwrap_or(8 * t.len() as u32)
        };
        let names = self.runs.iter().map(|r| text_width(&r.name)).max();
        let cells = self
            .used_keys()
            .into_iter()
            .map(|k| text_width(KEYS[k].label()));
        (
            names.unwrap_or(0) + 30,
            cells.max().unwrap_or(0) + SAMPLE as u32 + 40,
        )
    }

    fn legend_width(&self) -> u32 {
        let (names, cell) = self.legend_columns();
        2 * LEGEND_PAD + names + cell * self.used_keys().len() as u32
    }

    /// One row per run (its name, then each of its series), under both panels: a legend inside
    /// a panel would hide curves, and both panels share it.
    fn legend<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Drawn
    where
        DB::ErrorType: 'static,
    {
        let (names, cell) = self.legend_columns();
        let keys = self.used_keys();
        let (w, _) = area.dim_in_pixel();
        let total = names + cell * keys.len() as u32;
        // Centred under the panels.
        let left = (w.saturating_sub(total) / 2) as i32;
        let text = font(17.0);
        for (r, run) in self.runs.iter().enumerate() {
            let y = (LEGEND_PAD + ROW * r as u32 + ROW / 2) as i32;
            area.draw_text(
                &run.name,
                &text.pos(Pos::new(HPos::Left, VPos::Center)),
                (left, y),
            )?;
            for (c, &k) in keys.iter().enumerate() {
                if !self.present[r][k] {
                    continue;
                }
                let x = left + names as i32 + (cell as i32) * c as i32;
                let look = look(r, self.runs.len(), k);
                let style = ShapeStyle::from(look.color).stroke_width(look.width.max(2));
                let ends = vec![(x, y), (x + SAMPLE, y)];
                match look.dash {
                    None => area.draw(&PathElement::new(ends, style))?,
                    Some((dash, gap)) => {
                        area.draw(&DashedPathElement::new(ends, dash, gap, style))?
                    }
                }
                if look.markers {
                    area.draw(&Circle::new((x + SAMPLE / 2, y), 3, look.color.filled()))?;
                }
                let label = text.pos(Pos::new(HPos::Left, VPos::Center));
                area.draw_text(KEYS[k].label(), &label, (x + SAMPLE + 10, y))?;
            }
        }
        Ok(())
    }
}

/// A tick value with no more digits than it has: 0.5, not 0.500000001.
fn decimal(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stems_unless_two_are_alike() {
        let paths: Vec<PathBuf> = ["a/run.jsonl", "b/run.jsonl", "c/other.csv"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(
            run_names(&paths),
            vec!["a/run.jsonl", "b/run.jsonl", "other"]
        );
    }

    #[test]
    fn ticks_drop_trailing_zeros() {
        assert_eq!(decimal(0.5000000001), "0.5");
        assert_eq!(decimal(2.0), "2");
        assert_eq!(decimal(0.86), "0.86");
        assert_eq!(decimal(-0.0), "0");
    }
}
