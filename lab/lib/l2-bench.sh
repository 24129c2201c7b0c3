# The bench workload, inside L2: the assigned e1000e as 10.99.1.2 (behind
# the virtual IOMMU unless the mode is off) and the servers L1's load
# generators use (l1-bench.sh): redis-server :6379, memcached :11211 (one
# thread), nginx :80 (one worker, files /4k and /64k), iperf3 :5201. Then
# L2 waits until L1 says the items are done (a connection to port 5005).
nic_up 10.99.1.2/24
echo "LAB-L2 bench link $IF carrier=$(cat /sys/class/net/$IF/carrier 2>/dev/null)"
# memcached and nginx look up their users.
mkdir -p /etc /var/www /var/nginx/tmp
echo 'root:x:0:0:root:/:/bin/sh' > /etc/passwd
echo 'nobody:x:65534:65534:nobody:/:/bin/false' >> /etc/passwd
printf 'root:x:0:\nnogroup:x:65534:\n' > /etc/group
head -c 4096 /dev/urandom > /var/www/4k
head -c 65536 /dev/urandom > /var/www/64k
cat > /var/nginx/nginx.conf <<'CONF'
daemon on;
worker_processes 1;
pid /var/nginx/nginx.pid;
error_log /tmp/nginx-error.log error;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path /var/nginx/tmp;
  proxy_temp_path /var/nginx/tmp;
  fastcgi_temp_path /var/nginx/tmp;
  uwsgi_temp_path /var/nginx/tmp;
  scgi_temp_path /var/nginx/tmp;
  sendfile on;
  server { listen 10.99.1.2:80; root /var/www; }
}
CONF
redis-server --port 6379 --save '' --appendonly no --protected-mode no --daemonize yes --logfile /tmp/redis.log
memcached -u root -l 10.99.1.2 -p 11211 -t 1 -m 64 -d
nginx -e stderr -p /var/nginx -c /var/nginx/nginx.conf || echo "LAB-L2 bench nginx failed"
iperf3 -s -D -p 5201 || echo "LAB-L2 bench iperf3 failed"
sleep 2
echo "LAB-L2 bench servers: $(for p in redis-server memcached nginx iperf3; do echo -n "$p=$(pidof $p | wc -w) "; done)"
mark bench-ready
# Any connection is the signal (stdin from /dev/null: no console input).
timeout "${BENCH_L2_WAIT:-1500}" nc -l -p 5005 < /dev/null > /dev/null
mark bench-end
# The link goes down while the virtual IOMMU still serves requests
# (l2-vfio.sh says why).
ip link set "$IF" down
