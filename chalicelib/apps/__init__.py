"""MCP Apps (the io.modelcontextprotocol/ui extension): views a host shows in the conversation.

Each view is one self-contained HTML file next to this module (inline CSS and JavaScript, nothing fetched),
served as a `ui://chitty/...` resource with the MCP Apps MIME type and no `csp`, so the host's default policy
lets it connect nowhere. A tool names its view in `_meta.ui.resourceUri`; the host renders the view and hands it
the tool's result, and the view may call the server's tools through the host. Hosts without apps ignore
`_meta` and show the tool's text and structuredContent, which are unchanged.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from chalicelib.mcp import Registry, ResourceFamily

EXTENSION = "io.modelcontextprotocol/ui"
MIME_TYPE = "text/html;profile=mcp-app"
HERE = Path(__file__).resolve().parent
RESOURCE_META = {"ui": {"prefersBorder": True}}
# The views by URI: their files, next to this module.
VIEWS = {"ui://chitty/usage.html": "usage.html", "ui://chitty/session.html": "session.html"}
# Which view each tool's result is shown in.
TOOL_VIEWS = {
    "chitty_usage_analytics": "ui://chitty/usage.html",
    "chitty_usage_limits_get": "ui://chitty/usage.html",
    "chitty_chat_session_get": "ui://chitty/session.html",
    "chitty_chat_session_messages": "ui://chitty/session.html",
}


# Where a view's script takes the host bridge the views share (bridge.js).
BRIDGE_MARKER = "  /*@host-bridge@*/\n"


@functools.cache
def view_html(uri: str) -> str:
    """A view's HTML, with the shared host bridge written into its script; read once per container."""
    html = (HERE / VIEWS[uri]).read_text(encoding="utf-8")
    return html.replace(BRIDGE_MARKER, (HERE / "bridge.js").read_text(encoding="utf-8"), 1)


def register(registry: Registry) -> None:
    """Offer the extension: the views as resources, and each tool's `_meta.ui` naming its view."""
    registry.extensions[EXTENSION] = {}
    for name, uri in TOOL_VIEWS.items():
        # The flat "ui/resourceUri" is the extension's earlier spelling, which older hosts still read.
        registry.tool(name).meta = {"ui": {"resourceUri": uri}, "ui/resourceUri": uri}

    def read(principal: Any, uri: str) -> dict[str, Any] | None:
        if uri not in VIEWS:
            return None
        return {"uri": uri, "mimeType": MIME_TYPE, "text": view_html(uri), "_meta": RESOURCE_META}

    registry.add_resources(
        ResourceFamily(
            uri_template="ui://chitty/{view}",
            name="views",
            title="Views",
            description="MCP Apps views of usage and sessions.",
            mime_type=MIME_TYPE,
            # Not in resources/list, where a user's sessions are: hosts find a view through its tool's _meta.
            list_for=lambda principal: [],
            read_for=read,
            templated=False,
        )
    )
