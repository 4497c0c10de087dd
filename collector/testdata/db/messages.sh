#!/usr/bin/env bash
# Turns a capture into the decoder fixtures' format: one line per message (every payload byte one
# side sent before the other side sent any, as the probe cuts them), `c <hex>` from the client
# (the side whose port is not SERVER_PORT), `s <hex>` from the server, a blank line between
# connections. Usage: messages.sh <capture.pcapng> <server port> > fixture.txt
set -euo pipefail
tshark -r "$1" -Y "tcp.len > 0" -T fields -e tcp.stream -e tcp.srcport -e tcp.payload 2>/dev/null |
  awk -v port="$2" '
    { side = ($2 == port) ? "s" : "c" }
    $1 != stream { if (NR > 1) { print line; print "" } stream = $1; line = side " " $3; last = side; next }
    side == last { line = line $3; next }
    { print line; line = side " " $3; last = side }
    END { if (NR > 0) print line }'
