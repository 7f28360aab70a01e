//! Guardrails: what stops homeostat from making things worse. The executor asks before
//! every incident and every action; each refusal names the rule that refused it, and
//! is audited. Counting and deciding happen under one lock, so that caps hold exactly
//! however many incidents run at once.
//!
//! Rules checked here (pure, in memory): the kill switch (a pause file), the circuit
//! breaker per playbook, rate limits (global, per playbook, per target) over a sliding
//! window, and concurrent incidents (global and per playbook). Rules that read live
//! state (blast radius, alert interlock, silences) are the executor's, since they need
//! the clients.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::labels::Matcher;
use crate::playbook::{Action, Playbook};

/// `[guardrails]`: the global limits (each playbook may set stricter ones).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// The sliding window rate limits count over.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub window: Duration,
    /// Actions over all playbooks per window.
    pub max_actions: u32,
    /// Actions on one target (its kind and target labels) per window.
    pub max_actions_per_target: u32,
    /// Incidents in remediation at once over all playbooks.
    pub max_incidents: u32,
    /// Consecutive failed or unverified incidents after which a playbook is disabled
    /// until an SRE resets it.
    pub breaker_after: u32,
    /// Fraction of nodes, servers or compute services that must stay healthy after a
    /// drain, cordon, stop, disable or force-down (medik8s' minHealthy).
    pub min_healthy: f64,
    /// A file whose presence pauses every action (the kill switch).
    pub pause_file: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            window: Duration::from_secs(3600),
            max_actions: 30,
            max_actions_per_target: 3,
            max_incidents: 10,
            breaker_after: 3,
            min_healthy: 0.7,
            pause_file: PathBuf::from("homeostat.pause"),
        }
    }
}

/// A playbook's own limits (`PLAYBOOK.limits`), each stricter than or instead of the global.
#[derive(Debug, Clone, Default)]
pub struct PlaybookLimits {
    /// Actions of this playbook per window.
    pub max_actions: Option<u32>,
    /// Its own window (the global one otherwise).
    pub window: Option<Duration>,
    /// Its incidents in remediation at once.
    pub max_incidents: Option<u32>,
    /// Alertmanager alerts that block it while firing: each entry's matchers must all
    /// match one alert's labels (kured's pattern).
    pub interlock: Vec<Vec<(String, Matcher)>>,
    /// Its own healthy floor.
    pub min_healthy: Option<f64>,
    /// How long its plans wait for approval before they expire.
    pub approval_ttl: Option<Duration>,
}

/// Why a guardrail said no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The rule: `paused`, `breaker`, `max_actions`, `max_actions_per_playbook`,
    /// `max_actions_per_target`, `max_incidents`, `max_incidents_per_playbook`,
    /// `blast_radius`, `interlock`, `silence`, `opt_out`.
    pub rule: &'static str,
    /// What it saw, for the audit log and the operator.
    pub message: String,
}

impl Refusal {
    /// A refusal by `rule`.
    pub fn new(rule: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            rule,
            message: message.into(),
        }
    }
}

#[derive(Default)]
struct State {
    global: VecDeque<Instant>,
    per_playbook: HashMap<String, VecDeque<Instant>>,
    per_target: HashMap<String, VecDeque<Instant>>,
    incidents: u32,
    per_playbook_incidents: HashMap<String, u32>,
    failures: HashMap<String, u32>,
    tripped: BTreeSet<String>,
}

/// The guardrails' state, shared by every incident.
pub struct Guard {
    settings: Settings,
    state: Mutex<State>,
}

/// An incident's place in the concurrency limits; dropping it frees the place.
pub struct Slot {
    guard: Arc<Guard>,
    playbook: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.guard.lock();
        s.incidents = s.incidents.saturating_sub(1);
        if let Some(n) = s.per_playbook_incidents.get_mut(&self.playbook) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Drops timestamps older than the window, then says how many are left.
fn within(q: &mut VecDeque<Instant>, window: Duration, now: Instant) -> u32 {
    while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
        q.pop_front();
    }
    q.len() as u32
}

/// What identifies an action's target for the per-target limit.
pub fn target_key(action: &Action) -> String {
    let layer = action.kind.split('.').next().unwrap_or("");
    let labels: Vec<String> = action
        .target
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("{layer}:{}", labels.join(","))
}

impl Guard {
    /// Guardrails with these settings and breakers already tripped (from the audit log).
    pub fn new(settings: Settings, tripped: BTreeSet<String>) -> Arc<Guard> {
        Arc::new(Guard {
            settings,
            state: Mutex::new(State {
                tripped,
                ..State::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The kill switch: `Some(reason)` while the pause file exists.
    pub fn paused(&self) -> Option<String> {
        match std::fs::read_to_string(&self.settings.pause_file) {
            Ok(text) => Some(pause_reason(&text)),
            // A file that exists but cannot be read still pauses: fail safe.
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Some(format!("pause file unreadable: {e}"))
            }
            Err(_) => None,
        }
    }

    /// Takes a place for an incident of `playbook`, or says which limit is full.
    pub fn begin_incident(self: &Arc<Self>, playbook: &Playbook) -> Result<Slot, Refusal> {
        let mut s = self.lock();
        if s.tripped.contains(&playbook.name) {
            return Err(Refusal::new(
                "breaker",
                format!(
                    "playbook {} is disabled by its circuit breaker until an SRE resets it",
                    playbook.name
                ),
            ));
        }
        if s.incidents >= self.settings.max_incidents {
            return Err(Refusal::new(
                "max_incidents",
                format!(
                    "{} incidents in remediation (at most {})",
                    s.incidents, self.settings.max_incidents
                ),
            ));
        }
        let mine = s
            .per_playbook_incidents
            .get(&playbook.name)
            .copied()
            .unwrap_or(0);
        if let Some(max) = playbook.limits.max_incidents {
            if mine >= max {
                return Err(Refusal::new(
                    "max_incidents_per_playbook",
                    format!(
                        "{mine} incidents of {} in remediation (at most {max})",
                        playbook.name
                    ),
                ));
            }
        }
        s.incidents += 1;
        *s.per_playbook_incidents
            .entry(playbook.name.clone())
            .or_default() += 1;
        Ok(Slot {
            guard: self.clone(),
            playbook: playbook.name.clone(),
        })
    }

    /// Admits one action (counting it) or refuses it: breaker, then the rate limits.
    pub fn admit(&self, playbook: &Playbook, action: &Action, now: Instant) -> Result<(), Refusal> {
        let mut s = self.lock();
        if s.tripped.contains(&playbook.name) {
            return Err(Refusal::new(
                "breaker",
                format!(
                    "playbook {} is disabled by its circuit breaker",
                    playbook.name
                ),
            ));
        }
        let window = self.settings.window;
        let global = within(&mut s.global, window, now);
        if global >= self.settings.max_actions {
            return Err(Refusal::new(
                "max_actions",
                format!(
                    "{global} actions in the last {} (at most {})",
                    humantime::format_duration(window),
                    self.settings.max_actions
                ),
            ));
        }
        let pb_window = playbook.limits.window.unwrap_or(window);
        let pb = s.per_playbook.entry(playbook.name.clone()).or_default();
        let mine = within(pb, pb_window, now);
        if let Some(max) = playbook.limits.max_actions {
            if mine >= max {
                return Err(Refusal::new(
                    "max_actions_per_playbook",
                    format!(
                        "{mine} actions of {} in the last {} (at most {max})",
                        playbook.name,
                        humantime::format_duration(pb_window)
                    ),
                ));
            }
        }
        let key = target_key(action);
        let t = s.per_target.entry(key.clone()).or_default();
        let on_target = within(t, window, now);
        if on_target >= self.settings.max_actions_per_target {
            return Err(Refusal::new(
                "max_actions_per_target",
                format!(
                    "{on_target} actions on {key} in the last {} (at most {})",
                    humantime::format_duration(window),
                    self.settings.max_actions_per_target
                ),
            ));
        }
        s.global.push_back(now);
        s.per_playbook
            .entry(playbook.name.clone())
            .or_default()
            .push_back(now);
        s.per_target.entry(key).or_default().push_back(now);
        // Keys of targets not acted on for a window are forgotten, so the map stays small.
        if s.per_target.len() > 10_000 {
            s.per_target.retain(|_, q| within(q, window, now) > 0);
        }
        Ok(())
    }

    /// Notes how an incident of `playbook` ended; `Some(n)` when this trips its breaker
    /// (`n` consecutive failures).
    pub fn incident_ended(&self, playbook: &str, failed: bool) -> Option<u32> {
        let mut s = self.lock();
        if !failed {
            s.failures.remove(playbook);
            return None;
        }
        let n = {
            let n = s.failures.entry(playbook.to_string()).or_default();
            *n += 1;
            *n
        };
        if n >= self.settings.breaker_after && s.tripped.insert(playbook.to_string()) {
            Some(n)
        } else {
            None
        }
    }

    /// Opens a playbook's breaker as a previous run left it (from the audit log).
    pub fn restore_tripped(&self, playbook: &str) {
        self.lock().tripped.insert(playbook.to_string());
    }

    /// Closes a playbook's breaker again; false if it was not open.
    pub fn reset_breaker(&self, playbook: &str) -> bool {
        let mut s = self.lock();
        s.failures.remove(playbook);
        s.tripped.remove(playbook)
    }

    /// Playbooks whose breaker is open.
    pub fn tripped(&self) -> BTreeSet<String> {
        self.lock().tripped.clone()
    }

    /// The healthy floor for a playbook: its own, or the global one.
    pub fn min_healthy(&self, playbook: &Playbook) -> f64 {
        playbook
            .limits
            .min_healthy
            .unwrap_or(self.settings.min_healthy)
    }
}

/// The reason written in a pause file (`{"reason": ...}` by the CLI, or any text).
fn pause_reason(text: &str) -> String {
    match serde_json::from_str::<BTreeMap<String, serde_json::Value>>(text) {
        Ok(m) => m
            .get("reason")
            .and_then(|r| r.as_str())
            .unwrap_or("paused")
            .to_string(),
        Err(_) if text.trim().is_empty() => "paused".into(),
        Err(_) => text.trim().chars().take(200).collect(),
    }
}

/// Whether the healthy count left after taking one member out stays at the floor:
/// `healthy` of `total` are healthy now, `target_healthy` says whether the target is
/// one of them.
pub fn floor_holds(
    total: usize,
    healthy: usize,
    target_healthy: bool,
    min_healthy: f64,
) -> Result<(), String> {
    let after = healthy - usize::from(target_healthy && healthy > 0);
    let floor = (min_healthy * total as f64).ceil() as usize;
    if after >= floor {
        Ok(())
    } else {
        Err(format!(
            "{after} of {total} would stay healthy, below the floor of {floor} ({:.0} %)",
            min_healthy * 100.0
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn playbook(src_limits: &str) -> Playbook {
        Playbook::from_source(
            &format!(
                r#"const PLAYBOOK = #{{ name: "drain", trigger: #{{ signal: "s" }},
                    allowed: #{{ kinds: ["k8s.drain"] }} {src_limits} }};
                   fn plan(a) {{ [] }}"#
            ),
            std::path::Path::new("drain.rhai"),
            &crate::playbook::Limits::default(),
        )
        .unwrap()
    }

    fn drain(node: &str) -> Action {
        serde_json::from_value(serde_json::json!({"kind": "k8s.drain", "target": {"node": node}}))
            .unwrap()
    }

    #[test]
    fn rate_limits_count_exactly_over_a_sliding_window() {
        let g = Guard::new(
            Settings {
                max_actions: 5,
                max_actions_per_target: 2,
                ..Settings::default()
            },
            BTreeSet::new(),
        );
        let pb = playbook(", limits: #{ max_actions: 3 }");
        let t0 = Instant::now();
        assert_eq!(g.admit(&pb, &drain("a"), t0), Ok(()));
        assert_eq!(g.admit(&pb, &drain("a"), t0), Ok(()));
        assert_eq!(
            g.admit(&pb, &drain("a"), t0).unwrap_err().rule,
            "max_actions_per_target"
        );
        assert_eq!(g.admit(&pb, &drain("b"), t0), Ok(()));
        assert_eq!(
            g.admit(&pb, &drain("c"), t0).unwrap_err().rule,
            "max_actions_per_playbook"
        );
        let other = playbook(", limits: #{}").renamed("other");
        assert_eq!(g.admit(&other, &drain("d"), t0), Ok(()));
        assert_eq!(g.admit(&other, &drain("e"), t0), Ok(()));
        assert_eq!(
            g.admit(&other, &drain("f"), t0).unwrap_err().rule,
            "max_actions"
        );
        // An hour later the window has slid past all of them.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(g.admit(&pb, &drain("a"), later), Ok(()));
    }

    #[test]
    fn incidents_are_capped_while_they_run_and_the_breaker_trips_after_k_failures() {
        let g = Guard::new(
            Settings {
                max_incidents: 2,
                breaker_after: 2,
                ..Settings::default()
            },
            BTreeSet::new(),
        );
        let pb = playbook(", limits: #{ max_incidents: 1 }");
        let one = g.begin_incident(&pb).unwrap();
        assert_eq!(
            g.begin_incident(&pb).err().unwrap().rule,
            "max_incidents_per_playbook"
        );
        let other = playbook("").renamed("other");
        let two = g.begin_incident(&other).unwrap();
        assert_eq!(
            g.begin_incident(&other).err().unwrap().rule,
            "max_incidents"
        );
        drop(one);
        drop(two);
        let _again = g.begin_incident(&pb).unwrap();

        assert_eq!(g.incident_ended("drain", true), None);
        assert_eq!(
            g.incident_ended("drain", false),
            None,
            "a success resets the count"
        );
        assert_eq!(g.incident_ended("drain", true), None);
        assert_eq!(g.incident_ended("drain", true), Some(2));
        assert_eq!(
            g.admit(&pb, &drain("a"), Instant::now()).unwrap_err().rule,
            "breaker"
        );
        assert!(g.reset_breaker("drain"));
        assert_eq!(g.admit(&pb, &drain("a"), Instant::now()), Ok(()));
    }

    #[test]
    fn the_pause_file_pauses_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let g = Guard::new(
            Settings {
                pause_file: dir.path().join("pause"),
                ..Settings::default()
            },
            BTreeSet::new(),
        );
        assert_eq!(g.paused(), None);
        std::fs::write(dir.path().join("pause"), r#"{"reason": "change freeze"}"#).unwrap();
        assert_eq!(g.paused().as_deref(), Some("change freeze"));
        std::fs::write(dir.path().join("pause"), "").unwrap();
        assert_eq!(g.paused().as_deref(), Some("paused"));
    }

    #[test]
    fn the_healthy_floor() {
        // 10 nodes, 70 %: 7 must stay.
        assert!(floor_holds(10, 8, true, 0.7).is_ok());
        assert!(floor_holds(10, 7, true, 0.7).is_err());
        assert!(
            floor_holds(10, 7, false, 0.7).is_ok(),
            "an unhealthy target takes nothing away"
        );
        assert!(
            floor_holds(1, 1, true, 0.7).is_err(),
            "the last node is never drained"
        );
    }
}
