//! The HTTP layer under the Kubernetes effector: the paths of the kinds homeostat uses,
//! names checked before they become paths, one bounded call, and the API's own
//! `Status` answers read as they are (never guessed).

use std::time::Duration;

use serde_json::{json, Value};

/// Where one kind lives in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// `/api/v1` or `/apis/GROUP/VERSION`.
    pub prefix: &'static str,
    /// The plural resource name in paths, e.g. `deployments`.
    pub plural: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

/// The kinds scripts read and actions touch, by their plural name.
pub fn resource(kind: &str) -> Option<Resource> {
    let (prefix, namespaced) = match kind {
        "pods" | "events" => ("/api/v1", true),
        "nodes" => ("/api/v1", false),
        "deployments" | "statefulsets" | "daemonsets" => ("/apis/apps/v1", true),
        "poddisruptionbudgets" => ("/apis/policy/v1", true),
        _ => return None,
    };
    let plural = match kind {
        "pods" => "pods",
        "events" => "events",
        "nodes" => "nodes",
        "deployments" => "deployments",
        "statefulsets" => "statefulsets",
        "daemonsets" => "daemonsets",
        _ => "poddisruptionbudgets",
    };
    Some(Resource {
        prefix,
        plural,
        namespaced,
    })
}

/// Refuses a name that is not a Kubernetes object name (a DNS subdomain): target
/// values come from scripts and alert labels, and must not be able to change the path.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && name != ".."
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?} is not a Kubernetes object name (lowercase letters, digits, '-', '.')"
        ))
    }
}

/// `/api/v1/namespaces/NS/pods/NAME`, or `/api/v1/nodes/NAME` for cluster-scoped kinds.
pub fn object_path(r: Resource, namespace: &str, name: &str) -> String {
    if r.namespaced {
        format!("{}/namespaces/{namespace}/{}/{name}", r.prefix, r.plural)
    } else {
        format!("{}/{}/{name}", r.prefix, r.plural)
    }
}

/// The collection of a kind in a namespace, or across all of them for `""`.
pub fn collection_path(r: Resource, namespace: &str) -> String {
    if r.namespaced && !namespace.is_empty() {
        format!("{}/namespaces/{namespace}/{}", r.prefix, r.plural)
    } else {
        format!("{}/{}", r.prefix, r.plural)
    }
}

/// Percent-encodes a query value (selectors hold `=`, `!`, `,`, spaces, parentheses).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `path` with `dryRun=All` added to its query.
pub fn with_dry_run(path: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}dryRun=All")
}

/// One answer of the API: its status code and its JSON body (a `{"raw": ...}` excerpt
/// when the body is not JSON, as a proxy's error page is not).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The HTTP status code.
    pub code: u16,
    /// The body.
    pub body: Value,
}

impl Answer {
    /// Parses a body as the API returns it.
    pub fn new(code: u16, bytes: &[u8]) -> Answer {
        let body = serde_json::from_slice(bytes).unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(bytes);
            json!({ "raw": text.chars().take(500).collect::<String>() })
        });
        Answer { code, body }
    }

    /// 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The `Status` the API answered with (its fields, or the code alone when the body
    /// is not a `Status`).
    pub fn status(&self) -> ApiStatus {
        let b = &self.body;
        let is_status = b["kind"] == "Status";
        let text = |k: &str| {
            if is_status {
                b[k].as_str().unwrap_or("").to_string()
            } else {
                String::new()
            }
        };
        let mut message = text("message");
        if message.is_empty() {
            if let Some(raw) = b["raw"].as_str() {
                message = raw.to_string();
            }
        }
        ApiStatus {
            code: self.code,
            reason: text("reason"),
            message,
            causes: if is_status {
                b["details"]["causes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            } else {
                Vec::new()
            },
            retry_after: b["details"]["retryAfterSeconds"]
                .as_u64()
                .filter(|_| is_status)
                .map(Duration::from_secs),
        }
    }
}

/// The parts of a `Status` the outcome depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiStatus {
    /// The HTTP status code.
    pub code: u16,
    /// `NotFound`, `Conflict`, `Invalid`, `Forbidden`, `TooManyRequests`, ...
    pub reason: String,
    /// The API's message.
    pub message: String,
    /// `details.causes`.
    pub causes: Vec<Value>,
    /// `details.retryAfterSeconds`: how long the API asked to wait (rate limiting).
    pub retry_after: Option<Duration>,
}

impl ApiStatus {
    /// A 429 of the Eviction API because of a PodDisruptionBudget (its cause says so;
    /// a 429 without it is the API's rate limiting).
    pub fn is_disruption_budget(&self) -> bool {
        self.code == 429
            && self
                .causes
                .iter()
                .any(|c| c["reason"] == "DisruptionBudget")
    }

    /// Worth sending again after a pause: rate limiting and server-side failures.
    pub fn is_transient(&self) -> bool {
        (self.code == 429 && !self.is_disruption_budget()) || self.code >= 500
    }

    /// Whether a rule said no (as opposed to a request that was wrong or failed):
    /// RBAC, a PodDisruptionBudget, an admission policy's denial.
    pub fn refusal_rule(&self) -> Option<&'static str> {
        if self.code == 403 {
            Some("forbidden")
        } else if self.is_disruption_budget() {
            Some("disruption-budget")
        } else if self.code == 422 && self.message.contains("denied") {
            // ValidatingAdmissionPolicy and webhook denials: "... denied request: ...".
            Some("policy")
        } else {
            None
        }
    }

    /// For the audit log: code, reason, message and causes as the API gave them.
    pub fn detail(&self) -> Value {
        let mut d = json!({ "code": self.code, "reason": self.reason, "message": self.message });
        if !self.causes.is_empty() {
            d["causes"] = Value::Array(self.causes.clone());
        }
        d
    }

    /// One line: `403 Forbidden: pods "x" is forbidden: ...`.
    pub fn line(&self) -> String {
        match (self.reason.is_empty(), self.message.is_empty()) {
            (true, true) => format!("HTTP {}", self.code),
            (true, false) => format!("HTTP {}: {}", self.code, self.message),
            (false, true) => format!("{} {}", self.code, self.reason),
            (false, false) => format!("{} {}: {}", self.code, self.reason, self.message),
        }
    }
}

/// Whether an object opted out of homeostat (`homeostat.io/ignore: "true"` as a label
/// or an annotation; `True` and `TRUE` too, as for Nova's metadata: an operator who
/// wrote either meant it).
pub fn opted_out(obj: &Value) -> bool {
    let m = &obj["metadata"];
    ["labels", "annotations"].iter().any(|k| {
        m[k][OPT_OUT]
            .as_str()
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    })
}

/// The label or annotation that keeps homeostat's hands off an object.
pub const OPT_OUT: &str = "homeostat.io/ignore";

/// Values of credential fields in a kubeconfig's text (YAML or JSON), so that an error
/// quoting the file can be scrubbed before it is shown.
pub fn secrets_in(text: &str) -> Vec<String> {
    let re = regex::Regex::new(
        r#"(?i)"?(token|client-key-data|password|id-token|refresh-token|client-secret|access-token)"?\s*:\s*["']?([^"'\s,}]+)"#,
    )
    .expect("a valid regex");
    re.captures_iter(text)
        .filter_map(|c| c.get(2).map(|m| m.as_str().to_string()))
        .filter(|s| s.len() >= 4)
        .collect()
}

/// `text` with every secret replaced.
pub fn redact(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .fold(text.to_string(), |t, s| t.replace(s.as_str(), "[redacted]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_change_a_path_are_refused() {
        assert!(check_name("pod", "cart-7d9f.x1").is_ok());
        for bad in [
            "",
            "../x",
            "a/b",
            "a?dryRun=None",
            "Cart",
            "a b",
            "-a",
            "a..b",
        ] {
            assert!(check_name("pod", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_and_queries() {
        let pods = resource("pods").unwrap();
        assert_eq!(
            object_path(pods, "shop", "cart-1"),
            "/api/v1/namespaces/shop/pods/cart-1"
        );
        assert_eq!(collection_path(pods, ""), "/api/v1/pods");
        let nodes = resource("nodes").unwrap();
        assert_eq!(object_path(nodes, "ignored", "n1"), "/api/v1/nodes/n1");
        let d = resource("deployments").unwrap();
        assert_eq!(
            collection_path(d, "shop"),
            "/apis/apps/v1/namespaces/shop/deployments"
        );
        assert_eq!(encode("app=cart,tier!=db"), "app%3Dcart%2Ctier%21%3Ddb");
        assert_eq!(with_dry_run("/a?b=1"), "/a?b=1&dryRun=All");
        assert_eq!(with_dry_run("/a"), "/a?dryRun=All");
        assert!(resource("secrets").is_none());
    }

    #[test]
    fn statuses_are_read_as_the_api_gives_them() {
        let pdb = Answer::new(
            429,
            br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message":"Cannot evict pod as it would violate the pod's disruption budget.",
            "reason":"TooManyRequests","details":{"causes":[{"reason":"DisruptionBudget",
            "message":"The disruption budget web needs 2 healthy pods and has 2 currently"}]},"code":429}"#,
        );
        let s = pdb.status();
        assert!(s.is_disruption_budget() && !s.is_transient());
        assert_eq!(s.refusal_rule(), Some("disruption-budget"));
        let throttled = Answer::new(
            429,
            br#"{"kind":"Status","reason":"TooManyRequests","message":"slow down"}"#,
        );
        assert!(throttled.status().is_transient());
        let proxy = Answer::new(502, b"<html>bad gateway</html>");
        assert_eq!(proxy.status().message, "<html>bad gateway</html>");
        assert!(proxy.status().is_transient());
        let invalid = Answer::new(
            422,
            br#"{"kind":"Status","reason":"Invalid","message":"x is invalid"}"#,
        );
        assert_eq!(invalid.status().refusal_rule(), None);
        assert_eq!(invalid.status().line(), "422 Invalid: x is invalid");
    }

    #[test]
    fn secrets_are_found_in_yaml_and_json_kubeconfigs() {
        let yaml =
            "users:\n- name: u\n  user:\n    token: abc.def-123\n    client-key-data: LS0tS2V5\n";
        assert_eq!(secrets_in(yaml), ["abc.def-123", "LS0tS2V5"]);
        let json = r#"{"users":[{"name":"u","user":{"token":"s3cr3t-t0ken"}}]}"#;
        assert_eq!(secrets_in(json), ["s3cr3t-t0ken"]);
        assert_eq!(
            redact("bad token s3cr3t-t0ken here", &secrets_in(json)),
            "bad token [redacted] here"
        );
    }

    #[test]
    fn an_opt_out_is_any_case_of_true_as_a_label_or_an_annotation() {
        let obj = |where_: &str, v: &str| serde_json::json!({"metadata": {where_: {"homeostat.io/ignore": v}}});
        for v in ["true", "True", "TRUE"] {
            assert!(opted_out(&obj("labels", v)), "{v}");
            assert!(opted_out(&obj("annotations", v)), "{v}");
        }
        for v in ["false", "yes", "", "truex"] {
            assert!(!opted_out(&obj("labels", v)), "{v}");
        }
        assert!(!opted_out(&serde_json::json!({"metadata": {}})));
        assert!(!opted_out(
            &serde_json::json!({"metadata": {"labels": {"homeostat.io/ignore": true}}})
        ));
    }
}
