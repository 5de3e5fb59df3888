"""The Inception Score (Salimans et al. 2016) from class logits: mergeable per-split sums
(:mod:`.score`), where the logits of a store are (:mod:`.logits`), and the plug-in
(:mod:`.metrics`). This module imports nothing: the plug-in's declaration reads its defaults
from here without loading numpy or dask."""

#: torch-fidelity's defaults for its protocol: ``isc_splits`` and ``rng_seed``.
PEER_SPLITS = 10
SEED = 2020
