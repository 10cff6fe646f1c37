"""The type stubs match the compiled module: the same names, the same methods with the
same parameters and defaults, and py.typed ships beside them."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import girofle
from girofle import _girofle

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


def test_py_typed_ships():
    assert (PACKAGE / "py.typed").exists()


def test_every_public_name_is_stubbed_and_exists():
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
        assert hasattr(_girofle, name) and name in stubbed, name


def test_method_signatures_match():
    stub = _stub_class("Girofle")
    methods = {
        n.name: n
        for n in stub.body
        if isinstance(n, ast.FunctionDef) and not n.name.startswith("__")
    }
    runtime = {
        n
        for n, v in vars(girofle.Girofle).items()
        if not n.startswith("_") and callable(v)
    }
    assert runtime == {m for m, f in methods.items() if not _is_property(f)}
    for name in runtime:
        sig = inspect.signature(getattr(girofle.Girofle, name))
        actual = [
            (p.name, None if p.default is inspect.Parameter.empty else repr(p.default))
            for p in sig.parameters.values()
            if p.name not in ("self", "cls")
        ]
        assert actual == _params(methods[name]), name
    new = inspect.signature(girofle.Girofle)
    stub_new = next(n for n in stub.body if isinstance(n, ast.FunctionDef) and n.name == "__new__")
    assert [
        (p.name, None if p.default is inspect.Parameter.empty else repr(p.default))
        for p in new.parameters.values()
    ] == _params(stub_new)


def _is_property(f: ast.FunctionDef) -> bool:
    return any(ast.unparse(d) == "property" for d in f.decorator_list)


def test_exception_bases_match():
    for node in STUB.body:
        if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
            cls = getattr(girofle, node.name)
            assert [ast.unparse(b) for b in node.bases] == [b.__name__ for b in cls.__bases__]
