"""Validate what a daemon would load: templates (and, later, rules) — used by check and SIGHUP."""

from __future__ import annotations

from pathlib import Path

from helpdeskd.clock import system_clock
from helpdeskd.config.settings import Config
from helpdeskd.errors import ConfigError, TemplateError
from helpdeskd.mail.render import Renderer
from helpdeskd.oauth.credential import login_needed, refresh_warnings
from helpdeskd.rules import loader

REQUIRED_TEMPLATES = ("ack.txt.j2", "agent_notification.txt.j2", "oversize.txt.j2")

SAMPLE_CONTEXT = {
    "service": {"name": "Example", "support_address": "support@example.org"},
    "ticket": {
        "ref": "HD-1",
        "subject": "Sample",
        "state": "new",
        "priority": "normal",
        "queue": None,
        "assignee": None,
        "message_count": 1,
    },
    "requester": {"name": "Sam Sample", "email": "sam@example.org"},
    "message": {
        "text": "Sample text",
        "from": "sam@example.org",
        "from_name": "Sam",
        "kind": "customer",
        "attachments": [],
    },
    "agent": {"name": "Alice", "email": "alice@example.org"},
    "limit": "25 MB",
}


def check_templates(config: Config) -> list[str]:
    """Compile every template and render the required ones; raise TemplateError on the first."""
    folder = config.paths.templates
    if not folder.is_dir():
        raise ConfigError(f"paths.templates: {folder} is not a folder")
    renderer = Renderer(folder)
    names = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*.j2") if p.is_file())
    for name in names:
        renderer.check(name)
    # Canned replies are rendered when an agent asks for them: prove they render now.
    for name in (*REQUIRED_TEMPLATES, *(n for n in names if n.startswith("replies/"))):
        if name.endswith(".txt.j2"):
            renderer.render(name, SAMPLE_CONTEXT)
    return names


def check_all(config: Config) -> list[str]:
    """Run every check; return a line per thing checked. Raises on the first error."""
    lines = [f"config: {config.source} ok"]
    try:
        names = check_templates(config)
    except TemplateError as exc:
        raise TemplateError(f"templates: {exc}") from None
    lines.append(f"templates: {len(names)} ok in {config.paths.templates}")
    rules = loader.load(config)
    lines.append(
        f"rules: {len(rules.rules)} routing, {len(rules.time_rules)} time, {len(rules.slas)} SLA "
        f"rules ok in {config.paths.rules}"
    )
    # Not an error: a new install passes check before its first login, and is told what to run.
    lines += [f"oauth: not logged in yet: run {command}" for command in login_needed(config)]
    lines += [f"oauth: {warning}" for warning in refresh_warnings(config, system_clock())]
    return lines
