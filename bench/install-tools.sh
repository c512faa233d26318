#!/usr/bin/env bash
# Installs what the benchmark runs besides itself, from apt: wrk and ab (the load
# generators), nginx (the reference reverse proxy) and valgrind (instructions per
# request). Does nothing when all are present.
set -euo pipefail

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v ab >/dev/null 2>&1 || need+=(apache2-utils)
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
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
