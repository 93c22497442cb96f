"""One error tree: every error class is exported, derives from EventyardError and is drawn, in
its place, in the docstring of ``eventyard.errors``; nothing else raises builtin errors."""

from __future__ import annotations

import ast
import builtins
import inspect
import re
from pathlib import Path

import pytest

import eventyard
from eventyard import errors
from eventyard.errors import EventyardError

SOURCE = Path(eventyard.__file__).parent
ERROR_CLASSES = {name: cls for name, cls in vars(errors).items()
                 if inspect.isclass(cls) and issubclass(cls, BaseException)}

# Exceptions that never leave the module that raises them (control flow, caught right there).
INTERNAL = {"CopyProblem", "HandshakeRefused", "ChannelClosed", "ConnectionClosed"}

# Builtin errors still raised on purpose, and why each is right as it is.
BUILTIN_ALLOWED = {
    # The Executor contract: asyncio and concurrent.futures expect these from submit().
    ("running.py", "TypeError"), ("running.py", "RuntimeError"),
    # What the AMQP client raises for a header it cannot encode: the memory broker's twin of it.
    ("memory/wire.py", "TypeError"), ("memory/wire.py", "ValueError"),
    # Parse errors of a frame decoder, caught by its caller and turned into a frame error.
    ("rabbitmq/lenient.py", "ValueError"), ("rabbitmq/assembling.py", "ValueError"),
    # A socket deadline, caught by its caller and turned into a PublishTimeoutError.
    ("rabbitmq/blocking_connection.py", "TimeoutError"),
    # A mapping-style lookup in a topology the application built itself.
    ("declarations.py", "KeyError"),
    # A module's __getattr__ says a name is missing the way Python expects (names of an extra).
    ("outbox/__init__.py", "AttributeError"),
    # Abstract methods of a base class.
    ("subscribers.py", "NotImplementedError"),
    # Helpers for the application's own tests: pytest's vocabulary.
    ("testing/recorder.py", "TypeError"), ("testing/recorder.py", "AssertionError"),
    ("testing/recorder.py", "TimeoutError"), ("testing/capture.py", "AttributeError"),
}
BUILTIN_ERRORS = {"ValueError", "TypeError", "KeyError", "LookupError", "RuntimeError",
                  "IndexError", "AttributeError", "NotImplementedError", "AssertionError",
                  "TimeoutError", "OSError", "Exception"}


def drawn_tree() -> dict[str, str]:
    """Each class drawn in the docstring -> the class drawn as its parent."""
    parents: dict[str, str] = {}
    path: list[str] = []
    root_indent = 0
    for line in (errors.__doc__ or "").splitlines():
        if line.strip() == "EventyardError":
            path, root_indent = ["EventyardError"], line.index("E")
            continue
        found = re.match(r"^([ │]*)[├└]── (\w+)", line)
        if found is None:
            continue
        depth = (len(found.group(1)) - root_indent) // 4 + 1
        path = [*path[:depth], found.group(2)]
        parents[found.group(2)] = path[depth - 1]
    return parents


def eventyard_parent(cls: type[BaseException]) -> str:
    """The nearest base of ``cls`` that is an eventyard error."""
    return next(base.__name__ for base in cls.__mro__[1:] if issubclass(base, EventyardError))


def test_every_error_class_derives_from_eventyard_error() -> None:
    assert sorted(name for name, cls in ERROR_CLASSES.items() if not issubclass(cls, EventyardError)) == []


def test_every_error_class_is_exported_from_eventyard() -> None:
    missing = sorted(set(ERROR_CLASSES) - set(eventyard.__all__))
    assert missing == []
    assert all(getattr(eventyard, name) is cls for name, cls in ERROR_CLASSES.items())


def test_the_docstring_draws_every_class_under_its_real_parent() -> None:
    parents = drawn_tree()
    assert set(parents) | {"EventyardError"} == set(ERROR_CLASSES)
    wrong = {name: (drawn, eventyard_parent(ERROR_CLASSES[name]))
             for name, drawn in parents.items() if drawn != eventyard_parent(ERROR_CLASSES[name])}
    assert wrong == {}


@pytest.mark.parametrize(("error", "builtin"), [
    (errors.InvalidMessageError, TypeError), (errors.InvalidMessageError, ValueError),
    (errors.CallTimeoutError, TimeoutError)])
def test_errors_that_replace_a_builtin_still_are_one(error: type[Exception],
                                                     builtin: type[Exception]) -> None:
    # Code written against Python's own checks (and pydantic, for ValueError) keeps working.
    assert issubclass(error, builtin)


def _python_files() -> list[Path]:
    return sorted(SOURCE.rglob("*.py"))


def _base_names(node: ast.ClassDef) -> set[str]:
    return {base.id if isinstance(base, ast.Name) else base.attr
            for base in node.bases if isinstance(base, ast.Name | ast.Attribute)}


def test_no_error_class_lives_outside_the_tree() -> None:
    exception_names = {name for name, value in vars(builtins).items()
                       if inspect.isclass(value) and issubclass(value, BaseException)}
    outside = []
    for path in _python_files():
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name not in INTERNAL and (
                    _base_names(node) & (exception_names | set(ERROR_CLASSES))):
                outside.append(f"{path.relative_to(SOURCE)}: {node.name}")
    assert outside == [], "define error classes in eventyard/errors.py (and draw them there)"


def test_no_builtin_error_is_raised_where_an_eventyard_error_belongs() -> None:
    raised = set()
    for path in _python_files():
        where = str(path.relative_to(SOURCE))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                name = target.id if isinstance(target, ast.Name) else None
                if name in BUILTIN_ERRORS and (where, name) not in BUILTIN_ALLOWED:
                    raised.add(f"{where}:{node.lineno} raise {name}")
    assert sorted(raised) == [], "raise an eventyard error (eventyard/errors.py) instead"
