"""The built wheel carries the templates: an installed package renders exactly what a checkout
renders. Builds offline (hatchling comes with the test extra)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from followups import ReminderRenderer, TaskNotification, TaskState

PROJECT = Path(__file__).resolve().parents[1]

RENDER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import followups
    from followups import ReminderRenderer, TaskNotification, TaskState, default_template_dir
    notes = [TaskNotification("t1", TaskState.completed("ok")), TaskNotification("t2", TaskState.failed("no"))]
    renderer = ReminderRenderer()
    print(json.dumps({
        "module": followups.__file__,
        "templates": str(default_template_dir()),
        "followup": renderer.render_followup(notes),
        "prompt": renderer.render_prompt(notes, "next"),
    }))
    """
)


def test_installed_wheel_renders_like_the_checkout(tmp_path: Path) -> None:
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(PROJECT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("followups-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True, capture_output=True
    )
    result = subprocess.run(
        [sys.executable, "-c", RENDER, str(site)], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    installed = json.loads(result.stdout)
    assert Path(installed["module"]).is_relative_to(site)
    assert Path(installed["templates"]) == site / "followups" / "templates"
    notes = [TaskNotification("t1", TaskState.completed("ok")), TaskNotification("t2", TaskState.failed("no"))]
    checkout = ReminderRenderer()
    assert installed["followup"] == checkout.render_followup(notes)
    assert installed["prompt"] == checkout.render_prompt(notes, "next")
