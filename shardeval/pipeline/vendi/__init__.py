"""The Vendi score (Friedman & Dieng 2023) of a set alone, with the cosine kernel: a mergeable
second moment of the unit rows per shard and its spectrum (:mod:`.score`), and the plug-in
(:mod:`.metrics`). This module imports nothing."""
