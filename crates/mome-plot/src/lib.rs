//! `mome-plot`: small PNG charts for mome reports.
//!
//! - [`line_chart`]: several named series of `(x, y)` points, axis labels, a legend;
//!   [`line_chart_row`]: several such charts side by side in one PNG;
//! - [`heatmap`]: a labelled matrix (e.g. a confusion matrix), one coloured cell per
//!   value with the value written in the cell;
//! - [`confusion_png`] ([`confusion`]): a confusion matrix of counts, drawn without
//!   any font (a built-in digit font), the router comparison's figure.
//!
//! Drawn with plotters' bitmap backend; text uses DejaVu Sans, embedded in the crate
//! (`fonts/DejaVuSans.ttf`, license in `fonts/DejaVuSans-LICENSE.txt`) and registered
//! with plotters' `ab_glyph` font registry, so no system font library or font file
//! is needed at run time.
//!
//! ```
//! use mome_plot::{line_chart, LineChart, Series};
//! let dir = tempfile::tempdir().unwrap();
//! let chart = LineChart {
//!     title: "loss".into(),
//!     x_label: "step".into(),
//!     y_label: "nats".into(),
//!     series: vec![Series::new("train", vec![(1.0, 3.0), (2.0, 2.5), (3.0, 2.2)])],
//!     log_y: false,
//! };
//! line_chart(&dir.path().join("loss.png"), &chart, (640, 400)).unwrap();
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

pub mod confusion;
pub use confusion::{confusion_png, confusion_rgb, confusion_size};

/// The embedded font (DejaVu Sans; see `fonts/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
/// The family name the embedded font is registered under.
pub const FONT_FAMILY: &str = "sans-serif";

static REGISTERED: OnceLock<bool> = OnceLock::new();

/// Everything that can go wrong while drawing.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The input cannot be drawn (no points, non-finite values, ragged matrix, ...).
    #[error("cannot plot {what}: {reason}")]
    InvalidInput {
        /// The chart or series involved.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The embedded font could not be registered.
    #[error("the embedded font could not be registered with plotters")]
    Font,
    /// plotters failed while drawing or encoding the PNG.
    #[error("{path}: drawing failed: {reason}")]
    Draw {
        /// The output file.
        path: PathBuf,
        /// plotters' message.
        reason: String,
    },
    /// The output folder could not be created.
    #[error("{path}: {source}")]
    Io {
        /// The folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`PlotError`].
pub type Result<T> = std::result::Result<T, PlotError>;

fn ensure_font() -> Result<()> {
    let ok = *REGISTERED.get_or_init(|| {
        [FontStyle::Normal, FontStyle::Bold]
            .into_iter()
            .all(|style| plotters::style::register_font(FONT_FAMILY, style, FONT).is_ok())
    });
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// One named line.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points in drawing order; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series named `name`.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
        }
    }
}

/// A line chart of several series.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// Caption above the plot.
    pub title: String,
    /// X axis description.
    pub x_label: String,
    /// Y axis description.
    pub y_label: String,
    /// The lines (colours are assigned in order).
    pub series: Vec<Series>,
    /// Logarithmic y axis (every plotted y must then be > 0).
    pub log_y: bool,
}

fn draw_err(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| PlotError::Io {
            path: parent.to_path_buf(),
            source: e,
        })?;
    }
    Ok(())
}

/// Padded `[lo, hi]` so that a constant series still gets a visible range.
fn padded(lo: f64, hi: f64, log: bool) -> (f64, f64) {
    if log {
        let (a, b) = (lo.ln(), hi.ln());
        let pad = ((b - a) * 0.05).max(0.05);
        ((a - pad).exp(), (b + pad).exp())
    } else {
        let pad = ((hi - lo) * 0.05)
            .max(hi.abs().max(lo.abs()) * 0.05)
            .max(1e-9);
        (lo - pad, hi + pad)
    }
}

fn palette(i: usize) -> RGBColor {
    const C: [RGBColor; 10] = [
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
    C[i % C.len()]
}

/// Draws `chart` as a PNG of `size` pixels at `path` (parent folders are created).
pub fn line_chart(path: &Path, chart: &LineChart, size: (u32, u32)) -> Result<()> {
    line_chart_row(path, std::slice::from_ref(chart), size)
}

/// Draws `charts` side by side, each a panel of `panel` pixels, as one PNG at
/// `path` (e.g. one panel per training regime of the forgetting study).
///
/// ```
/// use mome_plot::{line_chart_row, LineChart, Series};
/// let dir = tempfile::tempdir().unwrap();
/// let panel = |t: &str| LineChart {
///     title: t.into(),
///     x_label: "step".into(),
///     y_label: "loss".into(),
///     series: vec![Series::new("en", vec![(0.0, 3.0), (10.0, 2.0)])],
///     log_y: false,
/// };
/// let path = dir.path().join("row.png");
/// line_chart_row(&path, &[panel("a"), panel("b")], (320, 240)).unwrap();
/// assert!(std::fs::metadata(&path).unwrap().len() > 0);
/// ```
pub fn line_chart_row(path: &Path, charts: &[LineChart], panel: (u32, u32)) -> Result<()> {
    ensure_font()?;
    if charts.is_empty() {
        return Err(PlotError::InvalidInput {
            what: path.display().to_string(),
            reason: "no chart".into(),
        });
    }
    ensure_parent(path)?;
    let size = (panel.0 * charts.len() as u32, panel.1);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
    for (area, chart) in root.split_evenly((1, charts.len())).iter().zip(charts) {
        draw_line_chart(area, chart, path)?;
    }
    root.present().map_err(|e| draw_err(path, e))?;
    Ok(())
}

/// Draws one line chart on `root` (`path` names the output in errors).
fn draw_line_chart(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    chart: &LineChart,
    path: &Path,
) -> Result<()> {
    let what = || format!("line chart {:?}", chart.title);
    if chart.series.is_empty() {
        return Err(PlotError::InvalidInput {
            what: what(),
            reason: "no series".into(),
        });
    }
    let ok = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!chart.log_y || y > 0.0);
    let pts: Vec<(f64, f64)> = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(ok)
        .collect();
    if pts.is_empty() {
        return Err(PlotError::InvalidInput {
            what: what(),
            reason: "no finite point to draw (with log_y, y must be > 0)".into(),
        });
    }
    let fold = |f: fn(f64, f64) -> f64, init: f64, sel: fn(&(f64, f64)) -> f64| {
        pts.iter().map(sel).fold(init, f)
    };
    let (x0, x1) = padded(
        fold(f64::min, f64::INFINITY, |p| p.0),
        fold(f64::max, f64::NEG_INFINITY, |p| p.0),
        false,
    );
    let (y0, y1) = padded(
        fold(f64::min, f64::INFINITY, |p| p.1),
        fold(f64::max, f64::NEG_INFINITY, |p| p.1),
        chart.log_y,
    );
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(&chart.title, (FONT_FAMILY, 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70);
    macro_rules! finish {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            ctx.configure_mesh()
                .x_desc(chart.x_label.as_str())
                .y_desc(chart.y_label.as_str())
                .label_style((FONT_FAMILY, 14))
                .axis_desc_style((FONT_FAMILY, 16))
                .draw()
                .map_err(|e| draw_err(path, e))?;
            for (i, s) in chart.series.iter().enumerate() {
                let color = palette(i);
                let points: Vec<(f64, f64)> = s.points.iter().copied().filter(ok).collect();
                // Sparse series (e.g. a few evaluations, or a single point that a
                // line cannot show) also get point markers.
                if points.len() <= 60 {
                    ctx.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                        .map_err(|e| draw_err(path, e))?;
                }
                ctx.draw_series(LineSeries::new(points, color.stroke_width(2)))
                    .map_err(|e| draw_err(path, e))?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
            }
            ctx.configure_series_labels()
                .label_font((FONT_FAMILY, 14))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| draw_err(path, e))?;
        }};
    }
    if chart.log_y {
        finish!(builder
            .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
            .map_err(|e| draw_err(path, e))?);
    } else {
        finish!(builder
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| draw_err(path, e))?);
    }
    Ok(())
}

/// A labelled matrix: `values[r][c]` is drawn in row `r` (top to bottom), column `c`.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    /// Caption above the plot.
    pub title: String,
    /// One label per row (e.g. the true class).
    pub row_labels: Vec<String>,
    /// One label per column (e.g. the predicted class).
    pub col_labels: Vec<String>,
    /// X axis description (under the column labels).
    pub x_label: String,
    /// Y axis description (left of the row labels).
    pub y_label: String,
    /// The matrix, `rows x cols`, finite values.
    pub values: Vec<Vec<f64>>,
    /// Colour each row by its share of the row sum (confusion matrices) instead of
    /// by the global maximum.
    pub normalize_rows: bool,
}

fn fmt_value(v: f64) -> String {
    if (v.fract() == 0.0 && v.abs() < 1e9) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws `map` as a PNG of `size` pixels at `path` (white = 0, dark blue = max).
pub fn heatmap(path: &Path, map: &Heatmap, size: (u32, u32)) -> Result<()> {
    ensure_font()?;
    let what = || format!("heatmap {:?}", map.title);
    let rows = map.values.len();
    if rows == 0 || rows != map.row_labels.len() {
        return Err(PlotError::InvalidInput {
            what: what(),
            reason: format!(
                "{rows} rows of values for {} row labels (need at least one)",
                map.row_labels.len()
            ),
        });
    }
    let cols = map.col_labels.len();
    if cols == 0 || map.values.iter().any(|r| r.len() != cols) {
        return Err(PlotError::InvalidInput {
            what: what(),
            reason: format!("every row must hold one value per column label ({cols})"),
        });
    }
    if map.values.iter().flatten().any(|v| !v.is_finite()) {
        return Err(PlotError::InvalidInput {
            what: what(),
            reason: "non-finite value".into(),
        });
    }
    let global_max = map
        .values
        .iter()
        .flatten()
        .fold(0f64, |a, &b| a.max(b.abs()));
    ensure_parent(path)?;
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
    let mut ctx = ChartBuilder::on(&root)
        .caption(&map.title, (FONT_FAMILY, 22))
        .margin(12)
        .x_label_area_size(56)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..cols as f64, rows as f64..0f64)
        .map_err(|e| draw_err(path, e))?;
    ctx.configure_mesh()
        .disable_mesh()
        .x_labels(0)
        .y_labels(0)
        .x_desc(map.x_label.as_str())
        .y_desc(map.y_label.as_str())
        .axis_desc_style((FONT_FAMILY, 16))
        .draw()
        .map_err(|e| draw_err(path, e))?;
    for (r, row) in map.values.iter().enumerate() {
        let denom = if map.normalize_rows {
            row.iter().map(|v| v.abs()).sum::<f64>()
        } else {
            global_max
        };
        for (c, &v) in row.iter().enumerate() {
            let share = if denom > 0.0 { v.abs() / denom } else { 0.0 };
            let shade = |base: f64| (255.0 - (255.0 - base) * share).round() as u8;
            let fill = RGBColor(shade(8.0), shade(48.0), shade(107.0));
            let (x, y) = (c as f64, r as f64);
            ctx.draw_series(std::iter::once(Rectangle::new(
                [(x, y), (x + 1.0, y + 1.0)],
                fill.filled(),
            )))
            .map_err(|e| draw_err(path, e))?;
            let text_color = if share > 0.5 { WHITE } else { BLACK };
            let style = TextStyle::from((FONT_FAMILY, 14).into_font())
                .color(&text_color)
                .pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Center,
                ));
            ctx.draw_series(std::iter::once(Text::new(
                fmt_value(v),
                (x + 0.5, y + 0.5),
                style,
            )))
            .map_err(|e| draw_err(path, e))?;
        }
    }
    // Row and column labels, placed in pixels next to the cell centres.
    let centre = |x: f64, y: f64| ctx.backend_coord(&(x, y));
    let mut labels = Vec::new();
    for (c, l) in map.col_labels.iter().enumerate() {
        let (px, py) = centre(c as f64 + 0.5, rows as f64);
        labels.push((l.clone(), (px, py + 6), true));
    }
    for (r, l) in map.row_labels.iter().enumerate() {
        let (px, py) = centre(0.0, r as f64 + 0.5);
        labels.push((l.clone(), (px - 6, py), false));
    }
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    for (text, pos, is_col) in labels {
        let anchor = if is_col {
            Pos::new(HPos::Center, VPos::Top)
        } else {
            Pos::new(HPos::Right, VPos::Center)
        };
        let style = TextStyle::from((FONT_FAMILY, 14).into_font()).pos(anchor);
        root.draw(&Text::new(text, pos, style))
            .map_err(|e| draw_err(path, e))?;
    }
    root.present().map_err(|e| draw_err(path, e))?;
    Ok(())
}
