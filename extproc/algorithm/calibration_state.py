"""The calibration state file's format, read in one place (the store, the demo's view and tests).

    {"version": 1, "replicas": {"<replica id>": {"updated": <unix s>, "categories": {<snapshot>}}}}

Every replica entry and every category is validated on its own: a malformed one is skipped and
reported as a problem line, never raised, so one bad entry (a hand edit, a newer writer, a torn
peer) cannot stop a router from starting or a sync from running. Unknown keys are kept, so a later
format may add fields per entry and older readers still use what they understand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from extproc.algorithm.calibration import CalibrationParams, CategoryState, finite_number, parse_categories

VERSION = 1


@dataclass(frozen=True, slots=True)
class ReplicaEntry:
    updated: float  # unix seconds of the replica's last write
    categories: dict[str, CategoryState]  # the usable ones
    raw: Mapping[str, Any]  # the entry as stored: written back unchanged when the file is rewritten


@dataclass(slots=True)
class StateFile:
    replicas: dict[str, ReplicaEntry] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # one line per skipped entry, naming it


def parse_state(raw: bytes, params: CalibrationParams) -> StateFile:
    """Everything usable in a state file's bytes; never raises."""
    out = StateFile()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        out.problems.append(f"not JSON: {exc}")
        return out
    replicas = data.get("replicas") if isinstance(data, dict) else None
    if not isinstance(replicas, dict):
        out.problems.append("no 'replicas' object")
        return out
    for rid, entry in replicas.items():
        if not isinstance(entry, dict):
            out.problems.append(f"replica {rid!r}: not an object")
            continue
        updated = finite_number(entry.get("updated"))
        if updated is None:
            out.problems.append(f"replica {rid!r}: 'updated' {entry.get('updated')!r} is not a unix time")
            continue
        if not isinstance(entry.get("categories"), dict):
            out.problems.append(f"replica {rid!r}: 'categories' is not an object")
            continue
        categories, problems = parse_categories(entry["categories"], params)
        out.problems += [f"replica {rid!r}: {p}" for p in problems]
        out.replicas[rid] = ReplicaEntry(updated, categories, entry)
    return out


def state_bytes(replicas: Mapping[str, Mapping[str, Any]]) -> bytes:
    return orjson.dumps({"version": VERSION, "replicas": replicas}, option=orjson.OPT_INDENT_2)
