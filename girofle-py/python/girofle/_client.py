"""`girofle.Girofle`: the native methods (``girofle._girofle``) returning typed objects,
and an ``*_async`` variant of each long operation for asyncio.

The native half does the work: it releases the GIL, runs core's future on its own
runtime, and stops it on Ctrl-C, on a :class:`Cancel` token or when a progress callback
raises, running core's recovery before it raises. The async variants run the blocking
call in the event loop's default executor with a token of their own: cancelling the
asyncio task cancels the token, then waits (without blocking the loop) until the call has
stopped and recovery has run, so when ``CancelledError`` reaches the awaiting code the
instance is consistent again and its lock is free.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, Union

from . import _girofle
from ._girofle import Cancel
from ._results import (
    Backup,
    BackupEntry,
    CopyResult,
    Decommissioned,
    DrillResult,
    InitResult,
    Instance,
    InstanceStatus,
    KeyInfo,
    Moved,
    PruneResult,
    Recovery,
    RestoreResult,
    Schedule,
    ScheduleStatus,
    SignResult,
    StateReport,
    Strategy,
    VerifyResult,
)

__all__ = ["Girofle", "Progress", "Settings"]

T = TypeVar("T")

Settings = Union[Sequence[str], Mapping[str, Union[str, int, float, bool, None]]]
"""``["KEY=VALUE", ...]`` or ``{KEY: VALUE}``; a value is a Ruby literal or a bare word."""

Progress = Callable[[int, int], object]
"""Called with (files, bytes) so far, from one of Girofle's threads. An exception it
raises (``KeyboardInterrupt`` too) stops the operation and is what the call raises."""

StrPath = Union[str, "os.PathLike[str]"]

# The native methods that may run for long, given a `cancel` token and an async variant.
LONG_OPERATIONS = (
    "create",
    "start",
    "stop",
    "restart",
    "reconfigure",
    "remove",
    "move_instance",
    "backup",
    "verify",
    "copy_backup",
    "restore",
)


async def _in_executor(call: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Runs a blocking native call with a token of its own (unless given one) in the
    loop's default executor; cancelling the awaiting task cancels the call and waits for
    its recovery before ``CancelledError`` propagates."""
    cancel = kwargs.get("cancel") or Cancel()
    kwargs["cancel"] = cancel
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, functools.partial(call, *args, **kwargs))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel.cancel()
        while not future.done():
            # A second cancel does not stop the wait: the call must finish recovering.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # retrieved: the CancelledError below is what counts
        raise


class Girofle:
    """Girofle opened on an initialised root (see :meth:`init`), optionally on a Docker
    engine other than the default one.

    Every method releases the GIL while core works, can be interrupted with Ctrl-C (the
    operation stops and core's recovery runs before ``KeyboardInterrupt`` is raised) and
    raises a subclass of :class:`GirofleError`. The long ones take a ``cancel`` token and
    have an ``*_async`` variant.
    """

    __slots__ = ("_native",)

    def __init__(self, root: StrPath, docker_host: str | None = None) -> None:
        self._native = _girofle.Girofle(root, docker_host)

    @staticmethod
    def init(root: StrPath) -> InitResult:
        """Prepares a root (directories, default girofle.toml unless present, inventory).
        Idempotent."""
        return InitResult.from_dict(_girofle.Girofle.init(root))

    @property
    def root(self) -> str:
        """The root directory (absolute)."""
        return self._native.root

    def __repr__(self) -> str:
        return f"Girofle({self.root!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Girofle) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    # --- instances --------------------------------------------------------------------

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
    ) -> Instance:
        """Commissions a new instance and waits until it is healthy: on ``host``, or on
        the host placement picks (among those carrying ``host_labels``)."""
        return Instance.from_dict(
            self._native.create(
                name, image, ip, http_port, https_port, ssh_port, hostname, settings,
                labels, timeout, cancel, host, host_labels,
            )
        )

    def list(self) -> builtins.list[InstanceStatus]:
        """The instances of this root with their state, reconciled with the engine. An
        interrupted operation that could not be recovered first gives a
        :class:`UserWarning` naming the instance and the error (its state may be wrong)."""
        return [InstanceStatus.from_dict(s) for s in self._native.list()]

    def show(self, name: str, reveal: bool = False) -> InstanceStatus:
        """One instance with its state. Setting values are ``REDACTED`` unless
        ``reveal=True`` (journaled as ``reveal``, without the values)."""
        return InstanceStatus.from_dict(self._native.show(name, reveal))

    def start(self, name: str, cancel: Cancel | None = None) -> Instance:
        """Starts an instance (re-creating a removed container) and waits healthy."""
        return Instance.from_dict(self._native.start(name, cancel))

    def stop(self, name: str, cancel: Cancel | None = None) -> Instance:
        """Stops an instance."""
        return Instance.from_dict(self._native.stop(name, cancel))

    def restart(self, name: str, cancel: Cancel | None = None) -> Instance:
        """Stops then starts an instance and waits healthy."""
        return Instance.from_dict(self._native.restart(name, cancel))

    def reconfigure(
        self,
        name: str,
        set: Settings | None = None,
        unset: Sequence[str] | None = None,
        cancel: Cancel | None = None,
    ) -> Instance:
        """Sets and unsets managed gitlab.rb settings, runs ``gitlab-ctl reconfigure``."""
        return Instance.from_dict(self._native.reconfigure(name, set, unset, cancel))

    def remove(
        self,
        name: str,
        purge: bool = False,
        final_backup: bool = True,
        cancel: Cancel | None = None,
    ) -> Decommissioned:
        """Decommissions an instance: a final backup unless ``final_backup=False``, the
        container removed, the data moved to ``decommissioned/`` (deleted with
        ``purge``)."""
        return Decommissioned.from_dict(self._native.remove(name, purge, final_backup, cancel))

    def move_instance(
        self,
        name: str,
        to: str,
        purge: bool = False,
        timeout: float | None = None,
        cancel: Cancel | None = None,
    ) -> Moved:
        """Moves an instance to host ``to`` (its data streamed engine to engine, GitLab's
        checks run there); the old data is kept aside on the old host unless ``purge``."""
        return Moved.from_dict(self._native.move_instance(name, to, purge, timeout, cancel))

    # --- backups ----------------------------------------------------------------------

    def backup(
        self,
        name: str,
        strategy: Strategy = "online",
        store: str | None = None,
        no_logs: bool = False,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
    ) -> Backup:
        """Takes a backup into a store (default ``local``); ``progress(files, bytes)`` is
        called as the archive grows."""
        return Backup.from_dict(
            self._native.backup(name, strategy, store, no_logs, progress, cancel)
        )

    def list_backups(
        self, name: str | None = None, store: str | None = None
    ) -> builtins.list[BackupEntry]:
        """The complete backups in a store (of one instance, or all), oldest first. A
        backup that cannot be restored as it is (damaged manifest, archive or index
        missing or of another size) is left out with a :class:`UserWarning` naming it."""
        return [BackupEntry.from_dict(b) for b in self._native.list_backups(name, store)]

    def verify(
        self,
        id: str,
        store: str | None = None,
        drill: bool = False,
        cancel: Cancel | None = None,
    ) -> VerifyResult | DrillResult:
        """Checks a backup end to end without restoring it (a :class:`VerifyResult`); with
        ``drill=True`` restores it into a throw-away instance and checks repositories and
        secrets (a :class:`DrillResult`)."""
        data = self._native.verify(id, store, drill, cancel)
        return DrillResult.from_dict(data) if drill else VerifyResult.from_dict(data)

    def copy_backup(
        self, id: str, to: str, store: str | None = None, cancel: Cancel | None = None
    ) -> CopyResult:
        """Copies a backup from ``store`` (default ``local``) to store ``to``, hash
        checked."""
        return CopyResult.from_dict(self._native.copy_backup(id, to, store, cancel))

    def sign_backup(self, id: str, store: str | None = None) -> SignResult:
        """Signs a backup with the fleet's key (``girofle backup sign``) after checking it
        end to end: one made before backups were signed, or by a fleet this one does not
        trust. Check where it came from first. A damaged one raises ``CorruptError``."""
        return SignResult.from_dict(self._native.sign_backup(id, store))

    def public_key(self) -> KeyInfo:
        """The fleet's public key (``girofle key show``) and the keys it trusts."""
        return KeyInfo.from_dict(self._native.public_key())

    def prune(
        self,
        name: str | None = None,
        store: str | None = None,
        keep_last: int = 0,
        keep_daily: int = 0,
        keep_weekly: int = 0,
    ) -> PruneResult:
        """Deletes the backups a retention policy does not keep."""
        deleted = self._native.prune(name, store, keep_last, keep_daily, keep_weekly)
        return PruneResult(tuple(deleted))

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
    ) -> RestoreResult:
        """Restores a backup, in place or as a new instance (``as_name``; an existing
        instance only with ``replace=True``)."""
        return RestoreResult.from_dict(
            self._native.restore(
                id, store, as_name, image, ip, http_port, https_port, ssh_port, timeout,
                progress, cancel, replace,
            )
        )

    # --- schedules, state, recovery ---------------------------------------------------

    def schedules(self) -> builtins.list[ScheduleStatus]:
        """Every instance's schedule, last runs and next runs (``girofle schedule list``)."""
        return [ScheduleStatus.from_dict(s) for s in self._native.schedules()]

    def schedule(self, name: str) -> Schedule:
        """The effective schedule of one instance."""
        return Schedule.from_dict(self._native.schedule(name))

    def set_schedule(
        self,
        name: str,
        backup: str | None = None,
        copy: str | None = None,
        store: str | None = None,
        timezone: str | None = None,
        strategy: Strategy | None = None,
        keep_last: int | None = None,
        keep_daily: int | None = None,
        keep_weekly: int | None = None,
        enabled: bool | None = None,
    ) -> Schedule:
        """Changes an instance's schedule (``girofle schedule set``): what is given
        changes, the rest keeps its value. ``copy`` and ``store`` take ``"off"``."""
        return Schedule.from_dict(
            self._native.set_schedule(
                name, backup, copy, store, timezone, strategy, keep_last, keep_daily,
                keep_weekly, enabled,
            )
        )

    def export_state(self, file: StrPath) -> StateReport:
        """Writes girofle.toml, the inventory (schedules included) and the journal into
        ``file`` (zstd tar, mode 0600: it holds the stores' credentials)."""
        return StateReport.from_dict(self._native.export_state(file))

    @staticmethod
    def import_state(root: StrPath, file: StrPath, force: bool = False) -> StateReport:
        """Takes over the state in ``file`` into ``root`` (which may be uninitialised):
        :class:`ConflictError` when the root's inventory has other instances, unless
        ``force``. Importing twice changes nothing more. Open the root afterwards."""
        return StateReport.from_dict(_girofle.Girofle.import_state(root, file, force))

    def recover(self) -> builtins.list[Recovery]:
        """Repairs what interrupted operations left behind (an instance a cold backup
        stopped, an in-place restore half done, staging files); returns what it did.
        Interrupted calls run it themselves."""
        return [Recovery.from_dict(r) for r in self._native.recover()]

    # --- asyncio ----------------------------------------------------------------------

    async def create_async(
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
    ) -> Instance:
        """:meth:`create` for asyncio."""
        return await _in_executor(
            self.create, name, image, ip, http_port, https_port, ssh_port, hostname,
            settings, labels, timeout, cancel=cancel, host=host, host_labels=host_labels,
        )

    async def start_async(self, name: str, cancel: Cancel | None = None) -> Instance:
        """:meth:`start` for asyncio."""
        return await _in_executor(self.start, name, cancel=cancel)

    async def stop_async(self, name: str, cancel: Cancel | None = None) -> Instance:
        """:meth:`stop` for asyncio."""
        return await _in_executor(self.stop, name, cancel=cancel)

    async def restart_async(self, name: str, cancel: Cancel | None = None) -> Instance:
        """:meth:`restart` for asyncio."""
        return await _in_executor(self.restart, name, cancel=cancel)

    async def reconfigure_async(
        self,
        name: str,
        set: Settings | None = None,
        unset: Sequence[str] | None = None,
        cancel: Cancel | None = None,
    ) -> Instance:
        """:meth:`reconfigure` for asyncio."""
        return await _in_executor(self.reconfigure, name, set, unset, cancel=cancel)

    async def remove_async(
        self,
        name: str,
        purge: bool = False,
        final_backup: bool = True,
        cancel: Cancel | None = None,
    ) -> Decommissioned:
        """:meth:`remove` for asyncio."""
        return await _in_executor(self.remove, name, purge, final_backup, cancel=cancel)

    async def move_instance_async(
        self,
        name: str,
        to: str,
        purge: bool = False,
        timeout: float | None = None,
        cancel: Cancel | None = None,
    ) -> Moved:
        """:meth:`move_instance` for asyncio."""
        return await _in_executor(self.move_instance, name, to, purge, timeout, cancel=cancel)

    async def backup_async(
        self,
        name: str,
        strategy: Strategy = "online",
        store: str | None = None,
        no_logs: bool = False,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
    ) -> Backup:
        """:meth:`backup` for asyncio (``progress`` is called from a worker thread)."""
        return await _in_executor(
            self.backup, name, strategy, store, no_logs, progress, cancel=cancel
        )

    async def verify_async(
        self,
        id: str,
        store: str | None = None,
        drill: bool = False,
        cancel: Cancel | None = None,
    ) -> VerifyResult | DrillResult:
        """:meth:`verify` for asyncio."""
        return await _in_executor(self.verify, id, store, drill, cancel=cancel)

    async def copy_backup_async(
        self, id: str, to: str, store: str | None = None, cancel: Cancel | None = None
    ) -> CopyResult:
        """:meth:`copy_backup` for asyncio."""
        return await _in_executor(self.copy_backup, id, to, store, cancel=cancel)

    async def restore_async(
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
    ) -> RestoreResult:
        """:meth:`restore` for asyncio (``progress`` is called from a worker thread)."""
        return await _in_executor(
            self.restore, id, store, as_name, image, ip, http_port, https_port, ssh_port,
            timeout, progress, cancel=cancel, replace=replace,
        )

