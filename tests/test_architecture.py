"""The package's modules import each other top-down: no import cycles, and no module imports a
layer above its own; and the light commands (``--help``, ``info``) load no heavy module.

The imports are read statically (``ast``), at module level and inside functions alike, so a
lazy import that only runs on some path counts as much as one at the top of a file.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click
import pytest

from conftest import ROOT

PACKAGE = ROOT / "vaecodec"

# Each module's layer, lowest first; a module may import modules of its own layer or below.
# Within a layer, the import graph must still be acyclic (checked separately).
LAYERS = (
    # 0: formats, numerics and file handling that know nothing of the model
    {"vaecodec.errors", "vaecodec.bitstream", "vaecodec.hardware", "vaecodec.transforms",
     "vaecodec.entropy", "vaecodec.integer", "vaecodec.exactconv", "vaecodec.metrics", "vaecodec.alpha",
     "vaecodec.fileio"},
    # 1: the model, the release registry
    {"vaecodec.model", "vaecodec.releases"},
    # 2: the coder (what coding needs of a trained model), its loader, encoder-side refinement
    {"vaecodec.coder", "vaecodec.refine", "vaecodec.weights"},
    # 3: the .vae coder (arrays in, arrays out)
    {"vaecodec.codec", "vaecodec.ratecontrol"},
    # 4: image files, the library API and the Pillow plugin it backs
    {"vaecodec", "vaecodec.api", "vaecodec.imageio", "vaecodec.pillow_plugin", "vaecodec.batch"},
    # 5: programs on top: command line, training, benchmarking
    {"vaecodec.cli", "vaecodec.__main__", "vaecodec.train", "vaecodec.datapack",
     "vaecodec.benchmark"},
)


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` file under ``package`` (a package's
    ``__init__.py`` is the package's own name)."""
    root = package.parent
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` (source ``path``) imports, anywhere in it:
    ``import p.x``, ``from p.x import y``, ``from .x import y``, ``from . import x``; an
    imported name that is a module counts as that module, any other name as the module it
    comes from."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:
                    found.add(sub)
                elif source in modules:
                    found.add(source)
    found.discard(name)
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (see :func:`imports_of`)."""
    modules = module_files(package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or ``None`` if it has none."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of ``module`` (a subpackage's modules share its layer);
    ``KeyError`` for a module no layer names."""
    for i, layer in enumerate(LAYERS):
        if module in layer or any(module.startswith(m + ".") for m in layer if m != "vaecodec"):
            return i
    raise KeyError(module)


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_sees_module_level_and_lazy_imports():
    graph = import_graph(PACKAGE)
    assert "vaecodec.entropy" in graph["vaecodec.model"]            # from .entropy import ... (top)
    assert "vaecodec.weights" in graph["vaecodec.codec"]            # from . import weights (lazy)
    assert "vaecodec.refine" in graph["vaecodec.codec"]             # the refinement step
    assert "vaecodec.hardware" in graph["vaecodec.refine"]          # the bf16 probe
    assert "vaecodec.alpha" in graph["vaecodec.codec"]              # checks an alpha section
    assert "vaecodec.fileio" in graph["vaecodec.imageio"]           # writes image files
    assert "vaecodec.api" in graph["vaecodec"]                      # the package's own __init__
    assert "vaecodec.coder" in graph["vaecodec.weights"]            # the loader builds the coder
    assert "vaecodec.coder" not in graph["vaecodec.model"]          # training needs no coder


def test_every_module_imports_only_its_own_layer_or_below():
    graph = import_graph(PACKAGE)
    unplaced = sorted(m for m in graph if _unplaced(m))
    assert not unplaced, f"modules missing from LAYERS: {unplaced}"
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                    if layer_of(b) > layer_of(a))
    assert not upward, "imports of a higher layer: " + ", ".join(upward)


def _unplaced(module: str) -> bool:
    try:
        layer_of(module)
    except KeyError:
        return True
    return False


def test_a_cycle_is_found_and_named(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import c\n")           # lazy, in a function
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from .. import a\nimport os\n")         # from .. import module
    (pkg / "d.py").write_text("from pkg.a import thing\nfrom . import sub\n")   # absolute, package
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.sub.c"}, "pkg.sub": set(),
                     "pkg.sub.c": {"pkg.a"}, "pkg.d": {"pkg.a", "pkg.sub"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    (pkg / "sub" / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(pkg)) is None


@pytest.mark.parametrize("graph,expected", [
    ({"a": {"a2"}, "a2": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
])
def test_find_cycle_on_small_graphs(graph, expected):
    assert find_cycle(graph) == expected


# -------------------------------------------------------------------- what the commands load
HEAVY = ("matplotlib", "scipy", "torch", "vaecodec.benchmark")


def loaded_modules(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``vaecodec ARGS`` in a fresh interpreter; its result and the modules it had
    imported when it exited."""
    code = ("import sys\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from vaecodec.cli import main\n"
            "try:\n"
            "    main(sys.argv[1:], prog_name='vaecodec')\n"
            "finally:\n"
            "    print('MODULES', *sorted(sys.modules), file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    line = next(l for l in out.stderr.splitlines() if l.startswith("MODULES "))
    return out, set(line.split()[1:])


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_help_loads_neither_the_benchmark_nor_torch():
    out, modules = loaded_modules("--help")
    assert out.returncode == 0 and "benchmark   Rate-distortion benchmark" in out.stdout
    assert "vaecodec.cli" in modules
    assert heavy(modules) == []


def test_info_loads_neither_the_benchmark_nor_torch():
    vae = ROOT / "bitstream" / "conformance" / "2026.12" / "rgb-64x64-q1.vae"
    out, modules = loaded_modules("info", str(vae))
    assert out.returncode == 0, out.stderr
    assert "image:       64x64 RGB" in out.stdout and "release:     2026.12" in out.stdout
    assert "vaecodec.releases" in modules
    assert heavy(modules) == []


def test_the_benchmark_command_loads_when_it_runs():
    out, modules = loaded_modules("benchmark", "--codecs", "png")
    assert out.returncode == 2 and "unknown codec 'png'" in out.stderr
    assert "vaecodec.benchmark.command" in modules


def test_the_lazy_benchmark_entry_matches_the_real_command():
    from click.testing import CliRunner

    from vaecodec import cli
    from vaecodec.benchmark import benchmark_command
    lazy = cli.main.commands["benchmark"]
    assert isinstance(lazy, cli.LazyCommand) and lazy.load() is benchmark_command
    for limit in (45, 60, 200):
        assert lazy.get_short_help_str(limit) == benchmark_command.get_short_help_str(limit)
    res = CliRunner().invoke(cli.main, ["benchmark", "--help"])
    assert res.exit_code == 0 and "--reuse CODECS" in res.output and "--jobs" in res.output


def test_a_lazy_command_whose_module_is_missing_fails_in_one_line():
    from click.testing import CliRunner

    from vaecodec import cli
    group = click.Group(commands=[cli.LazyCommand("gone", "vaecodec.no_such_module:command", "Gone.")])
    res = CliRunner().invoke(group, ["gone"])
    assert res.exit_code == 1
    assert res.output == ("Error: the gone command cannot be loaded: "
                          "No module named 'vaecodec.no_such_module'\n")
