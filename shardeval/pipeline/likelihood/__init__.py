"""Likelihoods and importance sampling: NLL summaries, the Gaussian and Parzen NLL of
features, ESS and PSIS, and their plug-in."""
