"""Error types shared by every module.

``MeerkatInputError`` is raised for bad user input (a missing file, a mismatched artifact, an out of
range option). The CLI turns it into a one-line message on stderr and exit code 2. Its message should
name the offending input and, where there is one, the fix.
"""

from __future__ import annotations


class MeerkatError(Exception):
    """Base class of meerkat's own errors."""


class MeerkatInputError(MeerkatError):
    """Bad input from the user: reported as one line, exit code 2."""
