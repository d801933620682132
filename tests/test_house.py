"""The code's shape: no import cycle among the modules of annotator/ and cleannet_core/ (imports under
TYPE_CHECKING and inside functions count too), and no function there over MAX_LINES lines unless its docstring
says why ("Long because: ...")."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("annotator", "cleannet_core")
MAX_LINES = 60  # a function's def line to the last line of its body
REASON = "Long because:"


def module_name(root: Path, path: Path) -> str:
    """`annotator/cli/__init__.py` -> `annotator.cli`, `annotator/store/base.py` -> `annotator.store.base`."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Each module of `packages` under root -> the modules of those packages it imports anywhere in its file.
    `from . import x` counts as importing the module x when there is one, else the package."""
    modules = {module_name(root, p): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + [base] if base else anchor)
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first search meets, each as [a, b, ..., a]; empty when the graph has none."""
    state: dict[str, str] = {}
    path: list[str] = []
    found = []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_cycle():
    graph = import_graph(REPO)
    assert {"annotator.pipeline", "annotator.distributed"} <= graph["annotator.cli.model"]  # function-level imports
    assert "annotator.distributed" in graph["annotator.pipeline"]
    assert not cycles(graph), cycles(graph)


def test_the_cycle_check_can_fail(tmp_path):
    """A type-only import back and a function-level import back are both cycles."""
    pkg = tmp_path / "annotator"
    (pkg / "sub").mkdir(parents=True)
    (tmp_path / "cleannet_core").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import X\n")
    (pkg / "c.py").write_text("import annotator.d\n")
    (pkg / "d.py").write_text("def f():\n    from . import c\n")
    graph = import_graph(tmp_path)
    assert graph["annotator.a"] == {"annotator.sub.b"} and graph["annotator.sub.b"] == {"annotator.a"}
    assert sorted(map(tuple, cycles(graph))) == [("annotator.a", "annotator.sub.b", "annotator.a"),
                                                 ("annotator.c", "annotator.d", "annotator.c")]


def long_functions(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """`path:line name (n lines)` of each function (methods and nested ones too) over MAX_LINES lines whose
    docstring does not state a reason with REASON."""
    found = []
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES and REASON not in (ast.get_docstring(node) or ""):
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_long_function_without_a_reason():
    assert not long_functions(REPO), long_functions(REPO)


def test_the_length_check_can_fail(tmp_path):
    """61 lines fail, 60 lines pass, and so does a long function whose docstring says why."""
    (tmp_path / "annotator").mkdir()
    (tmp_path / "cleannet_core").mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(59))
    (tmp_path / "annotator" / "a.py").write_text(f"def sixty():\n{body}\n\nclass A:\n    def long(self):\n"
                                                 + "".join(f"    {line}\n" for line in body.splitlines())
                                                 + "        return 1\n")
    (tmp_path / "cleannet_core" / "b.py").write_text(f'def reasoned():\n    """Long because: one table."""\n{body}'
                                                     f"    return 1\n")
    assert long_functions(tmp_path) == ["annotator/a.py:64 long (61 lines)"]
