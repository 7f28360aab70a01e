//! The Numenta Anomaly Benchmark's scoring, as `shared/data/nab-dev/README.md` states
//! it: probation, windows, the scaled sigmoid, three profiles, and the normalised score.

/// One NAB cost profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Name as NAB writes it.
    pub name: &'static str,
    /// Reward of a detection at the very start of a window.
    pub tp: f64,
    /// Cost of a missed window.
    pub fn_: f64,
    /// Cost of a false positive far from any window.
    pub fp: f64,
}

/// NAB's three profiles.
pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "standard",
        tp: 1.0,
        fn_: 1.0,
        fp: 0.11,
    },
    Profile {
        name: "reward_low_FP_rate",
        tp: 1.0,
        fn_: 1.0,
        fp: 0.22,
    },
    Profile {
        name: "reward_low_FN_rate",
        tp: 1.0,
        fn_: 2.0,
        fp: 0.11,
    },
];

/// Rows at the start of a file that are not scored.
pub fn probation(rows: usize) -> usize {
    ((0.15 * rows as f64).floor() as usize).min(750)
}

/// NAB's scaled sigmoid: `2 / (1 + e^(5y)) - 1`, and -1 from `y = 3` on.
pub fn sigmoid(y: f64) -> f64 {
    if y >= 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * y).exp()) - 1.0
    }
}

/// Whether a window (inclusive rows) is scored in a file of `rows` rows: NAB scores a
/// window only if one of its rows is past probation. One wholly inside probation is
/// neither found nor missed, and is not in the null baseline; it still counts in the
/// perfect score (see [`normalise`]).
pub fn scored_window(window: (usize, usize), rows: usize) -> bool {
    window.1 >= probation(rows)
}

/// One file's raw score under a profile; `windows` are inclusive row ranges, in order.
/// A window wholly inside probation costs nothing when missed (see [`scored_window`]).
pub fn score_file(detections: &[bool], windows: &[(usize, usize)], p: &Profile) -> f64 {
    let skip = probation(detections.len());
    let mut score = 0.0;
    let mut detected = vec![false; windows.len()];
    // The window a row is in, or the last one before it.
    let mut w = 0usize;
    for (i, &hit) in detections.iter().enumerate() {
        while w < windows.len() && windows[w].1 < i {
            w += 1;
        }
        if !hit || i < skip {
            continue;
        }
        match windows.get(w) {
            Some(&(l, r)) if l <= i => {
                // Only the earliest detection of a window counts.
                if !detected[w] {
                    detected[w] = true;
                    let width = (r - l + 1) as f64;
                    let y = -((r - i + 1) as f64) / width;
                    score += p.tp * sigmoid(y) / sigmoid(-1.0);
                }
            }
            _ => {
                // Outside every window: measured from the previous window's right edge.
                score += match w.checked_sub(1).map(|k| windows[k]) {
                    None => -p.fp,
                    Some((l, r)) => {
                        let width = (r - l + 1) as f64;
                        // A one-row window has no width to scale by; NAB's formula would divide by zero.
                        let y = (i - r) as f64 / (width - 1.0).max(1.0);
                        p.fp * sigmoid(y)
                    }
                };
            }
        }
    }
    let missed = detected
        .iter()
        .zip(windows)
        .filter(|(d, w)| !**d && scored_window(**w, detections.len()))
        .count();
    score - p.fn_ * missed as f64
}

/// Where one file's detections fell: for each window, the row of its first detection
/// (if any), and the scored detections outside every window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDetail {
    /// First detection per window, as an offset from the window's first row.
    pub first_hit: Vec<Option<usize>>,
    /// The rows of detections after probation that fall in no window.
    pub false_positives: Vec<usize>,
}

/// Where one file's detections fell (see [`FileDetail`]).
pub fn file_detail(detections: &[bool], windows: &[(usize, usize)]) -> FileDetail {
    let skip = probation(detections.len());
    let mut first_hit = vec![None; windows.len()];
    let mut false_positives = Vec::new();
    for (i, _) in detections
        .iter()
        .enumerate()
        .filter(|(i, d)| **d && *i >= skip)
    {
        match windows.iter().position(|&(l, r)| l <= i && i <= r) {
            Some(w) => {
                first_hit[w].get_or_insert(i - windows[w].0);
            }
            None => false_positives.push(i),
        }
    }
    FileDetail {
        first_hit,
        false_positives,
    }
}

/// NAB's normalised score over files scored together: `100 (S - S_null) / (S_perfect - S_null)`,
/// where the null detector misses the `scored` windows (those past probation, see
/// [`scored_window`]) and the perfect one finds `all` the labels' windows, as NAB's
/// `Runner.normalize` counts them; undefined (NaN) without windows, where never alarming
/// is already perfect.
pub fn normalise(raw: f64, scored: usize, all: usize, p: &Profile) -> f64 {
    let null = -p.fn_ * scored as f64;
    let perfect = p.tp * all as f64;
    if all == 0 {
        return f64::NAN;
    }
    100.0 * (raw - null) / (perfect - null)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STD: Profile = PROFILES[0];

    fn hits(n: usize, at: &[usize]) -> Vec<bool> {
        (0..n).map(|i| at.contains(&i)).collect()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-6, "{a} != {b}");
    }

    // Hand computations: sig(-1) = 2/(1+e^-5) - 1 = 0.98661430; sig(-1/3) = 2/(1+e^(-5/3)) - 1 = 0.68226179;
    // sig(1) = -0.98661430; sig(-2/3) / sig(-1) = 0.94374226.

    #[test]
    fn probation_is_15_percent_capped_at_750() {
        assert_eq!(probation(10), 1);
        assert_eq!(probation(4032), 604);
        assert_eq!(probation(22695), 750);
    }

    #[test]
    fn detection_at_the_left_edge_scores_one() {
        // 20 rows, probation 3, window rows 10..=12.
        close(score_file(&hits(20, &[10]), &[(10, 12)], &STD), 1.0);
        close(normalise(1.0, 1, 1, &STD), 100.0);
    }

    #[test]
    fn later_detections_score_less_and_only_the_first_counts() {
        // Right edge: y = -1/3 -> 0.68226179 / 0.98661430.
        close(score_file(&hits(20, &[12]), &[(10, 12)], &STD), 0.691518247);
        // Middle, then edge: the middle (y = -2/3) is the one that counts.
        close(
            score_file(&hits(20, &[11, 12]), &[(10, 12)], &STD),
            0.943742261,
        );
    }

    #[test]
    fn false_positives_cost_by_distance_from_the_previous_window() {
        // Before any window: -0.11. Missed window: -1.
        close(score_file(&hits(20, &[5]), &[(10, 12)], &STD), -0.11 - 1.0);
        // Two rows after a 3-row window: y = 2/2 = 1 -> 0.11 * -0.98661430; window found at 10.
        close(
            score_file(&hits(20, &[10, 14]), &[(10, 12)], &STD),
            1.0 - 0.108527573,
        );
        // Far away (y = 7/2 > 3): the full -0.11; each false-positive row counts.
        close(
            score_file(&hits(20, &[10, 19, 19]), &[(10, 12)], &STD),
            1.0 - 0.11,
        );
        close(
            score_file(&hits(30, &[10, 26, 27]), &[(10, 12)], &STD),
            1.0 - 0.22,
        );
    }

    #[test]
    fn probation_rows_are_ignored_and_profiles_weigh_differently() {
        // Row 1 is in probation (3 rows): not a false positive.
        close(score_file(&hits(20, &[1]), &[(10, 12)], &STD), -1.0);
        let fn_profile = PROFILES[2];
        close(score_file(&hits(20, &[1]), &[(10, 12)], &fn_profile), -2.0);
        let fp_profile = PROFILES[1];
        close(
            score_file(&hits(20, &[5]), &[(10, 12)], &fp_profile),
            -0.22 - 1.0,
        );
    }

    #[test]
    fn details_say_where_detections_fell() {
        // Probation 3 rows: row 2 is ignored; 5 and 19 are false positives; 11 then 12 in the window.
        let d = file_detail(&hits(20, &[2, 5, 11, 12, 19]), &[(10, 12), (15, 16)]);
        assert_eq!(d.first_hit, vec![Some(1), None]);
        assert_eq!(d.false_positives, vec![5, 19]);
    }

    #[test]
    fn normalised_over_files_together() {
        // Two files, two windows: one found at its left edge (1), one missed (-1): S = 0.
        // S_null = -2, S_perfect = 2 -> 100 * 2 / 4 = 50.
        let s = score_file(&hits(20, &[10]), &[(10, 12)], &STD)
            + score_file(&hits(20, &[]), &[(10, 12)], &STD);
        close(normalise(s, 2, 2, &STD), 50.0);
        // Never alarming scores 0; without windows the score is undefined.
        close(normalise(-2.0, 2, 2, &STD), 0.0);
        assert!(normalise(-0.22, 0, 0, &STD).is_nan());
    }

    #[test]
    fn a_window_inside_probation_is_in_the_perfect_score_only() {
        // 20 rows, probation 3: window 0..=2 lies wholly inside it, 10..=12 does not.
        // Found at its left edge, the second scores 1; the first is neither found nor
        // missed (not -1), and is not in the null baseline: S_null = -1 (one scored
        // window), S_perfect = 2 (both windows of the labels), so 100 * (1 + 1) / (2 + 1).
        let windows = [(0, 2), (10, 12)];
        assert!(!scored_window(windows[0], 20) && scored_window(windows[1], 20));
        let s = score_file(&hits(20, &[10]), &windows, &STD);
        close(s, 1.0);
        close(normalise(s, 1, 2, &STD), 200.0 / 3.0);
        // Low FN: the same raw score (no window missed), S_null = -2, S_perfect = 2.
        let s = score_file(&hits(20, &[10]), &windows, &PROFILES[2]);
        close(normalise(s, 1, 2, &PROFILES[2]), 75.0);
        // A window reaching past probation by one row is scored: missed, it costs 1.
        close(score_file(&hits(20, &[]), &[(0, 3)], &STD), -1.0);
        // A detection inside probation finds nothing and costs nothing.
        close(score_file(&hits(20, &[1]), &windows, &STD), -1.0);
    }

    #[test]
    fn the_sigmoid_is_minus_one_from_three_on() {
        // NAB: `if y >= 3.0: return -1.0`; the formula at 3 gives 2/(1+e^15) - 1 = -0.99999939.
        assert_eq!(sigmoid(3.0), -1.0);
        assert!(
            (sigmoid(2.999) + 0.99999939).abs() < 1e-7,
            "{}",
            sigmoid(2.999)
        );
        // Two rows after a 3-row window, a false positive at y = 6/2 = 3: exactly -0.11.
        let s = score_file(&hits(20, &[10, 18]), &[(10, 12)], &STD);
        assert_eq!(s, 1.0 - 0.11);
    }
}
