"""One error tree: every code declared once, by a plain class, with its status in one table."""

from __future__ import annotations

import inspect

from broker.crypto.errors import CryptoError
from broker.errors import PROBLEMS, BrokerError, OutOfScope, Refused


def _declared(base: type) -> list[type]:
    """Every class below `base` that declares its own code (the app imports them all)."""
    import broker.main  # noqa: F401 - every router, service and its errors

    found, todo = [], list(base.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if "code" in vars(cls):
            found.append(cls)
    return found


def test_no_code_is_declared_twice() -> None:
    classes = _declared(BrokerError) + _declared(CryptoError)
    by_code: dict[str, list[str]] = {}
    for cls in classes:
        by_code.setdefault(cls.code, []).append(f"{cls.__module__}.{cls.__qualname__}")
    assert {code: names for code, names in by_code.items() if len(names) > 1} == {}


def test_every_code_has_its_status_and_title_in_the_table() -> None:
    for cls in _declared(BrokerError) + _declared(CryptoError):
        if cls.code != "crypto.error":
            status, title = PROBLEMS[cls.code]
            assert 400 <= status < 600, cls
            assert title, cls


def test_classes_are_declared_in_source() -> None:
    """A traceback names a class that grep finds (no class made by a factory at run time)."""
    for cls in _declared(BrokerError):
        source = inspect.getsource(inspect.getmodule(cls))  # type: ignore[arg-type]
        assert f"class {cls.__name__}(" in source, cls


def test_a_crypto_refusal_is_reported_with_its_own_code() -> None:
    from broker.crypto.errors import TooLarge

    err = Refused(TooLarge("envelope over 1 MiB"))
    assert (err.code, err.status_code) == ("envelope.too_large", 413)
    assert err.problem(instance=None, request_id=None).title == PROBLEMS["envelope.too_large"][1]


def test_scope_refusals_carry_their_decision_code() -> None:
    err = OutOfScope("no designation", code="scope.focal_point_not_designated")
    assert (err.code, err.status_code) == ("scope.focal_point_not_designated", 403)
