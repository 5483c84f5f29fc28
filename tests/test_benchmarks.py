"""The benchmark script runs the other modules' figures: a failing one fails the run, a missing
optional dependency is a skip, and ``--check`` is passed through."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

RUN_PY = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmarks_run", RUN_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_module(directory: Path, name: str, body: str) -> None:
    (directory / f"{name}_figures.py").write_text(body, encoding="utf-8")


RECORDING = """
import json, pathlib
def main(argv=None):
    pathlib.Path(__file__).with_suffix(".argv").write_text(json.dumps(argv))
    return {status}
"""


def test_figure_modules_pass_fail_and_skip(bench: ModuleType, tmp_path: Path) -> None:
    write_module(tmp_path, "good", RECORDING.format(status=0))
    write_module(tmp_path, "bad", RECORDING.format(status=1))
    write_module(tmp_path, "optional", "import a_module_that_is_not_installed_anywhere\ndef main(argv=None):\n    return 0\n")
    write_module(tmp_path, "nomain", "VALUE = 1\n")
    (tmp_path / "helpers.py").write_text("raise RuntimeError('not a figures module: never imported')\n")

    outcomes = dict(bench.run_figure_modules(True, tmp_path))

    assert outcomes["good_figures"] == "PASS"
    assert outcomes["bad_figures"] == "FAIL (status 1)"
    assert outcomes["optional_figures"].startswith("SKIP: ")
    assert "a_module_that_is_not_installed_anywhere" in outcomes["optional_figures"]
    assert outcomes["nomain_figures"].startswith("SKIP")
    assert set(outcomes) == {"good_figures", "bad_figures", "optional_figures", "nomain_figures"}
    assert json.loads((tmp_path / "good_figures.argv").read_text()) == ["--check"]


def test_without_check_the_modules_get_no_arguments(bench: ModuleType, tmp_path: Path) -> None:
    write_module(tmp_path, "good", RECORDING.format(status=0))
    assert bench.run_figure_modules(False, tmp_path) == [("good_figures", "PASS")]
    assert json.loads((tmp_path / "good_figures.argv").read_text()) == []


def test_a_figure_compares_its_median_with_the_target(bench: ModuleType) -> None:
    below = bench.Figure("x", "floor", 2.0, "<=", (1.0, 3.0, 1.5))
    above = bench.Figure("y", "floor", 0.8, ">=", (0.5, 0.7, 0.9))
    skipped = bench.Figure("z", "floor", 1.0, "<=", None)
    assert below.passed is True and below.median == 1.5
    assert above.passed is False
    assert skipped.passed is None
    assert below.row()[3:6] == ("1.50x", "1.00-3.00x", "PASS")
