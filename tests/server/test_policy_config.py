"""The reclaim policy from traitlets: what config gives, and config mistakes named at start-up."""

from __future__ import annotations

from typing import Any

import pytest
from traitlets import TraitError
from traitlets.config import Config

from jupyter_dlinfra.core.idle import ReclaimAction
from jupyter_dlinfra.server.app import DLInfra


def _app(**options: Any) -> DLInfra:
    return DLInfra(config=Config({"DLInfra": options}))


def test_the_defaults_warn_at_30_min_and_reclaim_at_an_hour() -> None:
    policy = _app().configured_policy()
    default = policy.default
    assert (default.idle_after, default.warn_after, default.reclaim_after) == (600, 1800, 3600)
    assert default.action is ReclaimAction.RELEASE and default.max_keeps == 3
    assert policy.users == {} and policy.groups == {}


def test_overrides_and_exemptions_come_together() -> None:
    policy = _app(
        reclaim_action="notify",
        policy_overrides={"users": {"ann": {"reclaim_after": 7200}}, "groups": {"ml": {}}},
        exempt_users=["oncall"],
        exempt_groups=["infra"],
    ).configured_policy()
    assert policy.default.action is ReclaimAction.NOTIFY
    assert policy.for_user("ann") is not None
    assert policy.for_user("ann").reclaim_after == 7200  # type: ignore[union-attr]
    assert policy.for_user("oncall") is None
    assert policy.for_user("bea", ["infra"]) is None
    assert policy.for_user("bea", ["ml"]) == policy.default


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"warn_after": 100.0}, "DLInfra.warn_after: must be at least idle_after"),
        ({"reclaim_after": 1000.0}, "DLInfra.reclaim_after: must be later than warn_after"),
        ({"idle_util_percent": 101.0}, "DLInfra.idle_util_percent: is a percentage"),
        ({"max_keeps": -1}, "DLInfra.max_keeps: must be 0 or more"),
        (
            {"policy_overrides": {"groups": {"ml": {"reclaim_after": 1}}}},
            "groups.ml.reclaim_after: must be later than warn_after",
        ),
        ({"policy_overrides": {"teams": {}}}, "takes 'users' and 'groups', not teams"),
    ],
)
def test_a_config_mistake_names_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(TraitError, match=message):
        _app(**options).configured_policy()


def test_an_unknown_action_is_refused_by_the_trait() -> None:
    with pytest.raises(TraitError):
        _app(reclaim_action="explode").reclaim_action  # noqa: B018


def test_a_list_written_as_a_literal_on_the_command_line_is_read_as_a_list() -> None:
    """``--DLInfra.admin_users="['admin', 'bob']"``: the server parses the option before it knows
    the extension's classes, so the extension gets a deferred string, as here."""
    from traitlets.config.application import Application
    from traitlets.config.loader import KVArgParseConfigLoader

    argv = ["--DLInfra.admin_users=['admin', 'bob']", "--DLInfra.exempt_groups=oncall"]
    config = KVArgParseConfigLoader(argv, classes=[Application]).load_config()
    app = DLInfra()
    app.update_config(config)
    assert app.admin_users == ["admin", "bob"]
    assert app.exempt_groups == ["oncall"]
    app.admin_users = ["alice"]  # a plain list stays what it is
    assert app.admin_users == ["alice"]
    with pytest.raises(TraitError, match="must be a list of names"):
        app.admin_users = ["[1, 2]"]
    with pytest.raises(TraitError, match=r"write --DLInfra.admin_users=alice"):
        app.admin_users = ["[alice, bob]"]


def test_the_event_stream_timings_refuse_negative_values() -> None:
    app = _app(events_fanout_rate=0)
    assert app.events_fanout_rate == 0  # 0: no bound
    for name in ("events_debounce", "events_fanout_rate", "events_keepalive"):
        with pytest.raises(TraitError, match=f"DLInfra.{name} must be positive"):
            setattr(app, name, -1)
