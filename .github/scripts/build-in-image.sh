#!/usr/bin/env bash
# Builds one driver package inside the per-distribution base image with docker/Dockerfile.build and
# signs it outside the container, so the signing key never enters an image that ran foreign header
# packages' scripts.
#
# Environment: RUST_TARGET, IMAGE_OWNER, KERNEL_RELEASE, ARCH, DISTRIBUTION, DISTRO_VERSION,
# DRIVER_NAME, DRIVER_VERSION, DRIVER_SOURCE, PACKAGE_FILE_NAME, DIGEST_FILE_NAME, OUT_DIR (all but
# the first and the last validated by kernel-id in the validate job), MINISIGN_SECRET_KEY and
# optionally MINISIGN_PASSWORD (repository secrets).
set -euo pipefail

fail() {
    echo "::error title=driver build::$*" >&2
    exit 1
}

[[ -n "${MINISIGN_SECRET_KEY:-}" ]] ||
    fail "the MINISIGN_SECRET_KEY secret is not set; the service only accepts signed packages"

builder="target/${RUST_TARGET}/release/driver-builder"
[[ -x "${builder}" ]] || fail "${builder} was not built"

mkdir -p "${OUT_DIR}"
docker build \
    --file docker/Dockerfile.build \
    --build-arg "OWNER=${IMAGE_OWNER}" \
    --build-arg "DISTRIBUTION=${DISTRIBUTION}" \
    --build-arg "DISTRO_VERSION=${DISTRO_VERSION}" \
    --build-arg "KERNEL_RELEASE=${KERNEL_RELEASE}" \
    --build-arg "ARCH=${ARCH}" \
    --build-arg "DRIVER_NAME=${DRIVER_NAME}" \
    --build-arg "DRIVER_VERSION=${DRIVER_VERSION}" \
    --build-arg "DRIVER_SOURCE=${DRIVER_SOURCE}" \
    --build-arg "BUILDER=${builder}" \
    --output "type=local,dest=${OUT_DIR}" \
    .

[[ -s "${OUT_DIR}/${PACKAGE_FILE_NAME}" ]] || fail "the build produced no ${PACKAGE_FILE_NAME}"

key="$(mktemp)"
trap 'rm -f "${key}"' EXIT
printf '%s\n' "${MINISIGN_SECRET_KEY}" >"${key}"
sign=(sign --key "${key}")
if [[ -n "${MINISIGN_PASSWORD:-}" ]]; then
    sign+=(--password-env MINISIGN_PASSWORD)
fi
"${builder}" "${sign[@]}" "${OUT_DIR}/${PACKAGE_FILE_NAME}"

(cd "${OUT_DIR}" && sha256sum --check --strict "${DIGEST_FILE_NAME}")
ls -l "${OUT_DIR}"
