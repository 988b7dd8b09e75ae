#!/usr/bin/env bash
# Everything CI runs for deploy/. Idempotent; run from anywhere as root.
#
#   deploy/test.sh
#
# Env: SMARTER_BIN_DIR   release binaries as <dir>/<triple>/<binary> (default out/release;
#                        built with cross/build-release.sh when missing and that script exists)
#      SMARTER_VENV      venv for the pinned Python tools (default out/deploy-venv)
#      K8S_VERSIONS      Kubernetes versions the manifests must validate against
#
# Needs: python3 (3.11+), dockerd running, skopeo, jq, qemu-user-static, containerd's ctr,
#        cargo with the workspace's crates fetched and dpkg (the SBOMs list crates and Debian packages).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bin_dir=${SMARTER_BIN_DIR:-$repo/out/release}
venv=${SMARTER_VENV:-$repo/out/deploy-venv}
k8s_versions=${K8S_VERSIONS:-"1.31.0 1.35.0"}
images=$repo/out/images
rebuild=$repo/out/images-rebuild

step() { printf '\n== %s\n' "$*"; }

step "python tools (pinned, $venv)"
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r deploy/tests/requirements.txt
py=$venv/bin/python

step "manifests validate against the Kubernetes OpenAPI schemas ($k8s_versions)"
mapfile -t manifests < <(find deploy/kubernetes -name '*.yaml' | sort)
for v in $k8s_versions; do
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "${manifests[@]}"
    echo "ok: ${#manifests[@]} files against Kubernetes $v"
done
# The validator must reject what Kubernetes rejects, or the step above proves nothing.
for bad in deploy/tests/testdata/invalid-*.yaml; do
    if "$venv/bin/kubernetes-validate" --strict --quiet -k "${k8s_versions##* }" "$bad" >/dev/null 2>&1; then
        echo "FAIL: $bad validated but is invalid"; exit 1
    fi
    echo "ok: $bad rejected"
done

step "policy"
"$py" deploy/tests/policy.py --self-test

step "release binaries ($bin_dir)"
if [ -z "${SMARTER_BIN_DIR:-}" ] && [ ! -d "$bin_dir" ] && [ -x cross/build-release.sh ]; then
    cross/build-release.sh
fi
for t in x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    for b in smarter-device-manager smarter-cni smarter-dns smarter-comms smarter-debug-agent smarter-update; do
        [ -x "$bin_dir/$t/$b" ] || { echo "missing $bin_dir/$t/$b (run cross/build-release.sh or set SMARTER_BIN_DIR)"; exit 1; }
    done
done

if [ -f "$bin_dir/SHA256SUMS" ]; then
    (cd "$bin_dir" && sha256sum --quiet -c SHA256SUMS) && echo "ok: binaries match $bin_dir/SHA256SUMS"
fi

step "images, built twice: digests must be identical"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
"$py" deploy/images/build.py --bin-dir "$bin_dir" --out "$images"
# The second build differs in everything that must not matter: time zone, umask, cwd, locale and
# cargo's terminal settings (the SBOM reads dpkg-query's and cargo tree's output).
(cd /tmp && umask 077 && TZ=Pacific/Kiritimati LC_ALL=C CARGO_TERM_COLOR=always \
    "$py" "$repo/deploy/images/build.py" --bin-dir "$bin_dir" --out "$rebuild" >/dev/null)
(cd "$images" && find . -type f ! -name images.json -print0 | sort -z | xargs -0 sha256sum) > "$repo/out/images.sha256"
(cd "$rebuild" && find . -type f ! -name images.json -print0 | sort -z | xargs -0 sha256sum) > "$repo/out/images-rebuild.sha256"
if ! diff -u "$repo/out/images.sha256" "$repo/out/images-rebuild.sha256"; then
    echo "FAIL: two builds from the same commit differ"; exit 1
fi
cmp <(jq -S 'del(.images[].arches[].docker_archive)' "$images/images.json") \
    <(jq -S 'del(.images[].arches[].docker_archive)' "$rebuild/images.json")
echo "ok: $(wc -l < "$repo/out/images.sha256") files bit-for-bit identical"
rm -rf "$rebuild"

step "OCI layout readable by skopeo, docker-archives by skopeo"
version=$(jq -r .version "$images/images.json")
for svc in $(jq -r '.images | keys[]' "$images/images.json"); do
    n=$(skopeo inspect --raw "oci:$images/oci:$svc:$version" | jq '.manifests | length')
    [ "$n" = 3 ] || { echo "FAIL: $svc index has $n platforms"; exit 1; }
    for arch in amd64 arm64 armv7; do
        skopeo inspect "docker-archive:$images/$arch/$svc.docker.tar" > /dev/null
    done
    echo "ok: $svc:$version ($n platforms)"
done

step "SBOMs: one SPDX 2.3 document per image, checked against the image, dpkg and Cargo.lock"
"$py" deploy/tests/sbom.py --images "$images" --self-test

step "dockerd"
docker info > /dev/null 2>&1 || { echo "dockerd is not running"; exit 1; }

# The last steps all run even when one fails, so one CI log shows every problem.
status=0
step "images run as their manifests say (amd64 under docker, arm under qemu-user)"
"$py" deploy/tests/run_images.py --images "$images" || status=1

step "k3s configuration, install scripts, air-gap import"
"$py" deploy/tests/k3s_config.py --images "$images" || status=1

step "image sizes"
"$py" deploy/tests/sizes.py "$images/images.json"
ls -l "$images"/airgap/

if [ "$status" -ne 0 ]; then echo "deploy/test.sh: FAILED (see FAIL lines above)"; fi
exit "$status"
