"""The compose watchdog's decision: what Docker's restart policy misses is restarted, an operator's
clean stop is not, and a container that keeps dying is retried with backoff, not in a loop."""

from __future__ import annotations

import pytest

from extproc.deploy.watchdog import _Backoff, action_for


@pytest.mark.parametrize(
    ("state", "action"),
    [
        ({"Status": "exited", "ExitCode": 137}, "start"),  # docker kill (SIGKILL): a manual stop to Docker
        ({"Status": "exited", "ExitCode": 1}, "start"),  # a crash the restart policy gave up on
        ({"Status": "exited", "ExitCode": 0, "OOMKilled": True}, "start"),
        ({"Status": "dead", "ExitCode": 255}, "start"),
        ({"Status": "exited", "ExitCode": 0}, None),  # docker stop / compose stop: drained and saved
        ({"Status": "exited", "ExitCode": 143}, None),  # ended by docker stop's SIGTERM (the emulator)
        ({"Status": "running", "Health": {"Status": "unhealthy"}}, "restart"),  # hung
        ({"Status": "running", "Health": {"Status": "healthy"}}, None),
        ({"Status": "running", "Health": {"Status": "starting"}}, None),
        ({"Status": "running"}, None),  # no healthcheck
        ({"Status": "restarting", "ExitCode": 137}, None),  # Docker's own policy is on it
        ({"Status": "created"}, None),
    ],
)
def test_action_for_each_container_state(state: dict[str, object], action: str | None) -> None:
    assert action_for(state) == action


def test_backoff_doubles_to_a_minute() -> None:
    backoff = _Backoff()
    assert backoff.due(0.0)
    delays = [backoff.note(0.0) for _ in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert not backoff.due(59.0) and backoff.due(60.0)
