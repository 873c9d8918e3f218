"""The README's module table is the tree: every module of helpdeskd/ is named, none that is not."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_module_table_names_every_module_and_no_other() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## How it is built") : readme.index("## Tests")]
    named = set(re.findall(r"`([a-z_/]+\.py)`", section))
    tree = {
        str(path.relative_to(ROOT / "helpdeskd"))
        for path in (ROOT / "helpdeskd").rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py") and "_data" not in path.parts
    }
    assert named == tree, {"missing": sorted(tree - named), "not in the tree": sorted(named - tree)}


def test_the_first_steps_work_as_written(tmp_path: Path) -> None:
    """The commands of "Running it", run as a new admin would (the daemon started and stopped,
    its paths moved under a temporary folder): each works, and status reads well."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Running it") : readme.index("## Command line")]
    block = section[section.index("```sh\n") + 6 : section.index("```", section.index("```sh") + 5)]
    commands = [line.split("#")[0].split() for line in block.splitlines() if line.strip()]
    commands = [c for c in commands if c]
    assert [c[:2] for c in commands] == [
        ["helpdeskd", "init"],
        ["helpdeskd", "check"],
        ["helpdeskd", "run"],
        ["helpdeskd", "status"],
    ]
    etc, var = tmp_path / "etc", tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if k != "HELPDESKD_CONFIG"}

    def argv(command: list[str]) -> list[str]:
        moved = [a.replace("/etc/", f"{etc}/").replace("/var/", f"{var}/") for a in command[1:]]
        # without --config, commands find /etc/helpdeskd/helpdeskd.toml: here, that is
        if "--config" not in moved:
            moved = ["--config", f"{etc}/helpdeskd/helpdeskd.toml", *moved]
        return [sys.executable, "-m", "helpdeskd", *moved]

    def run(command: list[str]) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            argv(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (command, done.stderr)
        return done

    init, check, daemon, status = commands
    assert "wrote" in run(init).stdout
    assert (var / "lib" / "helpdeskd" / "helpdeskd.db").exists()
    # the starter listens on 127.0.0.1:8025; another test may hold that port now
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = etc / "helpdeskd" / "helpdeskd.toml"
    config.write_text(config.read_text().replace("127.0.0.1:8025", f"127.0.0.1:{port}"))
    assert "config:" in run(check).stdout
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv(daemon), cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while b"daemon_started" not in log.read_bytes() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        shown = run(status).stdout
        assert f"pid {proc.pid}" in shown and "None" not in shown
        assert "outbox: empty" in shown
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(30) == 0, log.read_text()
    assert "daemons: none running" in run(status).stdout
