#!/usr/bin/env bash
# Signs a package the build step left in OUT_DIR and writes its build provenance, outside the build
# container: `driver-builder sign` (<package>.minisig, bound to the package's file name; the
# build's <package>.sha256 is kept when it agrees) and `driver-builder attest`
# (<package>.intoto.jsonl, see docs/provenance.md). This is the only step that sees the signing key;
# it lives in a 0600 temporary file for the two commands and is removed on exit.
#
# Environment: RUST_TARGET, PACKAGE_FILE_NAME, OUT_DIR, SOURCE_COMMIT (the verified commit),
# BUILD_ID (the build-service's build id, validated in the validate job), ROOT_IMAGE and
# ROOT_IMAGE_SHA256 (the base image reference and its manifest digest), STARTED_ON and FINISHED_ON
# (the build step's times), GITHUB_REPOSITORY, GITHUB_REF and GITHUB_OUTPUT (set by Actions),
# MINISIGN_SECRET_KEY and optionally MINISIGN_PASSWORD (repository secrets).
#
# Writes provenance_file_name (kernel-id's name, as printed by `attest`) to $GITHUB_OUTPUT.
set -euo pipefail

fail() {
    echo "::error title=sign and attest::$*" >&2
    exit 1
}

[[ -n "${MINISIGN_SECRET_KEY:-}" ]] ||
    fail "the MINISIGN_SECRET_KEY secret is not set; the service only accepts signed packages"

builder="target/${RUST_TARGET}/release/driver-builder"
[[ -x "${builder}" ]] || fail "${builder} was not built"
package="${OUT_DIR}/${PACKAGE_FILE_NAME}"
facts="${OUT_DIR}/build-facts.json"
[[ -s "${package}" ]] || fail "no ${PACKAGE_FILE_NAME} to sign"
[[ -s "${facts}" ]] || fail "no build-facts.json beside ${PACKAGE_FILE_NAME}"

umask 077
key="$(mktemp)"
trap 'rm -f "${key}"' EXIT
chmod 600 "${key}"
printf '%s\n' "${MINISIGN_SECRET_KEY}" >"${key}"
password=()
if [[ -n "${MINISIGN_PASSWORD:-}" ]]; then
    password=(--password-env MINISIGN_PASSWORD)
fi

"${builder}" sign --key "${key}" "${password[@]}" "${package}"

provenance="$("${builder}" attest \
    --package "${package}" \
    --facts "${facts}" \
    --root-image-uri "${ROOT_IMAGE}" \
    --root-image-sha256 "${ROOT_IMAGE_SHA256}" \
    --source-repository "https://github.com/${GITHUB_REPOSITORY}" \
    --source-commit "${SOURCE_COMMIT}" \
    --builder-id "https://github.com/${GITHUB_REPOSITORY}/.github/workflows/driver-build.yml@${GITHUB_REF}" \
    --invocation-id "${BUILD_ID}" \
    --started-on "${STARTED_ON}" \
    --finished-on "${FINISHED_ON}" \
    --signing-key "${key}" \
    "${password[@]}")"
rm -f "${key}"

name="$(basename "${provenance}")"
# kernel-id named it; the pattern is a second fence before $GITHUB_OUTPUT.
[[ "${name}" =~ ^[A-Za-z0-9._+~-]+$ && -s "${OUT_DIR}/${name}" ]] ||
    fail "driver-builder attest reported an unexpected file '${provenance}'"
echo "provenance_file_name=${name}" >>"${GITHUB_OUTPUT}"
echo "signed ${PACKAGE_FILE_NAME} and wrote ${name}"
