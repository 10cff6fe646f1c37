"""Instances through the Python module, with real effects: a push over HTTP survives
stop/start/restart, settings land in gitlab.rb, remove takes a final backup and keeps the
data; the GIL is released while core works."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import girofle
from conftest import (
    containers_of,
    ls_remote,
    managed_block,
    project_url,
    push_project,
    root_password,
    unique,
)


def test_lifecycle_with_real_effects(root, g):
    name = unique("web")
    record = g.create(
        name,
        settings={"gitlab_rails['time_zone']": "UTC", "gitlab_rails['webhook_timeout']": 20},
        labels={"team": "infra"},
    )
    assert isinstance(record, girofle.Instance)
    assert record.name == name
    assert record.stage == "active"
    # Values are shown redacted, whatever the key; reveal=True shows them.
    assert record.settings == {
        "gitlab_rails['webhook_timeout']": girofle.REDACTED,
        "gitlab_rails['time_zone']": girofle.REDACTED,
    }
    assert g.show(name, reveal=True).record.settings == {
        "gitlab_rails['webhook_timeout']": "20",
        "gitlab_rails['time_zone']": "'UTC'",
    }
    assert "UTC" not in repr(record) and "UTC" not in str(record.to_dict())
    http = record.bindings.http_port
    assert root.ports[0] <= http <= root.ports[1]
    assert record.external_url == f"http://127.0.0.1:{http}"
    rb = root.path / "instances" / name / "config" / "gitlab.rb"

    listed = g.list()
    assert [(s.name, s.state) for s in listed] == [(name, "running")]
    assert listed[0].record == record and listed[0].record.labels == {"team": "infra"}
    assert listed[0] == g.show(name) and listed[0].running
    assert len(containers_of(root.path)) == 1

    url = project_url(record.external_url, root_password(root.path, name))
    refs = push_project(root.tmp / "work", url, commits=3)
    assert "refs/tags/v1.0" in refs and "refs/heads/feature" in refs

    assert g.stop(name).name == name
    assert g.show(name).state == "stopped" and not g.show(name).running
    assert g.start(name) == record
    assert g.show(name).state == "running"
    assert ls_remote(url) == refs
    g.restart(name)
    assert ls_remote(url) == refs

    after = g.reconfigure(
        name,
        set=["gitlab_rails['gitlab_default_theme']=2"],
        unset=["gitlab_rails['webhook_timeout']"],
    )
    assert after.settings == {
        "gitlab_rails['gitlab_default_theme']": girofle.REDACTED,
        "gitlab_rails['time_zone']": girofle.REDACTED,
    }
    assert g.show(name, reveal=True).record.settings == {
        "gitlab_rails['gitlab_default_theme']": "2",
        "gitlab_rails['time_zone']": "'UTC'",
    }
    block = managed_block(rb)
    assert "gitlab_rails['gitlab_default_theme'] = 2" in block
    assert "gitlab_rails['time_zone'] = 'UTC'" in block
    assert "webhook_timeout" not in block
    assert g.show(name).record.settings == after.settings

    gone = g.remove(name)
    assert isinstance(gone, girofle.Decommissioned)
    assert gone.final_backup.startswith(f"{name}/")
    archived = gone.archived_to
    assert archived and (root.path / "decommissioned").exists()
    assert Path(archived, "config", "gitlab-secrets.json").exists(), "data not kept"
    assert containers_of(root.path) == []
    assert g.list() == []
    assert [b.id for b in g.list_backups(name)] == [gone.final_backup]
    with pytest.raises(girofle.NotFoundError):
        g.show(name)


def test_settings_given_at_create_are_applied(root, g):
    name = unique("set")
    g.create(name, settings={"gitlab_rails['time_zone']": "UTC"})
    rb = root.path / "instances" / name / "config" / "gitlab.rb"
    assert "gitlab_rails['time_zone'] = 'UTC'" in managed_block(rb)


def test_gil_is_released_while_core_works(root, g):
    ticks = 0
    stop = threading.Event()

    def count():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.01)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        started = time.monotonic()
        g.create(unique("gil"))
        took = time.monotonic() - started
    finally:
        stop.set()
        counter.join()
    # Commissioning waits seconds for the health check; a thread holding the GIL the
    # whole time would leave the counter at (almost) zero.
    assert took > 1.0
    assert ticks > took * 100 * 0.5, f"only {ticks} ticks in {took:.1f}s: the GIL was held"


def test_two_threads_share_the_runtime(root, g):
    """Two Python threads in core at once (one runtime, many block_on callers)."""
    names = [unique("t"), unique("t")]
    results: dict[str, object] = {}

    def create(n: str) -> None:
        try:
            results[n] = g.create(n)
        except Exception as e:  # noqa: BLE001 - recorded and asserted below
            results[n] = e

    threads = [threading.Thread(target=create, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = [results[n] for n in names]
    assert all(isinstance(r, girofle.Instance) for r in records), records
    ports = {r.bindings.http_port for r in records}  # type: ignore[attr-defined]
    assert len(ports) == 2, "one address handed out twice"
    assert sorted(s.name for s in g.list()) == sorted(names)
