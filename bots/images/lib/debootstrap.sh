# A Debian tree from debootstrap, cached as a tarball. Needs common.sh; runs as root.

# debootstrap_cached SUITE PACKAGES DEST: a minbase SUITE plus the comma-separated PACKAGES,
# unpacked into DEST. The first build with a given SUITE and PACKAGES runs debootstrap (~40 s)
# against the host's Debian mirror and keeps the result in $VMCHECK_CACHE/debootstrap; later
# builds only unpack it (delete the tarball to pick up new package versions).
# While debootstrap runs, an EXIT trap undoes its mounts and processes if the build fails.
debootstrap_cached() {
    local suite=$1 packages=$2 dest=$3 key tarball tree
    key=$(printf '%s minbase %s\n' "$suite" "$packages" | sha256sum | cut -c1-16)
    tarball=$VMCHECK_CACHE/debootstrap/$suite-$key.tar.zst
    need_cmd zstd zstd

    if [ ! -f "$tarball" ]; then
        need_cmd debootstrap debootstrap
        tree=$PWD/debootstrap-tree
        rm -rf "$tree"
        log "debootstrap $suite with $packages (log: $PWD/debootstrap.log)"
        # shellcheck disable=SC2064 # expand $tree now
        trap "chroot_cleanup '$tree'" EXIT
        if ! debootstrap --variant=minbase --include="$packages" "$suite" "$tree" "$(debian_mirror)" \
            >debootstrap.log 2>&1; then
            tail -n 20 debootstrap.log >&2
            die "debootstrap $suite failed"
        fi
        chroot_cleanup "$tree"
        trap - EXIT
        rm -f "$tree"/var/cache/apt/archives/*.deb
        mkdir -p "${tarball%/*}"
        find "${tarball%/*}" -maxdepth 1 -name '*.tmp.*' -mmin +60 -delete    # killed builds
        tar -C "$tree" --numeric-owner --xattrs --xattrs-include='*' -cf - . |
            zstd -q -T0 -o "$tarball.tmp.$$"
        mv "$tarball.tmp.$$" "$tarball"
        rm -rf "$tree"
    fi

    mkdir -p "$dest"
    zstd -dc "$tarball" | tar -C "$dest" --numeric-owner --xattrs --xattrs-include='*' -xf -
}

# chroot_cleanup DIR: kill every process whose root is DIR and detach every mount below it, so
# that nothing keeps running and deleting DIR cannot reach into the host's /proc, /sys or /dev.
chroot_cleanup() {
    local dir pid mnt
    dir=$(realpath "$1" 2>/dev/null) || return 0
    for pid in /proc/[0-9]*; do
        if [ "$(readlink "$pid/root" 2>/dev/null)" = "$dir" ]; then
            kill -KILL "${pid#/proc/}" 2>/dev/null || true
        fi
    done
    awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r mnt; do umount -l "$mnt" || true; done
}
