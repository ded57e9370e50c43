"""Cache maintenance for operators, live beside the server or not: ``ls``, ``du``,
``prune``, ``verify`` (the operations, one module each) and ``warm``; ``commands``
is their command line (arguments in, a table or JSON out, exit codes)."""

from registry_mirror.maintenance.cache import Cache, CacheMissing
from registry_mirror.maintenance.inventory import (
    Naming,
    RepoTag,
    UsageReport,
    closure,
    list_tags,
    usage,
)
from registry_mirror.maintenance.prune import (
    NothingMatches,
    PrunePlan,
    PruneResult,
    plan_prune,
    prune,
)
from registry_mirror.maintenance.verify import ORPHAN_GRACE, Problem, verify
from registry_mirror.maintenance.warm import (
    MirrorAccess,
    WarmError,
    WarmResult,
    split_image,
    warm,
)

__all__ = [
    "ORPHAN_GRACE",
    "Cache",
    "CacheMissing",
    "MirrorAccess",
    "Naming",
    "NothingMatches",
    "Problem",
    "PrunePlan",
    "PruneResult",
    "RepoTag",
    "UsageReport",
    "WarmError",
    "WarmResult",
    "closure",
    "list_tags",
    "plan_prune",
    "prune",
    "split_image",
    "usage",
    "verify",
    "warm",
]
