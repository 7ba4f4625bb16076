"""Calibration that survives restarts and is shared by replicas through one small JSON file.

Each process blends the live replicas' snapshots into its calibrator (sample-weighted) and writes
the result under its own replica id: a gossip average, so replicas converge to one view within a
save interval or two, a restarted process starts from everyone's learning instead
of cold, and one replica's bad file entry cannot erase the others. The v2 linear models travel in the same
entries (key ``linear``; files without it still load). Writes are atomic (temp file +
rename) with 0600 permissions, serialised by an advisory lock so concurrent writers never lose data.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from extproc.algorithm import Calibrator
from extproc.algorithm.linear_estimator import LinearEstimator

log = logging.getLogger("budget_router.state")
STALE_AFTER_S = 7 * 24 * 3600


class StateStore:
    def __init__(self, path: str, replica_id: str | None = None, live_window_s: float = 90.0) -> None:
        self.path = Path(path) if path else None
        self.live_window_s = live_window_s  # peers updated within this are live and blended at each sync
        self.replica_id = replica_id or f"{socket.gethostname()}-{os.getpid()}"

    @contextlib.contextmanager
    def _locked(self):
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read(self) -> dict[str, Any]:
        assert self.path is not None
        try:
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("ignoring unreadable calibration state %s: %s", self.path, exc)
            return {}
        replicas = data.get("replicas") if isinstance(data, dict) else None
        return replicas if isinstance(replicas, dict) else {}

    def _write(self, replicas: dict[str, Any]) -> None:
        assert self.path is not None
        # mkstemp: O_EXCL, mode 0600, a fresh random name (a planted symlink cannot redirect the write).
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(orjson.dumps({"version": 1, "replicas": replicas}, option=orjson.OPT_INDENT_2))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _fresh_peers(self, replicas: dict[str, Any], now: float, window: float = STALE_AFTER_S) -> list[dict[str, Any]]:
        out = []
        for rid, entry in replicas.items():
            if rid == self.replica_id or not isinstance(entry, dict):
                continue
            if now - float(entry.get("updated", 0)) <= window and isinstance(entry.get("categories"), dict):
                out.append(entry["categories"])
        return out

    def load_into(self, calibrator: Calibrator, linear: LinearEstimator | None = None) -> int:
        """Warm start from every fresh snapshot in the file; returns how many were used.

        The v2 linear models are not averaged across replicas (weights of different fits do not
        blend): the richest fresh snapshot (most samples) warm-starts them, then each replica fits on.
        """
        if self.path is None:
            return 0
        with self._locked():
            replicas, now = self._read(), time.time()
            peers = self._fresh_peers(replicas, now)
        calibrator.merge(peers)
        if linear is not None:
            models = [
                v["linear"]
                for v in replicas.values()
                if isinstance(v, dict)
                and isinstance(v.get("linear"), dict)
                and now - float(v.get("updated", 0)) <= STALE_AFTER_S
            ]
            if models:
                linear.load(max(models, key=_linear_samples))
        return len(peers)

    def sync(self, calibrator: Calibrator, linear: LinearEstimator | None = None) -> None:
        """Blend in the live replicas' snapshots, then publish ours. Errors are logged, never raised."""
        if self.path is None:
            return
        try:
            now = time.time()
            with self._locked():
                replicas = {
                    k: v
                    for k, v in self._read().items()
                    if isinstance(v, dict) and now - float(v.get("updated", 0)) <= STALE_AFTER_S
                }
                calibrator.merge(self._fresh_peers(replicas, now, self.live_window_s))
                replicas[self.replica_id] = {"updated": now, "categories": calibrator.snapshot()}
                if linear is not None:
                    replicas[self.replica_id]["linear"] = linear.snapshot()
                self._write(replicas)
        except (OSError, ValueError) as exc:
            log.warning("could not sync calibration state %s: %s", self.path, exc)


def _linear_samples(snapshot: dict[str, Any]) -> int:
    return sum(int(v.get("samples", 0)) for v in snapshot.values() if isinstance(v, dict))
