# shellcheck shell=dash
# herd base image: the appliance configuration steps of /sbin/init, kept in
# their own file for size. Sourced by /sbin/init (installed as
# /lib/herd/config.sh) before the root switches to the overlay, so it always
# comes from the base image. Uses init's log/warn/err/trim, $RUN, $DISK,
# $CFG (the data disk's config/ dir), $MODE, $DATA_DEV, $DISK_SERIAL.
# shellcheck disable=SC2034  # HNAME/SERVICES/NET_* are read by init

# ---------------------------------------------------------------------------
# Configuration from the data disk's config/ directory.
# ---------------------------------------------------------------------------

root_writable() { [ "$MODE" != stateless ]; }

# apply_etc: copy config/etc/ over /etc at every boot, so the disk is the
# source of truth (a file edited in /etc but also in config/etc reverts at
# the next boot). Files end up owned by root with their own mode bits;
# identical files are skipped so the overlay is not rewritten each boot.
apply_etc() {
	_src=$CFG/etc
	[ -d "$_src" ] || return 0
	if ! root_writable; then
		warn "config/etc not applied: the root is read-only"
		return 0
	fi
	(cd "$_src" && find . -mindepth 1) | while IFS= read -r _p; do
		_p=${_p#./}
		_s=$_src/$_p _t=/etc/$_p
		if [ -d "$_s" ] && ! [ -h "$_s" ]; then
			if ! [ -d "$_t" ] || [ -h "$_t" ]; then
				rm -rf "$_t"
				mkdir -p "$_t"
			fi
			chmod "$(stat -c %a "$_s")" "$_t"
		elif [ -f "$_s" ] && ! [ -h "$_s" ] && ! [ -h "$_t" ] && cmp -s "$_s" "$_t" &&
			[ "$(stat -c %a "$_s")" = "$(stat -c '%a' "$_t")" ]; then
			continue
		else
			rm -rf "$_t"
			cp -a "$_s" "$_t" || err "config/etc/$_p: copy failed"
		fi
		chown -h 0:0 "$_t"
	done
	log "config/etc applied ($(cd "$_src" && find . -mindepth 1 | wc -l) entries)"
}

# apply_hostname: config/hostname, else the hostname field of ip=, else the
# data disk's serial (herd sets it to the image's file stem), else
# /etc/hostname, else "herd".
apply_hostname() {
	HNAME=
	_from=
	if [ -s "$CFG/hostname" ]; then
		HNAME=$(head -n 1 "$CFG/hostname")
		_from=config/hostname
	elif _ip=$(herd_param ip) && _ip=$(echo "$_ip" | cut -s -d: -f5) && [ -n "$_ip" ]; then
		HNAME=$_ip
		_from="ip= on the kernel command line"
	elif [ -n "$DISK_SERIAL" ]; then
		HNAME=$DISK_SERIAL
		_from="disk serial"
	elif [ -s /etc/hostname ]; then
		HNAME=$(head -n 1 /etc/hostname)
		_from=/etc/hostname
	fi
	trim HNAME
	case "$HNAME" in
	'' | -* | *[!A-Za-z0-9.-]*)
		[ -n "$_from" ] && warn "$_from: bad hostname '$HNAME' (letters, digits, . and - only); using herd"
		HNAME=herd _from=
		;;
	esac
	hostname "$HNAME"
	log "hostname $HNAME${_from:+ (from $_from)}"
}

# read_network: parse config/network (KEY=VALUE lines, # comments). The
# file is parsed, never sourced: a bad line is reported and skipped.
read_network() {
	NET_IFACE=eth0 NET_ADDRESS='' NET_GATEWAY='' NET_DNS='' NET_SEARCH='' NET_MTU=''
	[ -f "$CFG/network" ] || return 1
	_n=0
	while IFS= read -r _line || [ -n "$_line" ]; do
		_n=$((_n + 1))
		trim _line
		case "$_line" in '' | '#'*) continue ;; esac
		case "$_line" in
		[A-Z]*=*) ;;
		*)
			warn "config/network:$_n: not KEY=VALUE, ignored: $_line"
			continue
			;;
		esac
		_k=${_line%%=*} _v=${_line#*=}
		trim _v
		case "$_v" in \"*\" | \'*\') _v=${_v#?} _v=${_v%?} ;; esac
		case "$_k" in
		IFACE) NET_IFACE=$_v ;;
		ADDRESS) NET_ADDRESS=$_v ;;
		GATEWAY) NET_GATEWAY=$_v ;;
		DNS) NET_DNS=$(echo "$_v" | tr -s ', ' '  ') ;;
		SEARCH) NET_SEARCH=$(echo "$_v" | tr -s ', ' '  ') ;;
		MTU) NET_MTU=$_v ;;
		*) warn "config/network:$_n: unknown key $_k, ignored" ;;
		esac
	done <"$CFG/network"
}

# apply_network: config/network replaces whatever ip= autoconfigured on
# IFACE; without the file the kernel's ip= result is kept untouched.
apply_network() {
	read_network || {
		log "network: no config/network; keeping the kernel's ip= setup"
		return 0
	}
	if ! [ -e "/sys/class/net/$NET_IFACE" ]; then
		err "config/network: no interface $NET_IFACE (have: $(cd /sys/class/net && echo *))"
		return 1
	fi
	[ -n "$NET_MTU" ] && { ip link set "$NET_IFACE" mtu "$NET_MTU" || err "config/network: MTU=$NET_MTU rejected"; }
	ip link set "$NET_IFACE" up || err "cannot bring $NET_IFACE up"
	if [ -n "$NET_ADDRESS" ]; then
		case "$NET_ADDRESS" in */*) ;; *) warn "config/network: ADDRESS=$NET_ADDRESS has no /prefix; using /32" ;; esac
		ip addr flush dev "$NET_IFACE"
		ip addr add "$NET_ADDRESS" dev "$NET_IFACE" || err "config/network: ADDRESS=$NET_ADDRESS rejected"
	fi
	if [ -n "$NET_GATEWAY" ]; then
		ip route replace default via "$NET_GATEWAY" dev "$NET_IFACE" ||
			err "config/network: GATEWAY=$NET_GATEWAY rejected"
	fi
	log "network $NET_IFACE address=${NET_ADDRESS:-none} gateway=${NET_GATEWAY:-none} dns=${NET_DNS:-none}"
}

# write_generated FILE CONTENT_FILE: /etc/hosts and /etc/resolv.conf are
# symlinks into /run/herd in the herd base, so they are regenerated each
# boot without touching the root. If a base (or a private copy) has a real
# writable file instead, it is rewritten in place.
write_generated() {
	if [ -h "/etc/$1" ]; then
		cp "$2" "$RUN/$1"
	elif root_writable && [ -f "/etc/$1" ]; then
		cp "$2" "/etc/$1"
	else
		warn "/etc/$1 is not writable; not updated"
	fi
}

# apply_hosts_resolv: /etc/hosts = localhost + hostname + config/hosts;
# /etc/resolv.conf = DNS/SEARCH from config/network, else the nameservers
# of the kernel's ip= autoconfiguration (/proc/net/pnp).
apply_hosts_resolv() {
	_ip=${NET_ADDRESS%%/*}
	{
		printf '127.0.0.1\tlocalhost\n'
		printf '%s\t%s\n' "${_ip:-127.0.1.1}" "$HNAME"
		if [ -f "$CFG/hosts" ]; then
			echo "# from the data disk's config/hosts"
			cat "$CFG/hosts"
		fi
	} >"$RUN/hosts.new"
	write_generated hosts "$RUN/hosts.new"
	{
		if [ -n "$NET_DNS" ]; then
			[ -n "$NET_SEARCH" ] && echo "search $NET_SEARCH"
			for _s in $NET_DNS; do echo "nameserver $_s"; done
		elif [ -r /proc/net/pnp ]; then
			grep -E '^(nameserver|domain|search) ' /proc/net/pnp
		fi
	} >"$RUN/resolv.conf.new"
	write_generated resolv.conf "$RUN/resolv.conf.new"
	rm -f "$RUN/hosts.new" "$RUN/resolv.conf.new"
}

# mount_data: the disk's data/ at /data (read-only if the disk is).
mount_data() {
	[ -d "$DISK/data" ] || return 0
	mkdir -p /data 2>/dev/null
	if mount --bind "$DISK/data" /data; then
		log "data/ mounted at /data"
	else
		err "cannot bind-mount data/ at /data"
	fi
}

# ---------------------------------------------------------------------------
# Services: config/services, one `NAME COMMAND...` per line.
# ---------------------------------------------------------------------------

# supervise NAME COMMAND: run COMMAND (sh -c, in /, stdin /dev/null) with
# its output prefixed "NAME: " on the console; restart it when it exits,
# after a delay that doubles (up to 30 s) while it keeps dying within 10 s.
supervise() {
	untrap
	_name=$1 _cmd=$2 _delay=1
	exec 4>&1
	while ! [ -e "$RUN/stopping" ]; do
		_t0=$(date +%s)
		# ash has no PIPESTATUS: the status leaves through fd 3.
		_st=$({ {
			cd / && PATH=$SYSTEM_PATH /bin/sh -c "$_cmd" </dev/null 2>&1 3>&- 4>&-
			echo "$?" >&3
		} | awk -v p="$_name: " '{ print p $0; fflush() }' >&4 3>&- 4>&-; } 3>&1)
		[ -e "$RUN/stopping" ] && break
		if [ $(($(date +%s) - _t0)) -ge 10 ]; then _delay=1; fi
		log "service $_name exited with status ${_st:-?}, restarting in ${_delay}s"
		sleep "$_delay"
		_delay=$((_delay * 2))
		[ $_delay -gt 30 ] && _delay=30
	done
}

# start_services: config/services, then the image's default services
# (/etc/herd/services, same format) whose names config/services does not
# define: a line there with the same NAME replaces the image's command.
# No services in stateless mode (no data disk: inspection only).
start_services() {
	SERVICES=0
	mkdir -p "$RUN/services"
	[ -f "$CFG/services" ] && start_service_file "$CFG/services" config/services
	[ "$MODE" != stateless ] && [ -f /etc/herd/services ] &&
		start_service_file /etc/herd/services /etc/herd/services
}

# start_service_file FILE LABEL
start_service_file() {
	_n=0
	while IFS= read -r _line || [ -n "$_line" ]; do
		_n=$((_n + 1))
		trim _line
		case "$_line" in '' | '#'*) continue ;; esac
		_name=${_line%%[ 	]*}
		_cmd=${_line#"$_name"}
		trim _cmd
		case "$_name" in
		*[!A-Za-z0-9_.-]*)
			warn "$2:$_n: bad service name '$_name' (letters, digits, _ . -), ignored"
			continue
			;;
		esac
		if [ -z "$_cmd" ]; then
			warn "$2:$_n: service $_name has no command, ignored"
			continue
		fi
		if [ -e "$RUN/services/$_name" ]; then
			if [ "$2" = config/services ]; then
				warn "$2:$_n: service $_name defined twice, ignored"
			else
				log "service $_name: the image's default is replaced by config/services"
			fi
			continue
		fi
		supervise "$_name" "$_cmd" </dev/null &
		echo "$!" >"$RUN/services/$_name"
		log "service $_name started: $_cmd"
		SERVICES=$((SERVICES + 1))
	done <"$1"
}

