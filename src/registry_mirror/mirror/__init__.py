"""The pull-through policy between the API and the stores/upstreams."""

from registry_mirror.mirror.blobs import Blobs, BlobSource, Pins
from registry_mirror.mirror.errors import FillFailed, TooManyFetches
from registry_mirror.mirror.eviction import Evictor, StorageLimits
from registry_mirror.mirror.fill import BlobFill
from registry_mirror.mirror.manifests import Manifest, Manifests, ManifestUnacceptable
from registry_mirror.mirror.routing import (
    RegistryNotMirrored,
    RepositoryDenied,
    Route,
    Router,
    UpstreamEntry,
)
from registry_mirror.mirror.service import Mirror
from registry_mirror.mirror.singleflight import SingleFlight
from registry_mirror.mirror.tag_lists import TagListing, TagLists

__all__ = [
    "BlobFill",
    "BlobSource",
    "Blobs",
    "Evictor",
    "FillFailed",
    "Manifest",
    "ManifestUnacceptable",
    "Manifests",
    "Mirror",
    "Pins",
    "RegistryNotMirrored",
    "RepositoryDenied",
    "Route",
    "Router",
    "SingleFlight",
    "StorageLimits",
    "TagListing",
    "TagLists",
    "TooManyFetches",
    "UpstreamEntry",
]
