#!/usr/bin/env bash
# Validates a build request with the project's own `driver-builder validate` (kernel-id's rules) and
# writes the normalized identity to $GITHUB_OUTPUT. Nothing downstream ever sees a raw input: later
# jobs read only these outputs, which kernel-id has parsed and which are re-checked against a strict
# character set here before they are written.
#
# Environment: DRIVER_BUILDER (path to the binary), DRIVER_NAME, KERNEL_VERSION, ARCHITECTURE,
# DISTRIBUTION, DISTRO_VERSION (may be empty: the pinned default), DRIVER_VERSION, BUILD_ID,
# GITHUB_REPOSITORY_OWNER, GITHUB_OUTPUT.
set -euo pipefail

fail() {
    echo "::error title=invalid build request::$*" >&2
    exit 2
}

# build_id only names the run; it is not part of the identity, so kernel-id does not know it.
if [[ ! "${BUILD_ID}" =~ ^[A-Za-z0-9._-]{1,128}$ ]]; then
    fail "build_id: must be 1 to 128 characters of [A-Za-z0-9._-]"
fi

args=(validate
    --kernel-release "${KERNEL_VERSION}"
    --arch "${ARCHITECTURE}"
    --distribution "${DISTRIBUTION}"
    --driver-name "${DRIVER_NAME}"
    --driver-version "${DRIVER_VERSION}")
if [[ -n "${DISTRO_VERSION}" ]]; then
    args+=(--distro-version "${DISTRO_VERSION}")
fi

# The raw inputs may reach the log inside the validator's error message; stop the runner from
# interpreting anything in it as a workflow command while it runs.
resume_token="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
echo "::stop-commands::${resume_token}"
status=0
identity="$("${DRIVER_BUILDER}" "${args[@]}")" || status=$?
echo "::${resume_token}::"
if [[ ${status} -ne 0 ]]; then
    fail "driver-builder validate rejected the request (exit ${status}); its message is above"
fi

# Every value below comes out of kernel-id; the pattern is a second fence before $GITHUB_OUTPUT.
field() {
    local value
    value="$(jq -er --arg name "$1" '.[$name] | strings' <<<"${identity}")" ||
        fail "driver-builder validate printed no '$1' (is the binary older than this workflow?)"
    [[ "${value}" =~ ^[A-Za-z0-9._+~-]+$ ]] || fail "$1: unexpected characters in '${value}'"
    printf '%s' "${value}"
}

kernel_release="$(field kernel_release)"
arch="$(field arch)"
distribution="$(field distribution)"
distro_version="$(field distro_version)"
driver_version="$(field driver_version)"
package_file_name="$(field package_file_name)"
signature_file_name="$(field signature_file_name)"
digest_file_name="$(field digest_file_name)"
release_tag="$(field release_tag)"

case "${arch}" in
    x86_64) runner=ubuntu-24.04 ;;
    aarch64) runner=ubuntu-24.04-arm ;;
    *) fail "architecture: no runner for '${arch}'" ;;
esac

# GHCR repository names must be lower case; owners may not be.
owner="${GITHUB_REPOSITORY_OWNER,,}"
[[ "${owner}" =~ ^[a-z0-9][a-z0-9-]*$ ]] || fail "repository owner '${owner}' is not a valid image namespace"

{
    echo "kernel_release=${kernel_release}"
    echo "arch=${arch}"
    echo "distribution=${distribution}"
    echo "distro_version=${distro_version}"
    echo "driver_version=${driver_version}"
    echo "package_file_name=${package_file_name}"
    echo "signature_file_name=${signature_file_name}"
    echo "digest_file_name=${digest_file_name}"
    echo "release_tag=${release_tag}"
    echo "runner=${runner}"
    echo "rust_target=${arch}-unknown-linux-musl"
    echo "image_owner=${owner}"
    echo "image=ghcr.io/${owner}/${distribution}:${distro_version}"
} >>"${GITHUB_OUTPUT}"

echo "validated: ${kernel_release} ${arch} ${distribution} ${distro_version} ${driver_version}"
echo "release ${release_tag}, package ${package_file_name}"
