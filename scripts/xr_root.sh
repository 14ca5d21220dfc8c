#!/usr/bin/env bash
# The Debian trixie root that runs a real OpenXR runtime (Monado 25) and the client for the end-to-end test.
# Why a root: Monado is packaged in trixie only and its client library (loaded into our client process) needs
# glibc >= 2.38, so the client runs inside the root too, under the root's Python 3.13 with the client deps.
#
#   scripts/xr_root.sh build        build the root when missing or stale (cached outside the repo), else reuse
#   scripts/xr_root.sh path         print the root's path
#   scripts/xr_root.sh mount REPO   bind /proc /sys /dev and REPO (at /repo) into the root
#   scripts/xr_root.sh umount       undo mount
#
# Cache: $TIMEWALK_XR_ROOT (default /var/cache/timewalk/xr-root). A stamp keyed by the package list and the
# client's pip requirements (read from pyproject.toml) decides reuse. Built in ROOT.build and renamed at the
# end, so an interrupted build never leaves a root that looks finished. Needs root, debootstrap, network.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${TIMEWALK_XR_ROOT:-/var/cache/timewalk/xr-root}
MIRROR=${TIMEWALK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
VENV=/opt/twvenv
PKGS="monado-service libopenxr1-monado libopenxr-loader1 openxr-layer-corevalidation
      xvfb xauth x11-utils x11-apps mesa-vulkan-drivers libgl1-mesa-dri libegl-mesa0 libglx-mesa0
      libgl1 libegl1 python3 python3-venv ca-certificates procps"

say() { printf '[xr_root] %s\n' "$*" >&2; }

# Client requirements = core deps + the client extra, straight from pyproject.toml (one source of truth).
pip_reqs() {
  python3 - "$HERE/pyproject.toml" <<'EOF'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(" ".join(p["dependencies"] + p["optional-dependencies"]["client"]))
EOF
}

IN() {  # run inside ROOT_DIR with a clean environment (host PIP_*/PYTHON* settings must not leak in)
  local r=$1; shift
  chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
}

mounts_up() {  # ROOT_DIR [REPO]
  local r=$1 repo=${2:-}
  mountpoint -q "$r/proc" || mount -t proc proc "$r/proc"
  mountpoint -q "$r/sys" || mount -t sysfs sys "$r/sys"
  mountpoint -q "$r/dev" || { mount --rbind /dev "$r/dev"; mount --make-rslave "$r/dev"; }
  if [ -n "$repo" ]; then
    mkdir -p "$r/repo"
    if mountpoint -q "$r/repo"; then umount "$r/repo"; fi
    mount --bind "$repo" "$r/repo"
  fi
}

mounts_down() {  # ROOT_DIR
  local r=$1 m
  for m in repo dev sys proc; do
    if mountpoint -q "$r/$m"; then umount -R "$r/$m" || umount -lR "$r/$m"; fi
  done
}

stamp_value() { echo "v1 $(echo $PKGS) | $(pip_reqs)" | sha256sum | cut -c1-16; }

build() {
  local want; want=$(stamp_value)
  if [ "$(cat "$ROOT/.timewalk-stamp" 2>/dev/null)" = "$want" ]; then say "reusing $ROOT"; return 0; fi
  [ "$(id -u)" = 0 ] || { say "building the root needs root"; exit 2; }
  command -v debootstrap >/dev/null || { say "debootstrap missing (apt-get install debootstrap)"; exit 2; }
  local b="$ROOT.build" t0=$SECONDS
  mkdir -p "$(dirname "$ROOT")"
  [ -e "$b" ] && { mounts_down "$b"; rm -rf --one-file-system "$b"; }
  say "debootstrap trixie -> $b"
  debootstrap --variant=minbase trixie "$b" "$MIRROR" >/dev/null
  say "debootstrap done at $((SECONDS - t0)) s"
  # TLS may be intercepted on this network: the host's CA bundle is the one that works (harmless elsewhere).
  mkdir -p "$b/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$b/etc/ssl/certs/ca-certificates.crt"
  mounts_up "$b"
  trap 'mounts_down "'"$b"'"' EXIT
  IN "$b" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # shellcheck disable=SC2086
  IN "$b" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
  cp /etc/ssl/certs/ca-certificates.crt "$b/etc/ssl/certs/ca-certificates.crt"
  IN "$b" apt-get clean
  say "apt done at $((SECONDS - t0)) s"
  IN "$b" python3 -m venv "$VENV"
  # shellcheck disable=SC2046
  IN "$b" env PIP_CERT=/etc/ssl/certs/ca-certificates.crt "$VENV/bin/pip" install -q --no-cache-dir $(pip_reqs)
  say "pip done at $((SECONDS - t0)) s"
  mounts_down "$b"
  trap - EXIT
  echo "$want" > "$b/.timewalk-stamp"
  if [ -e "$ROOT" ]; then mounts_down "$ROOT"; rm -rf --one-file-system "$ROOT"; fi
  mv "$b" "$ROOT"
  say "built $ROOT in $((SECONDS - t0)) s ($(du -shx "$ROOT" | cut -f1))"
}

case ${1:-} in
  build)
    # One builder at a time (CI and a developer may both ask).
    mkdir -p "$(dirname "$ROOT")"
    exec 9>"$ROOT.lock"; flock 9
    build ;;
  path) echo "$ROOT" ;;
  mount) [ -n "${2:-}" ] || { say "usage: $0 mount REPO"; exit 2; }; mounts_up "$ROOT" "$(cd "$2" && pwd)" ;;
  umount) mounts_down "$ROOT" ;;
  *) echo "usage: $0 build | path | mount REPO | umount" >&2; exit 2 ;;
esac
