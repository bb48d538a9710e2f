#!/usr/bin/env bash
# Builds one driver package inside the per-distribution base image with docker/Dockerfile.build. The
# package signing key is not involved: the next step (sign-and-attest.sh) signs the package and its
# provenance outside the container, so that key never enters an image that ran foreign header
# packages' scripts and is never in this step's environment.
#
# Optionally the kernel modules are signed for Secure Boot (module.sig_enforce=1): with the
# MODULE_SIGNING_KEY (unencrypted PEM private key) and MODULE_SIGNING_CERT (its PEM certificate)
# secrets set, the key is written to a 0600 temporary file and the certificate converted to DER,
# both removed on exit, checked to belong together, and handed to
# `docker build` as BuildKit secrets (`--secret id=module_signing_key,src=...`), which
# Dockerfile.build mounts only for the RUN that runs the builder: never in an image layer, a build
# argument or the container's environment. Both empty: the modules are built unsigned. One without
# the other: an error.
#
# The base image is pinned by digest: the tag is resolved to its manifest digest in the registry
# (`docker buildx imagetools inspect`) before the build, and the build runs FROM <image>@<digest>,
# so the root the provenance names is exactly the one the build used.
#
# Environment: IMAGE_OWNER, IMAGE, KERNEL_RELEASE, ARCH, DISTRIBUTION, DISTRO_VERSION,
# DRIVER_NAME, DRIVER_VERSION, DRIVER_SOURCE, PACKAGE_FILE_NAME, DIGEST_FILE_NAME, OUT_DIR (all but
# the first and the last validated by kernel-id in the validate job; IMAGE is the validate job's
# ghcr.io/<owner>/<distribution>:<distro version>), SOURCE_COMMIT (the commit checked out as
# DRIVER_SOURCE, checked against the requested one), GITHUB_REPOSITORY and GITHUB_OUTPUT (set by
# Actions), optionally MODULE_SIGNING_KEY and MODULE_SIGNING_CERT (repository secrets).
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

[[ "${SOURCE_COMMIT:-}" =~ ^([0-9a-f]{40}|[0-9a-f]{64})$ ]] || fail "SOURCE_COMMIT is not a full commit id"
base="ghcr.io/${IMAGE_OWNER}/${DISTRIBUTION}:${DISTRO_VERSION}"
[[ "${IMAGE:-}" == "${base}" ]] || fail "IMAGE '${IMAGE:-}' is not docker/Dockerfile.build's base ${base}"

manifest="$(docker buildx imagetools inspect --format '{{json .Manifest}}' "${IMAGE}")" ||
    fail "could not resolve ${IMAGE} in the registry"
digest="$(jq -er '.digest' <<<"${manifest}")" || fail "${IMAGE}: the registry answered no manifest digest"
[[ "${digest}" =~ ^sha256:[0-9a-f]{64}$ ]] || fail "${IMAGE}: unexpected manifest digest '${digest}'"
echo "base image ${IMAGE}@${digest}"

# The module-signing secrets become files for BuildKit and leave this shell's environment, so no
# later command (docker included) inherits them.
secrets=()
signing_dir=""
cleanup() {
    if [[ -n "${signing_dir}" ]]; then
        rm -rf "${signing_dir}"
    fi
}
trap cleanup EXIT
if [[ -n "${MODULE_SIGNING_KEY:-}" || -n "${MODULE_SIGNING_CERT:-}" ]]; then
    [[ -n "${MODULE_SIGNING_KEY:-}" && -n "${MODULE_SIGNING_CERT:-}" ]] ||
        fail "set both MODULE_SIGNING_KEY and MODULE_SIGNING_CERT (or neither, for unsigned modules)"
    signing_dir="$(umask 077 && mktemp -d)"
    key="${signing_dir}/module_signing_key.pem"
    cert="${signing_dir}/module_signing_cert.der"
    (umask 077 && printf '%s\n' "${MODULE_SIGNING_KEY}" >"${key}")
    chmod 600 "${key}"
    printf '%s\n' "${MODULE_SIGNING_CERT}" | openssl x509 -outform DER -out "${cert}" ||
        fail "the MODULE_SIGNING_CERT secret is not a PEM certificate"
    unset MODULE_SIGNING_KEY MODULE_SIGNING_CERT
    key_public="$(openssl pkey -in "${key}" -pubout -passin pass:)" ||
        fail "the MODULE_SIGNING_KEY secret is not an unencrypted PEM private key"
    cert_public="$(openssl x509 -inform DER -in "${cert}" -noout -pubkey)" ||
        fail "the module-signing certificate cannot be read"
    [[ "${key_public}" == "${cert_public}" ]] ||
        fail "MODULE_SIGNING_KEY and MODULE_SIGNING_CERT do not belong together (the certificate is for another key)"
    echo "modules are signed for $(openssl x509 -inform DER -in "${cert}" -noout -subject)"
    secrets=(--secret "id=module_signing_key,src=${key}" --secret "id=module_signing_cert,src=${cert}")
else
    echo "no MODULE_SIGNING_KEY secret: the modules are built unsigned"
fi

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
    "${secrets[@]}" \
    --output "type=local,dest=${OUT_DIR}" \
    .
finished_on="$(utc_now)"
cleanup

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
