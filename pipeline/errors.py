"""The one error tree of the pipeline.

::

    CaptionError                      base of everything the pipeline raises on purpose
    ├── ConfigError                   bad job file, flag or environment; stops the run before
    │                                 the first request (exit code 2)
    ├── ItemError                     one item cannot be captioned; becomes a row, the run goes on
    │   ├── InvalidImageError         the input file is not a usable image (status ``invalid``)
    │   └── RequestError              the server did not give a usable answer
    │       ├── RetryableError        worth another attempt (timeouts, resets, 408/429/5xx,
    │       │                         malformed 200 answers); carries ``retry_after`` and
    │       │                         whether it looks like a server outage
    │       └── PermanentError        not worth another attempt (other 4xx); keeps the
    │                                 server's message
    └── OutputError                   the output directory cannot be used (exit code 2)
        ├── OutputBusyError           another run holds the output's lock (exit code 75)
        └── StorageError              writing the output failed: disk full, over quota,
                                      read-only, the folder vanished (exit code 74)

Anything else that escapes is a bug: ``caption`` prints it and exits 70.

Exit codes (one table, used by the runner and the CLI): 0 no item failed in this run,
1 some items failed, 2 usage/configuration/output error, 70 internal error, 74 the output
could not be written (disk full, quota, read-only; everything written before is kept), 75 try
later (output locked by another run, or the server away longer than max_outage), 130/143
stopped by SIGINT/SIGTERM.
"""

from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SOFTWARE = 70
EXIT_IOERR = 74
EXIT_TEMPFAIL = 75


class CaptionError(Exception):
    """Base class of all deliberate pipeline errors."""


class ConfigError(CaptionError):
    """The job file, a flag or the environment is wrong; the message says what to fix."""


class OutputError(CaptionError):
    """The output directory cannot be read or written."""


class OutputBusyError(OutputError):
    """Another run is writing the same output folder (the cron-overlap case)."""


class StorageError(OutputError):
    """Writing into the output failed (ENOSPC, EDQUOT, EROFS, a vanished folder...): the run
    stops sending at once, keeps what is durable, and exits 74; a rerun resumes."""

    def __init__(self, path: object, exc: OSError) -> None:
        name = errno.errorcode.get(exc.errno or 0, "") if exc.errno else ""
        why = exc.strerror or str(exc)
        super().__init__(f"cannot write {path}: {why}" + (f" ({name})" if name else ""))
        self.path = path
        self.errno = exc.errno


class ItemError(CaptionError):
    """One item failed; recorded as a row, the run continues."""


class InvalidImageError(ItemError):
    """The input file cannot be decoded as an image."""


class RequestError(ItemError):
    """The server did not return a usable answer for one request."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RetryableError(RequestError):
    """A failure that another attempt may fix."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        outage: bool = False,
        certain: bool = False,
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after
        self.outage = outage or certain  # looks like the server is away, not this item's fault
        self.certain = certain  # connection refused: the server is surely down


class PermanentError(RequestError):
    """A failure that retrying will not fix (e.g. 400 with the server's message)."""
