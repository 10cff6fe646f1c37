//! The inventory on etcd, for a fleet that several machines run: the book, and the
//! operation locks that keep two Girofle processes on two machines from acting on one
//! instance at once.
//!
//! Keys live under `/girofle/<namespace>/` (several fleets may share one cluster):
//! - `fleet`: the whole book, one JSON object of instance records by name. One key, so a
//!   change is one put, whatever it touches, well under etcd's request limit (1.5 MiB:
//!   about a thousand instances).
//! - `locks/<instance>`: the holder of an operation lock (who, what, since), attached to a
//!   lease the holder keeps alive; a holder that dies or is cut off loses it when the
//!   lease runs out.
//!
//! A change is a transaction that compares the `fleet` key's revision with the one it
//! read (no lost update between processes); a conflict reads again and retries. A write
//! to an instance whose lock this process holds also compares the lock key's creation
//! revision with the one the lock was taken at: that revision is the fencing token, so a
//! process paused past its lease, whose lock another process has taken since, cannot
//! write any more.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, Identity, PutOptions, TlsOptions, Txn,
    TxnOp,
};

use super::{Change, Fleet, Inventory};
use crate::error::{Error, Result};
use crate::record::InstanceRecord;

const ETCD: &str = "etcd inventory";

/// Where the etcd cluster is and how to talk to it (`[inventory]` in girofle.toml).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdSettings {
    /// Client URLs of the members (`http://host:2379`, `https://…`).
    pub endpoints: Vec<String>,
    /// The fleet's keys live under `/girofle/<namespace>/`.
    pub namespace: String,
    /// User name and password, when the cluster has authentication on.
    pub user: Option<(String, String)>,
    /// CA certificate that signed the members' certificates (PEM).
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM), when the members ask for one.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// How long a lock outlives a holder that stopped renewing it.
    pub lease_ttl: Duration,
    /// How long one request may take.
    pub timeout: Duration,
}

impl EtcdSettings {
    /// Settings for `endpoints`, with the defaults for the rest.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdSettings {
            endpoints,
            namespace: "default".into(),
            user: None,
            ca: None,
            cert: None,
            lease_ttl: Duration::from_secs(15),
            timeout: Duration::from_secs(5),
        }
    }

    fn prefix(&self) -> String {
        format!("/girofle/{}/", self.namespace)
    }

    fn endpoint_list(&self) -> String {
        self.endpoints.join(", ")
    }

    /// The error for a request etcd did not answer.
    fn unreachable(&self, what: &str, e: &etcd_client::Error) -> Error {
        Error::backend(
            ETCD,
            format!(
                "{what}: etcd at {} did not answer ({e}). Check that a majority of the members run (`etcdctl --endpoints {} endpoint health`) and that `[inventory] etcd` in girofle.toml names them; then `girofle recover` finishes what an interrupted operation left",
                self.endpoint_list(),
                self.endpoints.join(","),
            ),
        )
    }

    fn options(&self) -> Result<ConnectOptions> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            .with_keep_alive(Duration::from_secs(5), self.timeout)
            // A member cut off from the others says so at once instead of answering
            // from its stale copy or waiting.
            .with_require_leader(true);
        if let Some((user, password)) = &self.user {
            options = options.with_user(user.clone(), password.clone());
        }
        if self.ca.is_some() || self.cert.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read_pem("inventory.ca", ca)?));
            }
            if let Some((cert, key)) = &self.cert {
                tls = tls.identity(Identity::from_pem(
                    read_pem("inventory.cert", cert)?,
                    read_pem("inventory.key", key)?,
                ));
            }
            options = options.with_tls(tls);
        }
        Ok(options)
    }
}

/// Whether a failed request may succeed on another member: the member is down, cut off
/// or too slow. gRPC's status codes are fixed by the protocol: 4 is DEADLINE_EXCEEDED,
/// 14 UNAVAILABLE (a refused connection, a member without a leader).
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(s.code() as i32, 4 | 14),
        _ => false,
    }
}

fn read_pem(field: &str, path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::invalid(
            field,
            format!(
                "cannot read `{}` ({e}); give the path of a PEM file",
                path.display()
            ),
        )
    })
}

/// A lock this process holds: the key and the revision it was created at.
#[derive(Clone, Debug)]
struct Fence {
    key: String,
    token: i64,
}

struct Shared {
    settings: EtcdSettings,
    /// The member this process talks to (its index among the endpoints) and the client.
    /// One member at a time, so that a member that died is left for the next one at once.
    client: tokio::sync::Mutex<Option<(usize, Client)>>,
    /// The member to try first when connecting.
    next: AtomicUsize,
    /// The locks this process holds, by instance name.
    fences: Mutex<HashMap<String, Fence>>,
    /// Numbers this process's writes, so that a write whose answer was lost can be
    /// recognised when it landed.
    writes: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdInventory")
            .field("endpoints", &self.settings.endpoints)
            .field("namespace", &self.settings.namespace)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// The inventory on an etcd cluster, and the instance locks on its leases. Cloning shares
/// the connection and the locks held.
#[derive(Clone, Debug)]
pub struct EtcdInventory {
    shared: Arc<Shared>,
}

/// A result of a transaction that may have to be tried again.
enum Attempt {
    Written(Fleet),
    Conflict,
}

impl EtcdInventory {
    /// An inventory on the cluster `settings` names. Nothing is asked of etcd until the
    /// first request.
    pub fn new(settings: EtcdSettings) -> Self {
        EtcdInventory {
            shared: Arc::new(Shared {
                settings,
                client: tokio::sync::Mutex::new(None),
                next: AtomicUsize::new(0),
                fences: Mutex::new(HashMap::new()),
                writes: AtomicU64::new(0),
            }),
        }
    }

    /// The settings this inventory was made with.
    pub fn settings(&self) -> &EtcdSettings {
        &self.shared.settings
    }

    /// The client of the member this process talks to, connecting to the first member
    /// that answers when there is none.
    async fn client(&self) -> Result<Client> {
        let mut slot = self.shared.client.lock().await;
        if let Some((_, c)) = &*slot {
            return Ok(c.clone());
        }
        let settings = &self.shared.settings;
        let options = settings.options()?;
        let n = settings.endpoints.len().max(1);
        let start = self.shared.next.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            let Some(endpoint) = settings.endpoints.get(i) else {
                break;
            };
            let probe = async {
                let mut c = Client::connect([endpoint], Some(options.clone())).await?;
                // Answers only when the member has a leader: a member cut off from the
                // majority is passed over.
                c.get(
                    self.fleet_key(),
                    Some(etcd_client::GetOptions::new().with_count_only()),
                )
                .await?;
                Ok::<_, etcd_client::Error>(c)
            };
            match probe.await {
                Ok(c) => {
                    *slot = Some((i, c.clone()));
                    return Ok(c);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => settings.unreachable("connect", &e),
            None => Error::invalid("inventory.etcd", "name at least one etcd member"),
        })
    }

    /// Leaves the member that just failed: the next request connects to the next one.
    async fn forget(&self) {
        let mut slot = self.shared.client.lock().await;
        if let Some((i, _)) = slot.take() {
            self.shared.next.store(i + 1, Ordering::Relaxed);
        }
    }

    /// Runs a request that can be repeated without harm (a read, a lease grant), on
    /// another member when one is down.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut last = None;
        for _ in 0..=self.shared.settings.endpoints.len() {
            let client = self.client().await?;
            match f(client).await {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) => {
                    self.forget().await;
                    last = Some(e);
                }
                Err(e) => return Err(self.err(what, &e)),
            }
        }
        Err(self.err(what, &last.expect("at least one try")))
    }

    /// The full key of `rest` in this fleet's namespace.
    pub(crate) fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.shared.settings.prefix())
    }

    fn fleet_key(&self) -> String {
        self.key("fleet")
    }

    fn lock_key(&self, name: &str) -> String {
        self.key(&format!("locks/{name}"))
    }

    fn err(&self, what: &str, e: &etcd_client::Error) -> Error {
        self.shared.settings.unreachable(what, e)
    }

    /// The fleet, the revision of its key (0 when there is none yet) and the id of the
    /// write that made it.
    async fn read(&self) -> Result<(Fleet, i64, String)> {
        let key = self.fleet_key();
        let resp = self
            .call("read the fleet", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        match resp.kvs().first() {
            None => Ok((Fleet::default(), 0, String::new())),
            Some(kv) => {
                let (fleet, write) = self.parse(kv.value())?;
                Ok((fleet, kv.mod_revision(), write))
            }
        }
    }

    fn parse(&self, bytes: &[u8]) -> Result<(Fleet, String)> {
        let stored: Stored = serde_json::from_slice(bytes).map_err(|e| {
            Error::corrupt(
                format!("the fleet in etcd (`{}`)", self.fleet_key()),
                format!("{e}; bring the book back with `girofle state import FILE` (from a `girofle state export`)"),
            )
        })?;
        Ok((
            Fleet {
                instances: stored.instances,
            },
            stored.write,
        ))
    }

    /// One read-change-write. `ours` holds the ids of this call's earlier writes whose
    /// answer was lost: when one of them landed, the change is done.
    async fn attempt(&self, change: &mut Change<'_>, ours: &mut Vec<String>) -> Result<Attempt> {
        let (before, revision, write) = self.read().await?;
        if ours.contains(&write) {
            return Ok(Attempt::Written(before));
        }
        let mut after = before.clone();
        change(&mut after)?;
        if after == before {
            return Ok(Attempt::Written(after));
        }
        let touched: Vec<&String> = before
            .instances
            .keys()
            .chain(after.instances.keys())
            .filter(|n| before.instances.get(*n) != after.instances.get(*n))
            .collect();
        let fences: Vec<(String, Fence)> = {
            let held = self.shared.fences.lock().expect("fence table");
            touched
                .iter()
                .filter_map(|n| held.get(*n).map(|f| ((*n).clone(), f.clone())))
                .collect()
        };
        let mut compares = vec![Compare::mod_revision(
            self.fleet_key(),
            CompareOp::Equal,
            revision,
        )];
        compares.extend(
            fences
                .iter()
                .map(|(_, f)| Compare::create_revision(f.key.clone(), CompareOp::Equal, f.token)),
        );
        let id = format!(
            "{}/{}/{}",
            std::process::id(),
            self.shared.writes.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let text = serde_json::to_vec(&Stored {
            write: id.clone(),
            instances: after.instances.clone(),
        })
        .map_err(|e| Error::backend(ETCD, e.to_string()))?;
        let txn =
            Txn::new()
                .when(compares)
                .and_then(vec![TxnOp::put(self.fleet_key(), text, None)]);
        ours.push(id);
        let mut client = self.client().await?;
        let resp = match client.txn(txn).await {
            Ok(r) => r,
            Err(e) if transient(&e) => {
                // The write may or may not have landed: the next attempt reads and knows.
                self.forget().await;
                return Ok(Attempt::Conflict);
            }
            Err(e) => return Err(self.err("write the fleet", &e)),
        };
        if resp.succeeded() {
            return Ok(Attempt::Written(after));
        }
        // Either another process wrote the fleet (read again), or a lock of ours is gone.
        for (name, fence) in &fences {
            let key = fence.key.clone();
            let now = self
                .call("read a lock", |mut c| {
                    let key = key.clone();
                    async move { c.get(key, None).await }
                })
                .await?;
            let kv = now.kvs().first();
            if kv.map(etcd_client::KeyValue::create_revision) != Some(fence.token) {
                let holder = kv
                    .map(|kv| format!("{} holds it now", Held::of(kv.value()).holder))
                    .unwrap_or_else(|| "nobody holds it now".into());
                return Err(Error::Conflict(format!(
                    "this process lost the lock of instance `{name}` (its etcd lease ran out: the process was paused or cut off from etcd for longer than {} s); {holder}; this change was not written. Run `girofle recover` once that operation is over",
                    self.shared.settings.lease_ttl.as_secs()
                )));
            }
        }
        Ok(Attempt::Conflict)
    }

    /// Takes the lock of instance `name` on a lease kept alive while the returned guard
    /// lives, writing `holder` (who, what, since) into it; or fails at once naming the
    /// holder.
    ///
    /// # Errors
    /// `Conflict` naming the holder when another process holds it, `Backend` when etcd
    /// does not answer.
    pub async fn lock(&self, name: &str, holder: &str) -> Result<EtcdLock> {
        let key = self.lock_key(name);
        let ttl = self.shared.settings.lease_ttl.as_secs().max(2);
        let lease = self
            .call("take a lease", |mut c| async move {
                c.lease_grant(i64::try_from(ttl).unwrap_or(15), None).await
            })
            .await?
            .id();
        let value = serde_json::to_vec(&Held {
            holder: holder.to_string(),
            owner: this_owner(),
            pid: std::process::id(),
        })
        .map_err(|e| Error::backend(ETCD, e.to_string()))?;
        let mut taken = None;
        for _ in 0..=self.shared.settings.endpoints.len() + 1 {
            let txn = Txn::new()
                .when(vec![Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then(vec![TxnOp::put(
                    key.clone(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let mut client = self.client().await?;
            let lost_answer = match client.txn(txn).await {
                Ok(r) if r.succeeded() => {
                    taken = r.header().map(etcd_client::ResponseHeader::revision);
                    break;
                }
                Ok(_) => false,
                Err(e) if transient(&e) => {
                    self.forget().await;
                    true
                }
                Err(e) => return Err(self.err("take a lock", &e)),
            };
            let k = key.clone();
            let now = self
                .call("read a lock", |mut c| {
                    let k = k.clone();
                    async move { c.get(k, None).await }
                })
                .await?;
            let Some(kv) = now.kvs().first() else {
                // Released meanwhile, or our put never landed: try again.
                continue;
            };
            if lost_answer && kv.lease() == lease {
                taken = Some(kv.create_revision());
                break;
            }
            // A holder on this machine that died gives its lock up at once, as the kernel
            // releases a dead process's file lock; elsewhere its lease decides.
            if dead_here(&Held::of(kv.value())) {
                let (k, theirs, their_lease) = (key.clone(), kv.create_revision(), kv.lease());
                self.call("release a dead holder's lock", |mut c| {
                    let txn = Txn::new()
                        .when(vec![Compare::create_revision(
                            k.clone(),
                            CompareOp::Equal,
                            theirs,
                        )])
                        .and_then(vec![TxnOp::delete(k.clone(), None)]);
                    async move { c.txn(txn).await }
                })
                .await?;
                let _ = self
                    .call("give a lease back", |mut c| async move {
                        c.lease_revoke(their_lease).await
                    })
                    .await;
                continue;
            }
            break;
        }
        let Some(token) = taken else {
            let k = key.clone();
            let _ = self
                .call("give a lease back", |mut c| async move {
                    c.lease_revoke(lease).await
                })
                .await;
            let holder = self
                .call("read a lock", |mut c| {
                    let k = k.clone();
                    async move { c.get(k, None).await }
                })
                .await?
                .kvs()
                .first()
                .map(|kv| Held::of(kv.value()).holder)
                .unwrap_or_else(|| "another operation".into());
            return Err(Error::Conflict(format!(
                "instance `{name}` is busy: {holder} holds its lock; wait for it to finish and try again"
            )));
        };
        self.shared.fences.lock().expect("fence table").insert(
            name.to_string(),
            Fence {
                key: key.clone(),
                token,
            },
        );
        let keeper = tokio::spawn(keep_alive(self.clone(), lease, Duration::from_secs(ttl)));
        Ok(EtcdLock {
            inventory: self.clone(),
            name: name.to_string(),
            key,
            lease,
            token,
            keeper,
        })
    }

    /// Who holds the lock of instance `name`, if anyone.
    ///
    /// # Errors
    /// `Backend` when etcd does not answer.
    pub async fn lock_holder(&self, name: &str) -> Result<Option<String>> {
        let key = self.lock_key(name);
        let resp = self
            .call("read a lock", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp.kvs().first().map(|kv| Held::of(kv.value()).holder))
    }

    fn intent_key(&self, name: &str) -> String {
        self.key(&format!("intents/{name}"))
    }

    /// Writes (`Some`) or deletes (`None`) the intent record of instance `name`, where
    /// `girofle recover` on any machine finds it. When this process holds that instance's
    /// lock, the write is fenced by it as a fleet write is.
    ///
    /// # Errors
    /// `Conflict` when this process lost the lock, `Backend` when etcd does not answer.
    pub async fn write_intent(&self, name: &str, record: Option<&[u8]>) -> Result<()> {
        let key = self.intent_key(name);
        let fence = self
            .shared
            .fences
            .lock()
            .expect("fence table")
            .get(name)
            .cloned();
        let op = match record {
            Some(bytes) => TxnOp::put(key, bytes.to_vec(), None),
            None => TxnOp::delete(key, None),
        };
        let compares: Vec<Compare> = fence
            .iter()
            .map(|f| Compare::create_revision(f.key.clone(), CompareOp::Equal, f.token))
            .collect();
        let txn = Txn::new().when(compares).and_then(vec![op]);
        // A put or a delete of one key lands the same when repeated after a lost answer.
        let resp = self
            .call("write an intent record", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if !resp.succeeded() {
            return Err(Error::Conflict(format!(
                "this process lost the lock of instance `{name}` (its etcd lease ran out: the process was paused or cut off from etcd for longer than {} s); its intent record was not written. Run `girofle recover` once the other operation is over",
                self.shared.settings.lease_ttl.as_secs()
            )));
        }
        Ok(())
    }

    /// The intent record of instance `name`, if any.
    ///
    /// # Errors
    /// `Backend` when etcd does not answer.
    pub async fn intent(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let key = self.intent_key(name);
        let resp = self
            .call("read an intent record", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// The names of the instances that have an intent record, sorted.
    ///
    /// # Errors
    /// `Backend` when etcd does not answer.
    pub async fn intent_names(&self) -> Result<Vec<String>> {
        let prefix = self.key("intents/");
        let resp = self
            .call("list the intent records", |mut c| {
                let prefix = prefix.clone();
                async move {
                    c.get(
                        prefix,
                        Some(
                            etcd_client::GetOptions::new()
                                .with_prefix()
                                .with_keys_only(),
                        ),
                    )
                    .await
                }
            })
            .await?;
        let mut names: Vec<String> = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                key.strip_prefix(&prefix).map(str::to_string)
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Adds one line to the fleet's journal: `key` orders it (time first), `line` is the
    /// record as the journal writes it.
    ///
    /// # Errors
    /// `Backend` when etcd does not answer.
    pub async fn append_journal(&self, key: &str, line: &str) -> Result<()> {
        let key = self.key(&format!("journal/{key}"));
        self.call("write the journal", |mut c| {
            let (key, line) = (key.clone(), line.to_string());
            async move { c.put(key, line, None).await }
        })
        .await?;
        Ok(())
    }

    /// The fleet's journal lines, oldest first, from `from` (a key prefix: a time) on.
    ///
    /// # Errors
    /// `Backend` when etcd does not answer.
    pub async fn journal_lines(&self, from: Option<&str>) -> Result<Vec<String>> {
        let prefix = self.key("journal/");
        let start = format!("{prefix}{}", from.unwrap_or(""));
        // Everything after `start` up to the end of the prefix ('/' + 1 is '0').
        let end = format!("{}0", prefix.trim_end_matches('/'));
        let resp = self
            .call("read the journal", |mut c| {
                let (start, end) = (start.clone(), end.clone());
                async move {
                    c.get(start, Some(etcd_client::GetOptions::new().with_range(end)))
                        .await
                }
            })
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            .collect())
    }

    /// Gives a lock back at once: deletes its key (when it is still the one taken at
    /// `token`) and revokes its lease.
    async fn release(&self, key: String, lease: i64, token: i64) {
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                token,
            )])
            .and_then(vec![TxnOp::delete(key, None)]);
        let _ = self
            .call("release a lock", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await;
        let _ = self
            .call("give a lease back", |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await;
    }
}

/// Plain access to the fleet's namespace, for the schedule book (`service/schedule`),
/// which keeps its own keys beside the fleet's and takes its claims on leases as the
/// locks do.
impl EtcdInventory {
    /// Reads the key `rest` (or the range `options` says, from it).
    ///
    /// # Errors
    /// `Backend` when etcd does not answer.
    pub(crate) async fn kv_get(
        &self,
        what: &str,
        rest: &str,
        options: Option<etcd_client::GetOptions>,
    ) -> Result<etcd_client::GetResponse> {
        let key = self.key(rest);
        self.call(what, |mut c| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.get(key, options).await }
        })
        .await
    }

    /// Runs a transaction (its keys already full, see [`EtcdInventory::key`]). Retried on
    /// another member when one fails: callers compare revisions, so a transaction whose
    /// answer was lost fails its compares when tried again and the caller reads anew.
    ///
    /// # Errors
    /// `Backend` when etcd does not answer.
    pub(crate) async fn kv_txn(&self, what: &str, txn: Txn) -> Result<etcd_client::TxnResponse> {
        self.call(what, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// A lease of the lock time to live, renewed until the returned task is aborted.
    ///
    /// # Errors
    /// `Backend` when etcd does not answer.
    pub(crate) async fn kept_lease(&self) -> Result<(i64, tokio::task::JoinHandle<()>)> {
        let ttl = self.shared.settings.lease_ttl.as_secs().max(2);
        let lease = self
            .call("take a lease", |mut c| async move {
                c.lease_grant(i64::try_from(ttl).unwrap_or(15), None).await
            })
            .await?
            .id();
        let keeper = tokio::spawn(keep_alive(self.clone(), lease, Duration::from_secs(ttl)));
        Ok((lease, keeper))
    }

    /// Whether `lease` still lives (its holder renews it).
    ///
    /// # Errors
    /// `Backend` when etcd does not answer.
    pub(crate) async fn lease_alive(&self, lease: i64) -> Result<bool> {
        let r = self
            .call("read a lease", |mut c| async move {
                c.lease_time_to_live(lease, None).await
            })
            .await?;
        Ok(r.ttl() > 0)
    }

    /// Gives `lease` back (what it holds goes with it); a failure only leaves it to run
    /// out.
    pub(crate) async fn revoke_lease(&self, lease: i64) {
        let _ = self
            .call("give a lease back", |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await;
    }
}

/// Where this process's pid means something (see [`this_owner`]): written with a claim
/// so that a claimant of this machine that died is known dead at once.
pub(crate) fn process_owner() -> String {
    this_owner()
}

/// Whether the process `pid` of `owner` (a [`process_owner`]) is known to be gone: it was
/// of this machine and pid namespace, and runs no more.
pub(crate) fn gone_here(owner: &str, pid: u32) -> bool {
    dead_here(&Held {
        holder: String::new(),
        owner: owner.to_string(),
        pid,
    })
}

/// What a lock key holds: who took it (as a refusal names them), and what tells, on the
/// same machine, whether that process still lives.
#[derive(serde::Serialize, serde::Deserialize)]
struct Held {
    holder: String,
    /// [`this_owner`] of the holder.
    owner: String,
    pid: u32,
}

impl Held {
    fn of(bytes: &[u8]) -> Held {
        serde_json::from_slice(bytes).unwrap_or_else(|_| Held {
            holder: String::from_utf8_lossy(bytes).into_owned(),
            owner: String::new(),
            pid: 0,
        })
    }
}

/// Where this process's pid means something: this boot of this machine, in this pid
/// namespace (a Girofle in another container has pids of its own). Empty when unknown.
fn this_owner() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let ns = std::fs::read_link("/proc/self/ns/pid").unwrap_or_default();
    if boot.trim().is_empty() || ns.as_os_str().is_empty() {
        return String::new();
    }
    format!("{}/{}", boot.trim(), ns.display())
}

/// Whether the holder is a process of this boot and pid namespace that is gone.
fn dead_here(held: &Held) -> bool {
    let owner = this_owner();
    !owner.is_empty()
        && held.owner == owner
        && held.pid != 0
        && held.pid != std::process::id()
        && !alive(held.pid)
}

/// Whether process `pid` of this pid namespace runs (a zombie, killed and not yet
/// reaped, does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold any
        // character.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The fleet as the `fleet` key holds it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    /// Which write made this value (process, number, time).
    write: String,
    instances: BTreeMap<String, InstanceRecord>,
}

/// Renews the lease every third of its time to live until the lock is dropped (which
/// aborts this task) or the lease is gone, moving to another member when its own fails.
async fn keep_alive(inventory: EtcdInventory, lease: i64, ttl: Duration) {
    loop {
        let stream = match inventory.client().await {
            Ok(mut c) => c.lease_keep_alive(lease).await.ok(),
            Err(_) => None,
        };
        if let Some((mut keeper, mut stream)) = stream {
            loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match stream.message().await {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    // Expired or revoked: the fencing token now refuses our writes.
                    Ok(Some(_)) => return,
                    _ => break,
                }
                tokio::time::sleep(ttl / 3).await;
            }
        }
        inventory.forget().await;
        tokio::time::sleep(ttl / 10).await;
    }
}

#[async_trait]
impl Inventory for EtcdInventory {
    async fn load(&self) -> Result<Fleet> {
        Ok(self.read().await?.0)
    }

    async fn transact(&self, change: &mut Change<'_>) -> Result<Fleet> {
        let mut ours = Vec::new();
        for attempt in 0u32..100 {
            match self.attempt(change, &mut ours).await? {
                Attempt::Written(fleet) => return Ok(fleet),
                Attempt::Conflict => {
                    // Another process wrote in between: read again after a short, varied
                    // pause so that many writers do not retry in lock step.
                    let jitter = u64::from(std::process::id() % 7 + attempt % 5);
                    tokio::time::sleep(Duration::from_millis(2 + jitter * 3)).await;
                }
            }
        }
        Err(Error::backend(
            ETCD,
            "the fleet changed under every one of 100 attempts to write it; try again",
        ))
    }

    fn as_etcd(&self) -> Option<&EtcdInventory> {
        Some(self)
    }
}

/// An instance lock held on etcd; released when dropped (or, when this process dies,
/// when its lease runs out).
#[derive(Debug)]
pub struct EtcdLock {
    inventory: EtcdInventory,
    name: String,
    key: String,
    lease: i64,
    token: i64,
    keeper: tokio::task::JoinHandle<()>,
}

impl EtcdLock {
    /// The fencing token: the revision at which this lock was taken.
    pub fn token(&self) -> i64 {
        self.token
    }
}

impl Drop for EtcdLock {
    fn drop(&mut self) {
        self.keeper.abort();
        self.inventory
            .shared
            .fences
            .lock()
            .expect("fence table")
            .remove(&self.name);
        // Released now rather than at the end of the lease, so the next command may take
        // it at once. On a thread of its own with its own connection: drop cannot wait for
        // the caller's runtime, which may be the single thread running this very drop.
        let settings = self.inventory.shared.settings.clone();
        let (key, lease, token) = (self.key.clone(), self.lease, self.token);
        let release = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(EtcdInventory::new(settings).release(key, lease, token));
        });
        let _ = release.join();
    }
}
