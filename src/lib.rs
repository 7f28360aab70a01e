//! homeostat: watch Prometheus signals, baseline every series, flag anomalies, plan
//! remediations with Rhai playbooks, and audit every step in a hash-chained log.
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | typed config, named defaults, validation that lists every problem |
//! | [`source`] | Prometheus API client: instant queries live, range queries for history |
//! | [`detect`] | pure, synchronous baselines and the hysteresis that opens/closes anomalies |
//! | [`anomaly`] | the anomaly event handed to playbooks and the audit log |
//! | [`playbook`] | the Rhai sandbox, triggers, and the plan a script returns |
//! | [`act`] | the executor: the only door to the outside world, audited first |
//! | [`audit`] | the append-only, hash-chained record of every step |
//! | [`server`] | `/metrics`, `/healthz`, `/readyz` |
//! | [`agent`] | the daemon loop tying them together |
//! | [`labels`] | label sets and PromQL-style matchers |
//! | [`cli`] | command-line definitions |
#![forbid(unsafe_code)]

pub mod act;
pub mod agent;
pub mod anomaly;
pub mod audit;
pub mod cli;
pub mod config;
pub mod detect;
pub mod labels;
pub mod playbook;
pub mod server;
pub mod source;

use config::Config;
use playbook::{Limits, Playbook};

/// Loads every playbook a config names; returns the loaded ones and every problem
/// (with the playbook's index and path), including triggers naming unknown signals.
pub fn load_playbooks(config: &Config, limits: &Limits) -> (Vec<Playbook>, Vec<String>) {
    let mut loaded: Vec<Playbook> = Vec::new();
    let mut problems = Vec::new();
    for (i, path) in config.playbooks.iter().enumerate() {
        let prefix = format!("playbooks[{i}]");
        match Playbook::load(path, limits) {
            Ok(p) => {
                if !config.signals.iter().any(|s| s.name == p.trigger.signal) {
                    problems.push(format!(
                        "{prefix}: {}: trigger.signal {:?} is not a configured signal",
                        path.display(),
                        p.trigger.signal
                    ));
                } else if loaded.iter().any(|q| q.name == p.name) {
                    problems.push(format!(
                        "{prefix}: {}: name {:?} is used by another playbook",
                        path.display(),
                        p.name
                    ));
                } else {
                    loaded.push(p);
                }
            }
            Err(e) => problems.extend(e.to_string().lines().map(|l| format!("{prefix}: {l}"))),
        }
    }
    (loaded, problems)
}
