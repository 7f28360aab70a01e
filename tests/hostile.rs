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
