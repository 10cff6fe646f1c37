"""Girofle: run a fleet of GitLab instances in Docker and keep their data safe.

The Python face of ``girofle-core`` (the same behaviour as the ``girofle`` command line)::

    import girofle

    girofle.Girofle.init("/var/lib/girofle")
    g = girofle.Girofle("/var/lib/girofle")
    web = g.create("web", settings={"gitlab_rails['time_zone']": "UTC"})
    backup = g.backup("web", progress=lambda files, size: print(files, size))
    g.verify(backup.id)
    g.restore(backup.id, as_name="web-copy")

Methods return typed, read-only objects (``backup.id``, ``backup.to_dict()``), release
the GIL while they work, stop cleanly on Ctrl-C or a :class:`Cancel` token, and raise a
subclass of :class:`GirofleError`. Long operations have an ``*_async`` variant for
asyncio (``await g.backup_async("web")``) whose cancellation cancels the operation.
"""

from ._client import Girofle, Progress, Settings
from ._girofle import (
    REDACTED,
    AlreadyExistsError,
    BackendError,
    Cancel,
    CancelledError,
    CommandError,
    ConflictError,
    CorruptError,
    FileSystemError,
    GirofleError,
    InvalidInputError,
    NotFoundError,
    UnhealthyError,
    VersionMismatchError,
    __version__,
    is_secret_key,
    parse_setting,
)
from ._results import (
    Backup,
    BackupEntry,
    Bindings,
    CopyResult,
    Decommissioned,
    Moved,
    DrillResult,
    FrozenDict,
    InitResult,
    Instance,
    InstanceState,
    InstanceStatus,
    KeyInfo,
    PruneResult,
    Recovery,
    RestoreResult,
    Result,
    RetentionPolicy,
    RunRecord,
    Schedule,
    ScheduleStatus,
    Signed,
    SignResult,
    StateReport,
    Strategy,
    TrustedKey,
    VerifyResult,
)

__all__ = [
    "REDACTED",
    "AlreadyExistsError",
    "Backup",
    "BackupEntry",
    "BackendError",
    "Bindings",
    "Cancel",
    "CancelledError",
    "CommandError",
    "ConflictError",
    "CopyResult",
    "CorruptError",
    "Decommissioned",
    "Moved",
    "DrillResult",
    "FileSystemError",
    "FrozenDict",
    "Girofle",
    "GirofleError",
    "InitResult",
    "Instance",
    "InstanceState",
    "InstanceStatus",
    "InvalidInputError",
    "KeyInfo",
    "NotFoundError",
    "Progress",
    "PruneResult",
    "Recovery",
    "RestoreResult",
    "Result",
    "RetentionPolicy",
    "RunRecord",
    "Schedule",
    "ScheduleStatus",
    "Settings",
    "SignResult",
    "Signed",
    "StateReport",
    "Strategy",
    "TrustedKey",
    "UnhealthyError",
    "VerifyResult",
    "VersionMismatchError",
    "__version__",
    "is_secret_key",
    "parse_setting",
]
