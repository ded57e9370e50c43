"""Health: the checks run in the background (``checks``, ``monitor``), what the probes
answer from (``state``), and the probes themselves on the root application
(``endpoints``: ``/livez``, ``/readyz``, ``/startupz``, ``/debug/health``)."""

from registry_mirror.health.endpoints import HEALTH_KEY, PROBE_ROUTES, add_health_routes, is_probe
from registry_mirror.health.state import Health

__all__ = ["HEALTH_KEY", "PROBE_ROUTES", "Health", "add_health_routes", "is_probe"]
