#!/bin/sh
# Turns a freshly debootstrapped trixie root into a vfnic test guest.
# Runs inside that root (chroot, private mount namespace) as
#   setup-rootfs.sh INITRD_MODULES -- PACKAGE...
# INITRD_MODULES is a space-separated list of the modules an initrd needs to
# find the root disk (images/initrd.py owns it); images/guest.py owns the
# package list.
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
initrd_modules=$1
shift 2

# A test guest never reads documentation or translations; leaving them out
# keeps the image, and so every guest's boot disk, about a quarter smaller.
cat > /etc/dpkg/dpkg.cfg.d/vfnic-no-docs <<'CFG'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/lintian/*
CFG

# Services must not start inside the build chroot (opa-fm, rdma-core...).
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d

apt_install() {
    apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "$@"
}
apt-get update -q

# initramfs-tools first, so that its configuration is in place when the
# kernel's postinst builds the initrd: only the listed modules (not the
# "most" set, which is ~10x larger and slower to unpack under TCG), and no
# resume-device probing, which waits for a swap partition that never comes.
# (Guests boot with vfnic's own initrd by default, images/initrd.py; this one
# is the conventional alternative.)
apt_install initramfs-tools
cat > /etc/initramfs-tools/conf.d/vfnic.conf <<'CFG'
MODULES=list
RESUME=none
FSTYPE=ext4
COMPRESS=gzip
CFG
for module in $initrd_modules; do
    echo "$module"
done >> /etc/initramfs-tools/modules

apt_install "$@"

echo vfnic-guest > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tvfnic-guest\n' > /etc/hosts
echo '/dev/vda / ext4 rw,noatime 0 0' > /etc/fstab
passwd -d root >/dev/null
rm -f /usr/sbin/policy-rc.d
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
