MODE=strict
. /stage/lib/l1-vfio.sh
