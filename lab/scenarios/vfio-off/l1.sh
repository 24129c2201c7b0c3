MODE=off
. /stage/lib/l1-vfio.sh
