#!/usr/bin/env bash
# Runs a command the way a pod of deploy/k8s/deployment.yaml sees its disks: every mount
# read-only (readOnlyRootFilesystem), fresh tmpfs at the emptyDir paths, and VOLUME_DIR
# bound writable at /mnt (the artifact volume's stand-in). Needs root and a private mount
# namespace, so the host's mounts stay as they are:
#   unshare -m --propagation private bash readonly_root.sh VOLUME_DIR "EMPTYDIR_PATHS" CMD...
set -eu
volume=$1
emptydirs=$2
shift 2
mount --bind "$volume" /mnt
for mp in $(awk '{print $2}' /proc/self/mounts | grep -v -E '^/(mnt|proc|sys|dev)($|/)'); do
  mount -o remount,bind,ro "$mp"
done
for path in $emptydirs; do
  mount -t tmpfs -o size=1g tmpfs "$path"
done
if touch /usr/.dlforge-write-probe 2>/dev/null; then
  rm -f /usr/.dlforge-write-probe
  echo "the root file system is still writable" >&2
  exit 3
fi
exec "$@"
