"""Installs chainkit's start-up hook, ``chainkit-replay.pth``, beside the package.

Everything else is in pyproject.toml. A .pth file must sit at the top of site-packages, which
pyproject.toml cannot express, so the wheel build (``build_py``) and the editable install
(``editable_wheel``) each put it there. The hook imports nothing unless $CHAINKIT_CASSETTE is
set (see toolkit/process_replay.py), so a process that does not ask for replay pays nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HOOK_NAME = "chainkit-replay.pth"
HOOK_TEXT = (
    'import os; os.environ.get("CHAINKIT_CASSETTE") and '
    '__import__("toolkit.process_replay").process_replay.start()\n'
)


class build_py_with_hook(build_py):  # noqa: N801 - named like the setuptools command it extends
    def run(self) -> None:
        super().run()
        Path(self.build_lib, HOOK_NAME).write_text(HOOK_TEXT, encoding="utf-8")


class editable_wheel_with_hook(editable_wheel):  # noqa: N801
    # The one step of an editable install that writes files into the wheel's top level.
    def _install_namespaces(self, installation_dir: Any, pth_prefix: Any) -> None:
        super()._install_namespaces(installation_dir, pth_prefix)
        Path(installation_dir, HOOK_NAME).write_text(HOOK_TEXT, encoding="utf-8")


setup(cmdclass={"build_py": build_py_with_hook, "editable_wheel": editable_wheel_with_hook})
