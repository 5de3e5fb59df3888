"""Maximum mean discrepancies: KID (polynomial kernel) and CMMD (RBF on unit rows), exact
over all pairs, their finishes and plug-ins."""

# The defaults live here, in a module that imports nothing, so that the plug-ins' declarations
# (read by --help and job files) load no numpy or dask; the mathematics reads them from here.

#: The peers' subset protocol's defaults (torch-fidelity's): rows per subset and the seed.
SUBSET_SIZE = 1000
SUBSET_SEED = 2020

#: CMMD's reference implementation's bandwidth and scale.
SIGMA = 10.0
SCALE = 1000.0
