//! Incidents: anomalies that open within a short time of each other on series that share
//! an identifying label (the same instance, node, pod, deployment or server; see
//! [`identity`] for `instance`) are one incident. A machine that goes wrong moves several of its metrics at once; an operator
//! wants one page for it, not one per metric. Pure: no I/O, no clock.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::labels::Labels;

/// The labels that name the thing a series measures: two series that share the value of
/// one of them measure the same thing.
pub const IDENTIFYING: [&str; 5] = ["instance", "node", "pod", "deployment", "server"];

/// One anomaly as it opened: when, and on which series.
#[derive(Debug, Clone, Copy)]
pub struct Opening<'a> {
    /// Unix time it opened.
    pub t: f64,
    /// The series' labels.
    pub labels: &'a Labels,
}

/// The identifying labels (name and value) of a series. `instance` is the label
/// Prometheus gives the scrape target, which names what the series measures only when
/// nothing else does: a kube-state-metrics or cAdvisor series of a pod carries its
/// exporter's or its node's `instance`, and every pod behind that exporter would
/// otherwise be one incident. So `instance` counts only on a series with no other
/// identifying label (a node exporter's metrics).
pub fn identity<S: AsRef<str>>(labels: &Labels, identifying: &[S]) -> Vec<(String, String)> {
    let mut keys: Vec<(String, String)> = identifying
        .iter()
        .filter_map(|name| {
            let name = name.as_ref();
            labels.get(name).map(|v| (name.to_string(), v.to_string()))
        })
        .collect();
    if keys.iter().any(|(name, _)| name != "instance") {
        keys.retain(|(name, _)| name != "instance");
    }
    keys
}

/// Whether two series share an element of their [`identity`].
pub fn related(a: &Labels, b: &Labels, identifying: &[&str]) -> bool {
    let b = identity(b, identifying);
    identity(a, identifying).iter().any(|k| b.contains(k))
}

/// The incident of each opening, numbered from 0 in order of the incidents' first
/// openings, as [`Incidents`] would assign them live with the openings in time order
/// (ties in the order given). An opening whose time is not a number is an incident of
/// its own.
pub fn incidents(openings: &[Opening<'_>], within: f64, identifying: &[&str]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..openings.len()).collect();
    order.sort_by(|&a, &b| openings[a].t.total_cmp(&openings[b].t));
    let names = identifying.iter().map(|s| s.to_string()).collect();
    let mut live = Incidents::new(within, names);
    let mut number: HashMap<String, usize> = HashMap::new();
    let mut out = vec![0; openings.len()];
    for i in order {
        let incident = live.open(&i.to_string(), openings[i].labels, openings[i].t);
        let next = number.len();
        out[i] = *number.entry(incident).or_insert(next);
        // Nothing closes in a batch: only what is still joinable needs keeping.
        live.close(&i.to_string());
    }
    out
}

/// One incident being tracked: how many of its members are open and what already ran
/// for it. (Who its members are is in the audit log: `audit show` lists them.)
#[derive(Debug, Default)]
struct Incident {
    /// Members still open.
    open: usize,
    /// Its openings still joinable.
    recent: usize,
    /// What ran for the incident (the caller's key: a playbook, or a playbook for one
    /// target) → the Unix time it last ran.
    handled: BTreeMap<String, f64>,
}

/// An identifying label's name and value.
type Key = (String, String);

/// Live grouping: each anomaly, as it opens, joins the incident of the earliest
/// [`related`] opening of the last `within` seconds, or starts one named by its own id.
/// Membership chains: an anomaly may join through a member it shares a label with, not
/// the first one. Two incidents never merge once made: an opening related to both joins
/// that of the earliest related opening still within reach (a plan may already be
/// running for each). An incident is forgotten once none of its members is open and no
/// later opening can join it. Pure: the caller passes the times. Each opening costs a
/// few map lookups, so a storm of thousands stays cheap.
#[derive(Debug)]
pub struct Incidents {
    within: f64,
    identifying: Vec<String>,
    /// Openings of the last `within` seconds, in the order they came: time, keys,
    /// incident.
    recent: VecDeque<(f64, Vec<Key>, String)>,
    /// The same openings by identifying label, each list in the same order.
    by_key: HashMap<Key, VecDeque<(f64, String)>>,
    incidents: HashMap<String, Incident>,
    /// Open member id → its incident.
    member_of: HashMap<String, String>,
    /// The latest opening time seen: one far before it means the clock was stepped back.
    newest: f64,
}

impl Incidents {
    /// Groups openings up to `within` seconds apart (not a number or negative: only
    /// openings at the same time) on series sharing one of the `identifying` labels
    /// (none: every anomaly is an incident of its own).
    pub fn new(within: f64, identifying: Vec<String>) -> Self {
        Incidents {
            within: if within.is_nan() {
                0.0
            } else {
                within.max(0.0)
            },
            identifying,
            recent: VecDeque::new(),
            by_key: HashMap::new(),
            incidents: HashMap::new(),
            member_of: HashMap::new(),
            newest: f64::NEG_INFINITY,
        }
    }

    /// Anomaly `id` opened on `labels` at Unix time `t`: returns its incident's id (its
    /// own id, or that id with a `-2`, `-3`, … suffix if an incident of that name is
    /// still tracked: an alert's id is the same at every firing).
    pub fn open(&mut self, id: &str, labels: &Labels, t: f64) -> String {
        if !t.is_finite() {
            let own = self.fresh_name(id);
            self.join(id, &own);
            return own;
        }
        if t < self.newest - self.within {
            // The clock was stepped back (NTP, a resumed VM): what came "later" would
            // stay joinable for the size of the step. Start afresh.
            self.forget_before(f64::INFINITY);
            self.newest = t;
        }
        self.newest = self.newest.max(t);
        self.forget_before(t);
        let keys: Vec<Key> = identity(labels, &self.identifying);
        let incident = keys
            .iter()
            .filter_map(|k| self.by_key.get(k).and_then(VecDeque::front))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, incident)| incident.clone())
            .unwrap_or_else(|| self.fresh_name(id));
        self.join(id, &incident);
        for k in &keys {
            self.by_key
                .entry(k.clone())
                .or_default()
                .push_back((t, incident.clone()));
        }
        if let Some(entry) = self.incidents.get_mut(&incident) {
            entry.recent += 1;
        }
        self.recent.push_back((t, keys, incident.clone()));
        incident
    }

    /// Anomaly `id`, open before a restart, goes on as a member of `incident` (as the
    /// audit log recorded it; empty: its own), with what was already run for it (see
    /// [`Incidents::handled`]), noted as run at `t` (when it opened: no earlier).
    /// Nothing new joins it: it opened before the restart.
    pub fn resume(
        &mut self,
        id: &str,
        incident: &str,
        handled: impl IntoIterator<Item = String>,
        t: f64,
    ) {
        let incident = if incident.is_empty() { id } else { incident };
        self.join(id, incident);
        for what in handled {
            self.note_handled(incident, &what, t);
        }
    }

    /// `id`, or `id-2`, `id-3`, … if an incident of that name is tracked.
    fn fresh_name(&self, id: &str) -> String {
        if !self.incidents.contains_key(id) {
            return id.to_string();
        }
        (2u64..)
            .map(|n| format!("{id}-{n}"))
            .find(|name| !self.incidents.contains_key(name))
            .expect("an unused suffix exists")
    }

    fn join(&mut self, id: &str, incident: &str) {
        let entry = self.incidents.entry(incident.to_string()).or_default();
        entry.open += 1;
        if let Some(before) = self.member_of.insert(id.to_string(), incident.to_string()) {
            // The same id opened twice without a close: count it open once.
            if let Some(e) = self.incidents.get_mut(&before) {
                e.open = e.open.saturating_sub(1);
            }
            if before != incident {
                self.forget_if_idle(&before);
            }
        }
    }

    /// Anomaly `id` closed.
    pub fn close(&mut self, id: &str) {
        let Some(incident) = self.member_of.remove(id) else {
            return;
        };
        if let Some(entry) = self.incidents.get_mut(&incident) {
            entry.open = entry.open.saturating_sub(1);
        }
        self.forget_if_idle(&incident);
    }

    /// The incident of open anomaly `id`, if it is tracked.
    pub fn incident_of(&self, id: &str) -> Option<&str> {
        self.member_of.get(id).map(String::as_str)
    }

    /// When `what` (a playbook, or a playbook for one target: the caller's key) last
    /// ran for `incident`, if it did.
    pub fn handled(&self, incident: &str, what: &str) -> Option<f64> {
        self.incidents
            .get(incident)
            .and_then(|i| i.handled.get(what).copied())
    }

    /// Notes that `what` ran for `incident` at Unix time `t`.
    pub fn note_handled(&mut self, incident: &str, what: &str, t: f64) {
        if let Some(entry) = self.incidents.get_mut(incident) {
            entry.handled.insert(what.to_string(), t);
        }
    }

    /// Incidents tracked (open, or still joinable).
    pub fn len(&self) -> usize {
        self.incidents.len()
    }

    /// Whether none is tracked.
    pub fn is_empty(&self) -> bool {
        self.incidents.is_empty()
    }

    /// Drops the openings no opening at `t` can join.
    fn forget_before(&mut self, t: f64) {
        while self.recent.front().is_some_and(|r| r.0 < t - self.within) {
            let (_, keys, incident) = self.recent.pop_front().expect("front exists");
            for k in keys {
                // Each key's list is in arrival order: its front is this opening.
                if let Some(list) = self.by_key.get_mut(&k) {
                    list.pop_front();
                    if list.is_empty() {
                        self.by_key.remove(&k);
                    }
                }
            }
            if let Some(entry) = self.incidents.get_mut(&incident) {
                entry.recent = entry.recent.saturating_sub(1);
            }
            self.forget_if_idle(&incident);
        }
    }

    fn forget_if_idle(&mut self, incident: &str) {
        if self
            .incidents
            .get(incident)
            .is_some_and(|i| i.open == 0 && i.recent == 0)
        {
            self.incidents.remove(incident);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
    }

    /// A live tracker at five minutes on the default identifying labels.
    fn tracker() -> Incidents {
        Incidents::new(300.0, IDENTIFYING.map(String::from).to_vec())
    }

    #[test]
    fn metrics_of_one_machine_at_once_are_one_incident() {
        let cpu_a = labels(&[("instance", "a"), ("__name__", "cpu")]);
        let mem_a = labels(&[("instance", "a"), ("__name__", "mem")]);
        let cpu_b = labels(&[("instance", "b"), ("__name__", "cpu")]);
        let pod = labels(&[("pod", "web-1"), ("instance", "c")]);
        let pod_net = labels(&[("pod", "web-1")]);
        let o = |t, labels| Opening { t, labels };
        let openings = [
            o(1000.0, &mem_a), // with the cpu of a, 200 s before it
            o(1200.0, &cpu_a),
            o(1100.0, &cpu_b), // another machine at the same time: its own
            o(5000.0, &cpu_a), // a's cpu again, an hour later: a new incident
            o(5100.0, &pod),   // a pod and its network, 250 s apart
            o(5350.0, &pod_net),
        ];
        assert_eq!(
            incidents(&openings, 300.0, &IDENTIFYING),
            vec![0, 0, 1, 2, 3, 3]
        );
        // Within 100 s, a's memory and cpu are two incidents, and so are the pod's.
        assert_eq!(
            incidents(&openings, 100.0, &IDENTIFYING),
            vec![0, 2, 1, 3, 4, 5]
        );
    }

    #[test]
    fn a_chain_of_openings_is_one_incident_and_odd_times_are_their_own() {
        // Each within 60 s of the one before on the same node: one incident over 150 s.
        let node = labels(&[("node", "n1")]);
        let other = labels(&[("job", "x")]);
        let openings = [
            Opening {
                t: 0.0,
                labels: &node,
            },
            Opening {
                t: 50.0,
                labels: &node,
            },
            Opening {
                t: 100.0,
                labels: &node,
            },
            Opening {
                t: 150.0,
                labels: &node,
            },
            Opening {
                t: 20.0,
                labels: &other,
            },
            Opening {
                t: f64::NAN,
                labels: &node,
            },
        ];
        assert_eq!(
            incidents(&openings, 60.0, &IDENTIFYING),
            vec![0, 0, 0, 0, 1, 2]
        );
        assert!(incidents(&[], 60.0, &IDENTIFYING).is_empty());
        // A window that is not a number groups only openings at the same time.
        assert_eq!(
            incidents(&openings[..2], f64::NAN, &IDENTIFYING),
            vec![0, 1]
        );
    }

    #[test]
    fn live_members_share_the_first_ones_incident_and_its_playbooks() {
        let cpu_a = labels(&[("instance", "a"), ("__name__", "cpu")]);
        let mem_a = labels(&[("instance", "a"), ("__name__", "mem")]);
        let pod_on_a = labels(&[("instance", "a"), ("pod", "p")]);
        let pod = labels(&[("pod", "p")]);
        let other = labels(&[("instance", "b")]);
        let mut live = tracker();
        assert_eq!(live.open("an-1", &pod, 0.0), "an-1");
        assert_eq!(live.open("an-2", &cpu_a, 100.0), "an-2");
        assert_eq!(live.open("an-3", &other, 150.0), "an-3");
        // Related to both: joins the older incident; the two do not merge.
        assert_eq!(live.open("an-4", &pod_on_a, 200.0), "an-1");
        assert_eq!(live.open("an-5", &mem_a, 350.0), "an-2");
        assert_eq!(live.incident_of("an-1"), Some("an-1"));
        assert_eq!(live.incident_of("an-2"), Some("an-2"));
        assert_eq!(live.incident_of("an-4"), Some("an-1"));
        assert_eq!(live.incident_of("an-5"), Some("an-2"));

        assert_eq!(live.handled("an-2", "restart"), None);
        live.note_handled("an-2", "restart", 120.0);
        assert_eq!(live.handled("an-2", "restart"), Some(120.0));
        // Run again (its cooldown passed): the latest run counts.
        live.note_handled("an-2", "restart", 400.0);
        assert_eq!(live.handled("an-2", "restart"), Some(400.0));

        // Everything closed and 300 s past the last opening: nothing is kept.
        for id in ["an-1", "an-2", "an-3", "an-4", "an-5"] {
            live.close(id);
        }
        assert_eq!(
            live.len(),
            3,
            "joinable for 300 s after their latest openings"
        );
        assert_eq!(live.open("an-6", &mem_a, 1000.0), "an-6");
        assert_eq!(live.len(), 1);
        assert_eq!(live.handled("an-2", "restart"), None);
        // An open member keeps its incident (and what ran for it) however long it stays.
        assert_eq!(live.open("an-7", &cpu_a, 1100.0), "an-6");
        live.note_handled("an-6", "restart", 1100.0);
        live.close("an-6");
        assert_eq!(live.open("an-8", &other, 9000.0), "an-8");
        assert_eq!(live.handled("an-6", "restart"), Some(1100.0));
        live.close("an-7");
        assert_eq!(live.handled("an-6", "restart"), None);
    }

    #[test]
    fn an_exporters_instance_does_not_make_its_pods_one_incident() {
        let ksm = |pod| labels(&[("pod", pod), ("instance", "ksm:8080")]);
        let (a, b) = (ksm("a"), ksm("b"));
        let node_cpu = labels(&[("instance", "10.0.0.1:9100")]);
        let node_mem = labels(&[("instance", "10.0.0.1:9100"), ("__name__", "mem")]);
        assert!(!related(&a, &b, &IDENTIFYING));
        assert!(related(&a, &a, &IDENTIFYING));
        assert!(related(&node_cpu, &node_mem, &IDENTIFYING));
        let mut live = tracker();
        assert_eq!(live.open("an-1", &a, 0.0), "an-1");
        assert_eq!(live.open("an-2", &b, 10.0), "an-2");
        assert_eq!(live.open("an-3", &node_cpu, 20.0), "an-3");
        assert_eq!(live.open("an-4", &node_mem, 30.0), "an-3");
    }

    #[test]
    fn a_clock_stepped_back_starts_afresh_and_a_reused_id_gets_a_new_incident() {
        let pod = labels(&[("pod", "p")]);
        let mut live = tracker();
        assert_eq!(live.open("an-1", &pod, 10_000.0), "an-1");
        // An hour back: "an-1" would stay joinable for an hour and five minutes.
        assert_eq!(live.open("an-2", &pod, 6_400.0), "an-2");
        assert_eq!(live.open("an-3", &pod, 6_500.0), "an-2");
        // Back within the window is only disorder: still the same incident.
        assert_eq!(live.open("an-4", &pod, 6_300.0), "an-2");

        // An alert's id is the same at every firing; its old incident still has an open
        // member, so a firing that joins nothing is a new incident, not the old one.
        let node = labels(&[("node", "n1")]);
        let mut live = tracker();
        assert_eq!(live.open("am-f1", &node, 0.0), "am-f1");
        live.close("am-f1");
        assert_eq!(live.open("an-9", &node, 100.0), "am-f1");
        live.note_handled("am-f1", "cordon", 100.0);
        assert_eq!(live.open("am-f1", &node, 7_200.0), "am-f1-2");
        assert_eq!(live.handled("am-f1-2", "cordon"), None);
        assert_eq!(live.incident_of("an-9"), Some("am-f1"));
    }

    #[test]
    fn a_resumed_member_keeps_its_recorded_incident_and_playbooks() {
        let mut live = tracker();
        live.resume("an-2", "an-1", ["drain".to_string()], 10.0);
        live.resume("an-9", "", [], 20.0);
        assert_eq!(live.incident_of("an-2"), Some("an-1"));
        assert_eq!(live.incident_of("an-9"), Some("an-9"));
        assert_eq!(live.handled("an-1", "drain"), Some(10.0));
        // Not joinable: a new opening on any series starts its own.
        let node = labels(&[("node", "n1")]);
        assert_eq!(live.open("an-10", &node, 50.0), "an-10");
        // No identifying labels configured: every anomaly is its own incident.
        let mut off = Incidents::new(300.0, Vec::new());
        assert_eq!(off.open("an-1", &node, 0.0), "an-1");
        assert_eq!(off.open("an-2", &node, 1.0), "an-2");
    }

    proptest::proptest! {
        #[test]
        fn any_times_and_labels_group_without_panic(
            times in proptest::collection::vec(proptest::prelude::any::<f64>(), 0..60),
            hosts in proptest::collection::vec(0u8..4, 60),
            within in proptest::prelude::any::<f64>(),
        ) {
            let labels: Vec<Labels> = hosts
                .iter()
                .map(|h| Labels::from_pairs([("instance", h.to_string())]))
                .collect();
            let openings: Vec<Opening> = times
                .iter()
                .zip(&labels)
                .map(|(&t, labels)| Opening { t, labels })
                .collect();
            let got = incidents(&openings, within, &IDENTIFYING);
            proptest::prop_assert_eq!(got.len(), openings.len());
            // Incidents are numbered 0, 1, ... with none skipped.
            let n = got.iter().max().map_or(0, |m| m + 1);
            for i in 0..n {
                proptest::prop_assert!(got.contains(&i));
            }
        }
    }
}
