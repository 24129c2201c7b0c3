MODE=lazy
. /stage/lib/l1-vfio.sh
