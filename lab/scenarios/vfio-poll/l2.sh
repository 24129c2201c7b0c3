. /lib/lab/l2-vfio.sh
