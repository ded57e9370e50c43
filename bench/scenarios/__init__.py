"""The scenarios, in the order they run and are reported; ``--only`` selects by group."""

from bench.scenarios.base import Rows, Scenario
from bench.scenarios.blob_hit import BlobHit
from bench.scenarios.cold import ColdGet
from bench.scenarios.crowd import Crowd
from bench.scenarios.followers import Followers
from bench.scenarios.join import Join
from bench.scenarios.manifests import ManifestRate
from bench.scenarios.peak_rss import PeakRss
from bench.scenarios.pulls import Pulls
from bench.scenarios.ranges import Ranges

__all__ = ["GROUPS", "SCENARIOS", "Rows", "Scenario"]

SCENARIOS: tuple[Scenario, ...] = (
    BlobHit(),
    ManifestRate("digest"),
    ManifestRate("tag"),
    ColdGet(),
    Pulls(),
    Followers(),
    Join(),
    Ranges(),
    Crowd(),
    PeakRss(),  # always, last
)
GROUPS: tuple[str, ...] = tuple(s.group for s in SCENARIOS if s.group is not None)
