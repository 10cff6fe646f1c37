"""The type stubs match the compiled module (the same names, the same methods with the
same parameters and defaults), the public `girofle.Girofle` mirrors the native one with
an async variant of each long operation, the result classes are the frozen dataclasses
the package exports, and py.typed ships beside them."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from pathlib import Path

import girofle
from girofle import _client, _girofle, _results

PACKAGE = Path(girofle.__file__).parent
STUB = ast.parse((PACKAGE / "_girofle.pyi").read_text())


def _stub_class(name: str) -> ast.ClassDef:
    for node in STUB.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"{name} is not in _girofle.pyi")


def _params(fn: ast.FunctionDef) -> list[tuple[str, str | None]]:
    args = fn.args.args
    defaults = [None] * (len(args) - len(fn.args.defaults)) + list(fn.args.defaults)
    return [
        (a.arg, None if d is None else ast.unparse(d))
        for a, d in zip(args, defaults)
        if a.arg not in ("self", "cls")
    ]


def _signature(fn: object) -> list[tuple[str, str | None]]:
    return [
        (p.name, None if p.default is inspect.Parameter.empty else repr(p.default))
        for p in inspect.signature(fn).parameters.values()  # type: ignore[arg-type]
        if p.name not in ("self", "cls")
    ]


def _is_property(f: ast.FunctionDef) -> bool:
    return any(ast.unparse(d) == "property" for d in f.decorator_list)


def _methods(stub: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {
        n.name: n
        for n in stub.body
        if isinstance(n, ast.FunctionDef) and not n.name.startswith("__")
    }


def _public_methods(cls: type) -> set[str]:
    return {
        n
        for n, v in vars(cls).items()
        if not n.startswith("_") and (callable(v) or isinstance(v, staticmethod))
    }


def test_py_typed_ships():
    assert (PACKAGE / "py.typed").exists()


def test_every_native_name_is_stubbed_and_exported():
    stubbed = set()
    for node in STUB.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            stubbed.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            stubbed.add(node.target.id)
    public = {n for n in dir(_girofle) if not n.startswith("_")} | {"__version__"}
    missing = public - stubbed
    assert not missing, f"in the module, not in the stubs: {missing}"
    for name in girofle.__all__:
        assert hasattr(girofle, name), name
    # Everything the native module offers is exported, except its raw `Girofle`.
    assert public - {"Girofle"} <= set(girofle.__all__)
    assert girofle.Girofle is _client.Girofle


def test_native_signatures_match_the_stubs():
    for class_name, cls in (("Girofle", _girofle.Girofle), ("Cancel", _girofle.Cancel)):
        stub = _stub_class(class_name)
        methods = _methods(stub)
        runtime = _public_methods(cls)
        assert runtime == {m for m, f in methods.items() if not _is_property(f)}, class_name
        for name in runtime:
            assert _signature(getattr(cls, name)) == _params(methods[name]), name
        new = next(n for n in stub.body if isinstance(n, ast.FunctionDef) and n.name == "__new__")
        assert _signature(cls) == _params(new), class_name
    for node in STUB.body:
        if isinstance(node, ast.FunctionDef):
            assert _signature(getattr(_girofle, node.name)) == _params(node), node.name


def test_public_girofle_mirrors_the_native_one():
    native = _public_methods(_girofle.Girofle)
    public = _public_methods(girofle.Girofle)
    assert {m for m in public if not m.endswith("_async")} == native
    for name in native:
        assert _signature(getattr(girofle.Girofle, name)) == _signature(
            getattr(_girofle.Girofle, name)
        ), name
    asyncs = {m.removesuffix("_async") for m in public if m.endswith("_async")}
    assert asyncs == set(_client.LONG_OPERATIONS)
    for name in asyncs:
        variant = getattr(girofle.Girofle, f"{name}_async")
        assert inspect.iscoroutinefunction(variant), name
        assert _signature(variant) == _signature(getattr(girofle.Girofle, name)), name
        assert "cancel" in inspect.signature(variant).parameters, name
    assert isinstance(inspect.getattr_static(girofle.Girofle, "root"), property)


def test_public_methods_return_the_result_classes():
    hints = {
        name: typing.get_type_hints(getattr(girofle.Girofle, name), vars(_client))["return"]
        for name in _public_methods(girofle.Girofle)
    }
    results = {
        c for c in vars(_results).values() if isinstance(c, type) and issubclass(c, girofle.Result)
    }
    for name, hint in hints.items():
        inner = set(typing.get_args(hint)) or {hint}
        flat = set()
        for t in inner:
            flat |= set(typing.get_args(t)) or {t}
        assert flat <= results, f"{name} returns {hint}"


def test_result_classes_are_frozen_dataclasses_and_exported():
    for name in _results.__all__:
        obj = getattr(_results, name)
        assert getattr(girofle, name) is obj, name
        if isinstance(obj, type) and issubclass(obj, girofle.Result) and obj is not girofle.Result:
            assert dataclasses.is_dataclass(obj), name
            params = obj.__dataclass_params__  # type: ignore[attr-defined]
            assert params.frozen and params.eq, name
            # Every field's type can be resolved (from_dict relies on it).
            typing.get_type_hints(obj, vars(_results))


def test_exception_bases_match():
    for node in STUB.body:
        if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
            cls = getattr(girofle, node.name)
            assert [ast.unparse(b) for b in node.bases] == [b.__name__ for b in cls.__bases__]
