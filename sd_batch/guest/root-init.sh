#!/bin/sh
# sd-batch debian-batch guest: /init of its initramfs (busybox sh), built by full.py.
# Loads the disk, console, ACPI and ext4 modules (lib/modules/load-order), mounts the ext4 root
# disk named by `root=/dev/...` on the kernel command line read-write, and hands PID 1 over to
# the job runner in that root: `init=` (default /usr/local/sbin/sd-batch-init, which runs the
# minimal guest's init.sh with busybox). Any failure powers the VM off: the host then finds its
# output disk untouched and reads this console.

PATH=/bin
export PATH
NEWROOT=/newroot

say() {
	read -r up _ < /proc/uptime
	echo "sd-batch: $* [${up}s]"
}

die() {
	say "error: $*; powering off"
	sync
	poweroff -f
	sleep 10
	exit 1
}

/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say "loading the root disk's drivers"

xen=no
if [ "$(cat /sys/hypervisor/type 2>/dev/null)" = xen ]; then xen=yes; fi
failed=
while read -r mod; do
	case $mod in xen_*) [ "$xen" = yes ] || continue ;; esac
	insmod "/lib/modules/$mod.ko" 2>/dev/null || failed="$failed $mod"
done < /lib/modules/load-order
if [ -n "$failed" ]; then say "warning: modules that did not load:$failed"; fi

root=
init=/usr/local/sbin/sd-batch-init
for word in $(cat /proc/cmdline); do
	case $word in
	root=/dev/*) root=${word#root=} ;;
	init=/*) init=${word#init=} ;;
	esac
done
[ -n "$root" ] || die "no root=/dev/... on the kernel command line"

tries=0
while [ ! -b "$root" ]; do
	[ "$tries" -lt 100 ] || die "the root disk $root did not appear within 10 s"
	sleep 0.1
	tries=$((tries + 1))
done
mkdir -p "$NEWROOT"
mount -t ext4 -o rw,noatime "$root" "$NEWROOT" || die "cannot mount $root (ext4) on $NEWROOT"
[ -x "$NEWROOT$init" ] || die "the root disk $root has no $init"
say "root $root mounted, starting $init"
umount /dev /sys /proc
exec switch_root "$NEWROOT" "$init"
