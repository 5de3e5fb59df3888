"""Nearest-neighbour metrics: precision, recall, density and coverage, and their plug-in."""

# The defaults live here, in a module that imports nothing, so that the plug-ins' declarations
# (read by --help and job files) load no numpy or dask; the mathematics reads them from here.

#: Neighbours of density and coverage (Naeem et al.'s 5) and of precision and recall
#: (Kynkäänniemi et al.'s 3).
K = 5
PR_K = 3

#: Groups of the generated rows in coverage's delete-a-group jackknife (the interval, «ci»).
CI_GROUPS = 10
