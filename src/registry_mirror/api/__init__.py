"""The HTTP face of the mirror: the registry API (its own application, mounted at
``/v2``), its routes, access control and OCI errors."""

from registry_mirror.api.blob_transfer import SENDFILE_KEY, WRITE_TIMEOUT_KEY
from registry_mirror.api.errors import RegistryError, add_api_version, error_middleware
from registry_mirror.api.registry import (
    API_PREFIX,
    MAX_REQUEST_BODY,
    api_middleware,
    no_endpoint_middleware,
    registry_api,
    root_middleware,
)
from registry_mirror.api.routes import MIRROR_KEY, setup_routes
from registry_mirror.api.sendfile import SendfileReactor

__all__ = [
    "API_PREFIX",
    "MAX_REQUEST_BODY",
    "MIRROR_KEY",
    "SENDFILE_KEY",
    "WRITE_TIMEOUT_KEY",
    "RegistryError",
    "SendfileReactor",
    "add_api_version",
    "api_middleware",
    "error_middleware",
    "no_endpoint_middleware",
    "registry_api",
    "root_middleware",
    "setup_routes",
]
