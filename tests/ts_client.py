"""The official TypeScript MCP clients, run with Node 22 from `devtools/node.sh` (which `make test` runs)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = ROOT / ".chitty" / "node" / "node_modules"
NODE = MODULES / ".node-platform" / "bin" / "node"
SCRIPT = Path(__file__).resolve().parent / "ts" / "mcp_client.mjs"
# v1: @modelcontextprotocol/sdk 1.32.2, the 2025 handshake (Claude Code, Cursor, VS Code, the Inspector);
# v2: @modelcontextprotocol/client 2.4.0 pinned to 2026-07-28.
SDKS = ("v1", "v2")


def require_node() -> None:
    """Skip, saying why, where the TypeScript clients are not installed; in CI their absence is a failure."""
    if NODE.exists():
        return
    message = f"Node 22 and the TypeScript MCP clients are not installed under {MODULES}: `make test` installs them"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run_plan(sdk: str, url: str, token: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Run steps with one official TypeScript client; each step gives {"ok": result} or {"error": {...}}."""
    require_node()
    plan = {"modules": str(MODULES), "sdk": sdk, "url": url, "token": token, "steps": steps}
    completed = subprocess.run(
        [str(NODE), str(SCRIPT)], input=json.dumps(plan), capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout.strip().splitlines()[-1])
    assert "connectError" not in answer, answer["connectError"]
    return answer
