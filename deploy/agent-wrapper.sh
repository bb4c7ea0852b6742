#!/bin/sh
# Fetches the static berth agent from a berth server and runs it, for hosts
# and images where bind-mounting the agent is impractical. POSIX sh; needs
# curl or wget (busybox's will do).
#
#   BERTH_URL=http://berth.internal:7433 BERTH_TOKEN=... \
#     agent-wrapper.sh --socket /.berth/run/agent.sock --root /workspace
#
# BERTH_URL      the berth server (required unless BERTH_AGENT_URL is set)
# BERTH_TOKEN    the server's token, if it asks for one; removed from the
#                environment before the agent starts, so no command in the
#                workspace ever sees it
# BERTH_AGENT_URL  the full download URL, overriding BERTH_URL
# BERTH_AGENT_PATH where to keep the agent (default /tmp/berth-agent); an
#                existing executable there is reused
#
# When sha256sum exists, the download is checked against the SHA-256 the
# server sends (the x-berth-agent-sha256 header) and refused if it differs.
set -eu

arch=$(uname -m)
url=${BERTH_AGENT_URL:-${BERTH_URL:?set BERTH_URL to the berth server, e.g. http://berth:7433}/v1/agent/binary?arch=$arch}
dest=${BERTH_AGENT_PATH:-/tmp/berth-agent}
token=${BERTH_TOKEN:-}
unset BERTH_TOKEN

# The value of the x-berth-agent-sha256 header in a saved response head
# (curl -D, or wget -S, which indents it), in plain sh: the tools to parse
# it may be missing.
checksum_in() {
    sum=
    cr=$(printf '\r')
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line%"$cr"}
        line=${line#"${line%%[! ]*}"}
        case $line in
            [Xx]-[Bb][Ee][Rr][Tt][Hh]-[Aa][Gg][Ee][Nn][Tt]-[Ss][Hh][Aa]256:*)
                sum=${line#*:}
                sum=${sum#"${sum%%[! ]*}"}
                ;;
        esac
    done <"$1"
    printf '%s' "$sum"
}

if [ ! -x "$dest" ]; then
    part="$dest.part.$$"
    head="$dest.head.$$"
    trap 'rm -f "$part" "$head"' EXIT
    if command -v curl >/dev/null 2>&1; then
        # The header comes from stdin, so the token is not in curl's argv.
        if [ -n "$token" ]; then
            printf 'Authorization: Bearer %s\n' "$token" |
                curl -fsSL -H @- -D "$head" -o "$part" "$url"
        else
            curl -fsSL -D "$head" -o "$part" "$url"
        fi
    elif command -v wget >/dev/null 2>&1; then
        # wget takes headers only as arguments; nothing else runs in the
        # workspace yet to see them. -S writes the response head to
        # stderr, with any error.
        fetched=0
        if [ -n "$token" ]; then
            wget -q -S --header "Authorization: Bearer $token" -O "$part" "$url" 2>"$head" || fetched=$?
        else
            wget -q -S -O "$part" "$url" 2>"$head" || fetched=$?
        fi
        if [ "$fetched" != 0 ]; then
            while IFS= read -r line; do printf '%s\n' "$line" >&2; done <"$head"
            echo "agent-wrapper.sh: cannot fetch $url" >&2
            exit "$fetched"
        fi
    else
        echo "agent-wrapper.sh: need curl or wget to fetch $url" >&2
        exit 127
    fi
    expected=$(checksum_in "$head")
    if command -v sha256sum >/dev/null 2>&1; then
        if [ -z "$expected" ]; then
            echo "agent-wrapper.sh: $url sent no x-berth-agent-sha256 header; the download is not verified" >&2
        else
            actual=$(sha256sum "$part")
            actual=${actual%% *}
            if [ "$actual" != "$expected" ]; then
                echo "agent-wrapper.sh: the agent from $url is corrupt: its SHA-256 is $actual, the server says $expected" >&2
                exit 1
            fi
        fi
    fi
    chmod 0755 "$part"
    mv "$part" "$dest"
    rm -f "$head"
    trap - EXIT
fi
token=
exec "$dest" "$@"
