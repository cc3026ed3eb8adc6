//! The charts are written as real PNG files of the requested size.

use mome_plot::{heatmap, line_chart, Heatmap, LineChart, PlotError, Series};

fn png_size(path: &std::path::Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&b[12..16], b"IHDR");
    let w = u32::from_be_bytes(b[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(b[20..24].try_into().unwrap());
    (w, h)
}

#[test]
fn line_chart_writes_png_with_several_series() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sub/loss.png");
    let a: Vec<(f64, f64)> = (1..=50).map(|i| (i as f64, 5.0 / i as f64 + 1.0)).collect();
    let b: Vec<(f64, f64)> = (1..=50).map(|i| (i as f64, 4.0 / i as f64 + 1.2)).collect();
    let chart = LineChart {
        title: "validation loss".into(),
        x_label: "step".into(),
        y_label: "loss (nats)".into(),
        series: vec![Series::new("ce only", a), Series::new("fixed α=0.5", b)],
        log_y: true,
    };
    line_chart(&p, &chart, (800, 500)).unwrap();
    assert_eq!(png_size(&p), (800, 500));
    // A chart with text is far from a blank image.
    assert!(std::fs::metadata(&p).unwrap().len() > 5_000);
}

#[test]
fn constant_series_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("alpha.png");
    let chart = LineChart {
        title: "alpha".into(),
        x_label: "step".into(),
        y_label: "alpha".into(),
        series: vec![Series::new("fixed", vec![(1.0, 0.5), (2.0, 0.5)])],
        log_y: false,
    };
    line_chart(&p, &chart, (400, 300)).unwrap();
    assert_eq!(png_size(&p), (400, 300));
    let empty = LineChart {
        series: vec![Series::new("nan", vec![(1.0, f64::NAN)])],
        ..chart
    };
    let e = line_chart(&dir.path().join("x.png"), &empty, (400, 300)).unwrap_err();
    assert!(matches!(e, PlotError::InvalidInput { .. }), "{e}");
}

#[test]
fn heatmap_writes_png_and_rejects_ragged() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cm.png");
    let labels: Vec<String> = ["en", "fr", "de", "py"].map(String::from).to_vec();
    let mut m = Heatmap {
        title: "confusion".into(),
        row_labels: labels.clone(),
        col_labels: labels,
        x_label: "predicted".into(),
        y_label: "true".into(),
        values: vec![
            vec![90.0, 5.0, 5.0, 0.0],
            vec![3.0, 95.0, 2.0, 0.0],
            vec![1.0, 2.0, 97.0, 0.0],
            vec![0.0, 0.0, 0.0, 100.0],
        ],
        normalize_rows: true,
    };
    heatmap(&p, &m, (600, 600)).unwrap();
    assert_eq!(png_size(&p), (600, 600));
    m.values[2].pop();
    let e = heatmap(&dir.path().join("bad.png"), &m, (600, 600)).unwrap_err();
    assert!(matches!(e, PlotError::InvalidInput { .. }), "{e}");
}
