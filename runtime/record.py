"""`Record`: the frozen value classes of the runtime's load path (signatures, call plans).

They behave like `@dataclass(frozen=True)` classes (positional or keyword construction with
defaults, equality and hash by field values, a `Name(field=value, ...)` repr, no assignment)
but cost nothing to define: each dataclass executes the source of its generated methods when
its module is imported, about 2 ms apiece on the machines here, and the classes a cached
`tdsl.load` needs made up some 20 ms of a 27 ms load. The front end, which runs only when
compiling, keeps real dataclasses.
"""

from __future__ import annotations

from typing import Any, ClassVar


class Record:
    """Base of a frozen record: a subclass lists its fields in `__slots__` (in order) and the
    defaults of its trailing fields in `_defaults`."""

    __slots__ = ()
    _defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = self.__slots__
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__}() takes {len(names)} arguments, "
                            f"{len(args)} given")
        for name, value in zip(names, args):
            object.__setattr__(self, name, value)
        for name in names[len(args):]:
            if name in kwargs:
                object.__setattr__(self, name, kwargs.pop(name))
            elif name in self._defaults:
                object.__setattr__(self, name, self._defaults[name])
            else:
                raise TypeError(f"{type(self).__name__}() missing argument '{name}'")
        if kwargs:
            raise TypeError(f"{type(self).__name__}() got unexpected arguments "
                            f"{sorted(kwargs)}")

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field '{name}' of a frozen "
                             f"{type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field '{name}' of a frozen {type(self).__name__}")

    def __reduce__(self) -> tuple:
        return (type(self), self._values())
