"""slot_init: the quicker constructor behaves as the one @dataclass writes."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field

import pytest

from pyrtpproxy.engine import events
from pyrtpproxy.protocol import commands, replies
from pyrtpproxy.protocol.values import slot_init


@dataclass(frozen=True, slots=True)
class Plain:
    required: int
    with_default: str = "x"
    with_factory: list[int] = field(default_factory=list)


@slot_init
@dataclass(frozen=True, slots=True)
class Quick:
    required: int
    with_default: str = "x"
    with_factory: list[int] = field(default_factory=list)


def test_same_signature_as_the_dataclass_constructor() -> None:
    plain, quick = inspect.signature(Plain), inspect.signature(Quick)
    assert list(plain.parameters) == list(quick.parameters)
    assert plain.parameters["with_default"].default == quick.parameters["with_default"].default


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1,), {}), ((1, "y"), {}), ((1,), {"with_factory": [2]}), ((), {"required": 3})],
)
def test_builds_the_same_values(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    plain, quick = Plain(*args, **kwargs), Quick(*args, **kwargs)  # type: ignore[arg-type]
    assert dataclasses.astuple(plain) == dataclasses.astuple(quick)
    assert repr(quick) == repr(plain).replace("Plain", "Quick")
    assert quick == Quick(*args, **kwargs)  # type: ignore[arg-type]
    assert hash(Quick(1, "y", ())) == hash(Quick(1, "y", ()))  # type: ignore[arg-type]


def test_a_factory_makes_a_fresh_value_each_time() -> None:
    assert Quick(1).with_factory is not Quick(1).with_factory


def test_stays_frozen_and_refuses_bad_calls() -> None:
    value = Quick(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.required = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Quick()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Quick(1, "y", [], 4)  # type: ignore[call-arg]


def test_only_for_frozen_slotted_dataclasses() -> None:
    @dataclass
    class Mutable:
        value: int

    with pytest.raises(TypeError):
        slot_init(Mutable)


@pytest.mark.parametrize("module", [events, commands, replies])
def test_every_value_class_of_the_core_keeps_its_dataclass_signature(module: object) -> None:
    for cls in vars(module).values():
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            names = [f.name for f in dataclasses.fields(cls)]
            assert list(inspect.signature(cls).parameters) == names, cls
