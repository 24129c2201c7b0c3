# L1 checks of cooperative mode (docs/coop.md) on one L2 run of the vfio
# workload: its stats (/tmp/stats.json) and the pin counters the sampler
# took at L2's marks (coop_sample, l1-stats.sh). Check names take $SFX.
#   coop-registered  the patched driver registered its table (as of mark
#                    net-start: L2's shutdown resets the device, which
#                    forgets it) and sent no MAP
#   coop-peak        pinned memory before the flood <= 5% of L2's RAM
#   coop-steady      pin requests and VFIO calls per packet during the
#                    second transfer (L2 -> L1), after the first warmed up
#   coop-idle        after the transfers, L2 idle: pinned memory at idle-b
#                    below the peak, and chunks unpinned since net-start
#   coop-exits       exits per packet within 1.25x of mode off in this boot
#   coop-budget      the flood beyond the budget refused, counted, VMM fine
# Names are coop-<what>[-GRANULE]$SFX; a <what>[-GRANULE] in COOP_MEASURED
# (`+`-separated, scenario env; `all`: every one) is reported as
# measured, ok=skip, not gated: scenario coop-granules measures every
# granule, including those that miss a goal (docs/coop.md, Status).
cgate() {
  local what=$1${GRANULE:+-$GRANULE}
  case "+${COOP_MEASURED:-}+" in
    *"+all+"*|*"+$what+"*) skip "coop-$what$SFX" "measured, not gated: goal $([ "$2" = 0 ] && echo missed || echo met): $3";;
    *) check "coop-$what$SFX" "$2" "$3";;
  esac
}

# Records mode off's exits per packet for coop-exits (run before coop).
coop_note_off() {
  local e p
  e=$(sample_delta net-start net-end exits); p=$(sample_delta net-start net-end pkts)
  [ -n "$e" ] && [ "${p:-0}" -gt 0 ] && echo "$e $p" | awk '{printf "%.3f\n", $1 / $2}' > /tmp/epp-off
}

coop_checks() {
  local reg maps peak pins vf pk idle_p end_p unp epp off refused ram
  ram=$(l2_ram_bytes)
  reg=$(sample_at net-start registered); maps=$(jn .viommu.requests.map)
  echo "LAB-L1 coop $(jq -c '.viommu.coop' /tmp/stats.json 2>/dev/null)"
  [ "$reg" = true ] && [ "$maps" = 0 ]
  cgate registered $((! $?)) "registered=$reg map_requests=$maps (want a table and no MAP)"
  peak=$(sample_at idle-a peak)
  [ "${peak:-0}" -gt 0 ] && [ $((peak * 20)) -le "$ram" ]
  cgate peak $((! $?)) "peak pinned ${peak:-?} B = $(awk -v p="${peak:-0}" -v r="$ram" 'BEGIN { printf "%.2f", p * 100 / r }')% of L2 RAM before the flood (want > 0 and <= 5%)"
  pins=$(sample_delta net-send net-end pins); vf=$(sample_delta net-send net-end coop_vfio)
  pk=$(sample_delta net-send net-end pkts)
  echo "LAB-L1 coop-window first: pins=$(sample_delta net-start net-send pins) vfio=$(sample_delta net-start net-send coop_vfio) packets=$(sample_delta net-start net-send pkts); second: pins=$pins vfio=$vf packets=$pk"
  [ "${pk:-0}" -gt 0 ] && [ -n "$pins" ] && [ $((pins * 20)) -le "$pk" ] && [ $((vf * 20)) -le "$pk" ]
  cgate steady $((! $?)) "L2->L1: pins=$pins vfio_calls=$vf packets=$pk (want <= 0.05 per packet each)"
  idle_p=$(sample_at idle-b pinned)
  unp=$(( $(sample_at idle-b unpinned) - $(sample_at net-start unpinned) ))
  [ -n "$idle_p" ] && [ -n "$peak" ] && [ "$idle_p" -lt "$peak" ] && [ "$unp" -gt 0 ]
  cgate idle $((! $?)) "pinned at net-end=$(sample_at net-end pinned) idle-b=$idle_p B (peak $peak B), $unp chunks unpinned since net-start (want idle-b < peak and > 0 unpinned)"
  epp=$(sample_fields | sed -n 's/.*exits_per_packet=\([0-9.]*\).*/\1/p'); off=$(cat /tmp/epp-off 2>/dev/null)
  [ -n "$epp" ] && [ -n "$off" ] && awk -v c="$epp" -v o="$off" 'BEGIN { exit !(c <= o * 1.25) }'
  cgate exits $((! $?)) "exits per packet coop=${epp:-?} off=${off:-unmeasured} (want <= 1.25x)"
  refused=$(jn .viommu.coop.refused.budget)
  grep -q 'LAB-L2 flood .*failed_at=[0-9]' /tmp/l2.log && [ "$refused" -gt 0 ] && [ "$L2_EXIT" = 0 ] \
    && [ "$(jn .viommu.coop.pinned_peak_bytes)" -le "$(jn .viommu.coop.budget_bytes)" ]
  cgate budget $((! $?)) "$(grep -o 'LAB-L2 flood .*' /tmp/l2.log | head -1 | cut -c8-) refused_budget=$refused peak=$(jn .viommu.coop.pinned_peak_bytes) budget=$(jn .viommu.coop.budget_bytes) exit=$L2_EXIT"
}
