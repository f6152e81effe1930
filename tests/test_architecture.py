"""The layout is the architecture: checks that fail when a change breaks it.

The layering contracts themselves are import-linter's (pyproject.toml, run by `make test` as
`lint-imports`); these tests add what its contracts do not say: no import cycle between any
two modules, no folder holding most of the code, and every hook documented and exercised.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import grimp
import pluggy
import pytest

from registry.contract import hookspecs

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("registry", "plugins", "services")
MAX_FOLDER_SHARE = 0.30


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_planted_cycle():
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_no_import_cycles_between_modules():
    # grimp reads every import statement, those inside functions and under TYPE_CHECKING too.
    graph = grimp.build_graph(*PACKAGES)
    assert len(graph.modules) > 50
    assert _cycles(graph) == [], "import cycles (each list is one strongly connected group)"


def _code_lines() -> dict[Path, int]:
    """Lines of every .py file of the project outside tests, by folder (its own files only)."""
    per: dict[Path, int] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", ".venv", "build") or any(p.endswith(".egg-info") for p in rel.parts):
            continue
        per[rel.parent] = per.get(rel.parent, 0) + len(path.read_text().splitlines())
    return per


def test_no_folder_holds_most_of_the_code():
    per = _code_lines()
    total = sum(per.values())
    shares = {str(folder): lines / total for folder, lines in per.items()}
    assert total > 5000
    too_big = {folder: f"{share:.0%}" for folder, share in shares.items() if share > MAX_FOLDER_SHARE}
    assert not too_big, f"folders over {MAX_FOLDER_SHARE:.0%} of {total} lines: {too_big}"


def _hook_names() -> list[str]:
    return sorted(name for name, value in vars(hookspecs).items() if hasattr(value, "genreg_spec"))


# How genreg calls each hook, and what a call must have produced. A new hook specification
# without an entry here fails test_every_hook_is_exercised_by_a_fixture_plugin.
def _call_register_families(hook: pluggy.HookCaller) -> list[object]:
    received: list[object] = []
    hook(register=received.append)
    return received


HOOK_CALLS = {"register_families": _call_register_families}


def test_every_hook_is_documented_in_the_plugin_guide():
    names = _hook_names()
    assert names, "no hook specifications found"
    guide = (ROOT / "docs" / "writing-a-plugin.md").read_text()
    for name in names:
        assert re.search(rf"^#+ .*`{name}\b", guide, re.M), (
            f"docs/writing-a-plugin.md has no section on {name}"
        )
        spec = getattr(hookspecs, name)
        assert spec.__doc__ and spec.__doc__.strip(), f"hook {name} has no docstring"


def _fixture_plugins_implementing(name: str) -> list[str]:
    found = []
    for path in sorted((ROOT / "tests" / "fixture_plugins").glob("*.py")):
        tree = ast.parse(path.read_text())
        if any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body):
            found.append(f"tests.fixture_plugins.{path.stem}")
    return found


@pytest.mark.parametrize("name", _hook_names())
def test_every_hook_is_exercised_by_a_fixture_plugin(name):
    # Register each fixture plugin that implements the hook, check it against the spec, and
    # call the hook through pluggy as genreg does: a hook nobody implements or calls fails.
    modules = _fixture_plugins_implementing(name)
    assert modules, f"no plugin under tests/fixture_plugins implements {name}"
    pm = pluggy.PluginManager("genreg")
    pm.add_hookspecs(hookspecs)
    for module in modules:
        plugin = importlib.import_module(module)
        if getattr(getattr(plugin, name), "genreg_impl", None) is not None:
            pm.register(plugin, name=module)
    pm.check_pending()
    hook = getattr(pm.hook, name)
    assert hook.get_hookimpls(), f"no fixture plugin registers an implementation of {name}"
    assert name in HOOK_CALLS, f"tests/test_architecture.py does not know how to call {name}"
    assert HOOK_CALLS[name](hook), f"calling {name} through pluggy produced nothing"


def test_every_family_folder_is_in_the_independence_contract():
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    independent = next(c["modules"] for c in contracts if c["type"] == "independence")
    folders = {
        f"plugins.{p.name}"
        for p in (ROOT / "plugins").iterdir()
        if (p / "__init__.py").is_file() and p.name != "common"
    }
    assert set(independent) == folders
