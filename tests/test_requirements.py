"""``requirements.txt`` and ``requirements-training.txt`` (OpenCLIP's way to install) say what
``pyproject.toml`` says: the library's dependencies, and those plus the ``[train]`` extra."""
import tomllib
from pathlib import Path
from typing import List

REPO = Path(__file__).parent.parent


def _requirements(name: str) -> List[str]:
    """The requirement lines of a requirements file, its ``-r`` includes expanded in place."""
    lines = []
    for line in (REPO / name).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            lines += _requirements(line[3:].strip())
        elif line:
            lines.append(line)
    return lines


def test_the_requirements_files_match_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert _requirements("requirements.txt") == project["dependencies"]
    assert _requirements("requirements-training.txt") == [*project["dependencies"],
                                                          *project["optional-dependencies"]["train"]]
