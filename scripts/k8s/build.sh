#!/usr/bin/env bash
# Build kube-apiserver, kube-scheduler and kube-controller-manager v1.20.2 once per machine, for
# the local control plane of the tests (jupyter_dlinfra/testing/k8s.py; see scripts/k8s/up.sh).
#
#   scripts/k8s/build.sh          # -> /var/cache/dlinfra-k8s/bin/kube-{apiserver,scheduler,controller-manager}
#
# Returns at once when the three binaries already exist in K8S_BIN_DIR: build once, reuse.
# Otherwise (as root, on Debian 12) it installs golang-go, etcd-server and openssl with apt when
# missing, fetches Debian's source package of Kubernetes (offline build: everything is vendored),
# generates the OpenAPI definitions the apiserver needs and compiles the three commands with
# Debian's Go. That takes 10-20 minutes on two cores and about 4 GB of disk.
#
# Settings (environment): K8S_BUILD_DIR (/var/cache/dlinfra-k8s: sources, Go cache),
# K8S_BIN_DIR ($K8S_BUILD_DIR/bin; point DLINFRA_K8S_BIN there when you change it).
set -euo pipefail

W=${K8S_BUILD_DIR:-/var/cache/dlinfra-k8s}
OUT=${K8S_BIN_DIR:-$W/bin}
COMMANDS=(kube-apiserver kube-scheduler kube-controller-manager)

have_all() {
    local c
    for c in "${COMMANDS[@]}"; do [ -x "$OUT/$c" ] || return 1; done
}
if have_all && command -v etcd >/dev/null && command -v openssl >/dev/null; then
    echo "k8s build: ${COMMANDS[*]} already in $OUT"
    exit 0
fi

die() { echo "k8s build: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (apt-get install, apt-get source)"
command -v apt-get >/dev/null || die "needs apt-get (Debian 12)"

# system packages, with a single `apt-get update`, only when something is missing
missing=()
have_all || command -v go >/dev/null || missing+=(golang-go)
[ -x /usr/bin/etcd ] || missing+=(etcd-server)
command -v openssl >/dev/null || missing+=(openssl)
# the source package needs deb-src entries: the machine's own apt sources, Types switched
update=0
[ ${#missing[@]} -eq 0 ] || update=1
if ! have_all && [ ! -f /etc/apt/sources.list.d/debsrc.sources ]; then
    [ -f /etc/apt/sources.list.d/debian.sources ] || die "no /etc/apt/sources.list.d/debian.sources"
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
        > /etc/apt/sources.list.d/debsrc.sources
    update=1
fi
[ "$update" = 0 ] || apt-get update -q >/dev/null
if [ ${#missing[@]} -gt 0 ]; then
    # etcd-server must not start a system etcd at install: the control plane starts its own
    guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        guard=/usr/sbin/policy-rc.d
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    [ -z "$guard" ] || rm -f "$guard"
fi
have_all && exit 0

mkdir -p "$W" "$OUT"
cd "$W"
ls kubernetes_*.orig.tar.gz >/dev/null 2>&1 || apt-get source --download-only -q kubernetes >/dev/null
[ -d kubernetes-1.20.2 ] || tar xzf kubernetes_*.orig.tar.gz
K=$W/kubernetes-1.20.2
# the version the binaries report (the -X link flags do not reach the vendored package here)
sed -i -e 's/^\(\s*\)gitVersion\(\s*\)= "[^"]*"/\1gitVersion\2= "v1.20.2"/' \
    -e 's/^\(\s*\)gitMajor string\( *\)\/\//\1gitMajor string = "1" \/\//' \
    -e 's/^\(\s*\)gitMinor string\( *\)\/\//\1gitMinor string = "20" \/\//' \
    "$K/staging/src/k8s.io/component-base/version/base.go"
mkdir -p "$K/.go/src/k8s.io"
[ -L "$K/.go/src/k8s.io/kubernetes" ] || ln -s ../../.. "$K/.go/src/k8s.io/kubernetes"
cd "$K/.go/src/k8s.io/kubernetes"
export GO111MODULE=off GOPATH=$K/.go CGO_ENABLED=0 GOCACHE=${GOCACHE:-$W/gocache}
# the apiserver serves OpenAPI definitions generated from the sources' +k8s:openapi-gen tags
if [ ! -f pkg/generated/openapi/zz_generated.openapi.go ]; then
    go build -o "$W/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
    DIRS=$( (find pkg cmd plugin -name '*.go'; find -L vendor/k8s.io -name '*.go') \
        | grep -vE '^vendor/k8s.io/(code-generator|sample-apiserver)/|/testdata/|_test.go$' \
        | xargs grep -l '^// *+k8s:openapi-gen=' | xargs -n1 dirname | sort -u \
        | sed 's#^#k8s.io/kubernetes/#' | paste -sd, -)
    "$W/openapi-gen" -i "$DIRS" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
        -h hack/boilerplate/boilerplate.generatego.txt -r "$W/openapi-report.txt" >/dev/null 2>&1
fi
for c in "${COMMANDS[@]}"; do
    echo "k8s build: $c"
    # build next to the target, then rename: a control plane running the old binary is not hurt
    go build -ldflags "-s -w" -o "$OUT/.$c.new" "./cmd/$c"
    mv -f "$OUT/.$c.new" "$OUT/$c"
done
ls -la "$OUT"
