//! Confusion-matrix PNG, drawn with plotters' bitmap backend only (no font
//! libraries): counts are written with a built-in 3x5 digit font as rectangles.
//! Rows are true labels, columns predictions, both in the order given (see the
//! Markdown table for the names); darker = larger share of the row.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Result, RouterError};

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

fn draw_number<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    n: usize,
    cx: i32,
    cy: i32,
    px: i32,
    color: RGBColor,
) -> Result<()> {
    let s = n.to_string();
    let w = s.len() as i32 * 4 * px - px;
    let x0 = cx - w / 2;
    let y0 = cy - 5 * px / 2;
    for (k, ch) in s.bytes().enumerate() {
        let g = DIGITS[(ch - b'0') as usize];
        for (r, bits) in g.iter().enumerate() {
            for c in 0..3 {
                if bits & (0b100 >> c) != 0 {
                    let x = x0 + k as i32 * 4 * px + c * px;
                    let y = y0 + r as i32 * px;
                    area.draw(&Rectangle::new([(x, y), (x + px, y + px)], color.filled()))
                        .map_err(|e| RouterError::Plot(e.to_string()))?;
                }
            }
        }
    }
    Ok(())
}

/// Writes `matrix[true][pred]` as a PNG heat map with the counts in the cells.
pub fn confusion_png(path: &Path, matrix: &[Vec<usize>]) -> Result<()> {
    let k = matrix.len().max(1);
    let cell = 80i32;
    let margin = 40i32;
    let size = (margin * 2 + cell * k as i32) as u32;
    let root = BitMapBackend::new(path, (size, size)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| RouterError::Plot(e.to_string());
    root.fill(&WHITE).map_err(err)?;
    for (i, row) in matrix.iter().enumerate() {
        let total: usize = row.iter().sum();
        // Row and column numbers (class order) in the margins.
        draw_number(
            &root,
            i,
            margin / 2,
            margin + i as i32 * cell + cell / 2,
            3,
            BLACK,
        )?;
        draw_number(
            &root,
            i,
            margin + i as i32 * cell + cell / 2,
            margin / 2,
            3,
            BLACK,
        )?;
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
            ))
            .map_err(err)?;
            root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], BLACK))
                .map_err(err)?;
            let fg = if share > 0.5 { WHITE } else { BLACK };
            draw_number(&root, v, x + cell / 2, y + cell / 2, 4, fg)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}
