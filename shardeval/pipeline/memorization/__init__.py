"""Memorization of the training set by a generative model: authenticity (AuthPct) and each
generated row's nearest training row, exact over the full sets, the data-copying statistic C_T
(with a held-out test set), and their plug-ins.

For these metrics the reference is the training set.
"""

# The defaults live here, in a module that imports nothing, so that the plug-ins' declarations
# load no numpy or dask; the mathematics reads them from here.

#: C_T's defaults, dgm-eval's: 3 k-means cells; a cell counts when it holds more than 20
#: generated rows (τ = 20/m); the k-means seed.
CT_CELLS, CT_TAU_ROWS, CT_SEED = 3, 20, 0

#: Where C_T searches a row's nearest training row: among the training rows of its own cell
#: (dgm-eval's and the authors' code), or among all of them.
NEIGHBOURS = ("cell", "all")

#: FLD's defaults, the authors' code's: generated rows used as the mixture's centres (a seeded
#: sample when there are more), the seed, and what the generated mixture evaluates.
FLD_GEN_ROWS, FLD_SEED = 10_000, 0
FLD_EVALUATE = ("test", "train", "gap")
