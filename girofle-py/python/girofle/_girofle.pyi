"""Type stubs of the compiled module ``girofle._girofle``, the native half of ``girofle``.

Its results are plain dicts and lists (the ``TypedDict``s below name their keys; times
are RFC 3339 strings in UTC, exactly as in the CLI's ``--json``), which ``girofle.Girofle``
turns into the typed objects of ``girofle._results``.
"""

from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from typing import Literal, NotRequired, TypedDict

__version__: str
REDACTED: str
"""The value shown for every setting in records (``show(name, reveal=True)`` shows them)."""

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
    """Managed gitlab.rb settings: key to ``REDACTED`` (to the Ruby literal with ``show(name, reveal=True)``)."""
    labels: dict[str, str]
    created_at: str
    stage: Literal["commissioning", "active"]
    host: NotRequired[str]
    """The ``[hosts.NAME]`` it runs on; absent for this machine's engine (``local``)."""

InstanceState = Literal[
    "running", "starting", "unhealthy", "stopped", "missing", "unreachable", "unknown",
    "commissioning",
]

class InstanceStatus(TypedDict):
    name: str
    host: str
    state: InstanceState
    container: str
    image: str
    url: str | None
    record: InstanceRecord | None
    """Absent for ``unknown`` containers (labelled for this root, not in the inventory)."""

class Decommissioned(TypedDict):
    name: str
    host: str
    archived_to: str | None
    final_backup: str | None

class Moved(TypedDict):
    name: str
    to: str
    record: InstanceRecord
    addresses_kept: bool
    previous_url: str
    downtime_secs: float
    took_secs: float
    bytes_copied: int
    kept_aside: str | None

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

Signed = Literal["trusted", "unsigned", "untrusted", "bad"]

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
    signed: Signed
    """Only ``trusted`` backups verify, copy and restore."""
    key_id: str | None

class SignReport(TypedDict):
    id: str
    store: str
    key_id: str
    signed_now: bool
    was: Signed

class TrustedKey(TypedDict):
    key_id: str
    public_key: str
    source: str

class KeyInfo(TypedDict):
    key_id: str
    public_key: str
    pub_file: str
    """minisign's ``.pub`` text (what ``girofle key show`` prints)."""
    path: str
    trusted: list[TrustedKey]

class Verified(TypedDict):
    id: str
    ok: bool
    files: int
    bytes: int

class GitLabChecks(TypedDict):
    check_ok: bool
    secrets_ok: bool
    affected_rows: int | None
    failures: list[str]

class DrillReport(TypedDict):
    id: str
    valid_for_version: str | None
    repositories: int
    fsck_clean: bool
    secrets_ok: bool
    gitlab_check_ok: bool
    check_failures: list[str]
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
    modes_stripped: list[str]
    modes_stripped_count: int
    checks: GitLabChecks

class InitResult(TypedDict):
    root: str
    config_written: bool

class RetentionPolicy(TypedDict):
    keep_last: int
    keep_daily: int
    keep_weekly: int

class Schedule(TypedDict):
    backup: str
    copy: str | None
    timezone: str
    store: str | None
    strategy: Literal["online", "cold"]
    retention: RetentionPolicy
    enabled: bool

class RunRecord(TypedDict):
    id: int
    instance: str
    kind: Literal["backup", "copy"]
    slot: str
    started_at: str
    ended_at: str | None
    outcome: Literal["running", "ok", "failed", "interrupted"]
    store: str
    backup_id: str | None
    copied: list[str]
    pruned: list[str]
    error: str | None
    pid: int
    host: str

class ScheduleStatus(TypedDict):
    instance: str
    own: bool
    schedule: Schedule
    last_backup: RunRecord | None
    last_copy: RunRecord | None
    next_backup: str | None
    next_copy: str | None

class StateReport(TypedDict):
    file: str
    root: str
    format_version: int
    instances: list[str]
    journal_lines: int
    journal_lines_added: int
    replaced: bool
    bytes: int
    signing_key: str | None
    trusted_imported_key: str | None

class Recovery(TypedDict):
    instance: str
    operation: str
    phase: str | None
    pid: int | None
    host: str | None
    started_at: str | None
    actions: list[str]
    outcome: Literal["rolled-back", "finished", "cleaned", "failed"]
    error: str | None

Settings = Sequence[str] | Mapping[str, str | int | float | bool | None]
"""``["KEY=VALUE", ...]`` or ``{KEY: VALUE}``; a value is a Ruby literal or a bare word."""

Progress = Callable[[int, int], object]
"""Called with (files, bytes) so far; an exception it raises stops the call."""

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
class CancelledError(GirofleError): ...

# --- cancellation -------------------------------------------------------------------

class Cancel:
    """A cancellation token: ``cancel()`` from any thread stops the calls given it (they
    raise :class:`CancelledError` once core's recovery has run). It stays cancelled."""

    def __new__(cls) -> Cancel: ...
    def cancel(self) -> None: ...
    @property
    def cancelled(self) -> bool: ...

# --- the root -----------------------------------------------------------------------

def parse_setting(text: str) -> tuple[str, str]:
    """``"KEY=VALUE"`` -> ``(key, ruby_literal)`` as stored in records."""

def is_secret_key(key: str) -> bool:
    """Whether a setting key looks secret. Every setting's value is shown ``REDACTED``, whatever its key."""

class Girofle:
    """The native half of ``girofle.Girofle``: the same methods, returning plain data."""

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
        cancel: Cancel | None = None,
        host: str | None = None,
        host_labels: Mapping[str, str] | None = None,
    ) -> InstanceRecord: ...
    def list(self) -> list[InstanceStatus]: ...
    def show(self, name: str, reveal: bool = False) -> InstanceStatus: ...
    def start(self, name: str, cancel: Cancel | None = None) -> InstanceRecord: ...
    def stop(self, name: str, cancel: Cancel | None = None) -> InstanceRecord: ...
    def restart(self, name: str, cancel: Cancel | None = None) -> InstanceRecord: ...
    def reconfigure(
        self,
        name: str,
        set: Settings | None = None,
        unset: Sequence[str] | None = None,
        cancel: Cancel | None = None,
    ) -> InstanceRecord: ...
    def remove(
        self,
        name: str,
        purge: bool = False,
        final_backup: bool = True,
        cancel: Cancel | None = None,
    ) -> Decommissioned: ...

    def move_instance(
        self,
        name: str,
        to: str,
        purge: bool = False,
        timeout: float | None = None,
        cancel: Cancel | None = None,
    ) -> Moved: ...

    # backups
    def backup(
        self,
        name: str,
        strategy: Literal["online", "cold"] = "online",
        store: str | None = None,
        no_logs: bool = False,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
    ) -> BackupReport: ...
    def list_backups(
        self, name: str | None = None, store: str | None = None
    ) -> list[BackupEntry]: ...
    def verify(
        self,
        id: str,
        store: str | None = None,
        drill: bool = False,
        cancel: Cancel | None = None,
    ) -> Verified | DrillReport: ...
    def copy_backup(
        self, id: str, to: str, store: str | None = None, cancel: Cancel | None = None
    ) -> Copied: ...
    def prune(
        self,
        name: str | None = None,
        store: str | None = None,
        keep_last: int = 0,
        keep_daily: int = 0,
        keep_weekly: int = 0,
    ) -> list[str]: ...
    def sign_backup(self, id: str, store: str | None = None) -> SignReport: ...
    def public_key(self) -> KeyInfo: ...
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
        cancel: Cancel | None = None,
        replace: bool = False,
    ) -> RestoreReport: ...

    # schedules, state, recovery
    def schedules(self) -> list[ScheduleStatus]: ...
    def schedule(self, name: str) -> Schedule: ...
    def set_schedule(
        self,
        name: str,
        backup: str | None = None,
        copy: str | None = None,
        store: str | None = None,
        timezone: str | None = None,
        strategy: Literal["online", "cold"] | None = None,
        keep_last: int | None = None,
        keep_daily: int | None = None,
        keep_weekly: int | None = None,
        enabled: bool | None = None,
    ) -> Schedule: ...
    def export_state(self, file: str | PathLike[str]) -> StateReport: ...
    @staticmethod
    def import_state(
        root: str | PathLike[str], file: str | PathLike[str], force: bool = False
    ) -> StateReport: ...
    def recover(self) -> list[Recovery]: ...
