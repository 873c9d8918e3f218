"""The command line's frame: --config in either place, exit codes, one line when the database
does not answer, and no SQL of its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpdeskd.cli.main import build_parser
from tests.conftest import config_factory
from tests.harness import cli
from tests.servers.smtp import free_port

CLI_DIR = Path(__file__).resolve().parents[2] / "helpdeskd" / "cli"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--config", "a.toml", "init"], Path("a.toml")),
        (["init", "--config", "b.toml"], Path("b.toml")),
        (["--config", "a.toml", "tickets", "list"], Path("a.toml")),  # not reset by the command
        (["tickets", "list", "--json", "--config", "b.toml"], Path("b.toml")),
        (["--config", "a.toml", "db", "upgrade", "--config", "b.toml"], Path("b.toml")),
        (["status"], None),
    ],
)
def test_config_is_accepted_before_and_after_the_command(argv, expected):
    assert build_parser().parse_args(argv).config == expected


def _unreachable_config(tmp_path: Path, where: str):
    if where == "postgresql":
        url = f"postgresql://helpdeskd@127.0.0.1:{free_port()}/helpdeskd"  # nothing listens
    else:
        url = f"sqlite:///{tmp_path / 'no-such-folder' / 'helpdeskd.db'}"
    return config_factory(tmp_path, url)()


@pytest.mark.parametrize("where", ["postgresql", "sqlite"])
@pytest.mark.parametrize(
    "command",
    [
        ("status",),
        ("tickets", "list", "--json"),
        ("outbox", "retry", "1"),
        ("incident", "list"),
        ("db", "upgrade"),
        ("run",),
    ],
    ids=" ".join,
)
def test_unreachable_database_is_one_line_and_exit_1(tmp_path, where, command):
    config = _unreachable_config(tmp_path, where)
    proc = cli(config, *command, check=False, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("helpdeskd: cannot reach the database: "), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == ""
    # A typo in a SQLite URL must not leave a new folder and an empty database behind.
    assert not (tmp_path / "no-such-folder").exists()


def test_unreachable_database_names_the_reason(tmp_path):
    missing = _unreachable_config(tmp_path, "sqlite")
    assert "no-such-folder does not exist" in cli(missing, "status", check=False).stderr
    refused = _unreachable_config(tmp_path, "postgresql")
    assert "Connect call failed" in cli(refused, "status", check=False).stderr


def test_usage_errors_exit_2(tmp_path):
    config = config_factory(tmp_path, f"sqlite:///{tmp_path / 'helpdeskd.db'}")()
    for argv in (("tickets",), ("frobnicate",), ("outbox", "retry", "one")):
        proc = cli(config, *argv, check=False)
        assert proc.returncode == 2, argv
        assert "usage: helpdeskd" in proc.stderr


def test_the_command_line_holds_no_sql():
    """The commands call services: nothing in cli/ imports SQLAlchemy or the table models."""
    for path in sorted(CLI_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith("sqlalchemy"), f"{path.name} imports {name}"
                assert name != "helpdeskd.store.models", f"{path.name} imports {name}"
