import numpy as np
import pytest

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
