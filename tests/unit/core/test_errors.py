"""One root for every error (issue 14, item 6): each exception class the product defines derives from
walduck.errors.WalduckError, and the DLQ family carries a reason."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from walduck.errors import InvariantBroken, Unprocessable, WalduckError

PACKAGES = ("walduck", "connectors", "pipeline", "sinks", "stack")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        names.append(package)
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}.")]
    return [n for n in names if not n.endswith("__main__")]


def _defined_errors() -> list[type[BaseException]]:
    found = []
    for name in _modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == name and issubclass(obj, BaseException):
                found.append(obj)
    return found


def test_every_product_error_has_the_one_root() -> None:
    errors = _defined_errors()
    assert len(errors) >= 25, [e.__name__ for e in errors]  # the scan found them (not an empty pass)
    orphans = [f"{e.__module__}.{e.__qualname__}" for e in errors if not issubclass(e, WalduckError)]
    assert orphans == []


@pytest.mark.parametrize("family", [Unprocessable, InvariantBroken])
def test_families_are_disjoint(family: type[WalduckError]) -> None:
    other = InvariantBroken if family is Unprocessable else Unprocessable
    assert not [e for e in _defined_errors() if issubclass(e, family) and issubclass(e, other)]


def test_unprocessable_errors_carry_their_reason() -> None:
    from connectors.errors import DecodeError
    from pipeline.compaction import InvalidChange
    from walduck.records import MalformedRecord

    for error in (DecodeError("bad json", "x"), InvalidChange("row without id"), MalformedRecord("not json")):
        assert isinstance(error, Unprocessable)
        assert error.reason and error.reason != Unprocessable.reason
