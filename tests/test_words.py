"""One message, two front ends: marked options read as Python arguments or as flags."""

import pytest

from shardeval._words import in_cli, in_python
from shardeval.pipeline.errors import NonFiniteError


@pytest.mark.parametrize(
    ("marked", "python", "cli"),
    [
        ("pass «nonfinite='drop'»", "pass nonfinite='drop'", "pass --nonfinite drop"),
        ("pass «overwrite=True»", "pass overwrite=True", "pass --overwrite"),
        ("with «array=NAME»", "with array=NAME", "with --array NAME"),
        ("«skip_bad» leaves it out", "skip_bad leaves it out", "--skip-bad leaves it out"),
        ("no marks here", "no marks here", "no marks here"),
    ],
)
def test_marked_options(marked, python, cli):
    assert in_python(marked) == python
    assert in_cli(marked) == cli


def test_errors_read_in_python_words_and_give_the_cli_its_own():
    exc = NonFiniteError("'x.npy' has 2 rows with NaN; clean them or pass «nonfinite='drop'»")
    assert str(exc).endswith("pass nonfinite='drop'")
    assert exc.cli_text().endswith("pass --nonfinite drop")
