# L1: boots L2 under iovmm (or QEMU) and watches it: samples at L2's
# marks, panics, the overall limit, and the per-phase progress limits of
# the stall detector (lab/README.md, "Stalls").

# L1's uptime in whole seconds (no fork: the watchdog runs it often).
up() { local u r; read -r u r < /proc/uptime; echo "${u%.*}"; }
# The packets of interface $1 into PK (no fork).
packets() {
  local rx=0 tx=0
  [ -n "$1" ] && [ -e "/sys/class/net/$1" ] && { read -r rx < /sys/class/net/$1/statistics/rx_packets; read -r tx < /sys/class/net/$1/statistics/tx_packets; }
  PK=$((rx + tx))
}

# vm_dump PID: what a hung or stalled L2 needs for a diagnosis, on L1's
# console: the VMM's threads (state, kernel wait channel, user/system
# ticks, the CPU each last ran on), iovmm's vCPU states and counters
# (SIGUSR1: registers to its log, stats to /tmp/stats.json), the last
# lines of L2's console. Then the VMM is stopped (SIGTERM: clean teardown;
# SIGKILL if that hangs 20 s).
vm_dump() {
  local pid=$1 th
  for th in /proc/$pid/task/*; do
    # Fields after the ")" that ends the thread's name: state is 1,
    # utime 12, stime 13, the last CPU 37.
    echo "LAB-L1 thread $(cat $th/comm) $(sed 's/.*) //' $th/stat | awk '{print "state=" $1 " utime=" $12 " stime=" $13 " cpu=" $37}') wchan=$(cat $th/wchan)"
  done 2>/dev/null
  if [ "$VMM" = iovmm ]; then
    kill -USR1 "$pid"; sleep 3
    [ -f /tmp/stats.json ] && echo "LAB-L1 counters $(jq -c '{viommu: (.viommu | if . then {requests, notifications, faults, unmap_batches} else null end), devices, vfio: (.vfio | if . then .dma else null end)}' /tmp/stats.json 2>/dev/null)"
  fi
  tail -n 12 /tmp/l2.log 2>/dev/null | tr -d '\r' | sed 's/^/LAB-L1 l2 tail: /'
  kill "$pid"; sleep 20; kill -9 "$pid" 2>/dev/null
}

# stall PHASE REASON: the run made no progress in PHASE; L1's driver
# stops after this L2 run (/tmp/stalled), lab/run counts the stall.
stall() {
  echo "$1" > /tmp/stalled
  echo "LAB-L1 stall phase=$1: $2"
  vm_dump "$VM_PID"
}

# watch_l2 PID DISK: runs while the VMM does. Samples L1's counters at
# VMM start, at every "LAB-L2 mark NAME" and at VMM exit (marks vmm-start
# and vmm-exit: the highest KVM exit count seen while the VMM lived; one
# line each in /tmp/samples.txt: KVM exits,
# packets of $SAMPLE_IF, the virtio-iommu thread's CPU ticks, L1's
# uptime; KVM's counters vanish with the VM), stops a panicked L2 that did
# not reset, and enforces the limits:
#   boot      VMM start -> "LAB-L2 up"                 lab.stall_boot s
#   work      no progress (new L2 console output, a packet on
#             $SAMPLE_IF, a write to DISK)             lab.stall_work s
#   shutdown  "LAB-L2 done" -> VMM exit                lab.stall_down s
#   overall   VMM start -> VMM exit                    lab.l2_timeout s
# A heartbeat line every 60 s tells the host's detector that L1 lives.
watch_l2() {
  local pid=$1 disk=$2 seen=" " m n=0 now start since last beat phase=boot ppk=-1 lastmark=none
  local lboot lwork ldown t
  lboot=$(arg stall_boot); lboot=${STALL_BOOT:-${lboot:-300}}  # STALL_BOOT: a scenario's env
  lwork=$(arg stall_work); lwork=${lwork:-300}
  ldown=$(arg stall_down); ldown=${ldown:-180}
  t=$(arg l2_timeout); t=${t:-600}
  VM_PID=$pid
  : > /tmp/samples.txt
  # L1's KVM exit count before the VMM created its VM (run_l2 read it),
  # and the highest count seen while the VMM lives (L1's counter only sums
  # live VMs: it drops when the VM goes, so the last read could miss it).
  echo "vmm-start exits=${KVM_EXITS0:-0} t=$(cut -d' ' -f1 /proc/uptime)" >> /tmp/samples.txt
  local ke kmax=${KVM_EXITS0:-0}
  echo "$kmax" > /tmp/kvm_exits.max
  # Progress references: L2's console or disk is newer than these after a write.
  echo > /tmp/l2.seen; echo > /tmp/disk.seen
  start=$(up); since=$start; last=$start; beat=$start
  echo "LAB-L1 phase boot (VMM started; limit ${lboot}s to \"LAB-L2 up\")"
  while kill -0 "$pid" 2>/dev/null; do
    ke=0; read -r ke 2>/dev/null < /sys/kernel/debug/kvm/exits
    if [ "${ke:-0}" -gt "$kmax" ]; then kmax=$ke; echo "$kmax" > /tmp/kvm_exits.max; fi
    # A panicked L2 normally resets (iovmm adds reboot=k; exit code 3); if
    # it does not, stop the VMM now rather than at a limit.
    if grep -q 'Kernel panic - not syncing' /tmp/l2.log 2>/dev/null; then
      sleep 5
      kill -0 "$pid" 2>/dev/null || return  # it reset and exited by itself
      echo "LAB-L1 L2 panicked: stopping the VMM"
      [ "$VMM" = iovmm ] && kill -USR1 "$pid"; sleep 2; kill "$pid"
      return
    fi
    for m in $(sed -n 's/.*LAB-L2 mark \([a-z0-9-]*\).*/\1/p' /tmp/l2.log 2>/dev/null); do
      case "$seen" in *" $m "*) continue;; esac
      seen="$seen$m "; lastmark=$m
      echo "$m exits=$(kvm_exits) pkts=$(if_packets "$SAMPLE_IF") poll_ticks=$(poll_ticks "$pid") dev_ticks=$(dev_ticks "$pid") threads=$(thread_cpus "$pid")$(coop_sample "$pid") t=$(cut -d' ' -f1 /proc/uptime)" >> /tmp/samples.txt
    done
    n=$((n + 1))
    if [ $((n % 5)) = 0 ]; then
      now=$(up)
      case "$phase" in
        boot)
          if grep -q 'LAB-L2 up' /tmp/l2.log 2>/dev/null; then
            phase=work; since=$now; last=$now
            echo "LAB-L1 phase work (L2 up after $((now - start))s; limit ${lwork}s without progress)"
          elif [ $((now - since)) -ge "$lboot" ]; then
            stall boot "no \"LAB-L2 up\" ${lboot}s after the VMM started"; return
          fi;;
        work)
          if grep -q 'LAB-L2 done' /tmp/l2.log 2>/dev/null; then
            phase=shutdown; since=$now
            echo "LAB-L1 phase shutdown (workload done after $((now - start))s; limit ${ldown}s to the VMM's exit)"
          else
            # Progress: L2's console or disk written, or packets moved
            # (tests and reads without forks: this runs every second).
            packets "$SAMPLE_IF"
            if [ /tmp/l2.log -nt /tmp/l2.seen ] || { [ -n "$disk" ] && [ "$disk" -nt /tmp/disk.seen ]; } || [ "$PK" != "$ppk" ]; then
              echo > /tmp/l2.seen; echo > /tmp/disk.seen; ppk=$PK; last=$now
            elif [ $((now - last)) -ge "$lwork" ]; then
              stall work "no progress for ${lwork}s (no L2 console output, packet or disk write; last L2 mark: $lastmark)"; return
            fi
          fi;;
        shutdown)
          if [ $((now - since)) -ge "$ldown" ]; then
            stall shutdown "the VMM did not exit ${ldown}s after \"LAB-L2 done\""; return
          fi;;
      esac
      if [ $((now - start)) -ge "$t" ]; then
        echo "LAB-L1 VMM timed out after ${t}s"
        vm_dump "$pid"; return
      fi
      if [ $((now - beat)) -ge 60 ]; then
        beat=$now; echo "LAB-L1 alive phase=$phase vmm_s=$((now - start)) idle_s=$((now - last)) mark=$lastmark"
      fi
    fi
    sleep 0.2
  done
}

# log_capped FILE: FILE for L1's console, at most its first and last 1000
# lines: a VMM that logs in a loop would otherwise hold the (emulated,
# slow) serial console for a long time after its run.
log_capped() {
  local n; n=$(wc -l < "$1" 2>/dev/null || echo 0)
  if [ "$n" -le 2000 ]; then cat "$1" 2>/dev/null; return; fi
  head -n 1000 "$1"; echo "LAB-L1 log: $((n - 2000)) of $n lines left out"; tail -n 1000 "$1"
}

# PLACE=V:I (a scenario's env): L2's vCPU threads on L1's CPU V, the
# VMM's other threads on CPU I (iovmm: --vcpu-cpus/--io-cpus; QEMU: its
# named threads moved with taskset once they exist).
place_qemu() {
  local th i=0
  while [ $i -lt 50 ] && ! ls /proc/$1/task/*/comm 2>/dev/null | xargs grep -lq '^CPU ' 2>/dev/null; do sleep 0.2; i=$((i + 1)); done
  for th in /proc/$1/task/*; do
    case "$(cat $th/comm 2>/dev/null)" in
      "CPU "*) taskset -p $(printf %x $((1 << ${PLACE%:*}))) "${th##*/}";;
      *) taskset -p $(printf %x $((1 << ${PLACE#*:}))) "${th##*/}";;
    esac
  done > /dev/null 2>&1
  echo "LAB-L1 QEMU threads placed: vCPUs on ${PLACE%:*}, others on ${PLACE#*:}"
}

# L2's RAM in bytes: env L2_MEM (a scenario's; M or G suffix), 512M by
# default, as run_l2 gives it to iovmm.
l2_ram_bytes() {
  local m=${L2_MEM:-512M}
  case "$m" in *G) echo $((${m%G} << 30));; *) echo $((${m%M} << 20));; esac
}

# run_l2 CMDLINE [--vmm iovmm|qemu] [--disk PATH] [--net TAP] [--vfio BDF]
#        [--iommu MODE] [--extra "iovmm args"]
# --vmm: this run's VMM (default $VMM, L1's lab.vmm or the mode item's).
# With --iommu (not off) the disk, NIC and assigned device (--vfio: a
# function bound to vfio-pci) sit behind the virtual IOMMU.
# iovmm writes its stats to /tmp/stats.json; the VMM's PID is in
# /tmp/vmm.pid while it runs (SIGUSR1 snapshots, l1-bench.sh).
# Boots L2 with $L2_VCPUS vCPUs (LAB_L2_VCPUS, default 2) and $L2_MEM of RAM
# (a scenario's env, default 512M);
# L2's console goes to /tmp/l2.log (and live to the console in demo
# mode). Sets L2_EXIT.
run_l2() {
  local cmdline=$1; shift
  local disk="" net="" extra="" iommu=off vfio="" vmm=$VMM h a pid wd tl=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --disk) disk=$2; shift 2;; --net) net=$2; shift 2;; --extra) extra=$2; shift 2;;
      --iommu) iommu=$2; shift 2;; --vfio) vfio=$2; shift 2;; --vmm) vmm=$2; shift 2;;
      *) shift;;
    esac
  done
  # The watchdog, samplers and dumps below read VMM (dynamic scope).
  local VMM=$vmm
  h=$(arg hang); [ -n "$h" ] && cmdline="$cmdline lab.hang=$h"
  rm -f /tmp/vmm.pid
  rm -f /tmp/l2.log; : > /tmp/l2.log  # one run's console per file (iovmm appends)
  KVM_EXITS0=$(kvm_exits)  # before the VMM's VM exists (the sampler's vmm-start)
  if [ "$DEMO" = 1 ]; then tail -f /tmp/l2.log & tl=$!; fi
  if [ "$VMM" = qemu ]; then
    a="-machine q35,accel=kvm -cpu host -smp $L2_VCPUS -m 512 -nographic -no-reboot -nodefaults -kernel /tmp/bzImage -initrd /tmp/l2.cpio.gz"
    local ip=""
    if [ "$iommu" != off ]; then
      a="$a -device virtio-iommu-pci"; ip=",iommu_platform=on,disable-legacy=on"
      case "$iommu" in strict) cmdline="$cmdline iommu.strict=1";; lazy) cmdline="$cmdline iommu.strict=0";;
        passthrough) cmdline="$cmdline iommu.passthrough=1";; esac
    fi
    [ -n "$disk" ] && a="$a -drive file=$disk,if=none,id=d0,format=raw -device virtio-blk-pci,drive=d0$ip"
    [ -n "$net" ] && a="$a -netdev tap,id=n0,ifname=$net,script=no,downscript=no -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56$ip"
    # QEMU's virtio-iommu-pci translates every PCI device of the machine,
    # the assigned one included.
    [ -n "$vfio" ] && a="$a -device vfio-pci,host=$vfio"
    [ -n "$PLACE" ] && a="$a -name l2,debug-threads=on"
    chroot /host /usr/bin/qemu-system-x86_64 $a -serial file:/tmp/l2.log -append "$cmdline" > /tmp/vmm.log 2>&1 &
    pid=$!
    [ -n "$PLACE" ] && place_qemu "$pid" &
  else
    a="run --kernel /stage/bzImage --initramfs /stage/l2.cpio.gz --vcpus $L2_VCPUS --memory ${L2_MEM:-512M} --memory-backing $BACKING --serial /tmp/l2.log --log-level info --stats-file /tmp/stats.json"
    local io=""
    if [ "$iommu" != off ]; then a="$a --iommu-mode $iommu"; io=",iommu=on"; fi
    [ -n "$disk" ] && a="$a --disk path=$disk,id=lab-disk$io"
    [ -n "$net" ] && a="$a --net tap=$net,mac=52:54:00:12:34:56$io"
    if [ -n "$vfio" ]; then
      if [ "$iommu" = off ]; then a="$a --vfio $vfio,iommu=off"; else a="$a --vfio $vfio"; fi
    fi
    [ -n "$PLACE" ] && a="$a --vcpu-cpus ${PLACE%:*} --io-cpus ${PLACE#*:}"
    echo "LAB-L1 iovmm $a $extra --cmdline \"$cmdline\""
    /stage/iovmm $a $extra --cmdline "$cmdline" > /tmp/vmm.log 2>&1 &
    pid=$!
  fi
  echo "$pid" > /tmp/vmm.pid
  watch_l2 "$pid" "$disk" &
  wd=$!
  wait "$pid"
  L2_EXIT=$?
  rm -f /tmp/vmm.pid
  kill "$wd" 2>/dev/null
  wait "$wd" 2>/dev/null
  echo "vmm-exit exits=$(cat /tmp/kvm_exits.max 2>/dev/null || echo 0) t=$(cut -d' ' -f1 /proc/uptime)" >> /tmp/samples.txt
  [ -n "$tl" ] && { sleep 1; kill "$tl"; }
  echo "LAB-L1 vmm exit=$L2_EXIT"
  # Name the kernel addresses of vCPU state dumps (verbose runs: L1 and L2
  # run the same kernel image without KASLR; module code is not named).
  if [ "$(arg l2_verbose)" = 1 ]; then
    grep 'vCPU state' /tmp/vmm.log | grep -o '0xffffffff8[0-9a-f]*' | sort -u | while read -r a; do
      awk -v a="${a#0x}" '$1 <= a && $2 ~ /^[tT]$/ { s = $3 } $1 > a { exit }
        END { print "LAB-L1 sym " a " " s }' /proc/kallsyms
    done
  fi
  echo "LAB-VMM-LOG-BEGIN"; log_capped /tmp/vmm.log; echo "LAB-VMM-LOG-END"
  [ "$DEMO" = 1 ] || { echo "LAB-L2-LOG-BEGIN"; cat /tmp/l2.log 2>/dev/null; echo "LAB-L2-LOG-END"; }
}
