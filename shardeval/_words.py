"""How a message names an option, in the words of whoever reads it.

Library messages mark the argument that would fix a problem as ``«name»`` or ``«name=value»``
(``pass «nonfinite='drop'»``). A Python caller reads ``nonfinite='drop'``; the command line
reads ``--nonfinite drop`` (``«overwrite=True»`` becomes ``--overwrite``). One message, two
front ends, no flag named in the library and no Python argument named on the command line.
"""

from __future__ import annotations

import re

_MARK = re.compile(r"«(\w+)(?:=(.*?))?»")


def _python(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    return f"{name}={value}" if value is not None else name


def _cli(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    flag = "--" + name.replace("_", "-")
    if value is None or value == "True":
        return flag
    return f"{flag} {value.strip(chr(39) + chr(34))}"


def in_python(text: str) -> str:
    """``text`` with its marked options as Python arguments (``nonfinite='drop'``)."""
    return _MARK.sub(_python, text)


def in_cli(text: str) -> str:
    """``text`` with its marked options as command-line flags (``--nonfinite drop``)."""
    return _MARK.sub(_cli, text)


class Worded:
    """Mixin of exceptions and warnings whose message may mark options: ``str()`` gives the
    Python words, :meth:`cli_text` the command line's."""

    def __str__(self) -> str:
        return in_python(super().__str__())

    def cli_text(self) -> str:
        return in_cli(Exception.__str__(self))  # type: ignore[arg-type]


def marked(exc: BaseException) -> str:
    """An exception's message with its options still marked, to wrap in another error."""
    return Exception.__str__(exc) if isinstance(exc, Worded) else str(exc)
