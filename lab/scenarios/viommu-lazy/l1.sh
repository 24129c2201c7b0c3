MODE=lazy
. /stage/lib/l1-viommu.sh
