#!/usr/bin/env bash
# After a successful build, records the kernel in kernels.json (via `matrix-gen add-kernel`) and opens
# the PR on the predictable branch, unless the kernel is already listed or a branch or PR for it
# exists. Concurrent runs for the same kernel (e.g. two driver versions) race only on the push, and
# the loser finds the winner's branch.
#
# Environment: MATRIX_GEN, KERNEL_RELEASE, ARCH, DISTRIBUTION, DISTRO_VERSION, DRIVER_VERSION (validated
# by kernel-id in the validate job), BASE_BRANCH, GH_TOKEN. Runs in a checkout of BASE_BRANCH.
set -euo pipefail

fail() {
    echo "::error title=kernels.json PR::$*" >&2
    exit 1
}

branch="$("${MATRIX_GEN}" add-kernel --file kernels.json \
    --kernel-version "${KERNEL_RELEASE}" \
    --architecture "${ARCH}" \
    --distribution "${DISTRIBUTION}" \
    --distro-version "${DISTRO_VERSION}" \
    --driver-version "${DRIVER_VERSION}")"
[[ "${branch}" =~ ^add-kernel/[A-Za-z0-9._+/-]+$ ]] || fail "unexpected branch name '${branch}'"

if git diff --quiet -- kernels.json; then
    echo "${KERNEL_RELEASE} is already in kernels.json on ${BASE_BRANCH}"
    exit 0
fi
if git ls-remote --exit-code --heads origin "refs/heads/${branch}" >/dev/null; then
    echo "branch ${branch} already exists; not opening another PR"
    exit 0
fi
# A closed, unmerged PR is a maintainer's decision; don't reopen the question every build.
prs="$(gh pr list --head "${branch}" --state all --json number --jq 'length')"
if [[ "${prs}" != 0 ]]; then
    echo "a PR from ${branch} already exists"
    exit 0
fi

git config user.name "github-actions[bot]"
git config user.email "41898282+github-actions[bot]@users.noreply.github.com"
git switch --create "${branch}"
git commit --quiet --message "kernels.json: add ${KERNEL_RELEASE} (${DISTRIBUTION} ${DISTRO_VERSION}, ${ARCH})" -- kernels.json
if ! git push origin "HEAD:refs/heads/${branch}"; then
    if git ls-remote --exit-code --heads origin "refs/heads/${branch}" >/dev/null; then
        echo "another run pushed ${branch} first"
        exit 0
    fi
    fail "pushing ${branch} failed"
fi

body="A node booted ${KERNEL_RELEASE} (${DISTRIBUTION} ${DISTRO_VERSION}, ${ARCH}) and its driver ${DRIVER_VERSION} was built on demand by run ${GITHUB_SERVER_URL}/${GITHUB_REPOSITORY}/actions/runs/${GITHUB_RUN_ID}. Adding the kernel to kernels.json keeps it in the nightly batch."
if ! gh pr create --base "${BASE_BRANCH}" --head "${branch}" \
    --title "kernels.json: add ${KERNEL_RELEASE} (${DISTRIBUTION} ${DISTRO_VERSION}, ${ARCH})" \
    --body "${body}"; then
    prs="$(gh pr list --head "${branch}" --state all --json number --jq 'length')"
    [[ "${prs}" != 0 ]] || fail "opening the PR from ${branch} failed"
    echo "another run opened the PR first"
fi
