# The demo: the same L2 workload once per IOMMU policy, in one L1 boot;
# each run ends with a LAB-ROW line that lab/run turns into a table.
for MODE in off passthrough lazy strict; do
  echo "LAB-L1 mode $MODE"
  . /stage/lib/l1-viommu.sh
done
