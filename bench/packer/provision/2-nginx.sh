#!/bin/sh
# component 2: nginx (examples/golden-nginx/components/nginx.yaml; the second RUN of
# bench/golden-nginx/Containerfile, one command a line).
set -e; export DEBIAN_FRONTEND=noninteractive
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
apt-get update -qq
apt-get install -y -qq --no-install-recommends nginx-light > /dev/null
rm -f /usr/sbin/policy-rc.d; apt-get clean && rm -rf /var/lib/apt/lists/*
echo ok > /var/www/html/healthz
/usr/sbin/nginx -t
