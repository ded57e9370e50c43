"""Who may pull: client authentication (htpasswd) and the network allow list."""

from registry_mirror.auth.htpasswd import Htpasswd, HtpasswdError

__all__ = ["Htpasswd", "HtpasswdError"]
