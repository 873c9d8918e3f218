"""The ``helpdeskd`` command (``python -m helpdeskd``, and the installed script).

The command line is imported inside :func:`main`. A worker process (parse workers, a notice's
renderers) is started by spawn, which runs the parent's script again under another name to
find its functions: with the imports here, that costs nothing beyond the script itself.
"""

from __future__ import annotations


def main() -> int:
    from helpdeskd.cli.main import main as command_line

    return command_line()


if __name__ == "__main__":
    raise SystemExit(main())
