#!/usr/bin/env bash
# Builds the tern-edge release binary for a gateway target without Docker, and with
# --package the installable artefacts.
#
#   firmware-targets/build.sh TARGET [--package]
#
# TARGET: aarch64-unknown-linux-musl, armv7-unknown-linux-musleabihf,
#         armv7-unknown-linux-gnueabihf, x86_64-unknown-linux-musl
#
# Installs what is missing: the rustup target (for the toolchain pinned by
# rust-toolchain.toml) and zig + cargo-zigbuild (prebuilt PyPI wheels, versions from
# requirements-zig.txt) into firmware-targets/.venv (or $FW_VENV). Builds with
# `cargo zigbuild --release --locked -p tern-edge` into the cargo target directory
# (target/ unless CARGO_TARGET_DIR says otherwise), checks the binary is for the right
# machine (and static for musl), and prints its size. With --package it writes to
# <target-dir>/firmware/:
#   tern-edge-VERSION-TARGET.tar.gz   binary, profiles, systemd unit, OpenWrt procd
#                                     script, install.sh and README.md
#   tern-edge_VERSION-1_ARCH.deb      for Debian-family systems (dpkg-deb only)
# The last line printed is the path of the binary (or of the tarball with --package).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

usage() {
	sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

target=""
package=0
for arg in "$@"; do
	case "$arg" in
	--package) package=1 ;;
	-h | --help) usage ;;
	-*)
		echo "build.sh: unknown option $arg" >&2
		usage
		;;
	*)
		[ -z "$target" ] || usage
		target="$arg"
		;;
	esac
done
[ -n "$target" ] || usage

# Per target: the zig target cargo-zigbuild links for, the Debian architecture, the ELF
# machine readelf reports, and whether the binary must be static.
case "$target" in
aarch64-unknown-linux-musl)
	zig_target="$target" deb_arch=arm64 elf_machine=AArch64 static=1
	;;
armv7-unknown-linux-musleabihf)
	zig_target="$target" deb_arch=armhf elf_machine=ARM static=1
	;;
armv7-unknown-linux-gnueabihf)
	# Dynamically linked against glibc; zig links against the glibc 2.17 symbol set
	# (Rust's own minimum), so it runs on any armhf Debian/Raspberry Pi OS since 2013.
	zig_target="$target.2.17" deb_arch=armhf elf_machine=ARM static=0
	;;
x86_64-unknown-linux-musl)
	zig_target="$target" deb_arch=amd64 elf_machine=X86-64 static=1
	;;
*)
	echo "build.sh: unsupported target '$target'" >&2
	usage
	;;
esac

step() { printf '== %s\n' "$*" >&2; }

# --- toolchain -------------------------------------------------------------------------

# The rust-std of TARGET for the toolchain that rust-toolchain.toml pins (rustup
# resolves it from the working directory, the repository root).
if ! rustup target list --installed | grep -qx "$target"; then
	step "rustup target add $target"
	if ! rustup target add "$target"; then
		echo "build.sh: rustup could not install rust-std for $target." >&2
		if [ "$target" = armv7-unknown-linux-musleabihf ]; then
			echo "build.sh: build armv7-unknown-linux-gnueabihf instead (see firmware-targets/README.md)." >&2
		fi
		exit 1
	fi
fi

# zig and cargo-zigbuild in a venv of their own; reinstalled only when
# requirements-zig.txt changes.
venv="${FW_VENV:-$here/.venv}"
stamp="$venv/.requirements-zig.txt"
if [ ! -x "$venv/bin/cargo-zigbuild" ] || ! cmp -s "$here/requirements-zig.txt" "$stamp"; then
	step "installing zig and cargo-zigbuild into $venv"
	python3 -m venv "$venv"
	"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
		-r "$here/requirements-zig.txt"
	cp "$here/requirements-zig.txt" "$stamp"
fi
# cargo-zigbuild finds zig as `python3 -m ziglang` through the venv's python3.
export PATH="$venv/bin:$PATH"

# --- build -----------------------------------------------------------------------------

step "cargo zigbuild --release --locked -p tern-edge --target $zig_target"
cargo zigbuild --release --locked -p tern-edge --target "$zig_target"

metadata="$(cargo metadata --format-version 1 --no-deps --locked)"
target_dir="$(printf '%s' "$metadata" | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
version="$(cargo pkgid -p tern-edge)"
version="${version##*[#@]}"
bin="$target_dir/$target/release/tern-edge"
[ -x "$bin" ] || {
	echo "build.sh: no binary at $bin" >&2
	exit 1
}

if command -v readelf >/dev/null 2>&1; then
	machine="$(readelf -h "$bin" | sed -n 's/^ *Machine: *//p')"
	case "$machine" in
	*"$elf_machine"*) ;;
	*)
		echo "build.sh: $bin is for '$machine', expected $elf_machine" >&2
		exit 1
		;;
	esac
	if readelf -l "$bin" | grep -q INTERP; then
		linking="dynamic ($(readelf -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | paste -sd ' ' -))"
		if [ "$static" -eq 1 ]; then
			echo "build.sh: $bin is dynamically linked; a musl build must be static" >&2
			exit 1
		fi
	else
		linking="static"
	fi
else
	linking="unchecked (no readelf)"
fi

bytes="$(stat -c %s "$bin")"
printf 'tern-edge %s %s: %s bytes (%s MiB), %s, stripped\n' "$version" "$target" "$bytes" \
	"$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')" "$linking" >&2

if [ "$package" -eq 0 ]; then
	echo "$bin"
	exit 0
fi

# --- package ---------------------------------------------------------------------------

out="$target_dir/firmware"
name="tern-edge-$version-$target"
stage="$out/stage/$target"
rm -rf "$stage"
mkdir -p "$stage" "$out"
# Reproducible archives: every file gets the commit's time, root ownership.
epoch="${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}"
pkg="$here/packaging"

# The tarball: a directory with the binary, the profiles as /etc/tern-edge/ defaults,
# both service flavours, the installer and its README.
tree="$stage/$name"
install -D -m 0755 "$bin" "$tree/tern-edge"
install -D -m 0644 "$root/profiles/edge-gateway.toml" "$tree/etc/tern-edge/edge-gateway.toml"
install -D -m 0644 "$root/profiles/edge-minimal.toml" "$tree/etc/tern-edge/edge-minimal.toml"
install -D -m 0644 "$pkg/tern-edge.service" "$tree/systemd/tern-edge.service"
install -D -m 0644 "$pkg/tern-edge.default" "$tree/systemd/tern-edge.default"
install -D -m 0755 "$pkg/openwrt/tern-edge.init" "$tree/openwrt/tern-edge.init"
install -D -m 0644 "$pkg/openwrt/tern-edge.config" "$tree/openwrt/tern-edge.config"
install -D -m 0755 "$pkg/install.sh" "$tree/install.sh"
sed -e "s|@VERSION@|$version|g" -e "s|@TARGET@|$target|g" -e "s|@LINKING@|$linking|g" \
	"$pkg/INSTALL.md" >"$tree/README.md"
find "$tree" -exec touch -h -d "@$epoch" {} +
tarball="$out/$name.tar.gz"
tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
	-cf - "$name" | gzip -9n >"$tarball"

# The .deb, with nothing but dpkg-deb: static musl binaries run on any Debian-family
# system of the architecture; the gnueabihf one needs glibc >= 2.17.
deb_root="$stage/deb"
install -D -m 0755 "$bin" "$deb_root/usr/bin/tern-edge"
install -D -m 0644 "$root/profiles/edge-gateway.toml" "$deb_root/etc/tern-edge/edge-gateway.toml"
install -D -m 0644 "$root/profiles/edge-minimal.toml" "$deb_root/etc/tern-edge/edge-minimal.toml"
install -D -m 0644 "$pkg/tern-edge.default" "$deb_root/etc/default/tern-edge"
install -D -m 0644 "$pkg/tern-edge.service" "$deb_root/lib/systemd/system/tern-edge.service"
install -D -m 0644 "$tree/README.md" "$deb_root/usr/share/doc/tern-edge/README.md"
license="$(sed -n 's/^license *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)"
printf 'tern-edge: Copyright the Tern developers. License: %s\n' "${license:-see the source}" \
	>"$deb_root/usr/share/doc/tern-edge/copyright"
install -d -m 0755 "$deb_root/DEBIAN"
for script in postinst prerm postrm; do
	install -m 0755 "$pkg/debian/$script" "$deb_root/DEBIAN/$script"
done
printf '%s\n' /etc/default/tern-edge /etc/tern-edge/edge-gateway.toml \
	/etc/tern-edge/edge-minimal.toml >"$deb_root/DEBIAN/conffiles"
# postinst needs useradd (passwd); the glibc build needs glibc >= 2.17.
depends="passwd"
if [ "$static" -eq 0 ]; then
	depends="libc6 (>= 2.17), $depends"
fi
installed_kib="$(du -sk --exclude=DEBIAN "$deb_root" | cut -f1)"
{
	echo "Package: tern-edge"
	echo "Version: $version-1"
	echo "Architecture: $deb_arch"
	echo "Maintainer: Tern developers <tern@example.invalid>"
	echo "Installed-Size: $installed_kib"
	echo "Depends: $depends"
	echo "Section: net"
	echo "Priority: optional"
	echo "Description: Tern edge MQTT broker for gateways"
	echo " tern-edge is an MQTT 3.1.1/5.0 broker for IoT gateways: devices connect over"
	echo " MQTT; the broker keeps sessions and retained messages and will forward to a"
	echo " Tern cloud over QUIC. Built for $target ($linking)."
	echo " Runs as the system user tern-edge with its data in /var/lib/tern-edge."
} >"$deb_root/DEBIAN/control"
find "$deb_root" -exec touch -h -d "@$epoch" {} +
deb="$out/tern-edge_${version}-1_${deb_arch}.deb"
SOURCE_DATE_EPOCH="$epoch" dpkg-deb --root-owner-group -Zxz --build "$deb_root" "$deb" >/dev/null
rm -rf "$stage"
rmdir "$out/stage" 2>/dev/null || true

printf 'package: %s (%s bytes)\n' "$deb" "$(stat -c %s "$deb")" >&2
printf 'package: %s (%s bytes)\n' "$tarball" "$(stat -c %s "$tarball")" >&2
echo "$tarball"
