//! Cross-validation: each group of files (a data set's category: NAB's seven, ops-dev's
//! four sources) is left out in turn, and a choice among candidate settings is made on
//! the other groups alone, then scored on the one left out (nested: no figure quoted is
//! one the choice was tuned on). With one candidate nothing is chosen, and it is the
//! score of every group on its own, their mean and the worst.

use std::fmt;

use serde::Serialize;

use super::report::show;
use super::{nab, GroupScore};

/// One left-out group under the candidates chosen without it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fold {
    /// The group.
    pub name: String,
    /// Labelled files in it.
    pub files: usize,
    /// Label windows in it (none: it counts false alarms only).
    pub windows: usize,
    /// Per profile, the candidate chosen on the other groups.
    pub chosen: [usize; 3],
    /// Per profile, that candidate's normalised score here (NaN without windows).
    pub scores: [f64; 3],
    /// The standard profile's choice's figures here (its false alarms).
    pub standard: GroupScore,
}

/// Every fold, and what they say together.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossValidation {
    /// The candidates' names, in the order given.
    pub candidates: Vec<String>,
    /// One per group, in name order.
    pub folds: Vec<Fold>,
    /// Per profile, the mean score over the folds with windows.
    pub mean: [f64; 3],
    /// Per profile, the lowest score of a fold with windows.
    pub worst: [f64; 3],
    /// Per profile, the fold that scored lowest.
    pub worst_fold: [String; 3],
}

/// Leaves each group out in turn. `tables[c]` is candidate `c`'s score table
/// ([`super::score_table`], the `total` line ignored); every table lists the same groups.
/// For each left-out group and profile, the candidate with the best mean score over the
/// other groups with windows is chosen (the first of equals); a group without windows
/// is scored by the standard profile's choice (its false alarms). NaN figures when no
/// group has windows.
pub fn cross_validate(candidates: Vec<String>, tables: &[Vec<GroupScore>]) -> CrossValidation {
    let groups: Vec<&GroupScore> = tables
        .first()
        .map(|t| t.iter().filter(|g| g.name != "total").collect())
        .unwrap_or_default();
    let scored = |g: &GroupScore| g.windows > 0;
    let mut folds = Vec::with_capacity(groups.len());
    for (f, group) in groups.iter().enumerate() {
        let mut chosen = [0usize; 3];
        let mut scores = [f64::NAN; 3];
        for k in 0..nab::PROFILES.len() {
            let mean_without = |c: usize| {
                let others: Vec<f64> = tables[c]
                    .iter()
                    .enumerate()
                    .filter(|&(g, row)| g != f && row.name != "total" && scored(row))
                    .map(|(_, row)| row.scores[k])
                    .collect();
                others.iter().sum::<f64>() / others.len().max(1) as f64
            };
            let mut best = (0, f64::NEG_INFINITY);
            for c in 0..tables.len() {
                let m = mean_without(c);
                if m > best.1 {
                    best = (c, m);
                }
            }
            chosen[k] = best.0;
            scores[k] = tables[best.0][f].scores[k];
        }
        folds.push(Fold {
            name: group.name.clone(),
            files: group.files,
            windows: group.windows,
            chosen,
            scores,
            standard: tables[chosen[0]][f].clone(),
        });
    }
    let mut mean = [f64::NAN; 3];
    let mut worst = [f64::NAN; 3];
    let mut worst_fold: [String; 3] = Default::default();
    for k in 0..nab::PROFILES.len() {
        let with: Vec<&Fold> = folds.iter().filter(|f| f.windows > 0).collect();
        if with.is_empty() {
            continue;
        }
        mean[k] = with.iter().map(|f| f.scores[k]).sum::<f64>() / with.len() as f64;
        let low = with
            .iter()
            .min_by(|a, b| a.scores[k].total_cmp(&b.scores[k]))
            .expect("not empty");
        worst[k] = low.scores[k];
        worst_fold[k] = low.name.clone();
    }
    CrossValidation {
        candidates,
        folds,
        mean,
        worst,
        worst_fold,
    }
}

impl CrossValidation {
    /// The standard profile's choices' false alarms over every fold: (false alarms, per
    /// 1,000 scored rows, per series-day).
    pub fn false_alarms(&self) -> (usize, f64, f64) {
        let n: usize = self.folds.iter().map(|f| f.standard.false_alarms).sum();
        let rows: usize = self.folds.iter().map(|f| f.standard.scored_rows).sum();
        let days: f64 = self.folds.iter().map(|f| f.standard.scored_days).sum();
        let per = |of: f64| if of > 0.0 { n as f64 / of } else { f64::NAN };
        (n, per(rows as f64 / 1000.0), per(days))
    }

    /// The machine-readable summary: the last line of `backtest --folds`.
    pub fn summary(&self) -> CvSummary {
        let nan_null = |v: f64| (!v.is_nan()).then_some(v);
        let by_profile = |v: &[f64; 3]| Profiles {
            standard: nan_null(v[0]),
            reward_low_fp_rate: nan_null(v[1]),
            reward_low_fn_rate: nan_null(v[2]),
        };
        let (false_alarms, per_1000, per_day) = self.false_alarms();
        CvSummary {
            false_alarms,
            false_alarms_per_1000_points: nan_null(per_1000),
            false_alarms_per_series_day: nan_null(per_day),
            folds: self.folds.len(),
            mean: by_profile(&self.mean),
            worst: by_profile(&self.worst),
        }
    }
}

/// A figure per NAB profile (`null` where NaN).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Profiles {
    /// Profile `reward_low_FN_rate`.
    #[serde(rename = "reward_low_FN_rate")]
    pub reward_low_fn_rate: Option<f64>,
    /// Profile `reward_low_FP_rate`.
    #[serde(rename = "reward_low_FP_rate")]
    pub reward_low_fp_rate: Option<f64>,
    /// Profile `standard`.
    pub standard: Option<f64>,
}

/// The JSON line of `backtest --folds`, keys in alphabetical order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CvSummary {
    /// The standard profile's choices' false alarms over every fold.
    pub false_alarms: usize,
    /// Those per 1,000 rows after probation.
    pub false_alarms_per_1000_points: Option<f64>,
    /// Those per series-day after probation.
    pub false_alarms_per_series_day: Option<f64>,
    /// Folds (groups) in all.
    pub folds: usize,
    /// Mean left-out score over the folds with windows.
    pub mean: Profiles,
    /// Lowest left-out score of a fold with windows.
    pub worst: Profiles,
}

impl fmt::Display for CvSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Numbers only: serialising cannot fail.
        f.write_str(&serde_json::to_string(self).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Display for CrossValidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let several = self.candidates.len() > 1;
        if several {
            writeln!(f, "candidates (chosen on the other folds, per profile):")?;
            for (i, c) in self.candidates.iter().enumerate() {
                writeln!(f, "  {}: {c}", i + 1)?;
            }
        }
        writeln!(
            f,
            "{:<32} {:>5} {:>7} {:>9} {:>19} {:>19} {:>12} {:>10} {:>8}{}",
            "left-out fold",
            "files",
            "windows",
            nab::PROFILES[0].name,
            nab::PROFILES[1].name,
            nab::PROFILES[2].name,
            "false alarms",
            "per 1k pts",
            "per day",
            if several { "  chosen" } else { "" }
        )?;
        for fold in &self.folds {
            let chosen = if several {
                let c = fold.chosen.map(|c| (c + 1).to_string());
                format!("  {}", c.join(","))
            } else {
                String::new()
            };
            writeln!(
                f,
                "{:<32} {:>5} {:>7} {:>9} {:>19} {:>19} {:>12} {:>10} {:>8}{chosen}",
                fold.name,
                fold.files,
                fold.windows,
                show(fold.scores[0], 2),
                show(fold.scores[1], 2),
                show(fold.scores[2], 2),
                fold.standard.false_alarms,
                show(fold.standard.false_alarms_per_1000(), 3),
                show(fold.standard.false_alarms_per_day(), 3),
            )?;
        }
        let with = self.folds.iter().filter(|f| f.windows > 0).count();
        let (n, per_1000, per_day) = self.false_alarms();
        writeln!(
            f,
            "{:<32} {:>5} {:>7} {:>9} {:>19} {:>19} {:>12} {:>10} {:>8}",
            format!("mean of {with} folds with windows"),
            "",
            "",
            show(self.mean[0], 2),
            show(self.mean[1], 2),
            show(self.mean[2], 2),
            n,
            show(per_1000, 3),
            show(per_day, 3),
        )?;
        writeln!(
            f,
            "{:<32} {:>5} {:>7} {:>9} {:>19} {:>19}",
            "worst fold",
            "",
            "",
            show(self.worst[0], 2),
            show(self.worst[1], 2),
            show(self.worst[2], 2),
        )?;
        writeln!(
            f,
            "  (worst: {})",
            self.worst_fold
                .iter()
                .zip(nab::PROFILES)
                .map(|(w, p)| format!("{} {w}", p.name))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, windows: usize, scores: [f64; 3], false_alarms: usize) -> GroupScore {
        GroupScore {
            name: name.into(),
            files: 1,
            windows,
            detections: 0,
            scores,
            false_alarms,
            scored_rows: 1000,
            scored_days: 2.0,
        }
    }

    #[test]
    fn each_fold_is_scored_by_the_candidate_best_on_the_others() {
        // Candidate 1 is better on a and b, candidate 2 on c alone (by a lot). Left out,
        // a and b are each judged by the best on the other two: for a, the means are
        // (b, c) = (60 + 10) / 2 = 35 against (50 + 90) / 2 = 70, so 2 is chosen and a
        // scores 40, not its own best 80. For c: 1's (80 + 60) / 2 = 70 beats 2's
        // (40 + 50) / 2 = 45, so c scores 10. For b: 1's 45 against 2's 65: b scores 50.
        // The group without windows is judged by the choice on all others: 1's
        // (80 + 60 + 10) / 3 = 50 vs 2's 60, so 2's false alarms.
        let one = vec![
            group("a", 2, [80.0, 70.0, 85.0], 1),
            group("b", 2, [60.0, 55.0, 65.0], 2),
            group("c", 2, [10.0, 5.0, 15.0], 3),
            group("none", 0, [f64::NAN; 3], 4),
            group("total", 6, [0.0; 3], 10),
        ];
        let two = vec![
            group("a", 2, [40.0, 30.0, 45.0], 5),
            group("b", 2, [50.0, 45.0, 55.0], 6),
            group("c", 2, [90.0, 85.0, 95.0], 7),
            group("none", 0, [f64::NAN; 3], 8),
            group("total", 6, [0.0; 3], 26),
        ];
        let cv = cross_validate(vec!["one".into(), "two".into()], &[one, two]);
        let names: Vec<&str> = cv.folds.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "none"]);
        assert_eq!(cv.folds[0].chosen, [1, 1, 1]);
        assert_eq!(cv.folds[0].scores[0], 40.0);
        assert_eq!(cv.folds[1].scores[0], 50.0);
        assert_eq!(cv.folds[2].chosen[0], 0);
        assert_eq!(cv.folds[2].scores[0], 10.0);
        assert_eq!(cv.folds[3].chosen[0], 1);
        assert_eq!(cv.folds[3].standard.false_alarms, 8);
        // Mean of the folds with windows: (40 + 50 + 10) / 3; worst: c.
        assert!((cv.mean[0] - 100.0 / 3.0).abs() < 1e-12, "{:?}", cv.mean);
        assert_eq!((cv.worst[0], cv.worst_fold[0].as_str()), (10.0, "c"));
        // False alarms of the standard choices: 5 + 6 + 3 + 8 over 4,000 rows and 8 days.
        // Low FN, chosen the same way: a 45 (2), b 55 (2), c 15 (1): mean 115 / 3.
        // Low FP: a 30 (2), b 45 (2), c 5 (1): mean 80 / 3.
        assert_eq!(cv.false_alarms(), (22, 5.5, 2.75));
        assert_eq!(
            cv.summary().to_string(),
            r#"{"false_alarms":22,"false_alarms_per_1000_points":5.5,"false_alarms_per_series_day":2.75,"folds":4,"mean":{"reward_low_FN_rate":38.333333333333336,"reward_low_FP_rate":26.666666666666668,"standard":33.333333333333336},"worst":{"reward_low_FN_rate":15.0,"reward_low_FP_rate":5.0,"standard":10.0}}"#
        );
    }

    #[test]
    fn one_candidate_is_every_group_on_its_own() {
        let t = vec![
            group("a", 2, [80.0, 70.0, 85.0], 1),
            group("b", 1, [20.0, 10.0, 30.0], 2),
            group("total", 3, [0.0; 3], 3),
        ];
        let cv = cross_validate(vec!["default".into()], &[t]);
        assert_eq!(cv.mean, [50.0, 40.0, 57.5]);
        assert_eq!(cv.worst, [20.0, 10.0, 30.0]);
        assert!(cv.to_string().contains("mean of 2 folds with windows"));
    }
}
