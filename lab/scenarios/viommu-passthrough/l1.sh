MODE=passthrough
. /stage/lib/l1-viommu.sh
