"""The choices of the options that metrics and commands share, in a module that imports
nothing, so that parsing arguments and validating job files stay instant."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    #: A check: why a value cannot be an option's, or None when it can.
    Check = Callable[[object], str | None]

#: Rows with NaN/inf: fail naming them, or leave them out and count them.
NONFINITE_POLICIES = ("error", "drop")

#: Products inside a shard: fp32 (the kernels' contract) or fp64 (upcast first).
PRECISIONS = ("fp32", "fp64")

#: Where chunk steps run: ``auto`` is decided on each worker (its GPU if it has one).
DEVICES = ("auto", "cpu", "cuda")

#: Kernel implementations (:data:`shardeval.kernels.BACKENDS`; a test checks they agree).
BACKENDS = ("auto", "triton", "torch")

#: Fan-in of the balanced merge tree on a distributed cluster.
DEFAULT_SPLIT_EVERY = 4

#: Seeds of subset draws: numpy's legacy generator (the peers' KID subsets) takes [0, 2^32).
MAX_SEED = 2**32 - 1


#: Larger than any row count, and still an int64 (dask's chunk sizes are).
MAX_COUNT = 2**62


def _is_integer(value: object) -> bool:
    """An integer, Python's or numpy's (anything with ``__index__``), not a bool."""
    return not isinstance(value, bool) and hasattr(type(value), "__index__")


def _is_real(value: object) -> bool:
    """A real number: an integer, or anything with ``__float__`` (numpy's floats), not a bool."""
    return _is_integer(value) or (not isinstance(value, bool) and hasattr(type(value), "__float__"))


def seed_problem(value: object) -> str | None:
    """Why ``value`` cannot seed a subset draw, or None when it can."""
    if not _is_integer(value):
        return f"a seed is an integer in [0, {MAX_SEED}], got {value!r}"
    if 0 <= int(value) <= MAX_SEED:  # type: ignore[call-overload]
        return None
    return f"a seed is an integer in [0, {MAX_SEED}], got {value}"


# The checks of option values, as problems (None: fine), shared by the command line's argument
# types and the Python API's boundary (:func:`check_option`), so that both refuse the same
# values with the same words.


def count_problem(value: object) -> str | None:
    """Why ``value`` is not a count (a positive integer, at most 2^62), or None."""
    if not _is_integer(value):
        return f"expected a positive integer, got {value!r}"
    number = int(value)  # type: ignore[call-overload]
    if number < 1:
        return f"expected a positive integer, got {number}"
    if number > MAX_COUNT:
        return f"{number} is beyond any count of rows (at most 2^62)"
    return None


def fan_in_problem(value: object) -> str | None:
    """Why ``value`` is not a merge tree's fan-in (an integer of at least 2), or None."""
    problem = count_problem(value)
    if problem is None and int(value) < 2:  # type: ignore[call-overload]
        return f"a merge fan-in is at least 2, got {value}"
    return problem


def positive_number_problem(value: object) -> str | None:
    """Why ``value`` is not a positive finite number, or None."""
    if not _is_real(value):
        return f"expected a positive number, got {value!r}"
    number = float(value)  # type: ignore[arg-type]
    if not (number > 0 and number - number == 0):  # NaN and ±inf fail
        return f"expected a positive finite number, got {value}"
    return None


#: Bandwidth rules of the Parzen window.
BANDWIDTH_RULES = ("silverman", "cv")


def bandwidth_problem(value: object) -> str | None:
    """Why ``value`` is not a Parzen bandwidth (a positive number or a rule), or None."""
    if value in BANDWIDTH_RULES or positive_number_problem(value) is None:
        return None
    return f"expected a positive number, 'silverman' or 'cv', got {value!r}"


# The encoders' names, modes and help come from their declarations
# (:mod:`shardeval.kernels.encoders.registry`, which imports nothing heavy), read when an
# encoder option is checked or its help written.


def encoder_problem(value: object) -> str | None:
    """Why ``value`` cannot be the ``encoder`` option (one line listing the names it may
    take), or None: a registered name, ``timm:NAME``, ``open_clip:NAME:PRETRAINED``,
    ``hf:MODEL_ID``, or in Python a torch module or callable (checked when it is declared)."""
    from shardeval.kernels.encoders.registry import EncoderSpec, name_problem

    return None if callable(value) or isinstance(value, EncoderSpec) else name_problem(value)


def encoder_help() -> str:
    """The ``encoder`` option's help: every registered encoder and the forms of the others."""
    from shardeval.kernels.encoders.registry import encoder_help as help_text

    return help_text()


def resize_choices() -> tuple[str, ...]:
    """Every registered encoder's preprocessing modes (which one takes which is checked
    against the encoder)."""
    from shardeval.kernels.encoders.registry import resize_names

    return tuple(dict.fromkeys(resize_names()))


def resize_help() -> str:
    """The ``resize`` option's help: each registered encoder's modes, its default first."""
    from shardeval.kernels.encoders.registry import resize_help as help_text

    return help_text()


def _resize_problem(value: object) -> str | None:
    if isinstance(value, str) and value:
        return None  # the encoder decides (its own modes: a user's encoder has others)
    return f"expected a preprocessing mode ({', '.join(resize_choices())}), got {value!r}"


def _choice(choices: tuple[str, ...]) -> Check:
    def problem(value: object) -> str | None:
        if isinstance(value, str) and value in choices:
            return None
        return f"expected one of {', '.join(choices)}, got {value!r}"

    return problem


def _flag(value: object) -> str | None:
    return None if isinstance(value, bool) else f"expected True or False, got {value!r}"


def _text(value: object) -> str | None:
    return None if isinstance(value, str) and value else f"expected a name, got {value!r}"


def _path(value: object) -> str | None:
    if (isinstance(value, str) and value) or hasattr(value, "__fspath__"):
        return None
    if value == "":  # never taken for "not given": that is None
        return "expected a path, got an empty one ('')"
    return f"expected a path, got {value!r}"


def _callable(value: object) -> str | None:
    return None if callable(value) else f"expected a function, got {value!r}"


#: The options the commands and API functions share, by name, and the check of a given value
#: (an option not given is None and is not checked). The command line's argument types are
#: these checks on the parsed text.
OPTION_CHECKS: dict[str, Check] = {
    "shard_rows": count_problem,
    "threads": count_problem,
    "batch_size": count_problem,
    "dims": count_problem,
    "split_every": fan_in_problem,
    "reff": positive_number_problem,
    "seed": seed_problem,
    "bandwidth": bandwidth_problem,
    "device": _choice(DEVICES),
    "backend": _choice(BACKENDS),
    "precision": _choice(PRECISIONS),
    "nonfinite": _choice(NONFINITE_POLICIES),
    "encoder": encoder_problem,
    "resize": _resize_problem,
    "array": _text,
    "cache_root": _path,
    "weights": _path,
    "cluster": _path,
    "performance_report": _path,
    "infinity": _flag,
    "real_is_statistics": _flag,
    "overwrite": _flag,
    "skip_bad": _flag,
    "progress": _callable,
    "check_progress": _callable,
    "log": _callable,
}


def option_problem(name: str, value: object) -> str | None:
    """Why ``value`` cannot be the option ``name`` (see :data:`OPTION_CHECKS`), or None."""
    check = OPTION_CHECKS.get(name)
    if check is None or value is None:
        return None
    return check(value)


def is_given(value: object) -> bool:
    """Whether an option's value says the caller gave it: anything but None (not given) and
    False (a flag left off). Not ``value not in (None, False)``: 0 == False, and a seed of 0
    or a count of 0 is a value."""
    return value is not None and value is not False
