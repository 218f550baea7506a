"""Run the `broker` command as if only the agency side were installed (`pip install .`, no
extras): importing any package of the `server` extra fails as it would there.

    python tests/sdk/without_server.py [broker arguments]
    python tests/sdk/without_server.py -c "python code"
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def server_packages() -> set[str]:
    """Import names of the distributions the `server` extra lists (`python-multipart` ->
    `multipart`, `python_multipart`)."""
    extra = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["server"]
    wanted = {
        re.split(r"[\[=<>~! ]", req, maxsplit=1)[0].lower().replace("_", "-") for req in extra
    }
    return {
        name
        for name, dists in importlib.metadata.packages_distributions().items()
        if any(d.lower().replace("_", "-") in wanted for d in dists)
    }


class Uninstalled(importlib.abc.MetaPathFinder):
    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, Uninstalled(server_packages()))
    if sys.argv[1:2] == ["-c"]:
        exec(sys.argv[2])  # noqa: S102 - the test's own code
    else:
        from broker.cli.main import app

        app(sys.argv[1:], prog_name="broker")
