"""Backups through the Python module: create (with progress), list, verify, drill, copy
to another store, prune, and restore as a new name with every ref identical."""

from __future__ import annotations

from pathlib import Path

import dataclasses

import pytest

import girofle
from conftest import containers_of, ls_remote, project_url, push_project, root_password, unique


def test_backup_verify_copy_prune_restore_as_new_name(make_root, tmp_path):
    nas = tmp_path / "nas"
    nas.mkdir()
    root = make_root(extra=f'\n[stores.nas]\nurl = "file://{nas}"\n')
    g = root.open()
    name = unique("src")
    record = g.create(name)
    password = root_password(root.path, name)
    url = project_url(record.external_url, password)
    refs = push_project(root.tmp / "work", url, commits=4)

    seen: list[tuple[int, int]] = []
    online = g.backup(name, progress=lambda files, size: seen.append((files, size)))
    assert isinstance(online, girofle.Backup)
    assert online.id.startswith(f"{name}/") and online.store == "local"
    assert online.strategy == "online" and online.downtime_ms is None
    assert online.gitlab_version == "17.5.1"
    # Read-only, equal by value, and back to the CLI's --json data.
    with pytest.raises(dataclasses.FrozenInstanceError):
        online.id = "other"  # type: ignore[misc]
    assert girofle.Backup.from_dict(online.to_dict()) == online
    assert online.to_dict()["id"] == online.id and online.to_dict()["downtime_ms"] is None
    assert repr(online).startswith("Backup(id=") and online.id in repr(online)
    assert seen, "the progress callback was never called"
    assert seen[-1][0] > 0 and seen[-1][1] > 0
    assert all(a <= b for a, b in zip(seen, seen[1:])), "progress went backwards"

    cold = g.backup(name, strategy="cold", no_logs=True)
    assert cold.downtime_ms is not None and cold.strategy == "cold"
    assert g.show(name).state == "running", "a cold backup left GitLab down"
    listed = g.list_backups(name)
    assert [b.id for b in listed] == [online.id, cold.id]
    assert g.list_backups() == listed
    assert listed[0].instance == name and listed[0].image == record.image
    assert listed[0].created_at.tzinfo is not None and listed[0].created_at <= listed[1].created_at
    assert (listed[0].files, listed[0].archive_size) == (online.files, online.archive_size)
    assert girofle.BackupEntry.from_dict(listed[0].to_dict()) == listed[0]

    verified = g.verify(cold.id)
    assert verified == girofle.VerifyResult(id=cold.id, ok=True, files=cold.files, bytes=cold.bytes)
    assert verified.to_dict() == {"id": cold.id, "ok": True, "files": cold.files, "bytes": cold.bytes}
    drill = g.verify(cold.id, drill=True)
    assert isinstance(drill, girofle.DrillResult)
    assert drill.valid_for_version == "17.5.1" and drill.fsck_clean and drill.secrets_ok, drill
    assert [s.name for s in g.list()] == [name], "the drill left an instance behind"

    copied = g.copy_backup(online.id, to="nas")
    assert copied == girofle.CopyResult(id=online.id, to="nas", size=online.archive_size)
    assert [b.id for b in g.list_backups(store="nas")] == [online.id]
    assert g.verify(online.id, store="nas").ok

    deleted = g.prune(name, keep_last=1)
    assert deleted == girofle.PruneResult(deleted=(online.id,))
    assert deleted.to_dict() == {"deleted": [online.id]}
    assert [b.id for b in g.list_backups(name)] == [cold.id]
    assert [b.id for b in g.list_backups(store="nas")] == [online.id], "pruned the wrong store"

    # Restore the online backup from the other store as a new instance: same refs, new
    # addresses, the original untouched.
    copy = unique("copy")
    seen.clear()
    report = g.restore(
        online.id,
        store="nas",
        as_name=copy,
        progress=lambda files, size: seen.append((files, size)),
    )
    assert isinstance(report, girofle.RestoreResult)
    assert report.name == copy and not report.in_place and report.id == online.id
    assert report.url != record.external_url
    assert seen and seen[-1][0] > 0
    assert all(a <= b for a, b in zip(seen, seen[1:])), "restore progress went backwards"
    # The restored database has the source's root, with the source's password.
    assert ls_remote(project_url(report.url, password)) == refs
    assert ls_remote(url) == refs
    states = {s.name: s.state for s in g.list()}
    assert states == {name: "running", copy: "running"}
    assert len(containers_of(root.path)) == 2
    secrets = Path(root.path, "instances", copy, "config", "gitlab-secrets.json")
    original = Path(root.path, "instances", name, "config", "gitlab-secrets.json")
    assert secrets.read_bytes() == original.read_bytes(), "secrets not restored"


def test_backups_are_signed_and_unsigned_ones_signed_on_request(make_root):
    root = make_root()
    g = root.open()
    name = unique("sig")
    g.create(name)
    b = g.backup(name, strategy="cold", no_logs=True)
    key = g.public_key()
    assert isinstance(key, girofle.KeyInfo) and len(key.key_id) == 16
    assert key.pub_file.splitlines()[1] == key.public_key
    assert key.trusted[0].key_id == key.key_id and key.trusted[0].source == "own key"
    [entry] = g.list_backups(name)
    assert (entry.signed, entry.key_id) == ("trusted", key.key_id)

    # Unsigned (as before backups were signed): listed so, refused with the hint.
    (root.path / "backups" / f"{b.id}.manifest.minisig").unlink()
    assert g.list_backups(name)[0].signed == "unsigned"
    with pytest.raises(girofle.CorruptError, match="after checking where it came from"):
        g.verify(b.id)
    signed = g.sign_backup(b.id)
    assert signed == girofle.SignResult(
        id=b.id, store="local", key_id=key.key_id, signed_now=True, was="unsigned"
    )
    assert g.sign_backup(b.id).signed_now is False, "signing twice changed something"
    assert g.verify(b.id).ok
