//! The Rhai sandbox every playbook runs in: bounded operations, depth, sizes and
//! wall-clock time; no modules, no `eval`; `print`/`debug` go to tracing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult};

use super::host::World;

/// Bounds on one script run. A run that breaks one fails alone, with a readable error.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Rhai operations (roughly: expressions evaluated).
    pub max_operations: u64,
    /// Nested function calls.
    pub max_call_levels: usize,
    /// Expression nesting at the top level and inside functions.
    pub max_expr_depth: usize,
    /// Bytes in one string.
    pub max_string_size: usize,
    /// Elements in one array.
    pub max_array_size: usize,
    /// Entries in one map.
    pub max_map_size: usize,
    /// Wall-clock time of one run.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 1_000_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_string_size: 64 * 1024,
            max_array_size: 10_000,
            max_map_size: 10_000,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why the wall-clock callback stopped a script; matched in [`describe`].
const DEADLINE: &str = "homeostat: wall-clock limit";

/// A fresh sandboxed engine with the read-only host API over `world`, evaluating "at"
/// unix time `now`; the wall clock starts now.
pub fn engine(limits: &Limits, who: String, world: Arc<dyn World>, now: f64) -> Engine {
    let mut e = Engine::new();
    super::host::register(&mut e, world, now);
    e.set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_levels)
        .set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        // Scripts read the anomaly and return data; they have no business loading code.
        .set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new())
        .set_max_modules(0);
    e.disable_symbol("eval");
    let deadline = Instant::now() + limits.timeout;
    e.on_progress(move |ops| {
        // Reading the clock on every operation would dominate cheap scripts.
        (ops % 256 == 0 && Instant::now() >= deadline).then(|| Dynamic::from(DEADLINE))
    });
    let p = who.clone();
    e.on_print(move |s| tracing::info!(playbook = %p, "script: {s}"));
    let p = who.clone();
    e.on_debug(move |s, src, pos| tracing::debug!(playbook = %p, ?src, %pos, "script: {s}"));
    e.register_fn(
        "log",
        move |s: rhai::ImmutableString| tracing::info!(playbook = %who, "script: {s}"),
    );
    e
}

/// A readable message for a script failure, naming the limit it broke.
pub fn describe(err: &EvalAltResult) -> String {
    match err {
        EvalAltResult::ErrorTerminated(v, pos)
            if v.clone().into_string().is_ok_and(|s| s == DEADLINE) =>
        {
            format!("stopped at {pos}: exceeded the wall-clock limit")
        }
        EvalAltResult::ErrorTooManyOperations(pos) => {
            format!("stopped at {pos}: exceeded the operation limit")
        }
        EvalAltResult::ErrorStackOverflow(pos) => {
            format!("stopped at {pos}: exceeded the call depth limit")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(src: &str, limits: &Limits) -> Result<Dynamic, String> {
        let e = engine(
            limits,
            "t".into(),
            Arc::new(super::super::RecordedWorld::default()),
            0.0,
        );
        e.eval::<Dynamic>(src).map_err(|e| describe(&e))
    }

    #[test]
    fn hostile_scripts_are_stopped() {
        let l = Limits::default();
        assert!(run("loop {}", &l).unwrap_err().contains("operation limit"));
        assert!(run("fn f(x) { f(x + 1) } f(0)", &l)
            .unwrap_err()
            .contains("call depth"));
        let e = run("let s = \"x\"; loop { s += s; }", &l).unwrap_err();
        assert!(e.to_lowercase().contains("length of string"), "{e}");
        let e = run("let a = []; loop { a.push(1); }", &l).unwrap_err();
        assert!(e.to_lowercase().contains("size of array"), "{e}");
        // Rhai does not check the map size when a key is added by index; the operation
        // limit bounds such a map instead (and plans are capped in `parse_actions`).
        let e = run(
            "let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }",
            &l,
        )
        .unwrap_err();
        assert!(e.contains("operation limit"), "{e}");
        assert!(run("import \"x\" as y; 1", &l).is_err());
        assert!(run("eval(\"1\")", &l).is_err());
    }

    #[test]
    fn wall_clock_limit_stops_a_slow_script() {
        let l = Limits {
            max_operations: u64::MAX,
            timeout: Duration::from_millis(50),
            ..Limits::default()
        };
        let t = Instant::now();
        let e = run("loop {}", &l).unwrap_err();
        assert!(e.contains("wall-clock"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
