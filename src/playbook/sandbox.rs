//! The Rhai sandbox every playbook runs in: bounded operations, depth, sizes and
//! wall-clock time; no modules, no `eval`; `print`/`debug` go to tracing.
//!
//! Scripts run on a thread of their own ([`isolated`]) with a stack sized for these
//! limits. Rhai recurses once per level of nesting of the data a script builds (to
//! clone, drop, compare, hash or print it), and its own limits bound nesting only
//! inside one expression: a loop can nest maps ten thousand deep, and closures
//! (whose captures Rhai's size limits do not count) as deep as the operations allow,
//! far past any stack. So every variable read checks the nesting of the value it
//! reads ([`Limits::max_data_depth`]), and a value cannot grow deeper than a few
//! levels past the last read of its parts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, FnPtr, Position};

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
    /// Levels of nesting (maps, arrays, closures and what they capture) of a value a
    /// variable holds or a script returns; such a value may also hold at most
    /// `max_array_size + max_map_size` items in all, captures included.
    pub max_data_depth: usize,
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
            // Kubernetes objects nest about 15 deep. A plan at 64 is still readable in
            // the audit log, whose reader stops at 128 levels.
            max_data_depth: 64,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why the progress callback stopped a script; matched in [`describe`].
const DEADLINE: &str = "homeostat: wall-clock limit";
/// See [`DEADLINE`].
const OPERATIONS: &str = "homeostat: operation limit";

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
    // A timeout past the end of time is no deadline, not a panic.
    let deadline = Instant::now().checked_add(limits.timeout);
    let max_operations = limits.max_operations;
    // Rhai's own count restarts in each closure a native function calls back (`map`,
    // `filter`, `reduce`...), so it bounds neither the whole run nor, through it, the
    // depth of what a script can build. This count covers every operation of the run.
    let spent = AtomicU64::new(0);
    e.on_progress(move |_| {
        let n = spent.fetch_add(1, Ordering::Relaxed) + 1;
        if n > max_operations {
            return Some(Dynamic::from(OPERATIONS));
        }
        // Reading the clock on every operation would dominate cheap scripts.
        (n.is_multiple_of(256) && deadline.is_some_and(|d| Instant::now() >= d))
            .then(|| Dynamic::from(DEADLINE))
    });
    let (max_depth, max_items) = (
        limits.max_data_depth,
        limits.max_array_size + limits.max_map_size,
    );
    // `on_var` is marked "volatile", not deprecated: it may change in a later Rhai.
    #[allow(deprecated)]
    e.on_var(move |name, index, ctx| {
        let scope = ctx.scope();
        // `index` counts from the end of the scope, as `iter_raw` runs; 0 is unknown.
        let value = match index {
            0 => scope.get(name),
            i => scope.iter_raw().nth(i - 1).map(|(_, _, v)| v),
        };
        match value.map(|v| Shape::check(v, max_depth, max_items)) {
            Some(Err(broke)) => Err(broke.error(name, max_depth, max_items)),
            _ => Ok(None),
        }
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

/// What a value broke: see [`Shape::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broke {
    /// Nested deeper than allowed.
    Depth,
    /// More items than allowed.
    Items,
    /// A closure's capture is being changed right now (a method runs on it), so what
    /// it holds cannot be read.
    Locked,
}

impl Broke {
    fn error(self, name: &str, max_depth: usize, max_items: usize) -> Box<EvalAltResult> {
        let what = match self {
            Broke::Depth => format!("Nesting of `{name}` (more than {max_depth} levels)"),
            Broke::Items => {
                format!("Data in `{name}` (more than {max_items} items with closures' captures)")
            }
            Broke::Locked => {
                return format!(
                    "`{name}` holds a captured variable that a method is changing: data race"
                )
                .into()
            }
        };
        EvalAltResult::ErrorDataTooLarge(what, Position::NONE).into()
    }
}

/// The shape of a value: how deep it nests and how many items it holds, following
/// arrays, maps, closures' captures and shared variables.
pub struct Shape {
    items: usize,
    max_depth: usize,
    max_items: usize,
}

impl Shape {
    /// Whether `value` nests at most `max_depth` levels and holds at most `max_items`
    /// items. Stops at the first bound broken, so it costs at most `max_items` steps and
    /// `max_depth` frames, whatever the value (even a cycle through a closure).
    pub fn check(value: &Dynamic, max_depth: usize, max_items: usize) -> Result<(), Broke> {
        // Most reads are of numbers and strings.
        if !holds_values(value) {
            return Ok(());
        }
        Shape {
            items: 0,
            max_depth,
            max_items,
        }
        .visit(value, 0)
    }

    fn visit(&mut self, v: &Dynamic, depth: usize) -> Result<(), Broke> {
        if depth > self.max_depth {
            return Err(Broke::Depth);
        }
        if v.is_shared() {
            // A shared value is a level of its own when Rhai drops it.
            let inner = v.read_lock::<Dynamic>().ok_or(Broke::Locked)?;
            return self.visit(&inner, depth + 1);
        }
        // The cheap tests first: a failed `as_map_ref` names the type, in a new string.
        if v.is_map() {
            if let Ok(map) = v.as_map_ref() {
                return self.visit_all(map.values(), depth);
            }
        } else if v.is_array() {
            if let Ok(array) = v.as_array_ref() {
                return self.visit_all(array.iter(), depth);
            }
        } else if let Some(f) = v.read_lock::<FnPtr>() {
            return self.visit_all(f.curry().iter(), depth);
        }
        Ok(())
    }

    fn visit_all<'a>(
        &mut self,
        children: impl Iterator<Item = &'a Dynamic>,
        depth: usize,
    ) -> Result<(), Broke> {
        for child in children {
            self.items += 1;
            if self.items > self.max_items {
                return Err(Broke::Items);
            }
            if holds_values(child) {
                self.visit(child, depth + 1)?;
            } else if depth + 1 > self.max_depth {
                return Err(Broke::Depth);
            }
        }
        Ok(())
    }
}

/// Whether a value can hold other values: an array, a map, a closure, a shared value.
fn holds_values(v: &Dynamic) -> bool {
    v.is_shared() || v.is_array() || v.is_map() || v.is_fnptr()
}

/// The stack of the thread a script runs on. The checks above keep the data a script
/// can build to a few hundred levels; Rhai's own evaluation then recurses at most
/// `max_call_levels` calls of `max_expr_depth` nested expressions each, which in a
/// debug build takes up to about 10 MiB. Only the pages a run touches are used.
pub const SCRIPT_STACK: usize = 64 << 20;

/// Runs `work` on a thread of its own with a [`SCRIPT_STACK`] stack, not on the
/// caller's (tokio's blocking threads have 2 MiB), in the caller's tokio runtime if
/// it has one (host lookups use it). A panic inside Rhai fails the run with its
/// message rather than the caller.
pub fn isolated<T: Send>(work: impl FnOnce() -> T + Send) -> Result<T, String> {
    let runtime = tokio::runtime::Handle::try_current().ok();
    std::thread::scope(|s| {
        let thread = std::thread::Builder::new()
            .name("playbook".into())
            .stack_size(SCRIPT_STACK)
            .spawn_scoped(s, || {
                let _entered = runtime.as_ref().map(|r| r.enter());
                work()
            })
            .map_err(|e| format!("cannot start a thread for the script: {e}"))?;
        thread.join().map_err(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            format!("the script crashed the sandbox: {why}")
        })
    })
}

/// A readable message for a script failure, naming the limit it broke.
pub fn describe(err: &EvalAltResult) -> String {
    // A limit broken inside a function, or inside a closure that `map` or `filter`
    // called, comes wrapped once per call: the limit is what the author needs to read.
    let mut cause = err;
    while let EvalAltResult::ErrorInFunctionCall(_, _, inner, _) = cause {
        cause = inner;
    }
    let token = |v: &Dynamic| v.clone().into_string().unwrap_or_default();
    // Rhai's `call_fn` drops the position of what broke directly in the called function.
    let stopped = |pos: &Position| match pos.is_none() {
        true => "stopped".to_string(),
        false => format!("stopped at {pos}"),
    };
    match cause {
        EvalAltResult::ErrorTerminated(v, pos) if token(v) == DEADLINE => {
            format!("{}: exceeded the wall-clock limit", stopped(pos))
        }
        EvalAltResult::ErrorTerminated(v, pos) if token(v) == OPERATIONS => {
            format!("{}: exceeded the operation limit", stopped(pos))
        }
        EvalAltResult::ErrorTooManyOperations(pos) => {
            format!("{}: exceeded the operation limit", stopped(pos))
        }
        EvalAltResult::ErrorStackOverflow(pos) => {
            format!("{}: exceeded the call depth limit", stopped(pos))
        }
        EvalAltResult::ErrorDataTooLarge(what, pos) => {
            format!("{}: {what} too large", stopped(pos))
        }
        _ => err.to_string(),
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
        // Rhai does not check the map size when a key is added by index; reading the
        // map back checks its items (and plans are capped in `parse_actions`).
        let small = Limits {
            max_map_size: 100,
            max_array_size: 100,
            ..Limits::default()
        };
        let e = run(
            "let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }",
            &small,
        )
        .unwrap_err();
        assert!(e.contains("Data in `m` (more than 200 items"), "{e}");
        assert!(run("import \"x\" as y; 1", &l).is_err());
        assert!(run("eval(\"1\")", &l).is_err());
    }

    /// Each builds data nested without end, in a way Rhai's own limits miss.
    pub(crate) const DEEP: &[(&str, &str)] = &[
        ("maps", "let m = #{}; for i in 0..1000000 { m = #{ x: m }; }"),
        ("arrays", "let a = []; for i in 0..1000000 { let b = []; b.push(a); a = b; }"),
        ("maps by index", "let m = #{}; for i in 0..1000000 { let n = #{}; n.x = m; m = n; }"),
        ("closures", "let f = || 1; for i in 0..1000000 { let g = f; f = || g.call(); }"),
        ("closures in maps", "let f = 1; for i in 0..1000000 { let g = f; f = #{ a: || g }; }"),
        ("curry", "let f = Fn(\"x\"); for i in 0..1000000 { f = Fn(\"x\").curry(f); }"),
        ("curry doubling", "let f = Fn(\"x\"); for i in 0..64 { f = f.curry(f); }"),
        ("captures filled later", "let p = 0; for i in 0..1000000 { let c = 0; let m = #{ f: || c }; c = p; p = m; }"),
        ("reduce", "let a = []; a.pad(10000, 0); let f = 0; for r in 0..100 { f = a.reduce(|acc, i| || acc, f); }"),
        ("a cycle", "let c = 0; let f = || c; c = [f]; switch c { 1 => 1, _ => 2 }"),
        ("methods", "fn grow() { let t = this; this = #{ f: || t }; } let m = 0; for i in 0..1000000 { m.grow(); }"),
    ];

    #[test]
    fn data_nesting_is_bounded_however_it_is_built() {
        let l = Limits::default();
        for (what, src) in DEEP {
            let e = run(src, &l).unwrap_err();
            assert!(e.contains("too large"), "{what}: {e}");
        }
    }

    #[test]
    fn shapes_are_measured_with_bounded_work() {
        // A plain engine, which lets a script build anything.
        let value = |src: &str| Engine::new().eval::<Dynamic>(src).unwrap();
        let nested = value("#{ a: [1, #{ b: [2, 3] }], c: \"s\" }");
        assert_eq!(Shape::check(&nested, 4, 7), Ok(()));
        assert_eq!(Shape::check(&nested, 3, 7), Err(Broke::Depth));
        assert_eq!(Shape::check(&nested, 4, 6), Err(Broke::Items));
        assert_eq!(Shape::check(&value("42"), 0, 0), Ok(()));
        // A closure's captures count, and a cycle through one is too deep, not endless.
        let cycle = value("let c = 0; let f = || c; c = [f]; f");
        assert_eq!(Shape::check(&cycle, 64, 1_000_000), Err(Broke::Depth));
    }

    #[test]
    fn the_operation_limit_covers_closures_natives_call_back() {
        // Rhai restarts its count in each call back from `reduce`: 2,000 calls of a few
        // operations each passed a limit of 1,000.
        let l = Limits {
            max_operations: 1_000,
            ..Limits::default()
        };
        let e = run(
            "let a = []; a.pad(1000, 0); a.reduce(|s, x| s + 1, 0) + a.reduce(|s, x| s + 1, 0)",
            &l,
        )
        .unwrap_err();
        assert!(e.contains("operation limit"), "{e}");
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
        // Inside closures that a native function calls back, each a few operations long.
        let t = Instant::now();
        let e = run(
            "let a = []; a.pad(10000, 0); let b = a; a.reduce(|s, x| s + b.reduce(|t, y| t + 1, 0), 0)",
            &l,
        )
        .unwrap_err();
        assert!(e.contains("wall-clock"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn a_panic_on_the_script_thread_is_an_error() {
        let e = isolated(|| -> () { panic!("rhai: unreachable") }).unwrap_err();
        assert_eq!(e, "the script crashed the sandbox: rhai: unreachable");
        assert_eq!(isolated(|| 7), Ok(7));
    }
}
