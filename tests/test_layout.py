"""The package layout shows the method: library leaves never import the layers above them, the core never
imports the miniature world or the demo, and no module imports itself back through others."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _imports() -> dict[str, set[str]]:
    """{module: famix modules it imports (anywhere in the file, lazy imports included)}."""
    graph = {}
    for path in (SRC / "famix").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("famix"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("famix"))
        graph[name] = deps
    return graph


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
STAGE_CALLS = {"famix.stages.reproduce": {"famix.stages.mine", "famix.stages.train", "famix.stages.evaluate"}}


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
