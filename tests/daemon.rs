//! The daemon's behaviour, in process and in virtual time: `agent::run` with a scripted
//! [`Source`] in place of Prometheus, a listener bound here and handed over, and
//! `tokio::time` paused, so hysteresis, backoff, cooldowns, restarts and verification
//! deadlines take milliseconds and never depend on the machine's speed.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use homeostat::config::Config;
use homeostat::labels::Labels;
use homeostat::source::{BoxFuture, History, Point, Source, SourceError};
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;

use common::{noise, now_secs, of_kind, sample, verify_log, Daemon};

const QUERY: &str = "max by (pod) (hs_test_latency)";

/// What the fake answers to a query.
#[derive(Debug, Clone)]
enum Answer {
    /// These series, at these values (NaN: the store's NaN).
    Values(Vec<(Labels, f64)>),
    /// A connection error.
    Down,
    /// Wait until the gate opens, then answer nothing.
    Gated(Arc<Notify>),
}

/// A scripted Prometheus: answers per query string, keeps one day of history per series
/// it has been told about, and remembers when each query was asked (virtual time).
struct Fake {
    answers: Mutex<HashMap<String, Answer>>,
    history: Mutex<HashMap<String, Vec<History>>>,
    asked: Mutex<Vec<(String, Instant)>>,
    /// Unix seconds at virtual time `start`: points are stamped with virtual time.
    t0: f64,
    start: Instant,
}

impl Fake {
    fn new() -> Arc<Fake> {
        Arc::new(Fake {
            answers: Mutex::default(),
            history: Mutex::default(),
            asked: Mutex::default(),
            t0: now_secs(),
            start: Instant::now(),
        })
    }

    /// One day of minute points around 100 for each pod, ending two minutes ago.
    fn with_history(self: &Arc<Self>, query: &str, pods: &[&str]) -> Arc<Self> {
        let series: Vec<Labels> = pods.iter().map(|p| pod_labels(p)).collect();
        self.with_series_history(query, &series)
    }

    /// [`Fake::with_history`] for series of any labels.
    fn with_series_history(self: &Arc<Self>, query: &str, series: &[Labels]) -> Arc<Self> {
        let points = 1440;
        let end = self.t0 - 120.0;
        let histories = series
            .iter()
            .enumerate()
            .map(|(seed, labels)| History {
                labels: labels.clone(),
                samples: (0..points)
                    .map(|i| {
                        (
                            end - (points - 1 - i) as f64 * 60.0,
                            100.0 + 2.0 * noise(i * 7 + seed + 1),
                        )
                    })
                    .collect(),
            })
            .collect();
        self.history
            .lock()
            .unwrap()
            .insert(query.to_string(), histories);
        self.clone()
    }

    fn answer(&self, query: &str, answer: Answer) {
        self.answers
            .lock()
            .unwrap()
            .insert(query.to_string(), answer);
    }

    /// Sets the pods' current values of the signal's query.
    fn set(&self, values: &[(&str, f64)]) {
        self.answer(
            QUERY,
            Answer::Values(values.iter().map(|(p, v)| (pod_labels(p), *v)).collect()),
        );
    }

    /// Virtual seconds since the fake was made, at which `query` was asked.
    fn asked(&self, query: &str) -> Vec<f64> {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|(q, _)| q == query)
            .map(|(_, at)| at.duration_since(self.start).as_secs_f64())
            .collect()
    }
}

impl Source for Fake {
    fn instant_at<'a>(
        &'a self,
        query: &'a str,
        _at: Option<f64>,
    ) -> BoxFuture<'a, Result<Vec<Point>, SourceError>> {
        let now = Instant::now();
        self.asked.lock().unwrap().push((query.to_string(), now));
        let t = self.t0 + now.duration_since(self.start).as_secs_f64();
        let answer = self.answers.lock().unwrap().get(query).cloned();
        Box::pin(async move {
            match answer {
                None => Ok(vec![]),
                Some(Answer::Down) => Err(SourceError::Request("connection refused".into())),
                Some(Answer::Gated(gate)) => {
                    gate.notified().await;
                    Ok(vec![])
                }
                Some(Answer::Values(v)) => Ok(v
                    .into_iter()
                    .map(|(labels, value)| Point { labels, t, value })
                    .collect()),
            }
        })
    }

    fn range<'a>(
        &'a self,
        query: &'a str,
        _end: f64,
        _span: Duration,
        _step: Duration,
    ) -> BoxFuture<'a, Result<Vec<History>, SourceError>> {
        let h = self.history.lock().unwrap().get(query).cloned();
        Box::pin(async move { Ok(h.unwrap_or_default()) })
    }
}

fn pod_labels(pod: &str) -> Labels {
    Labels::from_pairs([("pod", pod)])
}

/// A dry-run playbook answering the latency signal: restart, verified by
/// `restart_done` within 5 s, escalating to a notification when that fails.
const RESTART: &str = r#"
const PLAYBOOK = #{
    name: "restart",
    trigger: #{ signal: "latency", min_score: 0.999 },
    allowed: #{ kinds: ["k8s.rollout_restart", "notify.alertmanager"] },
    group_by: ["pod"],
    cooldown: "10m",
};
fn plan(anomaly) {
    [#{ kind: "k8s.rollout_restart", target: #{ namespace: "test", deployment: anomaly.labels.pod },
        verify: #{ query: "restart_done", within: "5s" }, on_failure: "escalate" }]
}
fn on_result(anomaly, results) {
    if results[0].escalated { [#{ kind: "notify.alertmanager", params: #{ summary: "restart did not help" } }] } else { [] }
}
"#;

/// The agent's config in `dir`: one signal, the given `[detection]` and `[agent]` extras.
fn config(dir: &Path, playbooks: &[(&str, &str)], agent_extra: &str, detection: &str) -> Config {
    config_with(dir, playbooks, agent_extra, detection, "")
}

/// [`config`] with more `[[signals]]` after the latency one.
fn config_with(
    dir: &Path,
    playbooks: &[(&str, &str)],
    agent_extra: &str,
    detection: &str,
    signals: &str,
) -> Config {
    let mut names = Vec::new();
    for (name, body) in playbooks {
        std::fs::write(dir.join(format!("{name}.rhai")), body).unwrap();
        names.push(format!("\"{name}.rhai\""));
    }
    let text = format!(
        r#"
playbooks = [{}]
[prometheus]
url = "http://127.0.0.1:9"
[agent]
interval = "1s"
audit_log = "audit.jsonl"
models_dir = "models"
playbook_timeout = "30s"
{agent_extra}
[detection]
history = "1d"
history_step = "1m"
{detection}
[[signals]]
name = "latency"
query = '{QUERY}'
direction = "up"
{signals}
"#,
        names.join(", ")
    );
    Config::parse(&text, dir).unwrap_or_else(|e| panic!("{e:#?}"))
}

/// Starts the agent on the fake store, every playbook loaded, and waits until it has
/// fitted and ticked once.
async fn start(config: Config, fake: Arc<Fake>) -> Daemon {
    let (_, rejected) = homeostat::load_playbooks(&config, &homeostat::playbook::Limits::default());
    assert!(rejected.is_empty(), "{rejected:?}");
    Daemon::start_with(config, fake).await
}

/// Ticks the agent has completed.
fn ticks(d: &Daemon) -> u64 {
    d.metric("homeostat_ticks_total").unwrap_or(0.0) as u64
}

/// Lets exactly `n` more ticks run (each queries the signal once).
async fn ticks_pass(d: &Daemon, n: u64) {
    let target = ticks(d) + n;
    d.wait_for("ticks", Duration::from_secs(n * 2 + 5), |d| {
        ticks(d) >= target
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_signal_exporting_open_series_shows_only_the_anomalous_one_on_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new().with_history(QUERY, &["spiky", "clean"]);
    fake.set(&[("spiky", 100.0), ("clean", 99.5)]);
    let cfg = config_with(dir.path(), &[], "", "close_after = 3", "export = \"open\"");
    let d = start(cfg, fake.clone()).await;
    let metrics = || async { common::http_get(&d.url("/metrics")).await.unwrap().1 };
    let score = |pod: &str| format!("homeostat_anomaly_score{{signal=\"latency\",pod=\"{pod}\"}}");
    let m = metrics().await;
    assert!(!m.contains("homeostat_anomaly_score{"), "{m}");
    // The signal's own health stays.
    assert_eq!(
        sample(&m, "homeostat_signal_up{signal=\"latency\"}"),
        Some(1.0),
        "{m}"
    );

    fake.set(&[("spiky", 300.0), ("clean", 99.5)]);
    d.wait_for("the anomaly", Duration::from_secs(5), |d| {
        !d.kinds("anomaly_opened").is_empty()
    })
    .await;
    ticks_pass(&d, 1).await;
    let m = metrics().await;
    assert!(sample(&m, &score("spiky")).is_some(), "{m}");
    assert_eq!(
        sample(
            &m,
            "homeostat_anomaly_open{signal=\"latency\",pod=\"spiky\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, &score("clean")), None, "{m}");

    // Closed, it is gone from the next scrape.
    fake.set(&[("spiky", 100.0), ("clean", 99.5)]);
    d.wait_for("the close", Duration::from_secs(30), |d| {
        !d.kinds("anomaly_closed").is_empty()
    })
    .await;
    ticks_pass(&d, 1).await;
    let m = metrics().await;
    assert_eq!(sample(&m, &score("spiky")), None, "{m}");
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_anomaly_opens_and_closes_by_the_configured_hysteresis_and_plans_once() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new().with_history(QUERY, &["spiky", "clean"]);
    fake.set(&[("spiky", 100.0), ("clean", 99.5)]);
    let cfg = config(
        dir.path(),
        &[("restart", RESTART)],
        "",
        "open_after = 2\nclose_after = 3",
    );
    let d = start(cfg, fake.clone()).await;
    ticks_pass(&d, 3).await;
    assert!(d.kinds("anomaly_opened").is_empty());

    // One anomalous point is not enough (open_after = 2) ...
    fake.set(&[("spiky", 300.0), ("clean", 99.5)]);
    ticks_pass(&d, 1).await;
    assert!(
        d.kinds("anomaly_opened").is_empty(),
        "opened after one point"
    );
    // ... the second opens it, and names that point.
    fake.set(&[("spiky", 301.0), ("clean", 100.5)]);
    ticks_pass(&d, 1).await;
    let opened = d.kinds("anomaly_opened");
    assert_eq!(opened.len(), 1, "{opened:#?}");
    assert_eq!(opened[0].data["labels"], json!({"pod": "spiky"}));
    assert_eq!(opened[0].data["value"], json!(301.0));
    let id = opened[0].data["id"].as_str().unwrap().to_string();

    // It stays one anomaly with one plan while it lasts.
    for v in 302..310 {
        fake.set(&[("spiky", f64::from(v)), ("clean", 100.0)]);
        ticks_pass(&d, 1).await;
    }
    assert_eq!(d.kinds("anomaly_opened").len(), 1);
    d.wait_for("the plan", Duration::from_secs(5), |d| {
        !d.kinds("plan").is_empty()
    })
    .await;
    assert_eq!(d.kinds("playbook_matched").len(), 1);

    // Back to normal: it closes only after quiet points, never before close_after of them.
    fake.set(&[("spiky", 100.0), ("clean", 100.0)]);
    ticks_pass(&d, 2).await;
    assert!(
        d.kinds("anomaly_closed").is_empty(),
        "closed within 2 quiet points"
    );
    d.wait_for("the close", Duration::from_secs(60), |d| {
        !d.kinds("anomaly_closed").is_empty()
    })
    .await;
    let closed = d.kinds("anomaly_closed");
    assert_eq!(closed[0].data["id"], json!(id));
    assert_eq!(closed[0].data["reason"], json!("back to normal"));
    let snap = d.metrics.snapshot();
    assert!(snap.series.iter().all(|g| !g.open && !g.stale), "{snap:#?}");
    d.stop().await;
    verify_log(&dir.path().join("audit.jsonl"));
}

#[tokio::test(start_paused = true)]
async fn missing_data_is_stale_never_an_anomaly() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new().with_history(QUERY, &["a", "b"]);
    fake.set(&[("a", 100.0), ("b", 100.0)]);
    let d = start(
        config(dir.path(), &[("restart", RESTART)], "", ""),
        fake.clone(),
    )
    .await;
    let stale = |d: &Daemon, pod: &str| {
        d.metrics
            .snapshot()
            .series
            .iter()
            .find(|g| g.labels == pod_labels(pod))
            .map(|g| g.stale)
    };

    // NaN (0/0 in a ratio), a series missing from the answer, an empty answer, a failed
    // query: each is missing data.
    fake.set(&[("a", f64::NAN), ("b", 100.0)]);
    ticks_pass(&d, 2).await;
    assert_eq!(stale(&d, "a"), Some(true));
    assert_eq!(stale(&d, "b"), Some(false));
    fake.set(&[("b", 100.0)]);
    ticks_pass(&d, 2).await;
    assert_eq!(stale(&d, "a"), Some(true));
    fake.set(&[]);
    ticks_pass(&d, 2).await;
    assert_eq!(stale(&d, "b"), Some(true));
    assert!(!d.metrics.snapshot().signals["latency"].up);
    fake.answer(QUERY, Answer::Down);
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Data again, at its usual level: nothing happened.
    fake.set(&[("a", 100.0), ("b", 100.0)]);
    d.wait_for("fresh data", Duration::from_secs(30), |d| {
        stale(d, "a") == Some(false)
    })
    .await;
    ticks_pass(&d, 3).await;
    assert!(d.kinds("anomaly_opened").is_empty());
    assert!(d.kinds("playbook_matched").is_empty());
    let m = d.metrics.encode();
    assert!(
        m.contains("homeostat_empty_results_total{signal=\"latency\"} 2"),
        "{m}"
    );
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_query_backs_off_exponentially_up_to_max_backoff_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new().with_history(QUERY, &["a"]);
    fake.set(&[("a", 100.0)]);
    let d = start(
        config(dir.path(), &[], "max_backoff = \"8s\"", ""),
        fake.clone(),
    )
    .await;
    fake.answer(QUERY, Answer::Down);
    let down_at = fake.asked(QUERY).len();
    tokio::time::sleep(Duration::from_secs(40)).await;
    fake.set(&[("a", 100.0)]);
    let failed = fake.asked(QUERY).len();
    d.wait_for("three answered queries", Duration::from_secs(30), |_| {
        fake.asked(QUERY).len() >= failed + 3
    })
    .await;
    let asked = fake.asked(QUERY);
    let gaps: Vec<f64> = asked[down_at..]
        .windows(2)
        .map(|w| (w[1] - w[0]).round())
        .collect();
    // 1, 2, 4, 8 s, then 8 s at most; once it answers, every interval again.
    assert_eq!(&gaps[..4], &[1.0, 2.0, 4.0, 8.0], "{gaps:?}");
    let (failing, recovered) = gaps.split_at(gaps.len() - 2);
    assert!(failing[4..].iter().all(|g| *g == 8.0), "{gaps:?}");
    assert_eq!(recovered, [1.0, 1.0], "{gaps:?}");
    let m = d.metrics.encode();
    let errors = common::sample(
        &m,
        "homeostat_query_errors_total{signal=\"latency\",kind=\"request\"}",
    )
    .unwrap();
    // Each gap up to the first answer followed a failure: 8 failed queries in 40 s, not 40.
    assert_eq!(errors as usize, failing.len(), "{m}");
    assert_eq!(failing.len(), 8, "{gaps:?}");
    assert!(d.metrics.snapshot().signals["latency"].up);
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_resumes_the_open_anomaly_under_its_id_without_planning_again() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new().with_history(QUERY, &["a"]);
    fake.set(&[("a", 100.0)]);
    let cfg = || config(dir.path(), &[("restart", RESTART)], "", "");
    let d = start(cfg(), fake.clone()).await;
    fake.set(&[("a", 400.0)]);
    d.wait_for("a plan", Duration::from_secs(10), |d| {
        !d.kinds("plan").is_empty()
    })
    .await;
    d.stop().await;
    let id = of_kind(
        &common::records(&dir.path().join("audit.jsonl")),
        "anomaly_opened",
    )[0]
    .data["id"]
        .clone();

    let d = start(cfg(), fake.clone()).await;
    ticks_pass(&d, 5).await;
    let resumed = d.kinds("anomaly_resumed");
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].data["id"], id);
    assert_eq!(resumed[0].data["handled"], json!(["restart"]));
    assert_eq!(d.kinds("anomaly_opened").len(), 1, "opened again");
    assert_eq!(d.kinds("playbook_matched").len(), 1, "planned again");
    fake.set(&[("a", 100.0)]);
    d.wait_for("the close", Duration::from_secs(120), |d| {
        !d.kinds("anomaly_closed").is_empty()
    })
    .await;
    assert_eq!(d.kinds("anomaly_closed")[0].data["id"], id);
    d.stop().await;
    verify_log(&dir.path().join("audit.jsonl"));
}

#[tokio::test(start_paused = true)]
async fn a_second_incident_within_the_cooldown_is_suppressed_and_one_after_it_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new().with_history(QUERY, &["a"]);
    fake.set(&[("a", 100.0)]);
    // Incident grouping off: a series opening again two minutes later would be the
    // same incident (within `incident_window`), and this is about the cooldown.
    let cfg = config(
        dir.path(),
        &[("restart", RESTART)],
        "incident_labels = []",
        "close_after = 2",
    );
    let d = start(cfg, fake.clone()).await;
    let incident = |v: f64| {
        let fake = fake.clone();
        async move {
            fake.set(&[("a", v)]);
            tokio::time::sleep(Duration::from_secs(3)).await;
            fake.set(&[("a", 100.0)]);
        }
    };
    incident(400.0).await;
    d.wait_for("the first close", Duration::from_secs(120), |d| {
        d.kinds("anomaly_closed").len() == 1
    })
    .await;
    // Two minutes later: within the 10 min cooldown.
    tokio::time::sleep(Duration::from_secs(120)).await;
    incident(700.0).await;
    d.wait_for(
        "the second anomaly's suppression",
        Duration::from_secs(30),
        |d| !d.kinds("playbook_suppressed").is_empty(),
    )
    .await;
    let suppressed = &d.kinds("playbook_suppressed")[0].data;
    assert_eq!(suppressed["reason"], json!("cooldown"));
    assert_eq!(suppressed["cooldown_secs"], json!(600.0));
    let ago = suppressed["last_plan_secs_ago"].as_f64().unwrap();
    assert!((120.0..300.0).contains(&ago), "{ago}");
    assert_eq!(d.kinds("playbook_matched").len(), 1);
    d.wait_for("the second close", Duration::from_secs(300), |d| {
        d.kinds("anomaly_closed").len() == 2
    })
    .await;

    // Past the cooldown, the next incident gets its plan.
    tokio::time::sleep(Duration::from_secs(600)).await;
    incident(1500.0).await;
    d.wait_for("a second plan", Duration::from_secs(30), |d| {
        d.kinds("playbook_matched").len() == 2
    })
    .await;
    assert_eq!(d.kinds("anomaly_opened").len(), 3);
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_verification_escalates_at_its_deadline_and_a_passed_one_ends_the_incident() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new().with_history(QUERY, &["a", "b"]);
    fake.set(&[("a", 100.0), ("b", 100.0)]);
    let d = start(
        config(dir.path(), &[("restart", RESTART)], "", ""),
        fake.clone(),
    )
    .await;

    // `restart_done` never returns data: the verification fails at its 5 s deadline, and
    // on_result's follow-up runs as round 1.
    fake.set(&[("a", 400.0), ("b", 100.0)]);
    d.wait_for("the first incident's end", Duration::from_secs(30), |d| {
        !d.kinds("incident_done").is_empty()
    })
    .await;
    let v = d.kinds("verification");
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0].data["passed"], json!(false));
    let elapsed = v[0].data["elapsed_secs"].as_f64().unwrap();
    assert!((4.0..=5.0).contains(&elapsed), "gave up after {elapsed}s");
    let plans = d.kinds("plan");
    assert_eq!(plans.len(), 2);
    assert_eq!(plans[1].data["round"], json!(1));
    assert_eq!(
        plans[1].data["actions"][0]["kind"],
        json!("notify.alertmanager")
    );
    assert!(plans[1].seq > v[0].seq);

    // Now the condition holds after 2 s: the verification passes then, and on_result
    // returns nothing more.
    fake.set(&[("a", 400.0), ("b", 400.0)]);
    d.wait_for("the second plan", Duration::from_secs(30), |d| {
        d.kinds("plan").len() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    fake.answer(
        "restart_done",
        Answer::Values(vec![(Labels::default(), 1.0)]),
    );
    d.wait_for("the second incident's end", Duration::from_secs(30), |d| {
        d.kinds("incident_done").len() == 2
    })
    .await;
    let v = d.kinds("verification");
    assert_eq!(v[1].data["passed"], json!(true));
    let elapsed = v[1].data["elapsed_secs"].as_f64().unwrap();
    assert!((2.0..4.0).contains(&elapsed), "passed after {elapsed}s");
    assert_eq!(d.kinds("plan").len(), 3, "no follow-up after a pass");
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_playbook_never_holds_up_the_detection_tick() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new().with_history(QUERY, &["a"]);
    fake.set(&[("a", 100.0)]);
    let gate = Arc::new(Notify::new());
    fake.answer("gate", Answer::Gated(gate.clone()));
    let slow = r#"
const PLAYBOOK = #{ name: "slow", trigger: #{ signal: "latency", min_score: 0.999 },
    allowed: #{ kinds: ["notify.alertmanager"] } };
fn plan(anomaly) {
    prom::query("gate");
    [#{ kind: "notify.alertmanager", params: #{ summary: "slow" } }]
}
"#;
    let d = start(config(dir.path(), &[("slow", slow)], "", ""), fake.clone()).await;
    fake.set(&[("a", 400.0)]);
    // Once the script waits on the gate, in a blocking thread, virtual time stands still
    // unless moved: move it by hand, a second at a time, and watch the ticks go on.
    let step = || async {
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    for _ in 0..10 {
        if !d.kinds("playbook_matched").is_empty() {
            break;
        }
        step().await;
    }
    assert_eq!(d.kinds("playbook_matched").len(), 1);
    let before = ticks(&d);
    for _ in 0..5 {
        step().await;
    }
    assert!(
        ticks(&d) >= before + 4,
        "{} ticks during the playbook",
        ticks(&d) - before
    );
    assert!(
        d.kinds("plan").is_empty(),
        "the plan came before the gate opened"
    );
    gate.notify_one();
    d.wait_for("the plan", Duration::from_secs(10), |d| {
        !d.kinds("plan").is_empty()
    })
    .await;
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_webhook_on_the_handed_over_listener_runs_a_playbook_for_a_firing_alert() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new().with_history(QUERY, &["a"]);
    fake.set(&[("a", 100.0)]);
    let reboot = r#"
const PLAYBOOK = #{ name: "reboot", trigger: #{ alertname: "InstanceDown" },
    allowed: #{ kinds: ["openstack.server_reboot"] } };
fn plan(alert) {
    [#{ kind: "openstack.server_reboot", target: #{ server: alert.labels.instance }, params: #{ type: "soft" } }]
}
"#;
    let d = start(
        config(dir.path(), &[("reboot", reboot)], "", ""),
        fake.clone(),
    )
    .await;
    let body = json!({
        "version": "4", "status": "firing", "receiver": "homeostat", "groupKey": "{}:{}",
        "alerts": [{"status": "firing", "labels": {"alertname": "InstanceDown", "instance": "vm-1"},
            "annotations": {}, "startsAt": "2026-12-07T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": "f1"}]
    });
    let (status, _) = post(d.addr, "/api/v1/alertmanager", &body.to_string()).await;
    assert_eq!(status, 202);
    let (status, text) = post(d.addr, "/api/v1/alertmanager", "{not json").await;
    assert_eq!(status, 400, "{text}");
    d.wait_for("the plan", Duration::from_secs(10), |d| {
        !d.kinds("plan").is_empty()
    })
    .await;
    let plan = &d.kinds("plan")[0].data;
    assert_eq!(plan["actions"][0]["target"], json!({"server": "vm-1"}));
    let m = d.metrics.encode();
    for line in [
        "homeostat_webhook_requests_total{result=\"accepted\"} 1",
        "homeostat_webhook_requests_total{result=\"malformed\"} 1",
        "homeostat_playbook_runs_total{playbook=\"reboot\",result=\"planned\"} 1",
    ] {
        assert!(m.contains(line), "{line} in {m}");
    }
    d.stop().await;
}

/// A plain HTTP/1.1 POST over the loopback listener; returns status and body.
async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

/// A webhook payload of `n` firing alerts named `Burst<i>`, one instance each.
fn burst(from: usize, n: usize) -> String {
    let alerts: Vec<serde_json::Value> = (from..from + n)
        .map(|i| {
            json!({"status": "firing", "labels": {"alertname": "Burst", "instance": format!("vm-{i}")},
                "annotations": {}, "startsAt": "2026-12-07T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": format!("f{i}")})
        })
        .collect();
    json!({"version": "4", "status": "firing", "receiver": "homeostat", "groupKey": "{}", "alerts": alerts})
        .to_string()
}

/// Fingerprints of the alerts the audit log says were received.
fn received(d: &Daemon) -> Vec<String> {
    d.kinds("alert_received")
        .iter()
        .map(|r| r.data["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_alerts_never_holds_up_the_detection_tick() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new().with_history(QUERY, &["a"]);
    fake.set(&[("a", 100.0)]);
    let d = start(config(dir.path(), &[], "", ""), fake.clone()).await;
    // Alerts without pause for three seconds: each is an fsynced audit record to the
    // agent, so while they keep coming its intake is never done.
    let addr = d.addr;
    let poster = tokio::spawn(async move {
        let (mut next, mut accepted) = (0, 0);
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            let (status, _) = post(addr, "/api/v1/alertmanager", &burst(next, 200)).await;
            next += 200;
            if status == 202 {
                accepted += 200;
            }
        }
        accepted
    });
    let before = ticks(&d);
    let accepted = poster.await.unwrap();
    let ticks = ticks(&d) - before;
    assert!(accepted > 0);
    // One tick a second: two at least in those three seconds, however busy the intake.
    assert!(ticks >= 2, "{ticks} ticks while {accepted} alerts came in");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_alerts_left_at_a_stop_are_handled_after_the_restart_once() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new().with_history(QUERY, &["a"]);
    fake.set(&[("a", 100.0)]);
    let cfg = || config(dir.path(), &[], "", "");
    // Larger bursts until the stop leaves some unhandled, whatever the disk's speed.
    let mut sent = 0;
    let (first, pending) = loop {
        let d = start(cfg(), fake.clone()).await;
        for _ in 0..(1 + sent / 200) {
            let (status, _) = post(d.addr, "/api/v1/alertmanager", &burst(sent, 200)).await;
            assert_eq!(status, 202);
            sent += 200;
        }
        d.stop().await;
        let records = common::records(&dir.path().join("audit.jsonl"));
        let stopped = &of_kind(&records, "agent_stopped").last().unwrap().data;
        let pending = stopped["alerts_pending"].as_u64().unwrap() as usize;
        let first: Vec<String> = of_kind(&records, "alert_received")
            .iter()
            .map(|r| r.data["id"].as_str().unwrap().to_string())
            .collect();
        if pending > 0 || sent >= 8000 {
            break (first, pending);
        }
    };
    assert!(
        pending > 0,
        "every alert handled before the stop: nothing to test"
    );
    let log = dir.path().join("audit.jsonl");
    assert_eq!(first.len() + pending, sent, "accepted = handled + kept");

    let d = start(cfg(), fake.clone()).await;
    d.wait_for("the kept alerts", Duration::from_secs(120), |d| {
        received(d).len() >= sent
    })
    .await;
    let all = received(&d);
    let unique: std::collections::BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), sent, "every accepted alert handled");
    assert_eq!(all.len(), sent, "none handled twice");
    d.stop().await;
    verify_log(&log);
}

#[tokio::test(start_paused = true)]
async fn series_beyond_the_caps_are_dropped_and_counted_never_tracked() {
    for (agent, tracked) in [
        ("max_series_per_signal = 3", 3),
        ("max_series = 2\nmax_series_per_signal = 3", 2),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new().with_history(QUERY, &["a", "b"]);
        let pods = ["a", "b", "c", "d", "e"];
        fake.set(&pods.map(|p| (p, 100.0)));
        let d = start(config(dir.path(), &[], agent, ""), fake.clone()).await;
        let before = ticks(&d);
        ticks_pass(&d, 4).await;
        let ticks = ticks(&d) - before;
        let snap = d.metrics.snapshot();
        assert_eq!(snap.series.len(), tracked, "{agent}: {snap:#?}");
        assert_eq!(snap.signals["latency"].series, tracked);
        // The two fitted from history are among those kept.
        for p in ["a", "b"] {
            assert!(
                snap.series.iter().any(|g| g.labels == pod_labels(p)),
                "{agent}"
            );
        }
        let dropped = common::sample(
            &d.metrics.encode(),
            "homeostat_series_dropped_total{signal=\"latency\"}",
        )
        .unwrap();
        // Every point of an untracked series, every tick (and the first tick's).
        assert!(
            dropped >= ((pods.len() - tracked) as u64 * ticks) as f64,
            "{agent}: {dropped} dropped in {ticks} ticks"
        );
        d.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_damaged_models_file_is_refused_audited_and_refitted_never_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    std::fs::write(
        dir.path().join("models/latency.json"),
        r#"{"schema": 6, "signal": "latency", "series": [{"labels": {}, "model": {"ml": {"next": 99}}}]}"#,
    )
    .unwrap();
    let fake = Fake::new().with_history(QUERY, &["a"]);
    fake.set(&[("a", 100.0)]);
    let d = start(config(dir.path(), &[], "", ""), fake.clone()).await;
    let refused = d.kinds("models_refused");
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0].data["signal"], json!("latency"));
    assert!(
        refused[0].data["reason"]
            .as_str()
            .unwrap()
            .contains("latency.json"),
        "{refused:#?}"
    );
    // Fitted from history instead: scored at once, not warming up.
    ticks_pass(&d, 1).await;
    let snap = d.metrics.snapshot();
    assert!(snap.series.iter().all(|g| !g.score.is_nan()), "{snap:#?}");
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn agent_mode_caps_every_playbook_and_an_unconfigured_layer_fails_rather_than_pretends() {
    let auto = RESTART.replace("name: \"restart\",", "name: \"restart\", mode: \"auto\",");
    for (agent, effective, outcome, message) in [
        // No agent.mode: dry-run, whatever the playbook says.
        (
            "",
            "dry-run",
            "dry_run",
            "recorded only: no [kubernetes] client is configured",
        ),
        (
            "mode = \"auto\"",
            "auto",
            "failed",
            "no [kubernetes] client is configured",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new().with_history(QUERY, &["spiky"]);
        fake.set(&[("spiky", 100.0)]);
        let d = start(
            config(dir.path(), &[("restart", &auto)], agent, ""),
            fake.clone(),
        )
        .await;
        fake.set(&[("spiky", 300.0)]);
        d.wait_for("the outcome", Duration::from_secs(30), |d| {
            !d.kinds("action_outcome").is_empty()
        })
        .await;
        let intent = d.kinds("action_intent");
        assert_eq!(intent[0].data["mode"], json!("auto"), "{agent}");
        assert_eq!(
            intent[0].data["effective_mode"],
            json!(effective),
            "{agent}"
        );
        let out = d.kinds("action_outcome");
        assert_eq!(out[0].data["outcome"], json!(outcome), "{agent}");
        assert_eq!(out[0].data["detail"]["message"], json!(message), "{agent}");
        d.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_intent_a_stop_left_without_outcome_is_reconciled_at_start_never_rerun() {
    use homeostat::audit::{ActionIntent, AuditLog, Event};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let action: homeostat::playbook::Action = serde_json::from_value(json!({
        "kind": "k8s.cordon", "target": {"node": "n1"}
    }))
    .unwrap();
    let intent_seq = {
        let mut audit = AuditLog::open(&log).unwrap();
        audit
            .record(&Event::ActionIntent(ActionIntent {
                anomaly_id: "an-1".into(),
                playbook: "drain".into(),
                step: 1,
                mode: "auto".into(),
                effective_mode: "auto".into(),
                round: 0,
                action: action.clone(),
                observed: None,
                requests: Vec::new(),
            }))
            .unwrap()
    };
    let fake = Fake::new().with_history(QUERY, &["a"]);
    fake.set(&[("a", 100.0)]);
    let d = start(config(dir.path(), &[], "mode = \"auto\"", ""), fake.clone()).await;
    let r = d.kinds("action_reconciled");
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0].data["intent_seq"], json!(intent_seq));
    assert_eq!(r[0].data["kind"], json!("k8s.cordon"));
    assert_eq!(r[0].data["target"], json!({"node": "n1"}));
    // Nothing could read the node here: the record says so rather than guess.
    assert_eq!(
        r[0].data["error"],
        json!("no [kubernetes] client is configured")
    );
    assert!(d.kinds("action_outcome").is_empty(), "re-run");
    d.stop().await;
    // A second start finds nothing left to reconcile.
    let d = start(config(dir.path(), &[], "mode = \"auto\"", ""), fake).await;
    assert_eq!(d.kinds("action_reconciled").len(), 1);
    d.stop().await;
    verify_log(&log);
}

/// An HTTP/1.1 request over loopback with an optional bearer token; status and body.
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(json!(body)))
}

/// The file in which the approval `p` (as the API lists it) waits.
fn queued_file(dir: &Path, p: &serde_json::Value) -> std::path::PathBuf {
    dir.join(format!(
        "audit.jsonl.approvals/{}.json",
        p["id"].as_str().unwrap()
    ))
}

/// A queued plan's text with its target moved from namespace `test` to `prod`.
fn to_prod(text: &str) -> String {
    text.replace("\"namespace\": \"test\"", "\"namespace\": \"prod\"")
}

/// A restart playbook that asks first; its plans wait two minutes at most.
fn asking() -> String {
    r#"
const PLAYBOOK = #{
    name: "restart",
    mode: "approval",
    trigger: #{ signal: "latency", min_score: 0.999 },
    allowed: #{ kinds: ["k8s.rollout_restart"] },
    group_by: ["pod"],
    cooldown: "10m",
    limits: #{ approval_ttl: "2m" },
};
fn plan(anomaly) {
    [#{ kind: "k8s.rollout_restart", target: #{ namespace: "test", deployment: anomaly.labels.pod } }]
}
"#
    .into()
}

const TOKEN: &str = "0123456789abcdef-approvals";

/// The approval waiting for `pod`'s anomaly, once it is queued.
async fn waiting(d: &Daemon, pod: &str) -> serde_json::Value {
    d.wait_for("the approval request", Duration::from_secs(30), |d| {
        d.kinds("approval_requested").len()
            > d.kinds("approval_granted").len()
                + d.kinds("approval_rejected").len()
                + d.kinds("approval_expired").len()
    })
    .await;
    let (status, list) = call(d.addr, "GET", "/api/v1/approvals", "", Some(TOKEN)).await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .find(|p| p["anomaly"]["labels"]["pod"] == pod)
        .unwrap_or_else(|| panic!("no approval for {pod}: {list:#}"))
        .clone()
}

#[tokio::test(start_paused = true)]
async fn an_approval_file_that_does_not_parse_is_audited_once_and_set_aside_never_run() {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("audit.jsonl.approvals");
    std::fs::create_dir_all(&queue).unwrap();
    let junk = queue.join("ap-hand-edited.json");
    // One set aside earlier is kept as it was.
    std::fs::write(queue.join("ap-hand-edited.json.damaged"), "earlier").unwrap();
    std::fs::write(&junk, "{\"id\": \"ap-hand-edited\", \"plan\": [").unwrap();
    let fake = Fake::new().with_history(QUERY, &["a"]);
    fake.set(&[("a", 100.0)]);
    let d = start(
        config(dir.path(), &[("restart", &asking())], "mode = \"auto\"", ""),
        fake.clone(),
    )
    .await;
    d.wait_for("the damaged file's record", Duration::from_secs(10), |d| {
        !d.kinds("approval_rejected").is_empty()
    })
    .await;
    ticks_pass(&d, 3).await;
    let rejected = d.kinds("approval_rejected");
    assert_eq!(rejected.len(), 1, "audited once: {rejected:#?}");
    // Not an approval id: the record names the file in its reason only.
    assert_eq!(rejected[0].data["id"], json!(""));
    assert_eq!(rejected[0].data["by"], json!("homeostat"));
    let reason = rejected[0].data["reason"].as_str().unwrap();
    assert!(
        reason.contains("does not read as a plan") && reason.contains("ap-hand-edited.json"),
        "{reason}"
    );
    // Out of the queue, kept beside it as it was.
    assert!(!junk.exists());
    assert_eq!(
        std::fs::read_to_string(queue.join("ap-hand-edited.json.damaged")).unwrap(),
        "earlier"
    );
    let aside = queue.join("ap-hand-edited.json.damaged-2");
    assert_eq!(
        std::fs::read_to_string(&aside).unwrap(),
        "{\"id\": \"ap-hand-edited\", \"plan\": ["
    );
    assert!(d.kinds("action_intent").is_empty());
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_plan_waits_for_approval_runs_exactly_as_approved_and_never_when_rejected_or_expired() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let agent = "mode = \"auto\"\n[api]\ntoken_file = \"token\"";
    let pods = ["p1", "p2", "p3", "p4"];
    let fake = Fake::new().with_history(QUERY, &pods);
    fake.set(&pods.map(|p| (p, 100.0)));
    let d = start(
        config(dir.path(), &[("restart", &asking())], agent, ""),
        fake.clone(),
    )
    .await;

    // p1: approved, with its hash, after a wrong one and an anonymous try were refused.
    fake.set(&[("p1", 300.0), ("p2", 100.0), ("p3", 100.0), ("p4", 100.0)]);
    let p1 = waiting(&d, "p1").await;
    let (id, hash) = (
        p1["id"].as_str().unwrap(),
        p1["plan_hash"].as_str().unwrap(),
    );
    assert!(d.kinds("action_intent").is_empty(), "ran before approval");
    let path = format!("/api/v1/approvals/{id}/approve");
    let (status, _) = call(
        d.addr,
        "POST",
        &path,
        &json!({"hash": hash}).to_string(),
        None,
    )
    .await;
    assert_eq!(status, 401, "approved without the token");
    let (status, body) = call(
        d.addr,
        "POST",
        &path,
        r#"{"hash": "deadbeefdeadbeef"}"#,
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(d.kinds("action_intent").is_empty());
    let body =
        json!({"hash": &hash[..12], "by": "alice", "reason": "checked the node"}).to_string();
    let (status, answer) = call(d.addr, "POST", &path, &body, Some(TOKEN)).await;
    assert_eq!(status, 200, "{answer}");
    d.wait_for("the approved plan to run", Duration::from_secs(30), |d| {
        !d.kinds("action_outcome").is_empty()
    })
    .await;
    let granted = d.kinds("approval_granted");
    assert_eq!(granted[0].data["by"], json!("alice"));
    assert_eq!(granted[0].data["plan_hash"], json!(hash));
    let intent = d.kinds("action_intent");
    assert_eq!(intent.len(), 1);
    assert!(granted[0].seq < intent[0].seq);
    assert_eq!(intent[0].data["effective_mode"], json!("auto"));
    assert_eq!(
        intent[0].data["action"], p1["plan"]["actions"][0],
        "what was approved is what ran"
    );
    let (status, _) = call(d.addr, "POST", &path, &body, Some(TOKEN)).await;
    assert_eq!(status, 404, "approved twice");

    // p2: rejected; it never runs.
    fake.set(&[("p1", 100.0), ("p2", 300.0), ("p3", 100.0), ("p4", 100.0)]);
    let p2 = waiting(&d, "p2").await;
    let reject = format!("/api/v1/approvals/{}/reject", p2["id"].as_str().unwrap());
    let (status, _) = call(
        d.addr,
        "POST",
        &reject,
        r#"{"by": "bob", "reason": "not now"}"#,
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        d.kinds("approval_rejected")[0].data["reason"],
        json!("not now")
    );

    // p3: nobody answers for two minutes; it expires and can no longer be approved.
    fake.set(&[("p1", 100.0), ("p2", 100.0), ("p3", 300.0), ("p4", 100.0)]);
    let p3 = waiting(&d, "p3").await;
    fake.set(&pods.map(|p| (p, 100.0)));
    // The TTL runs on the wall clock (it must hold across restarts), which a paused
    // test clock cannot move: the file is aged instead, as two minutes would.
    let file3 = queued_file(dir.path(), &p3);
    let mut aged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file3).unwrap()).unwrap();
    aged["expires_unix"] = aged["requested_unix"].clone();
    std::fs::write(&file3, aged.to_string()).unwrap();
    d.wait_for("the expiry", Duration::from_secs(10), |d| {
        !d.kinds("approval_expired").is_empty()
    })
    .await;
    let late = format!("/api/v1/approvals/{}/approve", p3["id"].as_str().unwrap());
    let body3 = json!({"hash": p3["plan_hash"]}).to_string();
    let (status, _) = call(d.addr, "POST", &late, &body3, Some(TOKEN)).await;
    assert_eq!(status, 404, "expired plans leave the queue");

    // p4: waits across a restart, and is approved after it; a tampered copy is refused.
    fake.set(&[("p1", 100.0), ("p2", 100.0), ("p3", 100.0), ("p4", 300.0)]);
    let p4 = waiting(&d, "p4").await;
    d.stop().await;
    let file = queued_file(dir.path(), &p4);
    let original = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, to_prod(&original)).unwrap();
    let d = start(
        config(dir.path(), &[("restart", &asking())], agent, ""),
        fake.clone(),
    )
    .await;
    let approve4 = format!("/api/v1/approvals/{}/approve", p4["id"].as_str().unwrap());
    let body4 = json!({"hash": p4["plan_hash"]}).to_string();
    let (status, answer) = call(d.addr, "POST", &approve4, &body4, Some(TOKEN)).await;
    assert_eq!(status, 409, "a plan changed on disk: {answer}");
    std::fs::write(&file, &original).unwrap();
    let (status, answer) = call(d.addr, "POST", &approve4, &body4, Some(TOKEN)).await;
    assert_eq!(status, 200, "{answer}");
    // The log holds both runs: p1's intent from before the restart, then p4's.
    d.wait_for("p4's plan to run", Duration::from_secs(30), |d| {
        d.kinds("action_intent").len() == 2
    })
    .await;
    let intent = d.kinds("action_intent");
    assert_eq!(
        intent[1].data["action"]["target"]["deployment"],
        json!("p4")
    );
    d.stop().await;
    // Over both runs: one plan ran per approval, none for the rejected or expired.
    let all = common::records(&dir.path().join("audit.jsonl"));
    let ran: Vec<_> = of_kind(&all, "action_intent")
        .iter()
        .map(|r| r.data["action"]["target"]["deployment"].clone())
        .collect();
    assert_eq!(ran, [json!("p1"), json!("p4")]);
    verify_log(&dir.path().join("audit.jsonl"));
}

/// Cordons the anomalous pod's "node" (named after the pod): one action per incident.
const CORDON: &str = r#"
const PLAYBOOK = #{
    name: "cordon",
    mode: "auto",
    trigger: #{ signal: "latency", min_score: 0.999 },
    allowed: #{ kinds: ["k8s.cordon"] },
    group_by: ["pod"],
};
fn plan(anomaly) { [#{ kind: "k8s.cordon", target: #{ node: anomaly.labels.pod } }] }
"#;

/// `n` pods named `pod-0` … with a day of history, all quiet.
fn many(n: usize) -> (Vec<String>, Arc<Fake>) {
    let names: Vec<String> = (0..n).map(|i| format!("pod-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let fake = Fake::new().with_history(QUERY, &refs);
    fake.set(&refs.iter().map(|p| (*p, 100.0)).collect::<Vec<_>>());
    (names, fake)
}

/// Cordons the node an alert names: one action per alert (the storm's playbook).
const CORDON_ON_ALERT: &str = r#"
const PLAYBOOK = #{
    name: "cordon",
    mode: "auto",
    trigger: #{ alertname: "Burst" },
    allowed: #{ kinds: ["k8s.cordon"] },
    group_by: ["instance"],
};
fn plan(alert) { [#{ kind: "k8s.cordon", target: #{ node: alert.labels.instance } }] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_a_thousand_anomalies_is_held_to_the_caps_exactly_and_the_agent_keeps_answering()
{
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new().with_history(QUERY, &["a"]);
    fake.set(&[("a", 100.0)]);
    // Dry-run counts like auto (dry-run is exact), and no client fails an action here.
    let agent = "mode = \"dry-run\"\n[guardrails]\nmax_actions = 20\nmax_incidents = 4";
    let d = start(
        config(dir.path(), &[("cordon", CORDON_ON_ALERT)], agent, ""),
        fake.clone(),
    )
    .await;
    // A thousand firing alerts on a thousand nodes, in one request: one cycle.
    let (status, _) = post(d.addr, "/api/v1/alertmanager", &burst(0, 1000)).await;
    assert_eq!(status, 202);
    let mut answered = 0;
    while d.kinds("action_intent").len() + d.kinds("guardrail_refused").len() < 1000 {
        // While it lasts: the API and /metrics answer.
        let (status, s) = call(d.addr, "GET", "/api/v1/status", "", None).await;
        assert_eq!((status, &s["paused"]), (200, &json!(false)), "{s}");
        let m = common::http_get(&d.url("/metrics"))
            .await
            .expect("metrics answer");
        assert_eq!(m.0, 200);
        answered += 1;
        assert!(
            answered < 600,
            "not decided within a minute: {:?}",
            d.kinds("guardrail_refused").len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(d.kinds("alert_received").len(), 1000);
    let intents = d.kinds("action_intent");
    assert_eq!(intents.len(), 20, "the global cap, exactly");
    let refused = d.kinds("guardrail_refused");
    assert_eq!(refused.len(), 980);
    let by_rule = |rule: &str| refused.iter().filter(|r| r.data["rule"] == rule).count();
    assert_eq!(
        by_rule("max_actions") + by_rule("max_incidents"),
        980,
        "{refused:#?}"
    );
    assert!(by_rule("max_actions") > 0);
    let m = d.metrics.encode();
    assert_eq!(
        common::sample(
            &m,
            "homeostat_actions_total{kind=\"k8s.cordon\",outcome=\"dry_run\"}"
        ),
        Some(20.0),
        "{m}"
    );
    d.stop().await;
    verify_log(&dir.path().join("audit.jsonl"));
}

#[tokio::test(start_paused = true)]
async fn failing_incidents_open_the_breaker_which_holds_across_a_restart_until_reset() {
    let dir = tempfile::tempdir().unwrap();
    let (pods, fake) = many(40);
    // Auto with no Kubernetes client: every cordon fails, and one incident at a time.
    let agent = "mode = \"auto\"\n[guardrails]\nmax_incidents = 1\nbreaker_after = 3";
    let d = start(
        config(dir.path(), &[("cordon", CORDON)], agent, ""),
        fake.clone(),
    )
    .await;
    fake.set(&pods.iter().map(|p| (p.as_str(), 300.0)).collect::<Vec<_>>());
    d.wait_for("40 incidents decided", Duration::from_secs(3600), |d| {
        d.kinds("action_intent").len() + d.kinds("guardrail_refused").len() >= 40
    })
    .await;
    let outcomes = d.kinds("action_outcome");
    assert_eq!(outcomes.len(), 3, "exactly breaker_after failures ran");
    assert!(outcomes
        .iter()
        .all(|o| o.data["outcome"] == json!("failed")));
    assert_eq!(d.kinds("breaker_tripped")[0].data["failures"], json!(3));
    let m = d.metrics.encode();
    assert_eq!(
        common::sample(&m, "homeostat_breaker_open{playbook=\"cordon\"}"),
        Some(1.0),
        "{m}"
    );
    d.stop().await;

    // Still open after a restart; a reset over the API closes it.
    let d = start(
        config(dir.path(), &[("cordon", CORDON)], agent, ""),
        fake.clone(),
    )
    .await;
    let (_, s) = call(d.addr, "GET", "/api/v1/status", "", None).await;
    assert_eq!(s["breakers_open"], json!(["cordon"]), "{s}");
    let (status, body) = call(
        d.addr,
        "POST",
        "/api/v1/breakers/cordon/reset",
        r#"{"by": "dave", "reason": "kubeconfig fixed"}"#,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(d.kinds("breaker_reset")[0].data["by"], json!("dave"));
    let (_, s) = call(d.addr, "GET", "/api/v1/status", "", None).await;
    assert_eq!(s["breakers_open"], json!([]), "{s}");
    d.stop().await;
    verify_log(&dir.path().join("audit.jsonl"));
}

#[tokio::test(start_paused = true)]
async fn while_paused_plans_are_made_and_audited_but_nothing_runs_and_resume_lets_it_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let (pods, fake) = many(2);
    let agent = "mode = \"dry-run\"\n[api]\ntoken_file = \"token\"";
    let d = start(
        config(dir.path(), &[("cordon", CORDON)], agent, ""),
        fake.clone(),
    )
    .await;
    let (status, _) = call(d.addr, "POST", "/api/v1/pause", "{}", None).await;
    assert_eq!(status, 401, "paused without the token");
    assert!(!dir.path().join("homeostat.pause").exists());
    let (status, _) = call(
        d.addr,
        "POST",
        "/api/v1/pause",
        r#"{"reason": "incident review"}"#,
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    fake.set(&[(pods[0].as_str(), 300.0), (pods[1].as_str(), 100.0)]);
    d.wait_for("the paused step", Duration::from_secs(30), |d| {
        !d.kinds("guardrail_refused").is_empty()
    })
    .await;
    let refused = d.kinds("guardrail_refused");
    assert_eq!(refused[0].data["rule"], json!("paused"));
    assert_eq!(refused[0].data["message"], json!("incident review"));
    assert_eq!(d.kinds("plan").len(), 1, "the plan is still made");
    assert!(d.kinds("action_intent").is_empty());
    assert_eq!(d.metric("homeostat_paused"), Some(1.0));

    let (status, _) = call(d.addr, "POST", "/api/v1/resume", "{}", None).await;
    assert_eq!(status, 401);
    let (status, _) = call(d.addr, "POST", "/api/v1/resume", "{}", Some(TOKEN)).await;
    assert_eq!(status, 200);
    fake.set(&[(pods[0].as_str(), 100.0), (pods[1].as_str(), 300.0)]);
    d.wait_for("the step after resume", Duration::from_secs(30), |d| {
        !d.kinds("action_intent").is_empty()
    })
    .await;
    // A pause file that appears by other means (touch) is audited and obeyed too.
    std::fs::write(dir.path().join("homeostat.pause"), "").unwrap();
    ticks_pass(&d, 2).await;
    let kinds: Vec<String> = common::records(&dir.path().join("audit.jsonl"))
        .iter()
        .filter(|r| ["paused", "resumed"].contains(&r.kind.as_str()))
        .map(|r| format!("{} by {}", r.kind, r.data["by"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(kinds, ["paused by api", "resumed by api", "paused by file"]);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_rotates_its_audit_log_into_one_signed_chain_and_resumes_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("audit.key");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["audit", "keygen", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let fake = Fake::new().with_history(QUERY, &["a"]);
    fake.set(&[("a", 100.0)]);
    let agent = "audit_max_bytes = 65536\naudit_signing_key = \"audit.key\"";
    let d = start(config(dir.path(), &[], agent, ""), fake.clone()).await;
    // An anomaly opened before the rotation is resumed at the restart, under its id:
    // its record is in the sealed segment by then.
    fake.set(&[("a", 300.0)]);
    d.wait_for("the anomaly", Duration::from_secs(30), |d| {
        !d.kinds("anomaly_opened").is_empty()
    })
    .await;
    let id = d.kinds("anomaly_opened")[0].data["id"].clone();
    // Enough alert records to pass 64 KiB.
    for i in 0..3 {
        let (status, _) = post(d.addr, "/api/v1/alertmanager", &burst(i * 200, 200)).await;
        assert_eq!(status, 202);
    }
    let segment = dir.path().join("audit.jsonl.1.sealed");
    d.wait_for("a rotation", Duration::from_secs(60), |_| segment.exists())
        .await;
    d.stop().await;
    let log = dir.path().join("audit.jsonl");
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args([
            "audit",
            "verify",
            "--log",
            log.to_str().unwrap(),
            "--pubkey",
        ])
        .arg(dir.path().join("audit.key.pub"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stdout).to_string()
        + &*String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{said}");
    assert!(said.contains("segments"), "{said}");
    assert!(said.contains("checkpoints hold"), "{said}");

    let d = start(config(dir.path(), &[], agent, ""), fake.clone()).await;
    let resumed = d.kinds("anomaly_resumed");
    assert_eq!(resumed.len(), 1, "{resumed:#?}");
    assert_eq!(resumed[0].data["id"], id);
    d.stop().await;
}

const ERRORS: &str = "max by (pod) (hs_test_errors)";

/// Restarts a pod's deployment on either of its signals.
const RESTART_ON_ANY: &str = r#"
const PLAYBOOK = #{
    name: "restart-any",
    triggers: [#{ signal: "latency", min_score: 0.999 }, #{ signal: "errors", min_score: 0.999 }],
    allowed: #{ kinds: ["k8s.rollout_restart"] },
};
fn plan(anomaly) {
    [#{ kind: "k8s.rollout_restart", target: #{ namespace: "test", deployment: anomaly.labels.pod } }]
}
"#;

#[tokio::test(start_paused = true)]
async fn anomalies_of_one_pod_opening_together_are_one_incident_planned_once() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new()
        .with_history(QUERY, &["a", "b"])
        .with_history(ERRORS, &["a", "b"]);
    let both = |fake: &Fake, latency: &[(&str, f64)], errors: &[(&str, f64)]| {
        fake.set(latency);
        let values = errors.iter().map(|(p, v)| (pod_labels(p), *v)).collect();
        fake.answer(ERRORS, Answer::Values(values));
    };
    both(
        &fake,
        &[("a", 100.0), ("b", 100.0)],
        &[("a", 100.0), ("b", 100.0)],
    );
    let cfg = config_with(
        dir.path(),
        &[("restart", RESTART_ON_ANY)],
        "incident_window = \"1m\"",
        "",
        &format!("[[signals]]\nname = \"errors\"\nquery = '{ERRORS}'\ndirection = \"up\""),
    );
    let d = start(cfg, fake.clone()).await;

    // Pod a's latency, then 20 s later its errors; pod b's errors at the same time.
    both(
        &fake,
        &[("a", 400.0), ("b", 100.0)],
        &[("a", 100.0), ("b", 100.0)],
    );
    d.wait_for("a's latency", Duration::from_secs(10), |d| {
        d.kinds("anomaly_opened").len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    both(
        &fake,
        &[("a", 400.0), ("b", 100.0)],
        &[("a", 400.0), ("b", 400.0)],
    );
    d.wait_for("three anomalies", Duration::from_secs(10), |d| {
        d.kinds("anomaly_opened").len() == 3 && !d.kinds("playbook_suppressed").is_empty()
    })
    .await;
    ticks_pass(&d, 3).await;

    let opened: HashMap<(String, String), serde_json::Value> = d
        .kinds("anomaly_opened")
        .into_iter()
        .map(|r| {
            let key = (
                r.data["signal"].as_str().unwrap().to_string(),
                r.data["labels"]["pod"].as_str().unwrap().to_string(),
            );
            (key, r.data)
        })
        .collect();
    let id = |signal: &str, pod: &str| opened[&(signal.into(), pod.into())]["id"].clone();
    let incident =
        |signal: &str, pod: &str| opened[&(signal.into(), pod.into())]["incident"].clone();
    // a's errors joined a's latency's incident; b's errors is an incident of its own.
    assert_eq!(incident("latency", "a"), id("latency", "a"));
    assert_eq!(incident("errors", "a"), id("latency", "a"));
    assert_eq!(incident("errors", "b"), id("errors", "b"));

    // One plan per incident: a's second member is suppressed, naming the incident.
    let matched: Vec<_> = d
        .kinds("playbook_matched")
        .into_iter()
        .map(|r| r.data["anomaly_id"].clone())
        .collect();
    assert_eq!(matched.len(), 2, "{matched:?}");
    assert!(matched.contains(&id("latency", "a")) && matched.contains(&id("errors", "b")));
    let suppressed = d.kinds("playbook_suppressed");
    assert_eq!(suppressed.len(), 1);
    assert_eq!(suppressed[0].data["anomaly_id"], id("errors", "a"));
    assert_eq!(suppressed[0].data["reason"], json!("incident"));
    assert_eq!(suppressed[0].data["group"], id("latency", "a"));
    // Wall-clock seconds (which a paused test clock does not move): within the window.
    let ago = suppressed[0].data["last_plan_secs_ago"].as_f64().unwrap();
    assert!((0.0..60.0).contains(&ago), "{ago}");
    // The playbook saw the incident too.
    let plan_for_a = d
        .kinds("playbook_matched")
        .into_iter()
        .find(|r| r.data["anomaly_id"] == id("latency", "a"))
        .unwrap();
    assert_eq!(plan_for_a.data["anomaly"]["incident"], id("latency", "a"));
    d.stop().await;

    // `audit show` on the incident shows both members' records, and not b's.
    let log = dir.path().join("audit.jsonl");
    let first = id("latency", "a");
    let shown = homeostat::report::AuditIncident::read(&log, first.as_str().unwrap(), 200)
        .unwrap()
        .to_string();
    assert!(
        shown.contains("2 members (anomalies and alerts)"),
        "{shown}"
    );
    for member in [id("latency", "a"), id("errors", "a")] {
        assert!(shown.contains(member.as_str().unwrap()), "{shown}");
    }
    assert!(
        !shown.contains(id("errors", "b").as_str().unwrap()),
        "{shown}"
    );
    verify_log(&log);
}

/// Rewrites a queued plan's deployment and its recorded hash to match, as someone who
/// can write the queue directory could; returns the new hash.
fn rewrite_with_hash(file: &Path) -> String {
    use homeostat::act::approval::{plan_hash, Pending};
    let text = to_prod(&std::fs::read_to_string(file).unwrap());
    let mut p: Pending = serde_json::from_str(&text).unwrap();
    p.plan_hash = plan_hash(&p.plan);
    std::fs::write(file, serde_json::to_string_pretty(&p).unwrap()).unwrap();
    p.plan_hash
}

#[tokio::test(start_paused = true)]
async fn a_plan_rewritten_with_a_matching_hash_is_refused_because_the_log_recorded_another() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let agent = "mode = \"auto\"\n[api]\ntoken_file = \"token\"";
    let fake = Fake::new().with_history(QUERY, &["p1"]);
    fake.set(&[("p1", 100.0)]);
    let d = start(
        config(dir.path(), &[("restart", &asking())], agent, ""),
        fake.clone(),
    )
    .await;
    fake.set(&[("p1", 300.0)]);
    let p1 = waiting(&d, "p1").await;
    let id = p1["id"].as_str().unwrap();
    let file = queued_file(dir.path(), &p1);
    let original = std::fs::read_to_string(&file).unwrap();
    let rewritten = rewrite_with_hash(&file);
    // `show` displays the rewritten plan, and that the log recorded another.
    let show = format!("/api/v1/approvals/{id}");
    let (status, shown) = call(d.addr, "GET", &show, "", Some(TOKEN)).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["plan_hash"], json!(rewritten));
    assert_eq!(
        shown["audit"],
        json!({"recorded_plan_hash": p1["plan_hash"], "matches": false})
    );
    // Approved by the hash it shows: refused, and nothing runs.
    let approve = format!("/api/v1/approvals/{id}/approve");
    let body = json!({ "hash": rewritten }).to_string();
    let (status, answer) = call(d.addr, "POST", &approve, &body, Some(TOKEN)).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer.to_string().contains("not the one audited"),
        "{answer}"
    );
    ticks_pass(&d, 2).await;
    assert!(d.kinds("approval_granted").is_empty());
    assert!(d.kinds("action_intent").is_empty());
    // Its plan edited, its hash left as recorded: not the audited plan either.
    std::fs::write(&file, to_prod(&original)).unwrap();
    let (_, shown) = call(d.addr, "GET", &show, "", Some(TOKEN)).await;
    assert_eq!(shown["plan_hash"], p1["plan_hash"]);
    assert_eq!(shown["audit"]["matches"], json!(false), "{shown}");
    // The plan as queued and audited is shown as such, approved and runs.
    std::fs::write(&file, &original).unwrap();
    let (_, shown) = call(d.addr, "GET", &show, "", Some(TOKEN)).await;
    assert_eq!(shown["audit"]["matches"], json!(true), "{shown}");
    let body = json!({ "hash": p1["plan_hash"] }).to_string();
    let (status, answer) = call(d.addr, "POST", &approve, &body, Some(TOKEN)).await;
    assert_eq!(status, 200, "{answer}");
    d.wait_for("the plan to run", Duration::from_secs(30), |d| {
        !d.kinds("action_intent").is_empty()
    })
    .await;
    assert_eq!(
        d.kinds("action_intent")[0].data["action"]["target"]["namespace"],
        json!("test")
    );
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_approval_given_while_the_agent_is_down_runs_at_start_unless_its_plan_changed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let agent = "mode = \"auto\"\n[api]\ntoken_file = \"token\"";
    let fake = Fake::new().with_history(QUERY, &["p1", "p2", "p3"]);
    fake.set(&[("p1", 100.0), ("p2", 100.0), ("p3", 100.0)]);
    let cfg = || config(dir.path(), &[("restart", &asking())], agent, "");
    let d = start(cfg(), fake.clone()).await;
    fake.set(&[("p1", 300.0), ("p2", 300.0), ("p3", 300.0)]);
    d.wait_for("three approval requests", Duration::from_secs(30), |d| {
        d.kinds("approval_requested").len() == 3
    })
    .await;
    let (p1, p2) = (waiting(&d, "p1").await, waiting(&d, "p2").await);
    let p3 = waiting(&d, "p3").await;
    d.stop().await;

    // All approved offline; p2's plan is then edited on disk, and p3's rewritten with
    // a hash to match (which only the audit log's record can tell).
    let queue =
        homeostat::act::approval::Approvals::open(&dir.path().join("audit.jsonl.approvals"))
            .unwrap();
    let log = dir.path().join("audit.jsonl");
    let file3 = queued_file(dir.path(), &p3);
    // The CLI refuses a rewritten plan too, by the hash the log recorded.
    let queued3 = std::fs::read_to_string(&file3).unwrap();
    let rewritten3 = rewrite_with_hash(&file3);
    let id3 = p3["id"].as_str().unwrap();
    let audit = |file: &str| {
        let p = serde_json::from_str(file).unwrap();
        homeostat::act::control::audit_match(&log, &p).unwrap()
    };
    let shown = audit(&std::fs::read_to_string(&file3).unwrap());
    assert_eq!(
        shown.recorded_plan_hash.as_deref(),
        p3["plan_hash"].as_str()
    );
    assert!(!shown.matches);
    assert!(audit(&queued3).matches);
    let refused =
        homeostat::act::control::approve_offline(&queue, &log, id3, &rewritten3, "sre", "go");
    assert!(
        matches!(
            refused,
            Err(homeostat::act::approval::ApprovalError::NotAudited { .. })
        ),
        "{refused:?}"
    );
    std::fs::write(&file3, queued3).unwrap();
    for p in [&p1, &p2, &p3] {
        let (id, hash) = (p["id"].as_str().unwrap(), p["plan_hash"].as_str().unwrap());
        homeostat::act::control::approve_offline(&queue, &log, id, hash, "sre", "go").unwrap();
    }
    let file = queued_file(dir.path(), &p2);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, to_prod(&text)).unwrap();
    // Rewritten after the approval: only the start's check can tell.
    let rewritten3 = rewrite_with_hash(&file3);

    fake.set(&[("p1", 100.0), ("p2", 100.0), ("p3", 100.0)]);
    let d = start(cfg(), fake.clone()).await;
    d.wait_for("p1's plan to run", Duration::from_secs(30), |d| {
        !d.kinds("action_intent").is_empty()
    })
    .await;
    ticks_pass(&d, 3).await;
    let granted = d.kinds("approval_granted");
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].data["id"], p1["id"]);
    assert_eq!(granted[0].data["by"], json!("sre"));
    let rejected = d.kinds("approval_rejected");
    assert_eq!(rejected.len(), 2, "{rejected:#?}");
    let rejected = |p: &serde_json::Value| {
        rejected
            .iter()
            .find(|r| r.data["id"] == p["id"])
            .unwrap_or_else(|| panic!("{} not rejected", p["id"]))
            .data
            .clone()
    };
    let (r2, r3) = (rejected(&p2), rejected(&p3));
    assert_eq!(r2["by"], json!("homeostat"));
    assert!(
        r2["reason"]
            .as_str()
            .unwrap()
            .contains(p2["plan_hash"].as_str().unwrap()),
        "{r2}"
    );
    // p3's file agreed with itself; the log's record of its request did not.
    assert_eq!(r3["by"], json!("homeostat"));
    let reason = r3["reason"].as_str().unwrap();
    assert!(
        reason.contains("not the one audited")
            && reason.contains(p3["plan_hash"].as_str().unwrap())
            && reason.contains(&rewritten3),
        "{r3}"
    );
    assert!(!file3.exists(), "the rewritten plan left in the queue");
    let intents = d.kinds("action_intent");
    assert_eq!(intents.len(), 1);
    assert_eq!(
        intents[0].data["action"]["target"]["deployment"],
        json!("p1")
    );
    assert!(!file.exists(), "the changed plan left in the queue");
    d.stop().await;
    verify_log(&dir.path().join("audit.jsonl"));
}

#[tokio::test(start_paused = true)]
async fn a_firing_alert_on_a_pod_with_an_open_anomaly_joins_its_incident() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new().with_history(QUERY, &["a"]);
    fake.set(&[("a", 100.0)]);
    let restart = r#"
const PLAYBOOK = #{
    name: "restart-pod",
    triggers: [#{ signal: "latency", min_score: 0.999 }, #{ alertname: "PodCrashLooping" }],
    allowed: #{ kinds: ["k8s.rollout_restart"] },
};
fn plan(event) {
    [#{ kind: "k8s.rollout_restart", target: #{ namespace: "test", deployment: event.labels.pod } }]
}
"#;
    let d = start(
        config(dir.path(), &[("restart", restart)], "", ""),
        fake.clone(),
    )
    .await;
    fake.set(&[("a", 400.0)]);
    d.wait_for("the anomaly's plan", Duration::from_secs(10), |d| {
        !d.kinds("plan").is_empty()
    })
    .await;
    let alert = |pod: &str, fingerprint: &str| {
        json!({
            "version": "4", "status": "firing", "receiver": "homeostat", "groupKey": "{}:{}",
            "alerts": [{"status": "firing",
                "labels": {"alertname": "PodCrashLooping", "pod": pod, "namespace": "test"},
                "annotations": {}, "startsAt": "2026-12-07T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z", "fingerprint": fingerprint}]
        })
        .to_string()
    };
    // The same pod: one incident, no second restart. Another pod: its own.
    let (status, _) = post(d.addr, "/api/v1/alertmanager", &alert("a", "f1")).await;
    assert_eq!(status, 202);
    let (status, _) = post(d.addr, "/api/v1/alertmanager", &alert("b", "f2")).await;
    assert_eq!(status, 202);
    d.wait_for(
        "b's plan and a's suppression",
        Duration::from_secs(10),
        |d| d.kinds("plan").len() == 2 && !d.kinds("playbook_suppressed").is_empty(),
    )
    .await;
    let anomaly_id = d.kinds("anomaly_opened")[0].data["id"].clone();
    let suppressed = &d.kinds("playbook_suppressed")[0].data;
    assert_eq!(suppressed["reason"], json!("incident"));
    assert_eq!(suppressed["group"], anomaly_id);
    let targets: Vec<_> = d
        .kinds("plan")
        .iter()
        .map(|r| r.data["actions"][0]["target"]["deployment"].clone())
        .collect();
    assert_eq!(targets, [json!("a"), json!("b")]);
    // b's alert delivered again (Alertmanager repeats a firing alert): the same incident.
    let (status, _) = post(d.addr, "/api/v1/alertmanager", &alert("b", "f2")).await;
    assert_eq!(status, 202);
    d.wait_for("the repeat's suppression", Duration::from_secs(10), |d| {
        d.kinds("playbook_suppressed").len() == 2
    })
    .await;
    let again = &d.kinds("playbook_suppressed")[1].data;
    assert_eq!(again["reason"], json!("incident"));
    assert_eq!(
        again["group"], again["anomaly_id"],
        "b's alert started its own"
    );
    assert_eq!(d.kinds("plan").len(), 2);
    d.stop().await;

    // `audit show` on the anomaly's incident shows the alert that joined it.
    let log = dir.path().join("audit.jsonl");
    let shown = homeostat::report::AuditIncident::read(&log, anomaly_id.as_str().unwrap(), 200)
        .unwrap()
        .to_string();
    assert!(
        shown.contains("2 members (anomalies and alerts)"),
        "{shown}"
    );
    assert!(
        shown.contains(suppressed["anomaly_id"].as_str().unwrap()),
        "{shown}"
    );
    assert!(
        !shown.contains(again["anomaly_id"].as_str().unwrap()),
        "{shown}"
    );
}

#[tokio::test(start_paused = true)]
async fn in_one_incident_a_playbook_with_group_by_runs_once_per_target_and_one_without_once() {
    let dir = tempfile::tempdir().unwrap();
    let on_node = |pod: &str| Labels::from_pairs([("pod", pod), ("node", "n1")]);
    let (a, b) = (on_node("a"), on_node("b"));
    let fake = Fake::new().with_series_history(QUERY, &[a.clone(), b.clone()]);
    let set = |va: f64, vb: f64| {
        fake.answer(
            QUERY,
            Answer::Values(vec![(a.clone(), va), (b.clone(), vb)]),
        );
    };
    set(100.0, 100.0);
    let per_pod = r#"
const PLAYBOOK = #{ name: "restart-pod", trigger: #{ signal: "latency", min_score: 0.999 },
    allowed: #{ kinds: ["k8s.rollout_restart"] }, group_by: ["pod"] };
fn plan(anomaly) {
    [#{ kind: "k8s.rollout_restart", target: #{ namespace: "test", deployment: anomaly.labels.pod } }]
}
"#;
    let per_node = r#"
const PLAYBOOK = #{ name: "cordon-node", trigger: #{ signal: "latency", min_score: 0.999 },
    allowed: #{ kinds: ["k8s.cordon"] } };
fn plan(anomaly) { [#{ kind: "k8s.cordon", target: #{ node: anomaly.labels.node } }] }
"#;
    let d = start(
        config(dir.path(), &[("pod", per_pod), ("node", per_node)], "", ""),
        fake.clone(),
    )
    .await;
    set(400.0, 400.0);
    d.wait_for(
        "three plans and a suppression",
        Duration::from_secs(10),
        |d| d.kinds("plan").len() == 3 && !d.kinds("playbook_suppressed").is_empty(),
    )
    .await;
    ticks_pass(&d, 3).await;
    let opened = d.kinds("anomaly_opened");
    assert_eq!(opened.len(), 2);
    assert_eq!(
        opened[1].data["incident"], opened[0].data["id"],
        "one incident: node n1"
    );
    let mut plans: Vec<String> = d
        .kinds("plan")
        .iter()
        .map(|r| format!("{} {}", r.data["playbook"], r.data["actions"][0]["target"]))
        .collect();
    plans.sort();
    assert_eq!(
        plans,
        [
            r#""cordon-node" {"node":"n1"}"#,
            r#""restart-pod" {"deployment":"a","namespace":"test"}"#,
            r#""restart-pod" {"deployment":"b","namespace":"test"}"#,
        ]
    );
    let suppressed = d.kinds("playbook_suppressed");
    assert_eq!(suppressed.len(), 1);
    assert_eq!(suppressed[0].data["playbook"], json!("cordon-node"));
    assert_eq!(suppressed[0].data["reason"], json!("incident"));
    d.stop().await;
}
