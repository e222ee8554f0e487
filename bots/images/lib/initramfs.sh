# Building initramfs trees: busybox, binaries with their shared libraries, cpio packing.
# Needs common.sh.

# copy_binary DEST FILE...: copy each FILE and the shared libraries ldd lists for it (the dynamic
# loader /lib64/ld-linux-x86-64.so.2 included) to the same paths under DEST.
copy_binary() {
    local dest=$1 f lib
    shift
    for f in "$@"; do
        [ -f "$f" ] || die "$f not found"
        install -D -m 0755 "$f" "$dest$f"
        # "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)";
        # static binaries make ldd fail, which is fine
        for lib in $(ldd "$f" 2>/dev/null | awk '$3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
            [ -e "$dest$lib" ] || install -D -m 0755 "$lib" "$dest$lib"
        done
    done
}

# busybox_install DEST: /bin/busybox with a symlink for every applet at its usual path
# (bin/sh, sbin/init, usr/bin/timeout, ...), plus the directories every root needs.
busybox_install() {
    local dest=$1 applet
    [ -x /bin/busybox ] || die "/bin/busybox not found: busybox-static is not installed (run bots/install-deps)"
    copy_binary "$dest" /bin/busybox
    for applet in $(/bin/busybox --list-full); do
        case $applet in
            */*) mkdir -p "$dest/${applet%/*}" ;;
            *) continue ;;      # linuxrc
        esac
        [ -e "$dest/$applet" ] || ln -s /bin/busybox "$dest/$applet"
    done
    mkdir -p "$dest"/{dev,proc,sys,run,tmp,root,etc,var/log}
    chmod 1777 "$dest/tmp"
    chmod 0700 "$dest/root"
    ln -sfn ../run "$dest/var/run"
}

# cpio_pack DIR OUT: DIR as a gzip-compressed newc initramfs, every file owned by root.
cpio_pack() {
    local dir=$1 out=$2
    need_cmd cpio cpio
    {
        (cd "$dir" && find . -mindepth 1 | sort | cpio --quiet -o -H newc -R 0:0 --reproducible)
        cpio_console_node
    } | gzip -n >"$out"
}

# cpio_console_node: a second newc archive holding only the character device dev/console (5:1).
# The kernel opens it for init's stdin/stdout/stderr before devtmpfs is mounted, and unpacks
# concatenated archives; writing the entry by hand spares the build a root-only mknod.
cpio_console_node() {
    newc_header 1 $((8#20600)) 5 1 dev/console
    printf '\0\0'                       # 110-byte header + 12-byte name, padded to 124
    newc_header 0 0 0 0 'TRAILER!!!'
    printf '\0\0\0'                     # 110 + 11, padded to 124
}

# newc_header INO MODE RDEVMAJOR RDEVMINOR NAME: a newc header for an empty file, and its name.
# Fields (8 hex digits each): ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
# rdevminor namesize check.
newc_header() {
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\0' \
        "$1" "$2" 0 0 1 0 0 0 0 "$3" "$4" "$((${#5} + 1))" 0 "$5"
}
