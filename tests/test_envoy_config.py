"""The Envoy renderer: committed files match it, every variant passes ``envoy --mode validate``, and a
real Envoy built from it routes by the header, defaults to the long pool, fails open, honours the
router's mode overrides and enforces the body limit."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from aiohttp import web
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from extproc.addresses import parse_endpoint
from extproc.gateway import envoy_config as ec
from extproc.stack.stack import envoy_binary
from tests.processes import terminate

ROOT = Path(__file__).resolve().parents[1]
ENVOY = envoy_binary()
# After the router vanishes, the first request waits one router connect timeout (0.25 s) and ejects it;
# the next ones fail open to the long pool at once (bounds with slack for a loaded CI machine).
FIRST_FAIL_OPEN_BOUND_S = 1.0
FAIL_OPEN_BOUND_S = 0.5


# ---------------------------------------------------------------- pure renderer


def test_committed_envoy_yaml_is_the_rendered_compose_layout() -> None:
    committed = (ROOT / "envoy" / "envoy.yaml").read_text()
    assert committed == ec.render(ec.compose_layout(), ec.COMPOSE_COMMAND), (
        f"envoy/envoy.yaml drifted from the renderer; regenerate with `{ec.COMPOSE_COMMAND}`"
    )


def test_committed_snippets_are_rendered() -> None:
    rendered = ec.render_snippets()
    on_disk = {p.name: p.read_text() for p in (ROOT / "envoy" / "snippets").glob("*.yaml")}
    assert on_disk == rendered, f"envoy/snippets drifted; regenerate with `{ec.SNIPPETS_COMMAND}`"


def test_cli_writes_the_same_text(tmp_path: Path) -> None:
    from extproc.cli import main

    out = tmp_path / "e.yaml"
    assert main(["envoy-config", "--out", str(out)]) == 0
    assert out.read_text() == ec.render(ec.compose_layout(), ec.COMPOSE_COMMAND)


def test_cli_rejects_bad_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    from extproc.cli import main

    assert main(["envoy-config", "--short", "no-port"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def _hcm(layout: ec.EnvoyLayout) -> dict[str, Any]:
    boot = yaml.safe_load(ec.render(layout))
    return boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def _ext_proc(hcm: dict[str, Any]) -> dict[str, Any]:
    [ext_proc] = [f for f in hcm["http_filters"] if f["name"] == ec.EXT_PROC_FILTER]
    return ext_proc


def test_routes_send_only_the_exact_short_header_short_and_default_long() -> None:
    layout = ec.compose_layout()
    short, default = _hcm(layout)["route_config"]["virtual_hosts"][0]["routes"]
    assert short["match"]["headers"] == [{"name": "x-budget-pool", "string_match": {"exact": "short"}}]
    assert default["match"] == {"prefix": "/"} and default["route"]["cluster"] == ec.LONG_CLUSTER
    failover = next(c for c in ec.clusters(layout) if c["name"] == ec.SHORT_FAILOVER_CLUSTER)
    assert failover["cluster_type"]["typed_config"]["clusters"] == [ec.SHORT_CLUSTER, ec.LONG_CLUSTER]
    plain = _hcm(dataclasses.replace(layout, short_failover=False, short_net="off"))
    assert plain["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] == ec.SHORT_CLUSTER


def _short_route(**changes: Any) -> dict[str, Any]:
    layout = dataclasses.replace(ec.compose_layout(), **changes)
    return _hcm(layout)["route_config"]["virtual_hosts"][0]["routes"][0]


@pytest.mark.parametrize("net", ["priority_group", "composite"])
def test_the_net_retries_once_on_the_long_pool(net: str) -> None:
    route = _short_route(short_net=net)
    policy = route["route"]["retry_policy"]
    assert policy["num_retries"] == 1 and policy["retriable_status_codes"] == [400]
    retry_on = {"connect-failure", "reset", "refused-stream", "retriable-status-codes"}
    assert set(policy["retry_on"].split(",")) == retry_on
    # The whole body must fit the retry buffer, else Envoy abandons the retry (retry_or_shadow_abandoned).
    assert route["request_body_buffer_limit"] == ec.compose_layout().max_body_bytes
    assert route["response_headers_to_add"][0]["header"]["key"] == ec.ATTEMPT_COUNT_HEADER
    if net == "priority_group":
        assert policy["refresh_cluster_on_retry"] is True  # else the retry re-uses attempt 1's cluster
        groups = route["route"]["inline_cluster_specifier_plugin"]["extension"]["typed_config"]["priority_groups"]
        assert [[c["cluster_name"] for c in g["clusters"]] for g in groups] == [
            [ec.SHORT_FAILOVER_CLUSTER],
            [ec.LONG_CLUSTER],
        ]
    else:
        assert route["route"]["cluster"] == ec.SHORT_NET_CLUSTER
        composite = next(c for c in ec.clusters(ec.EnvoyLayout(short_net=net)) if c["name"] == ec.SHORT_NET_CLUSTER)
        entries = composite["cluster_type"]["typed_config"]["clusters"]
        assert entries == [{"name": ec.SHORT_CLUSTER}, {"name": ec.LONG_CLUSTER}]


def test_the_attempt_count_is_for_the_router_only() -> None:
    names = [f["name"] for f in _hcm(ec.compose_layout())["http_filters"]]
    # Before ext_proc in the list = after it on the response path: the router reads it, clients never do.
    assert names == ["envoy.filters.http.header_mutation", ec.EXT_PROC_FILTER, "envoy.filters.http.router"]
    mutation = _hcm(ec.compose_layout())["http_filters"][0]["typed_config"]["mutations"]
    assert mutation == {"response_mutations": [{"remove": ec.ATTEMPT_COUNT_HEADER}]}


def test_without_the_net_a_short_route_never_retries() -> None:
    route = _short_route(short_net="off")
    assert "retry_policy" not in route["route"] and "response_headers_to_add" not in route
    names = [f["name"] for f in _hcm(ec.EnvoyLayout(short_net="off"))["http_filters"]]
    assert names == [ec.EXT_PROC_FILTER, "envoy.filters.http.router"]
    with pytest.raises(ValueError, match="short_net"):
        ec.EnvoyLayout(short_net="sometimes")


def test_ext_proc_modes_and_fail_modes() -> None:
    cfg = _ext_proc(_hcm(ec.compose_layout()))["typed_config"]
    assert cfg["failure_mode_allow"] is True
    assert cfg["processing_mode"] == {
        "request_header_mode": "SEND",
        "request_body_mode": "BUFFERED",
        "request_trailer_mode": "SKIP",
        "response_header_mode": "SEND",
        "response_body_mode": "BUFFERED",
        "response_trailer_mode": "SKIP",
    }
    assert cfg["allow_mode_override"] is True
    assert {m["response_body_mode"] for m in cfg["allowed_override_modes"]} == {"STREAMED", "NONE"}
    # A hung router costs each request at most the message timeout, then Envoy proceeds (long pool).
    assert cfg["message_timeout"] == "0.5s" == f"{ec.MESSAGE_TIMEOUT_S:g}s"
    [router] = [c for c in ec.clusters(ec.compose_layout()) if c["name"] == ec.ROUTER_CLUSTER]
    assert router["health_checks"][0]["timeout"] == f"{ec.ROUTER_HEALTH_TIMEOUT_S:g}s"
    closed = _hcm(ec.EnvoyLayout(failure_mode_allow=False, with_response_processing=False))
    cfg = _ext_proc(closed)["typed_config"]
    assert cfg["failure_mode_allow"] is False and "allow_mode_override" not in cfg
    assert cfg["processing_mode"]["response_body_mode"] == "NONE"


def test_every_pool_endpoint_names_its_pool_and_the_log_reads_it() -> None:
    """The served pool comes from the endpoint's metadata, so an aggregate (failover) cluster or a
    retry onto the other pool still logs the pool that answered."""
    layout = ec.EnvoyLayout(short=[("s1", 1), ("s2", 2)], long=[("l1", 3)])
    boot = yaml.safe_load(ec.render(layout))
    named = {
        c["name"]: [e["metadata"]["filter_metadata"][ec.POOL_METADATA_NAMESPACE]["pool"] for e in lb["lb_endpoints"]]
        for c in boot["static_resources"]["clusters"]
        if "load_assignment" in c and c["name"] in ec.CLUSTER_POOLS
        for lb in c["load_assignment"]["endpoints"]
    }
    assert named == {ec.SHORT_CLUSTER: ["short", "short"], ec.LONG_CLUSTER: ["long"]}
    router = next(c for c in boot["static_resources"]["clusters"] if c["name"] == ec.ROUTER_CLUSTER)
    assert "metadata" not in router["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    fmt = _hcm(layout)["access_log"][0]["typed_config"]["log_format"]["json_format"]
    assert fmt["pool"] == f"%UPSTREAM_METADATA({ec.POOL_METADATA_NAMESPACE}:pool)%"
    assert fmt["routed"] == "%REQ(X-BUDGET-POOL)%"


def test_served_pool_header_is_opt_in() -> None:
    assert "response_headers_to_add" not in _hcm(ec.EnvoyLayout())["route_config"]["virtual_hosts"][0]
    on = ec.EnvoyLayout(served_pool_header=ec.SERVED_POOL_HEADER)
    (added,) = _hcm(on)["route_config"]["virtual_hosts"][0]["response_headers_to_add"]
    assert added["header"] == {"key": ec.SERVED_POOL_HEADER, "value": ec.SERVED_POOL}


def test_cli_served_pool_header_flag(tmp_path: Path) -> None:
    from extproc.cli import main

    out = tmp_path / "e.yaml"
    assert main(["envoy-config", "--out", str(out), "--served-pool-header"]) == 0
    host = yaml.safe_load(out.read_text())["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    headers = host["typed_config"]["route_config"]["virtual_hosts"][0]["response_headers_to_add"]
    assert headers[0]["header"]["key"] == ec.SERVED_POOL_HEADER


def test_limits_are_consistent() -> None:
    layout = ec.EnvoyLayout(max_body_bytes=8 * ec.MIB, grpc_max_message_bytes=10 * ec.MIB)
    boot = yaml.safe_load(ec.render(layout))
    assert boot["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] == 8 * ec.MIB
    router = next(c for c in boot["static_resources"]["clusters"] if c["name"] == ec.ROUTER_CLUSTER)
    assert router["per_connection_buffer_limit_bytes"] == 10 * ec.MIB
    grpc_service = _ext_proc(_hcm(layout))["typed_config"]["grpc_service"]
    assert grpc_service["envoy_grpc"]["max_receive_message_length"] == 10 * ec.MIB
    with pytest.raises(ValueError, match="grpc_max_message_bytes"):
        ec.EnvoyLayout(max_body_bytes=32 * ec.MIB, grpc_max_message_bytes=32 * ec.MIB)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"short": []}, "at least one"),
        ({"long": [("h", 0)]}, "1..65535"),
        ({"router": [("bad host", 1)]}, "bad host"),
        ({"header_name": "X-Budget-Pool"}, "lower-case"),
        ({"served_pool_header": "Served Pool"}, "served_pool_header"),
        ({"max_body_bytes": 10}, "64 KiB"),
    ],
)
def test_layout_rejects_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ec.EnvoyLayout(**kwargs)


@given(st.text(max_size=30))
def test_parse_endpoint_never_crashes(text: str) -> None:
    try:
        host, port = parse_endpoint(text)
    except ValueError:
        return
    assert host and 1 <= port <= 65535


@given(st.sampled_from(["10.0.0.1", "vllm", "::1"]), st.integers(1, 65535))
def test_parse_endpoint_round_trips(host: str, port: int) -> None:
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    assert parse_endpoint(text) == (host, port)


# ---------------------------------------------------------------- envoy --mode validate


def _validate(path: Path) -> None:
    proc = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


VARIANTS = {
    "compose": ec.compose_layout(),
    "fail-closed": dataclasses.replace(ec.compose_layout(), failure_mode_allow=False),
    "no-response-processing": ec.EnvoyLayout(with_response_processing=False),
    "loopback-replicas-otlp": ec.EnvoyLayout(
        listen_host="127.0.0.1",
        admin_host="127.0.0.1",
        router=[("127.0.0.1", 9002), ("127.0.0.1", 9003), ("127.0.0.1", 9004)],
        short=[("127.0.0.1", 8001), ("127.0.0.1", 8002)],
        long=[("127.0.0.1", 8003)],
        otlp=("127.0.0.1", 4317),
        access_log_path=None,
        served_pool_header=ec.SERVED_POOL_HEADER,
    ),
    "no-ext-proc": ec.EnvoyLayout(ext_proc=False, strip_client_header=False),
    "net-composite": ec.EnvoyLayout(short_net="composite"),
    "net-off": ec.EnvoyLayout(short_net="off"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_rendered_variant_validates(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(ec.render(VARIANTS[name]))
    _validate(path)


@pytest.mark.e2e
def test_committed_envoy_yaml_validates() -> None:
    _validate(ROOT / "envoy" / "envoy.yaml")


@pytest.mark.e2e
def test_snippets_assemble_into_a_valid_config(tmp_path: Path) -> None:
    """A stand-in for the user's existing Envoy, with our fragments pasted where their headers say."""
    snip = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "envoy" / "snippets").glob("*.yaml")}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "existing",
        **snip["http_connection_manager"],
        "route_config": {"virtual_hosts": [{"name": "llm", "domains": ["*"], "routes": snip["routes"]}]},
        "http_filters": [
            *snip["ext_proc_filter"],
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    listener = {
        "name": "existing",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 10000}},
        **snip["listener"],
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }
    path = tmp_path / "assembled.yaml"
    path.write_text(yaml.safe_dump({"static_resources": {"listeners": [listener], "clusters": snip["clusters"]}}))
    _validate(path)


# ---------------------------------------------------------------- a real Envoy in front of two pools


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pool:
    """A tiny upstream that says who it is, what routing header it got and how big the body was."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.runner: web.AppRunner | None = None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.query.get("chunks"):
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            for i in range(int(request.query["chunks"])):
                await resp.write(f"data: {self.name}-{i}\n\n".encode())
                await asyncio.sleep(0.05)
            await resp.write_eof()
            return resp
        return web.json_response(
            {"pool": self.name, "header": request.headers.get("x-budget-pool"), "bytes": len(body)}
        )

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * ec.MIB)
        app.router.add_get("/health", lambda _r: web.Response(text="ok"))
        app.router.add_route("*", "/{tail:.*}", self._chat)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


class ScriptedRouter(ep_grpc.ExternalProcessorServicer):
    """A minimal ext_proc server speaking the router's contract: it sends every request with a
    ``route: short`` JSON field short (header + clear_route_cache after the buffered body) and
    switches SSE responses to STREAMED with ``override_style`` ('full' or 'minimal')."""

    def __init__(self, layout: ec.EnvoyLayout, override_style: str) -> None:
        self.layout = layout
        self.override_style = override_style
        self.response_body_messages: list[int] = []

    def _override(self) -> processing_mode_pb2.ProcessingMode:
        if self.override_style == "minimal":
            return processing_mode_pb2.ProcessingMode(response_body_mode=processing_mode_pb2.ProcessingMode.STREAMED)
        mode = processing_mode_pb2.ProcessingMode()
        for key, value in {**ec.processing_mode(self.layout), "response_body_mode": "STREAMED"}.items():
            enum = mode.DESCRIPTOR.fields_by_name[key].enum_type
            setattr(mode, key, enum.values_by_name[value].number)
        return mode

    async def Process(self, request_iterator: Any, context: Any) -> AsyncIterator[ep.ProcessingResponse]:
        self.response_body_messages.append(0)
        stream = len(self.response_body_messages) - 1
        async for msg in request_iterator:
            kind = msg.WhichOneof("request")
            if kind == "request_headers":
                yield ep.ProcessingResponse(request_headers=ep.HeadersResponse())
            elif kind == "request_body":
                common = ep.CommonResponse()
                if b'"route": "short"' in msg.request_body.body:
                    hdr = common.header_mutation.set_headers.add()
                    hdr.header.key = self.layout.header_name
                    hdr.header.raw_value = self.layout.short_value.encode()
                    common.clear_route_cache = True
                yield ep.ProcessingResponse(request_body=ep.BodyResponse(response=common))
            elif kind == "response_headers":
                sse = any(
                    h.key == "content-type" and b"event-stream" in h.raw_value
                    for h in msg.response_headers.headers.headers
                )
                out = ep.ProcessingResponse(response_headers=ep.HeadersResponse())
                if sse:
                    out.mode_override.CopyFrom(self._override())
                yield out
            elif kind == "response_body":
                self.response_body_messages[stream] += 1
                yield ep.ProcessingResponse(response_body=ep.BodyResponse())


@contextlib.asynccontextmanager
async def scripted_router(layout: ec.EnvoyLayout, port: int, style: str) -> AsyncIterator[ScriptedRouter]:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", layout.grpc_max_message_bytes),
            ("grpc.max_send_message_length", layout.grpc_max_message_bytes),
        ]
    )
    servicer = ScriptedRouter(layout, style)
    ep_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set(ec.EXT_PROC_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield servicer
    finally:
        await server.stop(0)


@contextlib.contextmanager
def running_envoy(layout: ec.EnvoyLayout, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    path = tmp_path / "envoy.yaml"
    path.write_text(ec.render(layout))
    log = (tmp_path / "envoy.log").open("wb")
    proc = subprocess.Popen(
        [ENVOY, "-c", str(path), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        terminate(proc, 10)
        log.close()


async def wait_ready(session: aiohttp.ClientSession, layout: ec.EnvoyLayout, proc: subprocess.Popen[bytes]) -> None:
    """Envoy is ready and has finished the first round of health checks on every cluster."""
    admin = f"http://127.0.0.1:{layout.admin_port}"
    for _ in range(200):
        assert proc.poll() is None, "envoy exited during startup"
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{admin}/ready") as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise AssertionError("envoy did not become ready")


@pytest.fixture
async def pools() -> AsyncIterator[tuple[Pool, Pool]]:
    short, long = Pool("short"), Pool("long")
    await short.start()
    await long.start()
    try:
        yield short, long
    finally:
        await short.stop()
        await long.stop()


def _layout(short: Pool, long: Pool, **kwargs: Any) -> ec.EnvoyLayout:
    return ec.EnvoyLayout(
        listen_host="127.0.0.1",
        listen_port=_free_port(),
        admin_host="127.0.0.1",
        admin_port=_free_port(),
        short=[("127.0.0.1", short.port)],
        long=[("127.0.0.1", long.port)],
        router=[("127.0.0.1", kwargs.pop("router_port", _free_port()))],
        **{
            "pool_health_interval_s": 1.0,
            "router_health_interval_s": 0.5,
            "message_timeout_s": 5.0,
            "access_log_path": None,
            **kwargs,
        },
    )


async def _post(
    session: aiohttp.ClientSession,
    layout: ec.EnvoyLayout,
    path: str = "/v1/chat/completions",
    header: str | None = None,
    body: bytes = b"{}",
) -> tuple[int, Any]:
    headers = {"content-type": "application/json"}
    if header is not None:
        headers["x-budget-pool"] = header
    async with session.post(f"http://127.0.0.1:{layout.listen_port}{path}", data=body, headers=headers) as r:
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, await r.text()


@pytest.mark.e2e
async def test_header_routes_and_default_is_long_without_router(pools: tuple[Pool, Pool], tmp_path: Path) -> None:
    layout = _layout(*pools, ext_proc=False, strip_client_header=False)
    async with aiohttp.ClientSession() as session:
        with running_envoy(layout, tmp_path) as proc:
            await wait_ready(session, layout, proc)
            assert (await _post(session, layout, header="short"))[1]["pool"] == "short"
            for header in (None, "long", "SHORT", "shorter", "garbage"):
                status, body = await _post(session, layout, header=header)
                assert (status, body["pool"]) == (200, "long"), header
            assert (await _post(session, layout, path="/not/an/api"))[1]["pool"] == "long"


@pytest.mark.e2e
async def test_dead_router_fails_open_to_long_and_client_header_is_stripped(
    pools: tuple[Pool, Pool], tmp_path: Path
) -> None:
    layout = _layout(*pools)  # router port nobody listens on
    async with aiohttp.ClientSession() as session:
        with running_envoy(layout, tmp_path) as proc:
            await wait_ready(session, layout, proc)
            for header in (None, "short", "long"):
                status, body = await _post(session, layout, header=header)
                assert (status, body["pool"], body["header"]) == (200, "long", None), header


@pytest.mark.e2e
async def test_dead_router_fail_closed_is_an_error(pools: tuple[Pool, Pool], tmp_path: Path) -> None:
    layout = _layout(*pools, failure_mode_allow=False)
    async with aiohttp.ClientSession() as session:
        with running_envoy(layout, tmp_path) as proc:
            await wait_ready(session, layout, proc)
            status, _ = await _post(session, layout)
            assert status >= 500


@pytest.mark.e2e
@pytest.mark.parametrize("style", ["full", "minimal"])
async def test_live_router_routes_short_streams_sse_and_caps_body(
    pools: tuple[Pool, Pool], tmp_path: Path, style: str
) -> None:
    router_port = _free_port()
    layout = _layout(*pools, router_port=router_port, max_body_bytes=2 * ec.MIB, grpc_max_message_bytes=4 * ec.MIB)
    async with aiohttp.ClientSession() as session, scripted_router(layout, router_port, style) as router:
        with running_envoy(layout, tmp_path) as proc:
            await wait_ready(session, layout, proc)
            status, body = await _post(session, layout, body=b'{"route": "short"}')
            assert (status, body["pool"], body["header"]) == (200, "short", "short")
            # a client cannot pin the short pool itself: the router did not choose it
            assert (await _post(session, layout, header="short"))[1]["pool"] == "long"
            # a 1 MiB prompt is buffered whole, reaches the router and the pool intact
            big = b'{"route": "short", "pad": "' + b"x" * ec.MIB + b'"}'
            status, body = await _post(session, layout, body=big)
            assert (status, body["pool"], body["bytes"]) == (200, "short", len(big))
            # above max_body_bytes Envoy itself answers 413
            status, _ = await _post(session, layout, body=b"x" * (3 * ec.MIB))
            assert status == 413
            # SSE: the override to STREAMED is accepted, so the router sees the chunks one by one
            router.response_body_messages.clear()
            status, text = await _post(session, layout, path="/v1/chat/completions?chunks=4")
            assert status == 200 and text.count("data: long-") == 4
            assert router.response_body_messages[-1] >= 3, router.response_body_messages


def test_gateway_api_example_parses_and_defaults_to_long() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "envoy" / "gateway" / "budget-router.yaml").read_text())}
    short_rule, default_rule = docs["HTTPRoute"]["spec"]["rules"]
    assert short_rule["matches"][0]["headers"] == [{"type": "Exact", "name": "x-budget-pool", "value": "short"}]
    assert short_rule["backendRefs"][0]["name"] == "vllm-short"
    assert "headers" not in default_rule["matches"][0] and default_rule["backendRefs"][0]["name"] == "vllm-long"
    ext = docs["EnvoyExtensionPolicy"]["spec"]["extProc"][0]
    assert ext["failOpen"] is True and ext["processingMode"]["allowModeOverride"] is True
    assert ext["processingMode"]["request"]["body"] == "Buffered"
    # One value for every shipped config: the Gateway API spelling of MESSAGE_TIMEOUT_S.
    assert ext["messageTimeout"] == f"{ec.MESSAGE_TIMEOUT_S * 1000:g}ms"


@contextlib.contextmanager
def blackhole(port: int) -> Iterator[None]:
    """A port that accepts no connections and refuses none: what a killed container's address does.

    A listener with a backlog of one, filled by a connection nobody accepts: the kernel then drops
    every further SYN, so a connect hangs until the client's own timeout (no RST, unlike a dead
    process on loopback).
    """
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(0)
    filler = socket.create_connection(("127.0.0.1", port), timeout=1)
    try:
        yield
    finally:
        filler.close()
        listener.close()


@pytest.mark.e2e
async def test_router_that_vanishes_fails_open_without_waiting_out_health_checks(
    pools: tuple[Pool, Pool], tmp_path: Path
) -> None:
    router_port = _free_port()
    # The shipped health-check interval: without ejection each request would wait the connect timeout
    # until two checks (>= 4 s) had failed.
    layout = _layout(*pools, router_port=router_port, router_health_interval_s=2.0)
    async with aiohttp.ClientSession() as session:
        with running_envoy(layout, tmp_path) as proc:
            async with scripted_router(layout, router_port, "full"):
                await wait_ready(session, layout, proc)
                status, body = await _post(session, layout, body=b'{"route": "short"}')
                assert (status, body["pool"]) == (200, "short")
            with blackhole(router_port):
                timings = []
                for _ in range(5):
                    started = time.monotonic()
                    status, body = await _post(session, layout, body=b'{"route": "short"}')
                    timings.append(time.monotonic() - started)
                    assert (status, body["pool"]) == (200, "long")
            # Back: on its first passing health check the router routes again.
            async with scripted_router(layout, router_port, "full"):
                started, pool = time.monotonic(), "long"
                while pool != "short" and time.monotonic() - started < 10:
                    await asyncio.sleep(0.1)
                    pool = (await _post(session, layout, body=b'{"route": "short"}'))[1]["pool"]
                recovered_s = time.monotonic() - started
                assert pool == "short" and recovered_s < 2 * layout.router_health_interval_s + 0.5, recovered_s
    print("fail-open seconds after the router vanished:", [round(t, 3) for t in timings])
    assert timings[0] < FIRST_FAIL_OPEN_BOUND_S and max(timings[1:]) < FAIL_OPEN_BOUND_S, timings
