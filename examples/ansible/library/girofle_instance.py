#!/usr/bin/python
"""Ansible module: a GitLab instance run by Girofle, in the state you ask for."""

from __future__ import annotations

DOCUMENTATION = r"""
module: girofle_instance
short_description: A GitLab instance run by Girofle (commission, start, stop, reconfigure, decommission)
description:
  - Makes a Girofle instance exist (and run, or be stopped) with the managed gitlab.rb
    settings given, or decommissions it. Idempotent; supports check mode and diff mode.
  - Needs the Python module C(girofle) (C(pip install ./girofle-py)) in the interpreter
    running the module, on the Docker host.
options:
  root:
    description: Girofle root (initialised when absent, except in check mode). Default C($GIROFLE_ROOT) or /var/lib/girofle.
    type: path
  docker_host:
    description: Docker engine address (default from girofle.toml, then C($DOCKER_HOST)).
    type: str
  name:
    description: Instance name.
    type: str
    required: true
  state:
    description:
      - C(present) - the instance exists (a new one is started).
      - C(started) - it exists and runs. C(stopped) - it exists and is stopped.
      - C(absent) - decommissioned (final backup unless I(final_backup=false)).
    type: str
    choices: [present, started, stopped, absent]
    default: started
  settings:
    description:
      - The managed gitlab.rb settings, KEY to VALUE (a Ruby literal, or a bare word
        quoted as a string). When given, this is the whole managed block - keys not
        listed are removed. Omit to leave the settings alone.
      - Girofle shows every setting's value redacted; to compare them this module reads
        them with C(show(name, reveal=True)), which Girofle journals as C(reveal). Diffs
        show the keys with their values redacted.
    type: dict
  image: {description: Image of a new instance; an existing one running another image is an error., type: str}
  ip: {description: Address of a new instance (from the pool)., type: str}
  http_port: {description: HTTP port of a new instance., type: int}
  https_port: {description: HTTPS port of a new instance., type: int}
  ssh_port: {description: SSH port of a new instance., type: int}
  hostname: {description: Host name in the external URL of a new instance., type: str}
  labels: {description: Container labels of a new instance., type: dict}
  timeout: {description: Seconds to wait for health., type: int}
  purge: {description: With C(absent), delete the data instead of archiving it., type: bool, default: false}
  final_backup: {description: With C(absent), take a final backup first., type: bool, default: true}
"""

EXAMPLES = r"""
- name: A GitLab for the CI team
  girofle_instance:
    root: /var/lib/girofle
    name: ci
    state: started
    settings:
      gitlab_rails['time_zone']: UTC
"""

RETURN = r"""
instance:
  description: The instance as C(girofle instance show --json) prints it (absent after C(state=absent) or in check mode for a new one).
  type: dict
  returned: when it exists
decommissioned:
  description: What the decommission did (final backup id, where the data went).
  type: dict
  returned: when state=absent removed it
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.girofle_common import (
    COMMON_ARGS,
    fail,
    girofle,
    is_initialised,
    open_root,
    require_girofle,
)

RUNNING = ("running", "starting", "unhealthy", "commissioning")


def literal_settings(settings):
    """{KEY: VALUE} -> {KEY: ruby literal}, normalised exactly as Girofle stores them."""
    out = {}
    for key, value in (settings or {}).items():
        if value is None:
            text = "nil"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        k, v = girofle.parse_setting(f"{key}={text}")
        out[k] = v
    return out


def settings_changes(current, desired):
    """(set, unset) turning `current` (the revealed values) into `desired`."""
    to_set = [
        f"{k}={v}"
        for k, v in desired.items()
        if k not in current or (current[k] != v and current[k] != girofle.REDACTED)
    ]
    to_unset = [k for k in current if k not in desired]
    return to_set, to_unset


def main():
    module = AnsibleModule(
        argument_spec=dict(
            **COMMON_ARGS,
            name=dict(type="str", required=True),
            state=dict(type="str", default="started", choices=["present", "started", "stopped", "absent"]),
            settings=dict(type="dict"),
            image=dict(type="str"),
            ip=dict(type="str"),
            http_port=dict(type="int"),
            https_port=dict(type="int"),
            ssh_port=dict(type="int"),
            hostname=dict(type="str"),
            labels=dict(type="dict"),
            timeout=dict(type="int"),
            purge=dict(type="bool", default=False),
            final_backup=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    require_girofle(module)
    p = module.params
    name, state = p["name"], p["state"]
    try:
        desired = literal_settings(p["settings"]) if p["settings"] is not None else None
        initialised = is_initialised(p["root"])
        g = open_root(module, initialise=not module.check_mode)
        current = None
        if g is not None:
            try:
                current = g.show(name)
            except girofle.NotFoundError:
                current = None
        before = describe(current)
        after = dict(before)

        if state == "absent":
            if current is None:
                module.exit_json(changed=False, diff=dict(before=before, after=before))
            after = {"exists": False}
            if module.check_mode:
                module.exit_json(changed=True, diff=dict(before=before, after=after))
            done = g.remove(name, purge=p["purge"], final_backup=p["final_backup"])
            module.exit_json(changed=True, decommissioned=done.to_dict(), diff=dict(before=before, after=after))

        if current is None:
            after = {
                "exists": True,
                "state": "stopped" if state == "stopped" else "running",
                "settings": redacted(desired or {}),
            }
            if module.check_mode:
                module.exit_json(
                    changed=True,
                    msg=f"would commission `{name}`" + ("" if initialised else f" in a new root {p['root']}"),
                    diff=dict(before=before, after=after),
                )
            g.create(
                name,
                image=p["image"],
                ip=p["ip"],
                http_port=p["http_port"],
                https_port=p["https_port"],
                ssh_port=p["ssh_port"],
                hostname=p["hostname"],
                labels=p["labels"],
                timeout=p["timeout"],
            )
            if desired:
                # Through reconfigure rather than create's `settings`: girofle-core records
                # create's settings but does not write them into gitlab.rb yet.
                g.reconfigure(name, set=[f"{k}={v}" for k, v in desired.items()])
            if state == "stopped":
                g.stop(name)
            module.exit_json(changed=True, instance=g.show(name).to_dict(), diff=dict(before=before, after=after))

        record = current.record
        if p["image"] and p["image"] != record.image:
            module.fail_json(
                msg=f"instance `{name}` runs {record.image}, not {p['image']}: girofle_instance "
                "does not change the image of an existing instance (back it up, then restore "
                "it with girofle_backup and `image`)",
                instance=current.to_dict(),
            )
        to_set, to_unset = ([], [])
        if desired is not None:
            revealed = g.show(name, reveal=True).record
            to_set, to_unset = settings_changes(revealed.settings, desired)
            after["settings"] = redacted(desired)
        running = current.state in RUNNING
        want_running = {"started": True, "stopped": False}.get(state, running)
        after["state"] = "running" if want_running else "stopped"
        changed = bool(to_set or to_unset) or running != want_running
        if not changed or module.check_mode:
            module.exit_json(changed=changed, instance=current.to_dict(), diff=dict(before=before, after=after))
        if to_set or to_unset:
            # gitlab-ctl reconfigure needs GitLab up.
            if not running:
                g.start(name)
                running = True
            g.reconfigure(name, set=to_set, unset=to_unset)
        if want_running and not running:
            g.start(name)
        elif not want_running and running:
            g.stop(name)
        module.exit_json(changed=True, instance=g.show(name).to_dict(), diff=dict(before=before, after=after))
    except girofle.GirofleError as e:
        fail(module, e)


def redacted(settings):
    """Settings as diff mode may show them: every value replaced, as Girofle shows them."""
    return {k: girofle.REDACTED for k in settings}


def describe(status):
    """What diff mode shows of an instance."""
    if status is None:
        return {"exists": False}
    state = "running" if status.state in RUNNING else status.state
    return {
        "exists": True,
        "state": state,
        "settings": redacted(status.record.settings) if status.record else {},
    }


if __name__ == "__main__":
    main()
