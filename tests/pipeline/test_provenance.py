"""Whether weights are the published file, decided from their SHA-256 against the one
``shardeval fetch`` pins; how each kind of input records how its features were made; and
the warnings for weights that are not the published file and for sides made differently."""

from shardeval.pipeline.images.provenance import (
    NOT_COMPARABLE,
    made_by,
    provenance_warnings,
    recorded,
    weights_status,
)
from shardeval.pipeline.io.statsio import _adm_description

#: pytorch-fid's release file, as published (snap-research/discoscene pins it; its name
#: carries the first 8 hex digits).
PUBLISHED = "sha256:6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
OTHER = "sha256:" + "1" * 64


def test_the_status_of_each_digest():
    assert weights_status("inception", PUBLISHED) == "published"
    assert weights_status("inception", OTHER) == "not published"
    assert weights_status("inception", "random:0") == "random"
    assert weights_status("inception", "blake2b-128:" + "ab" * 16) == "not verified"
    assert weights_status("dinov2-vitl14", OTHER) == "unpinned"  # nothing pinned for the ViTs
    assert weights_status("inception", None) is None


def _store(resize="legacy-pytorch", digest=PUBLISHED, encoder="inception"):
    """What an extraction store's description holds of how its features were made."""
    return {
        "feature_extractor": "inception-2015-12-05/pool3",
        "extraction": {"encoder": encoder, "resize": resize, "weights_digest": digest},
    }


def test_every_kind_of_input():
    assert made_by(_store()).weights_status == "published"
    assert made_by({"feature_extractor": "test-net"}).feature_extractor == "test-net"
    assert made_by({"source": "x.npy", "feature_extractor": None}) is None
    assert made_by({}) is None
    adm = made_by(_adm_description(2048, (10, 64, 64, 3), 2023))
    assert (adm.resize, adm.weights_status) == ("legacy-tensorflow", "published")
    # A statistics group keeps the description of the store it summarised.
    assert made_by({**_store(digest=OTHER), "n": 5}).weights_status == "not published"
    record = recorded({"encoder": "inception", "resize": "clean", "weights_digest": OTHER})
    assert NOT_COMPARABLE in record.text(full=True, loud=True)
    assert OTHER in record.text(full=True, loud=True)
    published = recorded({"encoder": "inception", "weights_digest": PUBLISHED})
    assert "the published file" in published.text()
    assert "not the published" not in published.text(full=True, loud=True)


def test_warnings():
    same = {"real": made_by(_store()), "gen": made_by(_store())}
    assert provenance_warnings(same) == []
    other = {"real": made_by(_store(digest=OTHER)), "gen": made_by(_store(digest=OTHER))}
    (warned,) = provenance_warnings(other)  # one warning for one file on both sides
    assert warned.startswith(f"real and gen: {NOT_COMPARABLE}")
    assert OTHER in warned
    assert PUBLISHED in warned
    resized = {"real": made_by(_store()), "gen": made_by(_store("legacy-tensorflow"))}
    (warned,) = provenance_warnings(resized)
    assert "made differently (resize legacy-pytorch and legacy-tensorflow)" in warned
    adm = made_by(_adm_description(2048, (10, 64, 64, 3), None))
    assert provenance_warnings({"real": adm, "gen": made_by(_store("legacy-tensorflow"))}) == []
    (warned,) = provenance_warnings({"real": adm, "gen": made_by(_store())})
    assert "resize legacy-tensorflow and legacy-pytorch" in warned
    # A digest of the older family cannot be compared: not verified, never "different".
    old = made_by(_store(digest="blake2b-128:" + "ab" * 16))
    (warned,) = provenance_warnings({"real": old, "gen": made_by(_store())})
    assert warned.startswith("real: weights not verified")
    random = made_by(_store(digest="random:0"))
    warned = provenance_warnings({"real": random, "gen": made_by(_store())})
    assert warned[0].startswith("real: features made with random weights")
    assert "made differently (weights random:0" in warned[1]
    # Nothing recorded on one side: nothing to compare.
    assert provenance_warnings({"real": None, "gen": made_by(_store())}) == []


def test_statistics_made_differently_never_merge(tmp_path):
    """A merge keeps how its inputs' features were made when they agree (so a report of the
    merged statistics can still say it), and refuses inputs made differently."""
    import numpy as np
    import pytest

    from shardeval.pipeline.core.states import Moments
    from shardeval.pipeline.errors import StatsFormatError
    from shardeval.pipeline.io.statsio import merge_stats, save_stats

    rows = np.random.default_rng(0).normal(size=(12, 3))
    parts = {}
    for name, lo, made in (
        ("a", 0, _store()),
        ("b", 4, _store()),
        ("tf", 8, _store("legacy-tensorflow")),
        ("other", 8, _store(digest=OTHER)),
    ):
        parts[name] = save_stats(
            str(tmp_path / f"{name}.zarr"), Moments.from_rows(rows[lo : lo + 4]), made
        )
    merged, provenance = merge_stats([parts["a"], parts["b"]])
    assert merged.n == 8
    assert made_by(provenance).resize == "legacy-pytorch"
    assert made_by(provenance).weights_status == "published"
    for odd in ("tf", "other"):
        with pytest.raises(StatsFormatError, match="made differently"):
            merge_stats([parts["a"], parts[odd]])
