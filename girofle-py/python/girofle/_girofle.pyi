"""Type stubs of the compiled module ``girofle._girofle`` (re-exported by ``girofle``).

Results are plain dicts and lists: the ``TypedDict``s below name their keys. Times are
RFC 3339 strings in UTC, exactly as in the CLI's ``--json``.
"""

from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from typing import Literal, TypedDict

__version__: str
REDACTED: str
"""The value shown for secret settings (passwords, tokens) in records."""

# --- results ------------------------------------------------------------------------

class Bindings(TypedDict):
    ip: str
    http_port: int
    https_port: int
    ssh_port: int

class InstanceRecord(TypedDict):
    name: str
    image: str
    bindings: Bindings
    hostname: str | None
    external_url: str
    settings: dict[str, str]
    """Managed gitlab.rb settings: key to Ruby literal (secret ones are ``REDACTED``)."""
    labels: dict[str, str]
    created_at: str
    stage: Literal["commissioning", "active"]

InstanceState = Literal[
    "running", "starting", "unhealthy", "stopped", "missing", "unknown", "commissioning"
]

class InstanceStatus(TypedDict):
    name: str
    state: InstanceState
    container: str
    image: str
    url: str | None
    record: InstanceRecord | None
    """Absent for ``unknown`` containers (labelled for this root, not in the inventory)."""

class Decommissioned(TypedDict):
    name: str
    archived_to: str | None
    final_backup: str | None

class BackupReport(TypedDict):
    id: str
    store: str
    strategy: Literal["online", "cold"]
    gitlab_version: str
    files: int
    bytes: int
    archive_size: int
    duration_ms: int
    downtime_ms: int | None

class BackupEntry(TypedDict):
    id: str
    store: str
    instance: str
    created_at: str
    strategy: Literal["online", "cold"]
    gitlab_version: str
    image: str
    files: int
    bytes: int
    archive_size: int

class Verified(TypedDict):
    id: str
    ok: bool
    files: int
    bytes: int

class DrillReport(TypedDict):
    id: str
    valid_for_version: str | None
    repositories: int
    fsck_clean: bool
    secrets_ok: bool
    checked_at: str
    detail: str

class Copied(TypedDict):
    id: str
    to: str
    size: int

class RestoreReport(TypedDict):
    id: str
    name: str
    url: str
    in_place: bool
    image: str
    gitlab_version: str
    files: int
    bytes: int
    duration_ms: int

class InitResult(TypedDict):
    root: str
    config_written: bool

Settings = Sequence[str] | Mapping[str, str | int | float | bool | None]
"""``["KEY=VALUE", ...]`` or ``{KEY: VALUE}``; a value is a Ruby literal or a bare word."""

Progress = Callable[[int, int], object]
"""Called with (files, bytes) so far."""

# --- errors -------------------------------------------------------------------------

class GirofleError(Exception):
    """Base class of every error Girofle raises; ``kind`` is core's error kind."""

    kind: str | None

class NotFoundError(GirofleError, LookupError): ...
class ConflictError(GirofleError): ...
class AlreadyExistsError(ConflictError): ...
class InvalidInputError(GirofleError, ValueError): ...
class UnhealthyError(GirofleError): ...
class CorruptError(GirofleError): ...
class VersionMismatchError(GirofleError): ...
class CommandError(GirofleError): ...
class FileSystemError(GirofleError, OSError): ...
class BackendError(GirofleError): ...

# --- the root -----------------------------------------------------------------------

def parse_setting(text: str) -> tuple[str, str]:
    """``"KEY=VALUE"`` -> ``(key, ruby_literal)`` as stored in records."""

def is_secret_key(key: str) -> bool:
    """Whether a setting key counts as secret (its value is recorded ``REDACTED``)."""

class Girofle:
    """Girofle opened on an initialised root (see :meth:`init`)."""

    def __new__(
        cls, root: str | PathLike[str], docker_host: str | None = None
    ) -> Girofle: ...
    @staticmethod
    def init(root: str | PathLike[str]) -> InitResult: ...
    @property
    def root(self) -> str: ...

    # instances
    def create(
        self,
        name: str,
        image: str | None = None,
        ip: str | None = None,
        http_port: int | None = None,
        https_port: int | None = None,
        ssh_port: int | None = None,
        hostname: str | None = None,
        settings: Settings | None = None,
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> InstanceRecord: ...
    def list(self) -> list[InstanceStatus]: ...
    def show(self, name: str) -> InstanceStatus: ...
    def start(self, name: str) -> InstanceRecord: ...
    def stop(self, name: str) -> InstanceRecord: ...
    def restart(self, name: str) -> InstanceRecord: ...
    def reconfigure(
        self,
        name: str,
        set: Settings | None = None,
        unset: Sequence[str] | None = None,
    ) -> InstanceRecord: ...
    def remove(
        self, name: str, purge: bool = False, final_backup: bool = True
    ) -> Decommissioned: ...

    # backups
    def backup(
        self,
        name: str,
        strategy: Literal["online", "cold"] = "online",
        store: str | None = None,
        no_logs: bool = False,
        progress: Progress | None = None,
    ) -> BackupReport: ...
    def list_backups(
        self, name: str | None = None, store: str | None = None
    ) -> list[BackupEntry]: ...
    def verify(
        self, id: str, store: str | None = None, drill: bool = False
    ) -> Verified | DrillReport: ...
    def copy_backup(self, id: str, to: str, store: str | None = None) -> Copied: ...
    def prune(
        self,
        name: str | None = None,
        store: str | None = None,
        keep_last: int = 0,
        keep_daily: int = 0,
        keep_weekly: int = 0,
    ) -> list[str]: ...
    def restore(
        self,
        id: str,
        store: str | None = None,
        as_name: str | None = None,
        image: str | None = None,
        ip: str | None = None,
        http_port: int | None = None,
        https_port: int | None = None,
        ssh_port: int | None = None,
        timeout: float | None = None,
        progress: Progress | None = None,
    ) -> RestoreReport: ...
