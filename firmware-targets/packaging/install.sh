#!/bin/sh
# Installs tern-edge from this unpacked tarball onto the machine it runs on (as root):
# the binary to /usr/bin, the profiles to /etc/tern-edge/ (existing ones are kept), the
# service (systemd unit, or the procd init script and UCI file on OpenWrt), the system
# user `tern-edge` and its data directory /var/lib/tern-edge.
#
#   ./install.sh [--start] [--systemd|--openwrt|--no-service]
#
# --start enables and starts the service. The init system is detected (OpenWrt by
# /etc/openwrt_release, else systemd by /run/systemd/system). With DESTDIR=/some/dir
# the files go under that directory and no user, service or daemon is touched (for
# image builders). Creates an empty password file /etc/tern-edge/auth/passwd if there
# is none (the profiles refuse anonymous clients). POSIX sh: busybox ash, dash, bash.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
dest=${DESTDIR:-}
start=0
init=auto

for arg in "$@"; do
	case "$arg" in
	--start) start=1 ;;
	--systemd) init=systemd ;;
	--openwrt) init=openwrt ;;
	--no-service) init=none ;;
	-h | --help)
		sed -n "2,13p" "$0"
		exit 0
		;;
	*)
		echo "install.sh: unknown argument: $arg (see --help)" >&2
		exit 2
		;;
	esac
done

if [ "$init" = auto ]; then
	if [ -f /etc/openwrt_release ]; then
		init=openwrt
	elif [ -d /run/systemd/system ] || [ -n "$dest" ]; then
		init=systemd
	else
		init=none
	fi
fi

if [ -z "$dest" ] && [ "$(id -u)" -ne 0 ]; then
	echo "install.sh: run as root (or set DESTDIR to stage the files)" >&2
	exit 1
fi

say() { printf 'install.sh: %s\n' "$*"; }

# put SRC DST MODE: copy a file, creating the directory.
put() {
	mkdir -p "$(dirname "$2")"
	cp "$1" "$2.tmp.$$"
	chmod "$3" "$2.tmp.$$"
	mv -f "$2.tmp.$$" "$2"
	say "installed $2"
}

# keep SRC DST MODE: like put, but an existing DST (maybe edited) is kept and the new
# file is written beside it as DST.new.
keep() {
	if [ -e "$2" ]; then
		if cmp -s "$1" "$2"; then
			return 0
		fi
		put "$1" "$2.new" "$3"
		say "kept your $2; the shipped version is $2.new"
	else
		put "$1" "$2" "$3"
	fi
}

# The binary, replaced atomically (a running broker keeps its old inode until restart).
put "$here/tern-edge" "$dest/usr/bin/tern-edge" 0755
for profile in "$here"/etc/tern-edge/*.toml; do
	keep "$profile" "$dest/etc/tern-edge/$(basename "$profile")" 0644
done

case "$init" in
systemd)
	put "$here/systemd/tern-edge.service" "$dest/etc/systemd/system/tern-edge.service" 0644
	keep "$here/systemd/tern-edge.default" "$dest/etc/default/tern-edge" 0644
	;;
openwrt)
	put "$here/openwrt/tern-edge.init" "$dest/etc/init.d/tern-edge" 0755
	keep "$here/openwrt/tern-edge.config" "$dest/etc/config/tern-edge" 0644
	;;
none) say "no init system chosen: start /usr/bin/tern-edge yourself" ;;
esac

if [ -n "$dest" ]; then
	mkdir -p "$dest/var/lib/tern-edge"
	say "staged under $dest; create the user tern-edge on the target"
	exit 0
fi

# The system user and its data directory.
if ! id tern-edge >/dev/null 2>&1; then
	if [ "$init" = openwrt ] && [ -f /lib/functions.sh ]; then
		# shellcheck disable=SC1091
		. /lib/functions.sh
		gid=$(group_add_next tern-edge)
		user_add tern-edge "" "$gid" tern-edge /var/lib/tern-edge /bin/false
	elif command -v useradd >/dev/null 2>&1; then
		nologin=/usr/sbin/nologin
		[ -x "$nologin" ] || nologin=/bin/false
		useradd --system --user-group --home-dir /var/lib/tern-edge --no-create-home \
			--shell "$nologin" --comment "Tern edge broker" tern-edge
	elif command -v adduser >/dev/null 2>&1; then
		# busybox: -S system user, -D no password, -H no home directory.
		addgroup -S tern-edge
		adduser -S -D -H -h /var/lib/tern-edge -s /bin/false -G tern-edge tern-edge
	else
		echo "install.sh: cannot create user tern-edge (no useradd or adduser)" >&2
		exit 1
	fi
	say "created system user tern-edge"
fi
group=$(id -g tern-edge)
mkdir -p /var/lib/tern-edge /etc/tern-edge/auth
chown "tern-edge:$group" /var/lib/tern-edge /etc/tern-edge/auth
chmod 0750 /var/lib/tern-edge /etc/tern-edge/auth
# The password file the service reads (auth.password_file), empty: no user can log in
# until one is added. tern-edge owns its directory, so `tern-edge passwd` run as
# tern-edge replaces it atomically.
if [ ! -e /etc/tern-edge/auth/passwd ]; then
	: >/etc/tern-edge/auth/passwd
	chown "tern-edge:$group" /etc/tern-edge/auth/passwd
	chmod 0600 /etc/tern-edge/auth/passwd
fi

case "$init" in
systemd)
	if [ ! -d /run/systemd/system ]; then
		say "systemd is not running here: enable tern-edge.service where it is"
	elif [ "$start" -eq 1 ]; then
		systemctl daemon-reload
		systemctl enable tern-edge
		systemctl restart tern-edge
		systemctl --no-pager status tern-edge || true
	else
		systemctl daemon-reload
		say "add a user: sudo -u tern-edge tern-edge passwd add /etc/tern-edge/auth/passwd NAME"
		say "start it with: systemctl enable --now tern-edge"
	fi
	;;
openwrt)
	if [ "$start" -eq 1 ]; then
		/etc/init.d/tern-edge enable
		/etc/init.d/tern-edge restart
	else
		say "add a user: /etc/init.d/tern-edge passwd add NAME"
		say "start it with: /etc/init.d/tern-edge enable && /etc/init.d/tern-edge start"
	fi
	;;
esac
