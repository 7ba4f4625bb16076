"""Calibration that survives restarts and is shared by replicas through one small JSON file.

Each process blends the live replicas' snapshots into its calibrator (sample-weighted) and writes
the result under its own replica id: a gossip average, so replicas converge to one view within a
save interval or two, a restarted process starts from everyone's learning instead
of cold, and one replica's bad file entry cannot erase the others. The v2 linear models travel in the same
entries (key ``linear``; files without it still load). Writes are atomic (temp file +
rename) with 0600 permissions, serialised by an advisory lock so concurrent writers never lose data.

The calibrator is not thread-safe and the event loop routes with it, so in the server only the
file I/O runs in a worker thread (``sync_async``); merging and snapshotting stay on the loop.
Malformed entries are skipped, logged and counted (``skipped_entries``); a failed sync is logged
and counted (``sync_failures``) and the next one runs as planned.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from extproc.algorithm import CalibrationParams, Calibrator
from extproc.algorithm.calibration_state import ReplicaEntry, StateFile, parse_state, state_bytes
from extproc.algorithm.linear_estimator import LinearEstimator

log = logging.getLogger("budget_router.state")
STALE_AFTER_S = 7 * 24 * 3600


class StateStore:
    def __init__(self, path: str, replica_id: str | None = None, live_window_s: float = 90.0) -> None:
        self.path = Path(path) if path else None
        self.live_window_s = live_window_s  # peers updated within this are live and blended at each sync
        self.replica_id = replica_id or f"{socket.gethostname()}-{os.getpid()}"
        self.skipped_entries = 0  # malformed replica/category entries seen (a metric reads these)
        self.sync_failures = 0
        self._reported: frozenset[str] = frozenset()

    # -- file I/O (worker thread in the server) ------------------------------------------------------
    def _lock(self) -> int:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = self._lock()
        try:
            yield
        finally:
            self._unlock(fd)

    def _read(self, params: CalibrationParams) -> StateFile:
        assert self.path is not None
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return StateFile()
        return parse_state(raw, params)

    def _write(self, replicas: dict[str, Any]) -> None:
        assert self.path is not None
        # mkstemp: O_EXCL, mode 0600, a fresh random name (a planted symlink cannot redirect the write).
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(state_bytes(replicas))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # -- calibrator side (the routing thread) --------------------------------------------------------
    def _report(self, problems: list[str]) -> None:
        """Count every skipped entry; warn when the set of problems changes (not every save interval)."""
        self.skipped_entries += len(problems)
        current = frozenset(problems)
        if current and current != self._reported:
            log.warning(
                "calibration state %s: skipped %d malformed entries: %s",
                self.path,
                len(problems),
                "; ".join(sorted(current)),
            )
        self._reported = current

    def _peers(self, state: StateFile, now: float, window: float) -> list[ReplicaEntry]:
        return [e for rid, e in state.replicas.items() if rid != self.replica_id and now - e.updated <= window]

    def _blend(
        self, state: StateFile, calibrator: Calibrator, now: float, linear: LinearEstimator | None = None
    ) -> dict[str, Any]:
        """Merge the live peers in and return the replicas to write back (ours refreshed, stale dropped)."""
        self._report(state.problems)
        calibrator.merge(e.categories for e in self._peers(state, now, self.live_window_s))
        replicas: dict[str, Any] = {rid: e.raw for rid, e in state.replicas.items() if now - e.updated <= STALE_AFTER_S}
        replicas[self.replica_id] = {"updated": now, "categories": calibrator.snapshot()}
        if linear is not None:
            replicas[self.replica_id]["linear"] = linear.snapshot()
        return replicas

    def load_into(self, calibrator: Calibrator, linear: LinearEstimator | None = None) -> int:
        """Warm start from every fresh snapshot in the file; returns how many were used.

        The v2 linear models are not averaged across replicas (weights of different fits do not
        blend): the richest fresh snapshot (most samples) warm-starts them, then each replica fits on.
        """
        if self.path is None:
            return 0
        try:
            with self._locked():
                state = self._read(calibrator.params)
        except OSError as exc:
            log.warning("cannot read calibration state %s: %s; starting cold", self.path, exc)
            return 0
        self._report(state.problems)
        now = time.time()
        peers = self._peers(state, now, STALE_AFTER_S)
        calibrator.merge(e.categories for e in peers)
        if linear is not None:
            fresh = [e.raw for e in state.replicas.values() if now - e.updated <= STALE_AFTER_S]
            models = [entry["linear"] for entry in fresh if isinstance(entry.get("linear"), dict)]
            if models:
                linear.load(max(models, key=_linear_samples))
        return len(peers)

    def sync(self, calibrator: Calibrator, linear: LinearEstimator | None = None) -> None:
        """Blend in the live replicas' snapshots, then publish ours, all on the calling thread (for
        processes without an event loop, and shutdown). Errors are logged and counted, never raised."""
        if self.path is None:
            return
        try:
            with self._locked():
                self._write(self._blend(self._read(calibrator.params), calibrator, time.time(), linear))
        except Exception:
            self._failed()

    async def sync_async(self, calibrator: Calibrator, linear: LinearEstimator | None = None) -> None:
        """``sync`` with the file lock, read and write in a worker thread and the calibrator on the loop."""
        if self.path is None:
            return
        try:
            fd = await self._lock_async()
            try:
                state = await asyncio.to_thread(self._read, calibrator.params)
                replicas = self._blend(state, calibrator, time.time(), linear)
                await asyncio.to_thread(self._write, replicas)
            finally:
                self._unlock(fd)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._failed()

    async def _lock_async(self) -> int:
        """The file lock, taken in a thread (it may wait for a peer's write). If we are cancelled while
        it waits, the thread still gets the lock: release it then, or the next sync would deadlock."""
        locking = asyncio.ensure_future(asyncio.to_thread(self._lock))
        try:
            return await asyncio.shield(locking)
        except asyncio.CancelledError:
            locking.add_done_callback(lambda f: None if f.cancelled() or f.exception() else self._unlock(f.result()))
            raise

    def _failed(self) -> None:
        self.sync_failures += 1
        log.warning("could not sync calibration state %s; the next save retries", self.path, exc_info=True)


async def periodic_sync(
    store: StateStore,
    calibrator: Calibrator,
    interval_s: float,
    stop: asyncio.Event,
    linear: LinearEstimator | None = None,
) -> None:
    """Sync every ``interval_s`` until ``stop`` is set; a failed sync never ends the loop."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        if stop.is_set():
            return
        await store.sync_async(calibrator, linear)


def _linear_samples(snapshot: Mapping[str, Any]) -> int:
    """How much a stored linear snapshot learned (malformed sample counts count as 0)."""
    return sum(
        v["samples"]
        for v in snapshot.values()
        if isinstance(v, dict) and isinstance(v.get("samples"), int) and not isinstance(v["samples"], bool)
    )
