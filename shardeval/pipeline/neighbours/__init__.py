"""Nearest-neighbour metrics: precision, recall, density and coverage, and their plug-in."""
