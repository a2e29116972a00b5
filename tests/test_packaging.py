"""The data folders (profiles/, rules/, templates/) must be found from a wheel, not only from a checkout."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True)
    (whl,) = out.glob("planner-*.whl")
    return whl


def test_wheel_bundles_data_folders(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "planner/_bundled/profiles/gpus/a100-80gb-sxm.yaml" in names
    assert any(n.startswith("planner/_bundled/rules/") and n.endswith(".yaml") for n in names)
    assert any(n.startswith("planner/_bundled/templates/") for n in names)
    assert "planner/data/heldout-python-docs.txt" in names and "planner/data/SOURCES.md" in names
    assert not any(n.startswith("tests/") for n in names)


def test_installed_wheel_finds_its_data(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = (
        "import planner, planner.paths as p, planner.gpus as g;"
        "print(planner.__file__); print(p.gpus_dir()); print(p.rules_dir()); print(p.templates_dir());"
        "print(len(g.load_catalog()))"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert out[0].startswith(str(target))
    for line in out[1:4]:
        assert line.startswith(str(target / "planner" / "_bundled")), line
    assert int(out[4]) >= 13


def test_import_planner_touches_no_gpu_or_heavy_modules():
    code = (
        "import sys, planner, planner.cli, planner.paths, planner.workload, planner.errors;"
        "from planner.cli import build_parser; build_parser();"
        "bad = [m for m in ('torch', 'transformers', 'pynvml') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
