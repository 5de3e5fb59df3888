"""The wheel installs one top-level package, ``shardeval``: generic names such as ``kernels`` or
``pipeline`` at the top of site-packages collide with other distributions (PyPI's ``kernels``
is imported by ``transformers``), and pip does not detect two distributions writing one file."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy, with this environment's setuptools: building in place would leave
    # build/ and *.egg-info in the checkout, and an isolated build would need the network.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "shardeval", src / "shardeval", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    done = subprocess.run([*cmd, "-w", str(out), str(src)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"pip wheel failed:\n{done.stderr[-2000:]}")
    (path,) = out.glob("shardeval-*.whl")
    return path


def test_wheel_has_one_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        top_level = zf.read(info).decode().split()
    roots = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert roots == {"shardeval"}
    assert top_level == ["shardeval"]
    # The sub-packages travel inside it (a missing __init__ or package-data rule drops them).
    for module in ("kernels/moments.py", "pipeline/core/engine.py", "workflows/cli/parser.py"):
        assert f"shardeval/{module}" in names


def test_wheel_declares_the_console_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        info = next(n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))
        entry_points = zf.read(info).decode()
    assert "shardeval = shardeval.workflows.cli:main" in entry_points
