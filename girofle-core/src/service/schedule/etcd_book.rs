//! The book of scheduled runs on etcd, beside the fleet it belongs to, for a fleet on etcd:
//! every machine of the fleet sees the same schedules and run history, and a slot one
//! machine claims is not claimed again by another.
//!
//! Keys, under the fleet's `/girofle/<namespace>/`:
//! - `schedules/<instance>`: the instance's own schedule (`{"schedule": …, "updated_at": …}`).
//! - `runs/<instance>/<id, 20 digits>`: one run record (JSON), so an instance's runs read
//!   newest first by key, and a record stays small whatever the history's length.
//! - `run-seq`: the newest run id given; a claim moves it on, so run ids stay unique and
//!   ordered across machines.
//! - `claims/<instance>`: there while a run of the instance runs: its id and who runs it
//!   (process, machine, and a lease that process keeps alive). A claimant on another
//!   machine lives while its lease does; one of this machine is dead as soon as its
//!   process is, as with the instance locks. The key is not attached to the lease, so a
//!   claimant that died leaves it for `recover` to find and mark its run `interrupted`.
//!
//! A claim is one transaction: it succeeds only when the instance has no claim and
//! `run-seq` is what was read, so two machines that find the same slot due claim it once.
//! Times are kept to the millisecond, as the SQLite book keeps them, so the book moves
//! between the two backends unchanged. Not responsible for what a run does (`schedule`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use serde::{Deserialize, Serialize};

use super::book::{BookDump, Claim, RunOutcome, RunRecord};
use crate::adapters::inventory::{gone_here, process_owner, EtcdInventory};
use crate::error::{Error, Result};
use crate::model::policy::{RunKind, ScheduleOverrides};

const BOOK: &str = "schedule book on etcd";
/// How many puts go in one transaction when the whole book is written (etcd refuses more
/// than 128 operations in one).
const BATCH: usize = 100;
/// How many of an instance's newest runs are read to find its last one of a kind.
const PAGE: i64 = 64;

/// An instance's own schedule, as its key holds it.
#[derive(Serialize, Deserialize)]
struct StoredSchedule {
    schedule: ScheduleOverrides,
    updated_at: DateTime<Utc>,
}

/// A running run's claim, as its key holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredClaim {
    id: i64,
    /// The claimant's lease: it lives while the claimant renews it.
    lease: i64,
    /// Where `pid` means something (boot, pid namespace).
    owner: String,
    pid: u32,
    host: String,
}

/// The leases this process keeps alive for its claims, by run id. Dropping the last book
/// that shares them stops the renewals: the claims then run out with their leases.
#[derive(Debug, Default)]
struct Keepers(Mutex<HashMap<i64, (i64, tokio::task::JoinHandle<()>)>>);

impl Drop for Keepers {
    fn drop(&mut self) {
        if let Ok(map) = self.0.get_mut() {
            for (_, (_, keeper)) in map.drain() {
                keeper.abort();
            }
        }
    }
}

/// The schedules and runs of a fleet on etcd. Cloning shares the connection and the
/// leases of this process's claims.
#[derive(Clone, Debug)]
pub struct EtcdBook {
    inventory: EtcdInventory,
    keepers: Arc<Keepers>,
}

fn millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// The run as the book keeps it: times to the millisecond.
fn kept(mut run: RunRecord) -> RunRecord {
    run.slot = millis(run.slot);
    run.started_at = millis(run.started_at);
    run.ended_at = run.ended_at.map(millis);
    run
}

fn run_key(instance: &str, id: i64) -> String {
    format!("runs/{instance}/{id:020}")
}

fn claim_key(instance: &str) -> String {
    format!("claims/{instance}")
}

fn schedule_key(instance: &str) -> String {
    format!("schedules/{instance}")
}

const SEQ: &str = "run-seq";

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::backend(BOOK, e.to_string()))
}

fn why_dead(claim: &StoredClaim) -> String {
    format!(
        "the process that ran it (pid {} on {}) stopped before it finished",
        claim.pid, claim.host
    )
}

impl EtcdBook {
    /// The book of the fleet `inventory` holds.
    pub fn new(inventory: EtcdInventory) -> Self {
        EtcdBook {
            inventory,
            keepers: Arc::new(Keepers::default()),
        }
    }

    fn key(&self, rest: &str) -> String {
        self.inventory.key(rest)
    }

    fn corrupt(&self, rest: &str, e: impl std::fmt::Display) -> Error {
        Error::corrupt(
            format!("`{}` in etcd", self.key(rest)),
            format!("{e}; set the schedule again with `girofle schedule set`, or bring the book back with `girofle state import FILE`"),
        )
    }

    /// The value and modification revision of one key (revision 0: there is none).
    async fn get(&self, rest: &str) -> Result<Option<(Vec<u8>, i64)>> {
        let resp = self
            .inventory
            .kv_get("read the schedule book", rest, None)
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }

    /// The keys (relative to `prefix`) and values under `prefix`.
    async fn range(
        &self,
        prefix: &str,
        options: GetOptions,
    ) -> Result<Vec<(String, Vec<u8>, i64)>> {
        let full = self.key(prefix);
        let resp = self
            .inventory
            .kv_get(
                "read the schedule book",
                prefix,
                Some(options.with_prefix()),
            )
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let rest = key.strip_prefix(&full).unwrap_or(&key).to_string();
                (rest, kv.value().to_vec(), kv.mod_revision())
            })
            .collect())
    }

    fn parse_run(&self, rest: &str, bytes: &[u8]) -> Result<RunRecord> {
        serde_json::from_slice(bytes).map_err(|e| self.corrupt(rest, e))
    }

    fn parse_schedule(&self, instance: &str, bytes: &[u8]) -> Result<ScheduleOverrides> {
        serde_json::from_slice::<StoredSchedule>(bytes)
            .map(|s| s.schedule)
            .map_err(|e| self.corrupt(&schedule_key(instance), e))
    }

    /// The instance's own schedule, if it has one.
    ///
    /// # Errors
    /// `Backend` when etcd does not answer, `Corrupt` when the key does not parse.
    pub async fn overrides(&self, instance: &str) -> Result<Option<ScheduleOverrides>> {
        self.get(&schedule_key(instance))
            .await?
            .map(|(v, _)| self.parse_schedule(instance, &v))
            .transpose()
    }

    /// Every instance's own schedule.
    ///
    /// # Errors
    /// `Backend` when etcd does not answer, `Corrupt` when a key does not parse.
    pub async fn all_overrides(&self) -> Result<BTreeMap<String, ScheduleOverrides>> {
        let mut out = BTreeMap::new();
        for (name, value, _) in self.range("schedules/", GetOptions::new()).await? {
            let o = self.parse_schedule(&name, &value)?;
            out.insert(name, o);
        }
        Ok(out)
    }

    /// Applies `change` to the instance's own schedule (read, merge, write only if nobody
    /// wrote it meanwhile, else again) and returns the result.
    ///
    /// # Errors
    /// Whatever `check` returns (nothing is written then), `Backend` when etcd fails.
    pub async fn update_overrides(
        &self,
        instance: &str,
        change: &ScheduleOverrides,
        check: impl Fn(&ScheduleOverrides) -> Result<()>,
    ) -> Result<ScheduleOverrides> {
        let rest = schedule_key(instance);
        for _ in 0..100 {
            let (old, revision) = match self.get(&rest).await? {
                Some((v, r)) => (self.parse_schedule(instance, &v)?, r),
                None => (ScheduleOverrides::default(), 0),
            };
            let new = old.merged(change);
            check(&new)?;
            let value = json(&StoredSchedule {
                schedule: new.clone(),
                updated_at: millis(Utc::now()),
            })?;
            let key = self.key(&rest);
            let txn = Txn::new()
                .when(vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then(vec![TxnOp::put(key, value, None)]);
            if self
                .inventory
                .kv_txn("write a schedule", txn)
                .await?
                .succeeded()
            {
                return Ok(new);
            }
        }
        Err(Error::backend(
            BOOK,
            format!("the schedule of `{instance}` changed under every one of 100 attempts to write it; try again"),
        ))
    }

    /// Runs, newest first (of one instance, or all), at most `limit`.
    ///
    /// # Errors
    /// `Backend` when etcd does not answer, `Corrupt` when a record does not parse.
    pub async fn runs(&self, instance: Option<&str>, limit: usize) -> Result<Vec<RunRecord>> {
        let mut out = Vec::new();
        match instance {
            Some(name) => {
                let options = GetOptions::new()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(i64::try_from(limit).unwrap_or(0));
                for (rest, value, _) in self.range(&format!("runs/{name}/"), options).await? {
                    out.push(self.parse_run(&rest, &value)?);
                }
            }
            None => {
                // Ids are ordered across instances, keys only within one.
                for (rest, value, _) in self.range("runs/", GetOptions::new()).await? {
                    out.push(self.parse_run(&rest, &value)?);
                }
                out.sort_by_key(|r: &RunRecord| std::cmp::Reverse(r.id));
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// The newest run of an instance and kind.
    ///
    /// # Errors
    /// `Backend` when etcd does not answer, `Corrupt` when a record does not parse.
    pub async fn last_run(&self, instance: &str, kind: RunKind) -> Result<Option<RunRecord>> {
        let prefix = format!("runs/{instance}/");
        let page = GetOptions::new()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(PAGE);
        let mut found = self.range(&prefix, page).await?;
        if found.len() == usize::try_from(PAGE).unwrap_or(usize::MAX) {
            // Not among the newest: the other kind ran many times since. Read them all.
            found = self.range(&prefix, GetOptions::new()).await?;
            found.reverse();
        }
        for (rest, value, _) in found {
            let run = self.parse_run(&rest, &value)?;
            if run.kind == kind {
                return Ok(Some(run));
            }
        }
        Ok(None)
    }

    /// The newest slot recorded for an instance and kind: that of its newest run, as each
    /// claim is for a slot after the ones before it.
    ///
    /// # Errors
    /// `Backend` when etcd does not answer.
    pub async fn last_slot(&self, instance: &str, kind: RunKind) -> Result<Option<DateTime<Utc>>> {
        Ok(self.last_run(instance, kind).await?.map(|r| r.slot))
    }

    /// The claim of an instance's run, with its key's modification revision.
    async fn claim_of(&self, instance: &str) -> Result<Option<(StoredClaim, i64)>> {
        let rest = claim_key(instance);
        match self.get(&rest).await? {
            None => Ok(None),
            Some((v, revision)) => {
                let claim = serde_json::from_slice(&v).map_err(|e| self.corrupt(&rest, e))?;
                Ok(Some((claim, revision)))
            }
        }
    }

    /// Whether the process that claimed a run still lives: a process of this machine
    /// that is gone is dead at once; otherwise its lease says (this process's own claims
    /// too: one whose book was dropped without finishing it is over).
    async fn claimant_alive(&self, claim: &StoredClaim) -> Result<bool> {
        if gone_here(&claim.owner, claim.pid) {
            return Ok(false);
        }
        self.inventory.lease_alive(claim.lease).await
    }

    /// Marks the run of a dead claimant `interrupted` and removes its claim, unless the
    /// claim changed meanwhile. Returns the run when this call interrupted it.
    async fn interrupt_claim(
        &self,
        instance: &str,
        claim: &StoredClaim,
        revision: i64,
        why: &str,
    ) -> Result<Option<RunRecord>> {
        let rest = run_key(instance, claim.id);
        let Some((value, _)) = self.get(&rest).await? else {
            // A claim without its record: only the claim is left to remove.
            self.drop_claim(instance, revision).await?;
            return Ok(None);
        };
        let mut run = self.parse_run(&rest, &value)?;
        if run.outcome != RunOutcome::Running {
            self.drop_claim(instance, revision).await?;
            return Ok(None);
        }
        run.outcome = RunOutcome::Interrupted;
        run.ended_at = Some(millis(Utc::now()));
        run.error = Some(why.to_string());
        let ckey = self.key(&claim_key(instance));
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                ckey.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then(vec![
                TxnOp::put(self.key(&rest), json(&run)?, None),
                TxnOp::delete(ckey, None),
            ]);
        let done = self
            .inventory
            .kv_txn("interrupt a run", txn)
            .await?
            .succeeded();
        self.stop_keeper(claim.id).await;
        Ok(done.then_some(run))
    }

    async fn drop_claim(&self, instance: &str, revision: i64) -> Result<()> {
        let ckey = self.key(&claim_key(instance));
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                ckey.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then(vec![TxnOp::delete(ckey, None)]);
        self.inventory.kv_txn("remove a claim", txn).await?;
        Ok(())
    }

    /// Stops renewing the lease of this process's claim of run `id` and gives it back.
    async fn stop_keeper(&self, id: i64) {
        let kept = self.keepers.0.lock().expect("keepers").remove(&id);
        if let Some((lease, keeper)) = kept {
            keeper.abort();
            self.inventory.revoke_lease(lease).await;
        }
    }

    /// Marks runs whose claimant is gone (dead, or its lease ran out) `interrupted`, and
    /// returns them.
    ///
    /// # Errors
    /// `Backend` when etcd does not answer.
    pub async fn recover(&self) -> Result<Vec<RunRecord>> {
        let mut out = Vec::new();
        for (instance, value, revision) in self.range("claims/", GetOptions::new()).await? {
            let claim: StoredClaim = serde_json::from_slice(&value)
                .map_err(|e| self.corrupt(&claim_key(&instance), e))?;
            if !self.claimant_alive(&claim).await? {
                let why = why_dead(&claim);
                if let Some(run) = self
                    .interrupt_claim(&instance, &claim, revision, &why)
                    .await?
                {
                    out.push(run);
                }
            }
        }
        Ok(out)
    }

    /// Claims the due slot of an instance and kind, in one transaction: when no live
    /// process runs anything for the instance and `due` (given the newest slot recorded,
    /// if any) names a slot, a `running` record for it and the instance's claim are
    /// written and the record returned. A dead claimant's run found on the way is marked
    /// `interrupted`.
    ///
    /// # Errors
    /// `Backend` when etcd fails.
    pub async fn claim(
        &self,
        instance: &str,
        kind: RunKind,
        store: &str,
        due: impl Fn(Option<DateTime<Utc>>) -> Option<DateTime<Utc>>,
    ) -> Result<Claim> {
        let mut lease: Option<(i64, tokio::task::JoinHandle<()>)> = None;
        let out = self
            .try_claim(instance, kind, store, &due, &mut lease)
            .await;
        match (&out, lease) {
            (Ok(Claim::Claimed(run)), Some(held)) => {
                self.keepers.0.lock().expect("keepers").insert(run.id, held);
            }
            (_, Some((id, keeper))) => {
                keeper.abort();
                self.inventory.revoke_lease(id).await;
            }
            (_, None) => {}
        }
        out
    }

    async fn try_claim(
        &self,
        instance: &str,
        kind: RunKind,
        store: &str,
        due: &impl Fn(Option<DateTime<Utc>>) -> Option<DateTime<Utc>>,
        lease: &mut Option<(i64, tokio::task::JoinHandle<()>)>,
    ) -> Result<Claim> {
        for _ in 0..100 {
            if let Some((claim, revision)) = self.claim_of(instance).await? {
                let rest = run_key(instance, claim.id);
                let run = match self.get(&rest).await? {
                    Some((v, _)) => Some(self.parse_run(&rest, &v)?),
                    None => None,
                };
                // Ours from an earlier attempt whose answer was lost: it landed.
                if let (Some(run), Some((mine, _))) = (&run, &*lease) {
                    if claim.lease == *mine {
                        return Ok(Claim::Claimed(run.clone()));
                    }
                }
                if self.claimant_alive(&claim).await? {
                    if let Some(run) = run {
                        return Ok(Claim::Busy(run));
                    }
                }
                self.interrupt_claim(instance, &claim, revision, &why_dead(&claim))
                    .await?;
                continue;
            }
            let last = self.last_slot(instance, kind).await?;
            let Some(slot) = due(last) else {
                return Ok(Claim::NotDue);
            };
            let (seq, seq_revision) = match self.get(SEQ).await? {
                Some((v, r)) => {
                    let text = String::from_utf8_lossy(&v).into_owned();
                    let n: i64 = text.trim().parse().map_err(|e| self.corrupt(SEQ, e))?;
                    (n, r)
                }
                None => (0, 0),
            };
            let lease_id = match lease {
                Some((id, _)) => *id,
                None => {
                    let held = self.inventory.kept_lease().await?;
                    let id = held.0;
                    *lease = Some(held);
                    id
                }
            };
            let host = crate::model::journal::host_name();
            let run = kept(RunRecord {
                id: seq + 1,
                instance: instance.to_string(),
                kind,
                slot,
                started_at: Utc::now(),
                ended_at: None,
                outcome: RunOutcome::Running,
                store: store.to_string(),
                backup_id: None,
                copied: Vec::new(),
                pruned: Vec::new(),
                error: None,
                pid: std::process::id(),
                host: host.clone(),
            });
            let claim = StoredClaim {
                id: run.id,
                lease: lease_id,
                owner: process_owner(),
                pid: run.pid,
                host,
            };
            let (ckey, skey) = (self.key(&claim_key(instance)), self.key(SEQ));
            let txn = Txn::new()
                .when(vec![
                    Compare::create_revision(ckey.clone(), CompareOp::Equal, 0),
                    Compare::mod_revision(skey.clone(), CompareOp::Equal, seq_revision),
                ])
                .and_then(vec![
                    TxnOp::put(skey, run.id.to_string(), None),
                    TxnOp::put(self.key(&run_key(instance, run.id)), json(&run)?, None),
                    // Not on the lease: a claimant gone elsewhere leaves its claim for
                    // `recover` to find, its lease gone.
                    TxnOp::put(ckey, json(&claim)?, None),
                ]);
            if self.inventory.kv_txn("claim a run", txn).await?.succeeded() {
                return Ok(Claim::Claimed(run));
            }
            // Another claim (of any instance) came first: read again.
            let jitter = u64::from(std::process::id() % 7);
            tokio::time::sleep(std::time::Duration::from_millis(2 + jitter * 3)).await;
        }
        Err(Error::backend(
            BOOK,
            format!("the runs of `{instance}` changed under every one of 100 attempts to claim one; try again"),
        ))
    }

    /// Records how a claimed run ended (`outcome`, `ended_at`, ids and error of `run`) and
    /// removes its claim.
    ///
    /// # Errors
    /// `Backend` when etcd fails.
    pub async fn finish(&self, run: &RunRecord) -> Result<()> {
        let mut ops = vec![TxnOp::put(
            self.key(&run_key(&run.instance, run.id)),
            json(&kept(run.clone()))?,
            None,
        )];
        let mut compares = Vec::new();
        if let Some((claim, revision)) = self.claim_of(&run.instance).await? {
            if claim.id == run.id {
                let ckey = self.key(&claim_key(&run.instance));
                compares.push(Compare::mod_revision(
                    ckey.clone(),
                    CompareOp::Equal,
                    revision,
                ));
                ops.push(TxnOp::delete(ckey, None));
            }
        }
        // A claim changed meanwhile (interrupted by another machine): the record still
        // takes the outcome.
        let resp = self
            .inventory
            .kv_txn("record a run", Txn::new().when(compares).and_then(ops))
            .await?;
        if !resp.succeeded() {
            let txn = Txn::new().and_then(vec![TxnOp::put(
                self.key(&run_key(&run.instance, run.id)),
                json(&kept(run.clone()))?,
                None,
            )]);
            self.inventory.kv_txn("record a run", txn).await?;
        }
        self.stop_keeper(run.id).await;
        Ok(())
    }

    /// Forgets a claim that was not run (the instance was busy): its slot is due again.
    ///
    /// # Errors
    /// `Backend` when etcd fails.
    pub async fn release(&self, run: &RunRecord) -> Result<()> {
        let rest = run_key(&run.instance, run.id);
        if let Some((value, revision)) = self.get(&rest).await? {
            if self.parse_run(&rest, &value)?.outcome == RunOutcome::Running {
                let key = self.key(&rest);
                let txn = Txn::new()
                    .when(vec![Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        revision,
                    )])
                    .and_then(vec![TxnOp::delete(key, None)]);
                self.inventory.kv_txn("release a claim", txn).await?;
            }
        }
        if let Some((claim, revision)) = self.claim_of(&run.instance).await? {
            if claim.id == run.id {
                self.drop_claim(&run.instance, revision).await?;
            }
        }
        self.stop_keeper(run.id).await;
        Ok(())
    }

    /// Marks this process's `running` runs `interrupted` (a daemon that stops without
    /// waiting for them) and returns them.
    ///
    /// # Errors
    /// `Backend` when etcd fails.
    pub async fn interrupt_own(&self, why: &str) -> Result<Vec<RunRecord>> {
        let (me, owner) = (std::process::id(), process_owner());
        let mut out = Vec::new();
        for (instance, value, revision) in self.range("claims/", GetOptions::new()).await? {
            let claim: StoredClaim = serde_json::from_slice(&value)
                .map_err(|e| self.corrupt(&claim_key(&instance), e))?;
            if claim.pid == me && claim.owner == owner {
                if let Some(run) = self
                    .interrupt_claim(&instance, &claim, revision, why)
                    .await?
                {
                    out.push(run);
                }
            }
        }
        Ok(out)
    }

    /// The whole book: every instance's own schedule and every run.
    ///
    /// # Errors
    /// `Backend` when etcd does not answer, `Corrupt` when a key does not parse.
    pub async fn dump(&self) -> Result<BookDump> {
        Ok(BookDump {
            overrides: self.all_overrides().await?,
            runs: self.runs(None, usize::MAX).await?,
        })
    }

    /// Makes the book hold `dump` and nothing else (claims included: there must be no
    /// run running). Written in batches: the caller reads it back to check it.
    ///
    /// # Errors
    /// `Backend` when etcd fails.
    pub async fn replace(&self, dump: &BookDump) -> Result<()> {
        let wipe: Vec<TxnOp> = ["schedules/", "runs/", "claims/"]
            .into_iter()
            .map(|p| TxnOp::delete(self.key(p), Some(DeleteOptions::new().with_prefix())))
            .chain([TxnOp::delete(self.key(SEQ), None)])
            .collect();
        self.inventory
            .kv_txn("clear the schedule book", Txn::new().and_then(wipe))
            .await?;
        let now = millis(Utc::now());
        let mut puts = Vec::new();
        for (name, o) in &dump.overrides {
            let value = json(&StoredSchedule {
                schedule: o.clone(),
                updated_at: now,
            })?;
            puts.push(TxnOp::put(self.key(&schedule_key(name)), value, None));
        }
        for run in &dump.runs {
            puts.push(TxnOp::put(
                self.key(&run_key(&run.instance, run.id)),
                json(&kept(run.clone()))?,
                None,
            ));
        }
        let seq = dump.runs.iter().map(|r| r.id).max().unwrap_or(0);
        puts.push(TxnOp::put(self.key(SEQ), seq.to_string(), None));
        while !puts.is_empty() {
            let batch: Vec<TxnOp> = puts.drain(..puts.len().min(BATCH)).collect();
            self.inventory
                .kv_txn("write the schedule book", Txn::new().and_then(batch))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// The SQLite book keeps times to the millisecond: so does this one, or a book moved
    /// from etcd to SQLite would not read back the same.
    #[test]
    fn runs_are_kept_to_the_millisecond_and_keyed_in_id_order() {
        let t = Utc.with_ymd_and_hms(2026, 3, 1, 4, 0, 0).unwrap()
            + chrono::Duration::nanoseconds(1_234_567_891);
        let run = kept(RunRecord {
            id: 9,
            instance: "web".into(),
            kind: RunKind::Backup,
            slot: t,
            started_at: t,
            ended_at: Some(t),
            outcome: RunOutcome::Ok,
            store: "local".into(),
            backup_id: None,
            copied: Vec::new(),
            pruned: Vec::new(),
            error: None,
            pid: 1,
            host: "h".into(),
        });
        assert_eq!(run.started_at.timestamp_subsec_nanos(), 234_000_000);
        assert_eq!(run.ended_at, Some(run.started_at));
        assert_eq!(super::super::book::ts(run.slot), "2026-03-01T04:00:01.234Z");
        // Key order is id order within an instance (newest first when read descending).
        assert!(run_key("web", 9) < run_key("web", 10));
        assert!(!run_key("web2", 1).starts_with("runs/web/"));
    }
}
