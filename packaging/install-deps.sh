#!/usr/bin/env bash
# Installs the Debian packages portbroker needs to build and test. Idempotent:
# when everything is present it does nothing (and needs no network).
set -euo pipefail

packages=(
  build-essential cmake make pkg-config git
  libuv1-dev capnproto libcapnp-dev
  libspdlog-dev libfmt-dev doctest-dev
  libtomlplusplus-dev libcli11-dev nlohmann-json3-dev
  libcap-dev libseccomp-dev libsystemd-dev libdeflate-dev
  iproute2 procps util-linux clang-format clang-tidy
  systemd  # tests/systemd boots it, in private namespaces
  scdoc bash-completion  # man pages; the completion's test
  debhelper lintian dpkg-dev  # make deb
  python3 python3-pytest python3-pip python3-setuptools  # client/python and its tests
  python3-aiohttp gunicorn  # the README's Python server examples, tested
  prometheus-node-exporter  # tests/integration/metrics_test reads the textfile through it
  podman crun conmon curl  # tests/integration/containers_test.cc runs a real container
  clang-14 libfuzzer-14-dev  # tests/fuzz (make fuzz): libFuzzer targets, built apart with clang
  nginx-light authbind python3  # exec --intercept tests (unmodified nginx) and its benchmark
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  sudo_cmd=sudo
else
  sudo_cmd=
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo_cmd apt-get update -qq
$sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
