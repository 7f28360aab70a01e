//! The binary's offline commands: `check` and `audit`, their output and exit codes.

use std::path::Path;
use std::process::{Command, Output};

use homeostat::audit::AuditLog;
use serde_json::json;

fn homeostat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(args)
        .output()
        .expect("runs the binary")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const PLAYBOOK: &str = r#"
const PLAYBOOK = #{ name: "restart", trigger: #{ signal: "errors", min_score: 0.999 }, allowed: #{ kinds: ["k8s.rollout_restart"] } };
fn plan(anomaly) { [#{ kind: "k8s.rollout_restart", target: #{ namespace: "shop", deployment: "cart" } }] }
"#;

/// A backtest's data directory for one category under `dir`, created.
fn category(dir: &Path, name: &str) -> std::path::PathBuf {
    let data = dir.join("data").join(name);
    std::fs::create_dir_all(&data).unwrap();
    data
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn check_accepts_a_good_config_with_its_playbook() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "restart.rhai", PLAYBOOK);
    let cfg = write(
        dir.path(),
        "h.toml",
        r#"
        playbooks = ["restart.rhai"]
        [prometheus]
        url = "http://127.0.0.1:9090"
        [[signals]]
        name = "errors"
        query = "sum by (deployment) (rate(errors_total[5m]))"
        "#,
    );
    let out = homeostat(&["check", "--config", &cfg]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("ok: 1 signal (errors), 1 playbook (restart (1 trigger))"),
        "{stdout}"
    );
}

#[test]
fn check_lists_every_config_problem_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "h.toml",
        r#"
        [prometheus]
        url = "not a url"
        [agent]
        interval = "often"
        [[signals]]
        name = "a"
        query = "rate(x[5m]"
        [[signals]]
        name = "b"
        [[signals]]
        name = "a"
        query = "up"
        open_after = 0
        "#,
    );
    let out = homeostat(&["check", "--config", &cfg]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("6 problems:"), "{stderr}");
    for want in [
        "h.toml: prometheus.url: not a URL",
        "h.toml: agent.interval: \"often\" is not a duration",
        "h.toml: signals[0].query: unclosed '('",
        "h.toml: signals[1].query: missing required field",
        "h.toml: signals[2].name: \"a\" is used by an earlier signal",
        "h.toml: signals[2].open_after: must be at least 1",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
}

#[test]
fn check_rejects_a_broken_playbook_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "good.rhai", PLAYBOOK);
    write(
        dir.path(),
        "bad.rhai",
        "const PLAYBOOK = #{ name: \"bad\" };\nfn plan(a) { [ }",
    );
    write(
        dir.path(),
        "stray.rhai",
        &PLAYBOOK
            .replace("\"errors\"", "\"nope\"")
            .replace("\"restart\"", "\"stray\""),
    );
    let cfg = write(
        dir.path(),
        "h.toml",
        r#"
        playbooks = ["good.rhai", "bad.rhai", "stray.rhai", "missing.rhai"]
        [prometheus]
        url = "http://127.0.0.1:9090"
        [[signals]]
        name = "errors"
        query = "up"
        "#,
    );
    let out = homeostat(&["check", "--config", &cfg]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("playbooks[1]: ") && stderr.contains("bad.rhai: syntax:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("playbooks[2]: ")
            && stderr.contains("trigger signal \"nope\" is not a configured signal"),
        "{stderr}"
    );
    assert!(
        stderr.contains("playbooks[3]: ") && stderr.contains("missing.rhai: cannot read"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("playbooks[0]"),
        "the good playbook is fine: {stderr}"
    );
}

#[test]
fn check_reports_an_unreadable_config() {
    let out = homeostat(&["check", "--config", "/nonexistent/h.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("/nonexistent/h.toml: cannot read"));
}

#[test]
fn audit_verify_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    {
        let mut l = AuditLog::open(&log).unwrap();
        l.append("anomaly_opened", &json!({"signal": "errors", "id": "an-1"}))
            .unwrap();
        l.append(
            "plan",
            &json!({"playbook": "restart", "anomaly_id": "an-1"}),
        )
        .unwrap();
        l.append("action_outcome", &json!({"outcome": "dry_run"}))
            .unwrap();
    }
    let log_s = log.to_str().unwrap();

    let out = homeostat(&["audit", "verify", "--log", log_s]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(text(&out).0.contains("ok: 3 records"));

    let out = homeostat(&["audit", "list", "--log", log_s]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[0].contains("SEQ") && lines[0].contains("KIND"));
    assert!(
        lines[2].contains("plan") && lines[2].contains("an-1 by restart"),
        "{stdout}"
    );

    let out = homeostat(&["audit", "list", "--log", log_s, "--kind", "plan"]);
    assert_eq!(text(&out).0.lines().count(), 2);

    // Edit the middle record: verify fails and names line 2.
    let body = std::fs::read_to_string(&log)
        .unwrap()
        .replace("\"restart\"", "\"reboot\"");
    std::fs::write(&log, body).unwrap();
    let out = homeostat(&["audit", "verify", "--log", log_s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("BROKEN at line 2"),
        "{:?}",
        text(&out)
    );
}

#[test]
fn the_example_playbooks_pass_their_offline_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/tests");
    let cases = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".test.json")
        })
        .count();
    assert!(cases >= 10, "every example playbook has cases");
    let out = homeostat(&["playbook", "test", dir.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("{cases} passed, 0 failed")),
        "{stdout}"
    );
}

#[test]
fn playbook_test_reports_a_failing_case_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "restart.rhai", PLAYBOOK);
    let case = json!({
        "description": "expects the wrong deployment",
        "playbook": "restart.rhai",
        "anomaly": {"signal": "errors", "score": 9, "peak_score": 9},
        "expect": {"plan": [{"kind": "k8s.rollout_restart", "target": {"namespace": "shop", "deployment": "checkout"}}]}
    });
    write(dir.path(), "wrong.test.json", &case.to_string());
    let ok = json!({
        "playbook": "restart.rhai",
        "anomaly": {"signal": "errors", "score": 9, "peak_score": 9},
        "expect": {"plan": [{"kind": "k8s.rollout_restart", "target": {"namespace": "shop", "deployment": "cart"}}]}
    });
    write(dir.path(), "right.test.json", &ok.to_string());
    let out = homeostat(&["playbook", "test", dir.path().to_str().unwrap()]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("PASS right"), "{stdout}");
    assert!(
        stdout.contains("FAIL wrong: plan: plan differs"),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
}

#[test]
fn playbook_test_prints_the_plan_for_one_anomaly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let anomaly = json!({"signal": "http_p99_latency", "query": "lat", "labels": {"namespace": "shop", "service": "checkout"},
        "upper": 0.3, "score": 0.9999, "peak_score": 0.99995, "duration_secs": 600, "direction": "up"});
    let world = json!({"kubernetes": {"deployments": [{"metadata": {"name": "checkout", "namespace": "shop"}, "spec": {"replicas": 2}}]}});
    let a = write(dir.path(), "a.json", &anomaly.to_string());
    let w = write(dir.path(), "w.json", &world.to_string());
    let pb = root.join("playbooks/scale-out-on-latency.rhai");
    let out = homeostat(&[
        "playbook",
        "test",
        pb.to_str().unwrap(),
        "--anomaly",
        &a,
        "--world",
        &w,
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("1. k8s.scale deployment=checkout namespace=shop previous=2 replicas=3"),
        "{stdout}"
    );

    let out = homeostat(&[
        "playbook",
        "test",
        pb.to_str().unwrap(),
        "--anomaly",
        &a,
        "--world",
        &w,
        "--json",
    ]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["actions"][0]["params"]["replicas"], 3);

    // Without recorded answers, the lookup fails loudly instead of guessing.
    let out = homeostat(&["playbook", "test", pb.to_str().unwrap(), "--anomaly", &a]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("no \"kubernetes\" answers"),
        "{:?}",
        text(&out)
    );
}

#[test]
fn playbook_list_shows_triggers_and_scope() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = homeostat(&[
        "playbook",
        "list",
        "--config",
        root.join("deploy/homeostat.example.toml").to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("reboot-unresponsive-vm  (auto"), "{stdout}");
    assert!(
        stdout.contains("trigger: alert alertname=\"InstanceDown\" {server_id=~\".+\"}"),
        "{stdout}"
    );
    assert!(
        stdout.contains("allowed: openstack.server_reboot, notify.alertmanager"),
        "{stdout}"
    );
}

/// 1000 rows a minute apart from 2024-01-01 00:00 (the ensemble judges after ~600);
/// rows 800..810 jump from ~10 to 100.
fn spike_csv() -> String {
    let mut csv = String::from("timestamp,value\n");
    for i in 0..1000u32 {
        let (h, m) = (i / 60, i % 60);
        let v = if (800..810).contains(&i) {
            100.0
        } else {
            10.0 + f64::from(i % 7) * 0.1
        };
        csv.push_str(&format!("2024-01-01 {h:02}:{m:02}:00,{v}\n"));
    }
    csv
}

#[test]
fn backtest_scores_a_labelled_spike_as_nab_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = category(dir.path(), "synthetic");
    std::fs::write(data.join("spike.csv"), spike_csv()).unwrap();
    // The window covers rows 790..=810 (21 rows).
    let labels = json!({"synthetic/spike.csv": [["2024-01-01 13:10:00.000000", "2024-01-01 13:30:00.000000"]]});
    let labels_path = write(dir.path(), "labels.json", &labels.to_string());
    let out_dir = dir.path().join("out");
    let out = homeostat(&[
        "backtest",
        "--data",
        dir.path().join("data").to_str().unwrap(),
        "--labels",
        &labels_path,
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    // The default engine opens on the first anomalous row, 800: y = -(810 - 800 + 1) / 21,
    // worth sig(-11/21) / sig(-1) = 0.864163 / 0.986614 = 0.875879; no false positive.
    // By hand: standard 100 (0.875879 + 1) / 2 = 93.7940; low FN 100 (0.875879 + 2) / 3 = 95.8626.
    assert!(
        (last["standard"].as_f64().unwrap() - 93.7940).abs() < 1e-3,
        "{stdout}"
    );
    assert!(
        (last["reward_low_FP_rate"].as_f64().unwrap() - 93.7940).abs() < 1e-3,
        "{stdout}"
    );
    assert!(
        (last["reward_low_FN_rate"].as_f64().unwrap() - 95.8626).abs() < 1e-3,
        "{stdout}"
    );
    assert_eq!(last["rows"], 1000);
    assert_eq!(last["threshold"], 0.5);
    assert!(last["seconds"].is_number());
    // NAB's result format, at the same relative path, with the detection on row 800.
    let results = std::fs::read_to_string(out_dir.join("synthetic/spike.csv")).unwrap();
    let rows: Vec<&str> = results.lines().collect();
    assert_eq!(rows[0], "timestamp,value,anomaly_score,label");
    assert_eq!(rows.len(), 1001);
    let detections: Vec<usize> = rows[1..]
        .iter()
        .enumerate()
        .filter(|(_, r)| r.split(',').nth(2).unwrap().parse::<f64>().unwrap() >= 0.5)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(detections, vec![800]);
    assert!(
        rows[791].ends_with(",1") && rows[790].ends_with(",0"),
        "labels mark the window"
    );
}

#[test]
fn backtest_warns_of_a_bad_line_and_scores_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let data = category(dir.path(), "c");
    let mut csv = String::from("timestamp,value\n");
    for i in 0..300u32 {
        let v = if i == 100 {
            "n/a".to_string()
        } else {
            format!("{}", 10 + i % 3)
        };
        csv.push_str(&format!("2024-01-01 {:02}:{:02}:00,{v}\n", i / 60, i % 60));
    }
    std::fs::write(data.join("gappy.csv"), csv).unwrap();
    std::fs::write(
        data.join("fine.csv"),
        "timestamp,value\n2024-01-01 00:00:00,1\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = homeostat(&[
        "backtest",
        "--data",
        dir.path().join("data").to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("gappy.csv: line 102: \"n/a\" is not a finite number, taken as missing"),
        "{stderr}"
    );
    assert!(stdout.starts_with("2 files, 301 rows"), "{stdout}");
    let results = std::fs::read_to_string(out_dir.join("c/gappy.csv")).unwrap();
    assert_eq!(
        results.lines().nth(101),
        Some("2024-01-01 01:40:00,NaN,0,0")
    );
}

#[test]
fn backtest_runs_with_one_signals_settings() {
    let dir = tempfile::tempdir().unwrap();
    let data = category(dir.path(), "c");
    std::fs::write(data.join("spike.csv"), spike_csv()).unwrap();
    let config = write(
        dir.path(),
        "homeostat.toml",
        r#"
        [prometheus]
        url = "http://127.0.0.1:9090"
        [[signals]]
        name = "plain"
        query = "up"
        [[signals]]
        name = "calm"
        query = "up"
        min_deviation = 1000
        "#,
    );
    let data_dir = dir.path().join("data");
    let run = |signal: &str| {
        homeostat(&[
            "backtest",
            "--data",
            data_dir.to_str().unwrap(),
            "--config",
            &config,
            "--signal",
            signal,
        ])
    };
    let detections = |out: &Output| {
        let (stdout, stderr) = text(out);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        last["detections"].as_u64().unwrap()
    };
    assert_eq!(detections(&run("plain")), 1);
    assert_eq!(
        detections(&run("calm")),
        0,
        "a 90-unit spike is within 1000"
    );
    let unknown = run("nope");
    let (_, stderr) = text(&unknown);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr.contains("no signal named \"nope\""), "{stderr}");
}

#[test]
fn a_closed_stdout_pipe_ends_the_command_quietly() {
    use std::process::Stdio;
    // `homeostat playbook list … | head -0`: the reader is gone before the first write.
    let mut child = Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["playbook", "list", "-c", "deploy/homeostat.example.toml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs the binary");
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn pause_resume_and_approvals_act_on_the_files_and_audit_when_no_agent_answers() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: the commands fall back to the files.
    let config = write(
        dir.path(),
        "homeostat.toml",
        "[prometheus]\nurl = \"http://127.0.0.1:9\"\n[agent]\nlisten = \"127.0.0.1:9\"\naudit_log = \"audit.jsonl\"\n[[signals]]\nname = \"a\"\nquery = \"up\"\n",
    );
    let o = homeostat(&[
        "pause",
        "--config",
        &config,
        "--reason",
        "change freeze",
        "--by",
        "carol",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("no agent answered"), "{out}");
    let pause_file = dir.path().join("homeostat.pause");
    assert!(std::fs::read_to_string(&pause_file)
        .unwrap()
        .contains("change freeze"));
    let o = homeostat(&["status", "--config", &config]);
    assert!(text(&o).0.contains("\"paused\": true"), "{:?}", text(&o));
    let o = homeostat(&["resume", "--config", &config, "--by", "carol"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(!pause_file.exists());
    let log = dir.path().join("audit.jsonl");
    let records = homeostat::audit::read_records(&log).unwrap();
    let kinds: Vec<_> = records.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["paused", "resumed"]);
    assert_eq!(records[0].data["by"], "carol");
    assert_eq!(records[0].data["reason"], "change freeze");

    let o = homeostat(&[
        "approvals",
        "show",
        "ap-0000000000000000",
        "--config",
        &config,
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o)
            .1
            .contains("no plan waits for approval under ap-0000000000000000"),
        "{:?}",
        text(&o)
    );
}

#[test]
fn backtest_leaves_each_category_of_several_data_sets_out() {
    // Two data sets, each of one category holding the labelled spike: two folds, named
    // by set and category, each scored alone; labels must pair with the data sets.
    let dir = tempfile::tempdir().unwrap();
    let labels = json!({"synthetic/spike.csv": [["2024-01-01 13:10:00.000000", "2024-01-01 13:30:00.000000"]]});
    let mut args = vec!["backtest".to_string(), "--folds".to_string()];
    for set in ["one", "two"] {
        let root = dir.path().join(set);
        let data = category(&root, "synthetic");
        std::fs::write(data.join("spike.csv"), spike_csv()).unwrap();
        let l = write(&root, "labels.json", &labels.to_string());
        args.extend([
            "--data".into(),
            root.join("data").to_str().unwrap().into(),
            "--labels".into(),
            l,
        ]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = homeostat(&argv);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("one/synthetic "), "{stdout}");
    assert!(stdout.contains("two/synthetic "), "{stdout}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["folds"], 2);
    // The spike of `backtest_scores_a_labelled_spike_as_nab_does`, in each fold alone.
    let standard = last["mean"]["standard"].as_f64().unwrap();
    assert!((standard - 93.7940).abs() < 1e-3, "{last}");
    assert_eq!(last["worst"]["standard"], last["mean"]["standard"]);
    // Three labels files for two data sets: a usage error.
    let mut bad = argv.clone();
    bad.extend(["--labels", argv[5]]);
    let out = homeostat(&bad);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
}
