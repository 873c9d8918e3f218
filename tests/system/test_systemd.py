"""The systemd files in systemd/: systemd accepts them, and they keep what admins rely on.

The external tools come from Debian's ``systemd`` package (systemd-analyze, systemd-sysusers,
systemd-tmpfiles). Outside CI a missing tool skips; with CI=true it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "helpdeskd.service"
SYSUSERS = ROOT / "systemd" / "helpdeskd.sysusers.conf"
TMPFILES = ROOT / "systemd" / "helpdeskd.tmpfiles.conf"
IN_CI = os.environ.get("CI") == "true"
SHIPPED_EXEC = "/usr/local/bin/helpdeskd"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not found (apt-get install systemd)"
        if IN_CI:
            pytest.fail(f"{reason}; CI=true: a tool a test needs must be there")
        pytest.skip(reason)
    return path


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Parse a unit file into section -> key -> values, in order (keys may repeat).

    configparser would fold repeated keys (LoadCredential=, an ExecStart= reset) into one.
    An empty assignment resets the list, as systemd does for list settings.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"line {number}: continuation lines are not used here"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"line {number}: setting outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"line {number}: expected KEY=VALUE, got {raw!r}"
        values = current.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
            values.append("")
    return sections


def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def one(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key)
    assert values, f"{key}= is missing"
    assert len(values) == 1, f"{key}= is set {len(values)} times: {values}"
    return values[0]


def run_tool(*args: str, stdin: str) -> None:
    subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=60, check=True)


def passwd_entry(root: Path, name: str) -> list[str]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    raise AssertionError(f"no {name} in {root}/etc/passwd")


def installed_helpdeskd() -> str:
    """The helpdeskd script of the venv running the tests (systemd checks it exists)."""
    sibling = Path(sys.executable).with_name("helpdeskd")
    found = str(sibling) if sibling.is_file() else shutil.which("helpdeskd")
    if found is None:
        pytest.fail("no helpdeskd script beside the test interpreter: pip install -e .")
    return found


# --- the unit, read as text ---------------------------------------------------------------------


EXPECTED = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecStart": f"{SHIPPED_EXEC} --config /etc/helpdeskd/helpdeskd.toml run",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "Restart": "on-failure",
    "RestartSec": "5",
    "WatchdogSec": "60",
    "TimeoutStopSec": "45",
    "KillMode": "mixed",
    "User": "helpdeskd",
    "Group": "helpdeskd",
    "UMask": "0027",
    "StateDirectory": "helpdeskd",
    "StateDirectoryMode": "0750",
    "ConfigurationDirectory": "helpdeskd",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_unit_setting(key: str) -> None:
    assert one(service(), key) == EXPECTED[key]


def test_unit_network_and_processes() -> None:
    settings = service()
    families = one(settings, "RestrictAddressFamilies").split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    # The parser runs in a multiprocessing "spawn" pool: nothing may forbid child processes.
    assert "TasksMax" not in settings or one(settings, "TasksMax") not in ("0", "1")
    assert "LimitNPROC" not in settings
    for value in settings.get("SystemCallFilter", []):
        assert not (value.startswith("~") and "@process" in value), value


def test_unit_static_user_and_no_automatic_migration() -> None:
    settings = service()
    # A static user shares the database with "sudo -u helpdeskd helpdeskd ...".
    assert settings.get("DynamicUser", ["no"]) == ["no"]
    # RemoveIPC would delete a concurrent CLI run's POSIX semaphores when the service stops.
    assert settings.get("RemoveIPC", ["no"]) == ["no"]
    # "db upgrade" is run once by hand: an ExecStartPre would race between hosts.
    for key in ("ExecStartPre", "ExecStartPost", "ExecStart"):
        for value in settings.get(key, []):
            assert "upgrade" not in value, f"{key}={value}"


def test_unit_credentials_examples() -> None:
    """LoadCredential= examples for the secret key and both passwords are in the file."""
    text = UNIT.read_text()
    for name in ("secret-key", "imap-password", "smtp-password"):
        assert re.search(rf"^#?LoadCredential={name}:/etc/helpdeskd/\S+$", text, re.M), name


def test_unit_is_installable() -> None:
    unit = parse_unit(UNIT.read_text())
    assert one(unit["Install"], "WantedBy") == "multi-user.target"
    assert "network-online.target" in one(unit["Unit"], "Wants")
    assert "network-online.target" in one(unit["Unit"], "After")


# --- systemd itself -----------------------------------------------------------------------------


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    # verify fails when ExecStart= names a missing binary: point it at this venv's helpdeskd.
    # The file keeps its name: the unit name is derived from it.
    text = UNIT.read_text()
    copied = text.replace(f"ExecStart={SHIPPED_EXEC} ", f"ExecStart={installed_helpdeskd()} ")
    assert copied != text, "ExecStart= was not rewritten"
    unit = tmp_path / UNIT.name
    unit.write_text(copied)
    # User=helpdeskd need not exist: verify does not resolve User=/Group= (checked on systemd
    # 252: an unknown user gives no message and exit 0), so User/Group are left as shipped.
    env = {
        **os.environ,
        # Warnings and errors only. At debug level systemd also reports, for every unit with
        # SystemCallFilter=@system-service, system calls its libseccomp does not know yet —
        # not a fault of this unit. Set explicitly so a caller's debug level cannot add them.
        "SYSTEMD_LOG_LEVEL": "warning",
        "SYSTEMD_LOG_COLOR": "0",
    }
    result = subprocess.run(
        # --recursive-errors=no: judge this unit, not the host's units it refers to (and with
        # it, systemd 252 exits non-zero on this unit's own parse warnings, e.g. unknown keys);
        # --man=no: no man(1) lookups for Documentation=.
        [analyze, "verify", "--recursive-errors=no", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # Lines about this unit name its file (path:line: ...) or its name (helpdeskd.service: ...).
    # Anything else is about other units on the host (a dependency's own file, a mount unit for
    # a path) and is shown, not judged: it is not this unit's fault.
    ours = [line for line in lines if str(unit) in line or UNIT.name in line]
    others = [line for line in lines if line not in ours]
    if others:
        print("systemd-analyze, about other units (ignored):", *others, sep="\n  ")
    assert not ours, "systemd-analyze verify complains:\n" + "\n".join(ours)
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stderr}"


def test_sysusers_creates_static_user(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    run_tool(sysusers, f"--root={tmp_path}", "-", stdin=SYSUSERS.read_text())
    _, _, uid, gid, gecos, home, shell = passwd_entry(tmp_path, "helpdeskd")
    assert int(uid) < 1000, "a system user"
    assert gecos == "helpdeskd email helpdesk"
    assert home == "/var/lib/helpdeskd"
    assert shell.endswith("nologin")
    groups = [line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines()]
    assert ["helpdeskd", "x", gid, ""] in groups


def test_tmpfiles_match_unit(tmp_path: Path) -> None:
    """tmpfiles creates the state dir the unit expects, so db upgrade works before a start."""
    sysusers, tmpfiles = tool("systemd-sysusers"), tool("systemd-tmpfiles")
    settings = service()
    entries = [
        line.split()
        for line in TMPFILES.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    state = next(fields for fields in entries if fields[1] == "/var/lib/helpdeskd")
    assert state[0] == "d"
    assert state[2] == one(settings, "StateDirectoryMode")
    assert state[3:5] == [one(settings, "User"), one(settings, "Group")]
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles --create needs root to chown")
    (tmp_path / "etc").mkdir()
    run_tool(sysusers, f"--root={tmp_path}", "-", stdin=SYSUSERS.read_text())
    run_tool(tmpfiles, f"--root={tmp_path}", "--create", "-", stdin=TMPFILES.read_text())
    made = (tmp_path / "var/lib/helpdeskd").stat()
    assert stat.S_ISDIR(made.st_mode)
    assert stat.S_IMODE(made.st_mode) == 0o750
    assert made.st_uid == int(passwd_entry(tmp_path, "helpdeskd")[2])
