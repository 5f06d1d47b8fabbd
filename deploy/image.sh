#!/usr/bin/env bash
# Build the exec-server image with no image registry: `make image` runs `deploy/image.sh build`.
#
#   deploy/image.sh tools   install podman & co. with apt-get when root (else say what to install)
#   deploy/image.sh conf    write podman's settings for this machine; print the file's path
#   deploy/image.sh base    the Debian base: mmdebstrap from Debian's packages, cached
#   deploy/image.sh build   all of the above, then the image ($IMAGE) from ./Containerfile
#   deploy/image.sh test    the same with pytest added ($TEST_IMAGE): runs the tests inside
#   deploy/image.sh docker  install Debian's docker.io (dockerd 20.10) for the Swarm test
#   deploy/image.sh seccomp podman's default seccomp profile plus bubblewrap's rule, written
#                           to $SECCOMP_PROFILE (deploy/seccomp/make_profile.py); build does it too
#
# The base tarball and podman's settings live in $IMAGE_CACHE (default
# ~/.cache/exec-server-image), kept between runs: a rebuild costs the podman build only.
# Remove the directory to start again from nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/exec-server:latest}
TEST_IMAGE=${TEST_IMAGE:-localhost/exec-server-test:latest}
IMAGE_CACHE=${IMAGE_CACHE:-$HOME/.cache/exec-server-image}
SUITE=bookworm
# The base's recipe version: bump it when the mmdebstrap options change, so that a cached
# tarball made by the old recipe is not reused.
BASE_RECIPE=3
BASE_IMAGE=${BASE_IMAGE:-localhost/exec-server-base:$SUITE-$BASE_RECIPE}
SECCOMP_PROFILE=${SECCOMP_PROFILE:-build/seccomp/exec-server/bubblewrap.json}
TOOLS="podman buildah runc uidmap slirp4netns netavark mmdebstrap"

tools() {
  local missing=""
  for tool in podman mmdebstrap runc; do command -v "$tool" >/dev/null 2>&1 || missing=1; done
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $TOOLS with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq $TOOLS >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $TOOLS >/dev/null; }
  else
    echo "the image needs: $TOOLS (Debian/Ubuntu: sudo apt-get install $TOOLS)" >&2
    return 1
  fi
}

docker_tools() {
  command -v dockerd >/dev/null 2>&1 && [ -x /usr/bin/docker ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing docker.io with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq docker.io >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq docker.io >/dev/null; }
  else
    echo "the Swarm test needs Debian's docker.io (sudo apt-get install docker.io)" >&2
    return 1
  fi
}

# Podman 4.3 as root on these machines needs two settings, kept in a file of our own
# (CONTAINERS_CONF) instead of the host's /etc/containers:
# - the runc runtime: crun 1.8 refuses a mixed cgroup v1/v2 layout;
# - default ulimits it can actually set: podman asks for more open files than the hard
#   limit and runs conmon with nproc 32768, so anything higher fails every container start.
conf() {
  mkdir -p "$IMAGE_CACHE"
  local nofile nproc
  nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
  nproc=$(ulimit -Hu); { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
  cat >"$IMAGE_CACHE/containers.conf.tmp" <<CONF
# Written by deploy/image.sh conf for this machine; use with CONTAINERS_CONF=<this file>.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
CONF
  mv "$IMAGE_CACHE/containers.conf.tmp" "$IMAGE_CACHE/containers.conf"
  echo "$IMAGE_CACHE/containers.conf"
}

sources() {
  # The machine's own apt sources (deb822 or one-line), so the base uses its mirror.
  local file
  for file in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; do
    [ -s "$file" ] && { echo "$file"; return; }
  done
  echo "deb http://deb.debian.org/debian $SUITE main"
}

base() {
  mkdir -p "$IMAGE_CACHE"
  local tar="$IMAGE_CACHE/base-$SUITE-$BASE_RECIPE.tar"
  if [ ! -s "$tar" ]; then
    echo "building the Debian $SUITE base with mmdebstrap (about a minute)" >&2
    # merged-usr keeps perl and friends out; no manuals, translations or docs (but the
    # copyright files), of glibc's iconv modules (8 MB; Python has its own codecs) only the
    # Unicode ones and Latin-1/9/CP1252; dpkg keeps these exclusions for the image's own
    # apt-get later.
    mmdebstrap --quiet --format=tar --variant=minbase \
      --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-include=/usr/share/locale/locale.alias' \
      --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/lib/*-linux-gnu/gconv/*' \
      --dpkgopt='path-include=/usr/lib/*-linux-gnu/gconv/gconv-modules*' \
      --dpkgopt='path-include=/usr/lib/*-linux-gnu/gconv/UTF-*' \
      --dpkgopt='path-include=/usr/lib/*-linux-gnu/gconv/UNICODE.so' \
      --dpkgopt='path-include=/usr/lib/*-linux-gnu/gconv/ISO8859-1.so' \
      --dpkgopt='path-include=/usr/lib/*-linux-gnu/gconv/ISO8859-15.so' \
      --dpkgopt='path-include=/usr/lib/*-linux-gnu/gconv/CP1252.so' \
      "$SUITE" "$tar.tmp" "$(sources)" >/dev/null
    mv "$tar.tmp" "$tar"
  fi
  if ! podman image exists "$BASE_IMAGE" || [ "$tar" -nt "$IMAGE_CACHE/base-$BASE_RECIPE.imported" ]; then
    podman import --quiet --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
      "$tar" "$BASE_IMAGE" >/dev/null
    touch "$IMAGE_CACHE/base-$BASE_RECIPE.imported"
  fi
}

seccomp_profile() {
  # containers-common (podman's dependency) ships the default profile we start from.
  [ -f /usr/share/containers/seccomp.json ] || tools
  python3 deploy/seccomp/make_profile.py "$SECCOMP_PROFILE"
}

build_runtime() {
  podman_build runtime "$IMAGE"
  seccomp_profile >&2
  echo "$IMAGE $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.1f MB", $1/1e6}')"
}

build_test() {
  podman_build test "$TEST_IMAGE"
  echo "$TEST_IMAGE"
}

podman_build() {
  tools
  CONTAINERS_CONF=$(conf)
  export CONTAINERS_CONF
  base
  local pipenv volumes
  # One file per build (two builds at once must not remove each other's); pip's settings
  # may hold a password, so it goes when the build does (the trap runs after this function
  # has returned: it names a global).
  pipenv=$(mktemp "$IMAGE_CACHE/pipenv.XXXXXX")
  PIPENV_FILE=$pipenv
  trap 'rm -f "${PIPENV_FILE:-}"' EXIT
  volumes=$(python3 deploy/pip_settings.py "$pipenv")
  # --format docker keeps HEALTHCHECK (the OCI format has no field for it).
  # shellcheck disable=SC2086
  podman build --quiet --format docker --network host --layers \
    --build-arg "BASE=$BASE_IMAGE" --secret "id=pipenv,src=$pipenv" $volumes \
    --target "$1" --tag "$2" --file Containerfile . >/dev/null
  rm -f "$pipenv"
}

case "${1:-build}" in
  tools) tools ;;
  conf) conf ;;
  base) tools; CONTAINERS_CONF=$(conf); export CONTAINERS_CONF; base ;;
  build) build_runtime ;;
  test) build_test ;;
  docker) docker_tools ;;
  seccomp) seccomp_profile ;;
  *) echo "usage: deploy/image.sh [tools|conf|base|build|test|docker|seccomp]" >&2; exit 2 ;;
esac
