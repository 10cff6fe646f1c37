"""The Ansible modules (examples/ansible) on the real engine, run by ansible-core: the
playbook commissions, backs up, verifies and restores as a new name; a second run changes
only the new backup; check mode changes nothing; girofle_instance moves between states
idempotently."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import girofle
from conftest import containers_of, managed_block, unique

ANSIBLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "ansible"
BIN = Path(sys.executable).parent


def _env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_MODULE_UTILS": str(ANSIBLE_DIR / "module_utils"),
        "ANSIBLE_LIBRARY": str(ANSIBLE_DIR / "library"),
        "LC_ALL": "C.UTF-8",
    }


def playbook(tmp: Path, root: Path, instance: str, *extra: str) -> dict[str, str]:
    """Runs the playbook; returns {task name: ok/changed/skipping}."""
    out = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i", "localhost,",
            "-c", "local",
            str(ANSIBLE_DIR / "playbook.yml"),
            "-e", f"girofle_root={root}",
            "-e", f"instance={instance}",
            *extra,
        ],
        env=_env(tmp),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert out.returncode == 0, f"ansible-playbook failed:\n{out.stdout}\n{out.stderr}"
    statuses: dict[str, str] = {}
    task = None
    for line in out.stdout.splitlines():
        if m := re.match(r"^TASK \[(.+?)\]", line):
            task = m.group(1)
        elif task and (m := re.match(r"^(ok|changed|skipping|fatal|failed): \[localhost\]", line)):
            statuses[task] = m.group(1)
            task = None
    return statuses


def module(tmp: Path, name: str, args: dict[str, object], check: bool = False) -> dict:
    """Runs one module ad hoc; returns its result (with `changed`)."""
    out = subprocess.run(
        [
            str(BIN / "ansible"),
            "localhost",
            "-i", "localhost,",
            "-c", "local",
            "-e", f"ansible_python_interpreter={sys.executable}",
            "-m", name,
            "-a", json.dumps(args),
            *(["--check", "--diff"] if check else []),
        ],
        env=_env(tmp),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    text = out.stdout
    m = re.search(r"\| (\w+)[^{]*=> (\{.*\})", text, re.S)
    assert m, f"no result from ansible:\n{text}\n{out.stderr}"
    result = json.loads(m.group(2))
    result["_stdout"] = text
    assert out.returncode == 0, f"{name} {args} failed: {result.get('msg')}"
    return result


def test_playbook_commission_backup_verify_restore(make_root, tmp_path):
    root = make_root()
    instance = unique("ans")
    first = playbook(tmp_path, root.path, instance)
    assert first == {
        "Commission the instance": "changed",
        "Back it up": "changed",
        "Verify the backup": "ok",
        "Restore it as a new instance": "changed",
    }, first
    g = root.open()
    states = {s.name: s.state for s in g.list()}
    assert states == {instance: "running", f"{instance}-copy": "running"}
    rb = managed_block(root.path / "instances" / instance / "config" / "gitlab.rb")
    assert "gitlab_rails['time_zone'] = 'UTC'" in rb
    assert "gitlab_rails['gitlab_default_theme'] = 2" in rb
    assert len(g.list_backups(instance)) == 1

    second = playbook(tmp_path, root.path, instance)
    assert second["Commission the instance"] == "ok", second
    assert second["Restore it as a new instance"] == "ok", second
    assert second["Back it up"] == "changed"
    assert len(g.list_backups(instance)) == 2
    assert len(containers_of(root.path)) == 2


def test_check_mode_on_an_empty_root_changes_nothing(make_root, tmp_path):
    root = make_root()
    inventory = (root.path / "inventory.db").read_bytes()
    before = sorted(p.relative_to(root.path) for p in root.path.rglob("*"))
    instance = unique("chk")
    statuses = playbook(tmp_path, root.path, instance, "--check", "--diff")
    assert statuses["Commission the instance"] == "changed", statuses
    assert statuses["Back it up"] == "changed", statuses
    assert containers_of(root.path) == []
    g = root.open()
    assert g.list() == [] and g.list_backups() == []
    assert sorted(p.relative_to(root.path) for p in root.path.rglob("*")) == before
    assert (root.path / "inventory.db").read_bytes() == inventory

    # A root that does not exist yet is not even created.
    fresh = tmp_path / "fresh"
    statuses = playbook(tmp_path, fresh, unique("chk"), "--check")
    assert statuses["Commission the instance"] == "changed"
    assert not fresh.exists()


def test_instance_states_are_idempotent(make_root, tmp_path):
    root = make_root()
    name = unique("st")
    base = {"root": str(root.path), "name": name}
    theme = {"gitlab_rails['gitlab_default_theme']": 2}

    assert module(tmp_path, "girofle_instance", {**base, "state": "present", "settings": theme})["changed"]
    again = module(tmp_path, "girofle_instance", {**base, "state": "started", "settings": theme})
    assert not again["changed"] and again["instance"]["state"] == "running"

    # A new setting: check mode says so with a diff and changes nothing.
    tz = {**theme, "gitlab_rails['time_zone']": "UTC"}
    preview = module(tmp_path, "girofle_instance", {**base, "settings": tz}, check=True)
    assert preview["changed"]
    # The default callback prints the diff (--diff) before the result.
    # Values redacted there, as everywhere Girofle shows settings.
    added = [line for line in preview["_stdout"].splitlines() if line.startswith("+")]
    assert any("time_zone" in line and girofle.REDACTED in line for line in added), preview["_stdout"]
    assert not any("'UTC'" in line for line in added), preview["_stdout"]
    g = root.open()
    assert "gitlab_rails['time_zone']" not in g.show(name).record.settings
    assert module(tmp_path, "girofle_instance", {**base, "settings": tz})["changed"]
    assert g.show(name, reveal=True).record.settings["gitlab_rails['time_zone']"] == "'UTC'"
    # A changed value of an existing key is seen (the module compares revealed values).
    assert module(tmp_path, "girofle_instance", {**base, "settings": {**tz, "gitlab_rails['time_zone']": "Europe/Paris"}})["changed"]
    assert module(tmp_path, "girofle_instance", {**base, "settings": tz})["changed"]
    rb = managed_block(root.path / "instances" / name / "config" / "gitlab.rb")
    assert "gitlab_rails['time_zone'] = 'UTC'" in rb and "gitlab_default_theme'] = 2" in rb
    assert not module(tmp_path, "girofle_instance", {**base, "settings": tz})["changed"]

    stopped = {**base, "state": "stopped"}
    assert module(tmp_path, "girofle_instance", stopped, check=True)["changed"]
    assert g.show(name).state == "running"
    assert module(tmp_path, "girofle_instance", stopped)["changed"]
    assert g.show(name).state == "stopped"
    assert not module(tmp_path, "girofle_instance", stopped)["changed"]

    absent = {**base, "state": "absent", "final_backup": False}
    assert module(tmp_path, "girofle_instance", absent, check=True)["changed"]
    assert g.show(name).state == "stopped"
    done = module(tmp_path, "girofle_instance", absent)
    assert done["changed"] and done["decommissioned"]["final_backup"] is None
    with pytest.raises(girofle.NotFoundError):
        g.show(name)
    assert containers_of(root.path) == []
    assert not module(tmp_path, "girofle_instance", absent)["changed"]

    # A failure carries core's message and kind.
    out = subprocess.run(
        [str(BIN / "ansible"), "localhost", "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}",
         "-m", "girofle_instance", "-a", json.dumps({**base, "name": "Bad_Name"})],
        env=_env(tmp_path), capture_output=True, text=True, check=False, timeout=300,
    )
    assert out.returncode != 0
    assert "invalid_input" in out.stdout and "instance name" in out.stdout, out.stdout
