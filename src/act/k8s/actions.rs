//! The `k8s.*` actions: what each reads, the exact requests it works out, how they are
//! sent (dry run, retries, PodDisruptionBudgets) and how their effect is checked.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tokio::time::Instant;

use super::api::{self, Answer, ApiStatus};
use super::{Kube, ReadError};
use crate::act::effect::{Effector, Outcome, Prepared, Report, Request};
use crate::playbook::Action;
use crate::source::BoxFuture;

/// The annotation `kubectl rollout restart` sets on a workload's pod template.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// Marks a static pod's mirror in the API: it cannot be evicted.
const MIRROR: &str = "kubernetes.io/config.mirror";
const SMP: &str = "application/strategic-merge-patch+json";
/// kubectl drain waits this long before evicting a pod a budget protects again.
const BUDGET_RETRY: Duration = Duration::from_secs(5);
/// How often an effect is looked at again while it is not there yet.
const POLL: Duration = Duration::from_millis(200);
/// The longest pause between two attempts of a transiently failing request.
const MAX_PAUSE: Duration = Duration::from_secs(5);

fn refused(message: impl Into<String>, rule: &str) -> Report {
    Report {
        outcome: Outcome::Refused,
        detail: json!({ "message": message.into(), "rule": rule }),
    }
}

fn failed(message: impl Into<String>) -> Report {
    Report::new(Outcome::Failed, message)
}

/// The report of a request the API said no to: refused when a rule said so, failed
/// otherwise, with the API's status as it is.
fn status_report(s: &ApiStatus, request: &str) -> Report {
    let mut detail = s.detail();
    detail["request"] = json!(request);
    match s.refusal_rule() {
        Some(rule) => {
            detail["rule"] = json!(rule);
            Report {
                outcome: Outcome::Refused,
                detail,
            }
        }
        None => Report {
            outcome: Outcome::Failed,
            detail,
        },
    }
}

fn read_report(e: ReadError, path: &str) -> Report {
    match e {
        ReadError::Api(s) => status_report(&s, &format!("GET {path}")),
        ReadError::Call(e) => Report {
            outcome: Outcome::Failed,
            detail: json!({ "message": format!("GET {path}: {e}"), "request": format!("GET {path}") }),
        },
    }
}

/// A target value, checked as an object name.
fn target<'a>(action: &'a Action, key: &str) -> Result<&'a str, Report> {
    let v = action
        .target
        .get(key)
        .map(String::as_str)
        .ok_or_else(|| failed(format!("{}: target.{key} is missing", action.kind)))?;
    api::check_name(key, v).map_err(|e| failed(format!("{}: {e}", action.kind)))?;
    Ok(v)
}

/// The workload a target names: its resource and name.
fn workload<'a>(action: &'a Action, kinds: &[&str]) -> Result<(api::Resource, &'a str), Report> {
    for k in kinds {
        if action.target.contains_key(*k) {
            let name = target(action, k)?;
            let r = api::resource(&format!("{k}s"))
                .ok_or_else(|| failed(format!("{}: unknown workload kind {k}", action.kind)))?;
            return Ok((r, name));
        }
    }
    Err(failed(format!(
        "{}: the target names none of {}",
        action.kind,
        kinds.join(", ")
    )))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn pod_path(namespace: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{name}")
}

/// `DELETE` of one pod, only if it is still the pod that was read (a StatefulSet's
/// replacement has the same name and another uid).
fn delete_request(namespace: &str, name: &str, uid: &str) -> Request {
    Request {
        method: "DELETE".into(),
        path: pod_path(namespace, name),
        headers: [("Content-Type".to_string(), "application/json".to_string())].into(),
        body: Some(json!({
            "apiVersion": "v1", "kind": "DeleteOptions",
            "preconditions": { "uid": uid },
        })),
    }
}

/// An Eviction (policy/v1) of one pod: the API checks its PodDisruptionBudget.
fn eviction_request(namespace: &str, name: &str, uid: &str) -> Request {
    Request {
        method: "POST".into(),
        path: format!("{}/eviction", pod_path(namespace, name)),
        headers: [("Content-Type".to_string(), "application/json".to_string())].into(),
        body: Some(json!({
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": { "name": name, "namespace": namespace },
            "deleteOptions": { "preconditions": { "uid": uid } },
        })),
    }
}

/// The strategic-merge patch `kubectl cordon`/`uncordon` sends (`null` removes the field,
/// which is how a schedulable node reads).
fn cordon_request(node: &str, cordon: bool) -> Request {
    Request {
        method: "PATCH".into(),
        path: format!("/api/v1/nodes/{node}"),
        headers: [("Content-Type".to_string(), SMP.to_string())].into(),
        body: Some(
            json!({ "spec": { "unschedulable": if cordon { json!(true) } else { Value::Null } } }),
        ),
    }
}

/// What a request changes, read back from the API to tell whether it took effect.
#[derive(Debug, Clone, PartialEq)]
enum Effect {
    /// A pod template's `restartedAt` annotation has this value.
    Annotation { path: String, value: String },
    /// A node's `spec.unschedulable`.
    Unschedulable { path: String, value: bool },
    /// A scale subresource's `spec.replicas`.
    Replicas { path: String, value: i64 },
    /// A pod (of this uid) is terminating or gone.
    PodGone { path: String, uid: Option<String> },
}

/// Whether a pod removal is done: terminating is enough for one pod, a drain waits
/// until its pods are gone.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PodState {
    Present,
    Terminating,
    Gone,
}

impl Effect {
    /// Works out the effect from the request itself: `execute` gets back only what was
    /// audited, and checks exactly that.
    fn of(req: &Request) -> Option<Effect> {
        let body = req.body.as_ref();
        match req.method.as_str() {
            "PATCH" if req.path.starts_with("/api/v1/nodes/") => Some(Effect::Unschedulable {
                path: req.path.clone(),
                value: body?.pointer("/spec/unschedulable") == Some(&json!(true)),
            }),
            "PATCH" if req.path.starts_with("/apis/apps/v1/") => Some(Effect::Annotation {
                path: req.path.clone(),
                value: str_at(
                    body?,
                    "/spec/template/metadata/annotations/kubectl.kubernetes.io~1restartedAt",
                )?
                .to_string(),
            }),
            "PUT" if req.path.ends_with("/scale") => Some(Effect::Replicas {
                path: req.path.clone(),
                value: body?.pointer("/spec/replicas")?.as_i64()?,
            }),
            "DELETE" => Some(Effect::PodGone {
                path: req.path.clone(),
                uid: body
                    .and_then(|b| str_at(b, "/preconditions/uid"))
                    .map(String::from),
            }),
            "POST" if req.path.ends_with("/eviction") => Some(Effect::PodGone {
                path: req.path.trim_end_matches("/eviction").to_string(),
                uid: body
                    .and_then(|b| str_at(b, "/deleteOptions/preconditions/uid"))
                    .map(String::from),
            }),
            _ => None,
        }
    }

    fn path(&self) -> &str {
        match self {
            Effect::Annotation { path, .. }
            | Effect::Unschedulable { path, .. }
            | Effect::Replicas { path, .. }
            | Effect::PodGone { path, .. } => path,
        }
    }

    /// The changed field as an object (as read, or as a dry run answered) holds it.
    fn value_in(&self, obj: &Value) -> Value {
        match self {
            Effect::Annotation { .. } => obj
                .pointer("/spec/template/metadata/annotations")
                .and_then(|a| a.get(RESTARTED_AT))
                .cloned()
                .unwrap_or(Value::Null),
            Effect::Unschedulable { .. } => json!(obj["spec"]["unschedulable"] == true),
            Effect::Replicas { .. } => obj["spec"]["replicas"].clone(),
            Effect::PodGone { .. } => obj["metadata"]["deletionTimestamp"].clone(),
        }
    }

    fn pod_state(&self, obj: Option<&Value>) -> PodState {
        let Effect::PodGone { uid, .. } = self else {
            return PodState::Present;
        };
        match obj {
            None => PodState::Gone,
            Some(o) if uid.as_deref().is_some_and(|u| o["metadata"]["uid"] != u) => PodState::Gone,
            Some(o) if !o["metadata"]["deletionTimestamp"].is_null() => PodState::Terminating,
            Some(_) => PodState::Present,
        }
    }

    /// Whether the object (`None`: it does not exist) shows the effect.
    fn holds(&self, obj: Option<&Value>, require_gone: bool) -> bool {
        match self {
            Effect::PodGone { .. } => match self.pod_state(obj) {
                PodState::Gone => true,
                PodState::Terminating => !require_gone,
                PodState::Present => false,
            },
            Effect::Annotation { value, .. } => {
                obj.is_some_and(|o| self.value_in(o) == json!(value))
            }
            Effect::Unschedulable { value, .. } => {
                obj.is_some_and(|o| self.value_in(o) == json!(value))
            }
            Effect::Replicas { value, .. } => obj.is_some_and(|o| self.value_in(o) == json!(value)),
        }
    }
}

/// How one request went.
#[derive(Debug, Clone, PartialEq)]
enum Sent {
    /// Not sent: an earlier request of the action failed.
    Skipped,
    /// The API accepted it (2xx).
    Accepted(Answer),
    /// Its effect was already there (a pod already gone, or an earlier attempt whose
    /// answer was lost applied it).
    AlreadyApplied,
    /// The API said no.
    Rejected(ApiStatus),
    /// No answer before the deadline (the last error).
    NoAnswer(String),
}

impl Sent {
    fn ok(&self) -> bool {
        matches!(self, Sent::Accepted(_) | Sent::AlreadyApplied)
    }

    fn budget(&self) -> bool {
        matches!(self, Sent::Rejected(s) if s.is_disruption_budget())
    }
}

/// One request's record for the audit detail.
struct Track {
    request: Request,
    effect: Option<Effect>,
    sent: Sent,
    attempts: u32,
    verified: Option<bool>,
    /// The resourceVersion a scale was sent again with, after a conflict with a write
    /// that left the replica count alone.
    rebased: Option<Value>,
}

fn is_pod_removal(req: &Request) -> bool {
    req.method == "DELETE" || req.path.ends_with("/eviction")
}

impl Kube {
    /// Reads an object that must exist: a 404 is the action's failure, with the API's
    /// status.
    async fn must_read(&self, path: &str) -> Result<Value, Report> {
        match self.read(path).await {
            Ok(a) if a.code == 404 => Err(status_report(&a.status(), &format!("GET {path}"))),
            Ok(a) => Ok(a.body),
            Err(e) => Err(read_report(e, path)),
        }
    }

    /// Reads an object that may be gone.
    async fn maybe_read(&self, path: &str) -> Result<Option<Value>, Report> {
        match self.read(path).await {
            Ok(a) if a.code == 404 => Ok(None),
            Ok(a) => Ok(Some(a.body)),
            Err(e) => Err(read_report(e, path)),
        }
    }

    /// Reads the target and works out the requests; `enforce` applies the rules that
    /// refuse an action (opt-out, bounds, a paused rollout), which observing skips.
    async fn plan(&self, action: &Action, enforce: bool) -> Result<Prepared, Report> {
        match action.kind.as_str() {
            "k8s.rollout_restart" => self.plan_restart(action, enforce).await,
            "k8s.delete_pod" | "k8s.evict_pod" => self.plan_pod(action, enforce).await,
            "k8s.scale" => self.plan_scale(action, enforce).await,
            "k8s.cordon" | "k8s.uncordon" => self.plan_cordon(action, enforce).await,
            "k8s.drain" => self.plan_drain(action, enforce).await,
            other => Err(failed(format!("{other}: not a Kubernetes action"))),
        }
    }

    async fn plan_restart(&self, action: &Action, enforce: bool) -> Result<Prepared, Report> {
        let ns = target(action, "namespace")?;
        let (r, name) = workload(action, &["deployment", "statefulset", "daemonset"])?;
        let path = api::object_path(r, ns, name);
        let obj = self.must_read(&path).await?;
        let current = obj
            .pointer("/spec/template/metadata/annotations")
            .and_then(|a| a.get(RESTARTED_AT))
            .cloned()
            .unwrap_or(Value::Null);
        let observed = json!({
            "namespace": ns, "resource": r.plural, "name": name,
            "resourceVersion": obj["metadata"]["resourceVersion"],
            "generation": obj["metadata"]["generation"],
            "restartedAt": current,
            "paused": obj["spec"]["paused"] == true,
        });
        if enforce && api::opted_out(&obj) {
            return Err(refused(
                format!(
                    "{} {ns}/{name} is labelled or annotated {}=true",
                    r.plural,
                    api::OPT_OUT
                ),
                "opt-out",
            ));
        }
        if enforce && obj["spec"]["paused"] == true {
            // As kubectl: a paused rollout would not restart anything.
            return Err(refused(
                format!(
                    "{} {ns}/{name} is paused: resume its rollout first",
                    r.plural
                ),
                "paused",
            ));
        }
        let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let requests = if current == json!(at) {
            Vec::new()
        } else {
            vec![Request {
                method: "PATCH".into(),
                path,
                headers: [("Content-Type".to_string(), SMP.to_string())].into(),
                body: Some(json!({ "spec": { "template": { "metadata": {
                    "annotations": { RESTARTED_AT: at } } } } })),
            }]
        };
        Ok(Prepared { observed, requests })
    }

    async fn plan_pod(&self, action: &Action, enforce: bool) -> Result<Prepared, Report> {
        let ns = target(action, "namespace")?;
        let name = target(action, "pod")?;
        let Some(pod) = self.maybe_read(&pod_path(ns, name)).await? else {
            return Ok(Prepared {
                observed: json!({ "namespace": ns, "pod": name, "exists": false }),
                requests: Vec::new(),
            });
        };
        let m = &pod["metadata"];
        let observed = json!({
            "namespace": ns, "pod": name, "exists": true, "uid": m["uid"],
            "phase": pod["status"]["phase"], "nodeName": pod["spec"]["nodeName"],
            "deletionTimestamp": m["deletionTimestamp"],
        });
        if !m["deletionTimestamp"].is_null() {
            return Ok(Prepared {
                observed,
                requests: Vec::new(),
            });
        }
        if enforce && api::opted_out(&pod) {
            return Err(refused(
                format!(
                    "pod {ns}/{name} is labelled or annotated {}=true",
                    api::OPT_OUT
                ),
                "opt-out",
            ));
        }
        let uid = m["uid"].as_str().unwrap_or("");
        let request = if action.kind == "k8s.evict_pod" {
            eviction_request(ns, name, uid)
        } else {
            delete_request(ns, name, uid)
        };
        Ok(Prepared {
            observed,
            requests: vec![request],
        })
    }

    async fn plan_scale(&self, action: &Action, enforce: bool) -> Result<Prepared, Report> {
        let ns = target(action, "namespace")?;
        let (r, name) = workload(action, &["deployment", "statefulset"])?;
        let path = api::object_path(r, ns, name);
        let obj = self.must_read(&path).await?;
        // The API defaults spec.replicas to 1; a missing value reads as that.
        let current = obj["spec"]["replicas"].as_i64().unwrap_or(1);
        let p = &action.params;
        let wanted = match (
            p.get("replicas").and_then(Value::as_i64),
            p.get("delta").and_then(Value::as_i64),
        ) {
            (Some(r), _) => r,
            (None, Some(d)) => current.saturating_add(d),
            (None, None) => {
                return Err(failed(
                    "k8s.scale: params.replicas or params.delta is required",
                ))
            }
        };
        let min = p.get("min").and_then(Value::as_i64).unwrap_or(0);
        let max = p.get("max").and_then(Value::as_i64).unwrap_or(10_000);
        let rv = obj["metadata"]["resourceVersion"].clone();
        let observed = json!({
            "namespace": ns, "resource": r.plural, "name": name,
            "replicas": current, "wanted": wanted, "resourceVersion": rv,
        });
        if enforce && api::opted_out(&obj) {
            return Err(refused(
                format!(
                    "{} {ns}/{name} is labelled or annotated {}=true",
                    r.plural,
                    api::OPT_OUT
                ),
                "opt-out",
            ));
        }
        if enforce && !(min..=max).contains(&wanted) {
            let mut report = refused(
                format!(
                    "{} {ns}/{name}: {wanted} replicas is outside {min}..{max} (now {current})",
                    r.plural
                ),
                "bounds",
            );
            report.detail["observed"] = observed;
            return Err(report);
        }
        let requests = if wanted == current {
            Vec::new()
        } else {
            // PUT with the resourceVersion read: a change made since is a 409, not a
            // scale computed from a stale count.
            vec![Request {
                method: "PUT".into(),
                path: format!("{path}/scale"),
                headers: [("Content-Type".to_string(), "application/json".to_string())].into(),
                body: Some(json!({
                    "apiVersion": "autoscaling/v1", "kind": "Scale",
                    "metadata": { "name": name, "namespace": ns, "resourceVersion": rv },
                    "spec": { "replicas": wanted },
                })),
            }]
        };
        Ok(Prepared { observed, requests })
    }

    async fn plan_cordon(&self, action: &Action, enforce: bool) -> Result<Prepared, Report> {
        let node = target(action, "node")?;
        let obj = self.must_read(&format!("/api/v1/nodes/{node}")).await?;
        let unschedulable = obj["spec"]["unschedulable"] == true;
        let observed = json!({
            "node": node, "unschedulable": unschedulable,
            "resourceVersion": obj["metadata"]["resourceVersion"],
        });
        if enforce && api::opted_out(&obj) {
            return Err(refused(
                format!("node {node} is labelled or annotated {}=true", api::OPT_OUT),
                "opt-out",
            ));
        }
        let cordon = action.kind == "k8s.cordon";
        let requests = if unschedulable == cordon {
            Vec::new()
        } else {
            vec![cordon_request(node, cordon)]
        };
        Ok(Prepared { observed, requests })
    }

    async fn plan_drain(&self, action: &Action, enforce: bool) -> Result<Prepared, Report> {
        let node = target(action, "node")?;
        let obj = self.must_read(&format!("/api/v1/nodes/{node}")).await?;
        let unschedulable = obj["spec"]["unschedulable"] == true;
        if enforce && api::opted_out(&obj) {
            return Err(refused(
                format!("node {node} is labelled or annotated {}=true", api::OPT_OUT),
                "opt-out",
            ));
        }
        let pods = self
            .list_path(
                "/api/v1/pods",
                &[format!(
                    "fieldSelector={}",
                    api::encode(&format!("spec.nodeName={node}"))
                )],
            )
            .await
            .map_err(|e| failed(format!("k8s.drain: list the pods on {node}: {e}")))?;
        let mut evict = Vec::new();
        let mut kept = Vec::new();
        let mut opted_out = Vec::new();
        for pod in &pods {
            let m = &pod["metadata"];
            let (ns, name) = (
                m["namespace"].as_str().unwrap_or(""),
                m["name"].as_str().unwrap_or(""),
            );
            let owned_by_ds = m["ownerReferences"]
                .as_array()
                .is_some_and(|o| o.iter().any(|r| r["kind"] == "DaemonSet"));
            let why = if owned_by_ds {
                Some("daemonset")
            } else if !m["annotations"][MIRROR].is_null() {
                Some("mirror")
            } else if !m["deletionTimestamp"].is_null() {
                Some("terminating")
            } else {
                None
            };
            match why {
                Some(why) => kept.push(json!({ "namespace": ns, "name": name, "why": why })),
                None if api::check_name("namespace", ns).is_err()
                    || api::check_name("pod", name).is_err() =>
                {
                    return Err(failed(format!(
                        "k8s.drain: a pod on {node} has no usable name: {ns:?}/{name:?}"
                    )))
                }
                None => {
                    if api::opted_out(pod) {
                        opted_out.push(format!("{ns}/{name}"));
                    }
                    evict.push((ns, name, m["uid"].as_str().unwrap_or("")));
                }
            }
        }
        let observed = json!({
            "node": node, "unschedulable": unschedulable,
            "pods": evict.iter().map(|(ns, name, uid)| json!({ "namespace": ns, "name": name, "uid": uid })).collect::<Vec<_>>(),
            "kept": kept,
        });
        if enforce && !opted_out.is_empty() {
            // A drain that leaves them would not be a drain: touch nothing.
            let mut report = refused(
                format!(
                    "pods on node {node} are labelled or annotated {}=true: {}",
                    api::OPT_OUT,
                    opted_out.join(", ")
                ),
                "opt-out",
            );
            report.detail["observed"] = observed;
            return Err(report);
        }
        let mut requests = Vec::new();
        if !unschedulable {
            requests.push(cordon_request(node, true));
        }
        requests.extend(
            evict
                .iter()
                .map(|(ns, name, uid)| eviction_request(ns, name, uid)),
        );
        Ok(Prepared { observed, requests })
    }

    /// Whether an effect shows now; `None` when the target cannot be read.
    async fn effect_holds(&self, effect: &Effect, require_gone: bool) -> Option<bool> {
        match self.read(effect.path()).await {
            Ok(a) if a.code == 404 => Some(effect.holds(None, require_gone)),
            Ok(a) => Some(effect.holds(Some(&a.body), require_gone)),
            Err(_) => None,
        }
    }

    /// Sends one request until it is answered, retrying rate limits, server errors and
    /// lost connections with backoff until `deadline`. After an answer that may have
    /// been lost (a 5xx, a dropped connection, a timeout) the target is read before the
    /// request is sent again.
    async fn send(&self, track: &mut Track, dry_run: bool, deadline: Instant) {
        let req = &track.request;
        let path = if dry_run {
            api::with_dry_run(&req.path)
        } else {
            req.path.clone()
        };
        let mut pause = Duration::from_millis(200);
        let mut ambiguous = false;
        loop {
            if ambiguous && !dry_run {
                if let Some(effect) = &track.effect {
                    if self.effect_holds(effect, false).await == Some(true) {
                        track.sent = Sent::AlreadyApplied;
                        return;
                    }
                }
            }
            track.attempts += 1;
            let last = match self
                .call(
                    &req.method,
                    &path,
                    &req.headers,
                    req.body.as_ref(),
                    deadline,
                )
                .await
            {
                Ok(a) if a.is_success() => {
                    track.sent = Sent::Accepted(a);
                    return;
                }
                Ok(a) => {
                    let s = a.status();
                    if !s.is_transient() {
                        // A pod that is already gone (or replaced: the uid precondition
                        // failed) is what removing it wanted.
                        let gone = s.code == 404
                            || (s.code == 409 && s.message.contains("Precondition failed"));
                        track.sent = if is_pod_removal(req) && gone {
                            Sent::AlreadyApplied
                        } else {
                            Sent::Rejected(s)
                        };
                        return;
                    }
                    ambiguous = s.code >= 500;
                    // The API's own pause, when it named one (never past the deadline,
                    // which the check below keeps).
                    if let Some(wait) = s.retry_after {
                        pause = pause.max(wait.min(MAX_PAUSE));
                    }
                    s.line()
                }
                Err(e) => {
                    ambiguous = true;
                    e.to_string()
                }
            };
            if Instant::now() + pause >= deadline {
                track.sent = Sent::NoAnswer(last);
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    async fn run(
        &self,
        action: &Action,
        prepared: Prepared,
        dry_run: bool,
        deadline: Instant,
    ) -> Report {
        let mut tracks: Vec<Track> = prepared
            .requests
            .into_iter()
            .map(|request| Track {
                effect: Effect::of(&request),
                request,
                sent: Sent::Skipped,
                attempts: 0,
                verified: None,
                rebased: None,
            })
            .collect();
        // In order; a failed request other than a pod's removal stops the rest (pods
        // evicted from a node whose cordon failed could be scheduled straight back).
        let observed_replicas = prepared.observed.get("replicas").cloned();
        for t in tracks.iter_mut() {
            self.send(t, dry_run, deadline).await;
            if let Some(replicas) = &observed_replicas {
                self.rebase_scale(t, replicas, dry_run, deadline).await;
            }
            if !t.sent.ok() && !is_pod_removal(&t.request) {
                break;
            }
        }
        // Evictions a budget refused are tried again while the deadline allows (not in a
        // dry run: nothing it sent changed the budget).
        while !dry_run && tracks.iter().any(|t| t.sent.budget()) {
            let wake = Instant::now() + BUDGET_RETRY;
            if wake >= deadline {
                break;
            }
            tokio::time::sleep_until(wake).await;
            for t in tracks.iter_mut().filter(|t| t.sent.budget()) {
                self.send(t, dry_run, deadline).await;
            }
        }
        if !dry_run {
            self.verify(action, &mut tracks, deadline).await;
        }
        report(action, &tracks, dry_run)
    }

    /// A scale sent with the resourceVersion it read conflicts with any write to its
    /// workload since (a rollout restart's annotation, a label). When the replica count
    /// is still the one read, the count it was computed from holds: the same scale is
    /// sent once more with the new resourceVersion. A changed count stays a conflict.
    async fn rebase_scale(
        &self,
        t: &mut Track,
        replicas: &Value,
        dry_run: bool,
        deadline: Instant,
    ) {
        let conflict = matches!(&t.sent, Sent::Rejected(s) if s.code == 409);
        let Some(Effect::Replicas { path, .. }) = &t.effect else {
            return;
        };
        if !conflict || t.rebased.is_some() {
            return;
        }
        let Ok(a) = self.read(path).await else {
            return;
        };
        if !a.is_success() || &a.body["spec"]["replicas"] != replicas {
            return;
        }
        let rv = a.body["metadata"]["resourceVersion"].clone();
        if let Some(body) = t.request.body.as_mut() {
            body["metadata"]["resourceVersion"] = rv.clone();
        }
        t.rebased = Some(rv);
        self.send(t, dry_run, deadline).await;
    }

    /// Reads each accepted request's effect until it shows or the deadline passes.
    async fn verify(&self, action: &Action, tracks: &mut [Track], deadline: Instant) {
        let require_gone = action.kind == "k8s.drain";
        loop {
            for t in tracks.iter_mut() {
                if !t.sent.ok() || t.verified == Some(true) {
                    continue;
                }
                if let Some(effect) = &t.effect {
                    let holds = self.effect_holds(effect, require_gone).await;
                    t.verified = Some(holds == Some(true));
                }
            }
            let pending = tracks.iter().any(|t| t.verified == Some(false));
            // One read per pending request and round: a big drain polls less often.
            let poll = if tracks.len() > 5 { 5 * POLL } else { POLL };
            if !pending || Instant::now() + poll >= deadline {
                return;
            }
            tokio::time::sleep(poll).await;
        }
    }
}

/// What the server answered to an accepted request, briefly: a `Status`'s status, or
/// the object's kind, resourceVersion and the field the request changes.
fn answer_summary(answer: &Answer, effect: Option<&Effect>) -> Value {
    let b = &answer.body;
    if b["kind"] == "Status" {
        return json!({ "kind": "Status", "status": b["status"], "code": b["code"] });
    }
    let mut s = json!({
        "kind": b["kind"], "name": b["metadata"]["name"],
        "resourceVersion": b["metadata"]["resourceVersion"],
    });
    if let Some(e) = effect {
        s["changed"] = e.value_in(b);
    }
    s
}

fn track_detail(t: &Track, dry_run: bool) -> Value {
    let path = if dry_run {
        api::with_dry_run(&t.request.path)
    } else {
        t.request.path.clone()
    };
    let mut d = json!({ "method": t.request.method, "path": path, "attempts": t.attempts });
    let (result, extra) = match &t.sent {
        Sent::Skipped => ("not_sent", Value::Null),
        Sent::Accepted(a) => {
            d["code"] = json!(a.code);
            d["answer"] = answer_summary(a, t.effect.as_ref());
            ("accepted", Value::Null)
        }
        Sent::AlreadyApplied => ("already_applied", Value::Null),
        Sent::Rejected(s) => (
            if s.refusal_rule().is_some() {
                "refused"
            } else {
                "failed"
            },
            s.detail(),
        ),
        Sent::NoAnswer(e) => ("no_answer", json!({ "message": e })),
    };
    d["result"] = json!(result);
    if let Value::Object(m) = extra {
        for (k, v) in m {
            d[k.as_str()] = v;
        }
    }
    if let Some(v) = t.verified {
        d["verified"] = json!(v);
    }
    if let Some(rv) = &t.rebased {
        d["resent_with_resource_version"] = rv.clone();
    }
    d
}

/// A drain's result per pod: `evicted`, `gone`, `terminating` (evicted, not gone by the
/// deadline), `refused`, `failed`, `timed_out`, `not_sent`, `dry_run`.
fn pod_results(tracks: &[Track], dry_run: bool) -> Vec<Value> {
    tracks
        .iter()
        .filter(|t| t.request.path.ends_with("/eviction"))
        .map(|t| {
            let b = t.request.body.as_ref();
            let meta = b.map(|b| &b["metadata"]);
            let result = match (&t.sent, t.verified) {
                (Sent::Accepted(_), _) if dry_run => "dry_run",
                (Sent::Accepted(_), Some(false)) => "terminating",
                (Sent::Accepted(_), _) => "evicted",
                (Sent::AlreadyApplied, _) => "gone",
                (Sent::Rejected(s), _) if s.refusal_rule().is_some() => "refused",
                (Sent::Rejected(_), _) => "failed",
                (Sent::NoAnswer(_), _) => "timed_out",
                (Sent::Skipped, _) => "not_sent",
            };
            let mut p = json!({
                "namespace": meta.map(|m| m["namespace"].clone()),
                "name": meta.map(|m| m["name"].clone()),
                "result": result,
            });
            match &t.sent {
                Sent::Rejected(s) => {
                    p["code"] = json!(s.code);
                    p["message"] = json!(s.message);
                }
                Sent::NoAnswer(e) => p["message"] = json!(e),
                _ => {}
            }
            p
        })
        .collect()
}

/// The outcome: a request the API rejected fails the action (or is refused, when a rule
/// said no); no answer or an effect not seen by the deadline is `timed_out`.
fn report(action: &Action, tracks: &[Track], dry_run: bool) -> Report {
    let rejected = |refusal: bool| {
        tracks.iter().find_map(|t| match &t.sent {
            Sent::Rejected(s) if s.refusal_rule().is_some() == refusal => Some(s),
            _ => None,
        })
    };
    let no_answer = tracks.iter().find_map(|t| match &t.sent {
        Sent::NoAnswer(e) => Some(e),
        _ => None,
    });
    let unseen = tracks.iter().any(|t| t.verified == Some(false));
    let (outcome, message) = if let Some(s) = rejected(false) {
        (Outcome::Failed, s.line())
    } else if let Some(s) = rejected(true) {
        (Outcome::Refused, s.line())
    } else if let Some(e) = no_answer {
        (
            Outcome::TimedOut,
            format!("no answer before the deadline: {e}"),
        )
    } else if dry_run {
        (
            Outcome::DryRun,
            "the API server accepted the dry run; nothing was persisted".to_string(),
        )
    } else if unseen {
        (
            Outcome::TimedOut,
            "accepted, but the effect was not observed before the deadline".to_string(),
        )
    } else {
        (Outcome::Done, "done; the effect was observed".to_string())
    };
    let mut detail = json!({
        "message": message,
        "dry_run": dry_run,
        "requests": tracks.iter().map(|t| track_detail(t, dry_run)).collect::<Vec<_>>(),
    });
    if let Some(rule) = rejected(true)
        .and_then(|s| s.refusal_rule())
        .filter(|_| outcome == Outcome::Refused)
    {
        detail["rule"] = json!(rule);
    }
    if action.kind == "k8s.drain" {
        detail["pods"] = json!(pod_results(tracks, dry_run));
    }
    Report { outcome, detail }
}

impl Effector for Kube {
    fn prepare<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<Prepared, Report>> {
        Box::pin(self.plan(action, true))
    }

    fn execute<'a>(
        &'a self,
        action: &'a Action,
        prepared: Prepared,
        dry_run: bool,
        deadline: Instant,
    ) -> BoxFuture<'a, Report> {
        Box::pin(self.run(action, prepared, dry_run, deadline))
    }

    fn observe<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<Value, String>> {
        Box::pin(async move {
            self.plan(action, false)
                .await
                .map(|p| p.observed)
                .map_err(|r| {
                    r.detail["message"]
                        .as_str()
                        .unwrap_or("cannot read the target")
                        .to_string()
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_are_read_back_from_the_audited_requests() {
        let e = Effect::of(&eviction_request("shop", "cart-1", "u1")).unwrap();
        assert_eq!(
            e,
            Effect::PodGone {
                path: "/api/v1/namespaces/shop/pods/cart-1".into(),
                uid: Some("u1".into())
            }
        );
        let same = json!({ "metadata": { "uid": "u1" } });
        let replaced = json!({ "metadata": { "uid": "u2" } });
        let going =
            json!({ "metadata": { "uid": "u1", "deletionTimestamp": "2026-01-01T00:00:00Z" } });
        assert!(!e.holds(Some(&same), false));
        assert!(e.holds(Some(&replaced), true));
        assert!(e.holds(Some(&going), false) && !e.holds(Some(&going), true));
        assert!(e.holds(None, true));
        let c = Effect::of(&cordon_request("n1", false)).unwrap();
        assert!(c.holds(Some(&json!({ "spec": {} })), false));
        assert!(!c.holds(Some(&json!({ "spec": { "unschedulable": true } })), false));
    }
}
