"""Live pool load: scrape every pool endpoint's ``/metrics`` and hand the result to ``LivePressure``.

One task per endpoint, on the router's own event loop (aiohttp; nothing blocks): scrape, parse the
three vLLM series, sleep out the rest of the interval. Each scrape is bounded by a timeout and a body
cap, so an endpoint that hangs or serves garbage costs one task's wait and a failure count, and never
delays the other endpoints or a routing decision. After each scrape the pool's sample is rebuilt from
its endpoints' latest good scrapes that are still fresh, and handed to the pure pressure policy.

Endpoints come from the config (a static list per pool) and/or from Envoy's admin
``/clusters?format=json`` for the two pool clusters, re-read every discovery interval, so membership
Envoy learns from DNS or EDS is followed without restarting the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from extproc.addresses import metrics_url
from extproc.algorithm.dispatch import LONG, SHORT
from extproc.algorithm.pressure import EngineLoad, LivePressure, Sample, pool_load
from extproc.server.vllm_metrics import parse_engine_load

if TYPE_CHECKING:
    from extproc.config import LiveLoadConfig

log = logging.getLogger("budget_router.pool_load")
MAX_METRICS_BYTES = 4 * 1024 * 1024  # a vLLM page is ~100 KiB; more is not a metrics page
# Scrape failure causes (metric label values).
TIMEOUT, HTTP_STATUS, UNREADABLE = "timeout", "http_status", "unreadable"
UNREACHABLE, TOO_LARGE = "unreachable", "too_large"


def cluster_hosts(clusters: Any, cluster: str) -> list[tuple[str, int]]:
    """``(address, port)`` of every host Envoy lists for ``cluster`` in ``/clusters?format=json``;
    anything unexpected in the document reads as "no hosts" rather than an error."""
    out: list[tuple[str, int]] = []
    statuses = clusters.get("cluster_statuses") if isinstance(clusters, dict) else None
    for status in statuses if isinstance(statuses, list) else ():
        if not isinstance(status, dict) or status.get("name") != cluster:
            continue
        hosts = status.get("host_statuses")
        for host in hosts if isinstance(hosts, list) else ():
            sock = _field(_field(host, "address"), "socket_address")
            addr, port = _field(sock, "address"), _field(sock, "port_value")
            if isinstance(addr, str) and isinstance(port, int) and not isinstance(port, bool):
                out.append((addr, port))
    return out


def _field(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else None


@dataclass
class _Endpoint:
    pool: str
    url: str
    task: asyncio.Task[None] | None = None
    load: EngineLoad | None = None
    at: float = 0.0
    sent_mark: int = 0


@dataclass
class ScrapeStats:
    """What telemetry reads: failures by (pool, cause), scrapes by pool, latest pool load."""

    failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    scrapes: Counter[str] = field(default_factory=Counter)
    load: dict[str, EngineLoad] = field(default_factory=dict)


class PoolLoadScraper:
    def __init__(
        self,
        pressure: LivePressure,
        static: Mapping[str, Iterable[str]],
        interval_s: float,
        timeout_s: float,
        envoy_admin: str = "",
        clusters: Mapping[str, str] | None = None,
        discovery_interval_s: float = 2.0,
        metrics_path: str = "/metrics",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pressure = pressure
        self.static = {pool: [metrics_url(e, metrics_path) for e in eps] for pool, eps in static.items()}
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.envoy_admin = envoy_admin.rstrip("/")
        if self.envoy_admin and "://" not in self.envoy_admin:
            self.envoy_admin = "http://" + self.envoy_admin
        self.clusters = dict(clusters or {})
        self.discovery_interval_s = discovery_interval_s
        self.metrics_path = metrics_path
        self.clock = clock
        self.stats = ScrapeStats()
        self.endpoints: dict[tuple[str, str], _Endpoint] = {}
        self._session: aiohttp.ClientSession | None = None
        self._discovery: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60), auto_decompress=True
        )
        self._set_members({pool: list(urls) for pool, urls in self.static.items()})
        if self.envoy_admin and self.clusters:
            self._discovery = asyncio.create_task(self._discover_forever(), name="pool-discovery")

    async def stop(self) -> None:
        tasks = [t for t in (self._discovery, *(e.task for e in self.endpoints.values())) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.endpoints.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- membership --------------------------------------------------------------------------------
    def _set_members(self, members: Mapping[str, list[str]]) -> None:
        """Start scraping new endpoints and stop scraping gone ones; the others keep their state."""
        wanted = {(pool, url) for pool, urls in members.items() for url in urls}
        for key in set(self.endpoints) - wanted:
            ep = self.endpoints.pop(key)
            if ep.task is not None:
                ep.task.cancel()
        for pool, url in sorted(wanted - set(self.endpoints)):
            ep = self.endpoints[(pool, url)] = _Endpoint(pool, url)
            ep.task = asyncio.create_task(self._scrape_forever(ep), name=f"scrape {pool} {url}")
        for pool in {pool for pool, _ in self.endpoints} | set(members):
            self._publish(pool)

    async def _discover_forever(self) -> None:
        """Until Envoy answers (a router usually starts before its Envoy), retry every scrape
        interval, so live load is there from the first routed request; then every discovery interval."""
        while True:
            members = await self.discover()
            if members is not None:
                self._set_members(members)
            await asyncio.sleep(self.discovery_interval_s if members is not None else self.interval_s)

    async def discover(self) -> dict[str, list[str]] | None:
        """Static endpoints plus the hosts Envoy lists for each pool cluster; None when the admin
        endpoint cannot be read (keep the current members rather than drop them all)."""
        assert self._session is not None
        try:
            timeout = aiohttp.ClientTimeout(total=max(1.0, self.timeout_s))
            async with self._session.get(f"{self.envoy_admin}/clusters?format=json", timeout=timeout) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                doc = orjson.loads(await resp.read())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.stats.failures[("discovery", UNREACHABLE)] += 1
            log.debug("envoy admin %s unreadable: %s", self.envoy_admin, exc)
            return None
        members = {pool: list(urls) for pool, urls in self.static.items()}
        for pool, cluster in self.clusters.items():
            urls = members.setdefault(pool, [])
            for addr, port in cluster_hosts(doc, cluster):
                host = f"[{addr}]" if ":" in addr else addr
                url = f"http://{host}:{port}{self.metrics_path}"
                if url not in urls:
                    urls.append(url)
        return members

    # -- scraping ----------------------------------------------------------------------------------
    async def _scrape_forever(self, ep: _Endpoint) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await self.scrape(ep)
            await asyncio.sleep(max(0.0, self.interval_s - (loop.time() - began)))

    async def scrape(self, ep: _Endpoint) -> None:
        assert self._session is not None
        at, mark = self.clock(), self.pressure.sent.get(ep.pool, 0)
        cause = ""
        try:
            async with self._session.get(ep.url, timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
                if resp.status != 200:
                    cause = HTTP_STATUS
                else:
                    body = bytearray()
                    async for chunk in resp.content.iter_any():
                        body += chunk
                        if len(body) > MAX_METRICS_BYTES:
                            break
                    load = parse_engine_load(bytes(body)) if len(body) <= MAX_METRICS_BYTES else None
                    if load is not None:
                        ep.load, ep.at, ep.sent_mark = load, at, mark
                    else:
                        cause = TOO_LARGE if len(body) > MAX_METRICS_BYTES else UNREADABLE
        except TimeoutError:
            cause = TIMEOUT
        except (aiohttp.ClientError, OSError, ValueError):
            cause = UNREACHABLE
        self.stats.scrapes[ep.pool] += 1
        if cause:
            self.stats.failures[(ep.pool, cause)] += 1
        self._publish(ep.pool)

    def live_engines(self, pool: str) -> list[str]:
        """Base URLs (``scheme://host:port``) of ``pool``'s engines whose latest scrape is fresh: the
        ones that answer now (an engine that hangs or is gone drops out within ``max_age_s``)."""
        now, max_age = self.clock(), self.pressure.max_age_s
        out = []
        for ep in self.endpoints.values():
            if ep.pool == pool and ep.load is not None and now - ep.at <= max_age:
                parts = urlsplit(ep.url)
                out.append(f"{parts.scheme}://{parts.netloc}")
        return out

    def _publish(self, pool: str) -> None:
        """Rebuild the pool's sample from its endpoints' fresh scrapes and hand it to the policy."""
        now, max_age = self.clock(), self.pressure.max_age_s
        members = [ep for ep in self.endpoints.values() if ep.pool == pool]
        fresh = [ep for ep in members if ep.load is not None and now - ep.at <= max_age]
        if not fresh:
            return  # the last sample ages out on its own: the policy falls back to the local count
        load = pool_load({ep.url: ep.load for ep in fresh if ep.load is not None})
        self.stats.load[pool] = load
        sample = Sample(load, min(ep.at for ep in fresh), len(fresh), len(members), min(ep.sent_mark for ep in fresh))
        self.pressure.observe(pool, sample)


def build_scraper(live: LivePressure, cfg: LiveLoadConfig) -> PoolLoadScraper:
    """The scraper the config asks for (static endpoints and/or Envoy discovery), not yet started."""
    return PoolLoadScraper(
        live,
        {SHORT: cfg.short_endpoints, LONG: cfg.long_endpoints},
        cfg.scrape_interval_s,
        cfg.scrape_timeout_s,
        envoy_admin=cfg.envoy_admin,
        clusters={SHORT: cfg.short_cluster, LONG: cfg.long_cluster},
        discovery_interval_s=cfg.discovery_interval_s,
        metrics_path=cfg.metrics_path,
    )
