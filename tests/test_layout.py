"""The package's layout keeps the flow: imports point down the pipeline only, the root holds few
modules, no module grows past 450 lines, and no test or benchmark edits ``sys.path``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "synthseg_lite"

#: Layers, bottom first: a module may import its own layer and the ones before it. FreeSurfer's
#: label numbering (``labels.presets``, constants that import nothing) sits with the leaves, which
#: check label values against it.
LAYERS = [
    {"_version", "io", "validate", "safety", "schema", "runtime", "labels.presets"},
    {"labels"},
    {"synth"},
    {"data"},
    {"model"},
    {"training"},
    {"inference"},
    {"evaluation"},
    {"api", "__init__"},
    {"commands", "conf"},
]


def _layer(module: str) -> int:
    parts = module.split(".")[1:] or ["__init__"]
    for key in (".".join(parts[:2]), parts[0]):
        for i, names in enumerate(LAYERS):
            if key in names:
                return i
    top = parts[0]
    raise AssertionError(f"{module}: not in a layer of the flow ({top})")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name if name != "synthseg_lite" else "synthseg_lite.__init__"] = path
    return out


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "synthseg_lite" or m.startswith("synthseg_lite.")}


def test_imports_point_down_the_flow() -> None:
    upward = []
    for name, path in _modules().items():
        for target in _imports(path):
            target = "synthseg_lite.__init__" if target == "synthseg_lite" else target
            if _layer(target) > _layer(name):
                upward.append(f"{name} -> {target}")
    assert not upward, upward


def test_root_holds_few_modules_and_no_module_is_long() -> None:
    root_modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root_modules) <= 8, root_modules
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long


@pytest.mark.parametrize("folder", ["tests", "benchmarks"])
def test_no_sys_path_edits(folder: str) -> None:
    edits = [f"{p.name}:{i}" for p in (ROOT / folder).glob("*.py") if p.name != "test_layout.py"
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if "sys.path.insert" in line or "sys.path[:0]" in line or "sys.path.append" in line]
    assert not edits, edits


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The layer check is not vacuous: a data module importing inference is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from synthseg_lite.inference.segment import segment_volume\n")
    assert _layer("synthseg_lite.data.bad") < max(_layer(t) for t in _imports(bad))


def _run_as_main(text: str) -> set[str]:
    """Module names a text runs with ``python -m``: in a shell line or a subprocess list."""
    shell = re.findall(r"-m\s+(synthseg_lite(?:\.\w+)+)(?![.<\w])", text)  # not a <name>
    listed = re.findall(r"""["']-m["'],\s*["'](synthseg_lite(?:\.\w+)+)["']""", text)
    return set(shell) | set(listed)


def test_every_module_run_with_python_m_has_a_main() -> None:
    """``python -m`` on a module without a ``__main__`` block exits 0 and does nothing: a renamed
    command left behind in a benchmark or the docs would then skip its step without a word."""
    texts = [*ROOT.glob("benchmarks/*.py"), *ROOT.glob("*.md"), *ROOT.glob("benchmarks/*.md"),
             *ROOT.glob("benchmarks/*.sh"), *PACKAGE.rglob("*.py")]
    named = {m: p for p in texts for m in _run_as_main(p.read_text())}
    assert "synthseg_lite.commands.degrade" in named  # the scan sees both forms
    modules = _modules()
    for module, where in sorted(named.items()):
        path = modules.get(module)
        assert path is not None, f"{where.name}: python -m {module}: no such module"
        assert '__name__ == "__main__"' in path.read_text(), (
            f"{where.name}: python -m {module}: the module has no __main__ block"
        )


def test_the_main_checker_sees_a_module_without_one() -> None:
    assert _run_as_main('run(["-m", "synthseg_lite.evaluation.baseline"])') == {
        "synthseg_lite.evaluation.baseline"
    }
    assert '__name__ == "__main__"' not in _modules()["synthseg_lite.evaluation.baseline"].read_text()
