//! PNG plots of a backtested file, drawn by hand (no plotting or font stack in the
//! build): top, the series (a min–max envelope per pixel column) over its expected band
//! (light blue), label windows shaded pink across both panels, detections as red
//! vertical lines; bottom, the engine's score with the threshold as a grey line (a
//! likelihood as its surprise, `-log10(1 - score)`, so "how close" is visible).

use std::path::Path;

use super::{BacktestError, Row, Scored, DETECTION_THRESHOLD};

const WIDTH: usize = 1600;
const TOP: usize = 420;
const GAP: usize = 10;
const BOTTOM: usize = 150;
const HEIGHT: usize = TOP + GAP + BOTTOM;

const WHITE: [u8; 3] = [255, 255, 255];
const WINDOW: [u8; 3] = [255, 214, 222];
const BAND: [u8; 3] = [190, 215, 245];
const SERIES: [u8; 3] = [31, 90, 170];
const DETECTION: [u8; 3] = [220, 20, 20];
const SCORE: [u8; 3] = [60, 60, 60];
const THRESHOLD: [u8; 3] = [160, 160, 160];

struct Canvas(Vec<u8>);

impl Canvas {
    fn set(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < WIDTH && y < HEIGHT {
            let i = (y * WIDTH + x) * 3;
            self.0[i..i + 3].copy_from_slice(&c);
        }
    }

    fn vline(&mut self, x: usize, y0: usize, y1: usize, c: [u8; 3]) {
        for y in y0.min(y1)..=y0.max(y1) {
            self.set(x, y, c);
        }
    }
}

/// Writes one PNG of `rows` as the engine scored them (see the module doc). An empty
/// series gives a blank image.
pub fn write_png(
    path: &Path,
    rows: &[Row],
    scored: &Scored,
    windows: &[(usize, usize)],
) -> Result<(), BacktestError> {
    let io = |source| BacktestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut c = Canvas(WHITE.repeat(WIDTH * HEIGHT));
    let n = rows.len();
    if n > 0 {
        let col = |i: usize| i * WIDTH / n;
        // The value range of the series alone (a plot may look at the whole file; the
        // detector never does), with a margin; the band is clipped to it.
        let (lo, hi) = rows
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), r| {
                (a.min(r.value), b.max(r.value))
            });
        let pad = ((hi - lo) * 0.05).max(1e-9);
        let (lo, hi) = (lo - pad, hi + pad);
        let y_of = |v: f64| {
            let f = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
            (TOP - 1) - (f * (TOP - 1) as f64).round() as usize
        };
        // A likelihood is drawn as surprise, -log10(1 - score), up to twice the
        // threshold's (0.999: up to one in a million): linear, every score near the
        // threshold would look the same. Other scores (robust z) are drawn linear.
        let likelihood = scored.threshold < 1.0;
        let surprise = |s: f64| -(1.0 - s).max(1e-300).log10();
        let top_score = if likelihood {
            2.0 * surprise(scored.threshold)
        } else {
            scored.score.iter().cloned().fold(1.0f64, f64::max)
        };
        let s_of = |s: f64| {
            let s = if likelihood { surprise(s.max(0.0)) } else { s };
            let f = (s / top_score).clamp(0.0, 1.0);
            HEIGHT - 1 - (f * (BOTTOM - 1) as f64).round() as usize
        };
        for &(l, r) in windows {
            for x in col(l)..=col(r.min(n - 1)) {
                c.vline(x, 0, HEIGHT - 1, WINDOW);
            }
        }
        for (i, &(lower, upper)) in scored.band.iter().enumerate() {
            if lower.is_finite() && upper.is_finite() {
                c.vline(col(i), y_of(upper), y_of(lower), BAND);
            }
        }
        let t = s_of(scored.threshold);
        for x in (0..WIDTH).step_by(2) {
            c.set(x, t, THRESHOLD);
        }
        let (mut prev, mut prev_s) = (None, None);
        for (i, r) in rows.iter().enumerate() {
            let x = col(i);
            if r.value.is_finite() {
                let y = y_of(r.value);
                c.vline(x, prev.unwrap_or(y), y, SERIES);
                prev = Some(y);
            } else {
                // Missing data: a break in the line.
                prev = None;
            }
            let s = s_of(scored.score.get(i).copied().unwrap_or(0.0));
            c.vline(x, prev_s.unwrap_or(s), s, SCORE);
            prev_s = Some(s);
        }
        for (i, s) in scored.anomaly_score.iter().enumerate() {
            if *s >= DETECTION_THRESHOLD {
                c.vline(col(i), 0, HEIGHT - 1, DETECTION);
            }
        }
    }
    for x in 0..WIDTH {
        c.set(x, TOP + GAP / 2, [120, 120, 120]);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = std::fs::File::create(path).map_err(io)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), WIDTH as u32, HEIGHT as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc
        .write_header()
        .map_err(|e| io(std::io::Error::other(e)))?;
    w.write_image_data(&c.0)
        .map_err(|e| io(std::io::Error::other(e)))?;
    w.finish().map_err(|e| io(std::io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixel(img: &[u8], x: usize, y: usize) -> [u8; 3] {
        let i = (y * WIDTH + x) * 3;
        [img[i], img[i + 1], img[i + 2]]
    }

    #[test]
    fn windows_detections_and_background_land_where_they_should() {
        let rows: Vec<Row> = (0..160)
            .map(|i| Row {
                timestamp: String::new(),
                t: i as f64,
                value: (i % 5) as f64,
            })
            .collect();
        let mut scored = Scored {
            anomaly_score: vec![0.0; 160],
            band: vec![(f64::NAN, f64::NAN); 160],
            score: vec![0.1; 160],
            threshold: 0.9,
            evidence: Vec::new(),
        };
        scored.anomaly_score[120] = 1.0;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b.png");
        write_png(&path, &rows, &scored, &[(40, 60)]).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut img = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut img).unwrap();
        assert_eq!((info.width, info.height), (WIDTH as u32, HEIGHT as u32));
        // Row 50 is in the window; above the series' range (the top margin) it is pink.
        assert_eq!(pixel(&img, 50 * WIDTH / 160, 2), WINDOW);
        assert_eq!(pixel(&img, 100 * WIDTH / 160, 2), WHITE);
        assert_eq!(pixel(&img, 120 * WIDTH / 160, 2), DETECTION);
        // An empty series is a blank image, not an error.
        write_png(&path, &[], &Scored::default(), &[]).unwrap();
    }
}
