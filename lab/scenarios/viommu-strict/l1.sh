MODE=strict
. /stage/lib/l1-viommu.sh
