"""Who may pull: client authentication (htpasswd) and the network allow list."""

from registry_mirror.auth.htpasswd import CheckBusy, Htpasswd, HtpasswdError

__all__ = ["CheckBusy", "Htpasswd", "HtpasswdError"]
