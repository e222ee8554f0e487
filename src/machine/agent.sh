# vmcheck's guest agent (see src/machine/agent.rs): started once over SSH before a booted
# snapshot is saved, so that every machine restored from it finds it waiting on its
# virtio-serial port. Shell builtins only on the way of a request: under TCG every program
# started costs milliseconds.
#
# A request is a line `NONCE VERB [COUNT]`, then COUNT lines of shell code:
#   NONCE ping          answered by `NONCE pong`;
#   NONCE run COUNT     the code runs in a subshell, stdin /dev/null, stdout the port; then
#                       `\nNONCE 1\n`, its stderr, `\nNONCE 2 STATUS\n`;
#   NONCE talk COUNT    the code runs in a subshell with the port as its stdin and stdout
#                       (stderr too), for a conversation; then `\nNONCE = STATUS\n`.
# Anything else (an empty line: the ticks a conversation's code did not read) is skipped.
p=
k=
for d in /sys/class/virtio-ports/vport*; do
    read -r x <"$d/name" || continue
    case $x in
    org.vmcheck.agent.0) p=/dev/${d##*/} ;;
    org.vmcheck.kmsg.0) k=/dev/${d##*/} ;;
    esac
done
[ -c "$p" ] || exit 3
# The kernel's log, record by record, to the host (kmsg.rs). A copier that fell behind the
# ring fails, and starts again from its oldest record (the host skips the repeats).
if [ -c "$k" ]; then
    while :; do
        cat /dev/kmsg
        sleep 1
    done <&- >"$k" 2>/dev/null &
fi
unset SSH_CLIENT SSH_CONNECTION SSH_TTY SSH_AUTH_SOCK
e=/run/vmcheck-agent.err
exec <>"$p" >&0 2>/dev/null
while IFS= read -r l; do
    n=${l%% *}
    l=${l#"$n"}
    l=${l# }
    v=${l%% *}
    k=${l#"$v"}
    k=${k# }
    case $v in
    ping) printf '%s pong\n' "$n"; continue ;;
    run | talk) ;;
    *) continue ;;
    esac
    case $k in '' | *[!0-9]*) continue ;; esac
    c=
    i=0
    while [ "$i" -lt "$k" ] && IFS= read -r x; do
        c="$c$x
"
        i=$((i + 1))
    done
    if [ "$v" = run ]; then
        (eval "$c") </dev/null 2>"$e"
        r=$?
        printf '\n%s 1\n' "$n"
        [ ! -s "$e" ] || cat "$e"
        printf '\n%s 2 %s\n' "$n" "$r"
    else
        (eval "$c") 2>&1
        r=$?
        printf '\n%s = %s\n' "$n" "$r"
    fi
done
