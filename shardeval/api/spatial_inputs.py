"""sFID's inputs (docs/sfid.md): which metrics read the Inception's spatial features, which
array of each input holds them, and a guided-diffusion reference batch's ``mu_s``/``sigma_s``
as the reference statistics."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shardeval.api.input_kinds import ExtractedImages, is_path
from shardeval.api.statistics_inputs import statistics
from shardeval.pipeline.errors import OptionError, StatsFormatError

if TYPE_CHECKING:
    from shardeval.pipeline.fid.gaussian import Gaussian


def reads_spatial(instances: Sequence[Any]) -> bool:
    """Whether the metrics asked read sFID's spatial features (then they all do).

    Raises:
        OptionError: some read them and others read something else.
    """
    kinds = {m.reads for m in instances}
    if "spatial" in kinds and len(kinds) > 1:
        spatial = [m.name for m in instances if m.reads == "spatial"]
        others = [m.name for m in instances if m.reads != "spatial"]
        raise OptionError(
            f"{', '.join(spatial)} read the Inception's spatial features and "
            f"{', '.join(others)} read other arrays of the inputs; evaluate them apart"
        )
    return kinds == {"spatial"}


def spatial_arrays(opened: Sequence[Any], as_statistics: Sequence[bool]) -> list[str | None]:
    """The array each input's spatial features are read from: an input holding several
    arrays (an extraction store), its ``spatial``; an input of one array, itself (None)."""
    from shardeval.api.feature_inputs import holds_variables
    from shardeval.pipeline.images.encoding import SPATIAL_ARRAY

    return [
        SPATIAL_ARRAY if x is not None and not stats and holds_variables(x) else None
        for x, stats in zip(opened, as_statistics, strict=True)
    ]


#: The network and layer sFID's features come from, as reports name it.
SPATIAL_EXTRACTOR = "inception-2015-12-05/mixed_6/conv[:7]"


def spatial_provenance(described: Any) -> Any:
    """A side's description with the network and layer its spatial features come from: the
    store (or reference batch) records those of its main features, the pool3 ones.

    Example:
        >>> spatial_provenance({"feature_extractor": "inception-2015-12-05/pool3"})
        {'feature_extractor': 'inception-2015-12-05/mixed_6/conv[:7]'}
    """
    if not isinstance(described, dict):
        return described
    extractor = described.get("feature_extractor")
    if not (isinstance(extractor, str) and extractor.startswith("inception-2015-12-05/")):
        return described
    return {**described, "feature_extractor": SPATIAL_EXTRACTOR}


def spatial_statistics(x: Any) -> Gaussian:
    """Reference statistics of spatial features: a guided-diffusion reference batch's
    ``mu_s``/``sigma_s``; any other statistics as :func:`statistics` reads them (a file of
    one Gaussian holds what it was made of).

    Raises:
        StatsFormatError: a reference batch without ``mu_s``/``sigma_s``, or statistics that
            do not hold up.
    """
    if is_path(x) and not isinstance(x, ExtractedImages):
        from shardeval.pipeline.io.statsio import is_adm_reference, load_adm_reference

        path = os.fspath(x)
        if is_adm_reference(path):
            spatial = load_adm_reference(path).spatial
            if spatial is None:
                raise StatsFormatError(
                    f"{path!r} is a guided-diffusion reference batch without 'mu_s' and "
                    "'sigma_s' (sFID's statistics); sFID needs them, or the reference's "
                    "spatial features"
                )
            return spatial
    return statistics(x)
