MODE=passthrough
. /stage/lib/l1-vfio.sh
