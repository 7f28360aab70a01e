//! The read-only host API scripts may call: Prometheus queries, Kubernetes and
//! OpenStack lookups, logging and small helpers. Nothing here changes anything.
//!
//! Lookups go through a [`World`]: live (Prometheus for real) in the agent, recorded
//! answers (a JSON file) in `homeostat playbook test` and in tests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, Module};
use serde::Deserialize;
use serde_json::Value;

use crate::labels::Labels;
use crate::source::Source;

/// Read-only lookups a script may make. Errors are messages shown to the script's author.
pub trait World: Send + Sync {
    /// Instant query at unix time `at`: each series' labels and value.
    fn prom_query(&self, query: &str, at: f64) -> Result<Vec<(Labels, f64)>, String>;
    /// One Kubernetes object (one of [`K8S_KINDS`]), if it exists.
    fn k8s_get(&self, kind: &str, namespace: &str, name: &str) -> Result<Option<Value>, String>;
    /// Kubernetes objects of a kind in a namespace (`""`: all) matching a label selector.
    fn k8s_list(&self, kind: &str, namespace: &str, selector: &str) -> Result<Vec<Value>, String>;
    /// One OpenStack server by id or name, if it exists.
    fn os_server(&self, id_or_name: &str) -> Result<Option<Value>, String>;
    /// OpenStack servers matching Nova's list filters (`status`, `host`, `name`, ...).
    fn os_servers(&self, filters: &serde_json::Map<String, Value>) -> Result<Vec<Value>, String>;
    /// OpenStack hypervisors.
    fn os_hypervisors(&self) -> Result<Vec<Value>, String>;
    /// OpenStack compute services, optionally only those on `host` (`""`: all).
    fn os_compute_services(&self, host: &str) -> Result<Vec<Value>, String>;
}

/// Recorded answers, as a `--world` file holds them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedWorld {
    /// PromQL text → the series it returns.
    #[serde(default)]
    pub prometheus: BTreeMap<String, Vec<RecordedSample>>,
    /// Kind (one of [`K8S_KINDS`]) → objects as the API returns them.
    #[serde(default)]
    pub kubernetes: Option<BTreeMap<String, Vec<Value>>>,
    /// `servers`, `compute_services` and `hypervisors` → objects as Nova returns them.
    #[serde(default)]
    pub openstack: Option<BTreeMap<String, Vec<Value>>>,
}

/// One recorded series of a query answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedSample {
    /// The series' labels.
    #[serde(default)]
    pub labels: Labels,
    /// Its value.
    pub value: f64,
}

/// The Kubernetes kinds scripts may read.
pub const K8S_KINDS: &[&str] = &[
    "pods",
    "deployments",
    "statefulsets",
    "daemonsets",
    "nodes",
    "events",
    "poddisruptionbudgets",
];

/// Refuses a kind scripts may not read.
pub fn check_kind(kind: &str) -> Result<(), String> {
    if K8S_KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(format!(
            "unknown Kubernetes kind {kind:?} (known: {})",
            K8S_KINDS.join(", ")
        ))
    }
}

/// Whether an object's labels satisfy a selector like `app=cart,tier!=db,canary`.
pub fn selector_matches(selector: &str, obj: &Value) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels[k.trim()].as_str() != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                labels[k.trim()].as_str() == Some(v.trim())
            } else {
                !labels[term].is_null()
            }
        })
}

impl RecordedWorld {
    fn k8s(&self, kind: &str) -> Result<&[Value], String> {
        check_kind(kind)?;
        let k = self
            .kubernetes
            .as_ref()
            .ok_or("the world file has no \"kubernetes\" answers")?;
        Ok(k.get(kind).map(Vec::as_slice).unwrap_or(&[]))
    }

    fn os(&self, what: &str) -> Result<&[Value], String> {
        let o = self
            .openstack
            .as_ref()
            .ok_or("the world file has no \"openstack\" answers")?;
        Ok(o.get(what).map(Vec::as_slice).unwrap_or(&[]))
    }
}

impl World for RecordedWorld {
    fn prom_query(&self, query: &str, _at: f64) -> Result<Vec<(Labels, f64)>, String> {
        self.prometheus
            .get(query)
            .map(|rows| rows.iter().map(|r| (r.labels.clone(), r.value)).collect())
            .ok_or_else(|| format!("no recorded answer for the query `{query}`"))
    }

    fn k8s_get(&self, kind: &str, namespace: &str, name: &str) -> Result<Option<Value>, String> {
        Ok(self
            .k8s(kind)?
            .iter()
            .find(|o| {
                o["metadata"]["name"] == name
                    && (namespace.is_empty() || o["metadata"]["namespace"] == namespace)
            })
            .cloned())
    }

    fn k8s_list(&self, kind: &str, namespace: &str, selector: &str) -> Result<Vec<Value>, String> {
        Ok(self
            .k8s(kind)?
            .iter()
            .filter(|o| namespace.is_empty() || o["metadata"]["namespace"] == namespace)
            .filter(|o| selector_matches(selector, o))
            .cloned()
            .collect())
    }

    fn os_server(&self, id_or_name: &str) -> Result<Option<Value>, String> {
        Ok(self
            .os("servers")?
            .iter()
            .find(|s| s["id"] == id_or_name || s["name"] == id_or_name)
            .cloned())
    }

    fn os_servers(&self, filters: &serde_json::Map<String, Value>) -> Result<Vec<Value>, String> {
        Ok(self
            .os("servers")?
            .iter()
            .filter(|s| filters.iter().all(|(k, v)| &s[k.as_str()] == v))
            .cloned()
            .collect())
    }

    fn os_hypervisors(&self) -> Result<Vec<Value>, String> {
        Ok(self.os("hypervisors")?.to_vec())
    }

    fn os_compute_services(&self, host: &str) -> Result<Vec<Value>, String> {
        Ok(self
            .os("compute_services")?
            .iter()
            .filter(|s| host.is_empty() || s["host"] == host)
            .cloned()
            .collect())
    }
}

/// The agent's world: Prometheus, and Kubernetes and OpenStack through the executor's
/// clients; a layer that is not configured answers so, rather than pretend.
pub struct LiveWorld {
    source: Arc<dyn Source>,
    effectors: crate::act::Effectors,
    handle: tokio::runtime::Handle,
    timeout: Duration,
}

impl LiveWorld {
    /// Lookups run on `handle` (scripts run on threads of their own) with a per-call timeout.
    pub fn new(
        source: Arc<dyn Source>,
        effectors: crate::act::Effectors,
        handle: tokio::runtime::Handle,
        timeout: Duration,
    ) -> Self {
        LiveWorld {
            source,
            effectors,
            handle,
            timeout,
        }
    }

    /// Runs a lookup on the runtime with the time limit.
    fn call<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        match self
            .handle
            .block_on(tokio::time::timeout(self.timeout, fut))
        {
            Ok(r) => r,
            Err(_) => Err(format!("{what}: no answer within {:?}", self.timeout)),
        }
    }

    fn kube(&self) -> Result<&crate::act::k8s::Kube, String> {
        self.effectors
            .kube
            .as_deref()
            .ok_or_else(|| "no Kubernetes client is configured ([kubernetes] in the config)".into())
    }

    fn openstack(&self) -> Result<&crate::act::openstack::OpenStack, String> {
        self.effectors
            .openstack
            .as_deref()
            .ok_or_else(|| "no OpenStack client is configured ([openstack] in the config)".into())
    }
}

impl World for LiveWorld {
    fn prom_query(&self, query: &str, at: f64) -> Result<Vec<(Labels, f64)>, String> {
        self.call("prometheus", async {
            self.source
                .instant_at(query, Some(at))
                .await
                .map(|points| points.into_iter().map(|p| (p.labels, p.value)).collect())
                .map_err(|e| format!("prometheus: {e}"))
        })
    }

    fn k8s_get(&self, kind: &str, ns: &str, name: &str) -> Result<Option<Value>, String> {
        check_kind(kind)?;
        let kube = self.kube()?;
        self.call("kubernetes", kube.get(kind, ns, name))
    }

    fn k8s_list(&self, kind: &str, ns: &str, selector: &str) -> Result<Vec<Value>, String> {
        check_kind(kind)?;
        let kube = self.kube()?;
        self.call("kubernetes", kube.list(kind, ns, selector))
    }

    fn os_server(&self, id_or_name: &str) -> Result<Option<Value>, String> {
        let os = self.openstack()?;
        self.call("openstack", os.server(id_or_name))
    }

    fn os_servers(&self, filters: &serde_json::Map<String, Value>) -> Result<Vec<Value>, String> {
        let os = self.openstack()?;
        self.call("openstack", os.servers(filters))
    }

    fn os_compute_services(&self, host: &str) -> Result<Vec<Value>, String> {
        let os = self.openstack()?;
        self.call("openstack", os.compute_services(host))
    }

    fn os_hypervisors(&self) -> Result<Vec<Value>, String> {
        let os = self.openstack()?;
        self.call("openstack", os.hypervisors())
    }
}

type HostResult<T> = Result<T, Box<EvalAltResult>>;

/// A PromQL condition that holds when the anomaly's own series is back inside its
/// expected band: the signal's query, compared with the band's edge, joined on the
/// series' labels (built with `label_replace(vector(1), ...)`, which needs no metric).
pub fn back_to_normal(anomaly: &rhai::Map) -> Result<String, String> {
    let get = |k: &str| anomaly.get(k).cloned().unwrap_or(Dynamic::UNIT);
    let query = get("query").into_string().unwrap_or_default();
    if query.is_empty() {
        return Err(
            "prom::back_to_normal: the event has no signal query (alerts have none)".into(),
        );
    }
    let down = get("direction").into_string().unwrap_or_default() == "down";
    let edge = get(if down { "lower" } else { "upper" })
        .as_float()
        .unwrap_or(f64::NAN);
    if !edge.is_finite() {
        return Err("prom::back_to_normal: the anomaly has no expected band yet".into());
    }
    let labels: rhai::Map = get("labels").try_cast().unwrap_or_default();
    let mut selector = "vector(1)".to_string();
    let mut names = Vec::new();
    for (k, v) in &labels {
        let v = v
            .clone()
            .into_string()
            .unwrap_or_default()
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        selector = format!("label_replace({selector}, \"{k}\", \"{v}\", \"\", \"\")");
        names.push(k.to_string());
    }
    let op = if down { ">=" } else { "<=" };
    Ok(format!(
        "({query}) {op} {edge} and on({}) {selector}",
        names.join(", ")
    ))
}

fn to_dyn(v: &Value) -> HostResult<Dynamic> {
    rhai::serde::to_dynamic(v)
}

fn opt_to_dyn(v: Option<Value>) -> HostResult<Dynamic> {
    v.map_or(Ok(Dynamic::UNIT), |v| to_dyn(&v))
}

fn list_to_dyn(v: Vec<Value>) -> HostResult<Array> {
    v.iter().map(to_dyn).collect()
}

/// Registers `prom::`, `k8s::`, `openstack::` and the helpers on an engine; `now` is
/// the time the script runs "at" (queries are evaluated then).
pub fn register(engine: &mut Engine, world: Arc<dyn World>, now: f64) {
    let mut prom = Module::new();
    let w = world.clone();
    prom.set_native_fn("query", move |q: ImmutableString| -> HostResult<Array> {
        let rows = w
            .prom_query(&q, now)
            .map_err(|e| format!("prom::query: {e}"))?;
        rows.into_iter()
            .map(|(labels, value)| {
                let mut m = rhai::Map::new();
                m.insert("labels".into(), rhai::serde::to_dynamic(&labels)?);
                m.insert("value".into(), value.into());
                Ok(m.into())
            })
            .collect()
    });
    let w = world.clone();
    prom.set_native_fn("value", move |q: ImmutableString| -> HostResult<Dynamic> {
        // The first series' value, or () when the query returns nothing.
        let rows = w
            .prom_query(&q, now)
            .map_err(|e| format!("prom::value: {e}"))?;
        Ok(rows.first().map_or(Dynamic::UNIT, |(_, v)| (*v).into()))
    });
    prom.set_native_fn(
        "back_to_normal",
        |anomaly: rhai::Map| -> HostResult<String> { back_to_normal(&anomaly).map_err(Into::into) },
    );
    engine.register_static_module("prom", prom.into());

    let mut k8s = Module::new();
    let w = world.clone();
    k8s.set_native_fn(
        "get",
        move |kind: ImmutableString,
              ns: ImmutableString,
              name: ImmutableString|
              -> HostResult<Dynamic> {
            opt_to_dyn(
                w.k8s_get(&kind, &ns, &name)
                    .map_err(|e| format!("k8s::get: {e}"))?,
            )
        },
    );
    let w = world.clone();
    k8s.set_native_fn(
        "list",
        move |kind: ImmutableString,
              ns: ImmutableString,
              sel: ImmutableString|
              -> HostResult<Array> {
            list_to_dyn(
                w.k8s_list(&kind, &ns, &sel)
                    .map_err(|e| format!("k8s::list: {e}"))?,
            )
        },
    );
    let w = world.clone();
    k8s.set_native_fn(
        "list",
        move |kind: ImmutableString, ns: ImmutableString| -> HostResult<Array> {
            list_to_dyn(
                w.k8s_list(&kind, &ns, "")
                    .map_err(|e| format!("k8s::list: {e}"))?,
            )
        },
    );
    engine.register_static_module("k8s", k8s.into());

    let mut os = Module::new();
    let w = world.clone();
    os.set_native_fn(
        "server",
        move |id: ImmutableString| -> HostResult<Dynamic> {
            opt_to_dyn(
                w.os_server(&id)
                    .map_err(|e| format!("openstack::server: {e}"))?,
            )
        },
    );
    let w = world.clone();
    os.set_native_fn(
        "compute_services",
        move |host: ImmutableString| -> HostResult<Array> {
            list_to_dyn(
                w.os_compute_services(&host)
                    .map_err(|e| format!("openstack::compute_services: {e}"))?,
            )
        },
    );
    let w = world.clone();
    os.set_native_fn("servers", move |filters: rhai::Map| -> HostResult<Array> {
        let mut map = serde_json::Map::new();
        for (k, v) in filters {
            let v: Value = rhai::serde::from_dynamic(&v)
                .map_err(|e| format!("openstack::servers: filter {k}: {e}"))?;
            map.insert(k.to_string(), v);
        }
        let filters = map;
        list_to_dyn(
            w.os_servers(&filters)
                .map_err(|e| format!("openstack::servers: {e}"))?,
        )
    });
    let w = world.clone();
    os.set_native_fn("hypervisors", move || -> HostResult<Array> {
        list_to_dyn(
            w.os_hypervisors()
                .map_err(|e| format!("openstack::hypervisors: {e}"))?,
        )
    });
    let w = world;
    os.set_native_fn("compute_services", move || -> HostResult<Array> {
        list_to_dyn(
            w.os_compute_services("")
                .map_err(|e| format!("openstack::compute_services: {e}"))?,
        )
    });
    engine.register_static_module("openstack", os.into());

    engine.register_fn("now", move || now);
    engine.register_fn("parse_duration", |s: ImmutableString| -> HostResult<f64> {
        humantime::parse_duration(&s)
            .map(|d| d.as_secs_f64())
            .map_err(|e| format!("parse_duration({s:?}): {e}").into())
    });
    engine.register_fn("format_time", |unix: f64| -> String {
        let t = std::time::UNIX_EPOCH + Duration::from_secs_f64(unix.max(0.0));
        humantime::format_rfc3339_seconds(t).to_string()
    });
    engine.register_fn(
        "label",
        |labels: rhai::Map, name: ImmutableString| -> String {
            labels
                .get(name.as_str())
                .and_then(|v| v.clone().into_string().ok())
                .unwrap_or_default()
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn world() -> RecordedWorld {
        serde_json::from_value(json!({
            "prometheus": {"up": [{"labels": {"job": "a"}, "value": 1.0}]},
            "kubernetes": {"nodes": [
                {"metadata": {"name": "n1", "labels": {"role": "worker"}}},
                {"metadata": {"name": "n2", "labels": {"role": "control"}}}
            ]},
        }))
        .unwrap()
    }

    fn eval(src: &str) -> Result<Dynamic, String> {
        let mut e = Engine::new();
        register(&mut e, Arc::new(world()), 1000.0);
        e.eval::<Dynamic>(src).map_err(|e| e.to_string())
    }

    #[test]
    fn scripts_read_recorded_answers() {
        assert_eq!(
            eval("prom::value(\"up\")").unwrap().as_float().unwrap(),
            1.0
        );
        assert_eq!(
            eval("prom::query(\"up\")[0].labels.job")
                .unwrap()
                .into_string()
                .unwrap(),
            "a"
        );
        assert_eq!(
            eval("k8s::list(\"nodes\", \"\", \"role=worker\").len()")
                .unwrap()
                .as_int()
                .unwrap(),
            1
        );
        assert_eq!(
            eval("k8s::get(\"nodes\", \"\", \"n2\").metadata.name")
                .unwrap()
                .into_string()
                .unwrap(),
            "n2"
        );
        assert!(eval("k8s::get(\"nodes\", \"\", \"n9\")").unwrap().is_unit());
        assert_eq!(eval("now()").unwrap().as_float().unwrap(), 1000.0);
        assert_eq!(
            eval("parse_duration(\"5m\")").unwrap().as_float().unwrap(),
            300.0
        );
        assert_eq!(
            eval("label(#{a: \"x\"}, \"b\")")
                .unwrap()
                .into_string()
                .unwrap(),
            ""
        );
    }

    #[test]
    fn missing_answers_are_errors_not_guesses() {
        let e = eval("prom::query(\"rate(x[5m])\")").unwrap_err();
        assert!(
            e.contains("no recorded answer for the query `rate(x[5m])`"),
            "{e}"
        );
        assert!(eval("openstack::server(\"vm1\")")
            .unwrap_err()
            .contains("no \"openstack\" answers"));
        assert!(eval("k8s::list(\"secrets\", \"\")")
            .unwrap_err()
            .contains("unknown Kubernetes kind"));
    }

    #[test]
    fn back_to_normal_joins_on_the_series_labels() {
        let q = eval(r#"prom::back_to_normal(#{ query: "max by (pod) (lat)", direction: "up", upper: 1.5, labels: #{ pod: "a\"b" } })"#).unwrap();
        assert_eq!(
            q.into_string().unwrap(),
            r#"(max by (pod) (lat)) <= 1.5 and on(pod) label_replace(vector(1), "pod", "a\"b", "", "")"#
        );
        assert!(eval(r#"prom::back_to_normal(#{ query: "", labels: #{} })"#)
            .unwrap_err()
            .contains("no signal query"));
    }

    #[test]
    fn selectors() {
        let o = json!({"metadata": {"labels": {"app": "cart", "tier": "web"}}});
        assert!(selector_matches("app=cart,tier!=db", &o));
        assert!(selector_matches("app==cart", &o));
        assert!(selector_matches("tier", &o));
        assert!(!selector_matches("app=search", &o));
        assert!(selector_matches("", &o));
    }
}
