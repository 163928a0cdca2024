"""`./tutorial.sh lab` starts JupyterLab without its news pop-up (a stand-in .venv)."""

import json
import sys
from pathlib import Path

from test_project import fake_venv, run_tutorial_sh

SCHEMA = "share/jupyter/lab/schemas/@jupyterlab/apputils-extension/notification.json"
OVERRIDES = Path("share/jupyter/lab/settings/overrides.json")


def test_lab_turns_off_the_news_pop_up(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, "cpu")
    result = run_tutorial_sh("lab", TUTORIAL_VENV=str(venv))
    assert result.returncode == 0, result.stderr
    settings = json.loads((venv / OVERRIDES).read_text())
    assert settings == {
        "@jupyterlab/apputils-extension:notification": {
            "fetchNews": "false",
            "checkForUpdates": False,
        }
    }


def test_lab_keeps_a_readers_own_overrides(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, "cpu")
    (venv / OVERRIDES).parent.mkdir(parents=True)
    (venv / OVERRIDES).write_text('{"theme": "dark"}\n')
    assert run_tutorial_sh("lab", TUTORIAL_VENV=str(venv)).returncode == 0
    assert (venv / OVERRIDES).read_text() == '{"theme": "dark"}\n'


def test_the_settings_exist_in_the_installed_jupyterlab() -> None:
    """The keys written above are in JupyterLab's own schema, with these values allowed."""
    properties = json.loads((Path(sys.prefix) / SCHEMA).read_text())["properties"]
    assert properties["checkForUpdates"]["type"] == "boolean"
    never = {"const": "false", "title": "Never"}  # "none", the default, asks at the first start
    assert never in properties["fetchNews"]["oneOf"]
