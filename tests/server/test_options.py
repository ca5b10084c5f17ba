"""The extension's options, split into mixins by subject, are all still ``c.DLInfra.<name>``."""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Dict, Enum, Float, Int, List, Unicode
from traitlets.config import Config, Configurable

from jupyter_dlinfra.server.app import DLInfra
from jupyter_dlinfra.server.config import DLInfraOptions


def _other_value(trait: Any) -> Any:
    """A valid value that differs from the trait's default."""
    if isinstance(trait, Bool):
        return not trait.default_value
    if isinstance(trait, Enum):
        return next(v for v in trait.values if v != trait.default_value)
    if isinstance(trait, Int):
        return 7
    if isinstance(trait, Float):
        return 7.5
    if isinstance(trait, List):
        return ["x7"]
    if isinstance(trait, Dict):
        return {"x7": {}}
    if isinstance(trait, Unicode):
        return "x7"
    raise AssertionError(f"no test value for {type(trait).__name__}")


def test_every_mixin_option_is_set_through_c_dlinfra() -> None:
    own = DLInfraOptions.class_traits(config=True)
    assert len(own) == 68
    # a Configurable mixin would be a section of its own, configured as c.<Mixin>.<name>
    assert not [k.__name__ for k in DLInfraOptions.__mro__ if issubclass(k, Configurable)]
    values = {name: _other_value(trait) for name, trait in own.items()}
    values["default_user_quota"] = 3
    app = DLInfra(config=Config({"DLInfra": values}))
    assert {name: getattr(app, name) for name in own} == values
