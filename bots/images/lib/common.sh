# Sourced first by every recipe: strict mode, messages, and checks of what vmcheck passes in
# (the contract is bots/images/README.md).

set -euo pipefail
PATH=$PATH:/usr/sbin:/sbin      # depmod, mkfs.ext4, dropbear, debootstrap for non-root callers
export LC_ALL=C

# log MESSAGE / die MESSAGE: progress and fatal errors on stderr, prefixed with the recipe name.
log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# need_cmd COMMAND PACKAGE: fail unless COMMAND (from the Debian package PACKAGE) is installed.
need_cmd() {
    command -v "$1" >/dev/null || die "$1 not found: $2 is not installed (run bots/install-deps)"
}

# need_root WHY: fail unless running as root.
need_root() {
    [ "$(id -u)" = 0 ] || die "must run as root: $1"
}

# check_env: every VMCHECK_* variable is set and points at what it should.
check_env() {
    local v
    for v in VMCHECK_OUT VMCHECK_CACHE VMCHECK_AUTHORIZED_KEY VMCHECK_HOST_KEY \
        VMCHECK_READY_MARKER VMCHECK_LIB; do
        [ -n "${!v:-}" ] || die "$v is not set (recipes are run by 'vmcheck image build'; see bots/images/README.md)"
    done
    [ -d "$VMCHECK_OUT" ] || die "VMCHECK_OUT=$VMCHECK_OUT is not a directory"
    [ -f "$VMCHECK_AUTHORIZED_KEY" ] || die "VMCHECK_AUTHORIZED_KEY=$VMCHECK_AUTHORIZED_KEY does not exist"
    [ -f "$VMCHECK_HOST_KEY" ] || die "VMCHECK_HOST_KEY=$VMCHECK_HOST_KEY does not exist"
    grep -q '^ssh-ed25519 ' "$VMCHECK_HOST_KEY.pub" 2>/dev/null ||
        die "$VMCHECK_HOST_KEY.pub is missing or not an ed25519 public key"
    case $VMCHECK_READY_MARKER in
        *$'\n'*) die "VMCHECK_READY_MARKER must be a single line" ;;
    esac
    mkdir -p "$VMCHECK_CACHE"
}

# write_image_toml CMDLINE MEMORY_MIB LOG [DISK]: $VMCHECK_OUT/image.toml (see the README).
write_image_toml() {
    {
        printf 'cmdline = "%s"\n' "$1"
        printf 'memory_mib = %d\n' "$2"
        [ -z "${4:-}" ] || printf 'disk = "%s"\n' "$4"
        printf 'log = "%s"\n' "$3"
    } >"$VMCHECK_OUT/image.toml"
}

# debian_mirror: the Debian archive URI this host's apt uses (first "deb" source of a plain
# release suite such as "bookworm", not -security/-updates). Never write it into the repository.
debian_mirror() {
    local uri
    uri=$(awk '
        function flush() {
            if (uri == "" && types ~ /(^| )deb( |$)/ && suites ~ /(^| )[a-z]+( |$)/) uri = first
            types = suites = first = ""
        }
        FNR == 1 || /^[ \t]*$/ { flush() }
        tolower($1) == "types:"  { $1 = ""; types = $0 }
        tolower($1) == "suites:" { $1 = ""; suites = $0 }
        tolower($1) == "uris:"   { first = $2 }
        END { flush(); if (uri != "") print uri }' /dev/null /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    if [ -z "$uri" ]; then
        uri=$(awk '
            { sub(/\[[^]]*\]/, "") }
            $1 == "deb" && $3 ~ /^[a-z]+$/ { print $2; exit }' /dev/null /etc/apt/sources.list \
            /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    fi
    [ -n "$uri" ] || die "no Debian mirror found in the host's apt configuration (/etc/apt/sources.list.d/*.sources, /etc/apt/sources.list)"
    printf '%s\n' "$uri"
}
