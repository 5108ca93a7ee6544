#!/usr/bin/env bash
# Build a local stand-in for the public CUDA PyTorch image, for hosts without a registry (CI):
# Debian bookworm by debootstrap (python3, venv, Java) imported into the engine, plus a venv holding a CPU
# torch wheel from the local disk. The debootstrap root file system is cached by a content key under
# CI_CACHE_DIR, so a repeated run only imports it again.
#
#   images/ci-base/build.sh WHEELHOUSE_DIR "torch==2.14.1 torchvision==0.29.1"   -> stdout: the image tag
#
# WHEELHOUSE_DIR must hold those wheels and their dependencies (`make wheelhouse` puts them there); progress goes
# to stderr.
# Uses the docker CLI against $DOCKER_HOST.
set -euo pipefail
# Everything but the tag goes to stderr, so `tag=$(build.sh ...)` works and the progress stays visible.
exec 3>&1 1>&2

wheelhouse=$1
torch_requirements=$2
cache_dir=${CI_CACHE_DIR:-/var/cache/vlm-ablation-ci}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=python3,python3-venv,default-jre-headless,ca-certificates
here=$(cd "$(dirname "$0")" && pwd)

key=$( { printf '%s\n' "$suite" "$packages" "$torch_requirements"; cat "$here/Dockerfile" "$0"; } \
       | sha256sum | cut -c1-16)
tag=vlm-ablation/ci-base:$key

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag already present"
    echo "$tag" >&3
    exit 0
fi

mkdir -p "$cache_dir"
rootfs_tar=$cache_dir/rootfs-$key.tar
if [ ! -s "$rootfs_tar" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "debootstrap $suite ($packages) ..."
    debootstrap --variant=minbase --include="$packages" "$suite" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 30 "$work/debootstrap.log"; exit 1; }
    rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
    tar -C "$work/root" -cf "$rootfs_tar.tmp" . && mv "$rootfs_tar.tmp" "$rootfs_tar"
    rm -rf "$work"
    trap - EXIT
else
    echo "reusing cached root file system $rootfs_tar"
fi

rootfs_image=vlm-ablation/ci-rootfs:$key
docker import "$rootfs_tar" "$rootfs_image" >/dev/null

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir "$context/wheelhouse"
cp "$here/Dockerfile" "$context/"
# Hard links where the file system allows (the CUDA wheels are gigabytes), copies elsewhere.
cp -l "$wheelhouse"/*.whl "$context/wheelhouse/" 2>/dev/null || cp "$wheelhouse"/*.whl "$context/wheelhouse/"
DOCKER_BUILDKIT=0 docker build --network none --build-arg ROOTFS_IMAGE="$rootfs_image" \
    --build-arg TORCH_REQUIREMENTS="$torch_requirements" -t "$tag" "$context"
echo "$tag" >&3
