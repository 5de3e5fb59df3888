"""shardeval: distributed, exact evaluation of generative models.

``shardeval.pipeline`` holds the mathematics and the task graph, ``shardeval.kernels`` the
per-shard compute on one device, ``shardeval.workflows`` the command line, job files, history
and reports (``workflows → pipeline → kernels``, one way).
"""
