#!/usr/bin/env bash
# Builds one driver package inside the per-distribution base image with docker/Dockerfile.build. No
# key is involved: the next step (sign-and-attest.sh) signs the package and its provenance outside
# the container, so the signing key never enters an image that ran foreign header packages' scripts
# and is never in this step's environment.
#
# The base image is pinned by digest: the tag is resolved to its manifest digest in the registry
# (`docker buildx imagetools inspect`) before the build, and the build runs FROM <image>@<digest>,
# so the root the provenance names is exactly the one the build used.
#
# Environment: RUST_TARGET, IMAGE_OWNER, IMAGE, KERNEL_RELEASE, ARCH, DISTRIBUTION, DISTRO_VERSION,
# DRIVER_NAME, DRIVER_VERSION, DRIVER_SOURCE, PACKAGE_FILE_NAME, DIGEST_FILE_NAME, OUT_DIR (all but
# the first and the last validated by kernel-id in the validate job; IMAGE is the validate job's
# ghcr.io/<owner>/<distribution>:<distro version>), SOURCE_COMMIT (the commit checked out as
# DRIVER_SOURCE, checked against the requested one), GITHUB_REPOSITORY and GITHUB_OUTPUT (set by
# Actions).
#
# Writes to $GITHUB_OUTPUT, for the signing step's provenance: root_image (the image reference),
# root_image_sha256 (its manifest digest, hex), started_on and finished_on (RFC 3339, UTC).
set -euo pipefail

fail() {
    echo "::error title=driver build::$*" >&2
    exit 1
}

utc_now() {
    date -u +%Y-%m-%dT%H:%M:%SZ
}

builder="target/${RUST_TARGET}/release/driver-builder"
[[ -x "${builder}" ]] || fail "${builder} was not built"
[[ "${SOURCE_COMMIT:-}" =~ ^([0-9a-f]{40}|[0-9a-f]{64})$ ]] || fail "SOURCE_COMMIT is not a full commit id"
base="ghcr.io/${IMAGE_OWNER}/${DISTRIBUTION}:${DISTRO_VERSION}"
[[ "${IMAGE:-}" == "${base}" ]] || fail "IMAGE '${IMAGE:-}' is not docker/Dockerfile.build's base ${base}"

manifest="$(docker buildx imagetools inspect --format '{{json .Manifest}}' "${IMAGE}")" ||
    fail "could not resolve ${IMAGE} in the registry"
digest="$(jq -er '.digest' <<<"${manifest}")" || fail "${IMAGE}: the registry answered no manifest digest"
[[ "${digest}" =~ ^sha256:[0-9a-f]{64}$ ]] || fail "${IMAGE}: unexpected manifest digest '${digest}'"
echo "base image ${IMAGE}@${digest}"

started_on="$(utc_now)"
mkdir -p "${OUT_DIR}"
docker build \
    --file docker/Dockerfile.build \
    --build-arg "OWNER=${IMAGE_OWNER}" \
    --build-arg "DISTRIBUTION=${DISTRIBUTION}" \
    --build-arg "DISTRO_VERSION=${DISTRO_VERSION}" \
    --build-arg "BASE_DIGEST=@${digest}" \
    --build-arg "KERNEL_RELEASE=${KERNEL_RELEASE}" \
    --build-arg "ARCH=${ARCH}" \
    --build-arg "DRIVER_NAME=${DRIVER_NAME}" \
    --build-arg "DRIVER_VERSION=${DRIVER_VERSION}" \
    --build-arg "DRIVER_SOURCE=${DRIVER_SOURCE}" \
    --build-arg "SOURCE_COMMIT=${SOURCE_COMMIT}" \
    --build-arg "SOURCE_REPOSITORY=https://github.com/${GITHUB_REPOSITORY}" \
    --build-arg "BUILDER=${builder}" \
    --output "type=local,dest=${OUT_DIR}" \
    .
finished_on="$(utc_now)"

[[ -s "${OUT_DIR}/${PACKAGE_FILE_NAME}" ]] || fail "the build produced no ${PACKAGE_FILE_NAME}"
[[ -s "${OUT_DIR}/build-facts.json" ]] || fail "the build wrote no build-facts.json (needed for the provenance)"
(cd "${OUT_DIR}" && sha256sum --check --strict "${DIGEST_FILE_NAME}")

{
    echo "root_image=${IMAGE}"
    echo "root_image_sha256=${digest#sha256:}"
    echo "started_on=${started_on}"
    echo "finished_on=${finished_on}"
} >>"${GITHUB_OUTPUT}"
ls -l "${OUT_DIR}"
