#!/bin/sh
# Fetches the static berth agent from a berth server and runs it, for hosts
# and images where bind-mounting the agent is impractical. POSIX sh; needs
# curl or wget (busybox's will do).
#
#   BERTH_URL=http://berth.internal:7878 BERTH_TOKEN=... \
#     agent-wrapper.sh --socket /.berth/run/agent.sock --root /workspace
#
# BERTH_URL      the berth server (required unless BERTH_AGENT_URL is set)
# BERTH_TOKEN    the server's token, if it asks for one; removed from the
#                environment before the agent starts, so no command in the
#                workspace ever sees it
# BERTH_AGENT_URL  the full download URL, overriding BERTH_URL
# BERTH_AGENT_PATH where to keep the agent (default /tmp/berth-agent); an
#                existing executable there is reused
set -eu

arch=$(uname -m)
url=${BERTH_AGENT_URL:-${BERTH_URL:?set BERTH_URL to the berth server, e.g. http://berth:7878}/v1/agent/binary?arch=$arch}
dest=${BERTH_AGENT_PATH:-/tmp/berth-agent}
token=${BERTH_TOKEN:-}
unset BERTH_TOKEN

if [ ! -x "$dest" ]; then
    part="$dest.part.$$"
    trap 'rm -f "$part"' EXIT
    if command -v curl >/dev/null 2>&1; then
        # The header comes from stdin, so the token is not in curl's argv.
        if [ -n "$token" ]; then
            printf 'Authorization: Bearer %s\n' "$token" |
                curl -fsSL -H @- -o "$part" "$url"
        else
            curl -fsSL -o "$part" "$url"
        fi
    elif command -v wget >/dev/null 2>&1; then
        # wget takes headers only as arguments; nothing else runs in the
        # workspace yet to see them.
        if [ -n "$token" ]; then
            wget -q --header "Authorization: Bearer $token" -O "$part" "$url"
        else
            wget -q -O "$part" "$url"
        fi
    else
        echo "agent-wrapper.sh: need curl or wget to fetch $url" >&2
        exit 127
    fi
    chmod 0755 "$part"
    mv "$part" "$dest"
    trap - EXIT
fi
token=
exec "$dest" "$@"
