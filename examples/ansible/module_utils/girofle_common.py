"""Shared by the girofle_* Ansible modules: opening a Girofle root, and turning Girofle's
exceptions into a failed task with core's message."""

from __future__ import annotations

import os

try:
    import girofle

    HAS_GIROFLE = True
    GIROFLE_IMPORT_ERROR = None
except ImportError as e:  # reported by require_girofle()
    girofle = None
    HAS_GIROFLE = False
    GIROFLE_IMPORT_ERROR = e

COMMON_ARGS = dict(
    root=dict(type="path", default=os.environ.get("GIROFLE_ROOT", "/var/lib/girofle")),
    docker_host=dict(type="str"),
)


def require_girofle(module):
    if not HAS_GIROFLE:
        module.fail_json(
            msg="the Python module `girofle` is not importable by the interpreter running this "
            "module: `pip install ./girofle-py` into it (or set ansible_python_interpreter)",
            exception=str(GIROFLE_IMPORT_ERROR),
        )


def is_initialised(root):
    return os.path.exists(os.path.join(root, "girofle.toml"))


def open_root(module, initialise=True):
    """Girofle opened on the module's root; an uninitialised root is initialised first
    (unless `initialise` is false, then None is returned)."""
    root = module.params["root"]
    if not is_initialised(root):
        if not initialise:
            return None
        girofle.Girofle.init(root)
    return girofle.Girofle(root, docker_host=module.params["docker_host"])


def fail(module, error, **result):
    """A failed task from a Girofle exception: core's message and the error kind."""
    module.fail_json(
        msg=str(error),
        error_kind=getattr(error, "kind", None),
        error_class=type(error).__name__,
        **result,
    )
