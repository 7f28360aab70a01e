//! Incidents: anomalies that open within a short time of each other on series that share
//! an identifying label (the same instance, node, pod, deployment or server) are one
//! incident. A machine that goes wrong moves several of its metrics at once; an operator
//! wants one page for it, not one per metric. Pure: no I/O, no clock.

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

/// Whether two series share the value of an identifying label.
pub fn related(a: &Labels, b: &Labels, identifying: &[&str]) -> bool {
    identifying
        .iter()
        .any(|name| matches!((a.get(name), b.get(name)), (Some(x), Some(y)) if x == y))
}

/// The incident of each opening, numbered from 0 in order of the incidents' first
/// openings: an opening joins every earlier one it is [`related`] to that opened at most
/// `within` seconds before it (and so, transitively, their incidents). An opening whose
/// time is not a number is an incident of its own.
pub fn incidents(openings: &[Opening<'_>], within: f64, identifying: &[&str]) -> Vec<usize> {
    let n = openings.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| openings[a].t.total_cmp(&openings[b].t));
    // Where each opening stands in time order.
    let mut rank = vec![0; n];
    for (k, &i) in order.iter().enumerate() {
        rank[i] = k;
    }
    // Union-find over the openings, the root of a set being its earliest member.
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let within = if within.is_nan() {
        0.0
    } else {
        within.max(0.0)
    };
    let mut start = 0;
    for k in 0..n {
        let i = order[k];
        let t = openings[i].t;
        if !t.is_finite() {
            continue;
        }
        while start < k && openings[order[start]].t.total_cmp(&(t - within)).is_lt() {
            start += 1;
        }
        for &j in &order[start..k] {
            if openings[j].t.is_finite()
                && related(openings[i].labels, openings[j].labels, identifying)
            {
                let (ri, rj) = (root(&mut parent, i), root(&mut parent, j));
                if ri != rj {
                    // Keep the earlier opening as the root: incidents number by their start.
                    let (keep, join) = if rank[ri] < rank[rj] {
                        (ri, rj)
                    } else {
                        (rj, ri)
                    };
                    parent[join] = keep;
                }
            }
        }
    }
    let mut number = vec![usize::MAX; n];
    let mut next = 0;
    let mut out = vec![0; n];
    for &i in &order {
        let r = root(&mut parent, i);
        if number[r] == usize::MAX {
            number[r] = next;
            next += 1;
        }
        out[i] = number[r];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
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
