//! The control commands of the CLI (`pause`, `resume`, `status`, `approvals`,
//! `breaker`): they ask the running agent over its API, with the configured token;
//! when no agent answers, they act on the files directly (the pause file, the approval
//! queue) and audit what they did, so an SRE is never locked out by a stopped agent.

use std::time::Duration;

use serde_json::{json, Value};

use crate::act::approval::{listing, queue_dir, Approvals};
use crate::act::control::{
    approve_offline, audit_match, remove_pause_file, shown, write_pause_file,
};
use crate::audit::{ApprovalDecided, AuditLog, Event, Paused, Resumed};
use crate::config::Config;

/// Why a control command failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The agent answered with an error.
    #[error("the agent refused: HTTP {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The agent serves HTTPS, which this build's client does not speak.
    #[error("the agent serves HTTPS ([api] tls_*), which this CLI cannot call: use its API with curl, or stop the agent to act on the files")]
    Tls,
    /// Acting on the files failed.
    #[error("{0}")]
    Local(String),
}

/// Where the answer came from.
#[derive(Debug)]
pub enum Answer {
    /// The running agent answered.
    Agent(Value),
    /// No agent answered; this was done on the files (and audited).
    Offline(Value),
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Agent(v) => {
                write!(f, "{}", serde_json::to_string_pretty(v).unwrap_or_default())
            }
            Answer::Offline(v) => write!(
                f,
                "(no agent answered: done on the files)\n{}",
                serde_json::to_string_pretty(v).unwrap_or_default()
            ),
        }
    }
}

/// Asks the agent; `Ok(None)` when nothing listens.
async fn call(
    config: &Config,
    method: &str,
    path: &str,
    body: Value,
) -> Result<Option<Value>, RemoteError> {
    if config.api.tls.is_some() {
        return Err(RemoteError::Tls);
    }
    let mut addr = config.agent.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| RemoteError::Local(e.to_string()))?;
    let url = format!("http://{addr}{path}");
    let mut req = match method {
        "GET" => client.get(&url),
        _ => client.post(&url).json(&body),
    };
    if let Some(t) = token(config) {
        req = req.bearer_auth(t);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Ok(None),
        Err(e) => return Err(RemoteError::Local(format!("{addr}: {e}"))),
    };
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        Ok(Some(v))
    } else {
        Err(RemoteError::Refused {
            status,
            message: v["error"].as_str().unwrap_or("").to_string(),
        })
    }
}

/// The API token as the agent reads it: the environment first, then the file. Only
/// its digest is kept in the config, so it is read again here, and sent, never shown.
fn token(config: &Config) -> Option<String> {
    if let Ok(t) = std::env::var(crate::config::TOKEN_ENV) {
        return Some(t.trim().to_string());
    }
    let file = config.api.token_file.as_ref()?;
    std::fs::read_to_string(file)
        .ok()
        .map(|t| t.trim().to_string())
}

fn local<E: std::fmt::Display>(e: E) -> RemoteError {
    RemoteError::Local(e.to_string())
}

/// Audits a record directly (the agent is down, so the log's lock is free).
fn audit_offline(config: &Config, event: Event) -> Result<u64, RemoteError> {
    let mut log = AuditLog::open(&config.agent.audit_log).map_err(local)?;
    log.record(&event).map_err(local)
}

/// `homeostat pause`.
pub async fn pause(config: &Config, reason: &str, by: &str) -> Result<Answer, RemoteError> {
    if let Some(v) = call(
        config,
        "POST",
        "/api/v1/pause",
        json!({"reason": reason, "by": by}),
    )
    .await?
    {
        return Ok(Answer::Agent(v));
    }
    let path = &config.guardrails.pause_file;
    write_pause_file(path, reason, by).map_err(local)?;
    audit_offline(
        config,
        Event::Paused(Paused {
            reason: reason.into(),
            by: by.into(),
        }),
    )?;
    Ok(Answer::Offline(json!({"paused": true, "pause_file": path})))
}

/// `homeostat resume`.
pub async fn resume(config: &Config, by: &str) -> Result<Answer, RemoteError> {
    if let Some(v) = call(config, "POST", "/api/v1/resume", json!({"by": by})).await? {
        return Ok(Answer::Agent(v));
    }
    let removed = remove_pause_file(&config.guardrails.pause_file).map_err(local)?;
    if removed {
        audit_offline(config, Event::Resumed(Resumed { by: by.into() }))?;
    }
    Ok(Answer::Offline(
        json!({"paused": false, "changed": removed}),
    ))
}

/// `homeostat status`.
pub async fn status(config: &Config) -> Result<Answer, RemoteError> {
    if let Some(v) = call(config, "GET", "/api/v1/status", Value::Null).await? {
        return Ok(Answer::Agent(v));
    }
    let paused = config.guardrails.pause_file.exists();
    let waiting = Approvals::open(&queue_dir(&config.agent.audit_log))
        .and_then(|q| q.list())
        .map_or(0, |l| l.len());
    Ok(Answer::Offline(
        json!({"agent": "not answering", "paused": paused, "approvals_waiting": waiting}),
    ))
}

/// `homeostat breaker reset`: through the agent, or recorded in the log for its next start.
pub async fn reset_breaker(
    config: &Config,
    playbook: &str,
    by: &str,
    reason: &str,
) -> Result<Answer, RemoteError> {
    let path = format!("/api/v1/breakers/{playbook}/reset");
    match call(config, "POST", &path, json!({"by": by, "reason": reason})).await? {
        Some(v) => Ok(Answer::Agent(v)),
        None => {
            audit_offline(
                config,
                Event::BreakerReset(crate::audit::BreakerReset {
                    playbook: playbook.into(),
                    by: by.into(),
                    reason: reason.into(),
                }),
            )?;
            Ok(Answer::Offline(
                json!({"reset": playbook, "note": "recorded: the agent starts with the breaker closed"}),
            ))
        }
    }
}

fn queue(config: &Config) -> Result<Approvals, RemoteError> {
    Approvals::open(&queue_dir(&config.agent.audit_log)).map_err(local)
}

/// `homeostat approvals list`.
pub async fn approvals(config: &Config) -> Result<Answer, RemoteError> {
    if let Some(v) = call(config, "GET", "/api/v1/approvals", Value::Null).await? {
        return Ok(Answer::Agent(v));
    }
    let list = queue(config)?.list().map_err(local)?;
    Ok(Answer::Offline(listing(list)))
}

/// `homeostat approvals show ID`.
pub async fn approval(config: &Config, id: &str) -> Result<Answer, RemoteError> {
    if let Some(v) = call(
        config,
        "GET",
        &format!("/api/v1/approvals/{id}"),
        Value::Null,
    )
    .await?
    {
        return Ok(Answer::Agent(v));
    }
    let p = queue(config)?.show(id).map_err(local)?;
    let audit = audit_match(&config.agent.audit_log, &p);
    Ok(Answer::Offline(shown(&p, &audit)))
}

/// `homeostat approvals approve ID --hash H`: run now, or at the agent's next start.
pub async fn approve(
    config: &Config,
    id: &str,
    hash: &str,
    by: &str,
    reason: &str,
) -> Result<Answer, RemoteError> {
    let path = format!("/api/v1/approvals/{id}/approve");
    if let Some(v) = call(
        config,
        "POST",
        &path,
        json!({"hash": hash, "by": by, "reason": reason}),
    )
    .await?
    {
        return Ok(Answer::Agent(v));
    }
    let p = approve_offline(
        &queue(config)?,
        &config.agent.audit_log,
        id,
        hash,
        by,
        reason,
    )
    .map_err(local)?;
    Ok(Answer::Offline(
        json!({"approved": p.id, "plan_hash": p.plan_hash, "note": "it runs when the agent starts, if not expired by then"}),
    ))
}

/// `homeostat approvals reject ID`.
pub async fn reject(
    config: &Config,
    id: &str,
    by: &str,
    reason: &str,
) -> Result<Answer, RemoteError> {
    let path = format!("/api/v1/approvals/{id}/reject");
    if let Some(v) = call(config, "POST", &path, json!({"by": by, "reason": reason})).await? {
        return Ok(Answer::Agent(v));
    }
    let p = queue(config)?
        .reject_waiting(id, crate::source::unix_now())
        .map_err(local)?;
    audit_offline(
        config,
        Event::ApprovalRejected(ApprovalDecided {
            id: p.id.clone(),
            anomaly_id: p.anomaly.id.clone(),
            playbook: p.playbook.clone(),
            plan_hash: p.plan_hash.clone(),
            by: by.into(),
            reason: reason.into(),
        }),
    )?;
    Ok(Answer::Offline(json!({"rejected": p.id})))
}
