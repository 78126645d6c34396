"""The package's shape, checked: no import circle (imports inside functions count), no long
functions, every registered target has a profile and every profile a registered runtime."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mobilegen"
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, modules: set[str], package: str) -> set[str]:
    """Every mobilegen module imported anywhere in the file (also inside functions), except
    under `if TYPE_CHECKING:` (annotations only, never executed)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):  # annotations only
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("mobilegen"):
                    found.add(a.name)
        elif (isinstance(node, ast.ImportFrom) and node.module and node.level == 0
              and node.module.startswith("mobilegen")):
            for a in node.names:  # `from pkg import module` imports the module
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    # importing a.b.c runs a/__init__ and a/b/__init__ too
    out: set[str] = set()
    for m in found:
        parts = m.split(".")
        out.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return {m for m in out if m in modules}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    modules = set(files)
    return {name: _imports(ast.parse(p.read_text()), modules, name) - {name}
            for name, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state and (c := dfs(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := dfs(n)):
            return c
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_long_functions():
    long = []
    for p in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{p.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 80 lines: " + "; ".join(long)


def test_every_runtime_implements_the_target_protocol_and_has_a_profile():
    """A registered runtime without a module, a protocol member, a profile or a pip extra fails
    here, not in a user's export; so does a profile naming a runtime nobody registered."""
    import importlib
    import tomllib

    import pyproject_extras
    from mobilegen.targets import RUNTIMES
    from mobilegen.targets.profile import PROFILES_DIR, TargetProfile

    extras = pyproject_extras.read()
    profiles = [tomllib.loads(p.read_text()) for p in PROFILES_DIR.glob("*.toml")]
    for runtime, entry in RUNTIMES.items():
        module = importlib.import_module(entry.module)
        for member in ("export", "supports", "export_precision", "load"):
            assert callable(getattr(module, member, None)), f"{entry.module} lacks {member}()"
        assert isinstance(getattr(module, "FORMATS", None), tuple), f"{entry.module}: FORMATS"
        assert entry.extra in extras, f"runtime {runtime}: no pip extra '{entry.extra}'"
        assert any(p["runtime"] == runtime for p in profiles), f"runtime {runtime}: no profile"
        for key in entry.profile_keys:
            assert key in TargetProfile.model_fields, f"{runtime}: unknown profile key {key}"
    for p in profiles:
        assert p["runtime"] in RUNTIMES, f"profile {p['name']}: unknown runtime {p['runtime']}"
