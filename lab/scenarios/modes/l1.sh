# The demo: the same L2 workload once per IOMMU policy, in one L1 boot,
# and strict once more with the request queue polled (adaptive); each run
# ends with a LAB-ROW line that lab/run turns into a table.
for M in off passthrough lazy strict strict+poll; do
  MODE=${M%+poll}; POLL=""; [ "$M" != "$MODE" ] && POLL=adaptive
  echo "LAB-L1 mode $M"
  . /stage/lib/l1-viommu.sh
done
