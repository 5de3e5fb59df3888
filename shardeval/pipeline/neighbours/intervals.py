"""Standard errors of precision, recall, density and coverage (their «ci»), from the per-row
outcomes the cross pass keeps anyway; all four are *conditional* on one of the two sets.

With real rows X (N), generated rows Y (M), and the definitions of
:mod:`shardeval.pipeline.neighbours.prdc`:

* **precision** and **density** average a quantity of each generated row, 1[y_j inside some
  reference ball] and the count c_j of reference balls holding y_j, that depends on y_j and
  the reference set alone. Given the reference, they are independent and identically
  distributed over the generated rows, so the standard errors of their means are
  √(p̂(1 − p̂)/M) and s_c/(k√M) (s_c the counts' standard deviation, ddof 1): exact
  conditional standard errors, conditional on the **reference**.
* **recall** averages 1[x_i inside some generated ball], a function of x_i and the generated
  set alone: given the generated set, √(r̂(1 − r̂)/N), conditional on the **generated set**.
* **coverage** averages 1[some y_j inside x_i's ball] over reference rows, but x_i's radius is
  its k-th neighbour among the *other reference rows*: given the generated set, the indicators
  are not independent, and the binomial standard error understates their spread over
  reference draws by about a quarter (0.74 and 0.79 of it at 200 and 600 rows a side, Gaussian
  data at d = 4). Given the reference, coverage is no average over generated rows either. It
  takes a delete-a-group jackknife over the generated rows instead, conditional on the
  **reference**: the generated rows fall in G = :data:`~shardeval.pipeline.neighbours.CI_GROUPS`
  groups by a hash of their index (:func:`~shardeval.pipeline.fid.jackknife.row_groups`, seed
  :data:`~shardeval.pipeline.fid.jackknife.CI_SEED`), the cross pass records for each
  reference row which groups hit its ball (a bit mask, asked only with «ci»), and coverage
  without group g is exact from the masks. With G' the groups holding rows,

      θ₋g = (1/N) Σ_i 1[mask_i without bit g ≠ 0],   SE = √((G' − 1)/G' · Σ_g (θ₋g − θ̄)²).

  For this "hit by any" statistic the jackknife is conservative: about 1.3 × the spread over
  generated draws with the reference held fixed (and about 1.2 × the spread when both sets are
  drawn).

Why conditional: a jackknife over both sets would delete reference groups too, and deleting a
reference row grows the radii of the rows it was a neighbour of; the radius tests against the
grown radii need each row's neighbours beyond the k-th with the groups they belong to, and a
cross pass per group or per-group neighbour lists in the kernels. Not done: every number here
holds the other set (its balls) fixed, and a spread over both sets is larger (precision, for
example, 1.5–1.6 × its conditional standard error at 200–600 rows a side).

The intervals (:class:`~shardeval.pipeline.neighbours.metrics.PRDC`): Wilson's score interval
for precision and recall (proportions: it stays in [0, 1] and is no point at 0 or 1), normal
for density with its lower end at least 0, and θ̂ ∓ t_{G'−1}·SE within [0, 1] for coverage.
A standard error of 0 is reported as 0: precision or recall at 0 or 1 (their Wilson
intervals still have a width), density with every count equal, coverage with every ball hit
by two groups or more, or by none (their intervals are the point θ̂: the data show no spread).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from shardeval.pipeline.errors import ShapeError

if TYPE_CHECKING:
    from shardeval.pipeline.pairwise.pair_states import Decisions


@dataclass(frozen=True)
class PRDCErrors:
    """Conditional standard errors of the four values (see the module's docstring).

    Attributes:
        precision, density: given the reference, over the generated rows.
        recall: given the generated set, over the reference rows.
        coverage: given the reference, the delete-a-group jackknife over generated rows.
        groups: G', the groups of generated rows in the jackknife (those holding rows).
    """

    precision: float
    recall: float
    density: float
    coverage: float
    groups: int


def coverage_groups(n_gen: int, groups: int) -> np.ndarray:
    """The groups (of ``groups``) that hold at least one of ``n_gen`` generated rows."""
    from shardeval.pipeline.fid.jackknife import CI_SEED, row_groups

    return np.unique(row_groups(0, n_gen, groups, CI_SEED))


def standard_errors(decisions: Decisions, k: int, groups: int) -> PRDCErrors:
    """The four standard errors from the merged radius tests, which hold each generated row's
    outcomes, each reference row's, and the coverage masks over ``groups`` groups.

    Raises:
        ShapeError: the generated rows fall in fewer than 2 groups (the jackknife needs 2).
        ValueError: the radius tests hold no coverage masks (not asked of the pass).
    """
    if decisions.x_groups is None:
        raise ValueError("the cross pass did not record coverage's groups")
    m, n = decisions.y_within.shape[0], decisions.x_within.shape[0]
    present = coverage_groups(m, groups)
    if present.size < 2:
        raise ShapeError(
            f"the {m} generated rows fall in {present.size} of the {groups} groups of coverage's "
            "jackknife: its standard error needs rows in 2 groups at least; give more rows"
        )
    precision = float(decisions.y_within.mean())
    recall = float(decisions.x_within.mean())
    counts = decisions.y_count.astype(np.float64)
    masks = decisions.x_groups
    without = np.array(
        [float(np.mean((masks & ~(np.uint64(1) << np.uint64(g))) != 0)) for g in present]
    )
    g = present.size
    return PRDCErrors(
        precision=math.sqrt(precision * (1 - precision) / m),
        recall=math.sqrt(recall * (1 - recall) / n),
        density=float(counts.std(ddof=1)) / (k * math.sqrt(m)),
        coverage=math.sqrt((g - 1) / g * float(((without - without.mean()) ** 2).sum())),
        groups=g,
    )
