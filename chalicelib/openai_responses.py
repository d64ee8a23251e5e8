"""The Responses wire format (`POST /responses`): OpenAI's own API, and the only one for some models.

The tool's messages (Chat Completions shape: roles, content parts, tool calls and tool results)
become Responses input items, its settings the Responses parameters, and a response or its stream
of events becomes the same `Reply` the Chat Completions path gives: the text, the function calls,
the url citations of a web search, the reasoning summary, and the usage under the same names
(input -> prompt, output -> completion, with cached, cache-write and reasoning details).
Nothing is stored at OpenAI (`store: false`): the session's history lives in this product's database.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from chalicelib.upstream import CompletionRequest, Reply, ReportedError, UpstreamError, Usage, estimate_usage

PATH = "/responses"
# How an incomplete response's reason reads as a Chat Completions finish_reason.
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


def body(request: CompletionRequest, stream: bool) -> dict[str, Any]:
    """The JSON body of a Responses request."""
    payload: dict[str, Any] = {"model": request.model, "input": input_items(request.messages), "store": False}
    if request.max_tokens is not None:
        payload["max_output_tokens"] = request.max_tokens
    reasoning = {"effort": request.reasoning_effort, "summary": request.reasoning_summary}
    if any(value is not None for value in reasoning.values()):
        payload["reasoning"] = {name: value for name, value in reasoning.items() if value is not None}
    text: dict[str, Any] = {}
    if request.response_format is not None:
        text["format"] = _format(request.response_format)
    if request.verbosity is not None:
        text["verbosity"] = request.verbosity
    if text:
        payload["text"] = text
    tools = [_tool(tool) for tool in request.tools or []]
    if request.web_search is not None:
        tools.append({"type": "web_search", "search_context_size": request.web_search})
    if tools:
        payload["tools"] = tools
    if request.tool_choice is not None:
        payload["tool_choice"] = _tool_choice(request.tool_choice)
    optional = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "service_tier": request.service_tier,
        "safety_identifier": request.safety_identifier,
        "max_tool_calls": request.max_tool_calls,
    }
    payload.update((name, value) for name, value in optional.items() if value is not None)
    if stream:
        payload["stream"] = True
    return payload


def input_items(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages as Responses input items: messages, function calls and their outputs."""
    items: list[dict[str, Any]] = []
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role == "tool":
            items.append(
                {"type": "function_call_output", "call_id": message.get("tool_call_id"), "output": _plain(content)}
            )
            continue
        if role == "assistant":
            if _plain(content):
                items.append({"role": "assistant", "content": _plain(content)})
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call.get("id"),
                        "name": function.get("name"),
                        "arguments": function.get("arguments") or "{}",
                    }
                )
            continue
        items.append({"role": role, "content": content if isinstance(content, str) else _parts(content or [])})
    return items


def _plain(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content or [] if isinstance(part, dict))


def _parts(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    converted = []
    for part in parts:
        kind = part.get("type")
        if kind == "text":
            converted.append({"type": "input_text", "text": part.get("text") or ""})
        elif kind == "image_url":
            image = part.get("image_url") or {}
            converted.append(
                {"type": "input_image", "image_url": image.get("url"), "detail": image.get("detail") or "auto"}
            )
        elif kind == "file":
            file = part.get("file") or {}
            item = {
                "type": "input_file",
                **{k: v for k, v in file.items() if k in ("file_url", "file_data", "filename")},
            }
            converted.append(item)
    return converted


def _format(response_format: dict[str, Any]) -> dict[str, Any]:
    if response_format.get("type") == "json_schema":
        schema = response_format.get("json_schema") or {}
        return {"type": "json_schema", **schema}
    return {"type": response_format.get("type")}


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", **(tool.get("function") or {})}


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"type": "function", "name": choice["function"].get("name")}
    return choice


def usage_of(usage: Any, web_searches: int = 0) -> Usage | None:
    """Usage from a response's `usage` object, named as on the Chat Completions path."""
    if not isinstance(usage, dict):
        return None
    input_details = usage.get("input_tokens_details") or {}
    output_details = usage.get("output_tokens_details") or {}
    try:
        return Usage(
            prompt_tokens=int(usage.get("input_tokens") or 0),
            completion_tokens=int(usage.get("output_tokens") or 0),
            cached_tokens=int(input_details.get("cached_tokens") or 0),
            cache_write_tokens=int(input_details.get("cache_write_tokens") or 0),
            reasoning_tokens=int(output_details.get("reasoning_tokens") or 0),
            web_search_calls=web_searches,
        )
    except (TypeError, ValueError, AttributeError):
        return None


def reply(response: dict[str, Any], request: CompletionRequest) -> Reply:
    """A whole response as a Reply; a failed one as an UpstreamError carrying what it was billed."""
    output = [item for item in response.get("output") or [] if isinstance(item, dict)]
    texts, citations, summaries, calls, searches = [], [], [], [], 0
    for item in output:
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or []:
                if part.get("type") == "output_text":
                    texts.append(part.get("text") or "")
                    citations.extend(_citation(note) for note in part.get("annotations") or [] if _is_citation(note))
                elif part.get("type") == "refusal":
                    texts.append(part.get("refusal") or "")
        elif kind == "reasoning":
            summaries.extend(s.get("text") or "" for s in item.get("summary") or [] if isinstance(s, dict))
        elif kind == "function_call":
            calls.append(
                {
                    "id": str(item.get("call_id") or ""),
                    "name": str(item.get("name") or ""),
                    "arguments": item.get("arguments") or "",
                }
            )
        elif kind == "web_search_call":
            searches += 1
    content = "".join(texts)
    usage = usage_of(response.get("usage"), searches) or _estimate(request, content, calls, searches)
    status = response.get("status")
    if status == "failed":
        error = response.get("error") or {}
        raise UpstreamError(f"OpenAI reported an error: {error.get('message') or 'the response failed'}", usage=usage)
    if status == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        finish = _INCOMPLETE.get(reason, reason or "length")
    else:
        finish = "tool_calls" if calls else "stop"
    return Reply(
        content=content,
        model=response.get("model") or request.model,
        finish_reason=finish,
        usage=usage,
        tool_calls=tuple(calls),
        citations=tuple(citations),
        reasoning_summary="\n\n".join(summaries) or None,
        service_tier=response.get("service_tier"),
    )


class Stream:
    """Reads the events of a streamed response: text deltas as they come, the reply from the last event."""

    def __init__(self, request: CompletionRequest) -> None:
        self.request = request
        self.text: list[str] = []
        self.searches = 0
        self.calls: list[dict[str, Any]] = []
        self.usage: Usage | None = None
        self.final: dict[str, Any] | None = None

    def feed(self, event: Any) -> str | None:
        """Take one event; return the text it adds, if any. An error event raises ReportedError."""
        if not isinstance(event, dict):
            return None
        kind = event.get("type")
        if kind == "response.output_text.delta":
            delta = event.get("delta") or ""
            if delta:
                self.text.append(delta)
                return delta
        elif kind == "response.output_item.done":
            item = event.get("item") or {}
            if item.get("type") == "web_search_call":
                self.searches += 1
            elif item.get("type") == "function_call":
                self.calls.append({"name": item.get("name") or "", "arguments": item.get("arguments") or ""})
        elif kind in ("response.completed", "response.incomplete"):
            self.final = event.get("response") or {}
            self.usage = usage_of(self.final.get("usage"), self.searches)
        elif kind == "response.failed":
            response = event.get("response") or {}
            self.usage = usage_of(response.get("usage"), self.searches)
            raise ReportedError((response.get("error") or {}).get("message") or "the response failed")
        elif kind == "error":
            raise ReportedError(event.get("message") or (event.get("error") or {}).get("message") or "stream error")
        return None

    def billed(self) -> Usage:
        """What the stream cost so far: the reported usage, else an estimate of what went out and came back."""
        return self.usage or _estimate(self.request, "".join(self.text), self.calls, self.searches)

    def result(self) -> Reply | None:
        """The reply, or None when the stream ended without its last event."""
        if self.final is None:
            return None
        answer = reply(self.final, self.request)
        if not answer.content and self.text:
            answer = dataclasses.replace(answer, content="".join(self.text))
        return answer


def _estimate(request: CompletionRequest, content: str, calls: list[dict[str, Any]], searches: int) -> Usage:
    text = content + "".join(str(call.get("name")) + str(call.get("arguments")) for call in calls)
    estimate = estimate_usage(request.messages, text)
    return Usage(
        prompt_tokens=estimate.prompt_tokens,
        completion_tokens=estimate.completion_tokens,
        web_search_calls=searches,
        estimated=True,
    )


def _is_citation(annotation: Any) -> bool:
    return isinstance(annotation, dict) and annotation.get("type") == "url_citation" and bool(annotation.get("url"))


def _citation(annotation: dict[str, Any]) -> dict[str, str]:
    return {"url": str(annotation["url"]), "title": str(annotation.get("title") or "")}
