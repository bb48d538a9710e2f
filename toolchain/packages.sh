#!/bin/sh
# Prints the toolchain packages for one distribution and version, one per line and without
# duplicates, from packages.txt (the same list crates/build-root embeds). docker/Dockerfile.base.*
# call it so images and local build roots install the same toolchain. Plain POSIX sh with no awk,
# because minimal rpm-family images may not ship one.
#
# Usage: packages.sh <distribution> <version>      e.g. packages.sh debian 12
set -eu
# The version field may be `*`; it must never be expanded as a glob.
set -f

if [ "$#" -ne 2 ]; then
    echo "usage: $0 <distribution> <version>" >&2
    exit 2
fi

want_distribution=$1
want_version=$2
list="${TOOLCHAIN_LIST:-$(dirname "$0")/packages.txt}"
seen=" "
found=""

while IFS= read -r line || [ -n "$line" ]; do
    line=${line%%#*}
    # Splitting the line into its fields is the point here.
    # shellcheck disable=SC2086
    set -- $line
    [ "$#" -ge 3 ] || continue
    [ "$1" = "$want_distribution" ] || continue
    [ "$2" = "*" ] || [ "$2" = "$want_version" ] || continue
    shift 2
    found=1
    for package in "$@"; do
        case "$seen" in
            *" $package "*) ;;
            *)
                seen="$seen$package "
                echo "$package"
                ;;
        esac
    done
done < "$list"

if [ -z "$found" ]; then
    echo "no toolchain packages listed for $want_distribution $want_version" >&2
    exit 1
fi
