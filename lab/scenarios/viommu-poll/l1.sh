# viommu-strict with the request queue polled (adaptive); L2 idles at the
# end so the idle poll thread is measured.
MODE=strict POLL=adaptive
. /stage/lib/l1-viommu.sh
