"""The package layout shows the method: library leaves never import the layers above them, the core never
imports the miniature world or the demo, and no module imports itself back through others. Each verb has one
room: ``stages/<verb>.py`` owns its verb, ``engine/`` holds only what two verbs (or a verb and the Python
API) share, and neither imports the package face (``famix/__init__.py``)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _imports(names: bool = False) -> dict[str, set[str]]:
    """{module: famix modules it imports (anywhere in the file, lazy imports included)}; ``names``: also
    ``package.name`` for each name of ``from package import name`` (a submodule imported that way)."""
    graph = {}
    for path in (SRC / "famix").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("famix"):
                deps.add(node.module)
                if names:
                    deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("famix"))
        graph[name] = deps
    return graph


# Engine modules with one importer, each with the reason it is a room of its own rather than part of it.
ONE_IMPORTER = {
    "famix.engine.train": "the training loop and step: famix train's stage runs it (famix adapt through that "
    "stage; export's int8 calibration restyles with its mixer), benchmarks/bench_train.py times its "
    "train_step",
    "famix.engine.quantize": "int8 quantisation by ONNX Runtime's tools (calibration ranges, the style map's "
    "downstream subgraph): a concept of its own; export's stage runs it (famix benchmark through that stage)",
    "famix.engine.loss": "the loss as a named criterion (as torchvision's references): part of the loop",
    "famix.engine.servers": "the test servers' submission layouts: a concept of its own (issue 19)",
    "famix.engine.protocols": "the evaluation protocols (paper, mmseg: each dataset's test-time settings): a "
    "concept of its own; eval's stage applies them (reproduce through it)",
}


def engine_modules_with_one_importer(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """{engine module: its importers} for the engine modules that fewer than two modules import and that are
    not named in ``ONE_IMPORTER``: code only one verb runs belongs in that verb's stage."""
    engine = [m for m in graph if m.startswith("famix.engine.")]
    users = {m: sorted(k for k, deps in graph.items() if m in deps and k != m) for m in engine}
    return {m: u for m, u in users.items() if len(u) < 2 and m not in ONE_IMPORTER}


def face_imports(graph: dict[str, set[str]]) -> list[str]:
    """``module -> face`` for engine and stage modules importing the package face (``famix``, ``famix.api``):
    the face sits above them (a leaf such as ``famix.version`` holds what they need of it)."""
    return [
        f"{m} -> {dep}"
        for m, deps in graph.items()
        if m.startswith(("famix.engine.", "famix.stages."))
        for dep in sorted(deps)
        if dep in ("famix", "famix.api")  # `from famix import X`, `import famix`, the Python API
    ]


def test_engine_holds_only_what_two_share():
    assert engine_modules_with_one_importer(_imports(names=True)) == {}
    assert set(ONE_IMPORTER) <= set(_imports()), "a named exception that no longer exists: remove it"


def test_engine_and_stages_do_not_import_the_package_face():
    assert face_imports(_imports(names=True)) == []


def test_the_layout_rules_catch_a_violation():
    graph = _imports(names=True)
    # an engine module only one stage imports (what moving a verb's body into engine/ would add)
    broken = {
        **graph,
        "famix.engine.only_export": set(),
        "famix.stages.export": graph["famix.stages.export"] | {"famix.engine.only_export"},
    }
    assert engine_modules_with_one_importer(broken) == {"famix.engine.only_export": ["famix.stages.export"]}
    unused = {**graph, "famix.engine.unused": set()}
    assert engine_modules_with_one_importer(unused) == {"famix.engine.unused": []}
    # an engine module reading the version through the package face (the arrows that ran up before)
    face = {**graph, "famix.engine.runs": graph["famix.engine.runs"] | {"famix", "famix.__version__"}}
    assert face_imports(face) == ["famix.engine.runs -> famix"]


def test_leaves_and_core_import_nothing_above_them():
    upper = ("famix.engine", "famix.stages", "famix.config", "famix.cli", "famix.world", "famix.demo")
    above = {
        "famix.models": ("famix.style", *upper),
        "famix.style": upper,
        "famix.data": upper,
        "famix.engine": ("famix.stages", "famix.cli", "famix.world", "famix.demo"),
        "famix.stages": ("famix.cli", "famix.world", "famix.demo"),
        "famix.world": ("famix.cli", "famix.demo", "famix.stages"),
    }
    wrong = [
        f"{module} imports {dep}"
        for module, deps in _imports().items()
        for package, banned in above.items()
        if module.startswith(package + ".") or module == package
        for dep in deps
        if dep.startswith(banned)
    ]
    assert wrong == []


def test_no_import_cycle():
    graph = _imports()
    state, cycles = {}, []

    def visit(module, stack):
        state[module] = "open"
        stack.append(module)
        for dep in sorted(graph[module]):
            if dep not in graph:
                continue
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == []


# The composites' documented calls between stages (famix.stages' docstring): nothing else.
STAGE_CALLS = {
    "famix.stages.reproduce": {"famix.stages.mine", "famix.stages.train", "famix.stages.evaluate"},
    "famix.stages.adapt": {"famix.stages.train"},
    "famix.stages.app": {"famix.stages.adapt"},
    "famix.stages.benchmark": {"famix.stages.export"},
    "famix.stages.evaluate": {"famix.stages.report"},
    "famix.stages.train": {"famix.stages.report"},
}


def _stage_deps(graph: dict[str, set[str]], module: str) -> set[str]:
    """The stage modules ``module`` imports (``from famix.stages import mine``: famix.stages.mine)."""
    deps = set()
    path = SRC / (module.replace(".", "/") + ".py")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "famix.stages":
            deps.update(f"famix.stages.{a.name}" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("famix.stages."):
            deps.add(node.module)
    return deps


def test_stages_call_no_other_stage_but_the_composites_documented_calls():
    graph = _imports()
    stages = sorted(m for m in graph if m.startswith("famix.stages."))
    verbs = ("mine", "train", "evaluate", "predict", "export", "adapt", "reproduce", "convert")
    assert {f"famix.stages.{v}" for v in verbs} <= set(stages)
    wrong = {m: _stage_deps(graph, m) - STAGE_CALLS.get(m, set()) - {m} for m in stages}
    assert {m: d for m, d in wrong.items() if d} == {}


def test_the_cli_reads_no_environment_variable():
    reads = [
        f"{name}: {ast.unparse(node)}"
        for name in ("cli.py", "cli_parser.py")
        for node in ast.walk(ast.parse((SRC / "famix" / name).read_text()))
        if (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"))
        or (isinstance(node, ast.Name) and node.id in ("environ", "getenv"))
    ]
    assert reads == []


def test_help_and_argument_errors_import_no_torch():
    """`famix --help` and a bad option answer at once: building the parser imports no torch, open_clip."""
    code = (
        "import sys, contextlib, io\n"
        "from famix.cli import main\n"
        "for argv in (['--help'], ['export', '--help'], ['adapt', '--help'], ['train', '--bogus']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print(sorted(m for m in ('torch', 'open_clip', 'timm', 'numpy') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr
