"""No module of the library outside ``splitlink/examples`` imports a scenario (``splitlink.examples``):
the runtime and the CLI reach scenarios through the registry, by name."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "python" / "splitlink"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = ".".join(("splitlink", *path.relative_to(PKG).parent.parts))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]  # from splitlink import examples
    return out


def scenario_imports(root: Path) -> list[str]:
    bad = []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(PKG)
        if rel.parts[0] == "examples":
            continue
        seen = set()
        for line, mod in imported_modules(f):
            if (mod == "splitlink.examples" or mod.startswith("splitlink.examples.")) and line not in seen:
                seen.add(line)  # one report per import statement
                bad.append(f"{rel}:{line} imports {mod}")
    return bad


def test_no_library_module_imports_a_scenario() -> None:
    assert (PKG / "runtime").is_dir() and (PKG / "cli.py").is_file()
    assert scenario_imports(PKG) == []


def test_the_check_catches_every_import_form(tmp_path: Path) -> None:
    global PKG
    saved = PKG
    PKG = tmp_path
    try:
        (tmp_path / "runtime").mkdir()
        (tmp_path / "runtime" / "a.py").write_text("import splitlink.examples.wide_deep\n")
        (tmp_path / "runtime" / "b.py").write_text("from splitlink import examples\n")
        (tmp_path / "runtime" / "c.py").write_text("from ..examples import pangu\n")
        (tmp_path / "runtime" / "d.py").write_text("def f():\n    from splitlink.examples.demo import run_demo\n")
        (tmp_path / "runtime" / "ok.py").write_text("from splitlink.runtime import registry\nimport splitlink.channel\n")
        assert scenario_imports(tmp_path) == [
            "runtime/a.py:1 imports splitlink.examples.wide_deep",
            "runtime/b.py:1 imports splitlink.examples",
            "runtime/c.py:1 imports splitlink.examples",
            "runtime/d.py:2 imports splitlink.examples.demo",
        ]
    finally:
        PKG = saved
