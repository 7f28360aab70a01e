//! Fitted baselines on disk, so a restart neither relearns from scratch nor forgets.
//!
//! One JSON file per signal, `<models_dir>/<signal>.json`:
//!
//! ```json
//! {"schema": 6, "signal": "http_error_ratio", "detection": "<hash of the detection settings>",
//!  "saved_at": 1795545402.3, "updated_to": 1795545400.0,
//!  "series": [{"labels": {"deployment": "cart"}, "model": {"engine": "robust", ...}}]}
//! ```
//!
//! A signal of more than [`PART_SERIES`] series keeps them in parts beside it,
//! `<signal>.part-<i>.json` (`{"saved_at": …, "series": […]}`), and its own file holds
//! `"parts": N` and no series: no file grows without bound with the series count.
//!
//! A file is written whole to a temporary name, fsynced and renamed (parts first, the
//! signal's file last), so a crash leaves the old file or the new one, never half of
//! one; parts that do not carry their signal file's `saved_at` make the whole set
//! unusable (refitted from history). A file of another schema or made with other
//! detection settings is not used: the models would not mean the same thing.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::DetectionConfig;
use crate::detect::Model;
use crate::labels::Labels;

/// The current file format (5: the ensemble's memories and counts are in time, not
/// points; 6: its daily profile keeps each bucket's spread, and its residuals' spreads
/// are kept evened out by them).
pub const SCHEMA: u32 = 6;

/// Series per file: a signal with more keeps them in parts of this many.
pub const PART_SERIES: usize = 10_000;

/// What can go wrong with a models file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a models file homeostat can use.
    #[error("{path}: {reason}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// One series' saved baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeriesModel {
    /// The series' labels.
    pub labels: Labels,
    /// Its fitted baseline.
    pub model: Model,
}

/// Every saved baseline of one signal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignalModels {
    /// File format version.
    pub schema: u32,
    /// The signal's name.
    pub signal: String,
    /// Hash of the detection settings the models were made with.
    pub detection: String,
    /// Unix seconds the file was written.
    pub saved_at: f64,
    /// Unix seconds of the newest point the models have seen.
    pub updated_to: f64,
    /// The series.
    pub series: Vec<SeriesModel>,
}

/// A short hash of the settings that shape a model (not those of the hysteresis).
pub fn detection_hash(d: &DetectionConfig) -> String {
    let mut shaping = serde_json::json!({
        "engine": d.engine, "window": d.window, "threshold": d.threshold, "direction": d.direction,
        "min_spread": d.min_spread, "min_relative_spread": d.min_relative_spread, "warmup": d.warmup,
    });
    // Only when set, so models saved before the setting existed still load.
    if let Some(per) = d.threshold_per {
        shaping["threshold_per"] = per.as_secs_f64().into();
    }
    // The robust engine has no repeats rule: the setting does not shape its models.
    if d.engine == crate::config::Engine::Ensemble && d.repeats != crate::config::Repeats::Routine {
        shaping["repeats"] = serde_json::json!(d.repeats);
    }
    let digest = <sha2::Sha256 as sha2::Digest>::digest(shaping.to_string().as_bytes());
    hex::encode(&digest[..8])
}

/// The file of one signal's models.
pub fn path(dir: &Path, signal: &str) -> PathBuf {
    dir.join(format!("{signal}.json"))
}

/// One part of a signal's series.
#[derive(Serialize, Deserialize)]
struct Part<S> {
    /// The `saved_at` of the signal file it belongs to.
    saved_at: f64,
    series: S,
}

/// Writes `bytes` to `file` atomically (temporary name, fsync, rename).
fn write_atomically(dir: &Path, file: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("models");
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, file).map_err(io(file))
}

/// The file of part `i` of a signal's models.
pub fn part_path(dir: &Path, signal: &str, i: usize) -> PathBuf {
    dir.join(format!("{signal}.part-{i}.json"))
}

/// Writes a signal's models atomically: in parts of [`PART_SERIES`] when there are more.
pub fn save(dir: &Path, models: &SignalModels) -> Result<PathBuf, ModelError> {
    save_in_parts(dir, models, PART_SERIES)
}

/// [`save`] with parts of `per_part` series.
fn save_in_parts(
    dir: &Path,
    models: &SignalModels,
    per_part: usize,
) -> Result<PathBuf, ModelError> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let file = path(dir, &models.signal);
    if models.series.len() <= per_part {
        let body = serde_json::to_vec(models).expect("models serialise");
        write_atomically(dir, &file, &body)?;
    } else {
        let parts = models.series.chunks(per_part);
        let n = parts.len();
        for (i, series) in parts.enumerate() {
            let part = Part {
                saved_at: models.saved_at,
                series,
            };
            let body = serde_json::to_vec(&part).expect("models serialise");
            write_atomically(dir, &part_path(dir, &models.signal, i), &body)?;
        }
        let mut head = serde_json::to_value(SignalModels {
            series: Vec::new(),
            ..models.clone_header()
        })
        .expect("models serialise");
        head["parts"] = n.into();
        write_atomically(dir, &file, &serde_json::to_vec(&head).expect("serialises"))?;
    }
    // Parts of an earlier, larger save are no longer named by the signal file.
    let first_unused = if models.series.len() <= per_part {
        0
    } else {
        models.series.len().div_ceil(per_part)
    };
    for i in first_unused.. {
        if std::fs::remove_file(part_path(dir, &models.signal, i)).is_err() {
            break;
        }
    }
    Ok(file)
}

impl SignalModels {
    /// Everything but the series.
    fn clone_header(&self) -> SignalModels {
        SignalModels {
            schema: self.schema,
            signal: self.signal.clone(),
            detection: self.detection.clone(),
            saved_at: self.saved_at,
            updated_to: self.updated_to,
            series: Vec::new(),
        }
    }
}

/// Writes several signals' models, each atomically; one failure does not stop the others.
pub fn save_all(dir: &Path, batch: &[SignalModels]) -> Vec<Result<PathBuf, ModelError>> {
    batch.iter().map(|m| save(dir, m)).collect()
}

/// Reads a signal's models if there is a usable file for these settings.
pub fn load(
    dir: &Path,
    signal: &str,
    detection: &DetectionConfig,
) -> Result<Option<SignalModels>, ModelError> {
    let file = path(dir, signal);
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ModelError::Io { path: file, source }),
    };
    let unusable = |reason: String| ModelError::Unusable {
        path: file.clone(),
        reason,
    };
    // Check the schema first, so an old format says so instead of failing to parse.
    let head: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| unusable(format!("not JSON: {e}")))?;
    if head["schema"] != SCHEMA {
        return Err(unusable(format!(
            "schema {} is not the supported {SCHEMA}",
            head["schema"]
        )));
    }
    let parts = head["parts"].as_u64().unwrap_or(0) as usize;
    let mut models: SignalModels =
        serde_json::from_value(head).map_err(|e| unusable(format!("not a models file: {e}")))?;
    for i in 0..parts {
        let file = part_path(dir, signal, i);
        let bytes = std::fs::read(&file).map_err(|source| ModelError::Io {
            path: file.clone(),
            source,
        })?;
        let part: Part<Vec<SeriesModel>> =
            serde_json::from_slice(&bytes).map_err(|e| ModelError::Unusable {
                path: file.clone(),
                reason: format!("not a models part: {e}"),
            })?;
        if part.saved_at.to_bits() != models.saved_at.to_bits() {
            return Err(ModelError::Unusable {
                path: file,
                reason: "a part of another save (interrupted): the set is not used".into(),
            });
        }
        models.series.extend(part.series);
    }
    if models.detection != detection_hash(detection) {
        return Err(unusable("made with other detection settings".into()));
    }
    for m in &models.series {
        m.model
            .check()
            .map_err(|r| unusable(format!("series {}: {r}", m.labels)))?;
    }
    Ok(Some(models))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Engine;
    use crate::detect::Detector;

    fn noisy(i: usize) -> f64 {
        ((i as f64 * 12.9898).sin() * 43758.5453).fract()
    }

    #[test]
    fn a_saved_model_goes_on_exactly_where_it_stopped() {
        for engine in [Engine::Robust, Engine::Ensemble] {
            let (threshold, open_after, close_after) = engine.defaults();
            let cfg = DetectionConfig {
                engine,
                threshold,
                open_after,
                close_after,
                ..DetectionConfig::default()
            };
            let mut live = Detector::new(&cfg);
            for i in 0..3000 {
                live.step(i as f64 * 60.0, 10.0 + noisy(i));
            }
            let dir = tempfile::tempdir().unwrap();
            let models = SignalModels {
                schema: SCHEMA,
                signal: "s".into(),
                detection: detection_hash(&cfg),
                saved_at: 0.0,
                updated_to: 2999.0 * 60.0,
                series: vec![SeriesModel {
                    labels: Labels::from_pairs([("pod", "a")]),
                    model: live.model().clone(),
                }],
            };
            save(dir.path(), &models).unwrap();
            let back = load(dir.path(), "s", &cfg).unwrap().unwrap();
            let mut restored = Detector::from_model(back.series[0].model.clone(), &cfg);
            for i in 3000..3500 {
                let (t, v) = (
                    i as f64 * 60.0,
                    10.0 + noisy(i) + if i == 3400 { 50.0 } else { 0.0 },
                );
                let (a, b) = (live.step(t, v), restored.step(t, v));
                assert_eq!(
                    format!("{a:?}"),
                    format!("{b:?}"),
                    "{engine:?} diverged at {i}"
                );
            }
        }
    }

    #[test]
    fn other_settings_or_schemas_are_refused() {
        let cfg = DetectionConfig::default();
        let dir = tempfile::tempdir().unwrap();
        let models = SignalModels {
            schema: SCHEMA,
            signal: "s".into(),
            detection: detection_hash(&cfg),
            saved_at: 0.0,
            updated_to: 0.0,
            series: vec![],
        };
        save(dir.path(), &models).unwrap();
        let other = DetectionConfig {
            window: 100,
            ..cfg.clone()
        };
        assert!(load(dir.path(), "s", &other)
            .unwrap_err()
            .to_string()
            .contains("other detection settings"));
        let hysteresis_only = DetectionConfig {
            open_after: 9,
            ..cfg.clone()
        };
        assert!(
            load(dir.path(), "s", &hysteresis_only).unwrap().is_some(),
            "hysteresis does not shape models"
        );
        let repeats_alarm = DetectionConfig {
            repeats: crate::config::Repeats::Alarm,
            ..cfg.clone()
        };
        assert!(
            load(dir.path(), "s", &repeats_alarm).is_err(),
            "its tails' verdicts and habits differ"
        );
        // The default's hash is the one models were saved under before `repeats` (or
        // `threshold_per`) existed: they still load after an upgrade.
        assert_eq!(detection_hash(&cfg), "4d317592c288b97c");
        std::fs::write(path(dir.path(), "s"), r#"{"schema": 99}"#).unwrap();
        assert!(load(dir.path(), "s", &cfg)
            .unwrap_err()
            .to_string()
            .contains("schema 99"));
        assert!(load(dir.path(), "missing", &cfg).unwrap().is_none());
    }

    /// A fitted ensemble's models file, as JSON, and its settings.
    fn fitted_file() -> (DetectionConfig, serde_json::Value) {
        let cfg = DetectionConfig::default();
        let mut det = Detector::new(&cfg);
        let history: Vec<(f64, f64)> = (0..1500)
            .map(|i| (i as f64 * 300.0, 10.0 + noisy(i)))
            .collect();
        det.fit(&history);
        let models = SignalModels {
            schema: SCHEMA,
            signal: "s".into(),
            detection: detection_hash(&cfg),
            saved_at: 0.0,
            updated_to: 0.0,
            series: vec![SeriesModel {
                labels: Labels::from_pairs([("pod", "a")]),
                model: det.model().clone(),
            }],
        };
        (cfg, serde_json::to_value(&models).unwrap())
    }

    #[test]
    fn a_model_whose_kmeans_ring_index_is_out_of_range_is_refused_not_run() {
        let (cfg, mut file) = fitted_file();
        let dir = tempfile::tempdir().unwrap();
        let ml = find_key(&mut file["series"][0]["model"], "ml").expect("the k-means is saved");
        ml["next"] = serde_json::json!(1_000_000);
        std::fs::write(path(dir.path(), "s"), file.to_string()).unwrap();
        let e = load(dir.path(), "s", &cfg).unwrap_err().to_string();
        assert!(e.contains("k-means ring"), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any number in a saved file replaced by any other: the file is refused, or the
        /// model it gives runs without a panic.
        #[test]
        fn a_tampered_models_file_is_refused_or_runs(
            picks in proptest::collection::vec((0usize..10_000, proptest::num::f64::ANY), 1..8)
        ) {
            let (cfg, mut file) = fitted_file();
            let mut numbers = Vec::new();
            collect_numbers(&file, &mut numbers);
            for (pick, value) in picks {
                let n = numbers.len();
                let slot = numbers[pick % n];
                set_number(&mut file, slot, value);
            }
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(path(dir.path(), "s"), file.to_string()).unwrap();
            if let Ok(Some(models)) = load(dir.path(), "s", &cfg) {
                let mut det = Detector::from_model(models.series[0].model.clone(), &cfg);
                for i in 0..300 {
                    det.step(450_000.0 + i as f64 * 300.0, 10.0 + noisy(i));
                }
            }
        }
    }

    /// The first value under `key`, depth first.
    fn find_key<'a>(v: &'a mut serde_json::Value, key: &str) -> Option<&'a mut serde_json::Value> {
        match v {
            serde_json::Value::Object(m) => {
                if m.contains_key(key) {
                    return m.get_mut(key);
                }
                m.values_mut().find_map(|x| find_key(x, key))
            }
            serde_json::Value::Array(a) => a.iter_mut().find_map(|x| find_key(x, key)),
            _ => None,
        }
    }

    /// Paths (as indices in a depth-first walk) of every number in a JSON value.
    fn collect_numbers(v: &serde_json::Value, out: &mut Vec<usize>) {
        fn walk(v: &serde_json::Value, i: &mut usize, out: &mut Vec<usize>) {
            match v {
                serde_json::Value::Number(_) => out.push(*i),
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, i, out)),
                serde_json::Value::Object(m) => m.values().for_each(|x| walk(x, i, out)),
                _ => {}
            }
            *i += 1;
        }
        walk(v, &mut 0, out);
    }

    /// Sets the number at depth-first index `slot` (as [`collect_numbers`] counts).
    fn set_number(v: &mut serde_json::Value, slot: usize, value: f64) {
        fn walk(v: &mut serde_json::Value, i: &mut usize, slot: usize, value: f64) {
            match v {
                serde_json::Value::Number(_) if *i == slot => {
                    // Non-finite numbers have no JSON form: they become a huge one.
                    let x = if value.is_finite() { value } else { f64::MAX };
                    *v = if x.fract() == 0.0 && x.abs() < 1e15 {
                        serde_json::json!(x as i64)
                    } else {
                        serde_json::json!(x)
                    };
                }
                serde_json::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, i, slot, value)),
                serde_json::Value::Object(m) => {
                    m.values_mut().for_each(|x| walk(x, i, slot, value))
                }
                _ => {}
            }
            *i += 1;
        }
        walk(v, &mut 0, slot, value);
    }

    #[test]
    fn many_series_are_saved_in_parts_that_load_back_only_together() {
        let cfg = DetectionConfig::default();
        let dir = tempfile::tempdir().unwrap();
        let models = |saved_at: f64| SignalModels {
            schema: SCHEMA,
            signal: "s".into(),
            detection: detection_hash(&cfg),
            saved_at,
            updated_to: 0.0,
            series: (0..7)
                .map(|i| SeriesModel {
                    labels: Labels::from_pairs([("pod", format!("p{i}"))]),
                    model: Detector::new(&cfg).model().clone(),
                })
                .collect(),
        };
        save_in_parts(dir.path(), &models(1.0), 3).unwrap();
        let head: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path(dir.path(), "s")).unwrap()).unwrap();
        assert_eq!(head["parts"], 3);
        assert_eq!(head["series"], serde_json::json!([]));
        let back = load(dir.path(), "s", &cfg).unwrap().unwrap();
        let pods: Vec<String> = back.series.iter().map(|m| m.labels.to_string()).collect();
        assert_eq!(pods.len(), 7);
        assert_eq!(pods[6], r#"{pod="p6"}"#);

        // A save interrupted after its first part: that part is of another save.
        let newer = serde_json::to_vec(&Part {
            saved_at: 2.0,
            series: &models(2.0).series[..3],
        })
        .unwrap();
        std::fs::write(part_path(dir.path(), "s", 0), newer).unwrap();
        let e = load(dir.path(), "s", &cfg).unwrap_err().to_string();
        assert!(e.contains("another save"), "{e}");
    }
}
