#!/usr/bin/env bash
# Plans the nightly batch with matrix-gen and freezes every shard's `matrix=` line into PLAN_DIR, so
# the fan-out builds exactly what was planned even if the crawler feed, the livepatch repository or
# the releases change while the batch runs (a shard job re-planning from the network would not be
# deterministic).
#
# Parts: without the crawler, one part "all" from kernels.json. With it, one part per architecture
# (the crawler publishes one feed per architecture, and matrix-gen reads one feed per run): kernels.json,
# that architecture's crawler feed and AL2023 livepatch repository, filtered to that architecture so
# the parts never overlap.
#
# Environment: MATRIX_GEN, DRIVER_NAME, DRIVER_VERSION, USE_KERNEL_CRAWLER (true|false), PLAN_DIR,
# GITHUB_REPOSITORY, GH_TOKEN, GITHUB_OUTPUT. Writes jobs=<n> and fanout=<json> to $GITHUB_OUTPUT.
set -euo pipefail

fail() {
    echo "::error title=nightly plan::$*" >&2
    exit 1
}

CRAWLER_BASE=https://falcosecurity.github.io/kernel-crawler
LIVEPATCH_MIRRORS=https://cdn.amazonlinux.com/al2023/kernel-livepatch/mirrors/latest
# One fan-out matrix runs at most 256 shard jobs.
MAX_SHARDS=256

[[ -n "${DRIVER_VERSION}" ]] ||
    fail "no driver version: pass the driver_version input or set the DRIVER_VERSION repository variable"
mkdir -p "${PLAN_DIR}"
inputs="$(mktemp -d)"

# What is already published and complete (package, signature and digest in one published release):
# only the rest is planned. Drafts are half-finished uploads and don't count.
# shellcheck disable=SC2016 # $names and $p are jq variables.
gh api --paginate "repos/${GITHUB_REPOSITORY}/releases?per_page=100" --jq '
    .[] | select(.draft | not) | [.assets[].name] as $names
    | $names[] | select(endswith(".deb") or endswith(".rpm"))
    | select(. as $p | ($names | index($p + ".minisig")) and ($names | index($p + ".sha256")))' |
    { grep -E "^${DRIVER_NAME}-" || true; } >"${inputs}/built.txt"
echo "$(wc -l <"${inputs}/built.txt") packages already published"

common=(generate --driver-name "${DRIVER_NAME}" --driver-version "${DRIVER_VERSION}"
    --kernels kernels.json --built "${inputs}/built.txt")

declare -A mirrors=()
parts=(all)
if [[ "${USE_KERNEL_CRAWLER}" == true ]]; then
    parts=(x86_64 aarch64)
    for arch in "${parts[@]}"; do
        curl -fsSL --retry 3 -o "${inputs}/crawler-${arch}.json" "${CRAWLER_BASE}/${arch}/list.json"
        mirror="$(curl -fsSL --retry 3 "${LIVEPATCH_MIRRORS}/${arch}/mirror.list" | head -n 1)"
        [[ "${mirror}" =~ ^https://[A-Za-z0-9./_-]+$ ]] || fail "unexpected livepatch mirror '${mirror}'"
        mirrors[${arch}]="${mirror}"
    done
fi

# Sets `extra` to the matrix-gen arguments of one part.
part_arguments() {
    extra=()
    if [[ "$1" != all ]]; then
        # A third-party feed with a malformed entry must not stop the batch; matrix-gen reports them.
        extra=(--kernel-crawler "${inputs}/crawler-$1.json" --crawler-arch "$1"
            --livepatch-repo "${mirrors[$1]}" --arch "$1" --skip-invalid)
    fi
}

fanout="[]"
total_jobs=0
for part in "${parts[@]}"; do
    part_arguments "${part}"
    summary="$("${MATRIX_GEN}" "${common[@]}" "${extra[@]}")"
    echo "${part}: ${summary//$'\n'/ }"
    jobs="$(sed -n 's/^jobs=//p' <<<"${summary}")"
    shard_count="$(sed -n 's/^shard-count=//p' <<<"${summary}")"
    [[ "${jobs}" =~ ^[0-9]+$ && "${shard_count}" =~ ^[0-9]+$ ]] || fail "matrix-gen printed no plan for ${part}"
    total_jobs=$((total_jobs + jobs))
    for ((shard = 0; shard < shard_count; shard++)); do
        "${MATRIX_GEN}" "${common[@]}" "${extra[@]}" --shard "${shard}" >"${PLAN_DIR}/${part}-${shard}.txt"
        fanout="$(jq -c --arg part "${part}" --argjson shard "${shard}" '. + [{part: $part, shard: $shard}]' <<<"${fanout}")"
    done
done

shards="$(jq 'length' <<<"${fanout}")"
if ((shards > MAX_SHARDS)); then
    fail "${total_jobs} jobs need ${shards} shards, more than one fan-out can run (${MAX_SHARDS}); narrow the plan"
fi
echo "planned ${total_jobs} jobs in ${shards} shards"
{
    echo "jobs=${total_jobs}"
    echo "fanout=${fanout}"
} >>"${GITHUB_OUTPUT}"
