#!/usr/bin/env bash
# Builds the container image offline: a Debian rootfs from Debian's packages (mmdebstrap),
# the project and its dependencies from wheels, assembled and committed by buildah.
# Reproducible: the same inputs (sources, wheels, Debian packages) give the same image ID.
#
#   deploy/image/build.sh [--python PY] [--tag NAME] [--archive FILE.tar]
#
# PY (default python3) builds the wheels and installs them into the rootfs; it must be a
# CPython 3.11 on x86_64/aarch64 glibc, like the image's (Debian 12's python3.11).
set -euo pipefail
cd "$(dirname "$0")/../.."

python=python3
tag=""
archive=""
while [ $# -gt 0 ]; do
	case "$1" in
	--python) python=$2; shift 2 ;;
	--tag) tag=$2; shift 2 ;;
	--archive) archive=$2; shift 2 ;;
	*) echo "usage: $0 [--python PY] [--tag NAME] [--archive FILE.tar]" >&2; exit 2 ;;
	esac
done

suite=bookworm
uid=65532
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/registry_mirror/__init__.py)
tag=${tag:-registry-mirror:$version}
# The newest commit's time (or the newest source's) stamps every file, the image and its
# history: the same sources give the same image, whenever they are built.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || stat -c %Y pyproject.toml)
fi
export SOURCE_DATE_EPOCH

for tool in mmdebstrap buildah; do
	command -v "$tool" >/dev/null || { echo "$0: $tool is missing (apt-get install $tool)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "$0: run as root (mmdebstrap's root mode, buildah's storage)" >&2; exit 2; }
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
	{ echo "$0: $python is not Python 3.11, the image's" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/registry-mirror-image.XXXXXX")
container=""
cleanup() {
	[ -z "$container" ] || buildah rm "$container" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
root=$work/rootfs
site=usr/local/lib/python3.11/dist-packages

echo "wheels: the project and its pinned dependencies"
"$python" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$work/wheels" .
"$python" -m pip install --quiet --disable-pip-version-check --no-index --no-compile \
	--no-warn-script-location --find-links "$work/wheels" --target "$work/site" \
	"registry-mirror==$version"
rm -rf "$work/site/bin" # the launcher is the image's own, for the image's Python

echo "rootfs: Debian $suite's Python and what it needs, and a /bin/sh"
# Extracted, not installed: no maintainer scripts, so dpkg, tar, debconf and openssl, which
# only those scripts need, are left out below. Each kept package is listed in
# /var/lib/dpkg/status.d/ as distroless images do, so image scanners see its version.
drop="dpkg tar debconf"
mmdebstrap --quiet --mode=root --variant=extract \
	--include=base-files,dash,python3.11-minimal,libpython3.11-stdlib,libsqlite3-0,ca-certificates,netbase \
	--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--extract-hook='set -e; mkdir -p "$1/var/lib/dpkg/status.d"
		for deb in "$1"/var/cache/apt/archives/*.deb; do
			name=$(dpkg-deb -f "$deb" Package)
			case " '"$drop"' " in
			*" $name "*) dpkg-deb --fsys-tarfile "$deb" | tar -t | sed "s|^\./||" >> "$1/.dropped" ;;
			*) { dpkg-deb -f "$deb"; echo "Status: install ok installed"; } > "$1/var/lib/dpkg/status.d/$name" ;;
			esac
		done' \
	"$suite" "$root"

# Files of the dropped packages go (their directories too, once empty), and openssl's
# programs; libssl stays, it is Python's.
grep -v -e '/$' -e '^$' "$root/.dropped" | while read -r path; do rm -f "$root/$path"; done
grep './$' "$root/.dropped" | sort -r | while read -r path; do rmdir "$root/$path" 2>/dev/null || true; done
rm -f "$root/.dropped" "$root/usr/bin/openssl" "$root/usr/bin/c_rehash"
rm -rf "$root/var/cache/apt" "$root/var/lib/apt" "$root/var/log/"*

# The CA bundle update-ca-certificates would make: Mozilla's certificates, in order.
mkdir -p "$root/etc/ssl/certs" "$root/usr/lib/ssl"
find "$root/usr/share/ca-certificates/mozilla" -name '*.crt' | LC_ALL=C sort |
	while read -r cert; do cat "$cert"; echo; done | sed '/^$/d' > "$root/etc/ssl/certs/ca-certificates.crt"
ln -sfn /etc/ssl/certs "$root/usr/lib/ssl/certs"
ln -sfn /etc/ssl/certs/ca-certificates.crt "$root/usr/lib/ssl/cert.pem"

# The user (registry, uid 65532, no shell, no home of its own), the cache, /tmp.
cat > "$root/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/usr/sbin/nologin
registry:x:$uid:$uid:registry-mirror:/var/lib/registry:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
PASSWD
cat > "$root/etc/group" <<GROUP
root:x:0:
registry:x:$uid:
nogroup:x:65534:
GROUP
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
# /bin/sh (dash, 120 KiB): healthchecks in compose's CMD-SHELL form run under it, and
# podman-compose runs every healthcheck that way.
ln -sfn dash "$root/bin/sh"
mkdir -p "$root/var/lib/registry" "$root/tmp" "$root/etc/docker/registry" "$root/root"
# A new named volume takes this directory's owner under Docker, only its mode under Podman
# (and podman-compose): owned by the mirror's user, and writable like /tmp (sticky), it is
# the mirror's to fill under both, with no chown step and no root at start.
chown "$uid:$uid" "$root/var/lib/registry"
chmod 1777 "$root/var/lib/registry"
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
install -m 0644 deploy/image/config.yml "$root/etc/docker/registry/config.yml"

# The project, its dependencies and Python's own modules, compiled once here: the root
# filesystem may be read-only, and a start then compiles nothing.
mkdir -p "$root/$site" "$root/usr/local/bin"
cp -a "$work/site/." "$root/$site/"
# Debug symbols go from the extensions (uvloop's alone is 14 MB with them), and from
# Python's library what a server never imports (docs, tests, IDLE, Tk, 2to3).
find "$root/$site" -name '*.so' -exec strip --strip-unneeded {} +
for unused in pydoc_data test idlelib tkinter turtledemo lib2to3 ensurepip; do
	rm -rf "${root:?}/usr/lib/python3.11/$unused"
done
cat > "$root/usr/local/bin/registry-mirror" <<'LAUNCHER'
#!/usr/bin/python3.11
import sys

from registry_mirror.cli import main

sys.exit(main())
LAUNCHER
chmod 0755 "$root/usr/local/bin/registry-mirror"
chroot "$root" /usr/bin/python3.11 -m compileall -q --invalidation-mode unchecked-hash \
	/usr/lib/python3.11 "/$site" >/dev/null
chroot "$root" /usr/local/bin/registry-mirror --version

echo "image: $tag"
container=$(buildah from --quiet scratch)
buildah add --quiet "$container" "$root" / >/dev/null
buildah config \
	--user "$uid:$uid" \
	--workingdir /var/lib/registry \
	--port 5000/tcp \
	--volume /var/lib/registry \
	--env PATH=/usr/local/bin:/usr/bin:/bin \
	--env LANG=C.UTF-8 \
	--env PYTHONDONTWRITEBYTECODE=1 \
	--env PYTHONUNBUFFERED=1 \
	--env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
	--env REGISTRY_MIRROR_CONFIG=/etc/docker/registry/config.yml \
	--entrypoint '["registry-mirror"]' \
	--cmd serve \
	--stop-signal SIGTERM \
	--label org.opencontainers.image.title=registry-mirror \
	--label org.opencontainers.image.description="A pull-through cache for container registries" \
	--label org.opencontainers.image.version="$version" \
	--label org.opencontainers.image.licenses=Apache-2.0 \
	--label org.opencontainers.image.base.name="debian:$suite (python3.11, from Debian's packages)" \
	--created-by "deploy/image/build.sh" \
	"$container"
image=$(buildah commit --quiet --timestamp "$SOURCE_DATE_EPOCH" --rm "$container" "$tag")
container=""
buildah tag "$image" "${tag%:*}:latest" 2>/dev/null || true
if [ -n "$archive" ]; then
	rm -f "$archive"
	buildah push --quiet "$image" "oci-archive:$archive:$tag" >/dev/null
fi
echo "built $tag: image ID $image"
