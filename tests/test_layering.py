"""The package's import structure: dependency arrows point down the layer table, no cycles, no
scenario module imported by the library, and light modules stay light.

The dependency check parses every module under ``python/splitlink`` (no import is executed) and
builds the graph of imports between splitlink modules:

* a *module-level* import runs when the module is imported (also inside ``if``/``try``/class
  bodies); imports under ``if TYPE_CHECKING:`` never run and are skipped;
* an import inside a function is *lazy*: it may point anywhere except into the scenarios.

It fails on (a) a cycle among module-level imports, (b) a module-level import of a higher layer
(``LAYERS``), (c) any import of ``splitlink.examples`` from outside it, and on a module that is
missing from ``LAYERS``. Each violation names the edge with file:line.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "python" / "splitlink"

# Layer of each top-level module or subpackage of splitlink, lowest first. A module may import
# (at module level) only modules of its own layer or below.
LAYERS: dict[str, int] = {
    # 0: foundations, import nothing of splitlink but each other and the native core
    "_core": 0,
    "errors": 0,
    "buffers": 0,
    "util": 0,
    "protos": 0,
    # 1: frames, codecs, sealing, certificates
    "wire": 1,
    "codec": 1,
    "codec_torch": 1,
    "secure": 1,
    "certs": 1,
    # 2: transport and private set intersection
    "channel": 2,
    "psi": 2,
    # 3: the training library
    "config": 3,
    "optim": 3,
    "privacy": 3,
    "model": 3,
    # 4: the party runtime; horizontal FL; the leakage attacks (they read what a party receives through the library)
    "checkpoint": 4,
    "runtime": 4,
    "horizontal": 4,
    "attacks": 4,
    # 5: applications: the command line and the scenarios
    "cli": 5,
    "__main__": 5,
    "examples": 5,
    # 6: the package itself (``splitlink/__init__.py``): a facade that nothing inside imports
    "": 6,
}
SCENARIOS = "splitlink.examples"

# Packages with a facade module: the package's other modules (its collaborators) must not import the
# facade or the package itself (whose ``__init__`` re-exports the facade), or a split of the monolith
# closes an import cycle the day a collaborator wants a type from the facade.
FACADES: dict[str, str] = {
    "splitlink.model": "splitlink.model.flmodel",
    "splitlink.config": "splitlink.config.fl_yaml",
}

# Known violations being removed, each with the issue that removes it: (importer, imported).
# An entry that no longer matches an import fails the test, so the list only shrinks.
ALLOWED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    file: str
    line: int
    lazy: bool

    def __str__(self) -> str:
        how = "lazy import" if self.lazy else "import"
        return f"{self.file}:{self.line}: {self.importer} -> {self.imported} ({how})"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """(import statement, lazy) for every import that can run; TYPE_CHECKING blocks are skipped."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, lazy))
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:
                    visit_stmt(stmt, lazy)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True)
            else:
                visit(child, lazy)

    def visit_stmt(stmt: ast.stmt, lazy: bool) -> None:
        wrapper = ast.Module(body=[stmt], type_ignores=[])
        visit(wrapper, lazy)

    visit(tree, False)
    return found


def _resolve(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: set[str]) -> list[str]:
    """The splitlink modules an import statement loads (``from X import y`` is X.y when that is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name == "splitlink" or a.name.startswith("splitlink.")]
    if node.level:
        base_parts = importer.split(".") if is_package else importer.split(".")[:-1]
        base_parts = base_parts[: len(base_parts) - (node.level - 1)]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base != "splitlink" and not base.startswith("splitlink."):
        return []
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if sub in modules else base)
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1] if len(parts) > 1 else "")


def _in_scenarios(module: str) -> bool:
    return module == SCENARIOS or module.startswith(SCENARIOS + ".")


def import_graph(root: Path) -> tuple[set[str], list[Edge]]:
    files = sorted(root.rglob("*.py"))
    modules = {_module_name(f, root) for f in files}
    modules |= {f"{root.name}.{p.name.split('.')[0]}" for p in root.glob("*.so")}  # native extension
    modules.add(f"{root.name}._core")
    edges = []
    for f in files:
        importer = _module_name(f, root)
        tree = ast.parse(f.read_text(encoding="utf-8"), filename=str(f))
        for node, lazy in _imports(tree):
            for imported in _resolve(node, importer, f.name == "__init__.py", modules):
                if imported != importer:
                    edges.append(Edge(importer, imported, str(f.relative_to(root.parent)), node.lineno, lazy))
    return modules, edges


def _cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle (as its edges) per strongly connected component of the module-level graph."""
    graph: dict[str, list[Edge]] = {}
    for e in edges:
        graph.setdefault(e.importer, []).append(e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan; the graph has a few dozen nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for e in graph.get(v, []):
            w = e.imported
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in components:
        start = min(comp)
        # breadth-first search for the shortest way back to start inside the component
        prev: dict[str, Edge] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for e in graph.get(v, []):
                    if e.imported not in comp:
                        continue
                    if e.imported == start:
                        found = e
                        break
                    if e.imported not in prev:
                        prev[e.imported] = e
                        nxt.append(e.imported)
                if found:
                    break
            frontier = nxt
        assert found is not None
        path = [found]
        while path[0].importer != start:
            path.insert(0, prev[path[0].importer])
        cycles.append(path)
    return cycles


def check(root: Path, allowed: dict[tuple[str, str], str] | None = None) -> list[str]:
    """Every violation of the layering rules in the package at ``root``, one line each."""
    allowed = ALLOWED if allowed is None else allowed
    modules, edges = import_graph(root)
    problems = []
    for m in sorted(modules):
        if _layer(m) is None:
            problems.append(f"{m}: not in the layer table; add its top-level name to LAYERS in {Path(__file__).name}")
    used_allowances = set()
    for e in edges:
        if _in_scenarios(e.imported) and not _in_scenarios(e.importer):
            key = (e.importer, e.imported)
            if key in allowed:
                used_allowances.add(key)
                continue
            problems.append(f"{e}: the library imports a scenario module; reach scenarios through the registry")
            continue
        for package, facade in FACADES.items():
            if e.importer.startswith(package + ".") and e.importer != facade and e.imported in (package, facade):
                problems.append(
                    f"{e}: a collaborator of {facade} imports the facade; it may import only the package's other modules"
                )
        if e.lazy:
            continue
        lo, hi = _layer(e.importer), _layer(e.imported)
        if lo is not None and hi is not None and hi > lo:
            problems.append(
                f"{e}: upward import (layer {lo} imports layer {hi}); move the import into the "
                "function that needs it, or the code to a lower layer"
            )
    for key in sorted(set(allowed) - used_allowances):
        problems.append(f"allow-list entry {key[0]} -> {key[1]} ({allowed[key]}) matches no import any more: remove it")
    for cycle in _cycles([e for e in edges if not e.lazy]):
        chain = "\n    ".join(str(e) for e in cycle)
        problems.append(f"import cycle among module-level imports:\n    {chain}")
    return problems


def test_splitlink_imports_point_down_without_cycles() -> None:
    problems = check(PACKAGE_ROOT)
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_graph_sees_the_package() -> None:
    """Guards the checker against silently checking nothing (a wrong root, a resolver that drops imports)."""
    modules, edges = import_graph(PACKAGE_ROOT)
    assert {"splitlink.wire", "splitlink.buffers", "splitlink.channel.communicator", "splitlink.model"} <= modules
    pairs = {(e.importer, e.imported, e.lazy) for e in edges}
    assert ("splitlink.wire", "splitlink.buffers", False) in pairs
    assert ("splitlink.channel.communicator", "splitlink.channel.protocol", False) in pairs  # from pkg import submodule
    assert ("splitlink.config.checks", "splitlink.optim", True) in pairs  # inside a function


# --- the checker on small made-up packages: it must find what it is meant to find ---


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "splitlink"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    return root


def test_check_finds_an_upward_import(tmp_path: Path) -> None:
    root = _package(tmp_path, {"wire.py": "import os\n\nfrom splitlink.model import FLModel\n", "model.py": ""})
    problems = check(root, allowed={})
    assert len(problems) == 1
    assert (
        "splitlink/wire.py:3: splitlink.wire -> splitlink.model (import): upward import (layer 1 imports layer 3)" in problems[0]
    )


def test_check_allows_lazy_and_type_checking_upward_imports(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "wire.py": """\
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from splitlink.model import FLModel
            def f():
                from splitlink import model
            """,
            "model.py": "from splitlink import wire\n",
        },
    )
    assert check(root, allowed={}) == []


def test_check_finds_a_cycle_and_names_each_edge(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "wire.py": "from splitlink import secure\n",
            "secure.py": "x = 1\nfrom . import wire\n",
        },
    )
    problems = check(root, allowed={})
    assert len(problems) == 1 and problems[0].startswith("import cycle")
    assert "splitlink/secure.py:2: splitlink.secure -> splitlink.wire" in problems[0]
    assert "splitlink/wire.py:1: splitlink.wire -> splitlink.secure" in problems[0]


def test_check_finds_a_collaborator_importing_its_facade(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "model/flmodel.py": "from splitlink.model import graph\n",
            "model/graph.py": "def f():\n    from splitlink.model.flmodel import FLModel\n",
            "model/engine.py": "import splitlink.model\n",
        },
    )
    problems = check(root, allowed={})
    assert len(problems) == 2, problems
    assert any(
        "splitlink/model/graph.py:2: splitlink.model.graph -> splitlink.model.flmodel (lazy import)" in p for p in problems
    )
    assert any("splitlink/model/engine.py:1: splitlink.model.engine -> splitlink.model (import)" in p for p in problems)


def test_check_finds_scenario_imports_even_lazy_ones(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "runtime/party.py": "def f():\n    import splitlink.examples.pangu\n",
            "examples/pangu.py": "from splitlink.runtime import party\n",
        },
    )
    problems = check(root, allowed={})
    assert len(problems) == 1
    assert "splitlink/runtime/party.py:2: splitlink.runtime.party -> splitlink.examples.pangu (lazy import)" in problems[0]
    allowed = {("splitlink.runtime.party", "splitlink.examples.pangu"): "test"}
    assert check(root, allowed=allowed) == []


def test_check_finds_stale_allowances_and_unknown_modules(tmp_path: Path) -> None:
    root = _package(tmp_path, {"newthing.py": "", "cli.py": ""})
    problems = check(root, allowed={("splitlink.cli", "splitlink.examples.demo"): "issue 16"})
    assert any("splitlink.newthing: not in the layer table" in p for p in problems)
    assert any("allow-list entry splitlink.cli -> splitlink.examples.demo" in p for p in problems)
    assert len(problems) == 2


# --- what importing a module loads, in a fresh interpreter ---


def _imported_splitlink_path(env: dict[str, str]) -> str:
    """PYTHONPATH for a child that imports the same splitlink this process did (installed, or a
    staged build), not the source tree, which has no compiled _core."""
    import splitlink

    installed = str(Path(splitlink.__file__).resolve().parents[1])
    return os.pathsep.join(filter(None, [installed, env.get("PYTHONPATH")]))


def _loaded_after(statement: str, candidates: list[str]) -> list[str]:
    code = f"import sys\n{statement}\nprint(' '.join(m for m in {candidates!r} if m in sys.modules))"
    env = dict(os.environ)
    env["PYTHONPATH"] = _imported_splitlink_path(env)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


HEAVY = ["grpc", "pydantic", "cryptography", "yaml", "deepspeed", "splitlink.channel", "splitlink.model"]


@pytest.mark.parametrize(
    ("statement", "must_not_load"),
    [
        # torch.distributed is not listed: ``import torch`` itself loads it, and frames need torch.
        ("import splitlink.wire", HEAVY),
        ("import splitlink.secure", HEAVY),
        ("import splitlink", HEAVY + ["torch", "splitlink.wire"]),
        ("import splitlink.errors", HEAVY + ["torch"]),
        ("import splitlink.config", ["torch", "splitlink.optim", "grpc", "cryptography"]),
    ],
)
def test_import_loads_only_what_it_needs(statement: str, must_not_load: list[str]) -> None:
    assert _loaded_after(statement, must_not_load) == []


def test_every_public_name_resolves() -> None:
    code = textwrap.dedent("""\
        import splitlink
        from splitlink import channel, codec, config, errors, model
        expected = {
            "FLModel": model.FLModel, "FLYamlData": config.FLYamlData, "YamlConfigError": config.YamlConfigError,
            "CheckpointError": model.CheckpointError, "PeerClosedError": channel.PeerClosedError,
            "VerticalFederatedCommunicator": channel.VerticalFederatedCommunicator,
            "CompressConfig": codec.CompressConfig, "WireError": errors.WireError,
        }
        for name in splitlink.__all__:
            value = getattr(splitlink, name)
            assert value is not None, name
            assert expected.get(name, value) is value, name
        assert set(splitlink.__all__) <= set(dir(splitlink))
        try:
            splitlink.no_such_name
        except AttributeError as e:
            assert "no_such_name" in str(e)
        else:
            raise AssertionError("splitlink.no_such_name resolved")
        print("ok", len(splitlink.__all__))
        """)
    env = dict(os.environ)
    env["PYTHONPATH"] = _imported_splitlink_path(env)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok ")


def test_one_exception_hierarchy() -> None:
    from splitlink import channel, config, errors, model, optim

    for name in errors.__all__:
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            assert issubclass(cls, errors.SplitlinkError), name
    # old import locations are the same classes
    assert channel.PeerRestartedError is errors.PeerRestartedError
    assert config.YamlConfigError is errors.YamlConfigError and config.Problem is errors.Problem
    assert model.CheckpointError is errors.CheckpointError
    assert optim.HyperParameterError is errors.HyperParameterError
    # and keep the built-in bases existing handlers catch them by
    assert issubclass(errors.YamlConfigError, ValueError) and issubclass(errors.CheckpointError, ValueError)
    assert issubclass(errors.HyperParameterError, TypeError)
