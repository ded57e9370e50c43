"""The HTTP face of the mirror: distribution API routes and OCI errors."""

from registry_mirror.api.errors import RegistryError, add_api_version, error_middleware
from registry_mirror.api.routes import MIRROR_KEY, SENDFILE_KEY, WRITE_TIMEOUT_KEY, setup_routes
from registry_mirror.api.sendfile import SendfileReactor

__all__ = [
    "MIRROR_KEY",
    "SENDFILE_KEY",
    "WRITE_TIMEOUT_KEY",
    "RegistryError",
    "SendfileReactor",
    "add_api_version",
    "error_middleware",
    "setup_routes",
]
