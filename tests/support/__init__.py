"""What the tests share, so that no test module carries a copy of its own.

- ``waits``: :func:`wait_until` (and ``wait_until_async``), the one bounded polling loop.
- ``oci``: the mirror's error bodies, checked for their exact shape (``error_codes``,
  ``error_code``, ``error_detail``, ``assert_oci_error``).
- ``store``: where the mirror's store keeps files (``blob_file`` through
  ``FilesystemBlobStore.path_for``, ``blobs_dir``, ``staging_dir``, ``stored_files``,
  ``staged_files``).
- ``mirror``: the mirror as a process (``MirrorProcess``), its operator commands
  (``mirror_command``) and the alarms its log must never hold (``assert_log_quiet``).
- ``images``: images pushed to a registry, and ``sha256_digest``.
- ``registry``, ``faulty``, ``nginx``, ``tinyproxy``, ``token_auth``, ``tls``: the servers
  around the mirror; ``service.Service`` is their ``with`` statement.
- ``clients``, ``podman``, ``containerd``, ``skopeo``: the real clients and what they need.
- ``resources``, ``disks``, ``ports``, ``process``: the machine side.
"""
