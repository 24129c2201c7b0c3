MODE=lazy
. "/host$REPO/lab/lib/l1-viommu.sh"
