//! homeostat: watch Prometheus signals, baseline every series, flag anomalies, plan
//! remediations with Rhai playbooks, and audit every step in a hash-chained log.
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | typed config, named defaults, validation that lists every problem |
//! | [`source`] | the `Source` seam; the Prometheus API client: instant queries live, range queries for history |
//! | [`detect`] | pure, synchronous baselines and the hysteresis that opens/closes anomalies |
//! | [`anomaly`] | the anomaly event handed to playbooks and the audit log |
//! | [`playbook`] | the Rhai sandbox, triggers, and the plan a script returns |
//! | [`dispatch`] | which playbooks answer an event, one plan per incident, hot reload |
//! | [`act`] | the executor: the only door to the outside world, audited first; verification and escalation |
//! | [`audit`] | the append-only, hash-chained record of every step |
//! | [`metrics`] | the agent's metrics (prometheus-client) and health, with typed methods |
//! | [`server`] | `/metrics`, `/healthz`, `/readyz`, the Alertmanager webhook (bearer token, limits, TLS): encodes, never acts |
//! | [`agent`] | the daemon loop; per-signal rules as a pure state machine ([`agent::watch`]) |
//! | [`backtest`] | the live engine over CSV files, scored as NAB scores, and its report |
//! | [`bench`] | the engine's throughput on one core and memory per series |
//! | [`report`] | what the offline commands print (`check`, `playbook`, `audit`, `fit`) |
//! | [`progress`] | progress of long commands on stderr: a bar on a terminal, lines in a log |
//! | [`spool`] | the durable queue of accepted alerts: on disk before the webhook answers 202 |
//! | [`labels`] | label sets and PromQL-style matchers |
//! | [`models`] | fitted baselines saved under `agent.models_dir`, schema-versioned |
//! | [`cli`] | command-line definitions |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod act;
pub mod agent;
pub mod anomaly;
pub mod audit;
pub mod backtest;
pub mod bench;
pub mod cli;
pub mod config;
pub mod detect;
pub mod dispatch;
pub mod labels;
pub mod metrics;
pub mod models;
pub mod playbook;
pub mod progress;
pub mod remote;
pub mod report;
pub mod server;
pub mod source;
pub mod spool;

use config::Config;
use playbook::{Limits, Playbook};

/// Loads every playbook a config names; returns the loaded ones and every problem
/// (with the playbook's index and path), including triggers naming unknown signals.
pub fn load_playbooks(config: &Config, limits: &Limits) -> (Vec<Playbook>, Vec<String>) {
    let mut loaded: Vec<Playbook> = Vec::new();
    let mut problems = Vec::new();
    for (i, path) in config.playbooks.iter().enumerate() {
        let prefix = format!("playbooks[{i}]: {}", path.display());
        match Playbook::load(path, limits) {
            Ok(p) => {
                let unknown: Vec<&str> = p
                    .triggers
                    .iter()
                    .filter_map(|t| t.signal())
                    .filter(|s| !config.signals.iter().any(|c| c.name == *s))
                    .collect();
                if !unknown.is_empty() {
                    for s in unknown {
                        problems.push(format!(
                            "{prefix}: trigger signal {s:?} is not a configured signal"
                        ));
                    }
                } else if loaded.iter().any(|q| q.name == p.name) {
                    problems.push(format!(
                        "{prefix}: name {:?} is used by another playbook",
                        p.name
                    ));
                } else {
                    loaded.push(p);
                }
            }
            Err(e) => problems.extend(
                e.to_string()
                    .lines()
                    .map(|l| format!("playbooks[{i}]: {l}")),
            ),
        }
    }
    (loaded, problems)
}
