#!/usr/bin/python
"""Ansible module: take, verify and restore Girofle backups."""

from __future__ import annotations

DOCUMENTATION = r"""
module: girofle_backup
short_description: Take, verify and restore backups of Girofle instances
description:
  - C(action=create) backs an instance up (always a change).
  - C(action=verify) checks a backup end to end (never a change; C(drill=true) restores it
    into a throw-away instance and checks repositories and secrets).
  - C(action=restore) restores a backup as a new instance (C(as_name)), which is no change
    when that instance exists already, or in place (always a change).
  - Supports check mode. Needs the Python module C(girofle) (C(pip install ./girofle-py)).
options:
  root: {description: Girofle root (default C($GIROFLE_ROOT) or /var/lib/girofle)., type: path}
  docker_host: {description: Docker engine address., type: str}
  action: {description: What to do., type: str, choices: [create, verify, restore], default: create}
  name: {description: Instance to back up (create)., type: str}
  id: {description: Backup id like C(web/20261125T220000Z) (verify, restore)., type: str}
  store: {description: Store name from girofle.toml (default C(local))., type: str}
  strategy: {description: C(online) (no downtime) or C(cold)., type: str, choices: [online, cold], default: online}
  no_logs: {description: Leave the logs out of the backup., type: bool, default: false}
  drill: {description: Verify by restoring into a throw-away instance., type: bool, default: false}
  as_name: {description: Restore as a new instance of this name., type: str}
  image: {description: Image to restore with (exactly the backup's GitLab version)., type: str}
  ip: {description: Address of the restored instance., type: str}
  http_port: {description: HTTP port of the restored instance., type: int}
  https_port: {description: HTTPS port of the restored instance., type: int}
  ssh_port: {description: SSH port of the restored instance., type: int}
  timeout: {description: Seconds to wait for health after a restore., type: int}
"""

EXAMPLES = r"""
- girofle_backup: {name: web}
  register: b
- girofle_backup: {action: verify, id: "{{ b.backup.id }}"}
- girofle_backup: {action: restore, id: "{{ b.backup.id }}", as_name: web-copy}
"""

RETURN = r"""
backup: {description: The backup taken (create)., type: dict, returned: when a backup was taken}
verification: {description: What verify found (verify)., type: dict, returned: when verified}
restore: {description: What the restore did (restore)., type: dict, returned: when restored}
instance: {description: The restored instance, when it existed already., type: dict, returned: sometimes}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.girofle_common import (
    COMMON_ARGS,
    fail,
    girofle,
    open_root,
    require_girofle,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            **COMMON_ARGS,
            action=dict(type="str", default="create", choices=["create", "verify", "restore"]),
            name=dict(type="str"),
            id=dict(type="str"),
            store=dict(type="str"),
            strategy=dict(type="str", default="online", choices=["online", "cold"]),
            no_logs=dict(type="bool", default=False),
            drill=dict(type="bool", default=False),
            as_name=dict(type="str"),
            image=dict(type="str"),
            ip=dict(type="str"),
            http_port=dict(type="int"),
            https_port=dict(type="int"),
            ssh_port=dict(type="int"),
            timeout=dict(type="int"),
        ),
        required_if=[
            ("action", "create", ("name",)),
            ("action", "verify", ("id",)),
            ("action", "restore", ("id",)),
        ],
        supports_check_mode=True,
    )
    require_girofle(module)
    p = module.params
    action = p["action"]
    try:
        if action == "create":
            if module.check_mode:
                module.exit_json(changed=True, msg=f"would back up `{p['name']}`")
            g = open_root(module)
            report = g.backup(p["name"], strategy=p["strategy"], store=p["store"], no_logs=p["no_logs"])
            module.exit_json(changed=True, backup=report.to_dict())

        g = open_root(module, initialise=False)
        if g is None:
            module.fail_json(msg=f"{p['root']} is not an initialised Girofle root")

        if action == "verify":
            # Read-only (a drill's throw-away instance is gone again): runs in check mode
            # too, but without the drill.
            drill = p["drill"] and not module.check_mode
            result = g.verify(p["id"], store=p["store"], drill=drill)
            module.exit_json(changed=False, verification=result.to_dict())

        target = p["as_name"]
        if target is not None:
            try:
                existing = g.show(target)
            except girofle.NotFoundError:
                existing = None
            if existing is not None:
                module.exit_json(changed=False, instance=existing.to_dict(), msg=f"`{target}` exists already; not restored")
        if module.check_mode:
            where = f"as `{target}`" if target else "in place"
            module.exit_json(changed=True, msg=f"would restore {p['id']} {where}")
        report = g.restore(
            p["id"],
            store=p["store"],
            as_name=target,
            image=p["image"],
            ip=p["ip"],
            http_port=p["http_port"],
            https_port=p["https_port"],
            ssh_port=p["ssh_port"],
            timeout=p["timeout"],
        )
        module.exit_json(changed=True, restore=report.to_dict())
    except girofle.GirofleError as e:
        fail(module, e)


if __name__ == "__main__":
    main()
