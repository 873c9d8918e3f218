"""The wheel is a working helpdeskd: code, templates, rules and migrations, outside the checkout.

The wheel is built from this checkout and installed (without its dependencies, which this venv
has) into a folder of its own; every command then runs from another folder with that folder
first on the path, so nothing is read from the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.mailgen import customer_mail

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str | Path, cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def test_the_installed_wheel_initialises_checks_and_ingests(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HELPDESKD_CONFIG", "PYTHONPATH")}
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", wheels, ROOT, cwd=tmp_path, env=env)  # fmt: skip
    [wheel] = wheels.glob("helpdeskd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (
        "helpdeskd/_data/templates/ack.txt.j2",
        "helpdeskd/_data/templates/notices/maintenance.txt.j2",
        "helpdeskd/_data/rules/10-routing.yaml",
        "helpdeskd/_data/migrations/env.py",
        "helpdeskd/_data/alembic.ini",
    ):
        assert name in names, name
    site = tmp_path / "site"
    run(sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel,
        cwd=tmp_path, env=env)  # fmt: skip

    work = tmp_path / "work"
    work.mkdir()
    env["PYTHONPATH"] = str(site)
    where = run(
        sys.executable, "-c", "import helpdeskd; print(helpdeskd.__file__)", cwd=work, env=env
    )
    assert Path(where.strip()).is_relative_to(site)

    helpdeskd = (sys.executable, "-m", "helpdeskd", "--config", work / "helpdeskd.toml")
    run(*helpdeskd, "init", cwd=work, env=env)
    run(*helpdeskd, "check", cwd=work, env=env)
    mail = work / "hello.eml"
    mail.write_bytes(customer_mail(1, subject="Invoice question"))
    run(*helpdeskd, "ingest", mail, cwd=work, env=env)
    [ticket] = json.loads(run(*helpdeskd, "tickets", "list", "--json", cwd=work, env=env))
    assert ticket["subject"] == "Invoice question"
    # the shipped routing rules came from the wheel: the billing rule set the queue
    shown = json.loads(
        run(*helpdeskd, "tickets", "show", ticket["ref"], "--json", cwd=work, env=env)
    )
    assert shown["queue"] == "billing", shown
