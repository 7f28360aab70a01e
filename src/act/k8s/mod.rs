//! Kubernetes: reads for playbooks and the effector for `k8s.*` actions, through
//! `kube::Client` (kubeconfig, context or in-cluster service account). Every write is
//! sent with `dryRun=All` in dry-run mode, so the API server validates it (RBAC,
//! admission, PodDisruptionBudgets) without persisting.
//!
//! - this module: [`Settings`], the client ([`Kube::connect`], [`Kube::from_client`]),
//!   one bounded call, and the reads ([`Kube::get`], [`Kube::list`]);
//! - [`api`]: paths, name checks, the API's `Status` answers, credential scrubbing;
//! - `actions`: what each action reads and sends, retries, verification, outcomes.
//!
//! `docs/kubernetes.md` describes the behaviour; `tests/k8s.rs` pins it down against
//! the fake API server in `tests/common/fake_kube.rs`.

mod actions;
pub mod api;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use super::effect::ActError;
use api::{Answer, ApiStatus};

/// `[kubernetes]`: where the cluster's credentials come from, and the limits of calls.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// A kubeconfig file; without it `KUBECONFIG`, `~/.kube/config`, then the in-cluster
    /// service account are tried, as kubectl does.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use instead of its current one.
    pub context: Option<String>,
    /// Limit of one API call.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub timeout: Duration,
    /// The most objects one `k8s::list` returns; a longer answer is an error.
    pub max_list_items: usize,
    /// Default time limit of one action (a drain, an eviction retried under a PDB);
    /// a step's `params.timeout` overrides it.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub action_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            kubeconfig: None,
            context: None,
            timeout: Duration::from_secs(10),
            max_list_items: 1000,
            action_timeout: Duration::from_secs(300),
        }
    }
}

/// A connected Kubernetes client.
pub struct Kube {
    settings: Settings,
    client: kube::Client,
}

/// Why one call got no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// No answer within the call's time limit (the request may have been applied).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed (the request may have been applied).
    #[error("{0}")]
    Transport(String),
}

fn config_error(message: impl Into<String>) -> ActError {
    ActError::Config {
        layer: "kubernetes",
        message: message.into(),
    }
}

/// The kubeconfig files kube would read without `settings.kubeconfig`, for scrubbing.
fn default_kubeconfigs() -> Vec<PathBuf> {
    match std::env::var_os("KUBECONFIG") {
        Some(v) if !v.is_empty() => std::env::split_paths(&v).collect(),
        _ => std::env::var_os("HOME")
            .map(|h| vec![Path::new(&h).join(".kube").join("config")])
            .unwrap_or_default(),
    }
}

impl Kube {
    /// Loads the credentials the settings name and builds the client: `kubeconfig`, else
    /// `KUBECONFIG` or `~/.kube/config`, else the in-cluster service account (as kubectl
    /// and kube's `Config::infer` do). Nothing is sent yet: a cluster that is down does
    /// not stop the agent from starting.
    pub async fn connect(settings: &Settings) -> Result<Kube, ActError> {
        let options = kube::config::KubeConfigOptions {
            context: settings.context.clone(),
            ..Default::default()
        };
        let files = match &settings.kubeconfig {
            Some(p) => vec![p.clone()],
            None => default_kubeconfigs(),
        };
        // Errors of the loaders may quote the file: scrub its credentials out of them.
        let secrets: Vec<String> = files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .flat_map(|t| api::secrets_in(&t))
            .collect();
        let scrub = |e: &dyn std::fmt::Display| api::redact(&e.to_string(), &secrets);
        let mut config = match &settings.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| config_error(format!("{}: {}", path.display(), scrub(&e))))?;
                kube::Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| config_error(format!("{}: {}", path.display(), scrub(&e))))?
            }
            None => match kube::Config::from_kubeconfig(&options).await {
                Ok(c) => c,
                // A context was asked for: only a kubeconfig has contexts.
                Err(e) if settings.context.is_some() => {
                    return Err(config_error(format!("kubeconfig: {}", scrub(&e))))
                }
                Err(file_err) => kube::Config::incluster().map_err(|in_cluster| {
                    config_error(format!(
                        "no kubeconfig ({}) and not in a cluster ({})",
                        scrub(&file_err),
                        scrub(&in_cluster)
                    ))
                })?,
            },
        };
        config.connect_timeout = Some(settings.timeout);
        config.read_timeout = Some(settings.timeout);
        config.write_timeout = Some(settings.timeout);
        config.reset_reader_on_write = true;
        // Retries are decided here (a PodDisruptionBudget's 429 is an answer, not
        // congestion), so kube's own retry layer is off.
        config.default_retry = false;
        let client = kube::Client::try_from(config)
            .map_err(|e| config_error(format!("client: {}", scrub(&e))))?;
        Ok(Kube::from_client(client, settings.clone()))
    }

    /// A client around an existing `kube::Client` (tests hand one over a tower service).
    pub fn from_client(client: kube::Client, settings: Settings) -> Kube {
        Kube { settings, client }
    }

    /// The settings this client was built with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Sends one request and reads the answer, within `settings.timeout` and `until`.
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &std::collections::BTreeMap<String, String>,
        body: Option<&Value>,
        until: Instant,
    ) -> Result<Answer, CallError> {
        let limit = (Instant::now() + self.settings.timeout).min(until);
        let mut builder = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("Accept", "application/json");
        for (k, v) in headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let bytes = match body {
            Some(b) => {
                if !headers
                    .keys()
                    .any(|k| k.eq_ignore_ascii_case("content-type"))
                {
                    builder = builder.header("Content-Type", "application/json");
                }
                serde_json::to_vec(b).unwrap_or_default()
            }
            None => Vec::new(),
        };
        let request = builder
            .body(kube::client::Body::from(bytes))
            .map_err(|e| CallError::Transport(format!("request: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .send(request)
                .await
                .map_err(|e| CallError::Transport(e.to_string()))?;
            let code = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect_bytes()
                .await
                .map_err(|e| CallError::Transport(e.to_string()))?;
            Ok(Answer::new(code, &bytes))
        };
        let budget = limit.saturating_duration_since(Instant::now());
        match tokio::time::timeout_at(limit, exchange).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout(budget)),
        }
    }

    /// A read, retried while it fails transiently, within `settings.timeout`.
    pub(crate) async fn read(&self, path: &str) -> Result<Answer, ReadError> {
        let until = Instant::now() + self.settings.timeout;
        let mut pause = Duration::from_millis(100);
        loop {
            let last = match self
                .call("GET", path, &Default::default(), None, until)
                .await
            {
                Ok(a) if a.is_success() || a.code == 404 => return Ok(a),
                Ok(a) if a.status().is_transient() => ReadError::Api(a.status()),
                Ok(a) => return Err(ReadError::Api(a.status())),
                Err(e) => ReadError::Call(e),
            };
            if Instant::now() + pause >= until {
                return Err(last);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// One object of a kind (`pods`, `deployments`, `statefulsets`, `daemonsets`,
    /// `nodes`, `events`, `poddisruptionbudgets`), or `None` when it does not exist.
    pub async fn get(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, String> {
        let what = format!("k8s get {kind} {namespace}/{name}");
        let r = api::resource(kind).ok_or_else(|| format!("{what}: unknown kind"))?;
        api::check_name("name", name).map_err(|e| format!("{what}: {e}"))?;
        if r.namespaced {
            api::check_name("namespace", namespace).map_err(|e| format!("{what}: {e}"))?;
        }
        let a = self
            .read(&api::object_path(r, namespace, name))
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        Ok((a.code != 404).then_some(a.body))
    }

    /// Objects of a kind in a namespace (`""`: all) matching a label selector, as the
    /// API returns them, page by page; more than `max_list_items` is an error.
    pub async fn list(
        &self,
        kind: &str,
        namespace: &str,
        selector: &str,
    ) -> Result<Vec<Value>, String> {
        let what = format!("k8s list {kind} in {namespace:?} matching {selector:?}");
        let r = api::resource(kind).ok_or_else(|| format!("{what}: unknown kind"))?;
        if !namespace.is_empty() {
            api::check_name("namespace", namespace).map_err(|e| format!("{what}: {e}"))?;
        }
        let mut query = Vec::new();
        if !selector.is_empty() {
            query.push(format!("labelSelector={}", api::encode(selector)));
        }
        self.list_path(&api::collection_path(r, namespace), &query)
            .await
            .map_err(|e| format!("{what}: {e}"))
    }

    /// Every item of a collection, following `continue` tokens, capped at
    /// `max_list_items`.
    pub(crate) async fn list_path(
        &self,
        path: &str,
        query: &[String],
    ) -> Result<Vec<Value>, String> {
        let max = self.settings.max_list_items;
        // One more than the cap in a page tells a full answer from an overlong one.
        let page = max.saturating_add(1).clamp(1, 500);
        let mut items = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut q = query.to_vec();
            q.push(format!("limit={page}"));
            if let Some(c) = &next {
                q.push(format!("continue={}", api::encode(c)));
            }
            let a = self
                .read(&format!("{path}?{}", q.join("&")))
                .await
                .map_err(|e| e.to_string())?;
            if !a.is_success() {
                return Err(a.status().line());
            }
            match a.body["items"].as_array() {
                Some(page_items) => items.extend(page_items.iter().cloned()),
                None => return Err("the answer has no items".into()),
            }
            if items.len() > max {
                return Err(format!(
                    "more than {max} objects (kubernetes.max_list_items): narrow the namespace or selector"
                ));
            }
            match a.body["metadata"]["continue"].as_str() {
                Some(c) if !c.is_empty() => next = Some(c.to_string()),
                _ => return Ok(items),
            }
        }
    }
}

/// Why a read failed: the API's answer, or none.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReadError {
    /// The API answered with an error status.
    #[error("{}", .0.line())]
    Api(ApiStatus),
    /// No answer.
    #[error("{0}")]
    Call(CallError),
}
