"""How the ``earshot`` command fails: one line with the cause and a hint, and an exit code.

Exit codes: 1 a runtime failure (the server is unreachable, a download failed), 2 a usage error
(a wrong option, file or setting: the user can fix the command), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

RUNTIME = 1
USAGE = 2
INTERRUPTED = 130


class CliError(Exception):
    """A failure the user can act on: what went wrong, what to do, and the exit code."""

    def __init__(self, cause: str, hint: str = "", *, exit_code: int = RUNTIME) -> None:
        super().__init__(cause)
        self.cause = cause
        self.hint = hint
        self.exit_code = exit_code

    def line(self) -> str:
        """The one line printed on stderr."""
        hint = f" (hint: {self.hint})" if self.hint else ""
        # A cause quoted from a library may span lines; the error is one line all the same.
        cause = " ".join(line.strip() for line in self.cause.splitlines() if line.strip())
        return f"earshot: error: {cause}{hint}"
