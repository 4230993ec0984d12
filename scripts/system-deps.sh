#!/usr/bin/env bash
# Installs, on Debian, the packages behind the commands named on the command line, and only
# those that are missing: `make test` and `make cluster` call it so that a fresh machine with
# Python, git, make and npm needs nothing else. With everything present it makes no apt call.
#
#   scripts/system-deps.sh nginx promtool prometheus amtool chromium npm redis-server
#
# Root runs apt-get itself; anyone else goes through `sudo -n`, and when that would prompt (or
# there is no sudo or apt-get) it prints one line naming the packages and exits 1.
set -euo pipefail

# Debian's nginx lives in /usr/sbin, which is not on a regular user's PATH; the tests look
# there too. Overridable so that the tests of this script do not see the host's binaries.
sbin_dirs=${SYSTEM_DEPS_SBIN-/usr/local/sbin:/usr/sbin:/sbin}

packages_for() {
    case $1 in
        nginx) echo nginx ;;
        promtool | prometheus) echo prometheus ;;
        amtool) echo prometheus-alertmanager ;;
        # Without a font the browser tests' pages render as boxes.
        chromium) echo chromium fonts-dejavu-core ;;
        npm) echo npm ;;
        redis-server) echo redis-server ;;
        *) return 1 ;;
    esac
}

have() {
    command -v "$1" >/dev/null 2>&1 && return 0
    local dir dirs
    IFS=: read -ra dirs <<<"$sbin_dirs"
    for dir in "${dirs[@]}"; do
        [ -n "$dir" ] && [ -x "$dir/$1" ] && return 0
    done
    return 1
}

packages=()
for cmd in "$@"; do
    wanted=$(packages_for "$cmd") || {
        echo "system-deps: no Debian package known for \`$cmd\`" >&2
        exit 2
    }
    have "$cmd" && continue
    for pkg in $wanted; do
        [[ " ${packages[*]} " == *" $pkg "* ]] || packages+=("$pkg")
    done
done
[ ${#packages[@]} -eq 0 ] && exit 0

install_line="apt-get install -y --no-install-recommends ${packages[*]}"
give_up() {
    echo "system-deps: missing Debian packages ${packages[*]}; install them with: sudo $install_line" >&2
    exit 1
}

command -v apt-get >/dev/null 2>&1 || give_up
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    as_root=(sudo -n)
else
    give_up
fi
# sudo resets the environment, so the variable goes through env rather than export.
apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -qq)

echo "system-deps: installing ${packages[*]} (apt-get)" >&2
"${apt[@]}" update >/dev/null || give_up
"${apt[@]}" install -y --no-install-recommends "${packages[@]}" >/dev/null || give_up

# Debian starts these as services on install; the tests and `bgsvc cluster` run their own on
# loopback ports. Only what was just installed: a service someone already ran is theirs.
services=()
for pkg in "${packages[@]}"; do
    case $pkg in
        nginx) services+=(nginx) ;;
        prometheus) services+=(prometheus prometheus-node-exporter) ;;
        prometheus-alertmanager) services+=(prometheus-alertmanager) ;;
        redis-server) services+=(redis-server) ;;
    esac
done
for service in "${services[@]}"; do
    "${as_root[@]}" systemctl stop "$service" >/dev/null 2>&1 ||
        "${as_root[@]}" service "$service" stop >/dev/null 2>&1 || true
done
