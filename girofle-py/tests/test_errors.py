"""Every exception class raised for real: the kind of each core error, its builtin base
where it has one, core's message, and nothing changed by a refused operation."""

from __future__ import annotations

import subprocess
import threading
import warnings

import pytest

import girofle
from conftest import (
    OTHER_VERSION_IMAGE,
    containers_of,
    ls_remote,
    project_url,
    push_project,
    root_password,
    unique,
)


def test_hierarchy():
    for cls in (
        girofle.NotFoundError,
        girofle.AlreadyExistsError,
        girofle.ConflictError,
        girofle.InvalidInputError,
        girofle.UnhealthyError,
        girofle.CorruptError,
        girofle.VersionMismatchError,
        girofle.CommandError,
        girofle.FileSystemError,
        girofle.BackendError,
        girofle.CancelledError,
    ):
        assert issubclass(cls, girofle.GirofleError) and cls.__module__ == "girofle"
        assert isinstance(cls.kind, str)
    assert issubclass(girofle.NotFoundError, LookupError)
    assert issubclass(girofle.InvalidInputError, ValueError)
    assert issubclass(girofle.FileSystemError, OSError)
    assert issubclass(girofle.AlreadyExistsError, girofle.ConflictError)
    assert issubclass(girofle.GirofleError, Exception)


def test_not_found_and_invalid_input(root, g):
    with pytest.raises(LookupError) as e:
        g.show("nope")
    assert type(e.value) is girofle.NotFoundError and e.value.kind == "not_found"
    assert "instance `nope`" in str(e.value)
    with pytest.raises(girofle.NotFoundError):
        g.start("nope")
    with pytest.raises(girofle.NotFoundError):
        g.verify("web/20260101T000000Z")
    with pytest.raises(girofle.NotFoundError, match="store `nowhere`"):
        g.list_backups(store="nowhere")
    with pytest.raises(girofle.NotFoundError):
        girofle.Girofle(root.path / "not-initialised")

    for call in (
        lambda: g.create("Bad_Name"),
        lambda: g.create(unique("p"), http_port=70000),
        lambda: g.create(unique("p"), ip="not-an-ip"),
        lambda: g.create(unique("p"), settings=["no equals sign"]),
        lambda: g.create(unique("p"), settings="gitlab_rails['x']=1"),
        lambda: g.create(unique("p"), timeout=-1),
        lambda: g.backup("web", strategy="warm"),
        lambda: g.verify("not-an-id"),
        lambda: g.prune(),
    ):
        with pytest.raises(ValueError) as e:
            call()
        assert type(e.value) is girofle.InvalidInputError, e.value
        assert str(e.value).startswith("invalid ")
    assert g.list() == [] and containers_of(root.path) == []


def test_unrecoverable_interruption_is_warned_by_list(root, g):
    # An intent record nobody can read: recovery fails, list() says so at the caller's
    # line and leaves the record for the operator.
    intent = root.path / "run" / "web.intent.json"
    intent.parent.mkdir(exist_ok=True)
    intent.write_text("{ not json")
    with pytest.warns(UserWarning, match="could not be recovered") as caught:
        assert g.list() == []
    message = str(caught[0].message)
    assert "instance `web`" in message and "web.intent.json" in message, message
    assert "recover()" in message, message
    assert caught[0].filename == __file__, caught[0].filename
    assert intent.read_text() == "{ not json"
    intent.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert g.list() == []


def test_file_system_and_backend_errors(root, tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("")
    # A root under a file is a wrong argument (a ValueError), saying what to do.
    with pytest.raises(ValueError, match="is a file, not a directory") as e:
        girofle.Girofle.init(afile / "root")
    assert type(e.value) is girofle.InvalidInputError
    with pytest.raises(girofle.BackendError, match="cannot reach the Docker engine"):
        girofle.Girofle(root.path, docker_host="tcp://127.0.0.1:1")


def test_unhealthy_in_time_leaves_nothing(root, g):
    name = unique("slow")
    # The stand-in boots in 2.5 s: one second is too short.
    with pytest.raises(girofle.UnhealthyError, match="not healthy after"):
        g.create(name, timeout=1)
    assert g.list() == [] and containers_of(root.path) == []
    assert not (root.path / "instances" / name).exists()


def test_conflicts_damage_mismatch_and_failed_commands(root, g):
    name = unique("err")
    record = g.create(name)
    url = project_url(record.external_url, root_password(root.path, name))
    refs = push_project(root.tmp / "work", url)

    # A duplicate name: AlreadyExistsError, a kind of ConflictError.
    with pytest.raises(girofle.ConflictError) as e:
        g.create(name)
    assert type(e.value) is girofle.AlreadyExistsError
    # A taken address: ConflictError naming the holder.
    port = record.bindings.http_port
    with pytest.raises(girofle.ConflictError, match=f"instance `{name}`") as e:
        g.create(unique("other"), http_port=port)
    assert type(e.value) is girofle.ConflictError
    assert [s.name for s in g.list()] == [name]

    # Busy: a backup holds the instance (its progress callback keeps it going) while
    # another thread tries to reconfigure it.
    holding = threading.Event()
    release = threading.Event()

    def slow(files: int, size: int) -> None:
        holding.set()
        release.wait(30)

    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(g.backup(name, progress=slow)))
    worker.start()
    try:
        assert holding.wait(60), "the backup never reported progress"
        with pytest.raises(girofle.ConflictError, match="busy") as e:
            g.reconfigure(name, set=["gitlab_rails['time_zone']=UTC"])
        assert "`backup`" in str(e.value)
    finally:
        release.set()
        worker.join()
    assert outcome and isinstance(outcome[0], girofle.Backup), outcome
    backup_id = outcome[0].id  # type: ignore[attr-defined]

    # One flipped byte in the local archive: verify and restore refuse it.
    archive = root.path / "backups" / f"{backup_id}.tar.zst"
    pristine = archive.read_bytes()
    damaged = bytearray(pristine)
    damaged[len(damaged) // 2] ^= 0x01
    archive.write_bytes(bytes(damaged))
    with pytest.raises(girofle.CorruptError) as e:
        g.verify(backup_id)
    assert str(e.value).startswith("corrupt ")
    with pytest.raises(girofle.CorruptError):
        g.restore(backup_id, as_name=unique("bad"))
    archive.write_bytes(pristine)
    assert g.verify(backup_id).ok

    # A truncated archive: left out of the listing, and a warning names it and the store.
    archive.write_bytes(pristine[: len(pristine) // 2])
    with pytest.warns(UserWarning, match="is damaged and not listed") as caught:
        assert backup_id not in [b.id for b in g.list_backups(name)]
    message = str(caught[0].message)
    assert f"`{backup_id}` in store `local`" in message and "bytes" in message, message
    assert f'verify("{backup_id}", store="local")' in message, message
    assert caught[0].filename == __file__, caught[0].filename
    archive.write_bytes(pristine)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backup_id in [b.id for b in g.list_backups(name)]

    # Another GitLab version: refused before anything, naming the image to use.
    with pytest.raises(girofle.VersionMismatchError, match="17.5.1-ce.0"):
        g.restore(backup_id, as_name=unique("v"), image=OTHER_VERSION_IMAGE)
    assert [s.name for s in g.list()] == [name]
    assert len(containers_of(root.path)) == 1

    # A command GitLab runs failing inside the container: CommandError, nothing listed.
    container = f"girofle-{name}"
    broken = "printf '#!/bin/sh\\necho disk on fire >&2\\nexit 3\\n' > /opt/gitlab/bin/gitlab-backup"
    subprocess.run(["docker", "exec", container, "sh", "-c", broken], check=True)
    with pytest.raises(girofle.CommandError, match="disk on fire") as e:
        g.backup(name)
    assert "gitlab-backup create" in str(e.value)
    assert [b.id for b in g.list_backups(name)] == [backup_id]

    assert ls_remote(url) == refs
    assert g.show(name).state == "running"
