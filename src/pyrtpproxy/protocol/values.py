"""A quicker constructor for the frozen, slotted dataclasses made on every command.

A frozen dataclass's ``__init__`` stores each field with ``object.__setattr__`` (the
class's own ``__setattr__`` refuses), a generic attribute lookup per field; a U/L/D
triple makes a few dozen such values (the command, its events, its reply). :func:`slot_init`
replaces that ``__init__`` with one of the same signature that stores each field
through its slot's descriptor, which is what ``object.__setattr__`` ends up doing, at
about half the cost. The class stays what ``@dataclass`` made it: frozen, compared,
hashed and printed by its fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

_T = TypeVar("_T")
_NO_ARGUMENT = object()  # a default_factory field's default: make a fresh value


def slot_init(cls: type[_T]) -> type[_T]:
    """Use as the outer decorator of ``@dataclass(frozen=True, slots=True)``."""
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    if not (params.frozen and "__slots__" in cls.__dict__):
        raise TypeError(f"{cls.__name__}: slot_init is for frozen, slotted dataclasses")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: slot_init does not call __post_init__")
    namespace: dict[str, Any] = {"_NO_ARGUMENT": _NO_ARGUMENT}
    arguments: list[str] = []
    lines: list[str] = []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = field.name
        if not field.init or field.kw_only:
            raise TypeError(f"{cls.__name__}.{name}: slot_init needs plain init fields")
        namespace[f"_set_{name}"] = cls.__dict__[name].__set__
        if field.default is not dataclasses.MISSING:
            namespace[f"_default_{name}"] = field.default
            arguments.append(f"{name}=_default_{name}")
        elif field.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{name}"] = field.default_factory
            arguments.append(f"{name}=_NO_ARGUMENT")
            lines.append(f"    if {name} is _NO_ARGUMENT: {name} = _factory_{name}()")
        else:
            arguments.append(name)
        lines.append(f"    _set_{name}(self, {name})")
    source = f"def __init__(self, {', '.join(arguments)}):\n" + "\n".join(lines or ["    pass"])
    exec(source, namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
