//! Signals at any moment of the daemon's life (issue 23): a SIGHUP while it starts
//! must not kill it (SIGHUP's default action), and SIGTERM must stop it cleanly then
//! as later. In a test binary of its own, so that other tests do not slow its start.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::http_get;

/// Writes a playbook, and a config whose Prometheus does not answer (the agent starts
/// anyway: it warms up from live data) and that names it; returns the config's text.
fn config(dir: &Path, listen: &str) -> String {
    std::fs::write(
        dir.join("p.rhai"),
        r#"const PLAYBOOK = #{ name: "p", triggers: [#{ signal: "up" }], allowed: #{ kinds: ["notify.alertmanager"] } };
fn plan(a) { [] }"#,
    )
    .unwrap();
    format!(
        r#"playbooks = ["p.rhai"]
[prometheus]
url = "http://127.0.0.1:9"
timeout = "1s"
[agent]
listen = "{listen}"
audit_log = "audit.jsonl"
models_dir = "models"
[[signals]]
name = "up"
query = "up"
"#
    )
}

/// The address the daemon says it listens on, once it has said so.
fn listening(logs: &str) -> Option<String> {
    let rest = logs.split("listen=Some(").nth(1)?;
    Some(rest.split(')').next()?.to_string())
}

/// `homeostat run` as a child process, its output in files.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn spawn(config: &Path) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_homeostat"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .expect("starts homeostat");
        Daemon { child, dir }
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Its exit status, waiting up to 10 s.
    fn wait(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "still running after 10 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon, started on a config that is a named pipe, and the pipe's write end,
/// opened once the daemon opens it to read: from then on it is known to be reading
/// its config (no sooner: before `main`, while the loader runs, a signal's default
/// action ends any process), and it waits there until the config is written.
fn start_reading_config(dir: &Path) -> (Daemon, std::fs::File) {
    use std::os::unix::fs::OpenOptionsExt;
    const O_NONBLOCK: i32 = 0o4000;
    const ENXIO: i32 = 6;
    let fifo = dir.join("h.toml");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let mut daemon = Daemon::spawn(&fifo);
    let started = Instant::now();
    loop {
        // Opening a pipe's write end without blocking fails until there is a reader.
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(&fifo)
        {
            Ok(f) => return (daemon, f),
            Err(e) if e.raw_os_error() == Some(ENXIO) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(
            daemon.exited().is_none() && started.elapsed() < Duration::from_secs(10),
            "never read its config:\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[tokio::test]
async fn sighup_while_starting_is_harmless_and_sigterm_still_stops_it_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), "127.0.0.1:0");
    let (mut daemon, pipe) = start_reading_config(dir.path());
    // Twenty in 100 ms: while it reads its config, then while it loads its playbook,
    // opens its audit log and binds its port, before its loop runs.
    let mut pipe = Some(pipe);
    for i in 0..20 {
        daemon.signal("-HUP");
        if i == 4 {
            let mut pipe = pipe.take().unwrap();
            if let Err(e) = pipe.write_all(text.as_bytes()) {
                panic!("ended while reading its config ({e}): {:?}", daemon.wait());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    while match listening(&daemon.logs()) {
        Some(listen) => http_get(&format!("http://{listen}/healthz"))
            .await
            .is_none(),
        None => true,
    } {
        assert!(
            daemon.exited().is_none(),
            "ended by SIGHUP: {:?}\n{}",
            daemon.exited(),
            daemon.logs()
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not serving:\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Once it runs, a SIGHUP reloads.
    daemon.signal("-HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(daemon.exited().is_none(), "{}", daemon.logs());
    assert!(
        daemon.logs().contains("SIGHUP received"),
        "{}",
        daemon.logs()
    );
    daemon.signal("-TERM");
    let status = daemon.wait();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", daemon.logs());
}

#[test]
fn sigterm_while_starting_stops_it_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), "127.0.0.1:0");
    let (mut daemon, mut pipe) = start_reading_config(dir.path());
    daemon.signal("-TERM");
    pipe.write_all(text.as_bytes()).unwrap();
    drop(pipe);
    let status = daemon.wait();
    // Ended by the signal itself, it would have no exit code.
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", daemon.logs());
    let log = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(log.contains("agent_stopped"), "{log}");
}
