"""The error hierarchy: stable codes, one exit/HTTP table, pickling, stdlib bases."""

from __future__ import annotations

import pickle

import pytest

from crucible_core import errors as E


def _all(cls: type[E.CrucibleError]) -> list[type[E.CrucibleError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all(sub))
    return out


def test_every_error_class_has_a_code_in_the_table() -> None:
    for cls in _all(E.CrucibleError):
        assert cls.code in E.ERROR_TABLE, cls


@pytest.mark.parametrize(
    ("exc", "exit_code", "http"),
    [
        (E.ConfigError("x"), 2, 400),
        (E.ValidationError("x", path="$.a"), 2, 422),
        (E.UnsupportedError("x"), 2, 422),
        (E.NotFound("x"), 4, 404),
        (E.PluginLoadError("x"), 3, 500),
        (E.BackendError("x"), 1, 502),
        (E.CapacityError("x"), 1, 503),
        (E.DeadlineExceeded("x"), 1, 504),
        (E.AuthError("x"), 2, 401),
        (E.Conflict("x"), 1, 409),
        (ValueError("x"), 1, 500),
        (KeyboardInterrupt(), 130, 499),
    ],
)
def test_exit_codes_and_http_statuses(exc: BaseException, exit_code: int, http: int) -> None:
    assert E.exit_code_for(exc) == exit_code
    assert E.http_status_for(exc) == http


def test_stdlib_bases() -> None:
    assert isinstance(E.ConfigError("x"), ValueError)
    assert isinstance(E.NotFound("x"), KeyError)
    assert isinstance(E.PluginLoadError("x"), ImportError)
    assert isinstance(E.BackendError("x"), RuntimeError)
    assert isinstance(E.DeadlineExceeded("x"), TimeoutError)
    assert str(E.NotFound("no job 'a'")) == "no job 'a'"  # not KeyError's quoted repr


@pytest.mark.parametrize(
    "exc",
    [
        E.ValidationError("bad", path="$.a.b", hint="fix it"),
        E.BackendError("down", retryable=True, backend="tinker", call="sample"),
        E.CapacityError("busy"),
        E.NotFound("gone", hint="look elsewhere"),
    ],
)
def test_errors_pickle_with_their_state(exc: E.CrucibleError) -> None:
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert back.to_dict() == exc.to_dict()
    assert str(back) == str(exc)


def test_retryable_defaults() -> None:
    assert E.CapacityError("x").retryable
    assert E.DeadlineExceeded("x").retryable
    assert not E.BackendError("x").retryable
    assert E.BackendError("x", retryable=True).retryable
    d = E.BackendError("x", request_id="r1", obj=object()).to_dict()
    assert d["request_id"] == "r1"
    assert "obj" not in d
