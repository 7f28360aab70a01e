//! From events to plans: which playbooks match an anomaly or alert, one plan per
//! incident (grouping and cooldown), running `plan()` in the sandbox, handing plans to
//! the executor, and hot-reloading playbook files.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::act::Executor;
use crate::anomaly::Anomaly;
use crate::audit::{
    AuditError, Event, PlanChosen, PlaybookFailed, PlaybookMatched, PlaybookRejected,
    PlaybookReloaded, PlaybookSuppressed,
};
use crate::detect::group::Incidents;
use crate::metrics::{Metrics, PlaybookResult};
use crate::playbook::{Limits, Playbook};
use crate::source::unix_now;

/// The active playbooks and the incidents they are working on.
pub struct Dispatcher {
    paths: Vec<PathBuf>,
    signals: Vec<String>,
    active: Vec<Arc<Playbook>>,
    /// Content hash last looked at per file, so a rejected edit is reported once.
    seen: HashMap<PathBuf, String>,
    /// Last plan per (playbook, incident group).
    groups: HashMap<(String, String), Instant>,
    limits: Limits,
    executor: Executor,
    metrics: Arc<Metrics>,
    /// Plans being made and run: off the detection tick, which never waits on a script.
    incidents: JoinSet<()>,
    /// Which anomalies are one incident, and the playbooks run for each.
    grouping: Incidents,
}

/// Runs a matched playbook's `plan()` in the sandbox, audits the plan (or the failure),
/// and hands it to the executor.
async fn plan_and_run(
    executor: Executor,
    metrics: Arc<Metrics>,
    limits: Limits,
    pb: Arc<Playbook>,
    anomaly: Anomaly,
) -> Result<(), AuditError> {
    let audit = executor.audit.clone();
    let (p, a, l, world) = (
        pb.clone(),
        anomaly.clone(),
        limits.clone(),
        executor.world.clone(),
    );
    // Rhai is synchronous; the sandbox's own deadline bounds the run, this one backs it up.
    let run = tokio::task::spawn_blocking(move || p.plan(&a, &l, world, unix_now()));
    let result = match tokio::time::timeout(limits.timeout + Duration::from_secs(2), run).await {
        Ok(Ok(r)) => r.map_err(|e| e.to_string()),
        Ok(Err(join)) => Err(format!("playbook run panicked: {join}")),
        Err(_) => Err("playbook run exceeded its wall-clock limit".to_string()),
    };
    match result {
        Ok(plan) => {
            let plan_seq = audit
                .record(Event::Plan(PlanChosen {
                    anomaly_id: anomaly.id.clone(),
                    playbook: pb.name.clone(),
                    mode: pb.mode.as_str().into(),
                    round: 0,
                    after: None,
                    actions: plan.actions.clone(),
                }))
                .await?;
            warn!(playbook = %pb.name, anomaly = %anomaly.id, mode = pb.mode.as_str(), "{}", plan.render());
            metrics.playbook_run(&pb.name, PlaybookResult::Planned);
            executor.run_incident(pb, anomaly, plan, plan_seq).await
        }
        Err(e) => {
            error!(playbook = %pb.name, anomaly = %anomaly.id, error = %e, "playbook failed");
            audit
                .record(Event::PlaybookFailed(PlaybookFailed {
                    anomaly_id: anomaly.id.clone(),
                    playbook: pb.name.clone(),
                    stage: "plan".into(),
                    error: e,
                }))
                .await?;
            metrics.playbook_run(&pb.name, PlaybookResult::Failed);
            Ok(())
        }
    }
}

/// The age of the latest plan per (playbook, group), folded from the audit log's
/// `playbook_matched` events (other events are ignored): what a restart restores
/// cooldowns from. One entry per group, however long the log. A record whose time cannot
/// be read counts as made now: when in doubt, remediate less.
#[derive(Debug, Default)]
pub struct PlanAges(HashMap<(String, String), Duration>);

impl PlanAges {
    /// Notes one event, written at `written` (`None`: unreadable), as of `now`.
    pub fn note(&mut self, event: &Event, written: Option<SystemTime>, now: SystemTime) {
        // One written before grouping existed has no group to restore.
        let Event::PlaybookMatched(m) = event else {
            return;
        };
        if m.group.is_empty() {
            return;
        }
        let age = written.map_or(Duration::ZERO, |t| {
            now.duration_since(t).unwrap_or(Duration::ZERO)
        });
        let slot = self
            .0
            .entry((m.playbook.clone(), m.group.clone()))
            .or_insert(age);
        *slot = (*slot).min(age);
    }

    /// The groups whose latest plan is younger than its playbook's cooldown
    /// (`cooldown_of`: `None` for a playbook no longer active), with that plan's age.
    fn within(
        self,
        cooldown_of: impl Fn(&str) -> Option<Duration>,
    ) -> HashMap<(String, String), Duration> {
        self.0
            .into_iter()
            .filter(|((playbook, _), age)| cooldown_of(playbook).is_some_and(|c| *age < c))
            .collect()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

impl Dispatcher {
    /// Starts with the playbooks loaded at start; `paths` are the configured files;
    /// anomalies are grouped into incidents by `grouping`.
    pub fn new(
        paths: Vec<PathBuf>,
        signals: Vec<String>,
        playbooks: Vec<Playbook>,
        limits: Limits,
        executor: Executor,
        metrics: Arc<Metrics>,
        grouping: Incidents,
    ) -> Self {
        let seen = paths
            .iter()
            .filter_map(|p| std::fs::read(p).ok().map(|b| (p.clone(), sha256_hex(&b))))
            .collect();
        let d = Dispatcher {
            paths,
            signals,
            active: playbooks.into_iter().map(Arc::new).collect(),
            seen,
            groups: HashMap::new(),
            limits,
            executor,
            metrics,
            incidents: JoinSet::new(),
            grouping,
        };
        d.publish();
        d
    }

    /// Restores the cooldowns of plans made before a restart, from the audit log's
    /// `playbook_matched` records, so a restarted (or crash-looping) agent does not run a
    /// playbook again for an incident it has just handled. Returns how many were restored.
    pub fn restore_cooldowns(&mut self, plans: PlanAges) -> usize {
        let cooldowns: HashMap<&str, Duration> = self
            .active
            .iter()
            .map(|p| (p.name.as_str(), p.cooldown))
            .collect();
        let restored = plans.within(|name| cooldowns.get(name).copied());
        let n = restored.len();
        for (key, age) in restored {
            // An age beyond this host's uptime cannot be an `Instant`: count it from now,
            // which only lengthens the cooldown.
            let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
            let slot = self.groups.entry(key).or_insert(at);
            *slot = (*slot).max(at);
        }
        n
    }

    /// Shows the active playbooks (and their versions) in the metrics.
    fn publish(&self) {
        self.metrics.playbooks_active(
            self.active
                .iter()
                .map(|p| (p.name.as_str(), p.sha256.as_str())),
        );
    }

    /// The active playbooks.
    pub fn playbooks(&self) -> &[Arc<Playbook>] {
        &self.active
    }

    /// Anomaly `anomaly` opened: it joins (or starts) its incident, which it now names.
    pub fn opened(&mut self, anomaly: &mut Anomaly) {
        anomaly.incident = self
            .grouping
            .open(&anomaly.id, &anomaly.labels, anomaly.started_unix);
    }

    /// Anomaly `id` closed: its incident is forgotten once no member is open and no new
    /// one can join.
    pub fn closed(&mut self, id: &str) {
        self.grouping.close(id);
    }

    /// Anomaly `id`, open before a restart since `started_unix`, goes on in `incident`
    /// with the playbooks already run for it.
    pub fn resumed(
        &mut self,
        id: &str,
        incident: &str,
        handled: &BTreeSet<String>,
        started_unix: f64,
    ) {
        self.grouping
            .resume(id, incident, handled.iter().cloned(), started_unix);
    }

    /// Runs every matching playbook not yet in `handled` for this event, once per
    /// incident: the match (or the incident or cooldown that suppresses it) is audited
    /// here; making the plan and running it go on in a task of their own, so the caller
    /// never waits on a script.
    pub async fn respond(
        &mut self,
        anomaly: &Anomaly,
        handled: &mut BTreeSet<String>,
    ) -> Result<(), AuditError> {
        let audit = self.executor.audit.clone();
        let mut anomaly = anomaly.clone();
        anomaly.incident = match self.grouping.incident_of(&anomaly.id) {
            Some(incident) => incident.to_string(),
            // A firing alert joins (or starts) an incident as it arrives, like an anomaly
            // as it opens; it has no close here, so it is joinable for the window only.
            None if anomaly.source == "alertmanager" => {
                let incident = self.grouping.open(&anomaly.id, &anomaly.labels, unix_now());
                self.grouping.close(&anomaly.id);
                incident
            }
            None => anomaly.id.clone(),
        };
        let anomaly = &anomaly;
        for pb in self.active.clone() {
            if handled.contains(&pb.name) || !pb.matches(anomaly) {
                continue;
            }
            handled.insert(pb.name.clone());
            let group = pb.group_key(anomaly);
            // Once per incident, or once per target of the incident for a playbook that
            // names its targets (`group_by`): the labels an incident is grouped by may name
            // a scraper or a node, and the pods behind it are each one's own remediation.
            let what = if pb.group_by.is_empty() {
                pb.name.clone()
            } else {
                format!("{} {group}", pb.name)
            };
            let now = unix_now();
            if let Some(at) = self
                .grouping
                .handled(&anomaly.incident, &what)
                .filter(|at| now - at < pb.cooldown.as_secs_f64())
            {
                let ago = (now - at).max(0.0);
                info!(playbook = %pb.name, anomaly = %anomaly.id, incident = %anomaly.incident, "suppressed: the playbook already answered this incident");
                let incident = anomaly.incident.clone();
                self.suppressed(&pb, anomaly, incident, "incident", ago)
                    .await?;
                continue;
            }
            let key = (pb.name.clone(), group.clone());
            if let Some(last) = self.groups.get(&key).filter(|t| t.elapsed() < pb.cooldown) {
                let ago = last.elapsed().as_secs_f64();
                info!(playbook = %pb.name, anomaly = %anomaly.id, %group, "suppressed: a plan for this incident ran {ago:.0}s ago");
                self.suppressed(&pb, anomaly, group, "cooldown", ago)
                    .await?;
                continue;
            }
            self.grouping.note_handled(&anomaly.incident, &what, now);
            self.groups.insert(key, Instant::now());
            audit
                .record(Event::PlaybookMatched(PlaybookMatched {
                    anomaly_id: anomaly.id.clone(),
                    playbook: pb.name.clone(),
                    sha256: pb.sha256.clone(),
                    group,
                    anomaly: anomaly.clone(),
                }))
                .await?;
            let (executor, metrics, limits) = (
                self.executor.clone(),
                self.metrics.clone(),
                self.limits.clone(),
            );
            let anomaly = anomaly.clone();
            self.incidents.spawn(async move {
                if let Err(e) = plan_and_run(executor, metrics, limits, pb, anomaly).await {
                    error!(error = %e, "incident stopped: the audit log cannot be written");
                }
            });
        }
        Ok(())
    }

    /// Audits and counts a match that does not run: `reason` names what held it, the
    /// plan that did run for `group` was made `ago` seconds before.
    async fn suppressed(
        &self,
        pb: &Playbook,
        anomaly: &Anomaly,
        group: String,
        reason: &str,
        ago: f64,
    ) -> Result<(), AuditError> {
        self.executor
            .audit
            .record(Event::PlaybookSuppressed(PlaybookSuppressed {
                anomaly_id: anomaly.id.clone(),
                playbook: pb.name.clone(),
                group,
                reason: reason.into(),
                last_plan_secs_ago: ago,
                cooldown_secs: pb.cooldown.as_secs_f64(),
            }))
            .await?;
        self.metrics
            .playbook_run(&pb.name, PlaybookResult::Suppressed);
        Ok(())
    }

    /// Runs a plan an SRE approved, under the playbook loaded now; `false` (and
    /// nothing runs) if no playbook of that name is loaded any more.
    pub fn run_approved(&mut self, approved: crate::act::control::Approved) -> bool {
        let Some(pb) = self
            .active
            .iter()
            .find(|p| p.name == approved.pending.playbook)
            .cloned()
        else {
            return false;
        };
        let executor = self.executor.clone();
        self.incidents.spawn(async move {
            let p = approved.pending;
            let round = approved.round;
            if let Err(e) = executor
                .run_approved(pb, p.anomaly, p.plan, round, approved.grant_seq)
                .await
            {
                error!(error = %e, "incident stopped: the audit log cannot be written");
            }
        });
        true
    }

    /// Collects incidents that finished (their own records say how).
    pub fn reap(&mut self) {
        while let Some(r) = self.incidents.try_join_next() {
            if let Err(e) = r {
                if e.is_panic() {
                    error!(error = %e, "an incident task panicked");
                }
            }
        }
    }

    /// Incidents still running (verifications, follow-ups).
    pub fn running(&self) -> usize {
        self.incidents.len()
    }

    /// Stops running incidents (at shutdown); returns how many were stopped.
    pub async fn stop(&mut self) -> usize {
        let n = self.incidents.len();
        self.incidents.abort_all();
        while self.incidents.join_next().await.is_some() {}
        n
    }

    /// Reloads changed playbook files: a valid one replaces its previous version, a
    /// broken one is rejected and the previous version stays active. Every change is audited.
    pub async fn reload(&mut self) -> Result<(), AuditError> {
        let audit = self.executor.audit.clone();
        for path in self.paths.clone() {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    if self.seen.remove(&path).is_some() {
                        warn!(path = %path.display(), error = %e, "playbook file unreadable; its loaded version stays active");
                        audit
                            .record(Event::PlaybookRejected(PlaybookRejected::Unreadable {
                                path: path.clone(),
                                error: format!("cannot read: {e}"),
                                kept_sha256: self.active_sha(&path),
                            }))
                            .await?;
                    }
                    continue;
                }
            };
            let sha = sha256_hex(&bytes);
            if self.seen.get(&path) == Some(&sha) {
                continue;
            }
            self.seen.insert(path.clone(), sha.clone());
            let old = self.active_sha(&path);
            if old.as_deref() == Some(sha.as_str()) {
                continue;
            }
            match self.load_checked(&path) {
                Ok(pb) => {
                    info!(path = %path.display(), playbook = %pb.name, "playbook reloaded");
                    audit
                        .record(Event::PlaybookReloaded(PlaybookReloaded {
                            path: path.clone(),
                            playbook: pb.name.clone(),
                            old_sha256: old,
                            new_sha256: sha,
                        }))
                        .await?;
                    self.active.retain(|p| p.path != path);
                    self.active.push(Arc::new(pb));
                    self.publish();
                }
                Err(e) => {
                    error!(path = %path.display(), "playbook change rejected; the previous version stays active: {e}");
                    audit
                        .record(Event::PlaybookRejected(PlaybookRejected::Changed {
                            path: path.clone(),
                            error: e,
                            old_sha256: old,
                            new_sha256: sha,
                        }))
                        .await?;
                }
            }
        }
        Ok(())
    }

    fn active_sha(&self, path: &PathBuf) -> Option<String> {
        self.active
            .iter()
            .find(|p| p.path == *path)
            .map(|p| p.sha256.clone())
    }

    fn load_checked(&self, path: &PathBuf) -> Result<Playbook, String> {
        let pb = Playbook::load(path, &self.limits).map_err(|e| e.to_string())?;
        if let Some(s) = pb
            .triggers
            .iter()
            .filter_map(|t| t.signal())
            .find(|s| !self.signals.iter().any(|n| n == s))
        {
            return Err(format!("trigger signal {s:?} is not a configured signal"));
        }
        if self
            .active
            .iter()
            .any(|p| p.name == pb.name && p.path != *path)
        {
            return Err(format!("name {:?} is used by another playbook", pb.name));
        }
        Ok(pb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(playbook: &str, group: &str) -> Event {
        Event::PlaybookMatched(PlaybookMatched {
            playbook: playbook.into(),
            group: group.into(),
            ..PlaybookMatched::default()
        })
    }

    #[test]
    fn plans_within_their_cooldown_survive_a_restart() {
        let now = SystemTime::now();
        let ago = |secs: u64| Some(now - Duration::from_secs(secs));
        let other = Event::Plan(PlanChosen {
            playbook: "restart".into(),
            ..PlanChosen::default()
        });
        let events = [
            (matched("restart", "app=cart"), ago(300)),
            (matched("restart", "app=cart"), ago(120)),
            (matched("restart", "app=shop"), ago(900)),
            (matched("retired", "app=cart"), ago(60)),
            (matched("restart", "app=web"), None),
            // Written before grouping: nothing to restore.
            (matched("restart", ""), ago(1)),
            (other, ago(1)),
        ];
        let cooldown = |name: &str| (name == "restart").then_some(Duration::from_secs(600));
        let mut ages = PlanAges::default();
        for (event, written) in &events {
            ages.note(event, *written, now);
        }
        let got = ages.within(cooldown);
        let key = |g: &str| ("restart".to_string(), g.to_string());
        // The latest plan of a group counts; one older than the cooldown does not; a
        // retired playbook's do not; an unreadable time counts as now.
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[&key("app=cart")], Duration::from_secs(120));
        assert_eq!(got[&key("app=web")], Duration::ZERO);
    }
}
