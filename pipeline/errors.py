"""User-facing error types. Each carries a one-line message naming the file and the reason; the CLI prints it
without a traceback (see docs in README "Troubleshooting")."""
from __future__ import annotations


class CampipeError(Exception):
    """Base class for errors reported to the user as one line."""


class DecodeError(CampipeError):
    """An input file that cannot be decoded (unsupported, truncated, corrupt, too large, implausible data)."""


class EncodeError(CampipeError):
    """An output that cannot be written (bad format, exists, same as input, disk full, permissions)."""


class OutputExistsError(EncodeError):
    """The output file exists and ``--overwrite`` was not given (the existing file is kept)."""


class UnsupportedFormatError(DecodeError):
    """A file whose format campipe does not read."""
