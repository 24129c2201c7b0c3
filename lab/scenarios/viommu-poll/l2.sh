. /lib/lab/l2-viommu.sh
