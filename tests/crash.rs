//! kill -9, again and again, under alert load: the binary must restart every time, keep
//! its audit chain intact, lose no alert it accepted and run no action twice.
//!
//! `HOMEOSTAT_KILLS` sets the number of kills (CI runs a few; run 100 locally with
//! `HOMEOSTAT_KILLS=100 cargo test --release --test crash -- --nocapture`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use homeostat::audit;

const PLAYBOOK: &str = r#"
const PLAYBOOK = #{ name: "reboot", trigger: #{ alertname: "Crash" },
    allowed: #{ kinds: ["openstack.server_reboot"] }, group_by: ["instance"], cooldown: "1h" };
fn plan(alert) {
    [#{ kind: "openstack.server_reboot", target: #{ server: alert.labels.instance }, params: #{ type: "soft" } }]
}
"#;

fn write_config(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("reboot.rhai"), PLAYBOOK).unwrap();
    let config = dir.join("homeostat.toml");
    // Port 9 (discard) refuses connections: signals fail fast and are never anomalous;
    // this test is about alerts.
    std::fs::write(
        &config,
        r#"
playbooks = ["reboot.rhai"]
[prometheus]
url = "http://127.0.0.1:9"
timeout = "1s"
[agent]
interval = "1s"
listen = "127.0.0.1:0"
audit_log = "audit.jsonl"
[[signals]]
name = "up"
query = 'up'
"#,
    )
    .unwrap();
    config
}

/// The agent as a child process, and the address it listens on.
struct Running {
    child: Child,
    log: PathBuf,
    addr: String,
}

fn start(config: &Path, dir: &Path, n: usize) -> Running {
    let log = dir.join(format!("agent-{n}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut running = Running {
        child,
        log,
        addr: String::new(),
    };
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&running.log).unwrap_or_default();
        if let Some(addr) = text
            .split("listen=Some(")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
        {
            running.addr = addr.to_string();
            return running;
        }
        if let Ok(Some(status)) = running.child.try_wait() {
            panic!("start {n} failed ({status}):\n{text}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "start {n}: not listening after 30s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alert(i: usize) -> String {
    serde_json::json!({
        "version": "4", "status": "firing", "receiver": "homeostat", "groupKey": "{}",
        "alerts": [{"status": "firing", "labels": {"alertname": "Crash", "instance": format!("vm-{}", i % 40)},
            "annotations": {}, "startsAt": "2026-12-07T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": format!("f{i}")}]
    })
    .to_string()
}

/// What the log says: fingerprints received, and action intents per server.
fn outcome(log: &Path) -> (BTreeSet<String>, BTreeMap<String, usize>) {
    let mut received = BTreeSet::new();
    let mut intents = BTreeMap::new();
    for r in audit::read_records(log).unwrap() {
        match r.kind.as_str() {
            "alert_received" => {
                received.insert(
                    r.data["id"]
                        .as_str()
                        .unwrap()
                        .trim_start_matches("am-")
                        .to_string(),
                );
            }
            "action_intent" => {
                let server = r.data["action"]["target"]["server"]
                    .as_str()
                    .unwrap()
                    .to_string();
                *intents.entry(server).or_default() += 1;
            }
            _ => {}
        }
    }
    (received, intents)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_alert_load_loses_nothing_accepted_and_doubles_nothing() {
    let kills: usize = std::env::var("HOMEOSTAT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let http = reqwest::Client::new();
    let mut accepted = BTreeSet::new();
    let mut next = 0usize;
    // A cheap deterministic spread of kill times, 50 ms to ~1 s after start.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for n in 0..kills {
        let mut agent = start(&config, dir.path(), n);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = Duration::from_millis(50 + seed % 1000);
        let began = Instant::now();
        while began.elapsed() < kill_after {
            let url = format!("http://{}/api/v1/alertmanager", agent.addr);
            let sent = http
                .post(&url)
                .header("content-type", "application/json")
                .body(alert(next))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if sent.is_ok_and(|r| r.status() == 202) {
                accepted.insert(format!("f{next}"));
            }
            next += 1;
        }
        agent.child.kill().unwrap(); // SIGKILL
        agent.child.wait().unwrap();
    }

    // A last, clean run: it must take up everything accepted, then stop on SIGTERM.
    let mut agent = start(&config, dir.path(), kills);
    let log = dir.path().join("audit.jsonl");
    let began = Instant::now();
    loop {
        let (received, _) = outcome(&log);
        if accepted.is_subset(&received) {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "{} accepted alerts never handled",
            accepted.difference(&received).count()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = agent.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = agent.child.wait().unwrap();
    let mut text = String::new();
    std::fs::File::open(&agent.log)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(status.success(), "{status}:\n{text}");

    let records = audit::verify(&log).unwrap_or_else(|e| panic!("chain broken: {e}"));
    let (received, intents) = outcome(&log);
    let doubled: Vec<_> = intents.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "actions run twice: {doubled:?}");
    eprintln!(
        "{kills} kills: {} alerts sent, {} accepted, {} received, {} servers acted on once, {records} records, chain intact",
        next,
        accepted.len(),
        received.len(),
        intents.len()
    );
}
