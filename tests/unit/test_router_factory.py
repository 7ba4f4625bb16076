"""The config -> algorithm parameter bridge: every parameter is accounted for."""

from __future__ import annotations

import dataclasses

import pytest

from extproc.config import Config
from extproc.router_factory import _same_named, build_router


@dataclasses.dataclass(frozen=True)
class _Params:
    alpha: int = 1
    beta: int = 2


@dataclasses.dataclass(frozen=True)
class _Section:
    alpha: int = 10


def test_a_parameter_missing_from_the_section_is_an_error_not_a_silent_default() -> None:
    with pytest.raises(TypeError, match=r"_Params: \['beta'\] not in config section _Section"):
        _same_named(_Params, _Section())


def test_explicit_and_internal_parameters_are_accounted_for() -> None:
    assert _same_named(_Params, _Section(), beta=5) == _Params(alpha=10, beta=5)
    assert _same_named(_Params, _Section(), internal=["beta"]) == _Params(alpha=10, beta=2)


def test_the_default_config_builds_a_router() -> None:
    assert build_router(Config()) is not None
