//! The behaviours every [`Inventory`] must have, one function per behaviour, in the
//! manner of the store battery. A new backend (etcd, ...) proves itself by passing
//! [`run_all`]; each function can also be called alone to chase one failure.
//!
//! Every function takes `open`, which hands out a new handle on one and the same book
//! (a new connection, a new client: what another process would have), so the battery
//! checks what two `girofle` processes see of each other. Functions panic (they are test
//! code), and touch only instances whose names start with a prefix of their own, removed
//! afterwards, so a run may share a book with other runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Fleet, Inventory, InventoryExt};
use crate::error::Error;
use crate::record::{Bindings, InstanceRecord, Stage};

/// Hands out a new handle on the book under test.
pub type Open<'a> = dyn Fn() -> Arc<dyn Inventory> + Sync + 'a;

/// Runs the whole battery against the book `open` hands out handles on.
pub async fn run_all(open: &Open<'_>) {
    starts_without_these_instances(open).await;
    written_records_read_back_whole(open).await;
    transact_returns_the_fleet_as_written(open).await;
    updates_and_removals_are_kept(open).await;
    failed_change_writes_nothing(open).await;
    another_handle_sees_committed_changes(open).await;
    concurrent_transactions_lose_nothing(open).await;
    get_tells_unknown_from_known(open).await;
}

/// A prefix of instance names no other run uses (names stay valid instance names).
pub fn unique_prefix(behaviour: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!("{behaviour}-{:x}", (nanos ^ std::process::id()) % 0xfffff)
}

/// A complete record (every field set), on ports `port`, `port + 1`, `port + 2`.
pub fn record(name: &str, port: u16) -> InstanceRecord {
    InstanceRecord {
        name: name.into(),
        image: "gitlab/gitlab-ce:17.5.1-ce.0".into(),
        bindings: Bindings {
            ip: "127.0.0.1".parse().expect("an IP"),
            http_port: port,
            https_port: port + 1,
            ssh_port: port + 2,
        },
        hostname: Some(format!("{name}.example.org")),
        external_url: format!("http://127.0.0.1:{port}"),
        settings: BTreeMap::from([(
            "gitlab_rails['time_zone']".to_string(),
            "'Europe/Paris'".to_string(),
        )]),
        labels: BTreeMap::from([("team".to_string(), "ops".to_string())]),
        created_at: chrono::DateTime::from_timestamp(1_764_000_000, 0).expect("a time"),
        stage: Stage::Active,
        host: None,
    }
}

/// The records of `fleet` whose names start with `prefix`.
fn mine(fleet: &Fleet, prefix: &str) -> BTreeMap<String, InstanceRecord> {
    fleet
        .instances
        .iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(n, r)| (n.clone(), r.clone()))
        .collect()
}

async fn insert(inv: &dyn Inventory, records: &[InstanceRecord]) -> Fleet {
    inv.transact(&mut |fleet: &mut Fleet| {
        for r in records {
            fleet.instances.insert(r.name.clone(), r.clone());
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("transact on {inv:?}: {e}"))
}

async fn remove_prefixed(inv: &dyn Inventory, prefix: &str) {
    inv.transact(&mut |fleet: &mut Fleet| {
        fleet.instances.retain(|n, _| !n.starts_with(prefix));
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("clean-up on {inv:?}: {e}"));
}

/// A fresh prefix names nothing yet: the book does not make records up.
pub async fn starts_without_these_instances(open: &Open<'_>) {
    let prefix = unique_prefix("fresh");
    let fleet = open().load().await.expect("load");
    assert!(mine(&fleet, &prefix).is_empty());
}

/// Every field of a record comes back as written, through another handle too.
pub async fn written_records_read_back_whole(open: &Open<'_>) {
    let prefix = unique_prefix("whole");
    let mut a = record(&format!("{prefix}-a"), 20_000);
    a.stage = Stage::Commissioning;
    a.hostname = None;
    let b = record(&format!("{prefix}-b"), 20_010);
    insert(&*open(), &[a.clone(), b.clone()]).await;
    let read = mine(&open().load().await.expect("load"), &prefix);
    assert_eq!(read.get(&a.name), Some(&a), "record a as written");
    assert_eq!(read.get(&b.name), Some(&b), "record b as written");
    remove_prefixed(&*open(), &prefix).await;
}

/// `transact` returns the fleet as it wrote it, with the records of others in it.
pub async fn transact_returns_the_fleet_as_written(open: &Open<'_>) {
    let prefix = unique_prefix("returned");
    let inv = open();
    let a = record(&format!("{prefix}-a"), 20_100);
    insert(&*inv, std::slice::from_ref(&a)).await;
    let b = record(&format!("{prefix}-b"), 20_110);
    let returned = insert(&*inv, std::slice::from_ref(&b)).await;
    assert_eq!(
        mine(&returned, &prefix),
        BTreeMap::from([(a.name.clone(), a), (b.name.clone(), b)])
    );
    assert_eq!(
        mine(&returned, &prefix),
        mine(&inv.load().await.expect("load"), &prefix)
    );
    remove_prefixed(&*inv, &prefix).await;
}

/// A changed record replaces the old one; a removed one is gone (its addresses free).
pub async fn updates_and_removals_are_kept(open: &Open<'_>) {
    let prefix = unique_prefix("update");
    let inv = open();
    let (a, b) = (
        record(&format!("{prefix}-a"), 20_200),
        record(&format!("{prefix}-b"), 20_210),
    );
    insert(&*inv, &[a.clone(), b.clone()]).await;
    inv.transact(&mut |fleet: &mut Fleet| {
        let r = fleet.instances.get_mut(&a.name).expect("a is there");
        r.settings
            .insert("nginx['listen_https']".into(), "false".into());
        r.stage = Stage::Active;
        fleet.instances.remove(&b.name);
        Ok(())
    })
    .await
    .expect("transact");
    let read = mine(&open().load().await.expect("load"), &prefix);
    assert_eq!(read.len(), 1, "b was removed: {read:?}");
    assert_eq!(
        read[&a.name].settings.get("nginx['listen_https']"),
        Some(&"false".to_string())
    );
    remove_prefixed(&*inv, &prefix).await;
}

/// A change that fails writes nothing, even what it changed before failing, and its
/// error comes back as it was.
pub async fn failed_change_writes_nothing(open: &Open<'_>) {
    let prefix = unique_prefix("failed");
    let inv = open();
    let a = record(&format!("{prefix}-a"), 20_300);
    insert(&*inv, std::slice::from_ref(&a)).await;
    let r = inv
        .transact(&mut |fleet: &mut Fleet| {
            fleet.instances.remove(&a.name);
            let b = record(&format!("{prefix}-b"), 20_310);
            fleet.instances.insert(b.name.clone(), b);
            Err(Error::Conflict("the change refuses".into()))
        })
        .await;
    match r {
        Err(Error::Conflict(m)) => assert_eq!(m, "the change refuses"),
        other => panic!("expected the change's own Conflict, got {other:?}"),
    }
    let read = mine(&open().load().await.expect("load"), &prefix);
    assert_eq!(
        read,
        BTreeMap::from([(a.name.clone(), a)]),
        "nothing written"
    );
    remove_prefixed(&*inv, &prefix).await;
}

/// What one handle commits, another handle's next transaction starts from.
pub async fn another_handle_sees_committed_changes(open: &Open<'_>) {
    let prefix = unique_prefix("seen");
    let (one, two) = (open(), open());
    let a = record(&format!("{prefix}-a"), 20_400);
    insert(&*one, std::slice::from_ref(&a)).await;
    let mut seen = None;
    two.transact(&mut |fleet: &mut Fleet| {
        seen = fleet.instances.get(&a.name).cloned();
        Ok(())
    })
    .await
    .expect("transact");
    assert_eq!(seen, Some(a));
    remove_prefixed(&*one, &prefix).await;
}

/// Sixteen transactions at once, each through its own handle and each taking "the next
/// free port" from what it reads: none is lost and no port is handed out twice.
pub async fn concurrent_transactions_lose_nothing(open: &Open<'_>) {
    let prefix = unique_prefix("race");
    let mut tasks = Vec::new();
    for i in 0..16u16 {
        let inv = open();
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            inv.transact(&mut |fleet: &mut Fleet| {
                let next = mine(fleet, &prefix)
                    .values()
                    .map(|r| r.bindings.ssh_port + 1)
                    .max()
                    .unwrap_or(30_000);
                let name = format!("{prefix}-{i}");
                fleet.instances.insert(name.clone(), record(&name, next));
                Ok(())
            })
            .await
            .unwrap_or_else(|e| panic!("transaction {i}: {e}"));
        }));
    }
    for t in tasks {
        t.await.expect("a transaction task");
    }
    let read = mine(&open().load().await.expect("load"), &prefix);
    assert_eq!(read.len(), 16, "a transaction was lost");
    let mut ports: Vec<u16> = read.values().map(|r| r.bindings.http_port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 16, "a port was handed out twice");
    remove_prefixed(&*open(), &prefix).await;
}

/// `get` finds a known instance and says `NotFound`, with a hint, for another.
pub async fn get_tells_unknown_from_known(open: &Open<'_>) {
    let prefix = unique_prefix("get");
    let inv = open();
    let a = record(&format!("{prefix}-a"), 20_500);
    insert(&*inv, std::slice::from_ref(&a)).await;
    assert_eq!(inv.get(&a.name).await.expect("get"), a);
    match inv.get(&format!("{prefix}-none")).await {
        Err(e @ Error::NotFound { .. }) => {
            assert!(e.to_string().contains("girofle instance list"), "{e}")
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    remove_prefixed(&*inv, &prefix).await;
}
