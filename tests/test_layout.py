"""The layout tells the architecture: workflows → pipeline → kernels, one way; the option
choices that the parser reads without importing kernels agree with the kernels' own."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: What each package may not import.
FORBIDDEN = {
    "kernels": ("pipeline", "workflows"),
    "pipeline": ("workflows",),
    "workflows": ("kernels",),
}


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package):
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in _imports(path)
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert not wrong


def test_option_choices_agree_with_the_kernels():
    from kernels._dispatch import BACKENDS
    from kernels.encoders import ENCODERS, INCEPTION_RESIZES
    from pipeline import options

    assert options.BACKENDS == BACKENDS
    assert tuple(sorted(ENCODERS)) == options.ENCODER_NAMES
    assert options.INCEPTION_RESIZES == INCEPTION_RESIZES
    assert ENCODERS["inception"].resizes == INCEPTION_RESIZES
