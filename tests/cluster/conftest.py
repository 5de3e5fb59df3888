"""The one-node SLURM the SLURM tests run on: started once per session, stopped after."""

import pytest

from tests.cluster.slurm_fixture import OneNodeSlurm, SlurmStartError, unavailable


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slurm: on a real one-node SLURM (root and Debian's slurmctld, slurmd, slurm-client, "
        "munge); skipped, saying why, where it cannot start",
    )


@pytest.fixture(scope="session")
def slurm():
    """A running one-node SLURM; ``SLURM_CONF`` points at it for the session (sbatch, squeue
    and scancel, ours and dask-jobqueue's, talk to it). Skips, saying why, where SLURM cannot
    run here (not root, packages missing); a SLURM that is installed but does not start is an
    error, with the daemons' last log lines."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = OneNodeSlurm()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(cluster.conf))
        try:
            cluster.start()
        except SlurmStartError as exc:
            cluster.stop()
            pytest.fail(f"the one-node SLURM did not start: {exc}", pytrace=False)
        try:
            yield cluster
        finally:
            cluster.stop()
