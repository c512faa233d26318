#!/usr/bin/env bash
# Installs what the benchmark runs besides itself, from apt: wrk (the load generator)
# and nginx (the reference reverse proxy). Does nothing when both are present.
set -euo pipefail

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    need+=(nginx-light)
fi
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi
echo "installing ${need[*]} with apt-get" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
