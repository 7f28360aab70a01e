//! Notifications and alarms. `notify.alertmanager` posts an alert to Alertmanager's API
//! v2 and `notify.webhook` posts JSON to a URL, both as plan steps (audited like every
//! action, recorded only in dry-run). [`Alarms`] turns every anomaly that opens into a
//! firing Alertmanager alert, re-sent while it is open and resolved when it closes, on
//! a task of its own so that Alertmanager being down never holds detection up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::effect::{Effector, Outcome, Prepared, Report, Request};
use crate::anomaly::Anomaly;
use crate::metrics::Metrics;
use crate::playbook::Action;
use crate::source::BoxFuture;

/// `[notify]`: where alarms go, and how hard a notification is tried.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// Alertmanager's base URL, e.g. `http://127.0.0.1:9093` (absent: no alarms).
    pub alertmanager_url: Option<String>,
    /// Base of the `generatorURL` of alerts (homeostat's own address as operators reach it).
    pub generator_url: Option<String>,
    /// Limit of one HTTP request.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub timeout: Duration,
    /// Retries of a failed request (with backoff) before a notification fails.
    pub retries: u32,
    /// How often a firing alarm is re-sent (Alertmanager resolves what it stops hearing).
    #[serde(with = "crate::config::humantime_serde_str")]
    pub resend_every: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            alertmanager_url: None,
            generator_url: None,
            timeout: Duration::from_secs(10),
            retries: 3,
            resend_every: Duration::from_secs(60),
        }
    }
}

/// How long a one-off notification stays firing in Alertmanager.
const NOTIFICATION_TTL: Duration = Duration::from_secs(3600);

/// The incident a notification step belongs to: what its alert or body describes.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The anomaly (or alert) being answered.
    pub anomaly: Anomaly,
    /// The playbook.
    pub playbook: String,
    /// The plan, rendered as the audit shows it.
    pub plan: String,
    /// The audit sequence number of the plan record.
    pub plan_seq: Option<u64>,
}

/// Sends notifications.
pub struct Notifier {
    settings: Settings,
    http: reqwest::Client,
}

impl Notifier {
    /// A notifier with these settings.
    pub fn new(settings: Settings) -> Notifier {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .unwrap_or_default();
        Notifier { settings, http }
    }

    /// Whether an Alertmanager is configured.
    pub fn has_alertmanager(&self) -> bool {
        self.settings.alertmanager_url.is_some()
    }

    /// GETs a JSON array from Alertmanager's API v2.
    async fn get_list(&self, path: &str) -> Result<Vec<Value>, String> {
        let base = self
            .settings
            .alertmanager_url
            .as_deref()
            .ok_or("no Alertmanager is configured")?;
        let r = self
            .http
            .get(format!("{base}{path}"))
            .send()
            .await
            .map_err(|e| without_url(&e))?;
        if !r.status().is_success() {
            return Err(format!("{path}: HTTP {}", r.status().as_u16()));
        }
        r.json::<Vec<Value>>()
            .await
            .map_err(|e| format!("{path}: unreadable answer: {}", without_url(&e)))
    }

    /// Alerts firing now (active, neither silenced nor inhibited).
    pub async fn firing_alerts(&self) -> Result<Vec<Value>, String> {
        self.get_list("/api/v2/alerts?active=true&silenced=false&inhibited=false")
            .await
    }

    /// Silences, as Alertmanager lists them (with their `status.state`).
    pub async fn silences(&self) -> Result<Vec<Value>, String> {
        self.get_list("/api/v2/silences").await
    }

    /// Posts a one-off alert about homeostat itself (a breaker that opened) in the
    /// background; a failure is logged, never waited for.
    pub fn spawn_alert(self: &Arc<Self>, alertname: &str, playbook: &str, summary: String) {
        let Some(base) = self.settings.alertmanager_url.clone() else {
            return;
        };
        let now = SystemTime::now();
        let labels = Map::from_iter([
            ("alertname".to_string(), Value::from(alertname)),
            ("playbook".to_string(), playbook.into()),
            ("severity".to_string(), "critical".into()),
        ]);
        let annotations = Map::from_iter([("summary".to_string(), Value::from(summary))]);
        let alert = self.alert(labels, annotations, now, Some(now + NOTIFICATION_TTL));
        let me = self.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + me.timeout();
            let r = me
                .post(&format!("{base}/api/v2/alerts"), &json!([alert]), deadline)
                .await;
            if r.outcome != Outcome::Done {
                warn!(detail = %r.detail, "could not tell Alertmanager");
            }
        });
    }

    /// The time limit of one notification, retries and their backoff included.
    pub fn timeout(&self) -> Duration {
        (self.settings.timeout + Duration::from_secs(4)) * (self.settings.retries + 1)
    }

    /// The request a notification step sends, built from its incident.
    pub fn prepare_in(&self, action: &Action, ctx: &Context) -> Result<Prepared, Report> {
        let observed = Value::Null;
        match action.kind.as_str() {
            "notify.alertmanager" => {
                if self.settings.alertmanager_url.is_none() {
                    return Err(Report::new(
                        Outcome::Failed,
                        "no Alertmanager is configured ([notify] alertmanager_url)",
                    ));
                }
                let alert = self.notification(action, ctx, SystemTime::now());
                Ok(Prepared {
                    observed,
                    requests: vec![Request {
                        method: "POST".into(),
                        path: "/api/v2/alerts".into(),
                        headers: BTreeMap::new(),
                        body: Some(json!([alert])),
                    }],
                })
            }
            "notify.webhook" => {
                let url = action.target.get("url").cloned().unwrap_or_default();
                match reqwest::Url::parse(&url) {
                    Ok(u) if u.scheme() == "http" => {}
                    Ok(u) => {
                        return Err(Report::new(
                            Outcome::Failed,
                            format!(
                                "{url}: scheme {:?} is not http (no TLS client in this build)",
                                u.scheme()
                            ),
                        ))
                    }
                    Err(e) => return Err(Report::new(Outcome::Failed, format!("{url}: {e}"))),
                }
                let a = &ctx.anomaly;
                Ok(Prepared {
                    observed,
                    requests: vec![Request {
                        method: "POST".into(),
                        path: url,
                        headers: BTreeMap::from([(
                            "Content-Type".into(),
                            "application/json".into(),
                        )]),
                        body: Some(json!({
                            "message": action.params.get("message").cloned().unwrap_or(Value::Null),
                            "playbook": ctx.playbook,
                            "plan": ctx.plan,
                            "audit_seq": ctx.plan_seq,
                            "anomaly": a,
                        })),
                    }],
                })
            }
            other => Err(Report::new(
                Outcome::Failed,
                format!("{other} is not a notification"),
            )),
        }
    }

    /// The alert of a `notify.alertmanager` step.
    fn notification(&self, action: &Action, ctx: &Context, now: SystemTime) -> Value {
        let a = &ctx.anomaly;
        let mut labels: Map<String, Value> = a
            .labels
            .0
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        let param = |k: &str| action.params.get(k).and_then(Value::as_str);
        labels.insert(
            "alertname".into(),
            param("alertname").unwrap_or("HomeostatNotification").into(),
        );
        labels.insert(
            "severity".into(),
            param("severity").unwrap_or("warning").into(),
        );
        labels.insert("playbook".into(), ctx.playbook.clone().into());
        labels.insert("anomaly_id".into(), a.id.clone().into());
        if !a.signal.is_empty() {
            labels.insert("signal".into(), a.signal.clone().into());
        }
        let mut annotations = anomaly_annotations(a);
        if let Some(s) = param("summary") {
            annotations.insert("summary".into(), s.into());
        }
        annotations.insert("plan".into(), ctx.plan.clone().into());
        if let Some(seq) = ctx.plan_seq {
            annotations.insert("audit_seq".into(), seq.to_string().into());
        }
        self.alert(labels, annotations, now, Some(now + NOTIFICATION_TTL))
    }

    fn alert(
        &self,
        labels: Map<String, Value>,
        annotations: Map<String, Value>,
        starts: SystemTime,
        ends: Option<SystemTime>,
    ) -> Value {
        let mut alert = json!({
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(starts),
        });
        if let Some(e) = ends {
            alert["endsAt"] = rfc3339(e).into();
        }
        if let Some(g) = &self.settings.generator_url {
            alert["generatorURL"] = g.clone().into();
        }
        alert
    }

    /// Posts `body` to `url`, retrying failures with backoff until `deadline`; the
    /// report carries the last status and message.
    async fn post(&self, url: &str, body: &Value, deadline: Instant) -> Report {
        let mut backoff = Duration::from_millis(500);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = match self.http.post(url).json(body).send().await {
                Ok(r) if r.status().is_success() => {
                    return Report {
                        outcome: Outcome::Done,
                        detail: json!({ "status": r.status().as_u16(), "attempts": attempt }),
                    }
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let text: String = r
                        .text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(512)
                        .collect();
                    // A 4xx is the receiver refusing this body: sending it again won't help.
                    if (400..500).contains(&status) && status != 429 {
                        return Report {
                            outcome: Outcome::Failed,
                            detail: json!({ "status": status, "message": text, "attempts": attempt }),
                        };
                    }
                    json!({ "status": status, "message": text, "attempts": attempt })
                }
                Err(e) => json!({ "message": without_url(&e), "attempts": attempt }),
            };
            if attempt > self.settings.retries as usize || Instant::now() + backoff >= deadline {
                return Report {
                    outcome: Outcome::Failed,
                    detail: last,
                };
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(8));
        }
    }
}

/// A reqwest error's message: the URL it names may carry credentials in its query.
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(u) = e.url() {
        msg = msg.replace(u.as_str(), "<url>");
    }
    msg
}

impl Effector for Notifier {
    fn prepare<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<Prepared, Report>> {
        Box::pin(async move { self.prepare_in(action, &Context::default()) })
    }

    fn execute<'a>(
        &'a self,
        _action: &'a Action,
        prepared: Prepared,
        dry_run: bool,
        deadline: Instant,
    ) -> BoxFuture<'a, Report> {
        Box::pin(async move {
            if dry_run {
                return Report::new(
                    Outcome::DryRun,
                    "recorded only: notifications have no dry run",
                );
            }
            let mut last = Report::new(Outcome::Skipped, "nothing to send");
            for r in &prepared.requests {
                let url = if r.path.starts_with('/') {
                    let base = self
                        .settings
                        .alertmanager_url
                        .as_deref()
                        .unwrap_or_default();
                    format!("{base}{}", r.path)
                } else {
                    r.path.clone()
                };
                last = self
                    .post(&url, r.body.as_ref().unwrap_or(&Value::Null), deadline)
                    .await;
                if last.outcome != Outcome::Done {
                    break;
                }
            }
            last
        })
    }

    fn observe<'a>(&'a self, _action: &'a Action) -> BoxFuture<'a, Result<Value, String>> {
        // A notification has no target to read: whether it arrived is unknowable here.
        Box::pin(async { Err("a notification's delivery cannot be read back".to_string()) })
    }
}

/// What an anomaly's alert annotations say about it.
fn anomaly_annotations(a: &Anomaly) -> Map<String, Value> {
    let mut m = Map::new();
    if a.id.is_empty() {
        return m;
    }
    m.insert(
        "description".into(),
        format!(
            "{} {}: {} (expected {}, band {} to {}), score {:.4}, evidence {}",
            a.signal, a.labels, a.value, a.expected, a.lower, a.upper, a.score, a.evidence
        )
        .into(),
    );
    for (k, v) in [
        ("value", a.value),
        ("expected", a.expected),
        ("lower", a.lower),
        ("upper", a.upper),
        ("score", a.score),
    ] {
        m.insert(k.into(), v.to_string().into());
    }
    m.insert("evidence".into(), a.evidence.clone().into());
    m.insert("anomaly_id".into(), a.id.clone().into());
    // Alertmanager groups by labels; the incident, which changes nothing about the
    // series, is an annotation so an alert's identity stays its series'.
    if !a.incident.is_empty() {
        m.insert("incident".into(), a.incident.clone().into());
    }
    m
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// What the agent tells the alarm task.
#[derive(Debug)]
pub enum AlarmEvent {
    /// An anomaly opened (or was resumed at start): fire its alarm.
    Open {
        /// The anomaly.
        anomaly: Box<Anomaly>,
        /// The `severity` label.
        severity: String,
        /// The sequence number of its `anomaly_opened` (or `anomaly_resumed`) record.
        audit_seq: u64,
        /// Resumed after a restart: the values that opened it are not known any more.
        resumed: bool,
    },
    /// An anomaly closed: resolve its alarm.
    Close {
        /// The anomaly's id.
        id: String,
    },
}

/// The agent's side of the alarm task: never blocks, never fails.
#[derive(Clone)]
pub struct Alarms {
    tx: Option<mpsc::Sender<AlarmEvent>>,
    metrics: Arc<Metrics>,
}

/// Alarm events that may wait for the alarm task; past this, events are dropped and
/// counted (the next re-send still carries every open anomaly the task knows).
const ALARM_QUEUE: usize = 10_000;

impl Alarms {
    /// Starts the alarm task if `[notify] alertmanager_url` is set; otherwise alarms
    /// are a no-op. The task ends when every `Alarms` handle is dropped.
    pub fn start(settings: &Settings, metrics: Arc<Metrics>) -> Alarms {
        let Some(url) = settings.alertmanager_url.clone() else {
            return Alarms { tx: None, metrics };
        };
        let (tx, rx) = mpsc::channel(ALARM_QUEUE);
        let notifier = Notifier::new(settings.clone());
        tokio::spawn(alarm_loop(
            notifier,
            format!("{url}/api/v2/alerts"),
            settings.resend_every,
            rx,
            metrics.clone(),
        ));
        Alarms {
            tx: Some(tx),
            metrics,
        }
    }

    /// Hands an event to the alarm task without waiting.
    pub fn send(&self, event: AlarmEvent) {
        if let Some(tx) = &self.tx {
            if tx.try_send(event).is_err() {
                self.metrics.alarm_dropped();
            }
        }
    }
}

/// The most alarm events put in one request to Alertmanager.
const BATCH: usize = 1000;

/// The alarm task's memory, borrowed while it takes in events.
struct State<'a> {
    firing: &'a mut BTreeMap<String, Firing>,
    resolved: &'a mut Vec<Value>,
    metrics: &'a Metrics,
}

impl State<'_> {
    /// Takes in one event: an opened alarm goes in `batch` at once, a closed one joins
    /// the resolutions (sent until delivered).
    fn apply(
        &mut self,
        notifier: &Notifier,
        event: AlarmEvent,
        resend_every: Duration,
        batch: &mut Vec<Value>,
    ) {
        let now = SystemTime::now();
        match event {
            AlarmEvent::Open {
                anomaly,
                severity,
                audit_seq,
                resumed,
            } => {
                let mut labels: Map<String, Value> = anomaly
                    .labels
                    .0
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                    .collect();
                labels.insert("alertname".into(), "HomeostatAnomaly".into());
                labels.insert("signal".into(), anomaly.signal.clone().into());
                labels.insert("severity".into(), severity.into());
                let mut annotations = if resumed {
                    Map::from_iter([
                        ("anomaly_id".to_string(), Value::from(anomaly.id.clone())),
                        ("evidence".to_string(), anomaly.evidence.clone().into()),
                        (
                            "description".to_string(),
                            "resumed after a restart of homeostat".into(),
                        ),
                    ])
                } else {
                    anomaly_annotations(&anomaly)
                };
                annotations.insert(
                    "summary".into(),
                    format!("anomaly on {} {}", anomaly.signal, anomaly.labels).into(),
                );
                annotations.insert("audit_seq".into(), audit_seq.to_string().into());
                let starts = humantime::parse_rfc3339_weak(&anomaly.started_at).unwrap_or(now);
                let f = Firing {
                    labels,
                    annotations,
                    starts,
                };
                batch.push(notifier.alert(
                    f.labels.clone(),
                    f.annotations.clone(),
                    f.starts,
                    Some(now + resend_every * 4),
                ));
                self.firing.insert(anomaly.id.clone(), f);
            }
            AlarmEvent::Close { id } => {
                if let Some(f) = self.firing.remove(&id) {
                    if self.resolved.len() >= ALARM_QUEUE {
                        self.resolved.remove(0);
                        self.metrics.alarm_dropped();
                    }
                    self.resolved.push(notifier.alert(
                        f.labels,
                        f.annotations,
                        f.starts,
                        Some(now),
                    ));
                }
            }
        }
    }
}

/// One firing alarm as the task keeps it.
struct Firing {
    labels: Map<String, Value>,
    annotations: Map<String, Value>,
    starts: SystemTime,
}

async fn alarm_loop(
    notifier: Notifier,
    url: String,
    resend_every: Duration,
    mut rx: mpsc::Receiver<AlarmEvent>,
    metrics: Arc<Metrics>,
) {
    let mut firing: BTreeMap<String, Firing> = BTreeMap::new();
    // Resolved alarms not yet delivered: retried with the next batch.
    let mut resolved: Vec<Value> = Vec::new();
    let mut tick = tokio::time::interval(resend_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { return };
                let mut state = State { firing: &mut firing, resolved: &mut resolved, metrics: &metrics };
                state.apply(&notifier, event, resend_every, &mut batch);
                // Whatever else waits goes in the same request: a burst of anomalies is
                // one POST, not one each.
                while batch.len() < BATCH {
                    let Ok(event) = rx.try_recv() else { break };
                    state.apply(&notifier, event, resend_every, &mut batch);
                }
            }
            _ = tick.tick() => {
                let now = SystemTime::now();
                // Still firing: pushed forward, so Alertmanager keeps it until it hears
                // the close, or resolves it itself if homeostat is gone.
                for f in firing.values() {
                    batch.push(notifier.alert(f.labels.clone(), f.annotations.clone(), f.starts, Some(now + resend_every * 4)));
                }
            }
        }
        // Resolutions ride along until one is delivered.
        batch.extend(resolved.iter().cloned());
        if batch.is_empty() {
            continue;
        }
        let n = batch.len();
        // One attempt per batch: the next tick is the retry, and detection never waits.
        let report = notifier
            .post(&url, &Value::Array(batch), Instant::now())
            .await;
        if report.outcome == Outcome::Done {
            debug!(alerts = n, "alarms sent to Alertmanager");
            resolved.clear();
            metrics.alarms_sent(n);
        } else {
            warn!(alerts = n, detail = %report.detail, "alarms not delivered to Alertmanager; retried at the next re-send");
            metrics.alarm_send_failed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_burst_of_anomalies_reaches_alertmanager_in_few_requests_and_all_resolve() {
        // A stand-in for Alertmanager's POST /api/v2/alerts: counts requests and alerts.
        let requests = Arc::new(AtomicUsize::new(0));
        let firing = Arc::new(AtomicUsize::new(0));
        let resolved = Arc::new(AtomicUsize::new(0));
        let (r, f, z) = (requests.clone(), firing.clone(), resolved.clone());
        let app = axum::Router::new().route(
            "/api/v2/alerts",
            axum::routing::post(move |axum::Json(alerts): axum::Json<Vec<Value>>| {
                let (r, f, z) = (r.clone(), f.clone(), z.clone());
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    let now = SystemTime::now();
                    for a in alerts {
                        let ends =
                            humantime::parse_rfc3339_weak(a["endsAt"].as_str().unwrap()).unwrap();
                        if ends <= now {
                            z.fetch_add(1, Ordering::SeqCst)
                        } else {
                            f.fetch_add(1, Ordering::SeqCst)
                        };
                    }
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let settings = Settings {
            alertmanager_url: Some(url),
            resend_every: Duration::from_secs(3600),
            ..Settings::default()
        };
        let alarms = Alarms::start(&settings, Arc::new(Metrics::new(Duration::from_secs(60))));
        for i in 0..500 {
            let anomaly = Anomaly {
                id: format!("an-{i}"),
                signal: "s".into(),
                ..Anomaly::default()
            };
            alarms.send(AlarmEvent::Open {
                anomaly: Box::new(anomaly),
                severity: "warning".into(),
                audit_seq: i,
                resumed: false,
            });
        }
        for i in 0..500 {
            alarms.send(AlarmEvent::Close {
                id: format!("an-{i}"),
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while resolved.load(Ordering::SeqCst) < 500 {
            assert!(
                Instant::now() < deadline,
                "resolved {} of 500",
                resolved.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(firing.load(Ordering::SeqCst), 500);
        // Batched: far fewer requests than the 1,000 events (one each would be 1,000).
        let n = requests.load(Ordering::SeqCst);
        assert!(n < 100, "{n} requests");
    }
}
