"""The Chat Completions wire format (`POST /chat/completions`): what OpenAI-compatible endpoints speak.

A `CompletionRequest` becomes a request body as it is (the tool's messages are already in this
shape), and a completion or its streamed chunks become a `Reply` with the same usage numbers as
the Responses API gives. Web search, reasoning summaries and files by URL exist only in the
Responses API: the caller refuses them before anything is sent on this path.
"""

from __future__ import annotations

import json
from typing import Any

from chalicelib.upstream import CompletionRequest, Reply, Usage, estimate_usage

PATH = "/chat/completions"


def body(request: CompletionRequest, stream: bool) -> dict[str, Any]:
    """The JSON body of a Chat Completions request."""
    payload: dict[str, Any] = {"model": request.model, "messages": request.messages}
    if request.max_tokens is not None:
        payload["max_completion_tokens"] = request.max_tokens
    optional = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "reasoning_effort": request.reasoning_effort,
        "verbosity": request.verbosity,
        "response_format": request.response_format,
        "tools": request.tools,
        "tool_choice": request.tool_choice,
        "stop": request.stop,
        "seed": request.seed,
        "service_tier": request.service_tier,
        "safety_identifier": request.safety_identifier,
    }
    payload.update((name, value) for name, value in optional.items() if value is not None)
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    return payload


def usage_of(usage: Any) -> Usage | None:
    """Usage from a `usage` object: cached, cache-write and reasoning details included; None if absent or malformed."""
    if not isinstance(usage, dict):
        return None
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    try:
        return Usage(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(prompt_details.get("cached_tokens") or 0),
            cache_write_tokens=int(prompt_details.get("cache_write_tokens") or 0),
            reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
        )
    except (TypeError, ValueError, AttributeError):
        return None


def reply(completion: dict[str, Any], request: CompletionRequest) -> Reply:
    """A whole (not streamed) chat completion."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content = message.get("content") or ""
    calls = tuple(_call(call) for call in message.get("tool_calls") or [] if isinstance(call, dict))
    usage = usage_of(completion.get("usage")) or estimate_usage(request.messages, content + _arguments(calls))
    return Reply(
        content=content,
        model=completion.get("model") or request.model,
        finish_reason=choice.get("finish_reason"),
        usage=usage,
        tool_calls=calls,
        citations=_citations(message.get("annotations")),
        service_tier=completion.get("service_tier"),
    )


class Stream:
    """Reads the chunks of a streamed completion: text deltas as they come, the reply at the end."""

    def __init__(self, request: CompletionRequest) -> None:
        self.request = request
        self.model: str | None = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.service_tier: str | None = None
        self.text: list[str] = []
        self.calls: dict[int, dict[str, str]] = {}

    def feed(self, chunk: Any) -> str | None:
        """Take one chunk; return the text it adds, if any."""
        if not isinstance(chunk, dict):
            return None
        self.model = chunk.get("model") or self.model
        self.service_tier = chunk.get("service_tier") or self.service_tier
        if chunk.get("usage") is not None:
            self.usage = usage_of(chunk["usage"])
        added: list[str] = []
        for choice in chunk.get("choices") or []:
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta") or {}
            for call in delta.get("tool_calls") or []:
                into = self.calls.setdefault(int(call.get("index") or 0), {"id": "", "name": "", "arguments": ""})
                function = call.get("function") or {}
                into["id"] = call.get("id") or into["id"]
                into["name"] += function.get("name") or ""
                into["arguments"] += function.get("arguments") or ""
            if delta.get("content"):
                added.append(delta["content"])
        if not added:
            return None
        text = "".join(added)
        self.text.append(text)
        return text

    def billed(self) -> Usage:
        """What the stream cost so far: the reported usage, else an estimate of what went out and came back."""
        calls = tuple(self.calls[index] for index in sorted(self.calls))
        return self.usage or estimate_usage(self.request.messages, "".join(self.text) + _arguments(calls))

    def result(self) -> Reply | None:
        """The reply, or None when the stream ended without its last event."""
        if self.finish_reason is None:
            return None
        calls = tuple(self.calls[index] for index in sorted(self.calls))
        return Reply(
            content="".join(self.text),
            model=self.model or self.request.model,
            finish_reason=self.finish_reason,
            usage=self.billed(),
            tool_calls=calls,
            service_tier=self.service_tier,
        )


def _call(call: dict[str, Any]) -> dict[str, str]:
    function = call.get("function") or {}
    return {"id": str(call.get("id") or ""), "name": str(function.get("name") or ""), "arguments": _text(function)}


def _text(function: dict[str, Any]) -> str:
    arguments = function.get("arguments")
    return arguments if isinstance(arguments, str) else json.dumps(arguments or {})


def _arguments(calls: tuple[dict[str, str], ...]) -> str:
    return "".join(call["name"] + call["arguments"] for call in calls)


def _citations(annotations: Any) -> tuple[dict[str, str], ...]:
    """url_citation annotations (search models) as {url, title}."""
    found = []
    for annotation in annotations or []:
        cited = annotation.get("url_citation") if isinstance(annotation, dict) else None
        if isinstance(cited, dict) and cited.get("url"):
            found.append({"url": str(cited["url"]), "title": str(cited.get("title") or "")})
    return tuple(found)
