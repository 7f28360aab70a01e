//! A fake Kubernetes API server, faithful for what homeostat uses, in one axum `Router`
//! used two ways: in process as the tower service of a `kube::Client`, and served over
//! HTTP on a loopback port with a generated kubeconfig (for the daemon's end-to-end
//! tests).
//!
//! It implements: the real paths of pods, nodes, events (`/api/v1`), deployments,
//! statefulsets, daemonsets (`/apis/apps/v1`) and poddisruptionbudgets
//! (`/apis/policy/v1`); GET of objects and lists with `labelSelector` (equality, set and
//! existence terms), `fieldSelector` (`metadata.name`, `metadata.namespace`,
//! `spec.nodeName`), `limit` and `continue`; strategic-merge (maps merged, lists of
//! named items merged by name, other lists replaced) and JSON merge patches; the
//! `scale` subresource (GET, PUT, PATCH) with its `resourceVersion` precondition; DELETE
//! with `preconditions`; the `eviction` subresource (policy/v1) with PodDisruptionBudget
//! accounting; `dryRun=All` (validated, answered, not persisted); `resourceVersion`
//! bumped on every persisted change; `Status` answers with the real codes, reasons and
//! messages (404, 409, 415, 422, 429, 403 through deny rules, 401 without the token).
//! Controllers are instant: a workload's status follows its spec at once, a
//! budget's status is computed from its pods on every request, and a deleted pod is
//! gone at once (or after `set_termination_grace`).
//!
//! For tests it records every request (`received`), counts persisted writes
//! (`writes`) and accepted dry runs (`dry_runs`), and can delay answers
//! (`set_delay`, `set_write_delay`), hold writes until released (`hold_writes`), deny
//! a verb on a resource (`deny`), answer the next write with a status
//! (`fail_next_write`, `throttle_next_write`), or apply it and lose the answer
//! (`lose_next_answer`).
//!
//! It does not implement: create (POST to a collection), watches, JSON patch and
//! server-side apply (415), namespaces as objects, admission beyond the checks named,
//! the `unhealthyPodEvictionPolicy: AlwaysAllow` variant, or the API's discovery.
#![allow(dead_code)]
// Handlers return the API's error answer as their `Err`: a test server, where the size
// of a `Response` on the error path costs nothing worth a box.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

/// The service account name the fake's 403 messages name.
pub const USER: &str = "system:serviceaccount:homeostat:homeostat";

/// One request the fake received, as it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// `GET`, `PATCH`, ...
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The JSON body, if any.
    pub body: Option<Value>,
    /// The `Authorization` header as sent (for the tests that look for leaks).
    pub authorization: Option<String>,
}

impl Received {
    /// A request that asks for a change (dry run or not).
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }

    /// Sent with `dryRun=All`.
    pub fn is_dry_run(&self) -> bool {
        self.path.contains("dryRun=All")
    }
}

/// An answer forced on the next write requests.
#[derive(Debug, Clone)]
struct Fault {
    code: u16,
    reason: String,
    message: String,
    details: Value,
    /// Apply the request first, then answer with the fault (an answer lost on the way).
    after: bool,
}

#[derive(Default)]
struct State {
    /// (plural, namespace, name) -> the object as stored (with kind and apiVersion).
    objects: BTreeMap<(String, String, String), Value>,
    rv: u64,
    uid: u64,
    writes: usize,
    dry_runs: usize,
    received: Vec<Received>,
    deny: Vec<(String, String)>,
    delay: Duration,
    write_delay: Duration,
    faults: VecDeque<Fault>,
    grace: Duration,
    /// Pods that go away when the instant passes.
    terminating: Vec<((String, String, String), Instant)>,
}

/// The fake; clones share one state.
#[derive(Clone)]
pub struct FakeKube {
    state: Arc<Mutex<State>>,
    token: Arc<Mutex<Option<String>>>,
    /// While `true`, writes wait (received, not yet answered or applied).
    hold: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for FakeKube {
    fn default() -> Self {
        FakeKube {
            state: Arc::default(),
            token: Arc::default(),
            hold: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

type Key = (String, String, String);

/// The group, API version, kind and scope of each plural the fake serves.
fn meta_of(plural: &str) -> Option<(&'static str, &'static str, &'static str, bool)> {
    Some(match plural {
        "pods" => ("", "v1", "Pod", true),
        "events" => ("", "v1", "Event", true),
        "nodes" => ("", "v1", "Node", false),
        "deployments" => ("apps", "apps/v1", "Deployment", true),
        "statefulsets" => ("apps", "apps/v1", "StatefulSet", true),
        "daemonsets" => ("apps", "apps/v1", "DaemonSet", true),
        "poddisruptionbudgets" => ("policy", "policy/v1", "PodDisruptionBudget", true),
        _ => return None,
    })
}

fn plural_of(kind: &str) -> Option<&'static str> {
    [
        "pods",
        "events",
        "nodes",
        "deployments",
        "statefulsets",
        "daemonsets",
        "poddisruptionbudgets",
    ]
    .into_iter()
    .find(|p| meta_of(p).is_some_and(|m| m.2 == kind))
}

/// `pods` or `deployments.apps`, as the API names a resource in messages.
fn qualified(plural: &str) -> String {
    match meta_of(plural) {
        Some(("", ..)) | None => plural.to_string(),
        Some((group, ..)) => format!("{plural}.{group}"),
    }
}

/// A `metav1.Status` answer.
fn status(code: u16, reason: &str, message: &str, details: Value) -> Response {
    let mut body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": if code < 300 { "Success" } else { "Failure" },
        "code": code,
    });
    if code >= 300 {
        body["message"] = json!(message);
        body["reason"] = json!(reason);
    }
    if !details.is_null() {
        body["details"] = details;
    }
    json_response(code, &body)
}

fn json_response(code: u16, body: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn details(plural: &str, name: &str) -> Value {
    let mut d = json!({ "name": name, "kind": plural });
    if let Some((group, ..)) = meta_of(plural) {
        if !group.is_empty() {
            d["group"] = json!(group);
        }
    }
    d
}

fn not_found(plural: &str, name: &str) -> Response {
    status(
        404,
        "NotFound",
        &format!("{} \"{name}\" not found", qualified(plural)),
        details(plural, name),
    )
}

fn conflict(plural: &str, name: &str, why: &str) -> Response {
    status(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {} \"{name}\": {why}",
            qualified(plural)
        ),
        details(plural, name),
    )
}

const MODIFIED: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

fn bad_request(message: &str) -> Response {
    status(400, "BadRequest", message, Value::Null)
}

/// A 422 `Invalid` with one cause, as field validation answers.
fn invalid(kind: &str, group: &str, name: &str, field: &str, message: &str) -> Response {
    let what = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{}", group.split('/').next().unwrap_or(group))
    };
    let mut d = json!({
        "name": name, "kind": kind,
        "causes": [{ "reason": "FieldValueInvalid", "message": message, "field": field }],
    });
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    status(
        422,
        "Invalid",
        &format!("{what} \"{name}\" is invalid: {field}: {message}"),
        d,
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (hex, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// One term of a label selector.
#[derive(Debug, Clone, PartialEq)]
enum Term {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

/// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`; an error carries the API's wording.
fn parse_selector(s: &str) -> Result<Vec<Term>, String> {
    let mut terms = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    let bad = |p: &str| format!("unable to parse requirement: found '{p}', expected: identifier");
    for p in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let set = |rest: &str| -> Result<Vec<String>, String> {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| bad(p))?;
            Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
        };
        let term = if let Some((k, rest)) = p.split_once(" notin ") {
            Term::NotIn(k.trim().into(), set(rest)?)
        } else if let Some((k, rest)) = p.split_once(" in ") {
            Term::In(k.trim().into(), set(rest)?)
        } else if let Some((k, v)) = p.split_once("!=") {
            Term::Ne(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
            Term::Eq(k.trim().into(), v.trim().into())
        } else if let Some(k) = p.strip_prefix('!') {
            Term::Absent(k.trim().into())
        } else {
            Term::Exists(p.into())
        };
        let key = match &term {
            Term::Eq(k, _)
            | Term::Ne(k, _)
            | Term::In(k, _)
            | Term::NotIn(k, _)
            | Term::Exists(k)
            | Term::Absent(k) => k,
        };
        if key.is_empty() || key.contains([' ', '(', ')', '!', '=']) {
            return Err(bad(p));
        }
        terms.push(term);
    }
    Ok(terms)
}

fn labels_match(terms: &[Term], labels: &Value) -> bool {
    terms.iter().all(|t| match t {
        Term::Eq(k, v) => labels[k.as_str()].as_str() == Some(v),
        Term::Ne(k, v) => labels[k.as_str()].as_str() != Some(v),
        Term::In(k, vs) => labels[k.as_str()]
            .as_str()
            .is_some_and(|l| vs.iter().any(|v| v == l)),
        Term::NotIn(k, vs) => !labels[k.as_str()]
            .as_str()
            .is_some_and(|l| vs.iter().any(|v| v == l)),
        Term::Exists(k) => !labels[k.as_str()].is_null(),
        Term::Absent(k) => labels[k.as_str()].is_null(),
    })
}

/// A `metav1.LabelSelector` (matchLabels and matchExpressions) against labels.
fn label_selector_matches(sel: &Value, labels: &Value) -> bool {
    let ml = sel["matchLabels"].as_object().cloned().unwrap_or_default();
    let by_labels = ml.iter().all(|(k, v)| &labels[k.as_str()] == v);
    let exprs = sel["matchExpressions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let by_exprs = exprs.iter().all(|e| {
        let k = e["key"].as_str().unwrap_or("");
        let vals: Vec<&str> = e["values"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let l = labels[k].as_str();
        match e["operator"].as_str() {
            Some("In") => l.is_some_and(|l| vals.contains(&l)),
            Some("NotIn") => !l.is_some_and(|l| vals.contains(&l)),
            Some("Exists") => l.is_some(),
            Some("DoesNotExist") => l.is_none(),
            _ => false,
        }
    });
    // An empty selector selects every pod of the namespace (policy/v1).
    by_labels && by_exprs
}

/// Field selector terms the fake (and the API for pods) supports.
fn parse_fields(s: &str) -> Result<Vec<(String, bool, String)>, String> {
    let mut out = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, eq, v) = if let Some((k, v)) = p.split_once("!=") {
            (k, false, v)
        } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
            (k, true, v)
        } else {
            return Err(format!("invalid selector: '{p}'; can't understand '{p}'"));
        };
        if !["metadata.name", "metadata.namespace", "spec.nodeName"].contains(&k) {
            return Err(format!("field label not supported: {k}"));
        }
        out.push((k.to_string(), eq, v.to_string()));
    }
    Ok(out)
}

fn field_value<'a>(obj: &'a Value, field: &str) -> &'a str {
    let v = match field {
        "metadata.name" => &obj["metadata"]["name"],
        "metadata.namespace" => &obj["metadata"]["namespace"],
        _ => &obj["spec"]["nodeName"],
    };
    v.as_str().unwrap_or("")
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Strategic merge: as a merge patch, except lists of maps that all have a `name`
/// (containers, volumes, env) merge item by item on it.
fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object");
    for (k, v) in p {
        match (t.get_mut(k), v) {
            (_, Value::Null) => {
                t.remove(k);
            }
            (Some(Value::Array(existing)), Value::Array(items))
                if items.iter().all(|i| i["name"].is_string())
                    && existing.iter().all(|i| i["name"].is_string()) =>
            {
                for item in items {
                    match existing.iter_mut().find(|e| e["name"] == item["name"]) {
                        Some(e) => strategic_merge(e, item),
                        None => existing.push(item.clone()),
                    }
                }
            }
            (Some(existing), v) => strategic_merge(existing, v),
            (None, v) => {
                let mut fresh = Value::Null;
                strategic_merge(&mut fresh, v);
                t.insert(k.clone(), fresh);
            }
        }
    }
}

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// An intOrString of a budget against the expected count: `n`, or `p%` rounded up.
fn scaled(v: &Value, expected: i64) -> Option<i64> {
    if let Some(n) = v.as_i64() {
        return Some(n);
    }
    let pct: i64 = v.as_str()?.strip_suffix('%')?.parse().ok()?;
    Some((pct * expected + 99) / 100)
}

impl State {
    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    /// Removes the pods whose termination grace has passed.
    fn reap(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) =
            self.terminating.drain(..).partition(|(_, at)| *at <= now);
        self.terminating = later;
        for (key, _) in due {
            self.objects.remove(&key);
            self.rv += 1;
        }
    }

    fn pods_of(&self, ns: &str, selector: &Value) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|((p, n, _), _)| p == "pods" && n == ns)
            .map(|(_, o)| o)
            .filter(|o| label_selector_matches(selector, &o["metadata"]["labels"]))
            .collect()
    }

    /// A budget's status from its pods, as the disruption controller would keep it.
    fn budget_status(&self, pdb: &Value) -> Value {
        let ns = pdb["metadata"]["namespace"].as_str().unwrap_or("");
        let pods: Vec<&Value> = self
            .pods_of(ns, &pdb["spec"]["selector"])
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        let expected = pods.len() as i64;
        let healthy = pods.iter().filter(|p| pod_ready(p)).count() as i64;
        let spec = &pdb["spec"];
        let desired = if !spec["minAvailable"].is_null() {
            scaled(&spec["minAvailable"], expected).unwrap_or(expected)
        } else if !spec["maxUnavailable"].is_null() {
            expected - scaled(&spec["maxUnavailable"], expected).unwrap_or(0)
        } else {
            expected
        };
        json!({
            "observedGeneration": pdb["metadata"]["generation"],
            "currentHealthy": healthy,
            "desiredHealthy": desired.max(0),
            "expectedPods": expected,
            "disruptionsAllowed": (healthy - desired).max(0),
        })
    }

    /// The object as the API shows it now (live status for budgets).
    fn shown(&self, key: &Key) -> Option<Value> {
        let mut o = self.objects.get(key)?.clone();
        if key.0 == "poddisruptionbudgets" {
            o["status"] = self.budget_status(&o);
        }
        Some(o)
    }

    /// Persists a changed object: a new resourceVersion, a new generation when the spec
    /// changed, and (instant controllers) a workload's status following its spec.
    fn store(&mut self, key: &Key, mut obj: Value) -> Value {
        let old = self.objects.get(key).cloned();
        let spec_changed = old.as_ref().is_none_or(|o| o["spec"] != obj["spec"]);
        obj["metadata"]["resourceVersion"] = json!(self.next_rv());
        let has_generation = key.0 != "pods" && key.0 != "nodes" && key.0 != "events";
        if has_generation && spec_changed {
            let g = obj["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            obj["metadata"]["generation"] = json!(g);
        }
        if ["deployments", "statefulsets"].contains(&key.0.as_str()) {
            let r = obj["spec"]["replicas"].as_i64().unwrap_or(1);
            obj["status"] = json!({
                "observedGeneration": obj["metadata"]["generation"],
                "replicas": r, "readyReplicas": r, "updatedReplicas": r, "availableReplicas": r,
            });
        }
        self.objects.insert(key.clone(), obj.clone());
        self.writes += 1;
        obj
    }
}

fn scale_of(obj: &Value) -> Value {
    let m = &obj["metadata"];
    let selector = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|l| {
            l.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"],
        },
        "spec": { "replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1) },
        "status": { "replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector },
    })
}

/// Checks what the fake validates: replica counts, label and annotation values.
fn validate(plural: &str, obj: &Value) -> Option<Response> {
    let (group, _, kind, _) = meta_of(plural)?;
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if ["deployments", "statefulsets"].contains(&plural) {
        let r = &obj["spec"]["replicas"];
        if !r.is_null() && r.as_i64().is_none_or(|r| r < 0) {
            return Some(invalid(
                kind,
                group,
                name,
                "spec.replicas",
                &format!("Invalid value: {r}: must be greater than or equal to 0"),
            ));
        }
    }
    for field in ["labels", "annotations"] {
        if let Some(m) = obj["metadata"][field].as_object() {
            if let Some((k, v)) = m.iter().find(|(_, v)| !v.is_string()) {
                return Some(invalid(
                    kind,
                    group,
                    name,
                    &format!("metadata.{field}"),
                    &format!("Invalid value: {v}: {k} must be a string"),
                ));
            }
        }
    }
    if plural == "nodes" {
        let u = &obj["spec"]["unschedulable"];
        if !u.is_null() && !u.is_boolean() {
            return Some(bad_request(&format!(
                "json: cannot unmarshal {u} into Go struct field NodeSpec.spec.unschedulable of type bool"
            )));
        }
    }
    None
}

/// The request, taken apart.
struct Call {
    method: Method,
    plural: String,
    namespace: String,
    name: Option<String>,
    sub: Option<String>,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Option<Value>,
}

impl FakeKube {
    /// An empty cluster.
    pub fn new() -> FakeKube {
        FakeKube::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Requires `Authorization: Bearer TOKEN` on every request (401 otherwise).
    pub fn require_token(&self, token: &str) {
        *self.token.lock().unwrap() = Some(token.to_string());
    }

    /// Adds an object (with `kind`, `apiVersion`, `metadata.name`, and
    /// `metadata.namespace` for namespaced kinds), filling uid, resourceVersion,
    /// generation and creationTimestamp as the API would.
    pub fn add(&self, mut obj: Value) {
        let kind = obj["kind"].as_str().unwrap_or("").to_string();
        let plural = plural_of(&kind).unwrap_or_else(|| panic!("the fake has no kind {kind:?}"));
        let namespaced = meta_of(plural).is_some_and(|m| m.3);
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("a name")
            .to_string();
        let ns = if namespaced {
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        let mut s = self.lock();
        s.uid += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", s.uid);
        let m = &mut obj["metadata"];
        if namespaced {
            m["namespace"] = json!(ns);
        }
        m["uid"] = json!(uid);
        m["creationTimestamp"] = json!("2026-12-01T00:00:00Z");
        obj["metadata"]["generation"] = json!(0);
        let key = (plural.to_string(), ns, name);
        s.store(&key, obj);
        // Seeding is not a write the tests count.
        s.writes -= 1;
    }

    /// The object as stored now (for assertions), bypassing the API.
    pub fn object(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let s = self.lock();
        s.shown(&(plural.into(), namespace.into(), name.into()))
    }

    /// Sets a pod's Ready condition (a budget counts Ready pods as healthy).
    pub fn set_ready(&self, namespace: &str, pod: &str, ready: bool) {
        let mut s = self.lock();
        let key = ("pods".to_string(), namespace.to_string(), pod.to_string());
        if let Some(mut p) = s.objects.get(&key).cloned() {
            p["status"]["conditions"] =
                json!([{ "type": "Ready", "status": if ready { "True" } else { "False" } }]);
            s.store(&key, p);
            s.writes -= 1;
        }
    }

    /// Answers 403 Forbidden to `verb` (`get`, `list`, `patch`, `update`, `delete`,
    /// `create`, or `*`) on `resource` (`pods`, `pods/eviction`, `deployments/scale`).
    pub fn deny(&self, verb: &str, resource: &str) {
        self.lock().deny.push((verb.into(), resource.into()));
    }

    /// Delays every answer (and, with [`set_write_delay`](Self::set_write_delay), writes more).
    pub fn set_delay(&self, d: Duration) {
        self.lock().delay = d;
    }

    /// Delays the answers to writes (dry run or not) by this much more.
    pub fn set_write_delay(&self, d: Duration) {
        self.lock().write_delay = d;
    }

    /// Deleted and evicted pods stay, terminating, this long before they are gone.
    pub fn set_termination_grace(&self, d: Duration) {
        self.lock().grace = d;
    }

    /// Holds every write from now on: received (and counted in `received`), neither
    /// applied nor answered until [`release_writes`](Self::release_writes). For a test
    /// that stops the agent between an action's intent and its outcome.
    pub fn hold_writes(&self) {
        self.hold.send_replace(true);
    }

    /// Lets held writes (and later ones) through.
    pub fn release_writes(&self) {
        self.hold.send_replace(false);
    }

    /// The next write request is answered with this status instead of being applied.
    pub fn fail_next_write(&self, code: u16, reason: &str, message: &str) {
        self.lock().faults.push_back(Fault {
            code,
            reason: reason.into(),
            message: message.into(),
            details: Value::Null,
            after: false,
        });
    }

    /// The next write request is throttled as API Priority and Fairness does: a 429
    /// without a budget cause, asking the client to retry after `secs`.
    pub fn throttle_next_write(&self, secs: u64) {
        self.lock().faults.push_back(Fault {
            code: 429,
            reason: "TooManyRequests".into(),
            message: "Too many requests, please try again later.".into(),
            details: json!({ "retryAfterSeconds": secs }),
            after: false,
        });
    }

    /// The next write request is applied, but answered with this status: an answer
    /// lost on the way (a proxy's 504, a dropped connection).
    pub fn lose_next_answer(&self, code: u16) {
        self.lock().faults.push_back(Fault {
            code,
            reason: "Timeout".into(),
            message: "the answer was lost".into(),
            details: Value::Null,
            after: true,
        });
    }

    /// Persisted changes so far (dry runs and seeding excluded).
    pub fn writes(&self) -> usize {
        self.lock().writes
    }

    /// Dry-run writes the fake accepted (validated, not persisted).
    pub fn dry_runs(&self) -> usize {
        self.lock().dry_runs
    }

    /// Every request received, in order.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// The write requests received, in order.
    pub fn received_writes(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(Received::is_write)
            .collect()
    }

    /// The router: the fake API server as a tower service.
    pub fn router(&self) -> axum::Router {
        let fake = self.clone();
        axum::Router::new().fallback(move |req: axum::extract::Request| {
            let fake = fake.clone();
            async move { fake.handle(req).await }
        })
    }

    /// A `kube::Client` whose requests this fake answers in process.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.router(), "default")
    }

    /// Serves the fake over HTTP on a loopback port the kernel chose; returns its URL.
    pub async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = self.router();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    /// Writes a kubeconfig (JSON, which is YAML) naming `url` and `token` in `dir`.
    pub fn write_kubeconfig(dir: &Path, url: &str, token: &str) -> PathBuf {
        let path = dir.join("kubeconfig");
        let kc = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{ "name": "fake", "cluster": { "server": url } }],
            "users": [{ "name": "homeostat", "user": { "token": token } }],
            "contexts": [{ "name": "fake", "context": { "cluster": "fake", "user": "homeostat", "namespace": "default" } }],
        });
        std::fs::write(&path, serde_json::to_string_pretty(&kc).unwrap()).unwrap();
        path
    }

    /// Answers one request as the API server would.
    pub async fn handle(&self, req: axum::extract::Request) -> Response {
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, 16 << 20)
            .await
            .unwrap_or_default();
        let path_q = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let header =
            |h: &HeaderMap, k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(String::from);
        let content_type = header(&parts.headers, "content-type");
        let authorization = header(&parts.headers, "authorization");
        let body: Option<Value> = if bytes.is_empty() {
            None
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(v) => Some(v),
                Err(e) => {
                    return bad_request(&format!("error decoding the request body: {e}"));
                }
            }
        };
        let (delay, write_delay) = {
            let mut s = self.lock();
            s.received.push(Received {
                method: parts.method.to_string(),
                path: path_q.clone(),
                content_type: content_type.clone(),
                body: body.clone(),
                authorization: authorization.clone(),
            });
            (s.delay, s.write_delay)
        };
        let is_write = parts.method != Method::GET;
        let wait = delay
            + if is_write {
                write_delay
            } else {
                Duration::ZERO
            };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if is_write {
            let mut held = self.hold.subscribe();
            // Only fails when the sender is gone, which the fake itself keeps alive.
            let _ = held.wait_for(|h| !*h).await;
        }
        let want = self.token.lock().unwrap().clone();
        if let Some(t) = want {
            if authorization.as_deref() != Some(&format!("Bearer {t}")) {
                return status(401, "Unauthorized", "Unauthorized", Value::Null);
            }
        }
        let (path, query) = path_q.split_once('?').unwrap_or((&path_q, ""));
        let query = parse_query(query);
        let Some(call) = route(
            &parts.method,
            path,
            query,
            content_type.unwrap_or_default(),
            body,
        ) else {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource",
                json!({}),
            );
        };
        let fault = if is_write {
            self.lock().faults.pop_front()
        } else {
            None
        };
        match fault {
            Some(f) if !f.after => status(f.code, &f.reason, &f.message, f.details),
            Some(f) => {
                let _applied = self.answer(call);
                status(f.code, &f.reason, &f.message, f.details)
            }
            None => self.answer(call),
        }
    }

    /// Answers one routed call (under the state's lock: requests are serialised).
    fn answer(&self, c: Call) -> Response {
        let mut s = self.lock();
        s.reap();
        let verb = match (&c.method, &c.name) {
            (&Method::GET, None) => "list",
            (&Method::GET, Some(_)) => "get",
            (&Method::PATCH, _) => "patch",
            (&Method::PUT, _) => "update",
            (&Method::DELETE, _) => "delete",
            (&Method::POST, _) => "create",
            _ => "unknown",
        };
        let resource = match &c.sub {
            Some(sub) => format!("{}/{sub}", c.plural),
            None => c.plural.clone(),
        };
        if s.deny
            .iter()
            .any(|(v, r)| (v == verb || v == "*") && r == &resource)
        {
            let (group, ..) = meta_of(&c.plural).unwrap_or(("", "", "", true));
            let scope = if c.namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace \"{}\"", c.namespace)
            };
            let subject = match &c.name {
                Some(n) => format!("{} \"{n}\" is forbidden", qualified(&c.plural)),
                None => format!("{} is forbidden", qualified(&c.plural)),
            };
            return status(
                403,
                "Forbidden",
                &format!("{subject}: User \"{USER}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}"),
                details(&c.plural, c.name.as_deref().unwrap_or("")),
            );
        }
        let dry_run = match c.query.get("dryRun").map(String::as_str) {
            None | Some("") => false,
            Some("All") => true,
            Some(other) => {
                return bad_request(&format!(
                    "dryRun: Unsupported value: \"{other}\": supported values: \"All\""
                ))
            }
        };
        let Some(name) = c.name.clone() else {
            return match c.method {
                Method::GET => list(&s, &c),
                _ => status(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                    Value::Null,
                ),
            };
        };
        let key: Key = (c.plural.clone(), c.namespace.clone(), name.clone());
        let Some(current) = s.shown(&key) else {
            return not_found(&c.plural, &name);
        };
        let answer = match (c.method.clone(), c.sub.as_deref()) {
            (Method::GET, None) => Ok(json_response(200, &current)),
            (Method::GET, Some("scale")) if is_scalable(&c.plural) => {
                Ok(json_response(200, &scale_of(&current)))
            }
            (Method::PATCH, None) => patch(&mut s, &c, &key, current, dry_run),
            (Method::PATCH, Some("scale")) if is_scalable(&c.plural) => {
                let mut scale = scale_of(&current);
                match apply_patch(&c, &mut scale) {
                    Err(r) => Err(r),
                    Ok(()) => put_scale(&mut s, &key, current, &scale, dry_run),
                }
            }
            (Method::PUT, Some("scale")) if is_scalable(&c.plural) => match &c.body {
                Some(b) if b["kind"] == "Scale" => put_scale(&mut s, &key, current, b, dry_run),
                _ => Err(bad_request("the body of the request is not a Scale")),
            },
            (Method::DELETE, None) => delete(&mut s, &c, &key, current, dry_run),
            (Method::POST, Some("eviction")) if c.plural == "pods" => {
                evict(&mut s, &c, &key, current, dry_run)
            }
            _ => Err(status(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
                Value::Null,
            )),
        };
        match answer {
            Ok(r) => {
                if c.method != Method::GET && dry_run && r.status().is_success() {
                    s.dry_runs += 1;
                }
                r
            }
            Err(r) => r,
        }
    }
}

fn is_scalable(plural: &str) -> bool {
    plural == "deployments" || plural == "statefulsets"
}

/// Splits `/api/v1/...` and `/apis/GROUP/VERSION/...` into a call on a known resource.
fn route(
    method: &Method,
    path: &str,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Option<Value>,
) -> Option<Call> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g, "v1", rest @ ..] => (*g, rest),
        _ => return None,
    };
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, plural] => (*ns, *plural, None, None),
        ["namespaces", ns, plural, name] => (*ns, *plural, Some(*name), None),
        ["namespaces", ns, plural, name, sub] => (*ns, *plural, Some(*name), Some(*sub)),
        [plural] => ("", *plural, None, None),
        [plural, name] => ("", *plural, Some(*name), None),
        [plural, name, sub] => ("", *plural, Some(*name), Some(*sub)),
        _ => return None,
    };
    let (g, _, _, namespaced) = meta_of(plural)?;
    // A namespaced object needs its namespace; a cluster-scoped one has none.
    if g != group
        || (name.is_some() && namespaced == namespace.is_empty())
        || (!namespaced && !namespace.is_empty())
    {
        return None;
    }
    Some(Call {
        method: method.clone(),
        plural: plural.into(),
        namespace: namespace.into(),
        name: name.map(String::from),
        sub: sub.map(String::from),
        query,
        content_type,
        body,
    })
}

fn list(s: &State, c: &Call) -> Response {
    let terms = match parse_selector(
        c.query
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or(""),
    ) {
        Ok(t) => t,
        Err(e) => return bad_request(&e),
    };
    let fields = match parse_fields(
        c.query
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or(""),
    ) {
        Ok(f) => f,
        Err(e) => return bad_request(&e),
    };
    let after = match c.query.get("continue").filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => match hex_decode(t) {
            Some(k) => Some(k),
            None => {
                return status(
                    400,
                    "BadRequest",
                    "continue key is not valid: illegal base64 data",
                    Value::Null,
                )
            }
        },
    };
    let limit: usize = c
        .query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let matching: Vec<(&Key, Value)> = s
        .objects
        .keys()
        .filter(|(p, n, _)| p == &c.plural && (c.namespace.is_empty() || n == &c.namespace))
        .filter(|k| {
            after
                .as_ref()
                .is_none_or(|a| format!("{}/{}", k.1, k.2) > *a)
        })
        .filter_map(|k| s.shown(k).map(|o| (k, o)))
        .filter(|(_, o)| labels_match(&terms, &o["metadata"]["labels"]))
        .filter(|(_, o)| {
            fields
                .iter()
                .all(|(f, eq, v)| (field_value(o, f) == v) == *eq)
        })
        .collect();
    let (_, _, kind, _) = meta_of(&c.plural).expect("routed");
    let api_version = meta_of(&c.plural).map(|m| m.1).unwrap_or("v1");
    let take = if limit == 0 {
        matching.len()
    } else {
        limit.min(matching.len())
    };
    let mut meta = json!({ "resourceVersion": s.rv.to_string() });
    if take < matching.len() {
        let (_, ns, name) = matching[take - 1].0;
        meta["continue"] = json!(hex_encode(&format!("{ns}/{name}")));
        meta["remainingItemCount"] = json!(matching.len() - take);
    }
    // Items of a list carry no kind or apiVersion, as the API serves them.
    let items: Vec<Value> = matching[..take]
        .iter()
        .map(|(_, o)| {
            let mut o = o.clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    json_response(
        200,
        &json!({ "kind": format!("{kind}List"), "apiVersion": api_version, "metadata": meta, "items": items }),
    )
}

fn hex_encode(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Applies the call's patch to `target` by its content type.
fn apply_patch(c: &Call, target: &mut Value) -> Result<(), Response> {
    let Some(patch) = &c.body else {
        return Err(bad_request("the body of the request was empty"));
    };
    let ct = c.content_type.split(';').next().unwrap_or("").trim();
    match ct {
        "application/strategic-merge-patch+json" => strategic_merge(target, patch),
        "application/merge-patch+json" => merge_patch(target, patch),
        _ => {
            return Err(status(
                415,
                "UnsupportedMediaType",
                &format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"),
                Value::Null,
            ))
        }
    }
    Ok(())
}

fn patch(
    s: &mut State,
    c: &Call,
    key: &Key,
    current: Value,
    dry_run: bool,
) -> Result<Response, Response> {
    let mut next = current.clone();
    apply_patch(c, &mut next)?;
    // A resourceVersion in the patch is a precondition.
    let want_rv = &c
        .body
        .as_ref()
        .map(|b| b["metadata"]["resourceVersion"].clone())
        .unwrap_or(Value::Null);
    if !want_rv.is_null() && *want_rv != current["metadata"]["resourceVersion"] {
        return Err(conflict(&key.0, &key.2, MODIFIED));
    }
    // What the URL names cannot be patched away.
    for f in ["name", "namespace", "uid", "creationTimestamp"] {
        next["metadata"][f] = current["metadata"][f].clone();
    }
    next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    if let Some(r) = validate(&key.0, &next) {
        return Err(r);
    }
    if dry_run || next == current {
        // A no-op patch changes nothing, not even the resourceVersion.
        return Ok(json_response(200, &next));
    }
    Ok(json_response(200, &s.store(key, next)))
}

fn put_scale(
    s: &mut State,
    key: &Key,
    current: Value,
    scale: &Value,
    dry_run: bool,
) -> Result<Response, Response> {
    let rv = &scale["metadata"]["resourceVersion"];
    if rv.as_str().is_some_and(|r| !r.is_empty()) && *rv != current["metadata"]["resourceVersion"] {
        return Err(conflict(&key.0, &key.2, MODIFIED));
    }
    let r = &scale["spec"]["replicas"];
    if r.as_i64().is_none_or(|r| r < 0) {
        return Err(invalid(
            "Scale",
            "autoscaling",
            &key.2,
            "spec.replicas",
            &format!("Invalid value: {r}: must be greater than or equal to 0"),
        ));
    }
    let mut next = current.clone();
    next["spec"]["replicas"] = r.clone();
    if dry_run {
        return Ok(json_response(200, &scale_of(&next)));
    }
    if next == current {
        return Ok(json_response(200, &scale_of(&current)));
    }
    let stored = s.store(key, next);
    Ok(json_response(200, &scale_of(&stored)))
}

/// Checks DeleteOptions' preconditions against the object.
fn preconditions(opts: &Value, key: &Key, current: &Value) -> Result<(), Response> {
    let p = &opts["preconditions"];
    let m = &current["metadata"];
    if let Some(uid) = p["uid"].as_str() {
        if m["uid"] != uid {
            return Err(conflict(
                &key.0,
                &key.2,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    m["uid"].as_str().unwrap_or("")
                ),
            ));
        }
    }
    if let Some(rv) = p["resourceVersion"].as_str() {
        if m["resourceVersion"] != rv {
            return Err(conflict(
                &key.0,
                &key.2,
                &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", m["resourceVersion"].as_str().unwrap_or("")),
            ));
        }
    }
    Ok(())
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Deletes an object: at once, or (pods, with a termination grace) marked terminating.
fn remove(s: &mut State, key: &Key, current: Value) -> Value {
    if key.0 == "pods" && !s.grace.is_zero() {
        if !current["metadata"]["deletionTimestamp"].is_null() {
            return current;
        }
        let mut next = current;
        next["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        next["metadata"]["deletionGracePeriodSeconds"] = json!(s.grace.as_secs());
        let at = Instant::now() + s.grace;
        s.terminating.push((key.clone(), at));
        return s.store(key, next);
    }
    s.objects.remove(key);
    s.rv += 1;
    s.writes += 1;
    current
}

fn delete(
    s: &mut State,
    c: &Call,
    key: &Key,
    current: Value,
    dry_run: bool,
) -> Result<Response, Response> {
    let opts = c.body.clone().unwrap_or(Value::Null);
    preconditions(&opts, key, &current)?;
    if dry_run {
        let mut would = current;
        would["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        return Ok(json_response(200, &would));
    }
    let gone = remove(s, key, current);
    Ok(json_response(200, &gone))
}

fn evict(
    s: &mut State,
    c: &Call,
    key: &Key,
    pod: Value,
    dry_run: bool,
) -> Result<Response, Response> {
    let Some(body) = &c.body else {
        return Err(bad_request("the body of the request was empty"));
    };
    if body["kind"] != "Eviction" {
        return Err(bad_request(&format!(
            "no kind {:?} is registered for version \"policy/v1\"",
            body["kind"]
        )));
    }
    if body["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n != key.2)
    {
        return Err(bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    preconditions(&body["deleteOptions"], key, &pod)?;
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    let terminating = !pod["metadata"]["deletionTimestamp"].is_null();
    // Finished and terminating pods are removed without asking their budget.
    if phase != "Succeeded" && phase != "Failed" && !terminating {
        let budgets: Vec<Value> = s
            .objects
            .iter()
            .filter(|((p, n, _), _)| p == "poddisruptionbudgets" && n == &key.1)
            .map(|(_, o)| o.clone())
            .filter(|b| label_selector_matches(&b["spec"]["selector"], &pod["metadata"]["labels"]))
            .collect();
        if budgets.len() > 1 {
            return Err(status(
                500,
                "InternalError",
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                Value::Null,
            ));
        }
        if let Some(b) = budgets.first() {
            let st = s.budget_status(b);
            let healthy = st["currentHealthy"].as_i64().unwrap_or(0);
            let desired = st["desiredHealthy"].as_i64().unwrap_or(0);
            let allowed = if pod_ready(&pod) {
                st["disruptionsAllowed"].as_i64().unwrap_or(0) > 0
            } else {
                // IfHealthyBudget: an unready pod may go while the budget is met.
                healthy >= desired
            };
            if !allowed {
                return Err(status(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                    json!({ "causes": [{
                        "reason": "DisruptionBudget",
                        "message": format!("The disruption budget {} needs {desired} healthy pods and has {healthy} currently", b["metadata"]["name"].as_str().unwrap_or("")),
                    }] }),
                ));
            }
        }
    }
    if !dry_run {
        remove(s, key, pod);
    }
    Ok(status(201, "", "", Value::Null))
}

/// A running, Ready pod on `node` with `labels`.
pub fn pod(ns: &str, name: &str, node: &str, labels: &[(&str, &str)]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "labels": label_map(labels) },
        "spec": { "nodeName": node, "containers": [{ "name": "app", "image": "example/app:1" }] },
        "status": { "phase": "Running", "conditions": [{ "type": "Ready", "status": "True" }] },
    })
}

/// A workload (`Deployment`, `StatefulSet`, `DaemonSet`) selecting `app=NAME`.
pub fn workload(kind: &str, ns: &str, name: &str, replicas: i64) -> Value {
    let mut w = json!({
        "apiVersion": "apps/v1", "kind": kind,
        "metadata": { "name": name, "namespace": ns, "labels": { "app": name } },
        "spec": {
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "app", "image": "example/app:1" }] },
            },
        },
    });
    if kind != "DaemonSet" {
        w["spec"]["replicas"] = json!(replicas);
    }
    w
}

/// A Ready (or NotReady) node.
pub fn node(name: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
        "spec": {},
        "status": { "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }] },
    })
}

/// A budget over `app=APP` with `minAvailable` (an int or a percentage string).
pub fn pdb(ns: &str, name: &str, app: &str, min_available: Value) -> Value {
    json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "minAvailable": min_available, "selector": { "matchLabels": { "app": app } } },
    })
}

/// `obj` with `metadata.annotations[k] = v`.
pub fn annotated(mut obj: Value, k: &str, v: &str) -> Value {
    obj["metadata"]["annotations"][k] = json!(v);
    obj
}

/// `obj` with `metadata.labels[k] = v`.
pub fn labelled(mut obj: Value, k: &str, v: &str) -> Value {
    obj["metadata"]["labels"][k] = json!(v);
    obj
}

/// `pod` owned (as controller) by a `kind` named `owner`.
pub fn owned_by(mut pod: Value, kind: &str, owner: &str) -> Value {
    pod["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": kind, "name": owner,
        "uid": "00000000-0000-4000-8000-0000000000ff", "controller": true,
    }]);
    pod
}

fn label_map(labels: &[(&str, &str)]) -> Value {
    Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect(),
    )
}

/// The body of a response, for the fake's own tests.
pub async fn body_of(r: Response) -> (u16, Value) {
    let code = r.status().as_u16();
    let bytes = axum::body::to_bytes(r.into_body(), 16 << 20).await.unwrap();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Sends one request to the router in process (for the fake's own tests).
pub async fn send(
    fake: &FakeKube,
    method: &str,
    path: &str,
    content_type: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    body_of(fake.handle(req).await).await
}
