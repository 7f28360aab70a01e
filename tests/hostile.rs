//! Hostile inputs (issue 23): no playbook, config or data file may take the process
//! down. Each is a clean error of its own, listed where the others are.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use homeostat::anomaly::Anomaly;
use homeostat::playbook::{Limits, Playbook, PlaybookError, RecordedWorld, World};
use serde_json::json;

fn homeostat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(args)
        .output()
        .expect("runs the binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const META: &str = r#"const PLAYBOOK = #{ name: "hostile", triggers: [#{ signal: "s" }], allowed: #{ kinds: ["notify.alertmanager"] } };"#;

/// Scripts that build data nested without end, each in a way that Rhai's own limits
/// (expression depth, sizes of arrays and maps) miss: what issue 23 reported (60,000
/// nested maps, 100,000 nested closures) and deeper.
const DEEP: &[(&str, &str)] = &[
    (
        "maps, as reported",
        "let m = #{}; for i in 0..60000 { m = #{ x: m }; }",
    ),
    (
        "a million maps",
        "let m = #{}; for i in 0..1000000 { m = #{ x: m }; }",
    ),
    (
        "arrays",
        "let a = []; for i in 0..1000000 { let b = []; b.push(a); a = b; }",
    ),
    (
        "maps by index",
        "let m = #{}; for i in 0..1000000 { let n = #{}; n.x = m; m = n; }",
    ),
    (
        "closures, as reported",
        "let f = || 1; for i in 0..100000 { let g = f; f = || g.call(); }",
    ),
    (
        "a million closures",
        "let f = || 1; for i in 0..1000000 { let g = f; f = || g.call(); }",
    ),
    (
        "closures in maps",
        "let f = 1; for i in 0..1000000 { let g = f; f = #{ a: || g }; }",
    ),
    (
        "curry",
        r#"let f = Fn("x"); for i in 0..1000000 { f = Fn("x").curry(f); }"#,
    ),
    (
        "curry doubling",
        r#"let f = Fn("x"); for i in 0..64 { f = f.curry(f); }"#,
    ),
    (
        "captures filled after capture",
        "let p = 0; for i in 0..1000000 { let c = 0; let m = #{ f: || c }; c = p; p = m; }",
    ),
    (
        "closures built by reduce",
        "let a = []; a.pad(10000, 0); let f = 0; for r in 0..100 { f = a.reduce(|acc, i| || acc, f); }",
    ),
    (
        "40 maps per closure",
        "let t = 0; for i in 0..40 { t = #{ x: t }; } let a = []; a.pad(10000, 0); let f = 0; \
         for r in 0..50 { f = a.reduce(|acc, i| { let c = t; c.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x = || acc; c }, f); }",
    ),
    (
        "a cycle, hashed",
        "let c = 0; let f = || c; c = [f]; switch c { 1 => 1, _ => 2 }",
    ),
];

fn anomaly() -> Anomaly {
    Anomaly {
        id: "an-hostile".into(),
        signal: "s".into(),
        source: "homeostat".into(),
        ..Anomaly::default()
    }
}

fn world() -> Arc<dyn World> {
    Arc::new(RecordedWorld::default())
}

fn script_error(result: Result<impl std::fmt::Debug, PlaybookError>) -> String {
    match result {
        Err(e @ PlaybookError::Script { .. }) => e.to_string(),
        other => panic!("expected a script error, got {other:?}"),
    }
}

#[test]
fn a_plan_that_nests_data_without_end_fails_alone() {
    let limits = Limits::default();
    for (what, body) in DEEP {
        let src = format!("{META}\nfn plan(a) {{ {body} [] }}");
        let pb = Playbook::from_source(&src, Path::new("deep.rhai"), &limits)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let e = script_error(pb.plan(&anomaly(), &limits, world(), 0.0));
        assert!(e.contains("too large"), "{what}: {e}");
    }
}

#[test]
fn on_result_that_nests_data_without_end_fails_alone() {
    let limits = Limits::default();
    for (what, body) in DEEP {
        let src = format!("{META}\nfn plan(a) {{ [] }}\nfn on_result(a, r) {{ {body} [] }}");
        let pb = Playbook::from_source(&src, Path::new("deep.rhai"), &limits).unwrap();
        let e = script_error(pb.on_result(&anomaly(), &json!([]), &limits, world(), 0.0));
        assert!(e.contains("too large"), "{what}: {e}");
    }
}

#[test]
fn a_top_level_that_nests_data_without_end_is_rejected_at_load() {
    for (what, body) in DEEP {
        let src = format!("{META}\n{body}\nfn plan(a) {{ [] }}");
        match Playbook::from_source(&src, Path::new("deep.rhai"), &Limits::default()) {
            Err(PlaybookError::Invalid { problems, .. }) => assert!(
                problems.iter().any(|p| p.contains("too large")),
                "{what}: {problems:?}"
            ),
            other => panic!("{what}: expected a load error, got {other:?}"),
        }
    }
}

#[test]
fn a_plan_nested_deeper_than_the_audit_log_reads_back_is_refused() {
    let limits = Limits::default();
    let src = format!(
        "{META}\nfn plan(a) {{ let p = 0; for i in 0..{} {{ p = #{{ x: p }}; }} \
         [#{{ kind: \"notify.alertmanager\", params: #{{ deep: #{{ x: p }} }} }}] }}",
        limits.max_data_depth - 1
    );
    let pb = Playbook::from_source(&src, Path::new("deep.rhai"), &limits).unwrap();
    let e = script_error(pb.plan(&anomaly(), &limits, world(), 0.0));
    assert!(e.contains("nested more than 64 levels deep"), "{e}");
}

#[test]
fn playbook_test_reports_nested_data_as_a_playbook_error() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("anomaly.json");
    std::fs::write(&a, json!({"id": "an-1", "signal": "s"}).to_string()).unwrap();
    for (i, (what, body)) in DEEP.iter().enumerate() {
        let pb = dir.path().join(format!("deep{i}.rhai"));
        std::fs::write(&pb, format!("{META}\nfn plan(a) {{ {body} [] }}")).unwrap();
        let out = homeostat(&[
            "playbook",
            "test",
            pb.to_str().unwrap(),
            "--anomaly",
            a.to_str().unwrap(),
        ]);
        // Killed by a signal (an abort) has no exit code.
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("error: playbook hostile: plan: stopped"),
            "{what}: {}",
            stderr(&out)
        );
    }
}

mod config {
    use std::path::Path;
    use std::time::Duration;

    use homeostat::agent::watch::{SignalWatch, Timing};
    use homeostat::backtest::{run_series, Row};
    use homeostat::config::Config;
    use homeostat::labels::Labels;
    use homeostat::source::{Point, SourceError};
    use proptest::prelude::*;

    const BASE: &str = "[prometheus]\nurl = \"http://127.0.0.1:9090\"\n";
    const SIGNAL: &str = "[[signals]]\nname = \"a\"\nquery = \"up\"\n";

    #[test]
    fn every_duration_and_number_out_of_range_is_listed_with_its_path() {
        let text = format!(
            r#"{BASE}timeout = "11m"
[agent]
interval = "500000000000y"
series_ttl = "31d"
max_backoff = "2d"
playbook_timeout = "1h"
models_save_every = "8d"
[detection]
history = "91d"
history_step = "25h"
threshold_per = "2d"
window = 100001
open_after = 100001
close_after = 1000000000000
warmup = 4294967296
min_spread = 1e19
min_relative_spread = 1001
min_deviation = 1e300
min_relative_deviation = 1e10
{SIGNAL}engine = "robust"
threshold = 1e9
"#
        );
        let problems = Config::parse(&text, Path::new(".")).unwrap_err();
        let want = [
            "prometheus.timeout: \"11m\" is too long: at most 10m",
            "agent.interval: \"500000000000y\" is too long: at most 1d",
            "agent.series_ttl: \"31d\" is too long: at most 30d",
            "agent.max_backoff: \"2d\" is too long: at most 1d",
            "agent.playbook_timeout: \"1h\" is too long: at most 10m",
            "agent.models_save_every: \"8d\" is too long: at most 7d",
            "detection.history: \"91d\" is too long: at most 90d",
            "detection.history_step: \"25h\" is too long: at most 1d",
            "detection.threshold_per: \"2d\" is too long: at most 1d",
            "detection.window: must be at most 100000, found 100001",
            "detection.open_after: must be at most 100000, found 100001",
            "detection.close_after: must be at most 100000, found 1000000000000",
            "detection.warmup: must be at most 100000, found 4294967296",
            "detection.min_spread: must be at most 1000000000000000000, found 10000000000000000000",
            "detection.min_relative_spread: must be at most 1000, found 1001",
            "detection.min_deviation: must be at most",
            "detection.min_relative_deviation: must be at most 1000, found 10000000000",
            "signals[0].threshold: must be at most 1000 for the robust engine, found 1000000000",
        ];
        for w in want {
            assert!(
                problems.iter().any(|p| p.starts_with(w)),
                "missing {w:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), want.len(), "{problems:#?}");
    }

    #[test]
    fn an_interval_of_500_billion_years_fails_check_and_run_not_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.toml");
        let text = format!("{BASE}[agent]\ninterval = \"500000000000y\"\n{SIGNAL}");
        std::fs::write(&path, text).unwrap();
        for command in ["check", "run"] {
            let out = super::homeostat(&[command, "--config", path.to_str().unwrap()]);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{command}: {}",
                super::stderr(&out)
            );
            assert!(
                super::stderr(&out).contains("agent.interval: \"500000000000y\" is too long"),
                "{command}: {}",
                super::stderr(&out)
            );
        }
    }

    /// What the agent does with the config's durations as it starts and runs: its
    /// liveness window, timers, retry backoff (twenty failures in a row), history span,
    /// playbook deadline, and a detector fed a few points.
    fn start_the_loop_arithmetic(c: &Config) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let now = tokio::time::Instant::now();
        let _ = homeostat::metrics::Metrics::new(homeostat::agent::liveness_window(c));
        let _ = tokio::time::interval(c.agent.interval);
        let save = c.agent.models_save_every;
        let _ = tokio::time::interval_at(now + save, save);
        let _ = now + c.agent.series_ttl + c.prometheus.timeout;
        let _ = c.agent.playbook_timeout + Duration::from_secs(2);
        let timing = Timing {
            interval: c.agent.interval,
            series_ttl: c.agent.series_ttl,
            max_backoff: c.agent.max_backoff,
        };
        for s in &c.signals {
            let d = &s.detection;
            let span = d.history.as_secs_f64().max(d.history_step.as_secs_f64());
            let _ = Duration::from_secs_f64(span);
            let mut w = SignalWatch::new(s.clone(), c.agent.max_series_per_signal, now);
            let mut events = Vec::new();
            for _ in 0..20 {
                w.accept(
                    Err(SourceError::Url("down".into())),
                    now,
                    &timing,
                    &mut events,
                );
            }
            let point = Point {
                labels: Labels::default(),
                t: 1e9,
                value: 1.0,
            };
            w.accept(
                Ok(vec![point]),
                now + timing.max_backoff,
                &timing,
                &mut events,
            );
            let rows: Vec<Row> = (0..50)
                .map(|i| Row {
                    timestamp: String::new(),
                    t: 1e9 + 300.0 * f64::from(i),
                    value: f64::from(i % 7),
                })
                .collect();
            let _ = run_series(&rows, d);
        }
    }

    /// Durations as written: mostly plausible, some huge, some not durations at all.
    fn duration() -> impl Strategy<Value = String> {
        let unit = prop::sample::select(vec!["ns", "ms", "s", "m", "h", "d", "w", "M", "y", ""]);
        let plausible = prop::sample::select(vec!["ms", "s", "m", "h", "d"]);
        prop_oneof![
            4 => (1u64..100, plausible).prop_map(|(n, u)| format!("{n}{u}")),
            1 => (any::<u64>(), unit.clone()).prop_map(|(n, u)| format!("{n}{u}")),
            1 => (0u64..2000, unit).prop_map(|(n, u)| format!("{n}{u}")),
            1 => "[ -~]{0,16}",
        ]
    }

    /// Numbers as written: mostly plausible, some extreme, some not TOML numbers.
    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => (1i64..1000).prop_map(|i| i.to_string()),
            3 => (0.001f64..0.999).prop_map(|f| format!("{f:?}")),
            1 => any::<i64>().prop_map(|i| i.to_string()),
            1 => (-10i64..200_000).prop_map(|i| i.to_string()),
            1 => any::<f64>().prop_map(|f| format!("{f:?}")),
            1 => prop::sample::select(vec!["inf", "-inf", "nan", "1e309", "-0.0", "0"])
                .prop_map(String::from),
        ]
    }

    /// A config with arbitrary values in the fields that hold durations and numbers.
    fn config_text() -> impl Strategy<Value = String> {
        let durations = [
            ("prometheus", "timeout"),
            ("agent", "interval"),
            ("agent", "series_ttl"),
            ("agent", "max_backoff"),
            ("agent", "playbook_timeout"),
            ("agent", "models_save_every"),
            ("detection", "history"),
            ("detection", "history_step"),
            ("detection", "threshold_per"),
        ];
        let numbers = [
            "window",
            "threshold",
            "open_after",
            "close_after",
            "warmup",
            "min_spread",
            "min_relative_spread",
            "min_deviation",
            "min_relative_deviation",
        ];
        let field = prop_oneof![
            (prop::sample::select(durations.to_vec()), duration()).prop_map(|((s, k), v)| (
                s,
                k,
                format!("{v:?}")
            )),
            (prop::sample::select(numbers.to_vec()), number()).prop_map(|(k, v)| (
                "detection",
                k,
                v
            )),
        ];
        (
            prop::collection::vec(field, 0..8),
            prop::sample::select(vec!["ensemble", "robust"]),
        )
            .prop_map(|(fields, engine)| {
                let mut text = String::from("[prometheus]\nurl = \"http://127.0.0.1:9090\"\n");
                for section in ["prometheus", "agent", "detection"] {
                    if section != "prometheus" {
                        text.push_str(&format!("[{section}]\n"));
                    }
                    if section == "detection" {
                        text.push_str(&format!("engine = \"{engine}\"\n"));
                    }
                    let mut seen = std::collections::BTreeSet::new();
                    for (_, k, v) in fields.iter().filter(|f| f.0 == section) {
                        if seen.insert(*k) {
                            text.push_str(&format!("{k} = {v}\n"));
                        }
                    }
                }
                text.push_str("[[signals]]\nname = \"a\"\nquery = \"up\"\n");
                text
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_text_parses_or_fails_without_panic(text in "\\PC{0,400}") {
            let _ = Config::parse(&text, Path::new("."));
        }

        #[test]
        fn any_accepted_config_can_start_the_loop(text in config_text()) {
            if let Ok(c) = Config::parse(&text, Path::new(".")) {
                start_the_loop_arithmetic(&c);
            }
        }
    }

    #[test]
    fn the_largest_accepted_values_can_start_the_loop() {
        let text = format!(
            r#"{BASE}timeout = "10m"
[agent]
interval = "1d"
series_ttl = "30d"
max_backoff = "1d"
playbook_timeout = "10m"
models_save_every = "7d"
[detection]
history = "90d"
history_step = "1d"
threshold_per = "1d"
window = 100000
open_after = 100000
close_after = 100000
warmup = 100000
min_spread = 1e18
min_relative_spread = 1000
min_deviation = 1e18
min_relative_deviation = 1000
{SIGNAL}[[signals]]
name = "b"
query = "up"
engine = "robust"
threshold = 1000
"#
        );
        let c = Config::parse(&text, Path::new(".")).unwrap();
        start_the_loop_arithmetic(&c);
    }
}

mod backtest {
    use std::path::Path;
    use std::process::Command;

    /// Runs `homeostat backtest` with at most `mib` MiB of address space.
    fn backtest_within(mib: u64, args: &[&str]) -> std::process::Output {
        let mut command = format!("ulimit -v {} && exec \"$0\" backtest", mib * 1024);
        for (i, _) in args.iter().enumerate() {
            command.push_str(&format!(" \"${}\"", i + 1));
        }
        Command::new("sh")
            .arg("-c")
            .arg(command)
            .arg(env!("CARGO_BIN_EXE_homeostat"))
            .args(args)
            .output()
            .unwrap()
    }

    fn rows(n: u32) -> String {
        let mut csv = String::from("timestamp,value\n");
        for i in 0..n {
            csv.push_str(&format!(
                "2024-01-01 {:02}:{:02}:00,{}\n",
                i / 60,
                i % 60,
                10 + i % 3
            ));
        }
        csv
    }

    /// A data directory with one category holding a good file.
    fn data_with_a_good_file() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("data/c");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join("good.csv"), rows(300)).unwrap();
        (dir, c)
    }

    #[test]
    fn a_file_that_is_not_utf8_loses_nothing_else() {
        let (dir, c) = data_with_a_good_file();
        std::fs::write(
            c.join("a.csv"),
            b"timestamp,value\n2024-01-01 00:00:00,\xe9\n",
        )
        .unwrap();
        let o = backtest_within(1024, &["--data", dir.path().join("data").to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("a.csv: line 2: not UTF-8"), "{stderr}");
        assert!(String::from_utf8_lossy(&o.stdout).starts_with("1 files (1 skipped), 300 rows"));
    }

    #[test]
    fn a_2_gib_file_of_nuls_is_never_read_whole() {
        let (dir, c) = data_with_a_good_file();
        // Sparse on disk; read whole, it would not fit the 1 GiB of address space below.
        std::fs::File::create(c.join("zeros.csv"))
            .unwrap()
            .set_len(2 << 30)
            .unwrap();
        let started = std::time::Instant::now();
        let o = backtest_within(1024, &["--data", dir.path().join("data").to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{stderr}");
        assert!(
            stderr.contains("zeros.csv: line 1: longer than 4096 bytes"),
            "{stderr}"
        );
        assert!(started.elapsed().as_secs() < 10);
    }

    #[test]
    fn a_bad_file_is_skipped_with_a_warning_and_the_others_are_scored() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let c = data.join("c");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join("good.csv"), rows(300)).unwrap();
        std::fs::write(
            c.join("latin1.csv"),
            b"timestamp,value\n2024-01-01 00:00:00,caf\xe9\n",
        )
        .unwrap();
        // 2 GiB of NULs, sparse on disk: read whole, it would not fit the 1 GiB below.
        std::fs::File::create(c.join("zeros.csv"))
            .unwrap()
            .set_len(2 << 30)
            .unwrap();
        std::fs::write(
            c.join("long.csv"),
            format!("timestamp,value\n{}", "1".repeat(1 << 20)),
        )
        .unwrap();
        std::os::unix::fs::symlink(c.join("gone"), c.join("dangling.csv")).unwrap();
        // A link back up the tree is walked once, not forever.
        std::os::unix::fs::symlink(&data, c.join("loop")).unwrap();
        let order = "timestamp,value\n\
                     2024-01-01 00:00:00,1\n\
                     2024-01-01 00:05:00,2\n\
                     2024-01-01 00:05:00,3\n\
                     2024-01-01 00:01:00,4\n\
                     2024-01-01 00:10:00,5\n\
                     2024-01-01 00:02:00,6\n";
        std::fs::write(c.join("order.csv"), order).unwrap();
        let out = dir.path().join("out");
        let o = backtest_within(
            1024,
            &[
                "--data",
                data.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
        let (stdout, stderr) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert_eq!(o.status.code(), Some(0), "{stderr}");
        let at = |f: &str| c.join(f).display().to_string();
        for warning in [
            format!("{}: line 2: not UTF-8 at byte 24: not a timestamp,value CSV: file skipped", at("latin1.csv")),
            format!("{}: line 1: longer than 4096 bytes: not a timestamp,value CSV: file skipped", at("zeros.csv")),
            format!("{}: line 2: longer than 4096 bytes: not a timestamp,value CSV: file skipped", at("long.csv")),
            format!("{}: No such file or directory (os error 2): file skipped", at("dangling.csv")),
            format!("{}: 2 rows out of time order, skipped; 1 row at the same time as the row before, kept", at("order.csv")),
        ] {
            assert!(stderr.contains(&warning), "missing {warning:?} in:\n{stderr}");
        }
        assert!(
            stdout.starts_with("2 files (4 skipped), 304 rows"),
            "{stdout}"
        );
        let scored = std::fs::read_to_string(out.join("c/order.csv")).unwrap();
        let times: Vec<&str> = scored
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap())
            .collect();
        assert_eq!(
            times,
            [
                "2024-01-01 00:00:00",
                "2024-01-01 00:05:00",
                "2024-01-01 00:05:00",
                "2024-01-01 00:10:00"
            ]
        );
        assert!(out.join("c/good.csv").is_file());
        assert!(!Path::new(&out.join("c/latin1.csv")).exists());
    }
}
