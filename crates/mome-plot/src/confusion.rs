//! Confusion-matrix PNG without any font: the counts are written with a built-in
//! 3x5 digit font, drawn as rectangles. Rows are true labels, columns predictions,
//! both in the order given (the class names belong in the report next to the
//! picture); darker blue = larger share of the row.
//!
//! The picture is square: a 40-pixel margin around `k x k` cells of 80 pixels, the
//! row / column numbers (class order, from 0) in the margins.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("confusion.png");
//! mome_plot::confusion_png(&path, &[vec![9, 1], vec![0, 10]]).unwrap();
//! assert!(path.exists());
//! ```

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{draw_err, ensure_parent, PlotError, Result};

/// Side of one cell, in pixels.
pub const CONFUSION_CELL: u32 = 80;
/// Margin around the cells, in pixels.
pub const CONFUSION_MARGIN: u32 = 40;

const DIGITS: [[u8; 5]; 10] = [
    [0b111, 0b101, 0b101, 0b101, 0b111],
    [0b010, 0b110, 0b010, 0b010, 0b111],
    [0b111, 0b001, 0b111, 0b100, 0b111],
    [0b111, 0b001, 0b111, 0b001, 0b111],
    [0b101, 0b101, 0b111, 0b001, 0b001],
    [0b111, 0b100, 0b111, 0b001, 0b111],
    [0b111, 0b100, 0b111, 0b101, 0b111],
    [0b111, 0b001, 0b010, 0b010, 0b010],
    [0b111, 0b101, 0b111, 0b101, 0b111],
    [0b111, 0b101, 0b111, 0b001, 0b111],
];

/// Side in pixels of the confusion-matrix picture of `k` classes (`k >= 1`).
pub fn confusion_size(k: usize) -> u32 {
    CONFUSION_MARGIN * 2 + CONFUSION_CELL * k.max(1) as u32
}

/// Writes `n` in the digit font, centred on `(cx, cy)`, with square pixels of `px`.
fn draw_number<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    n: usize,
    (cx, cy): (i32, i32),
    px: i32,
    color: RGBColor,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let s = n.to_string();
    let w = s.len() as i32 * 4 * px - px;
    let x0 = cx - w / 2;
    let y0 = cy - 5 * px / 2;
    for (k, ch) in s.bytes().enumerate() {
        let g = DIGITS[usize::from(ch - b'0')];
        for (r, bits) in g.iter().enumerate() {
            for c in 0..3 {
                if bits & (0b100 >> c) != 0 {
                    let x = x0 + k as i32 * 4 * px + c * px;
                    let y = y0 + r as i32 * px;
                    area.draw(&Rectangle::new([(x, y), (x + px, y + px)], color.filled()))?;
                }
            }
        }
    }
    Ok(())
}

/// Draws the matrix on `root` (of [`confusion_size`] pixels).
fn draw_confusion<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    matrix: &[Vec<usize>],
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let cell = CONFUSION_CELL as i32;
    let margin = CONFUSION_MARGIN as i32;
    root.fill(&WHITE)?;
    for (i, row) in matrix.iter().enumerate() {
        let total: usize = row.iter().sum();
        let at = margin + i as i32 * cell + cell / 2;
        // Row and column numbers (class order) in the margins.
        draw_number(root, i, (margin / 2, at), 3, BLACK)?;
        draw_number(root, i, (at, margin / 2), 3, BLACK)?;
        for (j, &v) in row.iter().enumerate() {
            let share = if total > 0 {
                v as f64 / total as f64
            } else {
                0.0
            };
            let shade = (255.0 * (1.0 - share)) as u8;
            let color = RGBColor(shade, shade, 255);
            let x = margin + j as i32 * cell;
            let y = margin + i as i32 * cell;
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                color.filled(),
            ))?;
            root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], BLACK))?;
            let fg = if share > 0.5 { WHITE } else { BLACK };
            draw_number(root, v, (x + cell / 2, y + cell / 2), 4, fg)?;
        }
    }
    Ok(())
}

fn check_square(matrix: &[Vec<usize>]) -> Result<()> {
    let k = matrix.len();
    if let Some(r) = matrix.iter().position(|row| row.len() != k) {
        return Err(PlotError::InvalidInput {
            what: "confusion matrix".into(),
            reason: format!(
                "row {r} has {} values, a {k} x {k} matrix needs {k}",
                matrix[r].len()
            ),
        });
    }
    Ok(())
}

/// The confusion-matrix picture as RGB bytes (row-major, 3 bytes a pixel), with its
/// side in pixels: what [`confusion_png`] encodes.
pub fn confusion_rgb(matrix: &[Vec<usize>]) -> Result<(u32, Vec<u8>)> {
    check_square(matrix)?;
    let size = confusion_size(matrix.len());
    let mut buf = vec![0u8; size as usize * size as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (size, size)).into_drawing_area();
        let memory = Path::new("(in memory)");
        draw_confusion(&root, matrix).map_err(|e| draw_err(memory, e))?;
        root.present().map_err(|e| draw_err(memory, e))?;
    }
    Ok((size, buf))
}

/// Writes `matrix[true][pred]` (square, one row and one column per class) as a PNG
/// heat map with the counts in the cells; parent folders are created.
pub fn confusion_png(path: &Path, matrix: &[Vec<usize>]) -> Result<()> {
    check_square(matrix)?;
    ensure_parent(path)?;
    let size = confusion_size(matrix.len());
    let root = BitMapBackend::new(path, (size, size)).into_drawing_area();
    draw_confusion(&root, matrix).map_err(|e| draw_err(path, e))?;
    root.present().map_err(|e| draw_err(path, e))?;
    Ok(())
}
