# prep=tap: L1's side of L2's virtio-net, tap0 as 10.99.0.1/24 (created
# with the staged iproute2; busybox ip has no tuntap).
make_tap() {
  /sbin/ip.full tuntap add "$1" mode tap || return 1
  ip addr add "$2" dev "$1" && ip link set "$1" up
}
make_tap tap0 10.99.0.1/24 || check net-setup 0 "cannot create tap0"
SAMPLE_IF=tap0
