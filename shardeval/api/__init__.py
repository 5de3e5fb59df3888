"""The Python API behind ``import shardeval``: one function per command (:mod:`.functions`),
typed results (:mod:`.results`), the inputs they take (:mod:`.inputs`), and training-loop
metrics (:mod:`.streaming`); and, for callers that go step by step (a job's run, the command
line), stores and statistics (:mod:`.stores`), image sources and the feature cache
(:mod:`.images`), engines and clusters (:mod:`.engines`), how features were made
(:mod:`.provenance`) and synthetic features (:mod:`.synthesis`). It calls
:mod:`shardeval.pipeline`; the command line calls it.
Nothing heavy is imported until a function runs."""
