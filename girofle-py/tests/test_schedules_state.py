"""Schedules (set and list, as `girofle schedule set/list`) and the state export/import
round trip through the Python module."""

from __future__ import annotations

import dataclasses
import stat

import pytest

import girofle
from conftest import unique


def test_schedules_and_state_round_trip(make_root, tmp_path):
    nas = tmp_path / "nas"
    nas.mkdir()
    root = make_root(extra=f'\n[stores.nas]\nurl = "file://{nas}"\n')
    g = root.open()
    name, idle = unique("sch"), unique("idle")
    g.create(name)
    g.create(idle)

    default = g.schedule(name)
    assert isinstance(default, girofle.Schedule) and default.enabled
    listed = {s.instance: s for s in g.schedules()}
    assert set(listed) == {name, idle}
    assert not listed[name].own and listed[name].schedule == default
    assert listed[name].last_backup is None and listed[name].next_backup is not None

    changed = g.set_schedule(
        name,
        backup="0 */4 * * *",
        copy="30 2 * * *",
        store="nas",
        timezone="Europe/Paris",
        strategy="cold",
        keep_last=3,
        keep_daily=7,
    )
    assert changed.backup == "0 */4 * * *" and changed.copy == "30 2 * * *"
    assert changed.store == "nas" and changed.timezone == "Europe/Paris"
    assert changed.strategy == "cold"
    assert changed.retention == girofle.RetentionPolicy(keep_last=3, keep_daily=7, keep_weekly=0)
    assert changed.to_dict()["retention"] == {"keep_last": 3, "keep_daily": 7, "keep_weekly": 0}
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.backup = "* * * * *"  # type: ignore[misc]
    # Arguments not given keep their value.
    off = g.set_schedule(name, enabled=False, copy="off")
    assert not off.enabled and off.copy is None and off.backup == "0 */4 * * *"
    assert off.retention.keep_last == 3
    assert g.schedule(name) == off
    listed = {s.instance: s for s in g.schedules()}
    assert listed[name].own and listed[name].schedule == off
    assert not listed[idle].own and listed[idle].schedule == default
    assert girofle.ScheduleStatus.from_dict(listed[name].to_dict()) == listed[name]

    # Refused changes change nothing, with core's message.
    with pytest.raises(girofle.InvalidInputError, match="5 .minute hour"):
        g.set_schedule(name, backup="every tuesday")
    with pytest.raises(ValueError, match="not a configured remote store"):
        g.set_schedule(name, store="nowhere")
    with pytest.raises(girofle.NotFoundError):
        g.set_schedule("ghost", keep_last=1)
    assert g.schedule(name) == off

    # Export: mode 0600, every instance; import into a fresh root gives the same book.
    file = tmp_path / "state.tar.zst"
    exported = g.export_state(file)
    assert isinstance(exported, girofle.StateReport)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert sorted(exported.instances) == sorted([name, idle])
    assert exported.bytes == file.stat().st_size and exported.journal_lines > 0

    fresh = tmp_path / "taken-over"
    imported = girofle.Girofle.import_state(fresh, file)
    assert sorted(imported.instances) == sorted([name, idle]) and not imported.replaced
    assert imported.journal_lines_added == exported.journal_lines
    h = girofle.Girofle(fresh)
    assert {s.name for s in h.list()} == {name, idle}
    assert h.show(name).record == g.show(name).record
    assert h.schedule(name) == off and h.schedule(idle) == default
    again = girofle.Girofle.import_state(fresh, file)
    assert again.journal_lines_added == 0, "importing twice added journal lines"

    # A root with other instances refuses it, unless forced.
    other = make_root("other")
    o = other.open()
    o.create(unique("mine"))
    with pytest.raises(girofle.ConflictError):
        girofle.Girofle.import_state(other.path, file)
    forced = girofle.Girofle.import_state(other.path, file, force=True)
    assert forced.replaced
    assert {s.name for s in girofle.Girofle(other.path).list() if s.record} == {name, idle}
