"""What Dask's client logs when its scheduler goes away is dropped while the engine runs
(the engine says it in one line of its own), and only that."""

import logging

from shardeval.pipeline.core.distributed_runs import _connection_noise_dropped


def _closed() -> tuple:
    try:
        raise OSError("Stream is closed")
    except OSError as exc:
        return (type(exc), exc, exc.__traceback__)


def test_a_closed_batched_send_and_a_lost_reconnection_are_dropped_and_nothing_else(caplog):
    batched, client = (
        logging.getLogger("distributed.batched"),
        logging.getLogger("distributed.client"),
    )
    caplog.set_level(logging.INFO)
    with _connection_noise_dropped():
        batched.info("Batched Comm Closed %r", "<TCP local=tcp://127.0.0.1:1>", exc_info=_closed())
        client.error("Failed to reconnect to scheduler after 30.00 seconds, closing client")
        client.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
    caplog.clear()
    batched.info("Batched Comm Closed %r", "<TCP>", exc_info=_closed())  # outside: as Dask logs it
    assert len(caplog.records) == 1
