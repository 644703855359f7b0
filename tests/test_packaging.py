"""A regular (non-editable) install carries everything the pipeline reads at run time: the prompt
templates from the top-level prompts/ folder (mapped into the package at build time), the server's
templates and static files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import REPO

RENDER = """
import json, sys
from pathlib import Path
import autointerp
from autointerp.explain.prompts import Record, explanation_messages, load_templates, prompts_dir
records = [Record(["The", " cat", " sat", " on", " the", " mat", ".\\n"],
                  [0.0, 4.0, 0.1, 0.0, -0.2, 2.0, 0.0]),
           Record(["\\t", "A", " dog", " barked"], [0.0, 0.0, 3.9, 0.5])]
templates = load_templates()
messages = explanation_messages(records, 4.0, templates, ["the ... cat: 9"])
text = "\\n\\n".join(f"[{m['role']}]\\n{m['content']}" for m in messages) + "\\n"
json.dump({"module": autointerp.__file__, "prompts": str(prompts_dir()),
           "version": templates.version,
           "prompt": text}, sys.stdout)
"""


def _packages_in_source() -> set[str]:
    return {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "autointerp").rglob("__init__.py")
    }


def test_wheel_installed_outside_the_repo_renders_the_explainer_prompt(tmp_path: Path) -> None:
    from autointerp.explain.prompts import load_templates

    # build from a copy of the tracked sources, so the build leaves nothing in the checkout
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in ("autointerp", "prompts"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("autointerp-*.whl")

    site = tmp_path / "site"  # a fresh install target: the wheel and nothing else of this project
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    installed = {
        ".".join(p.parent.relative_to(site).parts)
        for p in (site / "autointerp").rglob("__init__.py")
    }
    assert _packages_in_source() <= installed, (
        "a package is missing from pyproject's [tool.setuptools] packages"
    )
    assert sorted(p.name for p in (site / "autointerp" / "prompts").iterdir()) == sorted(
        p.name for p in (REPO / "prompts").iterdir()
    )

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AUTOINTERP_PROMPTS")}
    env["PYTHONPATH"] = str(
        site
    )  # before site-packages, where an editable install of the checkout may live
    proc = subprocess.run(
        [sys.executable, "-c", RENDER],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert Path(out["module"]).is_relative_to(site)
    assert Path(out["prompts"]) == site / "autointerp" / "prompts"
    assert out["version"] == load_templates().version  # the same template files, byte for byte
    assert out["prompt"] == (REPO / "tests" / "golden" / "explain_prompt.txt").read_text()
