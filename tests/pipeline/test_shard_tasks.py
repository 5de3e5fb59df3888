"""Shard tasks: a large argument is one key of the graph, not a copy in every task."""

import pickle
from dataclasses import dataclass

import dask
import numpy as np
import pytest

from shardeval.pipeline.core.reduce import SHARED_BYTES, shard_tasks
from shardeval.pipeline.io.stores import open_features


@dataclass(frozen=True)
class _Weights:
    """An argument as the metrics pass them (a mixture, a whitening): arrays in a dataclass,
    which Dask's own size rule (``sizeof``) sees as a few bytes."""

    values: np.ndarray


def _weighted_sum(block, offset, weights, scale):
    w = weights.values if isinstance(weights, _Weights) else weights
    return float((block @ w[: block.shape[1]]).sum()) * scale + offset


def _tasks_holding(tasks, nbytes):
    """How many tasks of the graph pickle to ``nbytes`` or more, each alone (as a cluster
    sends a task to a worker)."""
    graph = {}
    for task in dask.optimize(*tasks):  # the graph as a scheduler gets it: optimised
        graph.update(dict(task.__dask_graph__()))
    return sum(len(pickle.dumps(task, protocol=5)) >= nbytes for task in graph.values())


@pytest.mark.parametrize("wrap", [_Weights, np.asarray])
@pytest.mark.parametrize("rows", [SHARED_BYTES // 8 + 1, 16])
def test_a_large_argument_travels_once_and_the_results_are_the_same(tmp_path, rows, wrap):
    x = np.random.default_rng(0).normal(size=(100, 3))
    path = tmp_path / "x.npy"
    np.save(path, x)
    source = open_features(str(path), shard_rows=10)
    weights = np.arange(rows, dtype=np.float64)
    tasks = shard_tasks(source, _weighted_sum, wrap(weights), 2.0)
    expected = [float((x[i : i + 10] @ weights[:3]).sum()) * 2.0 + i for i in range(0, 100, 10)]
    assert list(dask.compute(*tasks, scheduler="sync")) == pytest.approx(expected, rel=1e-12)
    if weights.nbytes >= SHARED_BYTES:
        # the 1 MiB of arrays is in one task of the graph (its own key), not in each of ten
        assert _tasks_holding(tasks, weights.nbytes) == 1
    else:
        assert _tasks_holding(tasks, 1) >= 10  # small arguments stay inside the tasks
