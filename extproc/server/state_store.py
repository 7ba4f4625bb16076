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

What keeps the file small and honest across restarts, containers and read-only mounts:
* each process writes under a stable instance id (``calibration.instance_id``, by default
  ``<hostname>:<port>``, plus ``/w<N>`` per worker): a restart, or a restarted container (same
  hostname), writes its old entry again, and loads it first, instead of skipping it as a peer's and
  then overwriting it cold;
* entries of instances that stopped writing (older than the live window) are folded into one
  ``compacted`` entry, so a fleet of short-lived pods leaves one entry, not one per start;
* a temp file left by a writer killed mid-write is removed under the lock (writers hold it);
* an ``updated`` in the future is clamped to now (it would never expire), and no entry weighs more
  than ``SAMPLE_WEIGHT_CAP`` samples per category in a blend (one cannot dominate the others);
* a read-only directory or file: the state is loaded without the lock, saves are off, said once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
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
from extproc.algorithm.calibration import CategoryState
from extproc.algorithm.calibration_state import ReplicaEntry, StateFile, parse_state, state_bytes
from extproc.algorithm.linear_estimator import LinearEstimator

log = logging.getLogger("budget_router.state")
STALE_AFTER_S = 7 * 24 * 3600
COMPACTED = "compacted"  # the one entry that folds the snapshots of instances no longer writing
SAMPLE_WEIGHT_CAP = 1_000  # samples a category of one entry weighs at most in a blend
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def instance_id(configured: str, listen: str, port: int, worker: int = 0, workers: int = 1) -> str:
    """This process's entry in the state file: ``calibration.instance_id`` if set, else
    ``<hostname>:<port>`` (the listen address for a unix socket or an unknown port): stable across
    restarts and container restarts, distinct for routers sharing a host (one port each); workers,
    which share the port, add ``/w<N>``."""
    base = configured or (f"{socket.gethostname()}:{port}" if port else f"{socket.gethostname()}:{listen}")
    return f"{base}/w{worker}" if workers > 1 else base


class StateStore:
    def __init__(self, path: str, replica_id: str | None = None, live_window_s: float = 90.0) -> None:
        self.path = Path(path) if path else None
        self.live_window_s = live_window_s  # peers updated within this are live and blended at each sync
        self.replica_id = replica_id or f"{socket.gethostname()}-{os.getpid()}"
        self.skipped_entries = 0  # malformed replica/category entries seen (a metric reads these)
        self.sync_failures = 0
        self.read_only = False  # the directory or file cannot be written: loaded, saves off
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

    def _clean_temp(self) -> None:
        """Remove temp files a writer killed mid-write left (called under the lock: no writer is live)."""
        assert self.path is not None
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()

    def _saves_off(self, exc: OSError) -> None:
        if not self.read_only:
            self.read_only = True
            log.warning(
                "calibration state %s is read-only (%s): using what it holds, saves are off",
                self.path,
                exc.strerror or exc,
            )

    def _write(self, replicas: dict[str, Any]) -> None:
        assert self.path is not None
        self._clean_temp()
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

    @staticmethod
    def _entries(state: StateFile, now: float) -> dict[str, ReplicaEntry]:
        """The file's entries as blends use them: dates clamped to now, sample weights capped."""
        return {
            rid: ReplicaEntry(
                min(e.updated, now),
                {name: _capped(st) for name, st in e.categories.items()},
                {**e.raw, "updated": min(e.updated, now)},
            )
            for rid, e in state.replicas.items()
        }

    def _peers(self, state: StateFile, now: float, window: float) -> list[ReplicaEntry]:
        entries = self._entries(state, now).items()
        return [e for rid, e in entries if rid != self.replica_id and now - e.updated <= window]

    def _blend(
        self, state: StateFile, calibrator: Calibrator, now: float, linear: LinearEstimator | None = None
    ) -> dict[str, Any]:
        """Merge the live peers in and return the replicas to write back: ours refreshed, the live
        peers as they are, the others folded into one compacted entry, the stale dropped."""
        self._report(state.problems)
        calibrator.merge(e.categories for e in self._peers(state, now, self.live_window_s))
        kept = {rid: e for rid, e in self._entries(state, now).items()
                if rid != self.replica_id and now - e.updated <= STALE_AFTER_S}  # fmt: skip
        replicas: dict[str, Any] = {rid: e.raw for rid, e in kept.items() if now - e.updated <= self.live_window_s}
        gone = [e for e in kept.values() if now - e.updated > self.live_window_s]
        if gone:
            replicas[COMPACTED] = _compacted(gone, calibrator.params)
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
                self._clean_temp()
                state = self._read(calibrator.params)
        except OSError as exc:
            if exc.errno not in _READ_ONLY:
                log.warning("cannot read calibration state %s: %s; starting cold", self.path, exc)
                return 0
            self._saves_off(exc)  # no lock file can be made: read it as it is (writes replace it atomically)
            try:
                state = self._read(calibrator.params)
            except OSError as again:
                log.warning("cannot read calibration state %s: %s; starting cold", self.path, again.strerror or again)
                return 0
        self._report(state.problems)
        now = time.time()
        # Our own entry too: it is this instance's previous life (a restart, a restarted container).
        peers = [e for e in self._entries(state, now).values() if now - e.updated <= STALE_AFTER_S]
        calibrator.merge(e.categories for e in peers)
        if linear is not None:
            fresh = [e.raw for e in peers]
            models = [entry["linear"] for entry in fresh if isinstance(entry.get("linear"), dict)]
            if models:
                linear.load(max(models, key=_linear_samples))
        return len(peers)

    def sync(self, calibrator: Calibrator, linear: LinearEstimator | None = None) -> None:
        """Blend in the live replicas' snapshots, then publish ours, all on the calling thread (for
        processes without an event loop, and shutdown). Errors are logged and counted, never raised."""
        if self.path is None or self.read_only:
            return
        try:
            with self._locked():
                self._write(self._blend(self._read(calibrator.params), calibrator, time.time(), linear))
        except Exception as exc:
            self._failed(exc)

    async def sync_async(self, calibrator: Calibrator, linear: LinearEstimator | None = None) -> None:
        """``sync`` with the file lock, read and write in a worker thread and the calibrator on the loop."""
        if self.path is None or self.read_only:
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
        except Exception as exc:
            self._failed(exc)

    async def _lock_async(self) -> int:
        """The file lock, taken in a thread (it may wait for a peer's write). If we are cancelled while
        it waits, the thread still gets the lock: release it then, or the next sync would deadlock."""
        locking = asyncio.ensure_future(asyncio.to_thread(self._lock))
        try:
            return await asyncio.shield(locking)
        except asyncio.CancelledError:
            locking.add_done_callback(lambda f: None if f.cancelled() or f.exception() else self._unlock(f.result()))
            raise

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, OSError) and exc.errno in _READ_ONLY:
            self._saves_off(exc)  # said once; not a failure to retry every interval
            return
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


def _capped(st: CategoryState) -> CategoryState:
    return st if st.samples <= SAMPLE_WEIGHT_CAP else dataclasses.replace(st, samples=SAMPLE_WEIGHT_CAP)


def _compacted(entries: list[ReplicaEntry], params: CalibrationParams) -> dict[str, Any]:
    """One entry for instances that stopped writing: their categories blended (as a live peer's
    would be), the richest linear snapshot, the newest date (so it expires with the last of them)."""
    blend = Calibrator(params)
    blend.merge(e.categories for e in entries)
    out: dict[str, Any] = {"updated": max(e.updated for e in entries), "categories": blend.snapshot()}
    models = [e.raw["linear"] for e in entries if isinstance(e.raw.get("linear"), dict)]
    if models:
        out["linear"] = max(models, key=_linear_samples)
    return out
