"""The ``campipe`` command line (typer + rich).

Exit codes: 0 all done, 1 some inputs failed, 2 usage error, 130 interrupted.

Commands live in small modules that each define ``register(app)``; this file only assembles them, so that the
segmentation, training, comparison and simulator commands are owned by their own modules.
"""
from __future__ import annotations

import importlib
import os
import sys

# Process-wide settings of the command-line process, made before anything imports NumPy (an explicit setting in the
# environment wins; the Python API leaves the caller's environment alone):
# * NumPy's OpenBLAS starts a thread pool at import whose idle threads spin (~50-80 ms of CPU on a 2-core machine,
#   taken from the render); campipe's BLAS work is 3x3 matrices and image-by-vector products: one thread is enough.
# * NumPy asks for transparent huge pages on large arrays. A render first-touches a few hundred MB once; on virtual
#   machines whose memory the host backs lazily (measured here: Firecracker), zeroing fresh 2 MB pages costs
#   ~1 ms/MB against ~0.3 ms/MB for recycled 4 KB pages (0.1-0.4 s of system time per 12 MP render); on bare metal
#   the difference is a few ms either way.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

import typer  # noqa: E402

from .exitcodes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE  # noqa: F401,E402

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
    finally:
        # The work is done: move every object to the collector's permanent generation so the interpreter's
        # shutdown does not walk them all again (~40 ms of a 1 s 12 MP render, measured with
        # benchmarks/bench_process.py). Atexit handlers and module teardown still run as usual.
        import gc

        gc.freeze()


if __name__ == "__main__":
    main()
