//! OpenStack: reads for playbooks and the effector for `openstack.*` actions.
//!
//! Credentials come from a `clouds.yaml` entry (`secure.yaml` merged over it) or the
//! `OS_*` variables ([`cloud`]); homeostat asks Keystone v3 for a token itself
//! (password or application credential) because the `openstack` crate reads
//! `clouds.yaml` only from its fixed search path and does not export its
//! application-credential type. Requests go through that crate's HTTP client (rustls),
//! as raw requests: the crate has no server actions, services or microversions.
//!
//! The compute microversion is negotiated once, from Nova's version document: the
//! highest both sides know, capped at [`MAX_MICROVERSION`], and sent on every request
//! as `OpenStack-API-Version: compute X.Y`. Nova has no server-side dry run: in dry-run
//! mode the exact request is recorded and nothing is sent.

mod cloud;
mod yaml;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::effect::{ActError, Effector, Outcome, Prepared, Report, Request};
use crate::playbook::Action;
use crate::source::BoxFuture;

pub use cloud::Secret;

/// Reads an HTTP response of the crate's client (reqwest 0.12 inside `openstack`, whose
/// type homeostat cannot name) into an [`Answer`] and its `X-Subject-Token`.
macro_rules! answer {
    ($resp:expr) => {{
        let resp = $resp;
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let request_id =
            header("x-openstack-request-id").or_else(|| header("x-compute-request-id"));
        let subject = header("x-subject-token").map(Secret);
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (
            Answer {
                status,
                body,
                request_id,
            },
            subject,
        )
    }};
}

/// The newest compute microversion this code was written against: what it sends when
/// the cloud supports it (2.100: server show with scheduler hints; evacuated servers
/// keep their power state since 2.95, which the evacuation's wait accepts).
pub const MAX_MICROVERSION: Microversion = Microversion(2, 100);

/// The metadata keys that keep homeostat's hands off a server (value `true`): the
/// project's label spelling, and the one Nova accepts, since Nova's metadata keys may
/// not contain `/` (`^[a-zA-Z0-9-_:. ]{1,255}$`) and it refuses the first with a 400.
pub const OPT_OUT_KEYS: [&str; 2] = ["homeostat.io/ignore", "homeostat.io:ignore"];

/// `[openstack]`: which cloud, and the limits of calls.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// The `clouds.yaml` entry; without it `OS_CLOUD`, then the `OS_*` variables.
    pub cloud: Option<String>,
    /// A `clouds.yaml` file instead of the usual search path (`./clouds.yaml`,
    /// `~/.config/openstack/`, `/etc/openstack/`); `secure.yaml` beside it is merged.
    pub clouds_file: Option<PathBuf>,
    /// The region, if the cloud has several.
    pub region: Option<String>,
    /// The endpoint interface: `public`, `internal` or `admin`.
    pub interface: String,
    /// Limit of one API call.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub timeout: Duration,
    /// Default time limit of one action including waiting for its effect (a reboot's
    /// ACTIVE, a migration's new host); a step's `params.timeout` overrides it.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub action_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cloud: None,
            clouds_file: None,
            region: None,
            interface: "public".into(),
            timeout: Duration::from_secs(30),
            action_timeout: Duration::from_secs(600),
        }
    }
}

/// A compute API microversion, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Microversion(pub u32, pub u32);

impl Microversion {
    /// Parses `2.53`.
    pub fn parse(s: &str) -> Option<Microversion> {
        let (a, b) = s.trim().split_once('.')?;
        Some(Microversion(a.parse().ok()?, b.parse().ok()?))
    }
}

impl std::fmt::Display for Microversion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// The microversion to speak: the highest the cloud supports up to `ours`, or `None`
/// when the cloud's range lies wholly above it.
pub fn negotiate(min: Microversion, max: Microversion, ours: Microversion) -> Option<Microversion> {
    let v = max.min(ours);
    (v >= min).then_some(v)
}

/// A Keystone token and where compute is, as the token's catalog says.
struct Token {
    value: Secret,
    expires: Option<SystemTime>,
    compute: String,
}

/// One HTTP answer: status, body (JSON, or the text as a string), request id.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: Value,
    request_id: Option<String>,
}

impl Answer {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Nova's error message (`{"conflictingRequest": {"message": ...}}`), else the body.
    fn message(&self) -> String {
        let from_map = self.body.as_object().and_then(|m| {
            m.values()
                .find_map(|v| v.get("message").and_then(Value::as_str))
                .or_else(|| m.get("message").and_then(Value::as_str))
        });
        match (from_map, &self.body) {
            (Some(m), _) => m.to_string(),
            (None, Value::String(s)) => s.chars().take(300).collect(),
            (None, Value::Null) => String::new(),
            (None, other) => other.to_string().chars().take(300).collect(),
        }
    }

    /// `409 Conflict: Cannot 'reboot' instance ... while it is locked`.
    fn describe(&self) -> String {
        let reason = reqwest::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        format!("{} {reason}: {}", self.status, self.message())
    }
}

/// A connected OpenStack client (compute).
pub struct OpenStack {
    settings: Settings,
    cloud: cloud::Cloud,
    http: openstack::session::Session,
    token: Mutex<Token>,
    microversion: Microversion,
}

impl OpenStack {
    /// Authenticates with the settings' cloud and negotiates the compute microversion.
    pub async fn connect(settings: &Settings) -> Result<OpenStack, ActError> {
        let config = |message: String| ActError::Config {
            layer: "openstack",
            message,
        };
        let cloud = cloud::load(settings, &|k| std::env::var(k).ok()).map_err(config)?;
        // The crate's session only as an HTTP client: homeostat authenticates itself.
        let http =
            openstack::session::Session::new(openstack::auth::NoAuth::new_without_endpoint())
                .await
                .map_err(|e| config(format!("http client: {e}")))?;
        let token = authenticate(&http, &cloud, settings.timeout)
            .await
            .map_err(|e| config(format!("{}: {e}", cloud.origin)))?;
        let (min, max) = versions(&http, &token.compute, settings.timeout)
            .await
            .map_err(|e| config(format!("compute version document: {e}")))?;
        let microversion = negotiate(min, max, MAX_MICROVERSION).ok_or_else(|| {
            config(format!(
                "compute API supports microversions {min} to {max}; homeostat speaks up to {MAX_MICROVERSION}"
            ))
        })?;
        debug!(compute = %token.compute, %microversion, "openstack connected");
        Ok(OpenStack {
            settings: settings.clone(),
            cloud,
            http,
            token: Mutex::new(token),
            microversion,
        })
    }

    /// The settings this client was built with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The negotiated compute microversion.
    pub fn microversion(&self) -> Microversion {
        self.microversion
    }

    /// The compute endpoint the token's catalog gave.
    pub async fn compute_endpoint(&self) -> String {
        self.token.lock().await.compute.clone()
    }

    fn version_header(&self) -> (String, String) {
        (
            "OpenStack-API-Version".into(),
            format!("compute {}", self.microversion),
        )
    }

    /// Sends one compute request (path relative to the endpoint); a 401 (an expired or
    /// revoked token: Nova did nothing) authenticates again and sends it once more.
    async fn call(
        &self,
        method: &str,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Answer, String> {
        for attempt in 0..2 {
            let (token, compute) = {
                let mut t = self.token.lock().await;
                let stale = t.expires.is_some_and(|e| {
                    e.duration_since(SystemTime::now())
                        .map_or(true, |left| left < Duration::from_secs(120))
                });
                if stale || attempt > 0 {
                    *t = authenticate(&self.http, &self.cloud, self.settings.timeout).await?;
                }
                (t.value.0.clone(), t.compute.clone())
            };
            let mut url = reqwest::Url::parse(&format!("{compute}{path}"))
                .map_err(|e| format!("{method} {path}: bad URL: {e}"))?;
            if !query.is_empty() {
                url.query_pairs_mut().extend_pairs(query);
            }
            let (h, v) = self.version_header();
            let mut req = self
                .http
                .client()
                .request(method_of(method), url)
                .header("X-Auth-Token", token)
                .header(h, v)
                .header("Accept", "application/json")
                .timeout(timeout);
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req
                .send_unchecked()
                .await
                .map_err(|e| format!("{method} {path}: {}", transport(&e.to_string())))?;
            let (answer, _) = answer!(resp);
            debug!(method, path, status = answer.status, "openstack compute");
            if answer.status != 401 {
                return Ok(answer);
            }
        }
        Err(format!(
            "{method} {path}: 401 Unauthorized after authenticating again"
        ))
    }

    /// GET a compute path; its JSON, or an error with status and message. A read is
    /// idempotent: a 5xx or a transport error is tried twice more (after 0.5 s, 1 s).
    async fn get(&self, path: &str, query: &[(String, String)]) -> Result<Value, (u16, String)> {
        let mut backoff = Duration::from_millis(500);
        let mut attempts = 3;
        loop {
            attempts -= 1;
            let error = match self
                .call("GET", path, query, None, self.settings.timeout)
                .await
            {
                Ok(a) if a.ok() => return Ok(a.body),
                Ok(a) => (a.status, format!("GET {path}: {}", a.describe())),
                Err(e) => (0, e),
            };
            let transient = error.0 == 0 || error.0 >= 500;
            if !transient || attempts == 0 {
                return Err(error);
            }
            debug!(path, "openstack read failed, trying again: {}", error.1);
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }

    /// GET a paginated list (`servers`, `hypervisors`), following `*_links` markers.
    async fn list(
        &self,
        path: &str,
        key: &str,
        query: &[(String, String)],
    ) -> Result<Vec<Value>, (u16, String)> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        // A bound on pages so a cloud that repeats a marker cannot loop forever.
        for _ in 0..1000 {
            let mut q = query.to_vec();
            if let Some(m) = &marker {
                q.push(("marker".into(), m.clone()));
            }
            let body = self.get(path, &q).await?;
            let page = body
                .get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| (0, format!("GET {path}: no {key:?} list in the answer")))?;
            out.extend(page.iter().cloned());
            let next = body
                .get(format!("{key}_links"))
                .and_then(Value::as_array)
                .and_then(|links| {
                    links
                        .iter()
                        .find(|l| l.get("rel").and_then(Value::as_str) == Some("next"))
                })
                .and_then(|l| l.get("href").and_then(Value::as_str))
                .and_then(|href| reqwest::Url::parse(href).ok())
                .and_then(|u| {
                    u.query_pairs()
                        .find(|(k, _)| k == "marker")
                        .map(|(_, v)| v.into_owned())
                });
            // A caller's `limit` asks for one page, not for all in pages of that size.
            let one_page = query.iter().any(|(k, _)| k == "limit");
            match next {
                Some(m) if !one_page && Some(&m) != marker.as_ref() && !page.is_empty() => {
                    marker = Some(m)
                }
                _ => return Ok(out),
            }
        }
        Ok(out)
    }

    /// One server by id or name, or `None` when it does not exist; a name that several
    /// servers share is an error.
    pub async fn server(&self, id_or_name: &str) -> Result<Option<Value>, String> {
        self.find_server(id_or_name).await.map_err(|(_, e)| e)
    }

    async fn find_server(&self, id_or_name: &str) -> Result<Option<Value>, (u16, String)> {
        if is_uuid(id_or_name) {
            match self.get(&format!("/servers/{id_or_name}"), &[]).await {
                Ok(v) => return Ok(v.get("server").cloned()),
                Err((404, _)) => {}
                Err(e) => return Err(e),
            }
        }
        // Nova's name filter is a regular expression: anchor and escape it.
        let q = [(
            "name".to_string(),
            format!("^{}$", regex::escape(id_or_name)),
        )];
        let found: Vec<Value> = self
            .list("/servers/detail", "servers", &q)
            .await?
            .into_iter()
            .filter(|s| s.get("name").and_then(Value::as_str) == Some(id_or_name))
            .collect();
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.into_iter().next()),
            n => {
                let ids: Vec<&str> = found.iter().filter_map(|s| s.get("id")?.as_str()).collect();
                Err((
                    0,
                    format!(
                        "{n} servers are named {id_or_name:?} ({}): name one by id",
                        ids.join(", ")
                    ),
                ))
            }
        }
    }

    /// Servers matching Nova's list filters (`status`, `host`, `name`, ...), every page
    /// unless the filters hold a `limit`.
    pub async fn servers(&self, filters: &Map<String, Value>) -> Result<Vec<Value>, String> {
        let q: Vec<(String, String)> = filters
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_string),
                )
            })
            .collect();
        self.list("/servers/detail", "servers", &q)
            .await
            .map_err(|(_, e)| e)
    }

    /// Compute services, only those on `host` unless it is `""`.
    pub async fn compute_services(&self, host: &str) -> Result<Vec<Value>, String> {
        let q: Vec<(String, String)> = if host.is_empty() {
            vec![]
        } else {
            vec![("host".into(), host.into())]
        };
        let body = self.get("/os-services", &q).await.map_err(|(_, e)| e)?;
        let all = body
            .get("services")
            .and_then(Value::as_array)
            .cloned()
            .ok_or("GET /os-services: no \"services\" list in the answer")?;
        // Filtered here too: a cloud may ignore the query.
        Ok(all
            .into_iter()
            .filter(|s| host.is_empty() || s.get("host").and_then(Value::as_str) == Some(host))
            .collect())
    }

    /// Hypervisors.
    pub async fn hypervisors(&self) -> Result<Vec<Value>, String> {
        self.list("/os-hypervisors/detail", "hypervisors", &[])
            .await
            .map_err(|(_, e)| e)
    }

    /// The one service `binary` on `host`.
    async fn service(&self, host: &str, binary: &str) -> Result<Value, Report> {
        let q = [
            ("host".to_string(), host.to_string()),
            ("binary".to_string(), binary.to_string()),
        ];
        let body = self.get("/os-services", &q).await.map_err(read_refusal)?;
        let found: Vec<Value> = body
            .get("services")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|s| {
                s.get("host").and_then(Value::as_str) == Some(host)
                    && s.get("binary").and_then(Value::as_str) == Some(binary)
            })
            .cloned()
            .collect();
        match found.len() {
            1 => Ok(found.into_iter().next().unwrap_or_default()),
            0 => Err(Report::new(
                Outcome::Failed,
                format!("no {binary} service on host {host}"),
            )),
            n => Err(Report::new(
                Outcome::Failed,
                format!("{n} {binary} services on host {host}"),
            )),
        }
    }

    /// The request of a service update, if the microversion has `PUT /os-services/{id}`.
    fn service_request(&self, service: &Value, body: Value) -> Result<Request, Report> {
        if self.microversion < Microversion(2, 53) {
            return Err(Report::new(
                Outcome::Failed,
                format!(
                    "updating a compute service needs compute API 2.53; the cloud speaks {}",
                    self.microversion
                ),
            ));
        }
        let id = service
            .get("id")
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .unwrap_or_default();
        Ok(self.request("PUT", &format!("/os-services/{id}"), Some(body)))
    }

    fn request(&self, method: &str, path: &str, body: Option<Value>) -> Request {
        let (h, v) = self.version_header();
        Request {
            method: method.into(),
            path: path.into(),
            headers: [(h, v)].into(),
            body,
        }
    }

    /// The server an action targets, refused when it opted out.
    async fn target_server(&self, action: &Action) -> Result<Value, Report> {
        let name = action
            .target
            .get("server")
            .ok_or_else(|| Report::new(Outcome::Failed, "target.server is missing"))?;
        let server = self
            .find_server(name)
            .await
            .map_err(read_refusal)?
            .ok_or_else(|| Report::new(Outcome::Failed, format!("server {name} does not exist")))?;
        let ignored = OPT_OUT_KEYS.into_iter().find(|k| {
            server
                .get("metadata")
                .and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        });
        if let Some(key) = ignored {
            return Err(Report {
                outcome: Outcome::Refused,
                detail: json!({
                    "message": format!("server {name} has metadata {key}=true: homeostat does not touch it"),
                    "rule": "opt-out",
                    "observed": server_state(&server),
                }),
            });
        }
        Ok(server)
    }

    async fn prepare_action(&self, action: &Action) -> Result<Prepared, Report> {
        let what = What::of(action)?;
        if let What::Service {
            host,
            binary,
            change,
        } = &what
        {
            let service = self.service(host, binary).await?;
            let observed = service_state(&service);
            let wanted = match change {
                ServiceChange::Disable(_) => observed["status"] == "disabled",
                ServiceChange::Enable => observed["status"] == "enabled",
                ServiceChange::ForceDown => observed["forced_down"] == true,
            };
            let requests = if wanted {
                vec![]
            } else {
                let body = match change {
                    ServiceChange::Disable(Some(reason)) => {
                        json!({"status": "disabled", "disabled_reason": reason})
                    }
                    ServiceChange::Disable(None) => json!({"status": "disabled"}),
                    ServiceChange::Enable => json!({"status": "enabled"}),
                    ServiceChange::ForceDown => json!({"forced_down": true}),
                };
                vec![self.service_request(&service, body)?]
            };
            return Ok(Prepared { observed, requests });
        }
        let server = self.target_server(action).await?;
        let mut observed = server_state(&server);
        let id = observed["id"].as_str().unwrap_or_default().to_string();
        let action_path = format!("/servers/{id}/action");
        let post = |body: Value| vec![self.request("POST", &action_path, Some(body))];
        let requests = match &what {
            What::Reboot { hard } => {
                post(json!({"reboot": {"type": if *hard { "HARD" } else { "SOFT" }}}))
            }
            What::Stop if observed["status"] == "SHUTOFF" => vec![],
            What::Stop => post(json!({"os-stop": null})),
            What::Start if observed["status"] == "ACTIVE" => vec![],
            What::Start => post(json!({"os-start": null})),
            What::Lock { .. } if observed["locked"] == true => vec![],
            What::Lock { reason: Some(r) } if self.microversion >= Microversion(2, 73) => {
                post(json!({"lock": {"locked_reason": r}}))
            }
            What::Lock { .. } => post(json!({"lock": null})),
            What::Unlock if observed["locked"] == false => vec![],
            What::Unlock => post(json!({"unlock": null})),
            What::LiveMigrate { host }
                if host.is_some() && observed["host"].as_str() == host.as_deref() =>
            {
                vec![]
            }
            What::LiveMigrate { host } => {
                let body = if self.microversion >= Microversion(2, 25) {
                    json!({"os-migrateLive": {"host": host, "block_migration": "auto"}})
                } else {
                    json!({"os-migrateLive": {"host": host, "block_migration": false, "disk_over_commit": false}})
                };
                post(body)
            }
            What::Evacuate { host } => {
                let Some(source) = observed["host"].as_str().map(str::to_string) else {
                    return Err(Report::new(
                        Outcome::Refused,
                        format!(
                            "server {id}'s host is not visible: evacuating needs the admin role"
                        ),
                    ));
                };
                if host.as_deref() == Some(source.as_str()) {
                    return Ok(Prepared {
                        observed,
                        requests: vec![],
                    });
                }
                let service = self.service(&source, "nova-compute").await?;
                let state = service_state(&service);
                observed["source_service"] = state.clone();
                if state["status"] != "disabled" && state["forced_down"] != true {
                    return Err(Report {
                        outcome: Outcome::Refused,
                        detail: json!({
                            "message": format!("nova-compute on {source} is neither disabled nor forced down: not evacuating a server from a host that may still run it"),
                            "rule": "source-host-up",
                            "observed": observed,
                        }),
                    });
                }
                let mut body = Map::new();
                if let Some(h) = host {
                    body.insert("host".into(), json!(h));
                }
                if self.microversion < Microversion(2, 14) {
                    body.insert("onSharedStorage".into(), json!(false));
                }
                post(json!({ "evacuate": body }))
            }
            What::Service { .. } => vec![],
        };
        Ok(Prepared { observed, requests })
    }

    async fn execute_action(
        &self,
        action: &Action,
        prepared: Prepared,
        dry_run: bool,
        deadline: Instant,
    ) -> Report {
        let what = match What::of(action) {
            Ok(w) => w,
            Err(r) => return r,
        };
        if dry_run {
            return Report {
                outcome: Outcome::DryRun,
                detail: json!({
                    "message": "Nova has no dry run: the request is recorded, not sent",
                    "requests": prepared.requests,
                    "observed": prepared.observed,
                }),
            };
        }
        let started = Instant::now();
        let mut sent = Vec::new();
        for request in &prepared.requests {
            match self
                .send(&what, request, &prepared.observed, deadline)
                .await
            {
                Ok(a) => sent.push(json!({"status": a.status, "request_id": a.request_id})),
                Err(report) => return report,
            }
        }
        let mut report = self.wait(&what, action, &prepared.observed, deadline).await;
        if let Value::Object(m) = &mut report.detail {
            m.insert("responses".into(), Value::Array(sent));
            m.insert(
                "elapsed_secs".into(),
                json!(started.elapsed().as_secs_f64()),
            );
        }
        report
    }

    /// Sends one request; transient failures (5xx, transport) are retried with backoff
    /// within the deadline, but a non-idempotent request only after reading the target
    /// shows it did not take effect.
    async fn send(
        &self,
        what: &What,
        request: &Request,
        before: &Value,
        deadline: Instant,
    ) -> Result<Answer, Report> {
        let mut backoff = Duration::from_millis(500);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Report::new(
                    Outcome::TimedOut,
                    format!(
                        "{} {}: not sent before the deadline",
                        request.method, request.path
                    ),
                ));
            }
            let result = self
                .call(
                    &request.method,
                    &request.path,
                    &[],
                    request.body.as_ref(),
                    self.settings.timeout.min(left),
                )
                .await;
            let problem = match result {
                Ok(a) if a.ok() => return Ok(a),
                Ok(a) if a.status == 403 || a.status == 409 => {
                    return Err(Report {
                        outcome: Outcome::Refused,
                        detail: json!({"status": a.status, "message": a.message(), "request_id": a.request_id}),
                    })
                }
                Ok(a) if a.status < 500 => {
                    return Err(Report {
                        outcome: Outcome::Failed,
                        detail: json!({"status": a.status, "message": a.message(), "request_id": a.request_id}),
                    })
                }
                Ok(a) => a.describe(),
                Err(e) => e,
            };
            warn!(method = %request.method, path = %request.path, "openstack request failed: {problem}");
            if !what.idempotent() {
                // The request may have been carried out: look before sending it again.
                match self.current(what, before).await {
                    Ok(now) if took_effect(what, before, &now) => {
                        return Ok(Answer { status: 0, body: Value::Null, request_id: None });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return Err(Report::new(
                            Outcome::Failed,
                            format!("{problem}; the target could not be read again ({e}), so the request was not resent"),
                        ))
                    }
                }
            }
            if Instant::now() + backoff >= deadline {
                return Err(Report::new(Outcome::Failed, problem));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(8));
        }
    }

    /// The target's state now (a server's or a service's summary).
    async fn current(&self, what: &What, before: &Value) -> Result<Value, String> {
        match what {
            What::Service { host, binary, .. } => self
                .service(host, binary)
                .await
                .map(|s| service_state(&s))
                .map_err(|r| r.detail.to_string()),
            _ => self
                .find_server(before["id"].as_str().unwrap_or_default())
                .await
                .map_err(|(_, e)| e)?
                .map(|s| server_state(&s))
                .ok_or_else(|| "the server is gone".to_string()),
        }
    }

    /// Polls the target until the action's effect shows, it fails, or the deadline.
    async fn wait(
        &self,
        what: &What,
        action: &Action,
        before: &Value,
        deadline: Instant,
    ) -> Report {
        let mut every = Duration::from_millis(200);
        let mut last = before.clone();
        let mut last_error: Option<String>;
        // Since when the server has been idle on its old host (see `Progress::Unmoved`).
        let mut unmoved_since: Option<Instant> = None;
        loop {
            let now = self.current(what, before).await;
            match now {
                Ok(now) => {
                    last_error = None;
                    match progress(what, before, &now) {
                        Progress::Done(message) => {
                            return Report {
                                outcome: Outcome::Done,
                                detail: json!({"message": message, "observed": now}),
                            }
                        }
                        Progress::Failed(message) => {
                            return Report {
                                outcome: Outcome::Failed,
                                detail: json!({"message": message, "observed": now}),
                            }
                        }
                        Progress::Unmoved(message) => {
                            let since = *unmoved_since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= UNMOVED_FOR {
                                return Report {
                                    outcome: Outcome::Failed,
                                    detail: json!({"message": message, "observed": now}),
                                };
                            }
                            last = now;
                        }
                        Progress::Pending => {
                            unmoved_since = None;
                            last = now;
                        }
                    }
                }
                Err(e) => last_error = Some(e),
            }
            if Instant::now() + every >= deadline {
                return Report {
                    outcome: Outcome::TimedOut,
                    detail: json!({
                        "message": format!("{}: the effect was not observed before the deadline", action.kind),
                        "observed": last,
                        "last_error": last_error,
                    }),
                };
            }
            tokio::time::sleep(every).await;
            every = (every * 3 / 2).min(Duration::from_secs(3));
        }
    }
}

/// What an action asks for, from its kind and params.
#[derive(Debug, Clone, PartialEq)]
enum What {
    Reboot {
        hard: bool,
    },
    Stop,
    Start,
    Lock {
        reason: Option<String>,
    },
    Unlock,
    LiveMigrate {
        host: Option<String>,
    },
    Evacuate {
        host: Option<String>,
    },
    Service {
        host: String,
        binary: String,
        change: ServiceChange,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum ServiceChange {
    Disable(Option<String>),
    Enable,
    ForceDown,
}

impl What {
    fn of(action: &Action) -> Result<What, Report> {
        let param = |k: &str| {
            action
                .params
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let service = |change| {
            let t =
                |k: &str| {
                    action.target.get(k).cloned().ok_or_else(|| {
                        Report::new(Outcome::Failed, format!("target.{k} is missing"))
                    })
                };
            Ok(What::Service {
                host: t("host")?,
                binary: t("binary")?,
                change,
            })
        };
        match action.kind.as_str() {
            "openstack.server_reboot" => Ok(What::Reboot {
                hard: param("type").as_deref() == Some("hard"),
            }),
            "openstack.server_stop" => Ok(What::Stop),
            "openstack.server_start" => Ok(What::Start),
            "openstack.server_lock" => Ok(What::Lock {
                reason: param("reason"),
            }),
            "openstack.server_unlock" => Ok(What::Unlock),
            "openstack.live_migrate" => Ok(What::LiveMigrate {
                host: param("host"),
            }),
            "openstack.evacuate" => Ok(What::Evacuate {
                host: param("host"),
            }),
            "openstack.service_disable" => service(ServiceChange::Disable(param("reason"))),
            "openstack.service_enable" => service(ServiceChange::Enable),
            "openstack.service_force_down" => service(ServiceChange::ForceDown),
            other => Err(Report::new(
                Outcome::Failed,
                format!("{other}: not an OpenStack action"),
            )),
        }
    }

    /// Whether sending the request twice does no more than sending it once.
    fn idempotent(&self) -> bool {
        matches!(
            self,
            What::Lock { .. } | What::Unlock | What::Service { .. }
        )
    }
}

enum Progress {
    Done(String),
    Pending,
    Failed(String),
    /// A migration's server idle on its old host: Nova did not move it, or has not yet
    /// recorded the move (a real Nova clears the task a moment before it writes the
    /// new host), so it counts as failed only once it has lasted [`UNMOVED_FOR`].
    Unmoved(String),
}

/// How long a migrated server may sit idle on its old host before the move is taken
/// to have failed: far longer than Nova's gap between the two writes, far shorter
/// than an action's timeout.
const UNMOVED_FOR: Duration = Duration::from_secs(5);

/// Whether a server or service in state `now` shows the action's effect, started or done.
fn took_effect(what: &What, before: &Value, now: &Value) -> bool {
    match what {
        What::Service { .. } => false,
        _ => {
            !now["task_state"].is_null()
                || now["updated"] != before["updated"]
                || now["host"] != before["host"]
        }
    }
}

/// How far the action got, from the target's state before and now.
fn progress(what: &What, before: &Value, now: &Value) -> Progress {
    let status = now["status"].as_str().unwrap_or_default();
    let idle = now["task_state"].is_null();
    if status == "ERROR" && !matches!(what, What::Service { .. }) {
        return Progress::Failed(format!(
            "the server went to ERROR (fault: {})",
            now["fault"]
        ));
    }
    let done = |ok: bool, msg: &str| {
        if ok {
            Progress::Done(msg.into())
        } else {
            Progress::Pending
        }
    };
    match what {
        What::Reboot { .. } => done(idle && status == "ACTIVE", "rebooted: ACTIVE, no task"),
        What::Stop => done(idle && status == "SHUTOFF", "stopped: SHUTOFF"),
        What::Start => done(idle && status == "ACTIVE", "started: ACTIVE"),
        What::Lock { .. } => done(now["locked"] == true, "locked"),
        What::Unlock => done(now["locked"] == false, "unlocked"),
        What::LiveMigrate { host } | What::Evacuate { host } => {
            if !idle {
                return Progress::Pending;
            }
            let moved = now["host"] != before["host"];
            if !moved {
                return Progress::Unmoved(format!(
                    "the server is still on {} with no task: Nova did not move it",
                    before["host"]
                ));
            }
            if let Some(h) = host {
                if now["host"].as_str() != Some(h.as_str()) {
                    return Progress::Failed(format!(
                        "the server moved to {}, not {h}",
                        now["host"]
                    ));
                }
            }
            let evacuated = matches!(what, What::Evacuate { .. });
            // Since 2.95 an evacuated server is left stopped on its new host.
            let settled = status == "ACTIVE" || (evacuated && status == "SHUTOFF");
            done(
                settled,
                &format!("moved from {} to {}", before["host"], now["host"]),
            )
        }
        What::Service { change, .. } => match change {
            ServiceChange::Disable(_) => done(now["status"] == "disabled", "disabled"),
            ServiceChange::Enable => done(now["status"] == "enabled", "enabled"),
            ServiceChange::ForceDown => done(now["forced_down"] == true, "forced down"),
        },
    }
}

/// The parts of a server an action depends on (and the audit log keeps).
fn server_state(s: &Value) -> Value {
    json!({
        "id": s["id"],
        "name": s["name"],
        "status": s["status"],
        "task_state": s["OS-EXT-STS:task_state"],
        "vm_state": s["OS-EXT-STS:vm_state"],
        "power_state": s["OS-EXT-STS:power_state"],
        "host": s["OS-EXT-SRV-ATTR:host"],
        "locked": s["locked"],
        "updated": s["updated"],
    })
}

/// The parts of a compute service an action depends on.
fn service_state(s: &Value) -> Value {
    json!({
        "id": s["id"],
        "host": s["host"],
        "binary": s["binary"],
        "status": s["status"],
        "state": s["state"],
        "forced_down": s["forced_down"],
        "disabled_reason": s["disabled_reason"],
    })
}

/// The report of a read that failed during `prepare`: a 403 is a refusal (policy).
fn read_refusal((status, message): (u16, String)) -> Report {
    Report {
        outcome: if status == 403 {
            Outcome::Refused
        } else {
            Outcome::Failed
        },
        detail: json!({"status": status, "message": message}),
    }
}

fn is_uuid(s: &str) -> bool {
    let hex = s.chars().filter(|c| c.is_ascii_hexdigit()).count();
    let dashes = s.chars().filter(|&c| c == '-').count();
    hex == 32 && hex + dashes == s.len() && (dashes == 0 || dashes == 4)
}

fn method_of(m: &str) -> reqwest::Method {
    reqwest::Method::from_bytes(m.as_bytes()).unwrap_or(reqwest::Method::GET)
}

/// A transport error's text, with the secret-free part kept (reqwest names the URL).
fn transport(e: &str) -> String {
    e.chars().take(300).collect()
}

/// Asks Keystone for a token (v3: password or application credential) and finds the
/// compute endpoint in its catalog.
async fn authenticate(
    http: &openstack::session::Session,
    cloud: &cloud::Cloud,
    timeout: Duration,
) -> Result<Token, String> {
    let body = auth_body(&cloud.method);
    let url = reqwest::Url::parse(&format!("{}/auth/tokens", cloud.auth_url))
        .map_err(|e| format!("auth_url: {e}"))?;
    let resp = http
        .client()
        .request(reqwest::Method::POST, url)
        .json(&body)
        .timeout(timeout)
        .send_unchecked()
        .await
        .map_err(|e| format!("keystone: {}", transport(&e.to_string())))?;
    let (answer, token) = answer!(resp);
    if !answer.ok() {
        return Err(format!(
            "keystone refused the credentials: {}",
            answer.describe()
        ));
    }
    let token = token.ok_or("keystone answered without X-Subject-Token")?;
    let t = &answer.body["token"];
    let expires = t["expires_at"]
        .as_str()
        .and_then(|s| humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok());
    let compute = match &cloud.compute_override {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => compute_endpoint(&t["catalog"], cloud.region.as_deref(), &cloud.interface)?,
    };
    Ok(Token {
        value: token,
        expires,
        compute,
    })
}

fn auth_body(method: &cloud::Method) -> Value {
    use cloud::{Domain, Ident, Method};
    let domain = |d: &Domain| match d {
        Domain::Id(id) => json!({"id": id}),
        Domain::Name(n) => json!({"name": n}),
    };
    let ident = |i: &Ident| match i {
        Ident::Id(id) => json!({"id": id}),
        Ident::Name(n, d) => json!({"name": n, "domain": domain(d)}),
    };
    match method {
        Method::Password {
            user,
            password,
            project,
        } => {
            let mut user = ident(user);
            user["password"] = json!(password.0);
            let mut auth =
                json!({"identity": {"methods": ["password"], "password": {"user": user}}});
            if let Some(p) = project {
                auth["scope"] = json!({"project": ident(p)});
            }
            json!({ "auth": auth })
        }
        Method::ApplicationCredential {
            credential,
            user,
            secret,
        } => {
            let mut cred = match credential {
                Ident::Id(id) => json!({"id": id}),
                Ident::Name(n, _) => json!({"name": n}),
            };
            if let (Ident::Name(..), Some(u)) = (credential, user) {
                cred["user"] = ident(u);
            }
            cred["secret"] = json!(secret.0);
            json!({"auth": {"identity": {"methods": ["application_credential"], "application_credential": cred}}})
        }
    }
}

/// The compute endpoint of a Keystone catalog for the region and interface.
fn compute_endpoint(
    catalog: &Value,
    region: Option<&str>,
    interface: &str,
) -> Result<String, String> {
    let entries = catalog
        .as_array()
        .ok_or("the token has no service catalog (is it scoped to a project?)")?;
    let compute = entries
        .iter()
        .find(|e| e["type"] == "compute")
        .ok_or("the catalog has no compute service")?;
    let endpoint = compute["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| {
            e["interface"] == interface
                && region.is_none_or(|r| e["region_id"] == r || e["region"] == r)
        })
        .ok_or_else(|| {
            format!(
                "the catalog has no {interface} compute endpoint{}",
                region
                    .map(|r| format!(" in region {r}"))
                    .unwrap_or_default()
            )
        })?;
    let url = endpoint["url"]
        .as_str()
        .ok_or("the compute endpoint has no URL")?;
    Ok(url.trim_end_matches('/').to_string())
}

/// The compute API's microversion range, from its version document (the endpoint's
/// own, or its parent's for endpoints that end in a project id).
async fn versions(
    http: &openstack::session::Session,
    compute: &str,
    timeout: Duration,
) -> Result<(Microversion, Microversion), String> {
    let mut candidates = vec![format!("{compute}/")];
    if let Some(i) = compute.find("/v2.1") {
        candidates.push(format!("{}/", &compute[..i + 5]));
    }
    let mut last = String::from("no version document");
    for url in candidates {
        let parsed = reqwest::Url::parse(&url).map_err(|e| format!("{url}: {e}"))?;
        let resp = match http
            .client()
            .request(reqwest::Method::GET, parsed)
            .timeout(timeout)
            .send_unchecked()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                last = format!("{url}: {}", transport(&e.to_string()));
                continue;
            }
        };
        let (a, _) = answer!(resp);
        let v = &a.body["version"];
        let min = v["min_version"].as_str().and_then(Microversion::parse);
        let max = v["version"].as_str().and_then(Microversion::parse);
        match (min, max) {
            (Some(min), Some(max)) => return Ok((min, max)),
            _ if a.ok() && v.is_object() => {
                return Err(format!("{url}: no microversions (a v2.0 endpoint?)"))
            }
            _ => last = format!("{url}: {}", a.describe()),
        }
    }
    Err(last)
}

impl Effector for OpenStack {
    fn prepare<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<Prepared, Report>> {
        Box::pin(self.prepare_action(action))
    }

    fn execute<'a>(
        &'a self,
        action: &'a Action,
        prepared: Prepared,
        dry_run: bool,
        deadline: Instant,
    ) -> BoxFuture<'a, Report> {
        Box::pin(self.execute_action(action, prepared, dry_run, deadline))
    }

    fn observe<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<Value, String>> {
        Box::pin(async move {
            let what = What::of(action).map_err(|r| r.detail.to_string())?;
            match &what {
                What::Service { .. } => self.current(&what, &Value::Null).await,
                _ => {
                    let name = action
                        .target
                        .get("server")
                        .map(String::as_str)
                        .unwrap_or_default();
                    Ok(match self.server(name).await? {
                        Some(s) => server_state(&s),
                        None => json!({"exists": false}),
                    })
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_microversion_is_the_highest_both_sides_know() {
        let v = |s| Microversion::parse(s).unwrap();
        assert_eq!(
            negotiate(v("2.1"), v("2.104"), v("2.100")),
            Some(v("2.100"))
        );
        assert_eq!(negotiate(v("2.1"), v("2.79"), v("2.100")), Some(v("2.79")));
        assert_eq!(negotiate(v("2.101"), v("2.110"), v("2.100")), None);
        // Numeric, not textual: 2.9 is older than 2.53.
        assert!(v("2.9") < v("2.53"));
        assert_eq!(Microversion::parse("2"), None);
    }

    #[test]
    fn a_migration_idle_on_its_host_is_unmoved_and_one_on_another_is_done() {
        let before = json!({"host": "c1", "status": "ACTIVE", "task_state": null});
        let what = What::LiveMigrate { host: None };
        let now =
            |host: &str, task: Value| json!({"host": host, "status": "ACTIVE", "task_state": task});
        assert!(matches!(
            progress(&what, &before, &now("c1", json!("migrating"))),
            Progress::Pending
        ));
        // Failed only once it lasts: Nova clears the task a moment before it writes
        // the new host.
        assert!(matches!(
            progress(&what, &before, &now("c1", Value::Null)),
            Progress::Unmoved(_)
        ));
        assert!(matches!(
            progress(&what, &before, &now("c2", Value::Null)),
            Progress::Done(_)
        ));
        let to_c3 = What::LiveMigrate {
            host: Some("c3".into()),
        };
        assert!(matches!(
            progress(&to_c3, &before, &now("c2", Value::Null)),
            Progress::Failed(_)
        ));
        let error = json!({"host": "c1", "status": "ERROR", "task_state": null});
        assert!(matches!(
            progress(&What::Reboot { hard: false }, &before, &error),
            Progress::Failed(_)
        ));
    }

    #[test]
    fn a_request_took_effect_when_the_server_has_a_task_or_changed() {
        let before = json!({"task_state": null, "updated": "t1", "host": "c1"});
        let what = What::Reboot { hard: true };
        assert!(!took_effect(&what, &before, &before));
        assert!(took_effect(
            &what,
            &before,
            &json!({"task_state": "rebooting_hard", "updated": "t1", "host": "c1"})
        ));
        assert!(took_effect(
            &what,
            &before,
            &json!({"task_state": null, "updated": "t2", "host": "c1"})
        ));
    }

    #[test]
    fn novas_error_message_is_found_in_its_wrapper() {
        let a = Answer {
            status: 409,
            body: json!({"conflictingRequest": {"code": 409, "message": "Instance is locked"}}),
            request_id: None,
        };
        assert_eq!(a.message(), "Instance is locked");
        assert_eq!(a.describe(), "409 Conflict: Instance is locked");
        assert!(is_uuid("9f1c2d3e-4b5a-6789-abcd-ef0123456789"));
        assert!(!is_uuid("web-1") && !is_uuid("detail"));
    }

    #[test]
    fn the_token_request_carries_the_secret_only_in_its_body() {
        let body = auth_body(&cloud::Method::ApplicationCredential {
            credential: cloud::Ident::Id("ac".into()),
            user: None,
            secret: Secret("s".into()),
        });
        assert_eq!(
            body,
            json!({"auth": {"identity": {"methods": ["application_credential"],
                "application_credential": {"id": "ac", "secret": "s"}}}})
        );
        let catalog = json!([{"type": "compute", "endpoints": [
            {"interface": "internal", "region_id": "R1", "url": "http://int/v2.1"},
            {"interface": "public", "region_id": "R2", "url": "http://pub2/v2.1/"},
            {"interface": "public", "region_id": "R1", "url": "http://pub1/v2.1"}]}]);
        assert_eq!(
            compute_endpoint(&catalog, Some("R2"), "public").unwrap(),
            "http://pub2/v2.1"
        );
        assert_eq!(
            compute_endpoint(&catalog, Some("R1"), "internal").unwrap(),
            "http://int/v2.1"
        );
        assert!(compute_endpoint(&catalog, Some("R3"), "public")
            .unwrap_err()
            .contains("region R3"));
    }
}
