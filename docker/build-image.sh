#!/usr/bin/env bash
# Builds the Docker image raftjob:dev FROM scratch out of the already built binary
# (target/debug/raftjob; `make image` builds it first). No image is pulled.
#
# What it does:
#   1. prepares the build context in target/docker-context/ (wiped first):
#        rootfs/raftjob                     the binary
#        rootfs/<dir>/<lib>                 every shared library `ldd` lists for the
#                                           binary and for /bin/sh, at its own path
#        rootfs/lib64/ld-linux-*.so.*       the dynamic loader (PT_INTERP)
#        rootfs/bin/sh                      the host's /bin/sh (dash), which the shell
#                                           processor runs jobs with
#        rootfs/etc/passwd, rootfs/etc/group  root and raftjob (uid/gid 10001)
#        rootfs/etc/ssl/certs/ca-certificates.crt  CA roots, for https in the http processor
#        rootfs/tmp                         mode 1777
#        data/                              becomes /data, owned by 10001
#        Dockerfile                         copied from docker/Dockerfile
#   2. runs `docker build -t $IMAGE` on it, labelled with the binary's SHA-256
#      (raftjob.binary-sha256), so tests can tell a stale image;
#   3. removes the previous image of that tag (now untagged) unless a container uses it;
#   4. checks the image with `docker run --rm $IMAGE --version`.
#
# Environment: RAFTJOB_BIN (default target/debug/raftjob), IMAGE (default raftjob:dev),
# CONTEXT (default target/docker-context).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${RAFTJOB_BIN:-$ROOT/target/debug/raftjob}
IMAGE=${IMAGE:-raftjob:dev}
CTX=${CONTEXT:-$ROOT/target/docker-context}
SHELL_BIN=/bin/sh

say() { echo "==> $*"; }

if [[ ! -x $BIN ]]; then
    echo "build-image.sh: $BIN is missing; run \`make image\` (or \`cargo build --bin raftjob\`) first" >&2
    exit 1
fi
command -v docker >/dev/null || { echo "build-image.sh: docker is not installed" >&2; exit 1; }
command -v ldd >/dev/null || { echo "build-image.sh: ldd is not installed" >&2; exit 1; }

say "Preparing the build context in $CTX"
rm -rf "$CTX"
mkdir -p "$CTX/rootfs/etc/ssl/certs" "$CTX/rootfs/bin" "$CTX/rootfs/tmp" "$CTX/data"
chmod 1777 "$CTX/rootfs/tmp"
chmod 0750 "$CTX/data"

cp -L "$BIN" "$CTX/rootfs/raftjob"
cp -L "$SHELL_BIN" "$CTX/rootfs/bin/sh"

# Shared libraries: `ldd` prints `name => /path (addr)` for libraries and
# `/path/ld-linux... (addr)` for the loader; linux-vdso has no file.
libs() {
    ldd "$1" | awk '
        $2 == "=>" && $3 ~ /^\// { print $3 }
        $1 ~ /^\// { print $1 }'
}
mapfile -t LIBS < <( { libs "$BIN"; libs "$SHELL_BIN"; } | sort -u)
if [[ ${#LIBS[@]} -eq 0 ]]; then
    echo "build-image.sh: ldd listed no libraries for $BIN (a static binary needs none; a dynamic one needs its loader)" >&2
fi
for lib in "${LIBS[@]}"; do
    mkdir -p "$CTX/rootfs$(dirname "$lib")"
    cp -L "$lib" "$CTX/rootfs$lib"
    say "  library $lib"
done

cat > "$CTX/rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
raftjob:x:10001:10001:raftjob:/data:/sbin/nologin
PASSWD
cat > "$CTX/rootfs/etc/group" <<'GROUP'
root:x:0:
raftjob:x:10001:
GROUP

if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    cp -L /etc/ssl/certs/ca-certificates.crt "$CTX/rootfs/etc/ssl/certs/ca-certificates.crt"
else
    echo "build-image.sh: /etc/ssl/certs/ca-certificates.crt is missing (apt-get install ca-certificates); https jobs would only trust the built-in roots" >&2
fi

cp "$ROOT/docker/Dockerfile" "$CTX/Dockerfile"

SHA=$(sha256sum "$CTX/rootfs/raftjob" | cut -d' ' -f1)
OLD_ID=$(docker image inspect "$IMAGE" --format '{{.Id}}' 2>/dev/null || true)
say "Building $IMAGE (binary sha256 $SHA)"
docker build --quiet --label "raftjob.binary-sha256=$SHA" -t "$IMAGE" "$CTX"
NEW_ID=$(docker image inspect "$IMAGE" --format '{{.Id}}')
if [[ -n $OLD_ID && $OLD_ID != "$NEW_ID" ]]; then
    # The previous build of this tag is now untagged; remove it unless a container uses it.
    docker image rm "$OLD_ID" >/dev/null 2>&1 && say "Removed the previous $IMAGE (${OLD_ID#sha256:})" || true
fi

say "Checking: docker run --rm $IMAGE --version"
docker run --rm "$IMAGE" --version
say "Built $IMAGE ($(docker image inspect "$IMAGE" --format '{{.Size}}') bytes)"
