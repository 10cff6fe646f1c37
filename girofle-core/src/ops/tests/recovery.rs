//! Recovery of each phase on the doubles: an intent record of every operation and phase
//! of `model::intent`, left as a killed process leaves it, with the instance as that
//! process left it; `recover` must end it as the recovery rules of `ops/*/undo.rs` say.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use super::Bench;
use crate::model::instance::{container_name, InstanceRecord, Stage};
use crate::model::intent::{
    ColdBackupPhase, CommissionPhase, DecommissionPhase, IntentFile, OnlineBackupPhase, Operation,
    ReconfigurePhase, RecoveryOutcome, RestorePhase,
};
use crate::ops::backup::archive_key;

/// Leaves the intent record of `op` on `name`, as a process killed mid-way does.
async fn interrupted(b: &Bench, name: &str, op: Operation) {
    drop(
        IntentFile::begin(&b.ctx, name, op)
            .await
            .expect("intent record"),
    );
}

/// Runs `recover` and returns the outcome of the recovery of `name`'s intent record.
async fn recover(b: &Bench, name: &str) -> RecoveryOutcome {
    let all = b.ctx.recover().await.expect("recover");
    let r = all
        .iter()
        .find(|r| r.instance == name && r.operation != "leftovers")
        .unwrap_or_else(|| panic!("no recovery of `{name}` in {all:?}"));
    assert_eq!(r.error, None, "{r:?}");
    assert!(!b.intent_exists(name), "the intent record is removed");
    r.outcome
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn stop(b: &Bench, name: &str) {
    use crate::adapters::runtime::ContainerRuntime;
    b.runtime
        .stop(&container_name(name), Duration::from_secs(1))
        .await
        .unwrap();
}

async fn remove_container(b: &Bench, name: &str) {
    use crate::adapters::runtime::ContainerRuntime;
    b.runtime.remove(&container_name(name), true).await.unwrap();
}

fn staging(b: &Bench, what: &str) -> PathBuf {
    b.root
        .join("staging")
        .join(format!("{what}-20261204T000000.000Z"))
}

// Commission.

#[tokio::test]
async fn a_commission_killed_while_creating_is_rolled_back_to_nothing() {
    let b = Bench::new();
    let mut r = b.commissioned("web").await;
    r.stage = Stage::Commissioning;
    b.ctx.put_record(&r).await.unwrap();
    interrupted(
        &b,
        "web",
        Operation::Commission {
            phase: CommissionPhase::Creating,
        },
    )
    .await;
    assert_eq!(recover(&b, "web").await, RecoveryOutcome::RolledBack);
    assert!(!b.has_container("web").await);
    assert!(!b.dirs("web").base.exists());
    assert_eq!(b.record("web").await, None, "name and addresses free");
}

#[tokio::test]
async fn a_commission_killed_after_its_record_went_active_is_finished() {
    let b = Bench::new();
    let r = b.commissioned("web").await;
    stop(&b, "web").await;
    interrupted(
        &b,
        "web",
        Operation::Commission {
            phase: CommissionPhase::Creating,
        },
    )
    .await;
    assert_eq!(recover(&b, "web").await, RecoveryOutcome::Finished);
    assert!(b.running("web").await);
    assert_eq!(b.record("web").await, Some(r));
}

// Backups.

#[tokio::test]
async fn a_cold_backup_killed_while_archiving_starts_gitlab_again_and_drops_its_objects() {
    let b = Bench::new();
    b.commissioned("web").await;
    stop(&b, "web").await;
    let id = "web/20261204T000000Z";
    let store = b.ctx.store(None).unwrap();
    store
        .put_bytes(&archive_key(id), Bytes::from_static(b"half an archive"))
        .await
        .unwrap();
    interrupted(
        &b,
        "web",
        Operation::ColdBackup {
            phase: ColdBackupPhase::Archiving,
            was_running: true,
            store: "local".into(),
            id: id.into(),
        },
    )
    .await;
    assert_eq!(recover(&b, "web").await, RecoveryOutcome::RolledBack);
    assert!(b.running("web").await);
    assert!(
        store.head(&archive_key(id)).await.is_err(),
        "unlisted archive deleted"
    );
}

async fn online_backup_killed(phase: OnlineBackupPhase) {
    let b = Bench::new();
    b.commissioned("web").await;
    let dirs = b.dirs("web");
    let gitlab_tar = dirs
        .data
        .join("backups/1764806400_2026_12_04_17.5.1_gitlab_backup.tar");
    write(&gitlab_tar, "half of GitLab's tar");
    let keep = dirs.data.join("backups/someone-elses.tar");
    write(&keep, "not ours");
    let holder = staging(&b, "backup-web");
    write(&holder.join("gitlab.tar"), "held");
    interrupted(
        &b,
        "web",
        Operation::OnlineBackup {
            phase,
            store: "local".into(),
            id: "web/20261204T000000Z".into(),
            gitlab_tar: gitlab_tar.clone(),
            holder: holder.clone(),
        },
    )
    .await;
    assert_eq!(recover(&b, "web").await, RecoveryOutcome::RolledBack);
    assert!(!gitlab_tar.exists(), "GitLab's tar removed");
    assert!(!holder.exists(), "the holder removed");
    assert_eq!(
        read(&keep),
        "not ours",
        "other files of the backup path kept"
    );
    assert!(b.running("web").await, "GitLab never stopped");
}

#[tokio::test]
async fn an_online_backup_killed_in_gitlab_backup_removes_its_parts() {
    online_backup_killed(OnlineBackupPhase::GitlabBackup).await;
}

#[tokio::test]
async fn an_online_backup_killed_while_archiving_removes_its_parts() {
    online_backup_killed(OnlineBackupPhase::Archiving).await;
}

// Restores.

fn restore_op(b: &Bench, phase: RestorePhase, previous: Option<InstanceRecord>) -> Operation {
    Operation::Restore {
        phase,
        previous,
        staging: staging(b, "restore-web"),
        aside: staging(b, "aside-web"),
    }
}

async fn restore_in_place_killed_before_the_swap(phase: RestorePhase) {
    let b = Bench::new();
    let r = b.commissioned("web").await;
    let data = b.dirs("web").data.join("marker");
    write(&data, "previous");
    write(&staging(&b, "restore-web").join("data/marker"), "restored");
    interrupted(&b, "web", restore_op(&b, phase, Some(r.clone()))).await;
    assert_eq!(recover(&b, "web").await, RecoveryOutcome::RolledBack);
    assert_eq!(read(&data), "previous");
    assert!(!staging(&b, "restore-web").exists());
    assert_eq!(b.record("web").await, Some(r));
    assert!(b.running("web").await);
}

#[tokio::test]
async fn a_restore_in_place_killed_while_extracting_leaves_the_instance_as_it_was() {
    restore_in_place_killed_before_the_swap(RestorePhase::Extracting).await;
}

#[tokio::test]
async fn a_restore_in_place_killed_once_reserved_leaves_the_instance_as_it_was() {
    restore_in_place_killed_before_the_swap(RestorePhase::Reserved).await;
}

#[tokio::test]
async fn a_restore_in_place_killed_while_swapping_puts_the_previous_data_back() {
    let b = Bench::new();
    let r = b.commissioned("web").await;
    let dirs = b.dirs("web");
    write(&dirs.data.join("marker"), "previous");
    // Half-way through the swap: the previous directories aside, part of the restored
    // ones in place, the previous container gone.
    std::fs::rename(&dirs.base, staging(&b, "aside-web")).unwrap();
    write(&dirs.data.join("marker"), "restored");
    remove_container(&b, "web").await;
    interrupted(
        &b,
        "web",
        restore_op(&b, RestorePhase::Swapping, Some(r.clone())),
    )
    .await;
    assert_eq!(recover(&b, "web").await, RecoveryOutcome::RolledBack);
    assert_eq!(read(&dirs.data.join("marker")), "previous");
    assert!(!staging(&b, "aside-web").exists());
    assert_eq!(b.record("web").await, Some(r));
    assert!(b.running("web").await, "the previous container re-created");
}

#[tokio::test]
async fn a_restore_as_new_killed_once_reserved_frees_the_name() {
    let b = Bench::new();
    let mut reserved = b.commissioned("web").await;
    remove_container(&b, "web").await;
    std::fs::remove_dir_all(b.dirs("web").base).unwrap();
    reserved.stage = Stage::Commissioning;
    b.ctx.put_record(&reserved).await.unwrap();
    write(&staging(&b, "restore-web").join("data/marker"), "restored");
    interrupted(&b, "web", restore_op(&b, RestorePhase::Reserved, None)).await;
    assert_eq!(recover(&b, "web").await, RecoveryOutcome::RolledBack);
    assert_eq!(b.record("web").await, None);
    assert!(!staging(&b, "restore-web").exists());
}

#[tokio::test]
async fn a_restore_as_new_killed_while_swapping_removes_what_it_made() {
    let b = Bench::new();
    let mut reserved = b.commissioned("web").await;
    reserved.stage = Stage::Commissioning;
    b.ctx.put_record(&reserved).await.unwrap();
    interrupted(&b, "web", restore_op(&b, RestorePhase::Swapping, None)).await;
    assert_eq!(recover(&b, "web").await, RecoveryOutcome::RolledBack);
    assert_eq!(b.record("web").await, None);
    assert!(!b.has_container("web").await);
    assert!(!b.dirs("web").base.exists());
}

#[tokio::test]
async fn a_restore_killed_after_it_committed_is_finished() {
    let b = Bench::new();
    let r = b.commissioned("web").await;
    write(&b.dirs("web").data.join("marker"), "restored");
    write(&staging(&b, "aside-web").join("data/marker"), "previous");
    write(&staging(&b, "restore-web").join("x"), "left over");
    interrupted(
        &b,
        "web",
        restore_op(&b, RestorePhase::Committed, Some(r.clone())),
    )
    .await;
    assert_eq!(recover(&b, "web").await, RecoveryOutcome::Finished);
    assert_eq!(read(&b.dirs("web").data.join("marker")), "restored");
    assert!(!staging(&b, "aside-web").exists() && !staging(&b, "restore-web").exists());
    assert_eq!(b.record("web").await, Some(r));
}

// Decommissions.

fn decommission_op(
    b: &Bench,
    phase: DecommissionPhase,
    record: &InstanceRecord,
    purge: bool,
) -> Operation {
    Operation::Decommission {
        phase,
        record: record.clone(),
        purge,
        archive_to: (!purge).then(|| b.root.join("decommissioned/web-20261204T000000Z")),
    }
}

#[tokio::test]
async fn a_decommission_killed_while_stopping_is_undone() {
    let b = Bench::new();
    let r = b.commissioned("web").await;
    stop(&b, "web").await;
    interrupted(
        &b,
        "web",
        decommission_op(&b, DecommissionPhase::Stopping, &r, false),
    )
    .await;
    assert_eq!(recover(&b, "web").await, RecoveryOutcome::RolledBack);
    assert!(b.running("web").await);
    assert_eq!(b.record("web").await, Some(r));
    assert!(b.dirs("web").data.exists());
}

async fn decommission_killed_after_the_move(phase: DecommissionPhase) {
    let b = Bench::new();
    let r = b.commissioned("web").await;
    stop(&b, "web").await;
    let dest = b.root.join("decommissioned/web-20261204T000000Z");
    write(&b.dirs("web").data.join("marker"), "kept");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::rename(b.dirs("web").base, &dest).unwrap();
    if phase == DecommissionPhase::Removing {
        remove_container(&b, "web").await;
    }
    interrupted(&b, "web", decommission_op(&b, phase, &r, false)).await;
    assert_eq!(recover(&b, "web").await, RecoveryOutcome::Finished);
    assert!(!b.has_container("web").await);
    assert_eq!(b.record("web").await, None, "name and addresses free");
    assert_eq!(read(&dest.join("data/marker")), "kept");
}

#[tokio::test]
async fn a_decommission_killed_once_the_data_moved_is_finished() {
    decommission_killed_after_the_move(DecommissionPhase::Moving).await;
}

#[tokio::test]
async fn a_decommission_killed_while_removing_is_finished() {
    decommission_killed_after_the_move(DecommissionPhase::Removing).await;
}

#[tokio::test]
async fn a_purge_killed_while_deleting_is_finished() {
    let b = Bench::new();
    let r = b.commissioned("web").await;
    remove_container(&b, "web").await;
    std::fs::remove_dir_all(b.dirs("web").config).unwrap();
    interrupted(
        &b,
        "web",
        decommission_op(&b, DecommissionPhase::Purging, &r, true),
    )
    .await;
    assert_eq!(recover(&b, "web").await, RecoveryOutcome::Finished);
    assert!(!b.dirs("web").base.exists());
    assert!(!b.has_container("web").await);
    assert_eq!(b.record("web").await, None);
}

// Reconfigures.

const NEW_RB: &str = "## the new settings\ngitlab_rails['time_zone'] = 'UTC'\n";

fn new_settings() -> BTreeMap<String, String> {
    BTreeMap::from([("gitlab_rails['time_zone']".to_string(), "'UTC'".to_string())])
}

fn reconfigure_op(previous_rb: &str, phase: ReconfigurePhase) -> Operation {
    Operation::Reconfigure {
        phase,
        previous_rb: previous_rb.into(),
        settings: new_settings(),
    }
}

#[tokio::test]
async fn a_reconfigure_killed_while_applying_puts_the_previous_settings_back() {
    let b = Bench::new();
    let r = b.commissioned("web").await;
    let previous = read(&b.gitlab_rb("web"));
    write(&b.gitlab_rb("web"), NEW_RB);
    let before = b.reconfigures();
    interrupted(
        &b,
        "web",
        reconfigure_op(&previous, ReconfigurePhase::Applying),
    )
    .await;
    assert_eq!(recover(&b, "web").await, RecoveryOutcome::RolledBack);
    assert_eq!(read(&b.gitlab_rb("web")), previous);
    assert_eq!(
        b.reconfigures(),
        before + 1,
        "GitLab applied the previous file"
    );
    assert_eq!(b.record("web").await, Some(r));
}

#[tokio::test]
async fn a_reconfigure_killed_after_the_inventory_took_the_new_settings_is_finished() {
    let b = Bench::new();
    let mut r = b.commissioned("web").await;
    let previous = read(&b.gitlab_rb("web"));
    write(&b.gitlab_rb("web"), NEW_RB);
    r.settings = new_settings();
    b.ctx.put_record(&r).await.unwrap();
    interrupted(
        &b,
        "web",
        reconfigure_op(&previous, ReconfigurePhase::Applying),
    )
    .await;
    assert_eq!(recover(&b, "web").await, RecoveryOutcome::Finished);
    assert_eq!(read(&b.gitlab_rb("web")), NEW_RB, "the new file stays");
    assert_eq!(b.record("web").await, Some(r));
}

#[tokio::test]
async fn a_reconfigure_killed_after_it_restored_the_previous_file_is_not_applied_again() {
    let b = Bench::new();
    let r = b.commissioned("web").await;
    let previous = read(&b.gitlab_rb("web"));
    let before = b.reconfigures();
    interrupted(
        &b,
        "web",
        reconfigure_op(&previous, ReconfigurePhase::Restored),
    )
    .await;
    assert_eq!(recover(&b, "web").await, RecoveryOutcome::RolledBack);
    assert_eq!(read(&b.gitlab_rb("web")), previous);
    assert_eq!(b.reconfigures(), before, "no second reconfigure");
    assert_eq!(b.record("web").await, Some(r));
}
