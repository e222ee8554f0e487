# Debian's kernel for the guests: download, extract and decompress once into $VMCHECK_CACHE;
# list modules with their dependencies. Needs common.sh.

# kernel_fetch: make sure the package that linux-image-amd64 depends on (the current kernel of
# the host's Debian release) is unpacked in $VMCHECK_CACHE/kernel/PACKAGE_VERSION, with
# modules.dep and an uncompressed vmlinux, and set
#   KVER      the kernel version (6.1.0-56-amd64)
#   KROOT     the unpacked package, read-only for recipes ($KROOT/lib/modules/$KVER)
#   KVMLINUX  the kernel for $VMCHECK_OUT/vmlinux
kernel_fetch() {
    local cache=$VMCHECK_CACHE/kernel pkg ver dir tmp
    need_cmd apt-get apt
    need_cmd dpkg-deb dpkg
    need_cmd xz xz-utils
    need_cmd depmod kmod
    need_cmd modprobe kmod

    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" { print $2; exit }')
    [ -n "$pkg" ] || die "apt knows no package linux-image-amd64: check the host's apt sources, run apt-get update"
    ver=$(apt-cache show --no-all-versions "$pkg" | awk '$1 == "Version:" { print $2; exit }')
    [ -n "$ver" ] || die "apt has no version of $pkg to download"
    dir=$cache/${pkg}_$ver

    if [ ! -f "$dir/vmlinux" ]; then
        log "downloading and unpacking $pkg $ver"
        mkdir -p "$cache"
        find "$cache" -maxdepth 1 -name '*.tmp.*' -mmin +60 -exec rm -rf {} +    # killed builds
        tmp=$(mktemp -d "$dir.tmp.XXXXXX")
        chmod 0755 "$tmp"
        kernel_unpack "$tmp" "$pkg=$ver" || { rm -rf "$tmp"; die "could not download or unpack $pkg $ver"; }
        mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"       # lost a race with another build
    fi
    KROOT=$dir/root
    KVER=$(basename "$KROOT"/lib/modules/*)
    # shellcheck disable=SC2034 # used by the recipes
    KVMLINUX=$dir/vmlinux
}

# kernel_unpack DIR PACKAGE=VERSION: download and unpack into DIR/root, run depmod (the package
# ships no modules.dep: its postinst makes it), decompress the kernel into DIR/vmlinux.
# Returns non-zero on failure (set -e is off in callers' "||" context).
kernel_unpack() {
    local dir=$1 kver
    if ! (cd "$dir" && apt-get download "$2" >log 2>&1); then
        cat "$dir/log" >&2
        log "apt-get download $2 failed (is the host's apt index current? run apt-get update)"
        return 1
    fi
    dpkg-deb -x "$dir"/*.deb "$dir/root" || return 1
    rm -f "$dir"/*.deb "$dir/log"
    set -- "$dir"/root/lib/modules/*/kernel
    if [ $# != 1 ] || [ ! -d "$1" ]; then
        log "expected one /lib/modules/VERSION/kernel directory"
        return 1
    fi
    kver=$(basename "$(dirname "$1")")
    depmod -b "$dir/root" "$kver" || return 1
    extract_vmlinux "$dir/root/boot/vmlinuz-$kver" "$dir/vmlinux"
}

# extract_vmlinux BZIMAGE OUT: the ELF kernel inside an xz-compressed bzImage (CONFIG_KERNEL_XZ).
# QEMU boots the ELF through its PVH entry note, which under TCG saves ~3.7 s of real-mode
# setup and in-guest decompression. Like the kernel's scripts/extract-vmlinux, try every xz magic.
extract_vmlinux() {
    local bzimage=$1 out=$2 off
    # shellcheck disable=SC2013 # "offset:match" lines have no spaces
    for off in $(grep -obUaP '\xfd7zXZ\x00' "$bzimage" | cut -d: -f1); do
        if xz -dc --single-stream <(tail -c "+$((off + 1))" "$bzimage") >"$out" 2>/dev/null &&
            [ "$(od -An -tx1 -N4 "$out" | tr -d ' ')" = 7f454c46 ]; then
            return 0
        fi
    done
    rm -f "$out"
    log "no xz-compressed ELF kernel found in $bzimage"
    return 1
}

# modules_install DEST MODULE...: copy MODULEs and everything they depend on (modprobe's
# resolution, softdeps included) into DEST/lib/modules/$KVER, and list their paths in load order
# in DEST/etc/modules.load for the guest's init to insmod (busybox insmod resolves nothing).
modules_install() {
    local dest=$1 m ko
    shift
    mkdir -p "$dest/etc"
    for m in "$@"; do
        modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" || die "kernel $KVER has no module $m"
    done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' | while read -r ko; do
        ko=${ko#"$KROOT"}
        install -D -m 0644 "$KROOT$ko" "$dest$ko"
        printf '%s\n' "$ko"
    done >"$dest/etc/modules.load"
}
