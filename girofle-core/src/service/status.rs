//! The fleet at a glance (issue 5, R-STAND-2): each instance's state and the age of its
//! newest valid backup in every store, with what is overdue.
//!
//! Responsible for gathering that picture ([`Girofle::status`]) and the raw facts the
//! metrics are rendered from: one engine listing, one listing per store, the schedules.
//! A store or an engine that cannot be reached is reported as such; it does not fail the
//! whole picture. It does not print or colour anything: the CLI decides that.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::adapters::store::LOCAL_STORE_NAME;
use crate::error::Result;
use crate::model::context::Context;
use crate::ops::backup::BackupEntry;
use crate::ops::fleet::InstanceState;
use crate::service::schedule::{next_slot, RunKind, Schedule};
pub use crate::text::human_age;

/// How old a newest backup may be when no schedule says otherwise.
pub const DEFAULT_OVERDUE_AFTER: Duration = Duration::from_secs(8 * 3600);

/// The newest backup of an instance in one store.
#[derive(Clone, Debug, Serialize)]
pub struct StoreFreshness {
    pub store: String,
    /// `None` when the store holds no valid backup of the instance (or was unreachable).
    pub newest_id: Option<String>,
    pub newest_at: Option<DateTime<Utc>>,
    pub age_secs: Option<i64>,
    /// How old the newest backup may be: the schedule's interval (plus a grace of a
    /// quarter of it, 30 minutes at most) or 8 hours without a schedule.
    pub overdue_after_secs: u64,
    pub overdue: bool,
    /// Whether the store could be listed.
    pub reachable: bool,
}

/// One instance of the picture.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceSummary {
    pub name: String,
    /// `None` when the engine could not be asked.
    pub state: Option<InstanceState>,
    pub url: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    /// `local` first, then each configured store.
    pub backups: Vec<StoreFreshness>,
    /// Whether any store's newest backup is overdue.
    pub overdue: bool,
}

/// One store of the picture.
#[derive(Clone, Debug, Serialize)]
pub struct StoreSummary {
    pub name: String,
    pub reachable: bool,
    /// Valid backups listed there.
    pub backups: usize,
    /// Bytes of every object under the store's prefix.
    pub used_bytes: Option<u64>,
    /// Why it could not be listed (secrets scrubbed).
    pub error: Option<String>,
}

/// The whole picture.
#[derive(Clone, Debug, Serialize)]
pub struct FleetStatus {
    pub generated_at: DateTime<Utc>,
    pub engine_reachable: bool,
    pub instances: Vec<InstanceSummary>,
    pub stores: Vec<StoreSummary>,
}

/// What one store holds, as read once.
#[derive(Clone, Debug)]
pub(crate) struct StoreFacts {
    pub name: String,
    pub backups: Option<Vec<BackupEntry>>,
    pub used_bytes: Option<u64>,
    pub error: Option<String>,
}

impl StoreFacts {
    /// The newest backup of an instance there.
    pub fn newest(&self, instance: &str) -> Option<&BackupEntry> {
        self.backups
            .as_ref()?
            .iter()
            .filter(|b| b.instance == instance)
            .max_by_key(|b| b.created_at)
    }
}

/// One instance as read once.
#[derive(Clone, Debug)]
pub(crate) struct InstanceFacts {
    pub name: String,
    pub state: Option<InstanceState>,
    pub url: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub schedule: Option<Schedule>,
}

/// Everything the status and the metrics are made of.
#[derive(Clone, Debug)]
pub(crate) struct Facts {
    pub now: DateTime<Utc>,
    pub engine_reachable: bool,
    pub instances: Vec<InstanceFacts>,
    /// `local` first.
    pub stores: Vec<StoreFacts>,
}

/// The time between two runs of a schedule's cron, from now on.
fn interval(schedule: &Schedule, kind: RunKind, now: DateTime<Utc>) -> Option<Duration> {
    if !schedule.enabled {
        return None;
    }
    let cron = schedule.cron(kind).ok()??;
    let tz = schedule.tz().ok()?;
    let first = next_slot(&cron, tz, now)?;
    let second = next_slot(&cron, tz, first)?;
    (second - first).to_std().ok()
}

/// How old the newest backup of `store` may be for an instance following `schedule`.
pub(crate) fn overdue_after(
    schedule: Option<&Schedule>,
    store: &str,
    now: DateTime<Utc>,
) -> Duration {
    let every = schedule.and_then(|s| {
        if store == LOCAL_STORE_NAME {
            interval(s, RunKind::Backup, now)
        } else if s.store.as_deref() == Some(store) {
            interval(s, RunKind::Copy, now)
        } else {
            None
        }
    });
    match every {
        // A run takes a while after its slot: a grace of a quarter of the interval.
        Some(d) => d + (d / 4).min(Duration::from_secs(1800)),
        None => DEFAULT_OVERDUE_AFTER,
    }
}

impl Context {
    /// Reads the engine, every store and the schedules once.
    pub(crate) async fn facts(&self) -> Result<Facts> {
        let now = Utc::now();
        let mut instances = Vec::new();
        let engine_reachable = match self.list().await {
            Ok(list) => {
                for s in list {
                    instances.push(InstanceFacts {
                        created_at: s.record.as_ref().map(|r| r.created_at),
                        name: s.name,
                        state: Some(s.state),
                        url: s.url,
                        schedule: None,
                    });
                }
                true
            }
            Err(_) => {
                let fleet = self.inventory.load().await?;
                for r in fleet.instances.values() {
                    instances.push(InstanceFacts {
                        name: r.name.clone(),
                        state: None,
                        url: Some(r.external_url.clone()),
                        created_at: Some(r.created_at),
                        schedule: None,
                    });
                }
                false
            }
        };
        for i in &mut instances {
            if i.created_at.is_some() {
                i.schedule = self.schedule_of(&i.name).await.ok();
            }
        }
        let mut names = vec![LOCAL_STORE_NAME.to_string()];
        names.extend(self.config.stores.keys().cloned());
        let mut stores = Vec::new();
        for name in names {
            stores.push(self.store_facts(&name).await);
        }
        Ok(Facts {
            now,
            engine_reachable,
            instances,
            stores,
        })
    }

    async fn store_facts(&self, name: &str) -> StoreFacts {
        let scrub = |e: crate::Error| {
            crate::model::journal::scrub_known(&e.to_string(), &self.known_secrets())
        };
        let mut facts = StoreFacts {
            name: name.to_string(),
            backups: None,
            used_bytes: None,
            error: None,
        };
        let store = match self.store(Some(name)) {
            Ok(s) => s,
            Err(e) => {
                facts.error = Some(scrub(e));
                return facts;
            }
        };
        match store.list("").await {
            Ok(objects) => facts.used_bytes = Some(objects.iter().map(|o| o.size).sum()),
            Err(e) => {
                facts.error = Some(scrub(e));
                return facts;
            }
        }
        match self.list_backups(None, Some(name)).await {
            Ok(b) => facts.backups = Some(b),
            Err(e) => facts.error = Some(scrub(e)),
        }
        facts
    }

    /// The fleet at a glance: every instance's state and the age of its newest valid
    /// backup in each store (`local` and every configured one), overdue when older than
    /// its schedule's interval (8 hours without one).
    pub(crate) async fn status(&self) -> Result<FleetStatus> {
        let facts = self.facts().await?;
        Ok(summarise(&facts))
    }
}

pub(crate) fn summarise(facts: &Facts) -> FleetStatus {
    let now = facts.now;
    let instances = facts
        .instances
        .iter()
        .map(|i| {
            let backups: Vec<StoreFreshness> = facts
                .stores
                .iter()
                .map(|s| {
                    let newest = s.newest(&i.name);
                    let limit = overdue_after(i.schedule.as_ref(), &s.name, now);
                    let age = newest.map(|b| (now - b.created_at).num_seconds().max(0));
                    // With no backup yet, an instance younger than the limit is not late.
                    let since = newest.map(|b| b.created_at).or(i.created_at).unwrap_or(now);
                    let overdue = s.backups.is_some()
                        && i.created_at.is_some()
                        && (now - since).to_std().map(|d| d > limit).unwrap_or(false);
                    StoreFreshness {
                        store: s.name.clone(),
                        newest_id: newest.map(|b| b.id.clone()),
                        newest_at: newest.map(|b| b.created_at),
                        age_secs: age,
                        overdue_after_secs: limit.as_secs(),
                        overdue,
                        reachable: s.backups.is_some(),
                    }
                })
                .collect();
            InstanceSummary {
                name: i.name.clone(),
                state: i.state,
                url: i.url.clone(),
                created_at: i.created_at,
                overdue: backups.iter().any(|b| b.overdue),
                backups,
            }
        })
        .collect();
    let stores = facts
        .stores
        .iter()
        .map(|s| StoreSummary {
            name: s.name.clone(),
            reachable: s.backups.is_some(),
            backups: s.backups.as_ref().map(Vec::len).unwrap_or(0),
            used_bytes: s.used_bytes,
            error: s.error.clone(),
        })
        .collect();
    FleetStatus {
        generated_at: now,
        engine_reachable: facts.engine_reachable,
        instances,
        stores,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn ages_read_well() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(125), "2m");
        assert_eq!(human_age(3 * 3600 + 7 * 60), "3h07m");
        assert_eq!(human_age(2 * 86_400 + 3600), "2d1h");
    }

    #[test]
    fn overdue_follows_the_schedule() {
        let now = Utc::now();
        let s =
            crate::service::schedule::ScheduleConfig::default().default_schedule(&BTreeMap::new());
        // Every 4 hours, plus 30 minutes of grace.
        assert_eq!(
            overdue_after(Some(&s), "local", now),
            Duration::from_secs(4 * 3600 + 1800)
        );
        // No copies to that store: the default.
        assert_eq!(
            overdue_after(Some(&s), "offsite", now),
            DEFAULT_OVERDUE_AFTER
        );
        assert_eq!(overdue_after(None, "local", now), DEFAULT_OVERDUE_AFTER);
    }
}
