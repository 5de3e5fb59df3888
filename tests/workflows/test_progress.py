"""The progress display: redrawn in place on a terminal; in a log (SLURM, CI) a few lines a
pass, never one per update."""

import io
import itertools

from shardeval.workflows.progress import ProgressBar, end_open_lines


class _Clock:
    """A clock the test moves by hand (no sleeping, no timing assertions)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _lines(stream):
    return stream.getvalue().splitlines()


def test_a_fast_pass_in_a_log_is_its_start_and_its_end():
    # It was a line per update: "shards: 0/10 shards done" ... "10/10", eleven lines.
    stream, clock = io.StringIO(), _Clock()
    bar = ProgressBar(stream=stream, clock=clock)
    for done in range(11):
        clock.now += 0.05
        bar(done, 10)
    assert len(_lines(stream)) == 2
    first, last = _lines(stream)
    assert first.startswith("shards: 0/10 done")
    assert last.startswith("shards: 10/10 done")
    assert "shards done" not in stream.getvalue()  # the unit was said twice


def test_a_slow_pass_prints_at_most_every_tenth_and_every_30_seconds():
    stream, clock = io.StringIO(), _Clock()
    bar = ProgressBar(stream=stream, clock=clock)
    for done in range(101):  # one update a second: 100 s for the pass
        bar(done, 100)
        clock.now += 1.0
    done_counts = [int(line.split()[1].split("/")[0]) for line in _lines(stream)]
    assert done_counts[0] == 0
    assert done_counts[-1] == 100
    # Between two lines: at least a tenth of the pass (10 updates) and at least 30 s (30
    # updates), the final line excepted, which always comes.
    for a, b in itertools.pairwise(done_counts[:-1]):
        assert b - a >= 30
    assert len(done_counts) <= 2 + 100 // 30


def test_a_stalled_pass_still_says_where_it_is_at_each_tenth():
    # Minutes per tenth: every tenth gets its line.
    stream, clock = io.StringIO(), _Clock()
    bar = ProgressBar("images", stream=stream, clock=clock)
    for done in range(0, 1001, 50):
        bar(done, 1000)
        clock.now += 120.0
    lines = _lines(stream)
    assert [line.split()[1] for line in lines] == [f"{k * 100:,}/1,000" for k in range(11)]
    assert all(line.startswith("images: ") for line in lines)


def test_each_pass_gets_its_start_and_end():
    stream, clock = io.StringIO(), _Clock()
    bar = ProgressBar(stream=stream, clock=clock)
    for total in (10, 5):
        for done in range(total + 1):
            bar(done, total)
    assert [line.split()[1] for line in _lines(stream)] == ["0/10", "10/10", "0/5", "5/5"]


def test_a_line_left_open_on_a_terminal_is_ended_before_an_error():
    # The error followed the bar on its line: "... 0/30    2.6sshardeval: error: ...".
    stream = _Terminal()
    bar = ProgressBar("images", stream=stream)
    bar(0, 30)
    assert not stream.getvalue().endswith("\n")
    end_open_lines()
    assert stream.getvalue().endswith("\n")
    end_open_lines()  # once only
    assert not stream.getvalue().endswith("\n\n")
    bar(30, 30)
    assert stream.getvalue().endswith("\n")


def _pngs(folder, n, rng):
    from PIL import Image

    folder.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype="uint8")).save(folder / f"{i}.png")
    return str(folder)


def test_extract_counts_images_in_a_log(tmp_path, capsys, rng, weights):
    # It counted chunks in words of shards: "chunks: 0/4 shards done", "chunks: 1/4 ...".
    from shardeval.workflows.cli import main

    images = _pngs(tmp_path / "images", 7, rng)
    argv = ["extract", images, "-o", str(tmp_path / "f.zarr"), "--weights", weights]
    assert main([*argv, "--batch-size", "2"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("images: 0/7 done")
    assert err.splitlines()[-1].startswith("images: 7/7 done")
    assert "chunks" not in err
    # The decoding pass of --skip-bad counts images too.
    argv[3] = str(tmp_path / "g.zarr")
    assert main([*argv, "--batch-size", "3", "--skip-bad"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "images checked: 0/7 done",
        "images checked: 7/7 done",
        "images: 0/7 done",
        "images: 7/7 done",
    ]


def test_progress_counts_what_each_task_holds_on_every_scheduler(tmp_path):
    # run_delayed(sizes=...): the progress adds what each finished task counts for.
    from dask import delayed
    from distributed import LocalCluster

    from shardeval.pipeline.core.engine import Engine

    sizes = [3, 3, 3, 1]
    tasks = [
        delayed(lambda k: k, pure=False)(k, dask_key_name=f"shard-t-{i}")
        for i, k in enumerate(sizes)
    ]
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
    ) as cluster:
        for scheduler in ("threads", "sync", cluster.scheduler_address):
            seen: list[tuple[int, int]] = []
            out = Engine(scheduler).run_delayed(
                tasks, progress=lambda d, t, seen=seen: seen.append((d, t)), sizes=sizes
            )
            assert out == sizes
            assert seen[0] == (0, 10)
            assert seen[-1] == (10, 10)
            assert all(t == 10 for _, t in seen)
            done = [d for d, _ in seen]
            assert done == sorted(done)
            if scheduler in ("threads", "sync"):  # a cluster may finish several in one batch
                steps = [b - a for a, b in itertools.pairwise(done)]
                assert sorted(steps) == sorted(sizes)  # one step a task


def test_images_extracted_for_a_measurement_are_counted_as_images(tmp_path, capsys, rng, weights):
    # The bar of `stats IMAGES` said "shards: 0/7 done" while it extracted 7 images.
    from shardeval.workflows.cli import main

    images = _pngs(tmp_path / "images", 7, rng)
    argv = ["stats", images, "-o", str(tmp_path / "s.zarr"), "--weights", weights]
    assert main([*argv, "--cache-root", str(tmp_path / "cache"), "--batch-size", "4"]) == 0
    lines = [line.split(",")[0] for line in capsys.readouterr().err.splitlines()]
    assert lines == ["images: 0/7 done", "images: 7/7 done", "shards: 0/1 done", "shards: 1/1 done"]
