# vfio-strict with the virtual IOMMU's request queue polled (adaptive):
# one round, then L2 idles so the poll thread's idle cost is measured.
MODE=strict POLL=adaptive ROUNDS=1
. /stage/lib/l1-vfio.sh
