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
    """The command line's --encoder and --resize (names, choices, help) are made from the
    encoders' declarations: a new registry entry shows up there without another edit."""
    import argparse

    from shardeval.kernels.encoders.registry import ENCODERS, encoder_help, resize_help
    from shardeval.pipeline import options
    from shardeval.workflows.cli.extract import encoder_options

    parser = argparse.ArgumentParser()
    encoder_options(parser)
    actions = {a.dest: a for a in parser._actions}
    assert actions["encoder"].help == encoder_help()
    assert actions["resize"].help == resize_help()
    assert set(actions["resize"].choices) == {r.name for s in ENCODERS.values() for r in s.resizes}
    for name, spec in ENCODERS.items():
        assert name in encoder_help()
        assert spec.summary in encoder_help()
        assert options.encoder_problem(name) is None
        assert parser.parse_args(["--encoder", name]).encoder == name
    assert "unknown encoder 'vgg'" in options.encoder_problem("vgg")
