"""The one base of the training-loop metrics.

A training-loop metric keeps, per side (``real``, ``gen``), one state, of one of two kinds:

* **mergeable statistics**, registered states of :mod:`shardeval.pipeline.core.states`
  (FID's :class:`~shardeval.pipeline.core.states.Moments`): a sync gathers every rank's state
  and merges them in rank order with the state's own law-tested ``merge``;
* **rows**, spilled to a work folder (:mod:`.spill`), for a metric whose plug-in reads every
  row (pairs, nested subsets, splits, a PSIS tail): a sync brings every rank's rows to rank 0
  in rank order, which computes and hands the result to every rank.

Either way the state is what crosses objects and processes, and :class:`TrainingMetric` gives
every metric the same life from it (torchmetrics' ``Metric`` is the model; exact merges of
registered states replace its raw sums): ``update`` checks the batch (:class:`._Batches`) and
adds it to a side; ``merge`` refuses another metric's state unless every entry of the two
identities agrees, then adds it; ``reset`` empties the generated side (and the real one with
``reset_real``); ``compute`` is a collective under a process group of more than one rank, meets
the other ranks with a deadline, syncs when any rank changed, and labels a rank's own value
(``sync=False``); ``state_dict``/``load_state_dict`` frame the state in a format, a version and
the settings that decide it. A subclass writes only what its kind of state does: its hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from shardeval.api.streaming.batches import _SIDES, _Batches, _refuse_differences
from shardeval.api.streaming.checkpoint import _state_int, _state_value
from shardeval.api.streaming.distributed import _collective, _group, _labelled_local
from shardeval.pipeline.errors import OptionError, StatsFormatError

if TYPE_CHECKING:
    from shardeval.api.results import Report
    from shardeval.api.streaming.distributed import _Group


class TrainingMetric(_Batches):
    """Base of every training-loop metric: the life of a metric made from its sides' states.

    Subclasses set :attr:`state_format` (and :attr:`state_version`; a metric merges with
    instances of the class that declares its format) and implement the hooks: :meth:`_identity` and
    :attr:`_fixes` (what states put together must agree on, and how to make them agree),
    :meth:`_held` and :meth:`_clear` (a side's rows), :meth:`_absorb` (another metric's state
    into this one's), :meth:`_sync` (the gather over a group), :meth:`_report` (the report of
    this rank's state or of the gathered one), :meth:`_settings`, :meth:`_entries` and
    :meth:`_load` (a state dict's own entries).
    """

    #: the ``format`` of this metric's state dicts, and the newest version this code writes
    state_format: ClassVar[str]
    state_version: ClassVar[int] = 1
    #: how messages name a metric of this family ("an FID")
    called: ClassVar[str] = "a training-loop metric"
    #: per entry of :meth:`_identity`, what makes two metrics agree on it
    _fixes: ClassVar[dict[str, str]]

    #: the gathered state of the last sync (a subclass's: a share, or its report); None:
    #: nothing gathered since the last change
    _global: Any = None
    #: whether ``reset`` forgets the real rows fed with ``update(x, real=True)``
    reset_real: bool = True

    # -- hooks ---------------------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def _held(self, side: str) -> int:
        """Rows the side holds (fed, merged or loaded)."""
        raise NotImplementedError

    def _clear(self, side: str) -> None:
        raise NotImplementedError

    def _absorb(self, other: Any) -> None:
        """Add ``other``'s state to this one's (identities already agree)."""
        raise NotImplementedError

    def _sync(self, g: _Group, what: str) -> None:
        """The gather over ``g``, once every rank is there; sets :attr:`_global`."""
        raise NotImplementedError

    def _report(self, synced: bool) -> Report:
        """The report of the gathered state (``synced``) or of this rank's."""
        raise NotImplementedError

    def _settings(self) -> dict[str, Any]:
        """The settings that decide the state: recorded in a state dict, and checked when one
        is loaded."""
        return {}

    def _entries(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _live(self) -> None:
        """Refuse a metric that cannot be used any more (a closed one)."""

    # -- the life of a metric --------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        """Whether this process holds the gathered state of every process (after :meth:`sync`
        or a collective :meth:`compute`, until the next update, merge, reset or load): a
        :meth:`compute` after which no rank has changed returns it without a gather."""
        return self._global is not None

    def compute(self, sync: bool = True) -> Report:
        """The metric over every process's rows under ``torch.distributed``, else this one's.

        Under a process group of more than one rank (``process_group``, default the whole
        job), this is a collective, as torchmetrics' ``compute`` is: **every rank of the group
        calls it**, and every rank gets the value over every rank's rows, gathered as
        :meth:`sync` gathers them; when no rank has changed its rows since the last gather,
        only a cheap agreement runs. A rank that calls it alone raises at ``sync_timeout``.

        Args:
            sync: False: this rank's rows alone, without communication, on purpose; the
                report is labelled ``local`` when in a group of more than one rank.

        Returns:
            The :class:`~shardeval.api.results.Report` of the one-shot function on the same
            rows, with ``processes``: how many processes' rows it holds, and ``local``
            (``rank``, ``world_size``) when it holds this rank's alone.

        Raises:
            OptionError: no reference; ranks that gather other metrics (see :meth:`sync`);
                processes whose metrics differ in reference, settings or how their rows were
                made.
            EngineError: not every rank of the group called it within ``sync_timeout``.
            Whatever the metric's computation raises (too few rows, a covariance that is not
            positive semi-definite beyond rounding, ...).
        """
        self._live()
        g = _collective(self.process_group) if sync else None
        if g is not None and g.meet(self._changed(g), self.sync_timeout, "compute()"):
            self._sync(g, "compute()")
        synced = sync and self._global is not None
        report = self._report(synced)
        return report if synced else _labelled_local(report, self.process_group)

    def sync(self, group: Any = None) -> None:
        """Gather every process's state, in rank order (a collective: every process of
        ``group`` calls it). :meth:`compute` does this itself when a rank's rows changed;
        calling it is needed only to gather at another moment.

        Afterwards :meth:`compute` gives the result over every process's rows on every rank,
        the same bits everywhere, until the next update, merge, reset or load. The process's
        own state is kept beside it: a second sync counts nothing twice, :meth:`state_dict`
        holds this process's rows, and :meth:`update` goes on adding to them.

        Args:
            group: a ``torch.distributed`` process group (default: this metric's
                ``process_group``, else the whole job).

        Raises:
            EngineError: ``torch.distributed`` is not initialised; not every rank called it
                within ``sync_timeout``.
            OptionError: the ranks gather other metrics (of another kind, or made in another
                order: ranks make their metrics, and call their syncs, in the same order); the
                processes differ in reference, settings or how their rows were made (the
                message names the ranks and what differs).
            ShapeError, DtypeError: the processes' rows differ in d or dtype.
        """
        self._live()
        g = _group(self.process_group if group is None else group)
        g.meet(True, self.sync_timeout, "sync()")
        self._sync(g, "sync()")

    def _changed(self, g: _Group) -> bool:
        """Whether this rank's rows differ from those of the last gather over ``g``."""
        return self._global is None or self._synced_over != g.ranks

    def merge(self, other: Any) -> Any:
        """Add another metric's rows to this one's, in place (returns ``self``, for chaining):
        the result is one metric fed this one's batches, then ``other``'s.

        Raises:
            OptionError: ``other`` is not of this metric's kind, or differs in settings,
                reference or how a side's rows were made (the message names what differs).
            ShapeError: the feature dimensions differ.
        """
        self._live()
        name = type(self).__name__
        family: type[TrainingMetric] = next(
            c for c in type(self).__mro__ if "state_format" in vars(c)
        )
        if not isinstance(other, TrainingMetric) or not isinstance(other, family):
            raise OptionError(
                f"{name}.merge takes {family.called} of the same settings and "
                f"reference, got {type(other).__name__}"
            )
        other._live()
        labels = (f"this {name}", f"the {type(other).__name__} given")
        _refuse_differences("merge()", labels, [self._identity(), other._identity()], self._fixes)
        self._absorb(other)
        self._take_rows_of([other._made[s] for s in _SIDES], [other._described[s] for s in _SIDES])
        self._global = None
        return self

    def reset(self) -> None:
        """Forget the generated rows, and the real rows fed with ``real=True`` when
        ``reset_real`` (a reference given up front stays)."""
        self._live()
        self._global = None
        self._clear("gen")
        self._forget_rows("gen")
        if self.reset_real:
            self._clear("real")
        if self._held("real") == 0:
            self._forget_rows("real")
            if not self._given:
                self._d = None

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """This process's state as a plain dict of CPU tensors, ints and strings (so that
        ``torch.load`` reads a checkpoint with its default ``weights_only=True``): ``format``
        and ``format_version``, the settings that decide the state (``settings.NAME``), and
        the metric's own entries (see the class's documentation)."""
        state: dict[str, Any] = {
            "format": self.state_format,
            "format_version": self.state_version,
        }
        state |= {f"settings.{k}": v for k, v in self._settings().items()}
        return state | self._entries()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (tensors or numpy arrays): its state
        replaces this object's. A state dict of an earlier shardeval, without some settings,
        is read too (what it does not say is not checked).

        Raises:
            StatsFormatError: another format or a newer version, keys missing, values that
                are not what the entry holds, or a state made with other settings than this
                metric's (the message names the setting and how to make a metric that takes
                it).
        """
        self._live()
        name = type(self).__name__
        if not isinstance(state, dict) or state.get("format") != self.state_format:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise StatsFormatError(
                f"load_state_dict takes what {name}.state_dict() returns (format "
                f"{self.state_format!r}), got format {got!r}"
            )
        version = _state_int(state, "format_version")
        if version > self.state_version:
            raise StatsFormatError(
                f"state_dict has format version {version}, and this shardeval reads versions up "
                f"to {self.state_version}: it was written by a newer shardeval"
            )
        for setting, mine in self._settings().items():
            key = f"settings.{setting}"
            if key in state and _state_value(state, key) != mine:
                theirs = _state_value(state, key)
                raise StatsFormatError(
                    f"state_dict was made by a {name} with «{setting}={theirs!r}», and this one "
                    f"has {mine!r}: its rows and this {name}'s would not be reduced alike; make "
                    f"the {name} with «{setting}={theirs!r}» to resume it"
                )
        self._load(state)
        self._global = None
