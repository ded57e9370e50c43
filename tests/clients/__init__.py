"""Real clients (podman, containerd's ctr, skopeo) and recorded request sequences (Docker Engine,
Kaniko) pulling ``docker.io/...`` through the mirror, each configured as its documentation says.

Docker Hub is unreachable here: a pull that succeeds went through the mirror.
"""
