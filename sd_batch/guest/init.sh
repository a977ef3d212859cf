#!/bin/sh
# sd-batch minimal guest: /init of the initramfs (busybox sh). The contract: CONTRACT.md.
#
# Service mode (no input disk): a pool VM. Wait for the ACPI power button that libvirt's
#   dom.shutdown() presses, then power off.
# Job mode (an input disk): unpack the sandbox, run the payload as user `job`, write a result tar
#   onto the raw output disk, power off.
# Text from the input disk is never evaluated: argv and environment arrive as NUL-terminated
# entries read into "$@" with `read -d ''`, and reach the payload through execve only.
# The same file runs as helper for acpid (--power-button) and for find (--collect).
# The debian-batch guest runs this file from a full Debian root (full.py), with busybox and its
# applets in a private folder: SD_BATCH_BIN names that folder, SD_BATCH_SELF this script's
# launcher (defaults: the minimal initramfs's /bin and /init).

BIN=${SD_BATCH_BIN:-/bin}
SELF=${SD_BATCH_SELF:-/init}
PATH=$BIN
export PATH
RUN=/run/sd-batch          # our own scratch: mode, catalogue, exit status
OUT=$RUN/result            # what becomes the result tar
IN=$RUN/in                 # the unpacked input tar
SANDBOX=/sandbox
JOB_USER=job
JOB_PATH=/usr/local/bin:/usr/bin:/bin

uptime_s() {
	read -r up _ < /proc/uptime
	echo "$up"
}

log() {
	echo "sd-batch: $* [$(uptime_s)s]"
	if [ -d "$OUT" ]; then echo "$*" >> "$OUT/guest.log"; fi
}

power_off() {
	log "powering off"
	sync
	poweroff -f
	sleep 10   # poweroff -f returns only if the platform has no ACPI: let the kernel panic
	exit 1
}

# ---------------------------------------------------------------- boot

mount_basics() {
	"$BIN/busybox" mount -t proc proc /proc
	"$BIN/busybox" --install -s "$BIN"
	mount -t sysfs sysfs /sys
	mount -t devtmpfs devtmpfs /dev
	exec </dev/console >/dev/console 2>&1
	chmod 755 /   # the kernel makes the initramfs root world-writable (1777)
	mkdir -p "$RUN" "$OUT"
}

load_modules() {
	[ -f /lib/modules/load-order ] || return 0   # a full root: its initramfs loaded them
	failed=
	xen=no
	if [ "$(cat /sys/hypervisor/type 2>/dev/null)" = xen ]; then xen=yes; fi
	while read -r mod; do
		# Xen frontends only on Xen (loading one elsewhere costs 0.1 s for nothing)
		case $mod in xen_*) [ "$xen" = yes ] || continue ;; esac
		insmod "/lib/modules/$mod.ko" 2>/dev/null || failed="$failed $mod"
	done < /lib/modules/load-order
	if [ -n "$failed" ]; then log "warning: modules that did not load:$failed"; fi
}

# Disk drivers probe asynchronously (always on Xen): wait until every block device the bus
# announced has its /sys/.../block entry, so "no input disk" really means service mode.
settle_disks() {
	tries=0
	while [ "$tries" -lt 100 ]; do
		pending=0
		for dev in /sys/bus/virtio/devices/*; do
			[ -r "$dev/device" ] || continue
			if [ "$(cat "$dev/device")" = 0x0002 ] && [ ! -d "$dev/block" ]; then pending=1; fi
		done
		for dev in /sys/bus/xen/devices/vbd-*; do
			if [ -e "$dev" ] && [ ! -d "$dev/block" ]; then pending=1; fi
		done
		[ "$pending" = 0 ] && return 0
		sleep 0.1
		tries=$((tries + 1))
	done
	log "warning: some disks did not appear within 10 s"
}

# Set INDEV and OUTDEV (names under /dev) from the disk serials, or, where disks have no
# serial (Xen), from the first sector: the input tar's first member name or the output magic.
find_disks() {
	INDEV=
	OUTDEV=
	for sys in /sys/block/*; do
		dev=${sys##*/}
		case $dev in loop* | ram* | zram* | sr* | fd* | dm-* | md* | nbd*) continue ;; esac
		[ -b "/dev/$dev" ] || continue
		serial=
		if [ -r "$sys/serial" ]; then serial=$(cat "$sys/serial" 2>/dev/null); fi
		role=
		case $serial in
		sd-input) role=input ;;
		sd-output) role=output ;;
		*)
			head=$(dd if="/dev/$dev" bs=512 count=1 2>/dev/null | head -c 18 | tr -d '\000')
			case $head in
			SD-BATCH-INPUT-V1) role=input ;;
			SD-BATCH-OUTPUT-V1) role=output ;;
			esac
			;;
		esac
		if [ "$role" = input ]; then
			if [ -n "$INDEV" ]; then log "warning: second input disk $dev ignored"; else INDEV=$dev; fi
		elif [ "$role" = output ]; then
			if [ -n "$OUTDEV" ]; then log "warning: second output disk $dev ignored"; else OUTDEV=$dev; fi
		fi
	done
}

# busybox acpid runs <confdir>/PWRF/00000080 when the power button (libvirt's shutdown) fires.
start_acpid() {
	mkdir -p /etc/acpi/PWRF
	printf '#!%s/sh\nexec %s --power-button\n' "$BIN" "$SELF" > /etc/acpi/PWRF/00000080
	chmod 755 /etc/acpi/PWRF/00000080
	acpid -c /etc/acpi -l "$RUN/acpid.log" -p "$RUN/acpid.pid"
}

# acpid's helper: in a pool VM tell PID 1 to power off; in a job VM stop the payload (it then
# ends as `signal 15` and its result is written as usual).
power_button() {
	if [ "$(cat "$RUN/mode" 2>/dev/null)" = job ]; then
		: > "$RUN/stop-requested"
		echo "sd-batch: power button: sending SIGTERM to the job" > /dev/console
		su -s "$BIN/sh" "$JOB_USER" -c 'kill -s TERM -1' 2>/dev/null
	else
		kill -s TERM 1
	fi
}

# ---------------------------------------------------------------- service mode

service_mode() {
	echo service > "$RUN/mode"
	# busybox poweroff/halt/reboot signal PID 1 with USR2/USR1/TERM: honour them all.
	trap 'log "shutdown requested"; power_off' TERM USR1 USR2
	start_acpid
	log "ready (service mode)"
	while :; do
		sleep 86400 &
		wait $!
	done
}

# ---------------------------------------------------------------- job mode

# Record a setup failure, write what we have, power off.
fail() {
	log "error: $*"
	echo "$*" >> "$OUT/error"
	write_result
	power_off
}

unpack_input() {
	mkdir -p "$IN"
	tar -x -o -f "/dev/$INDEV" -C "$IN" || fail "cannot unpack the input disk /dev/$INDEV as a tar"
	[ -f "$IN/SD-BATCH-INPUT-V1" ] || fail "the input disk has no SD-BATCH-INPUT-V1 member"
	[ -s "$IN/meta/argv" ] || fail "the input disk has no command to run (meta/argv is empty)"
	if [ -d "$IN/sandbox" ]; then mv "$IN/sandbox" "$SANDBOX"; else mkdir "$SANDBOX"; fi
	chown -R -h "$JOB_USER:$JOB_USER" "$SANDBOX"
	CWD=.
	if [ -f "$IN/meta/cwd" ]; then IFS= read -r -d '' CWD < "$IN/meta/cwd"; fi
	case "/$CWD/" in
	//* | */../*) fail "working directory '$CWD' is not a relative path inside the sandbox" ;;
	esac
	[ -d "$SANDBOX/$CWD" ] || fail "working directory '$CWD' does not exist in the sandbox"
	# The catalogue of what the job was given: inode and change time (ns) of every entry.
	# ctime cannot be set by the job, so anything changed or new shows up in collect.
	(cd "$SANDBOX" && find . -exec stat -c '%i %z' {} +) > "$RUN/before"
}

# Run the payload: time(1) -> su (uid/gid/groups of `job`) -> env -i (exactly the manifest's
# environment over a few defaults) -> execvp(argv). Nothing but execve sees the user's text.
run_payload() {
	set -- su -p -s "$BIN/env" "$JOB_USER" -- -i "PATH=$JOB_PATH" HOME=/home/job \
		"USER=$JOB_USER" "LOGNAME=$JOB_USER" SHELL=/bin/sh TMPDIR=/tmp
	if [ -f "$IN/meta/env" ]; then
		while IFS= read -r -d '' entry; do
			case $entry in
			?*=*) set -- "$@" "$entry" ;;
			*) log "warning: environment entry without NAME= ignored" ;;
			esac
		done < "$IN/meta/env"
	fi
	while IFS= read -r -d '' arg; do set -- "$@" "$arg"; done < "$IN/meta/argv"
	log "job starting in $SANDBOX/$CWD"
	cd "$SANDBOX/$CWD" || fail "cannot enter the working directory '$CWD'"
	[ -e "$RUN/stop-requested" ] && fail "the VM was shut down before the job started"
	time -o "$RUN/status" -f 'sd-exit=%x' "$@" </dev/null >"$OUT/stdout" 2>"$OUT/stderr"
	cd /
	# Whatever the job left running in the background ends with it.
	su -s "$BIN/sh" "$JOB_USER" -c 'kill -s KILL -1' 2>/dev/null
	[ -f "$RUN/status" ] || fail "the payload's exit status was not recorded"
	sig=$(sed -n 's/^Command terminated by signal \([0-9]*\)$/\1/p' "$RUN/status")
	if [ -n "$sig" ]; then
		STATUS="signal $sig"
	else
		STATUS="exit $(sed -n 's/^sd-exit=\([0-9]*\)$/\1/p' "$RUN/status")"
	fi
	echo "$STATUS" > "$OUT/exit_status"
	log "job finished: $STATUS"
}

# find -exec helper: of the paths given (./x/y, relative to the sandbox), hard-link into
# $OUT/outputs those whose "inode ctime" line is not in the catalogue. stat prints one line per
# path, in order, so the n-th changed line number is the n-th argument: no names are parsed.
collect() {
	stat -c '%i %z' -- "$@" > "$RUN/batch" 2>/dev/null
	if [ "$(wc -l < "$RUN/batch")" -ne "$#" ]; then
		for path; do   # a path vanished: slower, one stat each
			line=$(stat -c '%i %z' -- "$path" 2>/dev/null) || continue
			grep -q -x -F -e "$line" "$RUN/before" || take "$path"
		done
		return 0
	fi
	# the catalogue holds at least "." so grep -f never gets an empty pattern list
	grep -n -v -x -F -f "$RUN/before" "$RUN/batch" | cut -d: -f1 > "$RUN/changed"
	n=1
	while read -r want; do
		while [ "$n" -lt "$want" ]; do
			shift
			n=$((n + 1))
		done
		take "$1"
	done < "$RUN/changed"
}

take() {
	dst="$OUT/outputs/${1#./}"
	if [ -L "$1" ]; then
		mkdir -p "${dst%/*}" && cp -a "$1" "$dst"
	elif [ -f "$1" ]; then
		mkdir -p "${dst%/*}" && { ln "$1" "$dst" 2>/dev/null || cp -a "$1" "$dst"; }
	elif [ -d "$1" ]; then
		mkdir -p "$dst"
	fi   # fifos and sockets are not outputs
}

collect_outputs() {
	mkdir -p "$OUT/outputs"
	(cd "$SANDBOX" && find . -mindepth 1 -exec "$SELF" --collect {} +)
}

result_members() {
	for m in SD-BATCH-RESULT-V1 exit_status error stdout stderr guest.log outputs; do
		if [ -e "$OUT/$m" ]; then echo "$m"; fi
	done
}

result_size() {
	# shellcheck disable=SC2046  # member names are ours, without spaces
	(cd "$OUT" && tar -cf - $(result_members) | wc -c)
}

# Write the result tar onto the raw output disk, never past its end: if it does not fit, drop
# outputs/, then keep only the tails of stdout/stderr, then only the status and the error.
write_result() {
	if [ -z "$OUTDEV" ]; then
		log "error: no output disk (serial sd-output or magic SD-BATCH-OUTPUT-V1): no result"
		return 1
	fi
	cap=$(($(cat "/sys/block/$OUTDEV/size") * 512))
	echo "sd-batch job result, format 1" > "$OUT/SD-BATCH-RESULT-V1"
	size=$(result_size)
	if [ "$size" -gt "$cap" ]; then
		log "result of $size bytes does not fit the $cap-byte output disk"
		echo "result of $size bytes exceeds the output disk ($cap bytes): outputs/ dropped" >> "$OUT/error"
		rm -rf "$OUT/outputs"
		keep=$(((cap - 65536) / 2))
		[ "$keep" -lt 0 ] && keep=0
		for f in stdout stderr; do
			if [ -f "$OUT/$f" ] && [ "$(wc -c < "$OUT/$f")" -gt "$keep" ]; then
				tail -c "$keep" "$OUT/$f" > "$OUT/$f.tail" && mv "$OUT/$f.tail" "$OUT/$f"
				echo "$f truncated to its last $keep bytes" >> "$OUT/error"
			fi
		done
		size=$(result_size)
		if [ "$size" -gt "$cap" ]; then rm -f "$OUT/stdout" "$OUT/stderr" "$OUT/guest.log"; fi
		size=$(result_size)
	fi
	if [ "$size" -gt "$cap" ]; then
		log "error: the output disk ($cap bytes) is too small even for an error report"
		return 1
	fi
	# shellcheck disable=SC2046
	(cd "$OUT" && tar -cf "/dev/$OUTDEV" $(result_members)) || { log "error: writing /dev/$OUTDEV failed"; return 1; }
	sync
	log "result: $size bytes on /dev/$OUTDEV"
}

job_mode() {
	echo job > "$RUN/mode"
	start_acpid
	log "job mode: input /dev/$INDEV, output /dev/${OUTDEV:-?}"
	if [ -n "$OUTDEV" ] && [ "$(cat "/sys/block/$OUTDEV/ro")" != 0 ]; then
		log "error: the output disk /dev/$OUTDEV is read-only"
		OUTDEV=
	fi
	[ -n "$OUTDEV" ] || { write_result; power_off; }
	unpack_input
	run_payload
	collect_outputs
	write_result
	power_off
}

# ---------------------------------------------------------------- main

if [ "$$" != 1 ]; then
	case $1 in
	--power-button) power_button ;;
	--collect)
		shift
		collect "$@"
		;;
	*)
		echo "/init is the sd-batch guest's init; only the kernel runs it" >&2
		exit 2
		;;
	esac
	exit 0
fi

mount_basics
log "init started"
load_modules
settle_disks
find_disks
if [ -n "$INDEV" ]; then job_mode; else service_mode; fi
