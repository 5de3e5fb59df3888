"""Memorization of the training set by a generative model: authenticity (AuthPct) and each
generated row's nearest training row, exact over the full sets, and their plug-in.

For these metrics the reference is the training set.
"""
