//! The confusion-matrix PNG (moved here from mome-router): its size, the shading of
//! the cells by row share, the built-in digit font, and bad input.

use mome_plot::{confusion_png, confusion_rgb, confusion_size, PlotError};

fn png_size(path: &std::path::Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&b[12..16], b"IHDR");
    let w = u32::from_be_bytes(b[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(b[20..24].try_into().unwrap());
    (w, h)
}

fn pixel(buf: &[u8], size: u32, x: u32, y: u32) -> [u8; 3] {
    let i = ((y * size + x) * 3) as usize;
    [buf[i], buf[i + 1], buf[i + 2]]
}

const WHITE: [u8; 3] = [255, 255, 255];
const BLACK: [u8; 3] = [0, 0, 0];

#[test]
fn png_is_square_with_one_cell_per_class_and_creates_folders() {
    let dir = tempfile::tempdir().unwrap();
    for k in [1usize, 2, 4] {
        let m: Vec<Vec<usize>> = (0..k)
            .map(|i| (0..k).map(|j| usize::from(i == j) * 10 + j).collect())
            .collect();
        let p = dir.path().join(format!("sub/k{k}/cm.png"));
        confusion_png(&p, &m).unwrap();
        let side = 40 * 2 + 80 * k as u32;
        assert_eq!(confusion_size(k), side);
        assert_eq!(png_size(&p), (side, side));
    }
    // No class at all: one blank cell's worth of picture.
    let p = dir.path().join("empty.png");
    confusion_png(&p, &[]).unwrap();
    assert_eq!(png_size(&p), (160, 160));
}

#[test]
fn cells_are_shaded_by_row_share_and_carry_their_counts() {
    let m = vec![vec![10, 0], vec![5, 5]];
    let (size, buf) = confusion_rgb(&m).unwrap();
    assert_eq!(size, 240);
    assert_eq!(buf.len(), 240 * 240 * 3);
    assert_eq!(pixel(&buf, size, 0, 0), WHITE, "margin");
    // Share 1 -> blue, 0 -> white, 1/2 -> (127, 127, 255); cells start at 40 + 80 j.
    assert_eq!(pixel(&buf, size, 43, 43), [0, 0, 255]);
    assert_eq!(pixel(&buf, size, 123, 43), WHITE);
    assert_eq!(pixel(&buf, size, 43, 123), [127, 127, 255]);
    assert_eq!(pixel(&buf, size, 195, 195), [127, 127, 255]);
    // Black cell borders.
    assert_eq!(pixel(&buf, size, 40, 50), BLACK);
    assert_eq!(pixel(&buf, size, 50, 120), BLACK);
    // "10" in cell (0, 0), centred on (80, 80) with 4-pixel dots, white on the dark
    // cell: the glyph of 1 has its top dot in the middle column, 0 a full top row.
    assert_eq!(pixel(&buf, size, 71, 71), WHITE, "top of the 1");
    assert_eq!(pixel(&buf, size, 67, 71), [0, 0, 255], "left of the 1");
    assert_eq!(pixel(&buf, size, 83, 71), WHITE, "top of the 0");
    assert_eq!(pixel(&buf, size, 87, 79), [0, 0, 255], "inside the 0");
    // "5" in cell (1, 1), centred on (160, 160), black on a half-shaded cell.
    assert_eq!(pixel(&buf, size, 155, 151), BLACK);
    // Row number 1 in the left margin, centred on (20, 160), 3-pixel dots.
    assert_eq!(pixel(&buf, size, 20, 154), BLACK);
    assert_eq!(pixel(&buf, size, 17, 154), WHITE);
    // Column number 1 in the top margin, centred on (160, 20).
    assert_eq!(pixel(&buf, size, 160, 14), BLACK);
    // Other counts with the same shares draw other digits.
    let (_, other) = confusion_rgb(&[vec![20, 0], vec![5, 5]]).unwrap();
    assert_ne!(other, buf);
}

/// FNV-1a 64 of the pixels.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn pixels_are_those_of_the_router_comparison_figure() {
    // Recorded from the implementation in mome-router before the move (its PNG files
    // were byte-identical to these pictures'), so the router comparison's figures do
    // not change.
    let m = vec![
        vec![90, 5, 5, 0],
        vec![3, 95, 2, 0],
        vec![1, 2, 97, 0],
        vec![0, 0, 0, 100],
    ];
    let (size, buf) = confusion_rgb(&m).unwrap();
    assert_eq!(size, 400);
    assert_eq!(fnv(&buf), GOLDEN_4X4, "{:#x}", fnv(&buf));
    let m: Vec<Vec<usize>> = vec![vec![1_234_567, 0, 8], vec![0, 0, 0], vec![49, 51, 10]];
    let (_, buf) = confusion_rgb(&m).unwrap();
    assert_eq!(fnv(&buf), GOLDEN_3X3, "{:#x}", fnv(&buf));
}

const GOLDEN_4X4: u64 = 0x00e3_97a6_c7a5_8f4a;
const GOLDEN_3X3: u64 = 0xda08_ada7_278f_e1bf;

#[test]
fn ragged_matrices_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.png");
    for m in [
        vec![vec![1, 2], vec![3]],
        vec![vec![1, 2, 3], vec![4, 5, 6]],
    ] {
        let e = confusion_png(&p, &m).unwrap_err();
        assert!(matches!(e, PlotError::InvalidInput { .. }), "{e}");
        assert!(matches!(
            confusion_rgb(&m),
            Err(PlotError::InvalidInput { .. })
        ));
    }
    assert!(!p.exists(), "nothing written for a bad matrix");
}
