"""The ``campipe`` command line (typer + rich).

Exit codes: 0 all done, 1 some inputs failed, 2 usage error, 130 interrupted.

Commands live in small modules that each define ``register(app)``; this file only assembles them, so that the
segmentation, training, comparison and simulator commands are owned by their own modules.
"""
from __future__ import annotations

import importlib
import sys

import typer

from .exitcodes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE  # noqa: F401

app = typer.Typer(
    name="campipe",
    help="Camera-pipeline simulator: RAW -> linear RGB -> semantic masks -> camera effects -> colour-managed output.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

@app.callback()
def _root() -> None:
    """Camera-pipeline simulator: RAW -> linear RGB -> semantic masks -> camera effects -> colour-managed output."""


#: Modules contributing commands (each has ``register(app)``). A module not written yet is skipped.
COMMAND_MODULES = (
    "campipe.cmd_process",    # process, batch, info, styles
    "campipe.cmd_compare",    # compare
    "campipe.cmd_simulate",   # simulate
    "campipe.cmd_segment",    # segment
    "campipe.cmd_train",      # train, eval
)

for _mod in COMMAND_MODULES:
    try:
        importlib.import_module(_mod).register(app)
    except ModuleNotFoundError as _e:
        if _e.name != _mod:
            raise


def main() -> None:
    """Console-script entry point: maps Ctrl-C to exit code 130 and usage errors to 2 (click's default)."""
    import os

    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("campipe: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:  # never a traceback for the user; CAMPIPE_DEBUG=1 shows it
        if os.environ.get("CAMPIPE_DEBUG"):
            raise
        from .errors import CampipeError

        if isinstance(e, CampipeError):
            sys.stderr.write(f"campipe: error: {e}\n")
            sys.exit(EXIT_USAGE)
        sys.stderr.write(f"campipe: internal error: {type(e).__name__}: {e} (set CAMPIPE_DEBUG=1 for details)\n")
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
