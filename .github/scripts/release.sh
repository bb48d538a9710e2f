#!/usr/bin/env bash
# Publishes one artifact (package, .minisig, .sha256 and, when PROVENANCE_FILE_NAME is set, the
# .intoto.jsonl build provenance) to its GitHub release the way immutable releases allow: create a
# draft, upload every asset, then publish. Never overwrites: a published release that already holds
# every asset is success, one holding only some of them is an error for a human.
#
#   release.sh check            writes published=true|false to $GITHUB_OUTPUT
#   release.sh publish DIR      uploads DIR/<package>, DIR/<signature>, DIR/<digest>[, DIR/<provenance>]
#
# Environment: RELEASE_TAG, PACKAGE_FILE_NAME, SIGNATURE_FILE_NAME, DIGEST_FILE_NAME (all validated by
# kernel-id in the validate job), optionally PROVENANCE_FILE_NAME (kernel-id's name, reported by
# `driver-builder attest` in the build job), GITHUB_REPOSITORY, GITHUB_SHA, GH_TOKEN.
set -euo pipefail

# Messages go to stderr: some callers capture stdout, and the runner reads commands from both.
fail() {
    echo "::error title=release ${RELEASE_TAG}::$*" >&2
    exit 1
}

uri_encode() {
    jq -rn --arg value "$1" '$value | @uri'
}

assets=("${PACKAGE_FILE_NAME}" "${SIGNATURE_FILE_NAME}" "${DIGEST_FILE_NAME}")
if [[ -n "${PROVENANCE_FILE_NAME:-}" ]]; then
    [[ "${PROVENANCE_FILE_NAME}" =~ ^[A-Za-z0-9._+~-]+$ ]] ||
        fail "PROVENANCE_FILE_NAME: unexpected characters in '${PROVENANCE_FILE_NAME}'"
    assets+=("${PROVENANCE_FILE_NAME}")
fi
tag_path="$(uri_encode "${RELEASE_TAG}")"

# Prints "published", "absent" or fails. Drafts are invisible to the tag endpoint, so a half-finished
# earlier attempt reads as absent and this run makes its own draft.
published_state() {
    local response errors present=0 name
    errors="$(mktemp)"
    if response="$(gh api "repos/${GITHUB_REPOSITORY}/releases/tags/${tag_path}" 2>"${errors}")"; then
        for name in "${assets[@]}"; do
            if jq -e --arg name "${name}" 'any(.assets[]; .name == $name)' <<<"${response}" >/dev/null; then
                present=$((present + 1))
            fi
        done
        if [[ ${present} -eq ${#assets[@]} ]]; then
            echo published
        elif [[ ${present} -eq 0 ]] && jq -e '.assets | length == 0' <<<"${response}" >/dev/null; then
            fail "the release is published but empty; it can't gain assets once immutable, delete it to rebuild"
        else
            fail "the release is published with only ${present} of ${#assets[@]} assets; refusing to add to or overwrite it"
        fi
    elif grep -q 'HTTP 404' "${errors}"; then
        echo absent
    else
        cat "${errors}" >&2
        fail "could not read the release"
    fi
}

check() {
    local state
    state="$(published_state)"
    echo "release ${RELEASE_TAG}: ${state}"
    if [[ "${state}" == published ]]; then
        echo "published=true" >>"${GITHUB_OUTPUT}"
    else
        echo "published=false" >>"${GITHUB_OUTPUT}"
    fi
}

draft_id=""
discard_draft() {
    if [[ -n "${draft_id}" ]]; then
        echo "discarding draft release ${draft_id}" >&2
        gh api --method DELETE "repos/${GITHUB_REPOSITORY}/releases/${draft_id}" >/dev/null || true
    fi
}

publish() {
    local dir="$1" name file release upload_url uploaded size
    for name in "${assets[@]}"; do
        [[ -s "${dir}/${name}" ]] || fail "the build produced no ${name}"
    done
    (cd "${dir}" && sha256sum --check --strict "${DIGEST_FILE_NAME}") ||
        fail "${PACKAGE_FILE_NAME} does not match ${DIGEST_FILE_NAME}"

    local state
    state="$(published_state)"
    if [[ "${state}" == published ]]; then
        echo "release ${RELEASE_TAG} already holds ${PACKAGE_FILE_NAME}; nothing to upload"
        return 0
    fi

    trap discard_draft EXIT
    release="$(jq -n --arg tag "${RELEASE_TAG}" --arg sha "${GITHUB_SHA}" --arg package "${PACKAGE_FILE_NAME}" \
        --arg provenance "${PROVENANCE_FILE_NAME:-}" '{
        tag_name: $tag, target_commitish: $sha, name: $tag, draft: true, make_latest: "false",
        body: ("Driver package `" + $package + "` with its minisign signature and SHA-256 digest"
            + (if $provenance == "" then "." else ", and its build provenance `" + $provenance + "`." end))
    }' | gh api --method POST "repos/${GITHUB_REPOSITORY}/releases" --input -)"
    draft_id="$(jq -er '.id' <<<"${release}")"
    upload_url="$(jq -er '.upload_url | sub("\\{.*\\}$"; "")' <<<"${release}")"

    for name in "${assets[@]}"; do
        file="${dir}/${name}"
        size="$(stat -c %s "${file}")"
        # The name is percent-encoded by hand: an unencoded '+' in a query string is a space, which
        # GitHub would turn into '.', and the loader would never find the asset.
        uploaded="$(gh api --method POST "${upload_url}?name=$(uri_encode "${name}")" \
            -H "Content-Type: application/octet-stream" -H "Content-Length: ${size}" \
            --input "${file}")"
        uploaded="$(jq -er '.name' <<<"${uploaded}")"
        # GitHub silently renames characters it dislikes (e.g. '~'); such an asset is unreachable.
        [[ "${uploaded}" == "${name}" ]] || fail "GitHub stored ${name} as ${uploaded}"
        echo "uploaded ${name}"
    done

    if ! release="$(jq -n '{draft: false, make_latest: "false"}' |
        gh api --method PATCH "repos/${GITHUB_REPOSITORY}/releases/${draft_id}" --input -)"; then
        # Another run may have published the same tag first (its upload is then the one that counts).
        state="$(published_state)"
        if [[ "${state}" == published ]]; then
            echo "another run published ${RELEASE_TAG} first; keeping its assets"
            return 0
        fi
        fail "publishing the draft failed"
    fi
    jq -e '.draft == false' <<<"${release}" >/dev/null || fail "the release is still a draft"
    draft_id=""
    trap - EXIT
    echo "published ${RELEASE_TAG} with ${PACKAGE_FILE_NAME}"
}

case "${1:-}" in
    check) check ;;
    publish) publish "${2:?usage: release.sh publish DIR}" ;;
    *)
        echo "usage: release.sh check | release.sh publish DIR" >&2
        exit 2
        ;;
esac
