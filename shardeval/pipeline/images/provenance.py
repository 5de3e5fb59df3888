"""How features were made, as a report states it: the network, the resize, the weights' digest
and whether those weights are the published file; and the warnings when they are not, or when
the two sides of a comparison were made differently.

The weights are named by their SHA-256 (``sha256:<hex>``), the digest family that
:mod:`shardeval.pipeline.io.fetch` pins, so a report's digest compares by eye with
``shardeval fetch --list``. Their status (:func:`weights_status`) is decided from the digest
against the pinned one every time it is read, never taken from what a store says of itself:

* ``published``: the SHA-256 ``fetch`` pins for the encoder (the FID Inception);
* ``not published``: another file (a file of the same layout at the pinned name included):
  its numbers do not compare with papers;
* ``random``: the seeded random weights of a smoke test (``weights="random"``);
* ``unpinned``: an encoder whose weights no public source pins (the ViTs' Hugging Face
  snapshots, a user's encoder: a ``timm:``/``open_clip:``/``hf:`` model, a module given in
  Python): nothing to check them against;
* ``not verified``: a store written before weights were digested with SHA-256 (its digest is
  ``blake2b-128:``): the weights cannot be checked against the pinned file;
* None: nothing recorded (features of another tool, an array).

What an input records comes in several shapes: an extraction store's description
(:meth:`~shardeval.pipeline.io.stores.FeatureSource.describe`, with ``extraction``), a
statistics group's attributes (the same, kept from the store it summarised), a guided-diffusion
reference batch's description (the TF graph's pool_3 after TF's own resize, by the published
graph). :func:`made_by` reads each into one :class:`MadeBy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

#: The statuses of :func:`weights_status`.
PUBLISHED = "published"
NOT_PUBLISHED = "not published"
RANDOM = "random"
UNPINNED = "unpinned"
NOT_VERIFIED = "not verified"

#: Digest prefixes: the SHA-256 family, the seeded random weights, the family of stores made
#: before SHA-256 (read, never written).
SHA256_PREFIX = "sha256:"
RANDOM_PREFIX = "random:"
LEGACY_PREFIX = "blake2b-128:"

#: What the warnings say of weights that are not the published file.
NOT_COMPARABLE = "not the published weights: not comparable with papers"

#: The format a guided-diffusion reference batch's description names
#: (:func:`shardeval.pipeline.io.statsio.adm_provenance`).
_ADM_FORMAT = "guided-diffusion reference batch"


def pinned_digest(encoder: str | None) -> str | None:
    """The SHA-256 ``fetch`` pins for an encoder's weights (``sha256:<hex>``; 8 hex digits
    where only a prefix is pinned), or None when nothing is pinned for it: the artifact its
    declaration names (:class:`~shardeval.kernels.encoders.registry.WeightsSource`'s
    ``fetch``); a name that is no registered encoder's (a user's) has none."""
    from shardeval.kernels.encoders.registry import ENCODERS
    from shardeval.pipeline.io.fetch import ARTIFACTS

    spec = ENCODERS.get(encoder or "")
    artifact = None if spec is None else ARTIFACTS.get(spec.weights.fetch or "")
    return None if artifact is None else SHA256_PREFIX + artifact.sha256


def weights_status(encoder: str | None, digest: str | None) -> str | None:
    """Whether weights of ``digest`` are the published file of ``encoder``'s (see the module's
    description for the values); None when no digest is recorded."""
    if not digest:
        return None
    if digest.startswith(RANDOM_PREFIX):
        return RANDOM
    if not digest.startswith(SHA256_PREFIX):
        return NOT_VERIFIED
    pinned = pinned_digest(encoder)
    if pinned is None:
        return UNPINNED
    return PUBLISHED if digest.startswith(pinned) else NOT_PUBLISHED


def weights_text(
    status: str | None, digest: str | None, *, full: bool = False, loud: bool = False
) -> str:
    """The weights for people: the digest (shortened unless ``full``) and what it is (with
    ``loud``, weights that are not the published file say what that means for the number)."""
    short = (digest or "") if full else _short(digest)
    words = {
        PUBLISHED: "the published file, as `shardeval fetch` pins it",
        NOT_PUBLISHED: NOT_COMPARABLE if loud else "not the published weights",
        RANDOM: "random weights: a smoke test, no measurement",
        UNPINNED: "no published digest to check them against",
        NOT_VERIFIED: "not verified: recorded before SHA-256 digests",
    }
    if status not in words:
        return short or "not recorded"
    return f"{short} ({words[status]})" if short else words[status]


def _short(digest: str | None) -> str:
    if not digest:
        return ""
    family, _, value = digest.partition(":")
    return f"{family}:{value[:16]}…" if len(value) > 16 else digest


@dataclass(frozen=True)
class MadeBy:
    """How one input's features were made, as far as it records.

    Attributes:
        feature_extractor: the network and layer (``inception-2015-12-05/pool3``).
        encoder: the encoder's name (``inception``), when an extraction recorded it.
        resize: the preprocessing (``legacy-pytorch``, ``legacy-tensorflow`` …).
        weights_digest: ``sha256:<hex>``, ``random:<seed>`` or (older stores) ``blake2b-128:…``.
        weights_status: see :func:`weights_status`.
        weights_file: where the weights were read when the features were made (None: no file,
            as for a module given in Python, whose store records "").
        encoder_source: where the encoder came from: ``shardeval`` (registered), ``timm``,
            ``open_clip``, ``hf`` or ``python`` (a module given in Python); None where the
            input does not record it (a store made before it was recorded: registered).
    """

    feature_extractor: str | None = None
    encoder: str | None = None
    resize: str | None = None
    weights_digest: str | None = None
    weights_status: str | None = None
    weights_file: str | None = None
    encoder_source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self, *, full: bool = False, loud: bool = False) -> str:
        """One line for people: network, resize, weights (see :func:`weights_text`)."""
        parts = [self.feature_extractor or f"encoder {self.encoder or 'not recorded'}"]
        if self.resize:
            parts.append(f"resize {self.resize}")
        if self.weights_digest or self.weights_status:
            words = weights_text(self.weights_status, self.weights_digest, full=full, loud=loud)
            parts.append(f"weights {words}")
        return ", ".join(parts)


def made_by(provenance: Mapping[str, Any] | None) -> MadeBy | None:
    """How the features an input holds (or summarises) were made, from what it records; None
    when it records nothing of it.

    Args:
        provenance: a feature source's description, a statistics file's attributes, or a
            guided-diffusion reference batch's description.
    """
    if not provenance:
        return None
    if provenance.get("format") == _ADM_FORMAT:
        # The suite's own TF graph: the published weights, resized by TF 1.x's bilinear.
        return MadeBy(
            feature_extractor=provenance.get("feature_extractor"),
            encoder="inception",
            resize=provenance.get("resize"),
            weights_status=PUBLISHED,
            weights_file="classify_image_graph_def.pb (the TF graph of 2015-12-05)",
        )
    extraction = provenance.get("extraction")
    extractor = provenance.get("feature_extractor")
    if not isinstance(extraction, Mapping):
        return None if extractor is None else MadeBy(feature_extractor=str(extractor))
    encoder, digest = extraction.get("encoder"), extraction.get("weights_digest")
    return MadeBy(
        feature_extractor=None if extractor is None else str(extractor),
        encoder=encoder,
        resize=extraction.get("resize"),
        weights_digest=digest,
        weights_status=weights_status(encoder, digest),
        weights_file=extraction.get("weights_file") or None,
        encoder_source=extraction.get("encoder_source"),
    )


def recorded(record: Mapping[str, Any]) -> MadeBy:
    """How features were made, from a record of their encoder, resize and weights digest (a
    run history keeps one per distinct way its entries' features were made); the status is
    decided from the digest."""
    encoder, digest = record.get("encoder"), record.get("weights_digest")
    return MadeBy(
        feature_extractor=record.get("feature_extractor"),
        encoder=encoder,
        resize=record.get("resize"),
        weights_digest=digest,
        weights_status=weights_status(encoder, digest),
        weights_file=record.get("weights_file") or None,
        encoder_source=record.get("encoder_source"),
    )


def weights_warning(role: str, made: MadeBy | None) -> str | None:
    """The warning for one side whose weights are not the published file (or random, or cannot
    be verified), else None."""
    if made is None or made.weights_status not in (NOT_PUBLISHED, RANDOM, NOT_VERIFIED):
        return None
    where = f" of {made.weights_file}" if made.weights_file else ""
    if made.weights_status == NOT_PUBLISHED:
        return (
            f"{role}: {NOT_COMPARABLE} (features made with weights {made.weights_digest}"
            f"{where}; the published file's SHA-256 is {pinned_digest(made.encoder)})"
        )
    if made.weights_status == RANDOM:
        return (
            f"{role}: features made with random weights ({made.weights_digest}): a smoke test "
            "of the pipeline, not a measurement"
        )
    return (
        f"{role}: weights not verified: the features were made before weights were digested "
        f"with SHA-256 ({made.weights_digest}); extract them again to check the weights "
        "against the published file"
    )


def _weights_key(made: MadeBy) -> str | None:
    """What the weights can be compared by: a SHA-256 or random digest, the published file's
    status (a reference batch's TF graph holds the same weights as the pinned file), or
    nothing (unrecorded, or a digest of the older family)."""
    if made.weights_status == PUBLISHED:
        return PUBLISHED
    if made.weights_digest and made.weights_digest.startswith((SHA256_PREFIX, RANDOM_PREFIX)):
        return made.weights_digest
    return None


def difference_warning(ra: str, a: MadeBy | None, rb: str, b: MadeBy | None) -> str | None:
    """The warning when two sides' features were made differently (network, resize or
    weights, each where both record it), else None."""
    if a is None or b is None:
        return None
    differ = []
    for what, left, right in (
        ("network", a.feature_extractor, b.feature_extractor),
        ("resize", a.resize, b.resize),
    ):
        if left and right and left != right:
            differ.append(f"{what} {left} and {right}")
    wa, wb = _weights_key(a), _weights_key(b)
    if wa and wb and wa != wb:
        differ.append(
            f"weights {weights_text(a.weights_status, a.weights_digest)} and "
            f"{weights_text(b.weights_status, b.weights_digest)}"
        )
    if not differ:
        return None
    hint = ""
    if "legacy-tensorflow" in (a.resize, b.resize) and a.resize != b.resize:
        hint = (
            "; features of the TF graph (a guided-diffusion reference batch, TF-made "
            "statistics) compare with resize legacy-tensorflow"
        )
    return (
        f"{ra} and {rb} features were made differently ({'; '.join(differ)}): the number "
        "measures that difference as well as the sets'; make both with the same encoder, "
        f"resize and weights{hint}"
    )


def provenance_warnings(sides: Mapping[str, MadeBy | None]) -> list[str]:
    """Every warning the sides call for: the weights of each side (one for sides of the same
    weights file), then each pair of sides made differently."""
    # Sides whose weights are the same file share one warning ("real and gen: ...").
    same: dict[tuple[Any, ...], list[str]] = {}
    for role, made in sides.items():
        if made is not None:
            key = (made.encoder, made.weights_status, made.weights_digest, made.weights_file)
            same.setdefault(key, []).append(role)
    out = []
    for roles_of_one in same.values():
        made = sides[roles_of_one[0]]
        warned = weights_warning(" and ".join(roles_of_one), made)
        if warned is not None:
            out.append(warned)
    roles = list(sides)
    for i, ra in enumerate(roles):
        for rb in roles[i + 1 :]:
            if (w := difference_warning(ra, sides[ra], rb, sides[rb])) is not None:
                out.append(w)
    return out
