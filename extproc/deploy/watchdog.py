"""Restart what Docker's restart policy leaves dead: a ``docker kill``-ed or hung compose service.

Docker treats ``docker kill`` as a manual stop, so ``restart: unless-stopped`` (or ``always``) never
brings the container back, and it restarts no container whose healthcheck fails. With the router
gone Envoy fails open and every request lands on the long pool, quietly, for as long as nobody
notices. This loop watches its own compose project's containers labelled
``io.budget-router.watchdog=restart``, starts one that exited with another status than a stop's
(killed, crashed, OOM) and restarts one Docker marks ``unhealthy`` (hung). A stop is left alone, so
an operator's ``docker stop`` / ``compose stop`` / ``down`` stays one: status 0 (drained and exited)
or 143 (ended by the SIGTERM those send). ``docker kill`` sends SIGKILL (137); a stop whose grace
period ran out ends with 137 too and is restarted, so a service's ``stop_grace_period`` must cover
its drain. It speaks the Docker Engine API over the socket with the standard library only, so it
runs in the lean router image.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("budget_router.watchdog")
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
DEFAULT_LABEL = "io.budget-router.watchdog=restart"
DEFAULT_SOCKET = "/var/run/docker.sock"
STOP_EXITS = frozenset({0, 128 + 15})  # exited by itself, or by the SIGTERM of docker stop


class DockerError(RuntimeError):
    """The Docker API answered with an error status."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class DockerAPI:
    """The four Engine API calls the watchdog needs (stable since API 1.24)."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout_s: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str) -> Any:
        conn = _UnixConnection(self.socket_path, self.timeout_s)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status >= 400:
            raise DockerError(f"{method} {path}: {resp.status} {body[:300]!r}")
        return json.loads(body) if body else None

    def containers(self, labels: list[str]) -> list[dict[str, Any]]:
        filters = urllib.parse.quote(json.dumps({"label": labels}))
        return list(self._call("GET", f"/containers/json?all=1&filters={filters}"))

    def inspect(self, ident: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/containers/{urllib.parse.quote(ident)}/json"))

    def start(self, ident: str) -> None:
        self._call("POST", f"/containers/{urllib.parse.quote(ident)}/start")

    def restart(self, ident: str, timeout_s: int = 10) -> None:
        self._call("POST", f"/containers/{urllib.parse.quote(ident)}/restart?t={timeout_s}")


def action_for(state: Mapping[str, Any]) -> str | None:
    """What a container's inspected ``State`` calls for: ``start``, ``restart`` or nothing."""
    status = state.get("Status")
    if status in ("exited", "dead"):
        return "start" if state.get("ExitCode", 0) not in STOP_EXITS or state.get("OOMKilled") else None
    if status == "running" and (state.get("Health") or {}).get("Status") == "unhealthy":
        return "restart"
    return None


@dataclass
class _Backoff:
    """Per container: a container that keeps dying is retried at 1, 2, 4 ... 60 s, not in a loop."""

    tries: int = 0
    not_before: float = 0.0

    def due(self, now: float) -> bool:
        return now >= self.not_before

    def note(self, now: float) -> float:
        delay = min(60.0, 2.0**self.tries)
        self.tries += 1
        self.not_before = now + delay
        return delay


@dataclass
class Watchdog:
    api: DockerAPI
    project: str
    label: str = DEFAULT_LABEL
    clock: Callable[[], float] = time.monotonic
    restarts: int = 0
    _backoff: dict[str, _Backoff] = field(default_factory=dict)

    def sweep(self) -> list[str]:
        """One pass: act on every watched container of the project; returns what was done."""
        done = []
        now = self.clock()
        for summary in self.api.containers([self.label, f"{PROJECT_LABEL}={self.project}"]):
            ident = summary["Id"]
            state = self.api.inspect(ident).get("State", {})
            action = action_for(state)
            backoff = self._backoff.setdefault(ident, _Backoff())
            if action is None:
                if state.get("Status") == "running" and (state.get("Health") or {}).get("Status") != "unhealthy":
                    backoff.tries = 0  # healthy again: the next failure starts from a 1 s retry
                continue
            if not backoff.due(now):
                continue
            name = (summary.get("Labels") or {}).get(SERVICE_LABEL) or ident[:12]
            why = f"exit {state.get('ExitCode')}" + (", OOM" if state.get("OOMKilled") else "")
            if action == "restart":
                why = "unhealthy"
            try:
                self.api.start(ident) if action == "start" else self.api.restart(ident)
            except DockerError as exc:
                log.warning("could not %s %s (%s): %s", action, name, why, exc)
            else:
                self.restarts += 1
                done.append(f"{action} {name} ({why})")
                log.warning("%s %s: %s; Envoy routed around it meanwhile", action, name, why)
            backoff.note(now)
        return done

    def run(self, interval_s: float, stop: Callable[[], bool] = lambda: False) -> None:
        while not stop():
            try:
                self.sweep()
            except (OSError, DockerError, http.client.HTTPException) as exc:
                log.warning("docker API: %s", exc)
            time.sleep(interval_s)


def own_project(api: DockerAPI) -> str:
    """The compose project of the container this runs in (its hostname is its container id)."""
    labels = api.inspect(socket.gethostname()).get("Config", {}).get("Labels") or {}
    project = labels.get(PROJECT_LABEL)
    if not project:
        raise DockerError("not running in a compose container: pass --project")
    return str(project)
