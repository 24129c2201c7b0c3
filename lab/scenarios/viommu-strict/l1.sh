MODE=strict
. "/host$REPO/lab/lib/l1-viommu.sh"
