import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.cli import main
from extproc.config import ConfigError, describe, load_config


def test_defaults_are_the_papers():
    cfg = load_config(env={})
    assert cfg.routing.b_short == 8192 and cfg.calibration.beta == 0.95 and cfg.calibration.gamma == 1.0
    assert cfg.calibration.cold_start == 4.0 and cfg.routing.header_name == "x-budget-pool"


def test_precedence_file_env_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("routing:\n  b_short: 4096\n  long_context: 32768\ncalibration:\n  gamma: 2\n")
    env = {"BUDGET_ROUTER_ROUTING_B_SHORT": "6000", "BUDGET_ROUTER_CATEGORIES_ENABLED": "prose,code"}
    cfg = load_config(f, env=env, overrides={"calibration": {"gamma": "0.5"}})
    assert cfg.routing.b_short == 6000  # env beats file
    assert cfg.routing.long_context == 32768  # file beats default
    assert cfg.calibration.gamma == 0.5  # flag beats all
    assert cfg.categories.enabled == ["prose", "code"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("routing:\n  b_shrt: 1\n", "unknown option routing.b_shrt"),
        ("routng: {}\n", "unknown section"),
        ("routing:\n  b_short: many\n", "cannot use 'many' as int"),
        ("routing:\n  b_short: 0\n", "b_short must be > 0"),
        ("calibration:\n  beta: 1.5\n", "beta must be in [0, 1)"),
        ("- a\n- b\n", "must hold a mapping"),
        ("routing: [1\n", "not valid YAML"),
    ],
)
def test_bad_config_files_give_precise_errors(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(f, env={})


def test_missing_file_and_bad_bool_env():
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config("/nonexistent/x.yaml", env={})
    with pytest.raises(ConfigError, match=r"routing\.inject_include_usage"):
        load_config(env={"BUDGET_ROUTER_ROUTING_INJECT_INCLUDE_USAGE": "maybe"})


def test_every_option_is_documented():
    table = describe()
    assert "`--routing-b-short` / `BUDGET_ROUTER_ROUTING_B_SHORT`" in table
    assert table.count("\n") > 40


def test_cli_reports_bad_values_with_exit_2(capsys):
    assert main(["config", "--routing-b-short", "x"]) == 2
    assert "cannot use 'x' as int" in capsys.readouterr().err
    assert main(["config", "--calibration-gamma", "1.5"]) == 0


def test_readme_configuration_table_is_current():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert describe() in readme, "README is stale: paste `budget-router config --doc` into ## Configuration"


def test_live_load_is_off_until_an_endpoint_source_is_set():
    cfg = load_config(env={})
    assert not cfg.live_load.enabled
    cfg = load_config(env={"BUDGET_ROUTER_LIVE_LOAD_SHORT_ENDPOINTS": "10.0.0.1:8000, http://vllm-2:8000/metrics"})
    assert cfg.live_load.short_endpoints == ["10.0.0.1:8000", "http://vllm-2:8000/metrics"]
    assert cfg.live_load.enabled


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--live-load-short-endpoints", "ftp://vllm:8000", "live_load.short_endpoints"),
        ("--live-load-long-endpoints", "vllm:http", "live_load.long_endpoints"),
        ("--live-load-envoy-admin", "localhost:notaport", "live_load.envoy_admin"),
        ("--live-load-max-age-s", "0.01", "live_load.max_age_s"),
        ("--live-load-scrape-timeout-s", "0", "live_load.scrape_timeout_s"),
        ("--live-load-metrics-path", "metrics", "live_load.metrics_path"),
    ],
)
def test_bad_live_load_settings_name_the_option_and_exit_2(capsys, flag, value, message):
    assert main(["config", flag, value]) == 2
    assert message in capsys.readouterr().err


def test_one_source_of_defaults_for_serve_plan_and_envoy():
    """The default config builds the algorithm's default parameters (nothing is declared twice),
    the planner's router reads the same config, and the Envoy layout agrees with the router."""
    from extproc.algorithm import BudgetParams, CalibrationParams, CategoryParams, DispatchPolicy
    from extproc.config import Config
    from extproc.gateway.envoy_config import EnvoyLayout, agreed_with
    from extproc.planner.plan import Planner, PlanSettings
    from extproc.planner.profiles import load_profile
    from extproc.planner.routing import SimClock
    from extproc.planner.sim_workload import SimWorkload
    from extproc.router_factory import build_router

    router = build_router(Config())
    assert router.budget == BudgetParams() and router.policy == DispatchPolicy()
    assert router.calibrator.params == CalibrationParams() and router.categorizer.params == CategoryParams()
    assert router.pressure.capacity == {"short": 256, "long": 64}  # type: ignore[attr-defined]

    cfg = load_config(env={}, overrides={"calibration": {"gamma": "2.5"}, "routing": {"framing_per_message": "9"}})
    settings = PlanSettings(load_profile("llama3-70b-a100"), 10.0, config=cfg)
    one = SimWorkload("one", np.zeros(1), np.array([100]), np.array([10]), ("prose",), np.array([400]))
    planned = Planner(settings, one).router(4096, 10, 20, SimClock())
    assert planned.calibrator.params.gamma == 2.5 and planned.budget.framing_per_message == 9
    assert planned.policy.b_short == 4096 and planned.pressure.capacity == {"short": 10, "long": 20}  # type: ignore[attr-defined]

    assert {k: getattr(EnvoyLayout(), k) for k in agreed_with(Config())} == agreed_with(Config())
    custom = load_config(env={}, overrides={"routing": {"header_name": "x-pool", "reason_header": "x-why"}})
    assert agreed_with(custom)["header_name"] == "x-pool" and "x-why" in agreed_with(custom)["owned_headers"]


# -- every option validated up front, all errors at once, each naming its option --------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--server-listen", "127.0.0.1:-1"], "server.listen"),
        (["--server-listen", "127.0.0.1:70000"], "server.listen"),
        (["--server-listen", "nohost"], "server.listen"),
        (["--telemetry-metrics-port", "-1"], "telemetry.metrics_port"),
        (["--telemetry-log-level", "LOUD"], "telemetry.log_level"),
        (["--routing-b-short", "9000", "--routing-short-context", "8192"], "routing.b_short"),
        (["--spillover-short-capacity", "-3"], "spillover.short_capacity"),
        (["--spillover-long-capacity", "-1"], "spillover.long_capacity"),
        (["--server-grace-period-s", "-1"], "server.grace_period_s"),
        (["--calibration-save-interval-s", "0"], "calibration.save_interval_s"),
        (["--categories-cjk-share", "2"], "categories.cjk_share"),
        (["--telemetry-capture-content-max-bytes", "0"], "telemetry.capture_content_max_bytes"),
    ],
)
def test_out_of_range_options_exit_2_naming_the_option(capsys, argv, message):
    assert main(["config", *argv]) == 2
    assert message in capsys.readouterr().err


def test_all_errors_are_reported_at_once(capsys):
    argv = [
        "--server-listen",
        "127.0.0.1:-1",
        "--telemetry-metrics-port",
        "-1",
        "--telemetry-log-level",
        "LOUD",
        "--spillover-short-capacity",
        "-3",
        "--routing-b-short",
        "x",
    ]
    assert main(["config", *argv]) == 2
    err = capsys.readouterr().err
    for option in (
        "server.listen",
        "telemetry.metrics_port",
        "telemetry.log_level",
        "spillover.short_capacity",
        "routing.b_short",
    ):
        assert option in err, err
    with pytest.raises(ConfigError) as exc:
        load_config(env={"BUDGET_ROUTER_ROUTING_B_SHORT": "0", "BUDGET_ROUTER_CALIBRATION_BETA": "2"})
    assert len(exc.value.errors) == 2


def test_abbreviated_flags_are_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["config", "--routing-b-shor", "100"])
    assert exc.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_help_shows_metavars_defaults_and_environment_variables(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--server-listen HOST:PORT" in out and "CFG__" not in out
    assert "--routing-b-short N" in out and "--server-grace-period-s SECONDS" in out
    assert "BUDGET_ROUTER_SERVER_LISTEN" in out and "default: 127.0.0.1:9002" in out
    assert "--telemetry-traces, --no-telemetry-traces" in out


def test_booleans_are_switches_and_the_old_value_form_still_works():
    from extproc.cli import build_parser
    from extproc.config import config_from_args

    def parsed(*argv: str):
        return config_from_args(build_parser("config").parse_args(["config", *argv]))

    assert parsed("--telemetry-json-logs").telemetry.json_logs is True
    assert parsed("--telemetry-json-logs", "true").telemetry.json_logs is True
    assert parsed("--no-routing-inject-include-usage").routing.inject_include_usage is False
    assert parsed("--routing-inject-include-usage", "false").routing.inject_include_usage is False
    assert parsed().routing.inject_include_usage is True


def test_a_yaml_error_names_the_file(tmp_path, capsys):
    f = tmp_path / "router.yaml"
    f.write_text("routing: [1\n")
    assert main(["config", "-c", str(f)]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and "line" in err


@given(st.text(max_size=30) | st.sampled_from(["h:\u00b2", "h:\u0663", "[::]:80", "h:"]))
def test_listen_port_never_raises_and_only_returns_real_ports(address):
    from extproc.config import listen_port

    port = listen_port(address)
    assert port is None or 0 <= port <= 65535
    if port is not None:
        assert address.endswith(f":{address.rpartition(':')[2]}") and int(address.rpartition(":")[2]) == port
