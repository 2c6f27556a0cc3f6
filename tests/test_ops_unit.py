"""contrib/isocache.service against the install docs/install.md documents: the paths agree,
and `systemd-analyze verify` accepts the unit with the venv's isocache in place."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = (ROOT / "contrib" / "isocache.service").read_text()
INSTALL = (ROOT / "docs" / "install.md").read_text()
ANALYZE = shutil.which("systemd-analyze")


def test_the_unit_runs_what_the_documented_install_puts_in_place() -> None:
    venv = re.search(r"python3 -m venv (/\S+)", INSTALL)
    assert venv is not None and venv.group(1) == "/opt/isocache"
    assert f"{venv.group(1)}/bin/python -m pip install " in INSTALL  # not editable
    assert "pip install -e" not in INSTALL
    assert (
        f"ExecStart={venv.group(1)}/bin/isocache serve --config /etc/isocache/isocache.toml" in UNIT
    )
    assert "/etc/isocache/isocache.toml" in INSTALL
    assert "ExecReload=/bin/kill -HUP $MAINPID" in UNIT
    assert "LoadCredential=admin-token:/etc/isocache/admin-token" in UNIT
    assert 'token_file = "admin-token"' in INSTALL and "/etc/isocache/admin-token" in INSTALL
    assert 'isocache = "isocache.cli:main"' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze missing (Debian package systemd)")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # The venv's console script, as pip writes it for [project.scripts], in a stand-in
    # prefix: the test installs nothing outside tmp_path.
    prefix = tmp_path / "opt" / "isocache"
    (prefix / "bin").mkdir(parents=True)
    script = prefix / "bin" / "isocache"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nfrom isocache.cli import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    version = subprocess.run([script, "--version"], capture_output=True, text=True, env=env)
    assert version.returncode == 0 and version.stdout.startswith("isocache ")
    unit = tmp_path / "isocache.service"
    unit.write_text(UNIT.replace("/opt/isocache/", f"{prefix}/"))
    assert ANALYZE is not None
    units = [unit]
    if Path("/opt/isocache/bin/isocache").exists():  # the documented install, done here
        units.append(ROOT / "contrib" / "isocache.service")
    for path in units:
        result = subprocess.run(
            [ANALYZE, "verify", "--man=no", str(path)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert "isocache.service" not in result.stderr, result.stderr
