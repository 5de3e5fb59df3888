"""The layout tells the architecture: workflows → api → pipeline → kernels, one way; the option
choices that the parser reads without importing kernels agree with the kernels' own."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: What each package may not import.
FORBIDDEN = {
    "shardeval.kernels": ("shardeval.pipeline", "shardeval.api", "shardeval.workflows"),
    "shardeval.pipeline": ("shardeval.api", "shardeval.workflows"),
    "shardeval.api": ("shardeval.workflows",),
    "shardeval.workflows": ("shardeval.kernels",),
}


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _within(name, packages):
    return any(name == p or name.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package):
    files = sorted((ROOT / package.replace(".", "/")).rglob("*.py"))
    assert files
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in _imports(path)
        if _within(name, FORBIDDEN[package])
    ]
    assert not wrong


#: What workflows may import from pipeline. Everything else it reaches through shardeval.api,
#: as every user does: a command parses, calls the API and formats.
WORKFLOWS_FROM_PIPELINE = (
    # Error classes: the command line catches them to print one line and exit 2, and job
    # files raise their own subclasses.
    "shardeval.pipeline.errors",
    # The metrics' declarations (parameters, outputs, plots): they make the flags and the job
    # keys, and a history stores them to describe its columns.
    "shardeval.pipeline.metrics",
    # The run options' declarations: they make the flags and the job keys and check values.
    "shardeval.pipeline.runoptions",
    # Output safety (claim an output, write a file atomically, lock): the one rule that a
    # command never replaces what it did not create, for reports and histories as for
    # stores; file-system plumbing, no computation.
    "shardeval.pipeline.io.atomic",
    # The time stamp and package versions every report and history row records.
    "shardeval.pipeline.io.provenance",
)


def _pipeline_imports(source, package):
    """The modules of shardeval.pipeline that ``source`` (a module of ``package``) imports
    outside :data:`WORKFLOWS_FROM_PIPELINE`: at module level, in a function, or for type
    checking alike; relative imports resolved."""
    wrong = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # ``from shardeval.pipeline import metrics`` imports shardeval.pipeline.metrics
            is_package = (ROOT / base.replace(".", "/")).is_dir()
            names = [f"{base}.{alias.name}" for alias in node.names] if is_package else [base]
        else:
            continue
        wrong += [
            name
            for name in names
            if _within(name, ("shardeval.pipeline",)) and not _within(name, WORKFLOWS_FROM_PIPELINE)
        ]
    return wrong


def test_the_workflows_check_sees_an_import_from_pipeline():
    source = """
from shardeval.pipeline.errors import StoreError
from shardeval.pipeline import metrics, runoptions
from shardeval.pipeline import images

def run():
    from shardeval.pipeline.core.engine import Engine
    import shardeval.pipeline.io.stores
    from ...pipeline.fid import moments
    from ..api.stores import open_store
"""
    assert _pipeline_imports(source, "shardeval.workflows.cli") == [
        "shardeval.pipeline.images",
        "shardeval.pipeline.core.engine",
        "shardeval.pipeline.io.stores",
        "shardeval.pipeline.fid.moments",
    ]


def test_workflows_imports_from_pipeline_only_errors_and_declarations():
    """workflows is a client of the API: from pipeline it imports only the modules named in
    :data:`WORKFLOWS_FROM_PIPELINE`; `run`, `synth`, `history` and `report` reach stores,
    statistics, images and engines through shardeval.api."""
    wrong = []
    for path in sorted((ROOT / "shardeval" / "workflows").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        package = ".".join(parts if path.name == "__init__.py" else parts[:-1])
        wrong += [
            f"{path.relative_to(ROOT)} imports {name}"
            for name in _pipeline_imports(path.read_text(), package)
        ]
    assert not wrong


def test_one_import_name():
    # Generic top-level names (kernels, pipeline) collide with other distributions: everything
    # lives under shardeval, and no module imports the old top-level names.
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for top in ("shardeval", "tests", "benchmarks")
        for path in sorted((ROOT / top).rglob("*.py"))
        for name in _imports(path)
        if name.split(".")[0] in ("pipeline", "kernels", "workflows")
    ]
    assert not wrong


def test_option_choices_agree_with_the_kernels():
    from shardeval.kernels._dispatch import BACKENDS
    from shardeval.pipeline import options

    assert options.BACKENDS == BACKENDS


def test_encoder_options_come_from_the_registry():
    """The command line's --encoder and --resize (names, help) are made from the encoders'
    declarations: a new registry entry shows up there without another edit."""
    import argparse

    from shardeval.kernels.encoders.registry import ENCODERS, encoder_help, resize_help
    from shardeval.pipeline import options
    from shardeval.workflows.cli.flags import add_run_options

    parser = argparse.ArgumentParser()
    add_run_options(parser, ["encoder", "resize"], quiet=False)
    actions = {a.dest: a for a in parser._actions}
    assert encoder_help() in actions["encoder"].help
    assert resize_help() in actions["resize"].help
    for name, spec in ENCODERS.items():
        assert name in encoder_help()
        assert spec.summary in encoder_help()
        assert options.encoder_problem(name) is None
        assert parser.parse_args(["--encoder", name]).encoder == name
        for mode in spec.resizes:
            assert parser.parse_args(["--resize", mode.name]).resize == mode.name
    assert "unknown encoder 'vgg'" in options.encoder_problem("vgg")


def _module_graph():
    """Every module of shardeval and the modules it imports (at module level or inside a
    function; not under ``if TYPE_CHECKING``, which runs no import)."""
    files = {}
    for path in sorted((ROOT / "shardeval").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def resolve(name):
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        typing_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for sub in node.body
            for n in ast.walk(sub)
        }
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets |= {
                    f"{base}.{a.name}" if f"{base}.{a.name}" in files else resolve(base)
                    for a in node.names
                }
        graph[module] = {t for t in targets if t and t != module}
    return graph


def _cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    """Each module can be imported first: no chain of imports leads back to where it began
    (a circle works only in some import orders, and hides which layer owns what)."""
    graph = _module_graph()
    assert len(graph) > 100
    assert _cycles(graph) == []


#: The most lines a module of shardeval/ may have: a module that grows past it holds more than
#: one concern, and is cut by concern rather than let grow.
MAX_MODULE_LINES = 500


def test_modules_are_of_a_livable_size():
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in sorted((ROOT / "shardeval").rglob("*.py"))
    }
    assert sizes
    too_long = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not too_long
