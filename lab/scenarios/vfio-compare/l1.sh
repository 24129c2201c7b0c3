# vfio-compare (`lab/run poll`): TCP and Redis over the assigned e1000e (VFIO, DMA through
# the virtual IOMMU) under off, strict and lazy, the last two with the
# request queue notified and polled (adaptive); one L2 boot each, one
# LAB-ROW line each (exits per packet from L1's KVM counters, the poll
# thread's CPU, Redis requests per second).
for M in off strict strict+poll lazy lazy+poll; do
  MODE=${M%+poll}; POLL=""; [ "$M" != "$MODE" ] && POLL=adaptive
  echo "LAB-L1 mode $M"
  ROUNDS=1 REDIS=1
  . /stage/lib/l1-vfio.sh
done
