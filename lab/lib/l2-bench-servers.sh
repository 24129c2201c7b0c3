# The bench's servers, on the address $1 (an address of this machine):
# redis-server :6379, memcached :11211, nginx :80 serving /4k and /64k
# (random bytes), iperf3 :5201, all as daemons. BENCH_SERVER_THREADS
# (default 1): memcached's threads and nginx's workers. Files go under
# /tmp/iovmm-bench. The lab's L2 sources it (l2-bench.sh); on a real
# guest run it as `sh l2-bench-servers.sh 10.0.0.2` (docs/hardware.md).
# POSIX sh; the lab's L2 runs busybox's.
bench_servers() {
  local d=/tmp/iovmm-bench n=${BENCH_SERVER_THREADS:-1}
  mkdir -p /etc $d/www $d/tmp
  # memcached and nginx look up their users: an initramfs has none.
  grep -q '^root:' /etc/passwd 2>/dev/null || echo 'root:x:0:0:root:/:/bin/sh' >> /etc/passwd
  grep -q '^nobody:' /etc/passwd || echo 'nobody:x:65534:65534:nobody:/:/bin/false' >> /etc/passwd
  grep -q '^root:' /etc/group 2>/dev/null || echo 'root:x:0:' >> /etc/group
  grep -q '^nogroup:' /etc/group || echo 'nogroup:x:65534:' >> /etc/group
  head -c 4096 /dev/urandom > $d/www/4k
  head -c 65536 /dev/urandom > $d/www/64k
  cat > $d/nginx.conf <<CONF
daemon on;
worker_processes $n;
pid $d/nginx.pid;
error_log $d/nginx-error.log error;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $d/tmp;
  proxy_temp_path $d/tmp;
  fastcgi_temp_path $d/tmp;
  uwsgi_temp_path $d/tmp;
  scgi_temp_path $d/tmp;
  sendfile on;
  server { listen $1:80; root $d/www; }
}
CONF
  redis-server --port 6379 --bind "$1" --save '' --appendonly no --protected-mode no --daemonize yes --logfile $d/redis.log
  memcached -u root -l "$1" -p 11211 -t "$n" -m 64 -d
  nginx -e stderr -p $d -c $d/nginx.conf || echo "bench: nginx failed"
  iperf3 -s -D -B "$1" -p 5201 || echo "bench: iperf3 failed"
  sleep 2
  echo "bench servers: $(for p in redis-server memcached nginx iperf3; do printf '%s=%s ' $p "$(pidof $p | wc -w)"; done)"
}
# Run directly (not sourced): start them on the address given.
case "$0" in
  *l2-bench-servers.sh) [ -n "$1" ] || { echo "usage: sh $0 ADDRESS (this guest's address on the assigned NIC)" >&2; exit 2; }
    bench_servers "$1";;
esac
