#!/usr/bin/env bash
# A stampede fleet on one machine, made of network namespaces: a coordinator,
# a target and N agents, each in its own namespace with its own address,
# joined by a bridge that lives in a dedicated hub namespace. The host's own
# interfaces, routes and firewall are never touched.
#
#                         P-hub (bridge br0)
#        ┌──────────────┬───────┴───────┬──────────────┐
#     P-coord        P-target        P-agent1  ...  P-agentN
#   198.18.0.1      198.18.0.2      198.18.0.11    198.18.0.(10+N)
#
# Addresses come from 198.18.0.0/15 (RFC 2544, reserved for benchmarking), so
# nothing here can reach or shadow a real host.
#
# Usage (as root):
#   fleet.sh up N [--prefix P]           create the namespaces, print the addresses
#   fleet.sh down [--prefix P]           kill their processes, delete them (idempotent)
#   fleet.sh exec [--prefix P] NAME -- CMD...
#                                        run CMD inside P-NAME (NAME: coord, target,
#                                        agentK, hub) or inside the namespace NAME
#   fleet.sh status [--prefix P]         list the namespaces and their addresses
#
# The prefix defaults to $FLEET_PREFIX, else `stp-fleet`. See README.md next
# to this script for a walk-through.

set -Eeuo pipefail

NET=198.18.0
COORD_ADDR=$NET.1
TARGET_ADDR=$NET.2
AGENT_BASE=10 # agentK gets $NET.(AGENT_BASE + K)
MAX_AGENTS=200
BRIDGE=br0
# Every member namespace sees its end of the link under this name.
MEMBER_DEV=eth0

die() {
    echo "fleet.sh: $*" >&2
    exit 2
}

usage() {
    sed -n '/^# Usage/,/^# The prefix/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

need_root() {
    [ "$(id -u)" = 0 ] || die "needs root (network namespaces): run it with sudo"
    command -v ip >/dev/null || die "\`ip\` (iproute2) is not installed"
}

check_prefix() {
    [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$ ]] || die "bad prefix \`$1\`: letters, digits, \`_\`, \`.\`, \`-\`; at most 40 characters"
}

# Every namespace that belongs to fleet P (exact names, nothing else).
members() {
    local p=$1 ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        if [ "$ns" = "$p-hub" ] || [ "$ns" = "$p-coord" ] || [ "$ns" = "$p-target" ]; then
            echo "$ns"
        elif [[ $ns == "$p-agent"* && ${ns#"$p-agent"} =~ ^[0-9]+$ ]]; then
            echo "$ns"
        fi
    done
}

# The address of a member namespace's short name (coord, target, agentK).
addr_of() {
    case "$1" in
        coord) echo "$COORD_ADDR" ;;
        target) echo "$TARGET_ADDR" ;;
        agent*) echo "$NET.$((AGENT_BASE + ${1#agent}))" ;;
    esac
}

# Kills every process inside namespace $1: TERM, up to 2 s, then KILL.
# Only positive pids are ever passed to kill(1).
kill_inside() {
    local ns=$1 pid i
    local pids
    pids=$(ip netns pids "$ns" 2>/dev/null | grep -E '^[0-9]+$' || true)
    [ -n "$pids" ] || return 0
    for pid in $pids; do
        [ "$pid" -gt 1 ] && kill -TERM "$pid" 2>/dev/null || true
    done
    for i in $(seq 1 20); do
        pids=$(ip netns pids "$ns" 2>/dev/null | grep -E '^[0-9]+$' || true)
        [ -n "$pids" ] || return 0
        sleep 0.1
    done
    for pid in $pids; do
        [ "$pid" -gt 1 ] && kill -KILL "$pid" 2>/dev/null || true
    done
}

down() {
    local p=$1 ns
    local list
    list=$(members "$p")
    for ns in $list; do
        kill_inside "$ns"
    done
    # Deleting a namespace deletes its end of each veth pair, and the peer
    # with it; the hub's deletion takes the bridge. Qdiscs and nft tables
    # live inside the namespaces and go with them.
    for ns in $list; do
        ip netns del "$ns" 2>/dev/null || true
    done
    if [ -n "$(members "$p")" ]; then
        die "could not delete: $(members "$p" | tr '\n' ' ')"
    fi
    [ -z "$list" ] || echo "fleet $p: down"
}

# One member: namespace P-NAME, veth NAME (hub side, on the bridge) <-> eth0.
add_member() {
    local p=$1 name=$2 addr=$3 ns="$1-$2"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # Created inside the hub, its peer moved straight into the member: no
    # interface ever appears in the host's namespace.
    ip -n "$p-hub" link add "$name" type veth peer name "$MEMBER_DEV" netns "$ns"
    ip -n "$p-hub" link set "$name" master "$BRIDGE" up
    ip -n "$ns" addr add "$addr/24" dev "$MEMBER_DEV"
    ip -n "$ns" link set "$MEMBER_DEV" up
}

up() {
    local n=$1 p=$2 k
    [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le "$MAX_AGENTS" ] || die "N must be 1-$MAX_AGENTS, not \`$n\`"
    if [ -n "$(members "$p")" ]; then
        die "fleet $p already exists ($(members "$p" | tr '\n' ' ')); run \`$0 down --prefix $p\` first"
    fi
    # A failure half-way removes what was made.
    trap 'echo "fleet.sh: up failed; removing what was made" >&2; down "$p" >/dev/null 2>&1 || true' ERR
    ip netns add "$p-hub"
    ip -n "$p-hub" link set lo up
    ip -n "$p-hub" link add "$BRIDGE" type bridge
    ip -n "$p-hub" link set "$BRIDGE" up
    add_member "$p" coord "$COORD_ADDR"
    add_member "$p" target "$TARGET_ADDR"
    for k in $(seq 1 "$n"); do
        add_member "$p" "agent$k" "$(addr_of "agent$k")"
    done
    trap - ERR
    echo "fleet $p: up, $n agent(s), bridge $BRIDGE in $p-hub"
    status "$p"
}

status() {
    local p=$1 ns short
    local list
    list=$(members "$p")
    if [ -z "$list" ]; then
        echo "fleet $p: no namespaces"
        return 0
    fi
    # coord, target, then the agents in numeric order.
    local agents
    agents=$(for ns in $list; do if [[ $ns == "$p-agent"* ]]; then echo "${ns#"$p-agent"}"; fi; done | sort -n)
    printf '%-28s %-16s %s\n' NAMESPACE ADDRESS ROLE
    for short in coord target $(for k in $agents; do echo "agent$k"; done); do
        ns="$p-$short"
        grep -Fxq "$ns" <<<"$list" || continue
        printf '%-28s %-16s %s\n' "$ns" "$(addr_of "$short")" "${short%%[0-9]*}"
    done
}

run_exec() {
    local p=$1 name=$2
    shift 2
    local ns
    if [ -n "$(members "$p" | grep -Fx "$p-$name" || true)" ]; then
        ns="$p-$name"
    elif ip netns list 2>/dev/null | awk '{print $1}' | grep -Fxq "$name"; then
        ns=$name
    else
        die "no namespace \`$p-$name\` (or \`$name\`); is the fleet up? (\`$0 status --prefix $p\`)"
    fi
    [ $# -gt 0 ] || die "exec: no command after \`--\`"
    exec ip netns exec "$ns" "$@"
}

main() {
    [ $# -ge 1 ] || usage
    local cmd=$1
    shift
    local prefix=${FLEET_PREFIX:-stp-fleet}
    local args=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --prefix)
                [ $# -ge 2 ] || die "--prefix needs a value"
                prefix=$2
                shift 2
                ;;
            --prefix=*)
                prefix=${1#--prefix=}
                shift
                ;;
            --)
                shift
                args+=(--)
                args+=("$@")
                break
                ;;
            -h | --help) usage ;;
            *)
                args+=("$1")
                shift
                ;;
        esac
    done
    check_prefix "$prefix"
    case "$cmd" in
        up)
            [ ${#args[@]} -eq 1 ] || die "usage: $0 up N [--prefix P]"
            need_root
            up "${args[0]}" "$prefix"
            ;;
        down)
            [ ${#args[@]} -eq 0 ] || die "usage: $0 down [--prefix P]"
            need_root
            down "$prefix"
            ;;
        status)
            need_root
            status "$prefix"
            ;;
        exec)
            [ ${#args[@]} -ge 3 ] && [ "${args[1]}" = -- ] || die "usage: $0 exec [--prefix P] NAME -- CMD..."
            need_root
            run_exec "$prefix" "${args[0]}" "${args[@]:2}"
            ;;
        -h | --help | help) usage ;;
        *) die "unknown command \`$cmd\` (up, down, exec, status)" ;;
    esac
}

main "$@"
