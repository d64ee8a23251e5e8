"""ChittyOS ChatGPT MCP server: the routes. Each hands its request to chalicelib."""

from chalice import Chalice, Response

from chalicelib import service
from chalicelib.mcp import HttpRequest

app = Chalice(app_name="chitty-chatgpt-mcp", configure_logs=False)


@app.route("/mcp", methods=["POST", "GET", "DELETE"], content_types=["*/*"])
def mcp() -> Response:
    request = app.current_request
    raw = request.raw_body
    body = raw if isinstance(raw, bytes) else raw.encode("utf-8")
    headers = {name.lower(): value for name, value in request.headers.items()}
    answer = service.handle_mcp(HttpRequest(method=request.method, headers=headers, body=body))
    return Response(body=answer.body, status_code=answer.status, headers=answer.headers)


@app.route("/health", methods=["GET"])
def health() -> Response:
    status, body = service.health()
    return Response(body=body, status_code=status, headers={"Cache-Control": "no-store"})
