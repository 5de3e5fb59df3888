"""The Fréchet distance family: streaming moments, the Gaussian they give, FID, FID∞ and the
Gaussians' KL divergences, and their metric plug-ins."""

# The defaults live here, in a module that imports nothing, so that the plug-ins' declarations
# (read by --help and job files) load no numpy or dask; the mathematics reads them from here.

#: Seed of FID∞'s nested subsets when none is given.
SEED = 0
