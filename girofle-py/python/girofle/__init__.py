"""Girofle: run a fleet of GitLab instances in Docker and keep their data safe.

The Python face of ``girofle-core`` (the same behaviour as the ``girofle`` command line)::

    import girofle

    girofle.Girofle.init("/var/lib/girofle")
    g = girofle.Girofle("/var/lib/girofle")
    web = g.create("web", settings={"gitlab_rails['time_zone']": "UTC"})
    backup = g.backup("web")
    g.verify(backup["id"])
    g.restore(backup["id"], as_name="web-copy")

Every method returns plain data (dicts and lists, the same as the CLI's ``--json``),
releases the GIL while it works, and raises a subclass of :class:`GirofleError`.
"""

from ._girofle import (
    REDACTED,
    AlreadyExistsError,
    BackendError,
    CommandError,
    ConflictError,
    CorruptError,
    FileSystemError,
    Girofle,
    GirofleError,
    InvalidInputError,
    NotFoundError,
    UnhealthyError,
    VersionMismatchError,
    __version__,
    is_secret_key,
    parse_setting,
)

__all__ = [
    "REDACTED",
    "AlreadyExistsError",
    "BackendError",
    "CommandError",
    "ConflictError",
    "CorruptError",
    "FileSystemError",
    "Girofle",
    "GirofleError",
    "InvalidInputError",
    "NotFoundError",
    "UnhealthyError",
    "VersionMismatchError",
    "__version__",
    "is_secret_key",
    "parse_setting",
]
