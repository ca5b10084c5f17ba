"""A client's side of ``GET /dlinfra/api/events``: the whole snapshot it starts with, moved by
each ``delta`` (the rules of api/openapi.yaml, as the front end's ``applyDelta`` follows them)."""

from __future__ import annotations

from typing import Any

__all__ = ["StreamGap", "apply_delta"]


#: keys of a delta that move parts of the snapshot rather than replace a key of it
_MOVED_APART = frozenset(
    {"base", "gpus", "gpus_gone", "allocations", "allocations_gone", "cluster"}
    | {"queue_order", "queue_put"}
)


class StreamGap(Exception):
    """A delta that does not follow the snapshot held: the client must open the stream again."""


def apply_delta(snapshot: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any] | None:
    """The snapshot ``delta`` makes of ``snapshot``; None for a delta it already covers."""
    if delta["seq"] <= snapshot["seq"]:
        return None
    if delta["base"] != snapshot["seq"]:
        raise StreamGap(f"delta {delta['seq']} follows {delta['base']}, not {snapshot['seq']}")
    nodes = {
        node["name"]: {gpu["uuid"]: gpu for gpu in node["gpus"]}
        for node in snapshot["cluster"]["nodes"]
    }
    for name, uuids in delta["gpus_gone"].items():
        shown = nodes.get(name, {})
        for uuid in uuids:
            shown.pop(uuid, None)
        if not shown:
            nodes.pop(name, None)
    for name, entries in delta["gpus"].items():
        shown = nodes.setdefault(name, {})
        for entry in entries:
            shown[entry["uuid"]] = entry
    granted = {a["id"]: a for a in snapshot["allocations"]}
    for gone in delta["allocations_gone"]:
        granted.pop(gone, None)
    granted.update((a["id"], a) for a in delta["allocations"])
    moved = {key: value for key, value in delta.items() if key not in _MOVED_APART}
    if "queue_order" in delta:
        entries = {a["id"]: a for a in snapshot["queue"]}
        entries.update((a["id"], a) for a in delta["queue_put"])
        moved["queue"] = [entries[i] for i in delta["queue_order"]]
    return {
        **snapshot,
        **moved,
        "cluster": {
            **delta["cluster"],
            "nodes": [
                {"name": name, "gpus": sorted(shown.values(), key=lambda g: g["index"])}
                for name, shown in sorted(nodes.items())
            ],
        },
        "allocations": [granted[i] for i in sorted(granted)],
    }
