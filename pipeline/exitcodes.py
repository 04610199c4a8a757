"""Process exit codes of the ``campipe`` command: 0 all done, 1 some inputs failed, 2 usage error, 130 interrupted."""
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
