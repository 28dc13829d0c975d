//! Where a gradient check's element-wise errors lie: one histogram of log10 relative errors per
//! tensor, in a grid, with the tolerance drawn in.
//!
//! The report's figures (max and norm-wise error) say whether a tensor passed; the histogram
//! says how: a healthy backward pass is a narrow hump far left of the tolerance, a wrong one a
//! hump near 1, and a few kinks or a wrong bias show as a lone bar on the right.

use std::path::Path;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{font, power_of_ten, save, thousands, Drawn, Figure, PALETTE};
use crate::error::{Error, Result};
use crate::gradcheck::{GradcheckReport, TensorCheck};
use crate::nn::ParamLayout;

/// Bins span 1e-16 (f64's ε is 2.2e-16, so nothing finer is a real difference) to 1 (the most
/// two same-signed numbers can differ relatively), four to a decade.
const LOWEST: i32 = -16;
const BINS_PER_DECADE: usize = 4;
const BINS: usize = (-LOWEST) as usize * BINS_PER_DECADE;

/// Draws one histogram per checked tensor of `report` (whose arena `layout` says where each
/// tensor's elements are) into `out` (.svg or .png), written atomically.
pub fn plot_gradcheck(report: &GradcheckReport, layout: &ParamLayout, out: &Path) -> Result<()> {
    super::check_output(out)?;
    let mut tensors = Vec::new();
    for t in &report.tensors {
        let input = report.inputs.iter().find(|i| i.name == t.name);
        let histogram = match (layout.get(&t.name), input) {
            (Some(info), _) => {
                let range = info.offset..info.offset + info.numel;
                Histogram::of(
                    t,
                    &info.shape,
                    &report.analytic[range.clone()],
                    &report.numeric[range.clone()],
                    report.kinks.get(range).unwrap_or(&[]),
                )
            }
            (None, Some(i)) => Histogram::of(t, &i.shape, &i.analytic, &i.numeric, &i.kinks),
            (None, None) => {
                return Err(Error::InvalidArgument(format!(
                    "the report checks tensor {} but the net's layout has no such tensor",
                    t.name
                )))
            }
        };
        tensors.push(histogram);
    }
    save(&Grid { report, tensors }, out)
}

struct Histogram<'a> {
    check: &'a TensorCheck,
    shape: Vec<usize>,
    counts: [usize; BINS],
    /// Elements whose analytic or numerical gradient is NaN: they have no place on the axis.
    nan: usize,
}

impl<'a> Histogram<'a> {
    /// Elements on kinks are left out, as the verdict leaves them out: their central difference
    /// is wrong for a legitimate reason, and drawn in they would look like the bug the picture
    /// is for. Their count is in the legend.
    fn of(
        check: &'a TensorCheck,
        shape: &[usize],
        a: &[f64],
        n: &[f64],
        kinks: &[bool],
    ) -> Histogram<'a> {
        let mut counts = [0; BINS];
        let mut nan = 0;
        for i in 0..a.len() {
            if kinks.get(i).copied().unwrap_or(false) {
                continue;
            }
            let rel = (a[i] - n[i]).abs() / a[i].abs().max(n[i].abs()).max(f64::MIN_POSITIVE);
            if rel.is_nan() {
                nan += 1;
                continue;
            }
            counts[bin(rel)] += 1;
        }
        Histogram {
            check,
            shape: shape.to_vec(),
            counts,
            nan,
        }
    }
}

/// The bin of a relative error: below 1e-16 (exact agreement included) in the first, 1 and
/// above (opposite signs reach 2) in the last.
fn bin(rel: f64) -> usize {
    let position = (rel.log10() - LOWEST as f64) * BINS_PER_DECADE as f64;
    position.floor().clamp(0.0, (BINS - 1) as f64) as usize
}

fn bin_edges(b: usize) -> (f64, f64) {
    let lo = LOWEST as f64 + b as f64 / BINS_PER_DECADE as f64;
    (lo, lo + 1.0 / BINS_PER_DECADE as f64)
}

struct Grid<'a> {
    report: &'a GradcheckReport,
    tensors: Vec<Histogram<'a>>,
}

const HEADER: u32 = 64;
const FOOTER: u32 = 64;
const PANEL_HEIGHT: u32 = 460;

impl Grid<'_> {
    fn columns(&self) -> usize {
        match self.tensors.len() {
            0 | 1 => 1,
            2..=4 => 2,
            _ => 3,
        }
    }

    fn panel_width(&self) -> u32 {
        match self.columns() {
            1 => 1100,
            2 => 700,
            _ => 620,
        }
    }

    fn rows(&self) -> usize {
        self.tensors.len().div_ceil(self.columns()).max(1)
    }

    /// Where the verdict's line falls on a relative-error axis, and what it is.
    fn tolerance(&self) -> (f64, String) {
        let t = &self.report.tolerance;
        if t.per_element {
            (
                t.rtol,
                format!(
                    "tolerance rtol {:e}; elements beyond it pass only within atol {:e}",
                    t.rtol, t.atol
                ),
            )
        } else {
            (
                t.norm_tol,
                format!(
                    "norm-wise tolerance {:e} (in {}, elements get no verdict of their own)",
                    t.norm_tol, self.report.precision
                ),
            )
        }
    }
}

impl Figure for Grid<'_> {
    fn size(&self) -> (u32, u32) {
        (
            self.panel_width() * self.columns() as u32,
            HEADER + PANEL_HEIGHT * self.rows() as u32 + FOOTER,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let (w, h) = self.size();
        let r = self.report;
        let title = format!(
            "Gradient check, {} batch {}, {} strategy, h = {:e}: {}",
            r.precision,
            r.batch,
            r.strategy,
            r.h,
            if r.passed { "PASSED" } else { "FAILED" }
        );
        let centred = |size| font(size).pos(Pos::new(HPos::Center, VPos::Center));
        root.draw_text(&title, &centred(26.0), (w as i32 / 2, HEADER as i32 / 2))?;
        let notes = [
            "Per element: |a − n| / max(|a|, |n|), analytic a against numerical n, 4 bins per \
             decade; below 10⁻¹⁶ (exact agreement too) in the first bin.",
            "Elements whose central difference crossed a ReLU or max-pool kink are left out, as \
             the verdict leaves them out.",
        ];
        for (i, note) in notes.iter().enumerate() {
            let y = h as i32 - FOOTER as i32 + 16 + 22 * i as i32;
            root.draw_text(note, &centred(15.0), (w as i32 / 2, y))?;
        }
        let body = root.margin(HEADER, FOOTER, 0, 0);
        let panels = body.split_evenly((self.rows(), self.columns()));
        for (i, (hist, area)) in self.tensors.iter().zip(&panels).enumerate() {
            self.panel(area, hist, i)?;
        }
        Ok(())
    }
}

/// Space over each plot for its caption and its legend: inside the plot the legend would
/// cover bars or the tolerance line, wherever it went.
const PANEL_TOP: u32 = 78;
const MARGIN: u32 = 12;
const Y_LABELS: u32 = 76;
/// The tolerance, in each plot and in its legend.
const TOLERANCE_LINE: ShapeStyle = ShapeStyle {
    color: RGBAColor(0, 0, 0, 1.0),
    filled: false,
    stroke_width: 2,
};

impl Grid<'_> {
    /// One tensor's panel: its caption and legend over its histogram.
    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        hist: &Histogram,
        index: usize,
    ) -> Drawn
    where
        DB::ErrorType: 'static,
    {
        let color = if hist.check.passed {
            PALETTE[index % 3]
        } else {
            PALETTE[3]
        };
        self.legend(area, hist, color)?;
        self.histogram(&area.margin(PANEL_TOP, 0, 0, 0), hist, color)
    }

    /// The caption (name, shape, verdict, errors) and the legend (bars, tolerance line).
    fn legend<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        hist: &Histogram,
        color: RGBColor,
    ) -> Drawn
    where
        DB::ErrorType: 'static,
    {
        let t = hist.check;
        let (w, _) = area.dim_in_pixel();
        let shape: Vec<String> = hist.shape.iter().map(|d| d.to_string()).collect();
        let caption = format!(
            "{} [{}]: {}, norm-wise error {:.1e}, largest {:.1e}",
            t.name,
            shape.join("×"),
            if t.passed { "pass" } else { "FAIL" },
            t.norm_rel_err,
            t.max_rel_err
        );
        let centred = font(19.0).pos(Pos::new(HPos::Center, VPos::Center));
        area.draw_text(&caption, &centred, (w as i32 / 2, 18))?;

        let mut entry = format!(
            "{}: {} elements, {} kink crossing{} (not shown)",
            t.name,
            thousands(t.numel),
            thousands(t.kink_crossings),
            if t.kink_crossings == 1 { "" } else { "s" }
        );
        if hist.nan > 0 {
            entry.push_str(&format!(", {} NaN (not shown)", thousands(hist.nan)));
        }
        let (_, tol_entry) = self.tolerance();
        let left = (MARGIN + Y_LABELS) as i32;
        let label = font(15.0).pos(Pos::new(HPos::Left, VPos::Center));
        let (y1, y2) = (43, 64);
        area.draw(&Rectangle::new(
            [(left, y1 - 6), (left + 18, y1 + 6)],
            color.mix(0.85).filled(),
        ))?;
        area.draw_text(&entry, &label, (left + 28, y1))?;
        area.draw(&DashedPathElement::new(
            vec![(left, y2), (left + 18, y2)],
            8,
            5,
            TOLERANCE_LINE,
        ))?;
        area.draw_text(&tol_entry, &label, (left + 28, y2))?;
        Ok(())
    }

    /// The counts of `hist` per bin, on log axes, with the tolerance marked.
    fn histogram<DB: DrawingBackend>(
        &self,
        plot: &DrawingArea<DB, Shift>,
        hist: &Histogram,
        color: RGBColor,
    ) -> Drawn
    where
        DB::ErrorType: 'static,
    {
        let (tol, _) = self.tolerance();
        let most = hist.counts.iter().copied().max().unwrap_or(0).max(1);
        // Counts on a log axis: one wrong element among 39,200 must still show. Bars start at
        // 0.5, so that a count of 1 has a height.
        let base = 0.5f64.log10();
        let top = (most as f64).log10().ceil().max(1.0) + 0.3;
        let mut chart = ChartBuilder::on(plot)
            .margin(MARGIN)
            .margin_top(4)
            .margin_right(24)
            .x_label_area_size(50)
            .y_label_area_size(Y_LABELS)
            .build_cartesian_2d(LOWEST as f64..0.0, base..top)?;
        chart
            .configure_mesh()
            .x_labels(9)
            .y_labels(top as usize + 1)
            .x_label_formatter(&|v| integer_label(*v, power_of_ten))
            .y_label_formatter(&|v| {
                integer_label(*v, |e| {
                    if e >= 0 {
                        thousands(10usize.pow(e as u32))
                    } else {
                        String::new()
                    }
                })
            })
            .x_desc("relative error |a − n| / max(|a|, |n|)")
            .y_desc("elements")
            .label_style(font(15.0))
            .axis_desc_style(font(16.0))
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(228, 228, 228))
            .draw()?;

        let bars = (hist.counts.iter().enumerate())
            .filter(|(_, &c)| c > 0)
            .map(|(b, &c)| {
                let (x0, x1) = bin_edges(b);
                Rectangle::new(
                    [(x0, base), (x1, (c as f64).log10())],
                    color.mix(0.85).filled(),
                )
            });
        chart.draw_series(bars)?;
        chart.draw_series(DashedLineSeries::new(
            [(tol.log10(), base), (tol.log10(), top)],
            8,
            5,
            TOLERANCE_LINE,
        ))?;
        Ok(())
    }
}

/// A label at whole values of a log10 axis only: ticks between decades name no power of ten.
fn integer_label(v: f64, name: impl Fn(i32) -> String) -> String {
    if (v - v.round()).abs() < 1e-9 {
        name(v.round() as i32)
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_1e_16_to_1() {
        assert_eq!(bin(0.0), 0);
        assert_eq!(bin(1e-300), 0);
        assert_eq!(bin(1e-16), 0);
        assert_eq!(bin(1.1e-5), 44);
        assert_eq!(bin(0.999), BINS - 1);
        assert_eq!(bin(2.0), BINS - 1);
        assert_eq!(bin_edges(44).0, -5.0);
    }

    #[test]
    fn kink_elements_stay_out_as_in_the_verdict() {
        let check = TensorCheck {
            name: "W1".into(),
            numel: 4,
            mean_abs_diff: 0.0,
            max_rel_err: 0.0,
            max_rel_err_at: vec![0],
            norm_rel_err: 0.0,
            noise_rms: None,
            failed_at_h: None,
            kink_crossings: 1,
            elements_failed: 0,
            passed: true,
        };
        // Exact, 2e-8 off, on a kink (off by a factor 3), NaN.
        let a = [1.0, 1.0, 1.0, 1.0];
        let n = [1.0, 1.0 + 2e-8, 3.0, f64::NAN];
        let h = Histogram::of(&check, &[4], &a, &n, &[false, false, true, false]);
        assert_eq!(h.counts.iter().sum::<usize>(), 2, "{:?}", h.counts);
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[bin(2e-8)], 1);
        assert_eq!(h.nan, 1);
    }
}
