#!/bin/sh
# component 1: hardening (examples/golden-nginx/components/hardening.yaml; the first RUN of
# bench/golden-nginx/Containerfile, one command a line).
set -e; export DEBIAN_FRONTEND=noninteractive
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
apt-get update -qq
apt-get install -y -qq --no-install-recommends openssh-server > /dev/null
rm -f /usr/sbin/policy-rc.d; apt-get clean && rm -rf /var/lib/apt/lists/*
mkdir -p /etc/ssh/sshd_config.d
printf '# Managed by the kiln hardening component.\nPermitRootLogin no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nX11Forwarding no\nMaxAuthTries 3\nClientAliveInterval 300\nBanner /etc/issue.net\n' > /etc/ssh/sshd_config.d/90-kiln-hardening.conf
chmod 644 /etc/ssh/sshd_config.d/90-kiln-hardening.conf
mkdir -p /etc/systemd/system/ssh.service.d
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' > /etc/systemd/system/ssh.service.d/10-host-keys.conf
for f in /etc/issue.net /etc/issue /etc/motd; do echo 'Authorized use only. Activity on this system is monitored.' > $f; done
printf 'net.ipv4.conf.all.accept_redirects = 0\nnet.ipv4.conf.all.send_redirects = 0\nnet.ipv4.conf.all.log_martians = 1\nnet.ipv4.tcp_syncookies = 1\n' > /etc/sysctl.d/90-kiln-hardening.conf
for p in telnet ftp rsh-client rsh-redone-client netcat-traditional; do if dpkg -s "$p" >/dev/null 2>&1; then apt-get purge -y -qq "$p" >/dev/null; fi; done
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
ssh-keygen -q -t ed25519 -N '' -f /tmp/kiln-check-key
mkdir -p /run/sshd
/usr/sbin/sshd -t -f /etc/ssh/sshd_config -h /tmp/kiln-check-key
rm -f /tmp/kiln-check-key /tmp/kiln-check-key.pub
