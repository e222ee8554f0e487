# What every guest gets from vmcheck's inputs: root's authorized key, the SSH host key, the ready
# marker, and its name and network basics. Needs common.sh.

# install_authorized_key ROOT: $VMCHECK_AUTHORIZED_KEY as ROOT/root/.ssh/authorized_keys.
install_authorized_key() {
    install -d -m 0700 "$1/root" "$1/root/.ssh"
    install -m 0600 "$VMCHECK_AUTHORIZED_KEY" "$1/root/.ssh/authorized_keys"
}

# install_openssh_host_key ROOT: $VMCHECK_HOST_KEY as the only host key in ROOT/etc/ssh.
install_openssh_host_key() {
    rm -f "$1"/etc/ssh/ssh_host_*
    install -D -m 0600 "$VMCHECK_HOST_KEY" "$1/etc/ssh/ssh_host_ed25519_key"
    install -m 0644 "$VMCHECK_HOST_KEY.pub" "$1/etc/ssh/ssh_host_ed25519_key.pub"
}

# install_dropbear_host_key FILE: $VMCHECK_HOST_KEY converted to dropbear's format.
install_dropbear_host_key() {
    need_cmd dropbearconvert dropbear-bin
    mkdir -p "$(dirname "$1")"
    dropbearconvert openssh dropbear "$VMCHECK_HOST_KEY" "$1" >/dev/null 2>&1 ||
        die "dropbearconvert could not convert $VMCHECK_HOST_KEY"
    chmod 0600 "$1"
}

# install_ready_marker ROOT: $VMCHECK_READY_MARKER in ROOT/etc/vmcheck/ready-marker, for the
# guest to copy to /dev/ttyS0 once its SSH server listens.
install_ready_marker() {
    install -d "$1/etc/vmcheck"
    printf '%s\n' "$VMCHECK_READY_MARKER" >"$1/etc/vmcheck/ready-marker"
}

# install_identity ROOT HOSTNAME: hostname, hosts, and resolv.conf pointing at QEMU's user-mode
# DNS (10.0.2.3), which answers only if the host can resolve names.
install_identity() {
    printf '%s\n' "$2" >"$1/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$2" >"$1/etc/hosts"
    rm -f "$1/etc/resolv.conf"
    printf 'nameserver 10.0.2.3\n' >"$1/etc/resolv.conf"
}
