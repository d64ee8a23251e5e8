"""API Gateway proxy events, to invoke the Chalice app in process the way Lambda does."""

from __future__ import annotations

import uuid
from typing import Any


def proxy_event(
    method: str, path: str, headers: dict[str, str] | None = None, body: str | None = None
) -> dict[str, Any]:
    """A REST API (v1) proxy integration event for `path`, which must be one of the app's routes."""
    headers = {"Host": "127.0.0.1", **(headers or {})}
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": path,
            "httpMethod": method,
            "path": f"/api{path}",
            "stage": "api",
            "requestId": str(uuid.uuid4()),
            "identity": {"sourceIp": "127.0.0.1"},
        },
        "body": body,
        "isBase64Encoded": False,
    }


class LambdaContext:
    """The parts of the Lambda context object that the app and Powertools read."""

    function_name = "chitty-chatgpt-mcp-dev"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:chitty-chatgpt-mcp-dev"
    memory_limit_in_mb = 512
    aws_request_id = "00000000-0000-0000-0000-000000000000"
    log_group_name = "/aws/lambda/chitty-chatgpt-mcp-dev"
    log_stream_name = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 28_000
