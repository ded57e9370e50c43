"""The pull-through policy between the API and the stores/upstreams."""

from registry_mirror.mirror.errors import FillFailed, TooManyFetches
from registry_mirror.mirror.fill import BlobFill
from registry_mirror.mirror.routing import (
    RegistryNotMirrored,
    RepositoryDenied,
    Route,
    Router,
    UpstreamEntry,
)
from registry_mirror.mirror.service import (
    BlobSource,
    Manifest,
    ManifestUnacceptable,
    Mirror,
    TagListing,
)
from registry_mirror.mirror.singleflight import SingleFlight

__all__ = [
    "BlobFill",
    "BlobSource",
    "FillFailed",
    "Manifest",
    "ManifestUnacceptable",
    "Mirror",
    "RegistryNotMirrored",
    "RepositoryDenied",
    "Route",
    "Router",
    "SingleFlight",
    "TagListing",
    "TooManyFetches",
    "UpstreamEntry",
]
