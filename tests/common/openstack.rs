//! The real Keystone and Nova of `scripts/openstack.sh` for tests: one cloud per test
//! binary (started on first use, on ports of its own, gone when the binary exits), a
//! small Nova client for what tests set up (booting servers, reading state as admin),
//! and homeostat's own client connected with any of the harness' identities.
//!
//! When the harness is not installed, tests fail with how to install it, unless
//! `HOMEOSTAT_SKIP_OPENSTACK=1`, in which case they say loudly that they skip.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use homeostat::act::openstack::{OpenStack, Settings};
use serde_json::{json, Value};

/// What `scripts/openstack.sh start` wrote: where everything is.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Cloud {
    /// Keystone's v3 URL.
    pub keystone_url: String,
    /// Nova's endpoint (`.../v2.1`).
    pub nova_url: String,
    /// The test-only control API (stop/start a compute service).
    pub control_url: String,
    /// The compute hosts (`compute1`, `compute2`).
    pub computes: Vec<String>,
    /// An image Nova's fake Glance has.
    pub image: String,
    /// The clouds.yaml clients read.
    pub clouds_yaml: PathBuf,
    /// Every password and secret the harness made, to look for leaks.
    pub secrets: Vec<String>,
    /// The admin's password (Keystone).
    pub admin_password: String,
    /// The member's password.
    pub member_password: String,
    /// The run directory (logs of Keystone and Nova).
    pub run_dir: PathBuf,
}

static CLOUD: OnceLock<Option<Cloud>> = OnceLock::new();

fn home() -> PathBuf {
    std::env::var_os("HOMEOSTAT_OPENSTACK_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/homeostat-openstack")
        })
}

/// This binary's cloud, started on first use; `None` (after saying so) when the
/// harness is not installed and `HOMEOSTAT_SKIP_OPENSTACK=1`.
pub fn cloud() -> Option<&'static Cloud> {
    CLOUD.get_or_init(start).as_ref()
}

fn start() -> Option<Cloud> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/openstack.sh");
    let run = home()
        .join("runs")
        .join(format!("test-{}", std::process::id()));
    let started = Instant::now();
    let out = Command::new(&script)
        .arg("start")
        .arg(&run)
        .env("HOMEOSTAT_WATCH_PID", std::process::id().to_string())
        .output()
        .expect("scripts/openstack.sh runs");
    if out.status.code() == Some(3) {
        if std::env::var("HOMEOSTAT_SKIP_OPENSTACK").as_deref() == Ok("1") {
            eprintln!(
                "SKIPPED: the OpenStack harness is not installed and HOMEOSTAT_SKIP_OPENSTACK=1 \
                 (scripts/openstack.sh install)"
            );
            return None;
        }
        panic!(
            "the OpenStack test harness (real Keystone + Nova) is not installed: run \
             `scripts/openstack.sh install` (scripts/test.sh does), or set \
             HOMEOSTAT_SKIP_OPENSTACK=1 to skip these tests"
        );
    }
    assert!(
        out.status.success(),
        "scripts/openstack.sh start failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("openstack harness ready in {:?}", started.elapsed());
    let state = std::fs::read_to_string(run.join("state.json")).unwrap();
    Some(serde_json::from_str(&state).unwrap())
}

/// Returns this binary's cloud, or returns from the test when it is skipped.
#[macro_export]
macro_rules! cloud_or_skip {
    () => {
        match common::openstack::cloud() {
            Some(c) => c,
            None => return,
        }
    };
}

impl Cloud {
    /// `[openstack]` settings for one of the clouds.yaml entries.
    pub fn settings(&self, entry: &str) -> Settings {
        Settings {
            cloud: Some(entry.into()),
            clouds_file: Some(self.clouds_yaml.clone()),
            timeout: Duration::from_secs(20),
            action_timeout: Duration::from_secs(60),
            ..Settings::default()
        }
    }

    /// homeostat's client, connected as one of the clouds.yaml entries.
    pub async fn connect(&self, entry: &str) -> OpenStack {
        OpenStack::connect(&self.settings(entry))
            .await
            .unwrap_or_else(|e| panic!("connect as {entry}: {e}"))
    }

    /// A test-side Nova client as the admin (role admin on project homeostat).
    pub async fn admin(&self) -> Nova {
        Nova::login(self, "admin", &self.admin_password).await
    }

    /// A test-side Nova client as the member.
    pub async fn member(&self) -> Nova {
        Nova::login(self, "homeostat-member", &self.member_password).await
    }

    /// Stops or starts the nova-compute of `host` (test-only control API).
    pub async fn compute(&self, host: &str, action: &str) {
        let r = reqwest::Client::new()
            .post(format!("{}/computes/{host}/{action}", self.control_url))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "{action} {host}: {}",
            r.text().await.unwrap()
        );
    }

    /// Keystone's and Nova's logs, for a failing test's message.
    pub fn logs(&self) -> String {
        ["nova.out", "keystone.out", "identity.out"]
            .iter()
            .map(|f| std::fs::read_to_string(self.run_dir.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A minimal Nova client for tests' own setup and checks (not the code under test).
pub struct Nova {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Nova {
    async fn login(cloud: &Cloud, user: &str, password: &str) -> Nova {
        let http = reqwest::Client::new();
        let r = http
            .post(format!("{}/auth/tokens", cloud.keystone_url))
            .json(&json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": user, "domain": {"id": "default"}, "password": password}}},
                "scope": {"project": {"name": "homeostat", "domain": {"id": "default"}}}}}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "login {user}: {}", r.status());
        let token = r.headers()["x-subject-token"].to_str().unwrap().to_string();
        Nova {
            url: cloud.nova_url.clone(),
            token,
            http,
        }
    }

    /// The instance actions Nova recorded for a server (`create`, `reboot`, ...), in
    /// Nova's order: its own account of what was done to it.
    pub async fn actions(&self, id: &str) -> Vec<String> {
        let (_, body) = self
            .call("GET", &format!("/servers/{id}/os-instance-actions"), None)
            .await;
        body["instanceActions"]
            .as_array()
            .unwrap_or_else(|| panic!("no instance actions: {body}"))
            .iter()
            .map(|a| a["action"].as_str().expect("an action name").to_string())
            .collect()
    }

    /// Sends a request at microversion 2.100; status and JSON body.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .header("X-Auth-Token", &self.token)
            .header("OpenStack-API-Version", "compute 2.100");
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Boots a server (no network), on `host` if given, and waits until it is ACTIVE.
    pub async fn boot(&self, name: &str, metadata: Value, host: Option<&str>) -> String {
        let mut server = json!({"name": name, "imageRef": "155d900f-4e14-4e4c-a73d-069cbf4541e6",
            "flavorRef": "1", "networks": "none", "metadata": metadata});
        if let Some(h) = host {
            server["host"] = json!(h);
        }
        let (status, body) = self
            .call("POST", "/servers", Some(json!({ "server": server })))
            .await;
        assert_eq!(status, 202, "boot {name}: {body}");
        let id = body["server"]["id"].as_str().unwrap().to_string();
        self.wait(&id, "boot", |s| {
            s["status"] == "ACTIVE" && s["OS-EXT-STS:task_state"].is_null()
        })
        .await;
        id
    }

    /// The server as Nova shows it.
    pub async fn server(&self, id: &str) -> Value {
        let (status, body) = self.call("GET", &format!("/servers/{id}"), None).await;
        assert_eq!(status, 200, "{body}");
        body["server"].clone()
    }

    /// Sends a server action and expects 202.
    pub async fn action(&self, id: &str, body: Value) {
        let (status, answer) = self
            .call("POST", &format!("/servers/{id}/action"), Some(body.clone()))
            .await;
        assert_eq!(status, 202, "{body}: {answer}");
    }

    /// Waits (up to 60 s) until the server satisfies `cond`.
    pub async fn wait(&self, id: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.server(id).await;
            if cond(&s) {
                return s;
            }
            assert!(s["status"] != "ERROR", "{what}: server {id} in ERROR: {s}");
            assert!(
                Instant::now() < deadline,
                "{what}: server {id} never got there: {s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The compute service of `host`.
    pub async fn service(&self, host: &str) -> Value {
        let (status, body) = self
            .call(
                "GET",
                &format!("/os-services?host={host}&binary=nova-compute"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["services"][0].clone()
    }
}

/// What the executor does with a step, minus the audit: prepare; skipped (with what was
/// observed) when nothing is to be sent; else execute within 60 s. The requests sent and
/// the report.
pub async fn run(
    os: &OpenStack,
    a: &homeostat::playbook::Action,
) -> (Vec<homeostat::act::Request>, homeostat::act::Report) {
    use homeostat::act::{Effector as _, Outcome, Report};
    match os.prepare(a).await {
        Err(report) => (vec![], report),
        Ok(p) if p.requests.is_empty() => (
            vec![],
            Report {
                outcome: Outcome::Skipped,
                detail: p.observed,
            },
        ),
        Ok(p) => {
            let requests = p.requests.clone();
            let report = os
                .execute(
                    a,
                    p,
                    false,
                    tokio::time::Instant::now() + Duration::from_secs(60),
                )
                .await;
            (requests, report)
        }
    }
}
