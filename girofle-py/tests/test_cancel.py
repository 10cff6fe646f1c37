"""Progress and cancellation: the progress callback sees growing counts; a backup stopped
mid-way — by an exception from its progress callback, by Ctrl-C (SIGINT to the main
thread, `_thread.interrupt_main`), by a `Cancel` token, by cancelling its asyncio task —
raises, leaves no backup listed, the instance running again and its lock free (the next
backup succeeds); the async variants do not block the event loop."""

from __future__ import annotations

import _thread
import asyncio
import signal
import threading
import time
from pathlib import Path

import pytest

import girofle
from conftest import unique

# Core reports progress every 1000 entries: this many files in the data volume give a
# cold backup several reports, and time to interrupt it between two.
FILLER_FILES = 3500


def filled_instance(root, g: girofle.Girofle) -> str:
    name = unique("cx")
    g.create(name)
    filler = Path(root.path, "instances", name, "data", "filler")
    filler.mkdir()
    for i in range(FILLER_FILES):
        (filler / f"f{i:05}").write_text(f"{i}\n" * 20)
    return name


class Interrupter:
    """A progress callback recording its calls that, at the `at`-th, runs `action` then
    holds the backup for a moment so the interruption lands mid-way."""

    def __init__(self, action, at: int = 1) -> None:
        self.action, self.at = action, at
        self.seen: list[tuple[int, int]] = []
        self.fired = threading.Event()

    def __call__(self, files: int, size: int) -> None:
        self.seen.append((files, size))
        if len(self.seen) == self.at and not self.fired.is_set():
            self.fired.set()
            self.action()
            # Long enough for the calling thread to notice even on a loaded machine.
            time.sleep(3.0)


def _raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def test_progress_grows_and_interrupted_backups_leave_nothing(root, g):
    name = filled_instance(root, g)

    # A complete cold backup reports growing counts up to the archive's totals.
    seen: list[tuple[int, int]] = []
    full = g.backup(name, strategy="cold", progress=lambda f, b: seen.append((f, b)))
    assert len(seen) >= 3, seen
    assert all(a[0] < b[0] and a[1] <= b[1] for a, b in zip(seen, seen[1:])), seen
    assert seen[-1][0] >= FILLER_FILES and seen[-1][1] >= full.bytes
    before = [b.id for b in g.list_backups(name)]
    assert before == [full.id]
    store = Path(root.path, "backups")
    store_files = sorted(p.name for p in store.rglob("*"))

    def check() -> None:
        assert [b.id for b in g.list_backups(name)] == before, "a cancelled backup is listed"
        # The archive writer is a blocking thread that ends at its next chunk: give it a
        # moment to drop its staging file.
        deadline = time.monotonic() + 10
        while sorted(p.name for p in store.rglob("*")) != store_files:
            assert time.monotonic() < deadline, f"store leftovers: {list(store.rglob('*'))}"
            time.sleep(0.1)
        assert g.show(name).state == "running", "the cancelled cold backup left GitLab down"
        assert not list(Path(root.path, "run").glob("*.intent.json")), "intent record left"

    # 1. The progress callback raises KeyboardInterrupt: that is what the call raises.
    raiser = Interrupter(_raise_keyboard_interrupt, at=2)
    with pytest.raises(KeyboardInterrupt):
        g.backup(name, strategy="cold", progress=raiser)
    assert len(raiser.seen) == 2, "the backup went on after its callback raised"
    check()

    # 2. Ctrl-C: SIGINT delivered to the main thread while core works.
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main
    sigint = Interrupter(lambda: signal.pthread_kill(main, signal.SIGINT))
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as e:
        g.backup(name, strategy="cold", progress=sigint)
    assert sigint.fired.is_set()
    assert time.monotonic() - started < 60
    check()
    # The call ran core's recovery, which restarted the GitLab the cold backup stopped.
    recovered = e.value.recovered  # type: ignore[attr-defined]
    assert all(isinstance(r, girofle.Recovery) for r in recovered), recovered
    cold = [r for r in recovered if r.operation == "cold-backup" and r.instance == name]
    assert cold and cold[0].outcome in ("rolled-back", "finished"), recovered

    # 3. `_thread.interrupt_main`, during an online backup.
    online = Interrupter(_thread.interrupt_main)
    with pytest.raises(KeyboardInterrupt):
        g.backup(name, progress=online)
    assert online.fired.is_set()
    check()

    # 4. A Cancel token cancelled from another thread.
    token = girofle.Cancel()
    canceller = Interrupter(token.cancel)
    with pytest.raises(girofle.CancelledError):
        g.backup(name, strategy="cold", progress=canceller, cancel=token)
    assert token.cancelled and canceller.fired.is_set()
    check()

    # The instance lock is free: the next backup succeeds.
    after = g.backup(name)
    assert [b.id for b in g.list_backups(name)] == [full.id, after.id]


def test_asyncio_cancel_and_awaitables_do_not_block_the_loop(root, g):
    name = filled_instance(root, g)

    async def scenario() -> None:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        backup = await g.backup_async(name)
        took = time.monotonic() - started
        assert ticks > took * 100 * 0.3, f"{ticks} ticks in {took:.1f}s: the loop was blocked"
        verified = await g.verify_async(backup.id)
        assert verified == girofle.VerifyResult(
            id=backup.id, ok=True, files=backup.files, bytes=backup.bytes
        )

        # Cancelling the task cancels the cold backup; CancelledError arrives after
        # recovery, with GitLab back up.
        holder = Interrupter(lambda: None)
        task = asyncio.create_task(g.backup_async(name, strategy="cold", progress=holder))
        while not holder.fired.is_set():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [b.id for b in g.list_backups(name)] == [backup.id]
        assert g.show(name).state == "running"
        assert not list(Path(root.path, "run").glob("*.intent.json"))

        # The lock is free.
        again = await g.backup_async(name, strategy="cold")
        assert [b.id for b in g.list_backups(name)] == [backup.id, again.id]
        ticker.cancel()

    asyncio.run(scenario())


def test_cancel_token(g):
    token = girofle.Cancel()
    assert not token.cancelled and repr(token) == "Cancel(cancelled=False)"
    token.cancel()
    assert token.cancelled and repr(token) == "Cancel(cancelled=True)"
    # A cancelled token stops a call before it starts.
    with pytest.raises(girofle.CancelledError, match="cancelled") as e:
        g.backup(unique("never"), cancel=token)
    assert isinstance(e.value, girofle.GirofleError) and e.value.kind == "cancelled"
    with pytest.raises(girofle.CancelledError):
        g.create(unique("never"), cancel=token)
    assert g.list() == []
