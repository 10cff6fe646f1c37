"""What Girofle's methods return: typed, read-only objects.

Each is a frozen dataclass made from core's result (the same data as the CLI's
``--json``): attributes in place of keys, times as aware :class:`~datetime.datetime`
in UTC, lists as tuples, mappings as :class:`FrozenDict`. Assigning an attribute raises
:class:`dataclasses.FrozenInstanceError`; ``to_dict()`` gives the ``--json`` data back
(times as RFC 3339 strings), and ``from_dict()`` reads it.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal, TypeVar

__all__ = [
    "Backup",
    "BackupEntry",
    "Bindings",
    "CopyResult",
    "Decommissioned",
    "Moved",
    "DrillResult",
    "FrozenDict",
    "InitResult",
    "Instance",
    "InstanceState",
    "InstanceStatus",
    "KeyInfo",
    "PruneResult",
    "Recovery",
    "RestoreResult",
    "Result",
    "RetentionPolicy",
    "RunRecord",
    "Schedule",
    "ScheduleStatus",
    "SignResult",
    "Signed",
    "StateReport",
    "Strategy",
    "TrustedKey",
    "VerifyResult",
]

K = TypeVar("K")
V = TypeVar("V")
R = TypeVar("R", bound="Result")

Strategy = Literal["online", "cold"]
Signed = Literal["trusted", "unsigned", "untrusted", "bad"]
InstanceState = Literal[
    "running", "starting", "unhealthy", "stopped", "missing", "unreachable", "unknown",
    "commissioning",
]


class FrozenDict(dict[K, V], typing.Generic[K, V]):
    """A dict that cannot be changed (and so can be hashed); equal to the plain dict."""

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> typing.NoReturn:
        raise TypeError(f"{type(self).__name__} is read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only
    __ior__ = _read_only  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __repr__(self) -> str:
        return dict.__repr__(self)

    def __copy__(self) -> FrozenDict[K, V]:
        return self

    def __deepcopy__(self, memo: object) -> FrozenDict[K, V]:
        return self


_FRACTION = re.compile(r"^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def _parse_time(text: str) -> datetime:
    """RFC 3339 as chrono writes it (nanoseconds; Python keeps microseconds)."""
    m = _FRACTION.match(text)
    if not m:
        raise ValueError(f"`{text}` is not an RFC 3339 time")
    fraction = f".{m.group(2)[:6]:0<6}" if m.group(2) else ""
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(m.group(1) + fraction + zone).astimezone(timezone.utc)


def _format_time(t: datetime) -> str:
    t = t.astimezone(timezone.utc)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += f".{t.microsecond:06d}".rstrip("0")
    return text + "Z"


def _convert(hint: Any, value: Any) -> Any:
    """`value` (plain data) as the type `hint` says."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(inner, value)
    if isinstance(hint, type) and issubclass(hint, Result):
        return hint.from_dict(value)
    if hint is datetime:
        return _parse_time(value)
    if origin is tuple:
        inner = typing.get_args(hint)[0]
        return tuple(_convert(inner, v) for v in value)
    if origin is FrozenDict:
        _, inner = typing.get_args(hint)
        return FrozenDict({k: _convert(inner, v) for k, v in value.items()})
    return value


def _plain(value: Any) -> Any:
    """The JSON data of a field's value."""
    if isinstance(value, Result):
        return value.to_dict()
    if isinstance(value, datetime):
        return _format_time(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Result:
    """Base of Girofle's result objects."""

    __slots__ = ()
    _hints: ClassVar[dict[str, Any]]

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        """Reads core's data (``to_dict()``'s, the CLI's ``--json``); keys this version
        does not know are ignored."""
        hints = cls.__dict__.get("_hints")
        if hints is None:
            module = sys.modules[cls.__module__].__dict__
            hints = typing.get_type_hints(cls, globalns=module)
            cls._hints = hints
        values = {
            f.name: _convert(hints[f.name], data.get(f.name))
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        }
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The same data as the CLI's ``--json``: plain dicts, lists, strings, numbers."""
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }


_frozen = dataclass(frozen=True, slots=True)


@_frozen
class InitResult(Result):
    """What :meth:`Girofle.init` did."""

    root: str
    config_written: bool


@_frozen
class Bindings(Result):
    """Where an instance listens on the host."""

    ip: str
    http_port: int
    https_port: int
    ssh_port: int


@_frozen
class Instance(Result):
    """An instance as the inventory records it."""

    name: str
    image: str
    bindings: Bindings
    hostname: str | None
    external_url: str
    settings: FrozenDict[str, str]
    """Managed gitlab.rb settings: key to ``REDACTED`` (to the Ruby literal with ``show(name, reveal=True)``)."""
    labels: FrozenDict[str, str]
    created_at: datetime
    stage: Literal["commissioning", "active"]
    host: str | None = None
    """The ``[hosts.NAME]`` it runs on; ``None`` for this machine's engine (``local``)."""

    def __repr__(self) -> str:
        return (
            f"Instance(name={self.name!r}, image={self.image!r}, "
            f"external_url={self.external_url!r}, stage={self.stage!r})"
        )


@_frozen
class InstanceStatus(Result):
    """An instance with its state, reconciled between the inventory and the engine."""

    name: str
    state: InstanceState
    container: str
    image: str
    url: str | None
    record: Instance | None
    """``None`` for ``unknown`` containers (labelled for this root, not in the inventory)."""
    pin_overrides: tuple[str, ...] = ()
    """Lines of gitlab.rb that override the addresses Girofle gave the instance."""
    host: str = "local"
    """The host it runs on (``local``: this machine's engine)."""

    @property
    def running(self) -> bool:
        """Running and healthy."""
        return self.state == "running"

    def __repr__(self) -> str:
        return f"InstanceStatus(name={self.name!r}, state={self.state!r}, url={self.url!r})"


@_frozen
class Decommissioned(Result):
    """What :meth:`Girofle.remove` did."""

    name: str
    archived_to: str | None
    """Where the data was moved (``None`` when purged)."""
    final_backup: str | None
    """The id of the final backup, when one was taken."""
    host: str = "local"
    """The host whose directory holds ``archived_to``."""


@_frozen
class Moved(Result):
    """What :meth:`Girofle.move_instance` did (GitLab's checks passed on the new host)."""

    name: str
    to: str
    record: Instance
    """The instance as the inventory now has it (its host, its addresses)."""
    addresses_kept: bool
    """``False``: the target's pool lacked the old addresses; ``record.external_url`` is new."""
    previous_url: str
    downtime_secs: float
    """From the old container's stop to the new one serving with its checks passed."""
    took_secs: float
    bytes_copied: int
    kept_aside: str | None
    """Where the old data is kept on the old host (``None`` with ``purge``)."""


@_frozen
class Backup(Result):
    """A backup just taken."""

    id: str
    store: str
    strategy: Strategy
    gitlab_version: str
    files: int
    bytes: int
    archive_size: int
    duration_ms: int
    downtime_ms: int | None
    """How long GitLab was down (cold backups)."""


@_frozen
class BackupEntry(Result):
    """A complete backup in a store."""

    id: str
    store: str
    instance: str
    created_at: datetime
    strategy: Strategy
    gitlab_version: str
    image: str
    files: int
    bytes: int
    archive_size: int
    signed: Signed
    """Whether a key this fleet trusts signed it; only ``trusted`` ones restore."""
    key_id: str | None


@_frozen
class SignResult(Result):
    """What :meth:`Girofle.sign_backup` did."""

    id: str
    store: str
    key_id: str
    signed_now: bool
    """False when a trusted key had signed it already (nothing changed)."""
    was: Signed


@_frozen
class TrustedKey(Result):
    """A key backups may be signed by."""

    key_id: str
    public_key: str
    source: str


@_frozen
class KeyInfo(Result):
    """The fleet's public key (:meth:`Girofle.public_key`, ``girofle key show``)."""

    key_id: str
    public_key: str
    """The base64 line another fleet's ``[trust] keys`` takes."""
    pub_file: str
    """minisign's ``.pub`` text: ``minisign -V -p FILE`` reads it."""
    path: str
    trusted: tuple[TrustedKey, ...]


@_frozen
class VerifyResult(Result):
    """A backup checked end to end (manifest, index, archive hashes)."""

    id: str
    ok: bool
    files: int
    bytes: int


@_frozen
class DrillResult(Result):
    """A backup restored into a throw-away instance and checked."""

    id: str
    valid_for_version: str | None
    repositories: int
    fsck_clean: bool
    secrets_ok: bool
    checked_at: datetime
    detail: str
    gitlab_check_ok: bool = False
    """``gitlab-rake gitlab:check`` reported no failing check."""
    check_failures: tuple[str, ...] = ()
    """What GitLab's checks printed that failed."""


@_frozen
class CopyResult(Result):
    """A backup copied to another store."""

    id: str
    to: str
    size: int


@_frozen
class PruneResult(Result):
    """The backups a retention policy deleted."""

    deleted: tuple[str, ...]


@_frozen
class RestoreResult(Result):
    """What a restore did."""

    id: str
    name: str
    url: str
    in_place: bool
    image: str
    gitlab_version: str
    files: int
    bytes: int
    duration_ms: int
    modes_stripped: tuple[str, ...] = ()
    """Files restored without the setuid, setgid or sticky bit the backup gave them."""
    modes_stripped_count: int = 0


@_frozen
class RetentionPolicy(Result):
    keep_last: int
    keep_daily: int
    keep_weekly: int


@_frozen
class Schedule(Result):
    """An instance's effective schedule."""

    backup: str
    """Backup cron (5 fields, or 6 with seconds first)."""
    copy: str | None
    """Copy cron; ``None``: no copies."""
    timezone: str
    store: str | None
    """The remote store copies go to; ``None``: no copies."""
    strategy: Strategy
    retention: RetentionPolicy
    enabled: bool


@_frozen
class RunRecord(Result):
    """One scheduled run."""

    id: int
    instance: str
    kind: Literal["backup", "copy"]
    slot: datetime
    started_at: datetime
    ended_at: datetime | None
    outcome: Literal["running", "ok", "failed", "interrupted"]
    store: str
    backup_id: str | None
    copied: tuple[str, ...]
    pruned: tuple[str, ...]
    error: str | None
    pid: int
    host: str


@_frozen
class ScheduleStatus(Result):
    """One line of ``girofle schedule list``."""

    instance: str
    own: bool
    """Whether the instance has a schedule of its own (else girofle.toml's)."""
    schedule: Schedule
    last_backup: RunRecord | None
    last_copy: RunRecord | None
    next_backup: datetime | None
    next_copy: datetime | None


@_frozen
class StateReport(Result):
    """What a state export or import did."""

    file: str
    root: str
    format_version: int
    instances: tuple[str, ...]
    journal_lines: int
    journal_lines_added: int
    replaced: bool
    bytes: int
    signing_key: str | None
    trusted_imported_key: str | None


@_frozen
class Recovery(Result):
    """What recovery did about one interrupted operation or leftover."""

    instance: str
    operation: str
    """The operation that was interrupted (``cold-backup``, ``online-backup``,
    ``restore``, ``decommission``, ``commission``), or ``leftovers``."""
    phase: str | None
    pid: int | None
    host: str | None
    started_at: datetime | None
    actions: tuple[str, ...]
    """What recovery did, in order."""
    outcome: Literal["rolled-back", "finished", "cleaned", "failed"]
    error: str | None
