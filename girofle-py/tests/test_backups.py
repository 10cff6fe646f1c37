"""Backups through the Python module: create (with progress), list, verify, drill, copy
to another store, prune, and restore as a new name with every ref identical."""

from __future__ import annotations

from pathlib import Path

from conftest import containers_of, ls_remote, push_project, unique


def test_backup_verify_copy_prune_restore_as_new_name(make_root, tmp_path):
    nas = tmp_path / "nas"
    nas.mkdir()
    root = make_root(extra=f'\n[stores.nas]\nurl = "file://{nas}"\n')
    g = root.open()
    name = unique("src")
    record = g.create(name)
    url = f"{record['external_url']}/team/app.git"
    refs = push_project(root.tmp / "work", url, commits=4)

    seen: list[tuple[int, int]] = []
    online = g.backup(name, progress=lambda files, size: seen.append((files, size)))
    assert online["id"].startswith(f"{name}/") and online["store"] == "local"
    assert online["strategy"] == "online" and online["downtime_ms"] is None
    assert online["gitlab_version"] == "17.5.1"
    assert seen, "the progress callback was never called"
    assert seen[-1][0] > 0 and seen[-1][1] > 0
    assert all(a <= b for a, b in zip(seen, seen[1:])), "progress went backwards"

    cold = g.backup(name, strategy="cold", no_logs=True)
    assert cold["downtime_ms"] is not None
    assert g.show(name)["state"] == "running", "a cold backup left GitLab down"
    listed = g.list_backups(name)
    assert [b["id"] for b in listed] == [online["id"], cold["id"]]
    assert g.list_backups() == listed
    assert listed[0]["instance"] == name and listed[0]["image"] == record["image"]

    verified = g.verify(cold["id"])
    assert verified == {
        "id": cold["id"],
        "ok": True,
        "files": cold["files"],
        "bytes": cold["bytes"],
    }
    drill = g.verify(cold["id"], drill=True)
    assert drill["valid_for_version"] == "17.5.1" and drill["fsck_clean"], drill
    assert [s["name"] for s in g.list()] == [name], "the drill left an instance behind"

    copied = g.copy_backup(online["id"], to="nas")
    assert copied["to"] == "nas" and copied["size"] == online["archive_size"]
    assert [b["id"] for b in g.list_backups(store="nas")] == [online["id"]]
    g.verify(online["id"], store="nas")

    deleted = g.prune(name, keep_last=1)
    assert deleted == [online["id"]]
    assert [b["id"] for b in g.list_backups(name)] == [cold["id"]]
    assert [b["id"] for b in g.list_backups(store="nas")] == [online["id"]], "pruned the wrong store"

    # Restore the online backup from the other store as a new instance: same refs, new
    # addresses, the original untouched.
    copy = unique("copy")
    seen.clear()
    report = g.restore(
        online["id"],
        store="nas",
        as_name=copy,
        progress=lambda files, size: seen.append((files, size)),
    )
    assert report["name"] == copy and not report["in_place"]
    assert report["url"] != record["external_url"]
    assert seen
    assert ls_remote(f"{report['url']}/team/app.git") == refs
    assert ls_remote(url) == refs
    states = {s["name"]: s["state"] for s in g.list()}
    assert states == {name: "running", copy: "running"}
    assert len(containers_of(root.path)) == 2
    secrets = Path(root.path, "instances", copy, "config", "gitlab-secrets.json")
    original = Path(root.path, "instances", name, "config", "gitlab-secrets.json")
    assert secrets.read_bytes() == original.read_bytes(), "secrets not restored"
