#!/bin/bash
# Managed by Phoenix (installed by the GPU node probe): the NVIDIA device nodes this node's GPU
# containers get, made at every boot by phoenix-nvidia-devices.service before Proxmox starts the
# guests (Before=pve-guests.service). Proxmox refuses to start a container whose passed-through
# device is missing ("Device /dev/nvidia-uvm does not exist"), and nothing else makes
# /dev/nvidia-uvm* at boot: the kernel module creates them only on first CUDA use (trap 17).
#
# It loads the driver's modules and makes each node with the driver's own helper
# (nvidia-modprobe), or by hand with the major the running module registered in /proc/devices:
# nvidia-uvm's major is dynamic (trap 17), so it is read at every boot, never written down.
# A driver upgrade needs no change here: after the reboot this makes the new driver's nodes.
# usage: phoenix-nvidia-devices DEVICE... (the paths the containers get); fails naming what is missing.
set -euo pipefail
modprobe nvidia
modprobe nvidia_uvm
major() { awk -v name="$1" '$2 == name {print $1}' /proc/devices; }
node_at() {  # path major minor (no major: the module registered none; the check below names it)
  [ -c "$1" ] || [ -z "$2" ] || { rm -f "$1"; mknod -m 0666 "$1" c "$2" "$3"; }
}
helper=$(command -v nvidia-modprobe || true)
for dev in "$@"; do
  case "$dev" in
    /dev/nvidia[0-9]*)
      index=${dev#/dev/nvidia}
      if [ -n "$helper" ]; then "$helper" -c="$index"; else node_at "$dev" "$(major nvidia-frontend)" "$index"; fi ;;
    /dev/nvidiactl)
      if [ -z "$helper" ]; then node_at "$dev" "$(major nvidia-frontend)" 255; fi ;;
    /dev/nvidia-uvm|/dev/nvidia-uvm-tools)
      if [ -n "$helper" ]; then
        "$helper" -u -c=0
      else
        uvm=$(major nvidia-uvm)
        node_at /dev/nvidia-uvm "$uvm" 0
        node_at /dev/nvidia-uvm-tools "$uvm" 1
      fi ;;
  esac
done
missing=""
for dev in "$@"; do
  [ -c "$dev" ] || missing="$missing $dev"
done
if [ -n "$missing" ]; then
  echo "phoenix-nvidia-devices: no device node for:$missing (is the NVIDIA driver installed?)" >&2
  exit 1
fi
echo "phoenix-nvidia-devices: $# device nodes ready for the GPU containers"
