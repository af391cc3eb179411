//! Reliability diagrams (with the smoothed reliability curve), risk–coverage curves, the
//! accuracy-vs-ECE frontier and line charts (training curves), each written as PNG and SVG.
//!
//! Text is drawn with DejaVu Sans embedded in the crate (plotters' `ab_glyph` font path), so
//! plots render the same on a fresh machine with no fontconfig or system fonts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::MetricsError;
use crate::calibration::{ReliabilityBin, merge_equal_confidence};
use crate::report::{Estimate, MetricsReport};
use crate::scores::CoverageCurve;
use crate::smooth::SmoothCurve;

const FONT: &str = "sans-serif";
static DEJAVU_SANS: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// plotters keeps registered fonts in a global table: register once per process.
static FONT_REGISTERED: OnceLock<bool> = OnceLock::new();

/// Where a plot was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotFiles {
    pub png: PathBuf,
    pub svg: PathBuf,
}

/// Writes `<stem>.png` and `<stem>.svg`: bin accuracy against bin mean confidence, with the
/// diagonal of perfect calibration, and below it the number of predictions per bin. Bins with
/// equal mean confidence are merged first, as in the reference's plot. A report's smoothed
/// reliability curve μ(t), when given, is drawn over the bins with its bootstrap band shaded;
/// an empty one (a report from before lincal computed it) draws the bins alone.
pub fn write_reliability_diagram(
    bins: &[ReliabilityBin],
    curve: Option<&SmoothCurve>,
    title: &str,
    stem: impl AsRef<Path>,
) -> Result<PlotFiles, MetricsError> {
    let curve = curve.filter(|c| !c.mu.is_empty() && c.mu.len() == c.confidence.len());
    write_reliability(bins, curve, title, stem.as_ref())
}

fn write_reliability(
    bins: &[ReliabilityBin],
    curve: Option<&SmoothCurve>,
    title: &str,
    stem: &Path,
) -> Result<PlotFiles, MetricsError> {
    if bins.is_empty() {
        return Err(MetricsError::InvalidConfig {
            field: "bins",
            reason: "a reliability diagram needs at least one bin; pass a report's \
                     `reliability_bins`"
                .into(),
        });
    }
    let figure = Reliability {
        bins: merge_equal_confidence(bins),
        curve,
        title,
    };
    write_figure(&figure, (900, 1000), stem)
}

/// Writes `<stem>.png` and `<stem>.svg`: risk (1 − accuracy among the answered) against
/// coverage for one or more methods answering their most confident predictions first, each
/// labelled with its AURC (the mean risk over coverage; lower is better).
pub fn write_risk_coverage_plot(
    curves: &[(&str, &CoverageCurve)],
    title: &str,
    stem: impl AsRef<Path>,
) -> Result<PlotFiles, MetricsError> {
    if curves.is_empty() {
        return Err(MetricsError::InvalidConfig {
            field: "curves",
            reason: "a risk–coverage plot needs at least one method".into(),
        });
    }
    if let Some((label, _)) = curves.iter().find(|(_, c)| c.points.is_empty()) {
        return Err(MetricsError::InvalidConfig {
            field: "curves",
            reason: format!(
                "the coverage curve of `{label}` has no points; pass a report's `coverage`"
            ),
        });
    }
    write_figure(&RiskCoverage { curves, title }, (1000, 700), stem.as_ref())
}

/// One method on the accuracy-vs-ECE frontier.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontierPoint {
    pub label: String,
    pub accuracy: Estimate,
    pub ece: Estimate,
}

impl FrontierPoint {
    pub fn from_report(label: impl Into<String>, report: &MetricsReport) -> Self {
        Self {
            label: label.into(),
            accuracy: report.accuracy,
            ece: report.ece,
        }
    }
}

/// Writes `<stem>.png` and `<stem>.svg`: accuracy against ECE for several methods, with their
/// bootstrap intervals as error bars in both directions, each point labelled and in the legend.
pub fn write_frontier_plot(
    points: &[FrontierPoint],
    title: &str,
    stem: impl AsRef<Path>,
) -> Result<PlotFiles, MetricsError> {
    if points.is_empty() {
        return Err(MetricsError::InvalidConfig {
            field: "points",
            reason: "a frontier plot needs at least one method".into(),
        });
    }
    write_figure(&Frontier { points, title }, (1100, 800), stem.as_ref())
}

/// One named line of a line chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub label: String,
    /// (x, y) in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// Writes `<stem>.png` and `<stem>.svg`: one line per curve, with a marker at every point (so a
/// one-point curve still shows), labelled in a legend above the lines (room for about four
/// curves); the axes fit every point. Used for training curves (loss, reward or KL against the
/// step).
pub fn write_line_plot(
    curves: &[Curve],
    title: &str,
    x_label: &str,
    y_label: &str,
    stem: impl AsRef<Path>,
) -> Result<PlotFiles, MetricsError> {
    if curves.iter().all(|c| c.points.is_empty()) {
        return Err(MetricsError::InvalidConfig {
            field: "curves",
            reason: "a line plot needs at least one point".into(),
        });
    }
    if let Some(curve) = curves.iter().find(|c| {
        c.points
            .iter()
            .any(|(x, y)| !x.is_finite() || !y.is_finite())
    }) {
        return Err(MetricsError::InvalidConfig {
            field: "curves",
            reason: format!(
                "curve `{}` has a point that is not a finite number; leave such points out",
                curve.label
            ),
        });
    }
    let figure = LineChart {
        curves,
        title,
        x_label,
        y_label,
    };
    write_figure(&figure, (1000, 650), stem.as_ref())
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A figure drawn the same way on the bitmap and the SVG backend.
trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

fn write_figure(
    figure: &impl Figure,
    (w, h): (u32, u32),
    stem: &Path,
) -> Result<PlotFiles, MetricsError> {
    let files = PlotFiles {
        png: with_suffix(stem, "png"),
        svg: with_suffix(stem, "svg"),
    };
    let drawing_error = |path: &Path, e: String| MetricsError::Write {
        path: path.to_path_buf(),
        message: format!("drawing failed: {e}"),
    };
    if !*FONT_REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_ok())
    {
        return Err(drawing_error(
            &files.png,
            "the embedded font did not load".into(),
        ));
    }

    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        figure
            .draw(&root)
            .and_then(|()| root.present())
            .map_err(|e| drawing_error(&files.png, e.to_string()))?;
    }
    write_atomically(
        &files.png,
        &encode_png(&rgb, (w, h)).map_err(|e| drawing_error(&files.png, e.to_string()))?,
    )?;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        figure
            .draw(&root)
            .and_then(|()| root.present())
            .map_err(|e| drawing_error(&files.svg, e.to_string()))?;
    }
    write_atomically(&files.svg, svg.as_bytes())?;
    Ok(files)
}

/// `stem` with ".png" or ".svg" appended (not replacing a dot already in the name).
fn with_suffix(stem: &Path, suffix: &str) -> PathBuf {
    let mut name = stem.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    name.into()
}

fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>, png::EncodingError> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(rgb)?;
    Ok(bytes)
}

/// Writes to a temporary name beside `path` and renames it, so a crash never leaves half a file;
/// a failed write (a full disk) removes the temporary file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), MetricsError> {
    let write_error = |e: std::io::Error| MetricsError::Write {
        path: path.to_path_buf(),
        message: format!("{e}; check that the folder exists, is writable and has space"),
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temporary = tempfile::NamedTempFile::new_in(dir).map_err(write_error)?;
    temporary.write_all(bytes).map_err(write_error)?;
    temporary
        .persist(path)
        .map(|_| ())
        .map_err(|e| write_error(e.error))
}

/// Tableau's 10 colours: distinct, and readable on white (unlike a generated palette's yellows).
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

struct Reliability<'a> {
    bins: Vec<ReliabilityBin>,
    curve: Option<&'a SmoothCurve>,
    title: &'a str,
}

impl Figure for Reliability<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let root = root.margin(12, 0, 0, 0).titled(self.title, (FONT, 30))?;
        let (top, bottom) = root.split_vertically(680);
        let blue = COLORS[0];
        let no_minor_grid = WHITE.mix(0.0);

        let mut chart = ChartBuilder::on(&top)
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
        chart
            .configure_mesh()
            .x_desc("Mean confidence in bin")
            .y_desc("Accuracy in bin")
            .label_style((FONT, 18))
            .axis_desc_style((FONT, 20))
            .light_line_style(no_minor_grid)
            .draw()?;
        let grey = ShapeStyle::from(&BLACK.mix(0.5)).stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new([(0.0, 0.0), (1.0, 1.0)], 10, 6, grey))?
            .label("Perfect calibration")
            .legend(move |(x, y)| PathElement::new([(x - 4, y), (x + 16, y)], grey));
        if let Some(curve) = self.curve {
            // Drawn under the bins, and only where there are predictions to smooth (far from
            // any, μ is a ratio of two vanishing kernel tails and means nothing) and μ is in
            // [0, 1] (plotters does not clip to the frame; the band is clamped to it).
            let orange = COLORS[1];
            let band = orange.mix(0.25).filled();
            let line = orange.stroke_width(3);
            let inside = |v: f64| v.clamp(0.0, 1.0);
            let has_band = curve.band_low.len() == curve.confidence.len()
                && curve.band_high.len() == curve.confidence.len();
            for (i, run) in drawable_runs(curve).into_iter().enumerate() {
                let t = &curve.confidence[run.clone()];
                if has_band {
                    let lower = t.iter().zip(&curve.band_low[run.clone()]);
                    let upper = t.iter().zip(&curve.band_high[run.clone()]).rev();
                    let outline: Vec<_> =
                        lower.chain(upper).map(|(&t, &v)| (t, inside(v))).collect();
                    let drawn = chart.draw_series([Polygon::new(outline, band)])?;
                    if i == 0 {
                        drawn.label("Bootstrap band of the smoothed curve").legend(
                            move |(x, y)| Rectangle::new([(x - 4, y - 6), (x + 16, y + 6)], band),
                        );
                    }
                }
                let points = t
                    .iter()
                    .zip(&curve.mu[run])
                    .map(|(&t, &mu)| (t, inside(mu)));
                let drawn = chart.draw_series(LineSeries::new(points, line))?;
                if i == 0 {
                    drawn
                        .label(format!(
                            "Smoothed (smECE kernel σ = {:.3})",
                            curve.bandwidth
                        ))
                        .legend(move |(x, y)| PathElement::new([(x - 4, y), (x + 16, y)], line));
                }
            }
        }
        let points: Vec<_> = self
            .bins
            .iter()
            .map(|b| (b.mean_confidence, b.accuracy))
            .collect();
        chart.draw_series(LineSeries::new(
            points.iter().copied(),
            blue.stroke_width(2),
        ))?;
        let total: usize = self.bins.iter().map(|b| b.count).sum();
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 6, blue.filled())))?
            .label(format!(
                "Bins ({} shown, {total} predictions)",
                self.bins.len()
            ))
            .legend(move |(x, y)| Circle::new((x + 6, y), 6, blue.filled()));
        // Upper left is where an underconfident model's points go, rarely seen with LLMs.
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 18))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;

        // Predictions per bin as stems at the bin's mean confidence, on the same axis as above;
        // stems stay readable where bars of neighbouring bins would overlap.
        let max_count = self.bins.iter().map(|b| b.count).max().unwrap_or(1) as f64;
        let mut counts = ChartBuilder::on(&bottom)
            .margin(20)
            .margin_top(0)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..1f64, 0f64..max_count * 1.15)?;
        counts
            .configure_mesh()
            .x_desc("Mean confidence in bin")
            .y_desc("Predictions in bin")
            .y_labels(4)
            .y_label_formatter(&|c| format!("{c:.0}"))
            .label_style((FONT, 18))
            .axis_desc_style((FONT, 20))
            .light_line_style(no_minor_grid)
            .draw()?;
        counts.draw_series(self.bins.iter().map(|b| {
            PathElement::new(
                [
                    (b.mean_confidence, 0.0),
                    (b.mean_confidence, b.count as f64),
                ],
                blue.stroke_width(3),
            )
        }))?;
        counts.draw_series(
            self.bins
                .iter()
                .map(|b| Circle::new((b.mean_confidence, b.count as f64), 4, blue.filled())),
        )?;
        Ok(())
    }
}

/// Stretches of the mesh where μ is in [0, 1] and the confidences' density is at least a tenth
/// of its mean.
fn drawable_runs(curve: &SmoothCurve) -> Vec<std::ops::Range<usize>> {
    let drawable = |i: usize| {
        curve.density.get(i).is_some_and(|&d| d >= 0.1) && (0.0..=1.0).contains(&curve.mu[i])
    };
    let mut runs = Vec::new();
    let mut start = None;
    for i in 0..=curve.mu.len() {
        match (start, i < curve.mu.len() && drawable(i)) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                runs.push(s..i);
                start = None;
            }
            _ => {}
        }
    }
    runs
}

struct RiskCoverage<'a> {
    curves: &'a [(&'a str, &'a CoverageCurve)],
    title: &'a str,
}

impl Figure for RiskCoverage<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let root = root.margin(12, 0, 0, 0).titled(self.title, (FONT, 30))?;
        let color = |i: usize| COLORS[i % COLORS.len()];
        let highest_risk = self
            .curves
            .iter()
            .flat_map(|(_, c)| c.points.iter().map(|p| 1.0 - p.accuracy))
            .fold(0.0, f64::max);
        // The top third is left free for the legend; a risk axis to 1 at most.
        let top = (highest_risk * 1.4).clamp(0.05, 1.0);
        let mut chart = ChartBuilder::on(&root)
            .margin(25)
            .x_label_area_size(55)
            .y_label_area_size(90)
            .build_cartesian_2d(0f64..1f64, 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("Coverage (fraction answered, most confident first)")
            .y_desc("Risk (1 − accuracy among answered)")
            .label_style((FONT, 18))
            .axis_desc_style((FONT, 20))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (i, (label, curve)) in self.curves.iter().enumerate() {
            let style = color(i).stroke_width(2);
            let points: Vec<_> = curve
                .points
                .iter()
                .map(|p| (p.coverage, 1.0 - p.accuracy))
                .collect();
            // Markers only where they stay apart (a few confidence levels, not a continuum).
            let markers = if points.len() <= 50 { &points[..] } else { &[] };
            chart.draw_series(
                markers
                    .iter()
                    .map(|&p| Circle::new(p, 4, color(i).filled())),
            )?;
            chart
                .draw_series(LineSeries::new(points.iter().copied(), style))?
                .label(format!("{label} (AURC {:.3})", 1.0 - curve.area))
                .legend(move |(x, y)| PathElement::new([(x - 4, y), (x + 16, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 18))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    }
}

struct Frontier<'a> {
    points: &'a [FrontierPoint],
    title: &'a str,
}

/// Decimals that tell apart the ~10 tick labels of an axis spanning `span`: 2 for a wide axis,
/// more for a narrow one (equal accuracies give an axis 0.04 wide, whose ticks 0.005 apart all
/// read "0.19" or "0.20" with two).
fn label_decimals(span: f64) -> usize {
    let step = span / 10.0;
    if step > 0.0 && step.is_finite() {
        (-step.log10()).ceil().clamp(2.0, 6.0) as usize
    } else {
        2
    }
}

impl Figure for Frontier<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let root = root.margin(12, 0, 0, 0).titled(self.title, (FONT, 30))?;
        let label_font = TextStyle::from((FONT, 18).into_font());
        let color = |i: usize| COLORS[i % COLORS.len()];

        // The legend gets its own panel on the right, so it never hides a point.
        let mut widest = 0;
        for p in self.points {
            widest = widest.max(root.estimate_text_size(&p.label, &label_font)?.0);
        }
        let (plot_area, legend_area) =
            root.split_horizontally(root.dim_in_pixel().0 - (widest + 70).min(400));
        for (i, p) in self.points.iter().enumerate() {
            let y = 70 + 30 * i as i32;
            legend_area.draw(&Circle::new((15, y), 7, color(i).filled()))?;
            legend_area.draw(&Text::new(
                p.label.as_str(),
                (32, y - 10),
                label_font.clone(),
            ))?;
        }

        // Axes fit every interval, with room around them for labels.
        let span = |get: fn(&FrontierPoint) -> &Estimate| {
            let (lo, hi) = self
                .points
                .iter()
                .map(get)
                .fold((f64::MAX, f64::MIN), |(lo, hi), e| {
                    (
                        lo.min(e.ci_low.unwrap_or(e.value)),
                        hi.max(e.ci_high.unwrap_or(e.value)),
                    )
                });
            let pad = ((hi - lo) * 0.12).max(0.02);
            (lo - pad).max(0.0)..(hi + pad).min(1.0)
        };
        let (x_range, y_range) = (span(|p| &p.ece), span(|p| &p.accuracy));
        let (x_decimals, y_decimals) = (
            label_decimals(x_range.end - x_range.start),
            label_decimals(y_range.end - y_range.start),
        );
        let mut chart = ChartBuilder::on(&plot_area)
            .margin(25)
            .x_label_area_size(55)
            .y_label_area_size(90)
            .build_cartesian_2d(x_range, y_range)?;
        chart
            .configure_mesh()
            .x_desc("ECE (lower is better)")
            .y_desc("Accuracy (higher is better)")
            .label_style((FONT, 18))
            .axis_desc_style((FONT, 20))
            .light_line_style(WHITE.mix(0.0))
            .x_label_formatter(&|x| format!("{x:.x_decimals$}"))
            .y_label_formatter(&|y| format!("{y:.y_decimals$}"))
            .draw()?;

        let pixels: Vec<_> = self
            .points
            .iter()
            .map(|p| chart.backend_coord(&(p.ece.value, p.accuracy.value)))
            .collect();
        // Markers first, so that labels are placed around all of them.
        let mut taken: Vec<_> = pixels.iter().map(|&p| PixelRect::around(p, 9)).collect();
        let inside = PixelRect::of_area(chart.plotting_area());
        for (i, p) in self.points.iter().enumerate() {
            let (x, y) = (p.ece.value, p.accuracy.value);
            let bar = color(i).stroke_width(2);
            let (x_lo, x_hi) = (p.ece.ci_low.unwrap_or(x), p.ece.ci_high.unwrap_or(x));
            let (y_lo, y_hi) = (
                p.accuracy.ci_low.unwrap_or(y),
                p.accuracy.ci_high.unwrap_or(y),
            );
            chart.draw_series([ErrorBar::new_vertical(x, y_lo, y, y_hi, bar, 10)])?;
            chart.draw_series([ErrorBar::new_horizontal(y, x_lo, x, x_hi, bar, 10)])?;
            chart.draw_series([Circle::new((x, y), 7, color(i).filled())])?;

            let size = plot_area.estimate_text_size(&p.label, &label_font)?;
            let label = place_label(pixels[i], size, &taken, &inside);
            taken.push(label);
            let offset = (label.x0 - pixels[i].0, label.y0 - pixels[i].1);
            let text = Text::new(p.label.clone(), offset, label_font.clone());
            chart.draw_series([EmptyElement::at((x, y)) + text])?;
        }
        Ok(())
    }
}

/// A rectangle in pixels.
#[derive(Clone, Copy)]
struct PixelRect {
    x0: i32,
    y0: i32,
    x1: i32,
    y1: i32,
}

impl PixelRect {
    fn around((x, y): (i32, i32), radius: i32) -> Self {
        Self {
            x0: x - radius,
            y0: y - radius,
            x1: x + radius,
            y1: y + radius,
        }
    }

    fn of_area<DB: DrawingBackend, CT: plotters::coord::CoordTranslate>(
        area: &DrawingArea<DB, CT>,
    ) -> Self {
        let (x, y) = area.get_pixel_range();
        Self {
            x0: x.start,
            y0: y.start,
            x1: x.end,
            y1: y.end,
        }
    }

    fn overlaps(&self, other: &PixelRect) -> bool {
        self.x0 < other.x1 && other.x0 < self.x1 && self.y0 < other.y1 && other.y0 < self.y1
    }

    fn within(&self, outer: &PixelRect) -> bool {
        self.x0 >= outer.x0 && self.x1 <= outer.x1 && self.y0 >= outer.y0 && self.y1 <= outer.y1
    }
}

/// Where a point's label goes: the first of eight spots around the point (right, then left,
/// then above and below) that stays in the plot and clears every marker and earlier label;
/// up-right if none does.
fn place_label(
    (x, y): (i32, i32),
    (w, h): (u32, u32),
    taken: &[PixelRect],
    inside: &PixelRect,
) -> PixelRect {
    let (w, h) = (w as i32, h as i32);
    let at = |x0: i32, y0: i32| PixelRect {
        x0,
        y0,
        x1: x0 + w,
        y1: y0 + h,
    };
    let candidates = [
        at(x + 12, y - h - 4),
        at(x + 12, y + 4),
        at(x - 12 - w, y - h - 4),
        at(x - 12 - w, y + 4),
        at(x + 12, y - h / 2),
        at(x - 12 - w, y - h / 2),
        at(x - w / 2, y - h - 14),
        at(x - w / 2, y + 14),
    ];
    candidates
        .iter()
        .find(|c| c.within(inside) && !taken.iter().any(|t| t.overlaps(c)))
        .copied()
        .unwrap_or(candidates[0])
}

struct LineChart<'a> {
    curves: &'a [Curve],
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
}

/// `lo..hi` widened by 5% on each side, or by 1 (or a tenth of the value) when `lo == hi`,
/// so that no point sits on the frame.
fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        (lo.abs() * 0.1).max(1.0)
    };
    lo - pad..hi + pad
}

impl Figure for LineChart<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let root = root.margin(12, 0, 0, 0).titled(self.title, (FONT, 30))?;
        let color = |i: usize| COLORS[i % COLORS.len()];
        let points = || self.curves.iter().flat_map(|c| c.points.iter().copied());
        let span = |get: fn((f64, f64)) -> f64| {
            let (lo, hi) = points()
                .map(get)
                .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
            padded(lo, hi)
        };
        // The top quarter of the plot is left free for the legend, so it hides no point.
        let y = span(|(_, y)| y);
        let y = y.start..y.end + (y.end - y.start) / 3.0;
        let mut chart = ChartBuilder::on(&root)
            .margin(25)
            .x_label_area_size(55)
            .y_label_area_size(90)
            .build_cartesian_2d(span(|(x, _)| x), y)?;
        chart
            .configure_mesh()
            .x_desc(self.x_label)
            .y_desc(self.y_label)
            .label_style((FONT, 18))
            .axis_desc_style((FONT, 20))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (i, curve) in self.curves.iter().enumerate() {
            let style = color(i).stroke_width(2);
            chart.draw_series(LineSeries::new(curve.points.iter().copied(), style))?;
            chart
                .draw_series(
                    curve
                        .points
                        .iter()
                        .map(|&p| Circle::new(p, 4, color(i).filled())),
                )?
                .label(curve.label.as_str())
                .legend(move |(x, y)| PathElement::new([(x - 4, y), (x + 16, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 18))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_axes_get_enough_decimals_for_distinct_labels() {
        assert_eq!(label_decimals(1.0), 2);
        assert_eq!(label_decimals(0.2), 2);
        // Equal accuracies: 0.04 wide, ticks 0.004 apart.
        assert_eq!(label_decimals(0.04), 3);
        assert_eq!(label_decimals(0.0004), 5);
        assert_eq!(label_decimals(0.0), 2);
    }
}
