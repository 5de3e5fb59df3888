"""The Python API behind ``import shardeval``: one function per command (:mod:`.functions`),
typed results (:mod:`.results`), the inputs they take (:mod:`.inputs`), and training-loop
metrics (:mod:`.streaming`). It calls :mod:`shardeval.pipeline`; the command line calls it.
Nothing heavy is imported until a function runs."""
