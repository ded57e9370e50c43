"""The one typed settings object, built once in ``main()`` from command-line flags,
``REGISTRY_MIRROR_*`` environment variables, registry:2's ``REGISTRY_*`` environment
variables, the YAML config file and defaults, strongest first (see ``loading``).
Nothing else in the mirror reads the environment; a problem is a :class:`ConfigError`
of one line naming the key and where it came from.

``values``: sizes, durations and URLs as people write them; ``sections``: one model
per section, its keys and defaults; ``settings``: the whole, with its checks across
sections and the views the mirror reads; ``proxy``: an upstream's forward proxy;
``loading``: the sources layered and validated, the flag and variable names.
"""

from registry_mirror.config.loading import COMPAT_KEYS, flag_name, leaf_paths, load_settings
from registry_mirror.config.proxy import OutboundProxy
from registry_mirror.config.sections import DOCKER_HUB_HOSTS
from registry_mirror.config.settings import Settings
from registry_mirror.config.values import ConfigError, parse_duration, parse_size, redact_url

__all__ = [
    "COMPAT_KEYS",
    "DOCKER_HUB_HOSTS",
    "ConfigError",
    "OutboundProxy",
    "Settings",
    "flag_name",
    "leaf_paths",
    "load_settings",
    "parse_duration",
    "parse_size",
    "redact_url",
]
