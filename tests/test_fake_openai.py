"""devtools.fake_openai, driven by the real `openai` SDK: both wire formats, usage, refusals, scripted faults,
concurrency."""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from openai.types.chat.completion_create_params import CompletionCreateParamsStreaming
from openai.types.responses.response_create_params import ResponseCreateParamsStreaming

from devtools.fake_openai import (
    CHAT_PARAMETERS,
    DEFAULT_CITATIONS,
    FILE_TOKENS,
    IMAGE_TOKENS,
    RESPONSES_PARAMETERS,
    BreakStream,
    EndStream,
    ErrorResponse,
    FakeOpenAI,
    Hang,
    NoUsage,
    Reply,
    Reset,
    ResponseFailed,
    StreamError,
    ToolCalls,
    bad_request,
    count_input_tokens,
    count_prompt_tokens,
    count_tokens,
    is_reasoning_model,
    make_response_usage,
    make_usage,
    model_not_found,
    quota_exceeded,
    rate_limited,
    schema_instance,
    server_error,
)

HISTORY = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And times three?"},
]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(delay=0.0) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The module's server, with its settings restored and its recording cleared after each test."""
    settings = {name: copy.copy(value) for name, value in vars(server).items() if not name.startswith("_")}
    server.reset()
    yield server
    server.reset()
    vars(server).update(settings)


def client_for(fake: FakeOpenAI, *, timeout: float = 5.0, max_retries: int = 0, key: str = "sk-test") -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=fake.base_url, max_retries=max_retries, timeout=timeout)


@pytest.fixture(scope="module")
def client(server: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with client_for(server) as sdk:
        yield sdk


def ask(client: openai.OpenAI, content: str = "hello", model: str = "gpt-4o", **params):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **params)


def respond(client: openai.OpenAI, input="hello", model: str = "gpt-4o", **params):
    return client.responses.create(model=model, input=input, **params)


def strictly(parsed):
    """``parsed`` validated again from what came over the wire, strictly: required fields present, types right.

    The SDK builds its models leniently; this catches a field the fake forgot or got the type of wrong.
    """
    return type(parsed).model_validate(parsed.to_dict())


# -- token rule -----------------------------------------------------------------------------------


def test_token_rule_is_simple_and_deterministic():
    assert [count_tokens(text) for text in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]
    parts = [{"role": "user", "content": [{"type": "text", "text": "abcd"}, {"type": "text", "text": "efgh"}]}]
    assert count_prompt_tokens(parts) == 1 + 2
    assert count_prompt_tokens([{"role": "assistant", "content": None}]) == 1
    usage = make_usage(HISTORY, "12345", cached_tokens=2, reasoning_tokens=7)
    assert usage["completion_tokens"] == 2 + 7
    assert usage["total_tokens"] == count_prompt_tokens(HISTORY) + 9


# -- normal answers ---------------------------------------------------------------------------------


def test_non_streaming_completion_has_openai_fields_usage_details_and_request_id(fake, client):
    fake.cached_tokens = 3
    fake.reasoning_tokens = 5
    fake.served_model = {"gpt-4o": "gpt-4o-2024-08-06"}

    completion = client.chat.completions.create(model="gpt-4o", messages=HISTORY, max_completion_tokens=50)

    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert isinstance(completion.created, int)
    assert completion.model == "gpt-4o-2024-08-06"
    assert completion.system_fingerprint == fake.system_fingerprint
    [choice] = completion.choices
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo: And times three?"
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == count_prompt_tokens(HISTORY)
    assert usage.completion_tokens == count_tokens("echo: And times three?") + 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 3
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 5
    assert usage.model_dump() == make_usage(HISTORY, choice.message.content, cached_tokens=3, reasoning_tokens=5) | {
        "prompt_tokens_details": usage.prompt_tokens_details.model_dump(),
        "completion_tokens_details": usage.completion_tokens_details.model_dump(),
    }

    [recorded] = fake.requests
    assert completion._request_id == recorded.request_id
    assert recorded.request_id.startswith("req_")
    assert recorded.path == "/v1/chat/completions"
    assert recorded.messages == HISTORY
    assert recorded.model == "gpt-4o"
    assert recorded.api_key == "sk-test"
    assert recorded.headers["authorization"] == "Bearer sk-test"
    assert recorded.max_completion_tokens == 50
    assert recorded.stream is False


def test_reply_can_be_a_string_a_function_or_scripted(fake, client):
    fake.reply = "fixed"
    assert ask(client).choices[0].message.content == "fixed"
    fake.reply = lambda body: body["model"].upper()
    assert ask(client).choices[0].message.content == "GPT-4O"
    fake.script(Reply("cut", finish_reason="length"))
    completion = ask(client)
    assert (completion.choices[0].message.content, completion.choices[0].finish_reason) == ("cut", "length")
    assert ask(client).choices[0].finish_reason == "stop"


def test_multipart_user_content_is_echoed(client):
    content = [{"type": "text", "text": "part one, "}, {"type": "text", "text": "part two"}]
    completion = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": content}])
    assert completion.choices[0].message.content == "echo: part one, part two"


def test_models_are_listed_and_retrievable(client):
    ids = [model.id for model in client.models.list()]
    assert "gpt-4o" in ids
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_strict_models_rejects_unknown_models_like_openai(fake, client):
    fake.strict_models = True
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "model_not_found"
    assert ask(client).model == "gpt-4o"


# -- streaming --------------------------------------------------------------------------------------


def test_stream_with_include_usage_yields_role_content_finish_then_usage(fake, client):
    fake.cached_tokens = 1
    stream = client.chat.completions.create(
        model="gpt-4o", messages=HISTORY, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)

    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "echo: And times three?"
    assert sum(1 for chunk in chunks if chunk.choices and chunk.choices[0].delta.content) > 1
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.prompt_tokens == count_prompt_tokens(HISTORY)
    assert usage.completion_tokens == count_tokens(text)
    assert usage.prompt_tokens_details.cached_tokens == 1
    # Stream chunks carry no `_request_id`; the header is on the stream's response.
    assert stream.response.headers["x-request-id"] == fake.requests[0].request_id
    assert fake.requests[0].stream is True


def test_stream_without_include_usage_has_no_usage_chunk(client):
    chunks = list(ask(client, "a b c", stream=True))
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_scripted_stream_without_usage_even_when_requested(fake, client):
    fake.script(NoUsage())
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks)
    assert ask(client).usage is not None


def test_plain_requests_reuse_one_keep_alive_connection(fake):
    with client_for(fake) as sdk:
        for _ in range(3):
            ask(sdk)
    assert len({request.client_port for request in fake.requests}) == 1


def test_async_client_reuses_the_connection_after_streams(fake):
    # The async SDK drains the body after [DONE] so HTTP/1.1 connections go back to the pool; the sync
    # SDK closes the response at [DONE], so each sync stream ends its connection (SDK behaviour).
    async def main() -> list[str]:
        async with openai.AsyncOpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0, timeout=5) as sdk:
            texts = []
            for _ in range(3):
                stream = await sdk.chat.completions.create(
                    model="gpt-4o", messages=HISTORY, stream=True, stream_options={"include_usage": True}
                )
                texts.append("".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]))
            completion = await sdk.chat.completions.create(model="gpt-4o", messages=HISTORY)
            return [*texts, completion.choices[0].message.content or ""]

    assert asyncio.run(main()) == ["echo: And times three?"] * 4
    assert len({request.client_port for request in fake.requests}) == 1


# -- authentication ---------------------------------------------------------------------------------


def test_rejected_key_gets_openais_401(fake):
    fake.rejected_keys.add("sk-revoked-abcd")
    with client_for(fake, key="sk-revoked-abcd") as sdk, pytest.raises(openai.AuthenticationError) as caught:
        ask(sdk)
    error = caught.value
    assert error.status_code == 401
    assert error.code == "invalid_api_key"
    assert error.type == "invalid_request_error"
    assert error.body["message"].startswith("Incorrect API key provided: sk-")
    assert "abcd" in error.body["message"]
    assert "revoked" not in error.body["message"]
    assert error.request_id == fake.requests[0].request_id
    assert fake.requests[0].api_key == "sk-revoked-abcd"
    with client_for(fake, key="sk-other") as sdk:
        assert ask(sdk).choices


def test_missing_key_gets_401(fake):
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(fake.base_url + "/models", timeout=5)  # noqa: S310 - a local http URL
    assert caught.value.code == 401
    assert json.loads(caught.value.read())["error"]["type"] == "invalid_request_error"


# -- scripted status errors -------------------------------------------------------------------------


def test_429_raises_rate_limit_error_with_retry_after_visible(fake, client):
    fake.script(rate_limited(retry_after=1), rate_limited(None, retry_after_ms=250), quota_exceeded())
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client)
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client)
    assert caught.value.response.headers["retry-after-ms"] == "250"
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client)
    assert caught.value.code == "insufficient_quota"
    assert ask(client).choices


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_raises_internal_server_error(fake, client, status):
    fake.script(server_error(status))
    with pytest.raises(openai.InternalServerError) as caught:
        ask(client)
    assert caught.value.status_code == status


def test_400_404_and_raw_bodies(fake, client):
    fake.script(
        bad_request("This model's maximum context length is 128000 tokens.", "messages", "context_length_exceeded"),
        model_not_found("gpt-4o"),
        ErrorResponse(502, "<html><body>502 Bad Gateway</body></html>"),
    )
    with pytest.raises(openai.BadRequestError) as bad:
        ask(client)
    assert (bad.value.code, bad.value.param) == ("context_length_exceeded", "messages")
    with pytest.raises(openai.NotFoundError) as missing:
        ask(client)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.InternalServerError) as html:
        ask(client)
    assert html.value.response.headers["content-type"].startswith("text/html")


def test_script_is_fifo_then_normal_and_reset_clears(fake, client):
    fake.script(server_error(500), rate_limited())
    assert fake.pending == 2
    with pytest.raises(openai.InternalServerError):
        ask(client)
    with pytest.raises(openai.RateLimitError):
        ask(client)
    assert ask(client).choices
    assert [type(request.behaviour) for request in fake.requests] == [ErrorResponse, ErrorResponse, type(None)]
    fake.script(server_error(500))
    fake.reset()
    assert (fake.pending, fake.requests) == (0, [])
    assert ask(client).choices


def test_sdk_retries_are_visible_in_the_recording(fake):
    fake.script(rate_limited(None, retry_after_ms=10))
    with client_for(fake, max_retries=1) as sdk:
        assert ask(sdk).choices
    assert [request.headers["x-stainless-retry-count"] for request in fake.requests] == ["0", "1"]


# -- network faults ---------------------------------------------------------------------------------


def test_hang_beyond_timeout_raises_api_timeout_error_without_blocking_others(fake):
    fake.script(Hang(5.0))
    started = time.monotonic()
    with client_for(fake, timeout=0.3) as sdk, pytest.raises(openai.APITimeoutError):
        ask(sdk)
    with client_for(fake, timeout=2.0) as sdk:
        assert ask(sdk).choices
    assert time.monotonic() - started < 2.0


def test_hang_shorter_than_timeout_answers_normally(fake, client):
    fake.script(Hang(0.2))
    started = time.monotonic()
    assert ask(client).choices[0].message.content == "echo: hello"
    assert time.monotonic() - started >= 0.2


def test_stream_stalling_midway_times_out_while_iterating(fake):
    fake.script(Hang(5.0, after_chunks=2))
    with client_for(fake, timeout=0.3) as sdk:
        stream = ask(sdk, "one two three", stream=True)
        received = []
        with pytest.raises(openai.APITimeoutError):
            received.extend(stream)
    assert len(received) == 2


def test_connection_reset_raises_api_connection_error(fake, client):
    fake.script(Reset())
    with pytest.raises(openai.APIConnectionError) as caught:
        ask(client)
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert "reset" in repr(caught.value.__cause__).lower()
    assert len(fake.requests) == 1
    assert ask(client).choices


@pytest.mark.parametrize("rst", [False, True])
def test_broken_stream_raises_while_iterating(fake, client, rst):
    fake.script(BreakStream(after_chunks=2, rst=rst))
    stream = ask(client, "one two three four", stream=True, stream_options={"include_usage": True})
    received = []
    with pytest.raises(openai.APIConnectionError):
        received.extend(stream)
    assert len(received) == 2
    assert ask(client).choices


def test_broken_non_streamed_body_raises_api_connection_error(fake, client):
    fake.script(BreakStream())
    with pytest.raises(openai.APIConnectionError):
        ask(client)


# -- concurrency and lifecycle ----------------------------------------------------------------------


def test_64_concurrent_requests_are_not_serialised():
    with FakeOpenAI(delay=0.2) as fake, client_for(fake, timeout=10) as sdk:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=64) as pool:
            replies = list(pool.map(lambda i: ask(sdk, f"question {i}"), range(64)))
        elapsed = time.monotonic() - started
    assert elapsed < 64 * 0.2 / 4
    assert sorted(reply.choices[0].message.content for reply in replies) == sorted(
        f"echo: question {i}" for i in range(64)
    )
    assert len(fake.chat_requests) == 64
    assert fake.max_in_flight >= 8


def test_stop_is_prompt_despite_hangs_and_idle_connections():
    fake = FakeOpenAI(stream_chunk_delay=0.01).start()
    with client_for(fake, timeout=0.2) as sdk:
        ask(sdk)  # leaves an idle keep-alive connection open
        fake.script(Hang(30.0))
        with pytest.raises(openai.APITimeoutError):
            ask(sdk)
        started = time.monotonic()
        port = fake.port
        fake.stop()
        assert time.monotonic() - started < 1.0
        fake.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_script_rejects_non_behaviours(fake):
    with pytest.raises(TypeError):
        fake.script("500")
    assert fake.base_url.startswith("http://127.0.0.1:")
    assert fake.base_url.endswith("/v1")


# -- the Responses API --------------------------------------------------------------------------------

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
    "additionalProperties": False,
}


def test_a_response_has_openai_fields_usage_details_and_request_id(fake, client):
    fake.cached_tokens = 3
    fake.cache_write_tokens = 4
    fake.reasoning_tokens = 5
    fake.served_model = {"gpt-4o": "gpt-4o-2024-08-06"}

    response = respond(client, "What is 2 + 2?", instructions="Be terse.", max_output_tokens=100)

    strictly(response)
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.incomplete_details is None
    assert response.model == "gpt-4o-2024-08-06"
    assert response.instructions == "Be terse."
    assert response.output_text == "echo: What is 2 + 2?"
    [message] = response.output
    assert (message.type, message.role, message.status) == ("message", "assistant", "completed")
    assert message.id.startswith("msg_")
    [part] = message.content
    assert (part.type, part.annotations, part.logprobs) == ("output_text", [], [])
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens == (1 + count_tokens("Be terse.")) + (1 + count_tokens("What is 2 + 2?"))
    assert usage.output_tokens == count_tokens("echo: What is 2 + 2?") + 5
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 3
    assert usage.input_tokens_details.cache_write_tokens == 4
    assert usage.output_tokens_details.reasoning_tokens == 5
    assert usage.model_dump(exclude_none=True) == make_response_usage(
        "What is 2 + 2?",
        response.output_text,
        instructions="Be terse.",
        cached_tokens=3,
        cache_write_tokens=4,
        reasoning_tokens=5,
    )

    [recorded] = fake.requests
    assert response._request_id == recorded.request_id
    assert recorded.path == "/v1/responses"
    assert fake.responses_requests == [recorded]
    assert fake.chat_requests == []
    assert recorded.input == [{"role": "user", "content": "What is 2 + 2?"}]
    assert recorded.api_key == "sk-test"


def test_input_items_count_their_text_images_files_calls_and_outputs(client):
    image = {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"}
    inline = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"}
    file = {"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}
    items = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "input_text", "text": "Look: "}, image, inline, file]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "A cat."}]},
        {"type": "function_call", "call_id": "call_1", "name": "zoom", "arguments": '{"x":1}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "zoomed"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "And now?"}]},
    ]

    response = respond(client, items)

    assert response.output_text == "echo: And now?"
    expected = (
        (1 + count_tokens("Answer briefly."))
        + (1 + count_tokens("Look: ") + 2 * IMAGE_TOKENS + FILE_TOKENS)
        + (1 + count_tokens("A cat."))
        + (1 + count_tokens('zoom{"x":1}'))
        + (1 + count_tokens("zoomed"))
        + (1 + count_tokens("And now?"))
    )
    assert response.usage.input_tokens == expected == count_input_tokens(items)
    assert (IMAGE_TOKENS, FILE_TOKENS) == (85, 250)


def test_chat_images_and_files_count_like_responses_ones(client):
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
    ]
    completion = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": content}])
    assert completion.usage.prompt_tokens == 1 + count_tokens("What is this?") + IMAGE_TOKENS + FILE_TOKENS


def test_a_streamed_response_sends_openais_events_in_order_and_no_done(fake, client):
    stream = respond(client, "one two three", stream=True)
    events = list(stream)

    for event in events:
        strictly(event)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 1
    assert "".join(deltas) == "echo: one two three"
    assert [event.type for event in events if event.type != "response.output_text.delta"] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0].response.status == "in_progress"
    assert events[0].response.usage is None
    final = events[-1].response
    assert final.status == "completed"
    assert final.output_text == "echo: one two three"
    assert final.usage.output_tokens == count_tokens("echo: one two three")
    assert len({event.response.id for event in events if hasattr(event, "response")}) == 1
    assert stream.response.headers["x-request-id"] == fake.requests[0].request_id
    assert fake.responses_requests[0].stream is True


def test_a_streamed_response_has_an_event_line_per_event_and_no_done_line(client):
    with client.responses.with_streaming_response.create(model="gpt-4o", input="hi", stream=True) as raw:
        text = raw.read().decode()
    frames = [frame for frame in text.split("\n\n") if frame]
    assert "[DONE]" not in text
    for frame in frames:
        event_line, data_line = frame.split("\n")
        assert event_line.removeprefix("event: ") == json.loads(data_line.removeprefix("data: "))["type"]


def test_a_reasoning_model_asked_for_a_summary_gives_a_reasoning_item(fake, client):
    fake.reasoning_tokens = 7
    response = respond(client, "Why is the sky blue?", model="gpt-5", reasoning={"effort": "low", "summary": "auto"})

    strictly(response)
    reasoning, message = response.output
    assert reasoning.type == "reasoning"
    assert reasoning.id.startswith("rs_")
    assert [(part.type, part.text) for part in reasoning.summary] == [
        ("summary_text", "Thought about: Why is the sky blue?")
    ]
    assert message.type == "message"
    assert response.reasoning.effort == "low"
    assert response.usage.output_tokens_details.reasoning_tokens == 7
    assert response.usage.output_tokens == count_tokens(response.output_text) + 7

    fake.reasoning_summary = "Rayleigh scattering."
    events = list(respond(client, "Why?", model="o4-mini", reasoning={"summary": "detailed"}, stream=True))
    for event in events:
        strictly(event)
    summary_deltas = [event.delta for event in events if event.type == "response.reasoning_summary_text.delta"]
    assert "".join(summary_deltas) == "Rayleigh scattering."
    kinds = [event.type for event in events]
    assert kinds.index("response.reasoning_summary_part.added") < kinds.index("response.reasoning_summary_text.done")
    assert kinds.index("response.reasoning_summary_part.done") < kinds.index("response.content_part.added")
    assert events[-1].response.output[0].summary[0].text == "Rayleigh scattering."


def test_no_reasoning_item_without_a_summary_or_with_effort_none(client):
    assert [item.type for item in respond(client, model="gpt-5", reasoning={"effort": "high"}).output] == ["message"]
    with_none = respond(client, model="gpt-5", reasoning={"effort": "none", "summary": "auto"})
    assert [item.type for item in with_none.output] == ["message"]


def test_web_search_gives_search_calls_and_url_citations(fake, client):
    response = respond(client, "latest news", tools=[{"type": "web_search", "search_context_size": "low"}])

    strictly(response)
    search, message = response.output
    assert search.type == "web_search_call"
    assert search.id.startswith("ws_")
    assert search.status == "completed"
    assert (search.action.type, search.action.query) == ("search", "latest news")
    [citation] = message.content[0].annotations
    (url, title), *_ = DEFAULT_CITATIONS
    assert (citation.type, citation.url, citation.title) == ("url_citation", url, title)
    assert (citation.start_index, citation.end_index) == (0, len(response.output_text))

    fake.web_searches = 2
    fake.citations = [("https://a.example/", "A"), ("https://b.example/", "B")]
    events = list(respond(client, "news", tools=[{"type": "web_search_preview"}], stream=True))
    for event in events:
        strictly(event)
    kinds = [event.type for event in events]
    assert kinds.count("response.web_search_call.in_progress") == 2
    assert kinds.count("response.web_search_call.searching") == 2
    assert kinds.count("response.web_search_call.completed") == 2
    added = [event.annotation.url for event in events if event.type == "response.output_text.annotation.added"]
    assert added == ["https://a.example/", "https://b.example/"]
    final = events[-1].response
    assert [item.type for item in final.output] == ["web_search_call", "web_search_call", "message"]
    assert [note.title for note in final.output[-1].content[0].annotations] == ["A", "B"]


def test_without_a_web_search_tool_there_is_no_search_and_no_citation(client):
    response = respond(client, "news", tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}])
    assert [item.type for item in response.output] == ["message"]
    assert response.output[0].content[0].annotations == []
    no_search = respond(client, "news", tools=[{"type": "web_search"}], tool_choice="none")
    assert [item.type for item in no_search.output] == ["message"]


def test_max_output_tokens_cuts_the_reply_and_makes_the_response_incomplete(fake, client):
    fake.reply = "x" * 200
    fake.reasoning_tokens = 10

    response = respond(client, max_output_tokens=16)

    strictly(response)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "x" * (4 * (16 - 10))
    assert response.output[0].status == "incomplete"
    assert response.usage.output_tokens == 16
    events = list(respond(client, max_output_tokens=16, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert respond(client, max_output_tokens=100).status == "completed"


def test_scripted_reply_on_responses_and_length_as_incomplete(fake, client):
    fake.script(Reply("scripted"), Reply("cut", finish_reason="length"))
    assert respond(client).output_text == "scripted"
    cut = respond(client)
    assert (cut.output_text, cut.status, cut.incomplete_details.reason) == ("cut", "incomplete", "max_output_tokens")
    assert respond(client).output_text == "echo: hello"


# -- service tier -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "served"),
    [(None, "default"), ("auto", "default"), ("default", "default"), ("flex", "flex"), ("fast", "priority")],
)
def test_the_served_tier_follows_the_requested_one(client, requested, served):
    params = {} if requested is None else {"service_tier": requested}
    assert respond(client, **params).service_tier == served
    assert ask(client, **params).service_tier == served


def test_served_tier_makes_any_call_a_priority_call(fake, client):
    fake.served_tier = "priority"
    assert respond(client).service_tier == "priority"
    assert ask(client).service_tier == "priority"
    assert {chunk.service_tier for chunk in ask(client, stream=True)} == {"priority"}
    assert list(respond(client, stream=True))[-1].response.service_tier == "priority"


def test_chat_answers_validate_strictly_as_the_sdks_models(client):
    strictly(ask(client, service_tier="fast"))
    for chunk in ask(client, "a b c", stream=True, stream_options={"include_usage": True}):
        strictly(chunk)


def test_cache_write_tokens_are_reported_on_chat(fake, client):
    fake.cache_write_tokens = 9
    usage = ask(client).usage
    assert usage.prompt_tokens_details.cache_write_tokens == 9
    assert make_usage([], "", cache_write_tokens=9)["prompt_tokens_details"]["cache_write_tokens"] == 9


# -- tool calls -------------------------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER, "strict": True},
    }
]
RESPONSE_TOOLS = [{"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True}]


def test_scripted_tool_calls_on_chat(fake, client):
    fake.script(ToolCalls([("get_weather", {"city": "Paris", "days": 2}), {"name": "now", "arguments": {}}]))

    completion = ask(client, "weather?", tools=TOOLS)

    strictly(completion)
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert [(call.type, call.function.name, call.function.arguments) for call in calls] == [
        ("function", "get_weather", '{"city":"Paris","days":2}'),
        ("function", "now", "{}"),
    ]
    assert all(call.id.startswith("call_") for call in calls)
    assert len({call.id for call in calls}) == 2
    billed = 'get_weather{"city":"Paris","days":2}' + "now{}"
    assert completion.usage.completion_tokens == count_tokens(billed)
    assert ask(client).choices[0].message.content == "echo: hello"


def test_streamed_tool_calls_on_chat_come_as_openai_sends_them(fake, client):
    fake.script(ToolCalls([("get_weather", {"city": "Paris", "days": 2}), ("now", {})]))

    chunks = list(ask(client, "weather?", tools=TOOLS, stream=True, stream_options={"include_usage": True}))

    for chunk in chunks:
        strictly(chunk)
    deltas = [call for chunk in chunks if chunk.choices for call in chunk.choices[0].delta.tool_calls or []]
    headers = [delta for delta in deltas if delta.id is not None]
    assert [(d.index, d.type, d.function.name, d.function.arguments) for d in headers] == [
        (0, "function", "get_weather", ""),
        (1, "function", "now", ""),
    ]
    assert chunks[0].choices[0].delta.role == "assistant"
    arguments = {index: "".join(d.function.arguments for d in deltas if d.index == index) for index in (0, 1)}
    assert arguments == {0: '{"city":"Paris","days":2}', 1: "{}"}
    assert sum(1 for d in deltas if d.index == 0 and d.id is None) > 1
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage.completion_tokens == count_tokens('get_weather{"city":"Paris","days":2}now{}')


def test_scripted_tool_calls_on_responses(fake, client):
    fake.script(ToolCalls([("get_weather", {"city": "Paris", "days": 2})]))

    response = respond(client, "weather?", tools=RESPONSE_TOOLS)

    strictly(response)
    assert response.status == "completed"
    assert response.output_text == ""
    [call] = response.output
    assert (call.type, call.name, call.arguments, call.status) == (
        "function_call",
        "get_weather",
        '{"city":"Paris","days":2}',
        "completed",
    )
    assert call.id.startswith("fc_")
    assert call.call_id.startswith("call_")
    assert response.usage.output_tokens == count_tokens('get_weather{"city":"Paris","days":2}')


def test_streamed_tool_calls_on_responses(fake, client):
    fake.script(ToolCalls([("get_weather", '{"city": "Paris", "days": 2}')]))

    events = list(respond(client, "weather?", tools=RESPONSE_TOOLS, stream=True))

    for event in events:
        strictly(event)
    added = next(event for event in events if event.type == "response.output_item.added")
    assert (added.item.type, added.item.arguments, added.item.status) == ("function_call", "", "in_progress")
    deltas = [event.delta for event in events if event.type == "response.function_call_arguments.delta"]
    assert len(deltas) > 1
    [done] = [event for event in events if event.type == "response.function_call_arguments.done"]
    assert "".join(deltas) == done.arguments == '{"city": "Paris", "days": 2}'
    assert events[-1].type == "response.completed"
    assert events[-1].response.output[0].name == "get_weather"


def test_tool_results_sent_back_are_answered(client):
    chat = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    completion = client.chat.completions.create(model="gpt-4o", messages=chat, tools=TOOLS)
    assert completion.choices[0].message.content == "echo: weather?"
    assert (
        completion.usage.prompt_tokens
        == count_prompt_tokens(chat)
        == 3 + count_tokens("weather?") + count_tokens("get_weather{}") + count_tokens("sunny")
    )
    items = [
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    assert respond(client, items, tools=RESPONSE_TOOLS).output_text == "echo: weather?"


def test_tool_calls_must_be_name_and_arguments():
    with pytest.raises(TypeError):
        ToolCalls([("get_weather",)])
    with pytest.raises(TypeError):
        ToolCalls([{"name": 3, "arguments": {}}])


# -- structured output ------------------------------------------------------------------------------

ORDER = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "total": {"type": "number"},
        "paid": {"type": "boolean"},
        "status": {"type": "string", "enum": ["open", "closed"]},
        "customer": {"$ref": "#/$defs/customer"},
        "lines": {"type": "array", "items": {"type": "string"}},
        "note": {"type": ["string", "null"]},
        "optional": {"type": "string"},
    },
    "required": ["id", "total", "paid", "status", "customer", "lines", "note"],
    "additionalProperties": False,
    "$defs": {"customer": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}},
}
ORDER_INSTANCE = {
    "id": 0,
    "total": 0,
    "paid": False,
    "status": "open",
    "customer": {"name": "example"},
    "lines": [],
    "note": "example",
}


def test_structured_output_on_chat_is_a_minimal_instance_of_the_schema(client):
    schema_format = {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER, "strict": True}}
    completion = ask(client, response_format=schema_format)
    assert json.loads(completion.choices[0].message.content) == ORDER_INSTANCE
    assert ask(client, response_format={"type": "json_object"}).choices[0].message.content == "{}"


def test_structured_output_on_responses_is_a_minimal_instance_of_the_schema(client):
    text = {"format": {"type": "json_schema", "name": "order", "schema": ORDER, "strict": True}}
    response = respond(client, text=text)
    strictly(response)
    assert json.loads(response.output_text) == ORDER_INSTANCE
    assert response.text.format.type == "json_schema"
    assert respond(client, text={"format": {"type": "json_object"}}).output_text == "{}"


def test_a_set_reply_wins_over_structured_output(fake, client):
    fake.reply = "not json"
    text = {"format": {"type": "json_schema", "name": "order", "schema": ORDER}}
    assert respond(client, text=text).output_text == "not json"


def test_schema_instance_rules():
    assert schema_instance({"type": "array", "items": {"const": 7}, "minItems": 2}) == [7, 7]
    assert schema_instance({"anyOf": [{"type": "integer"}, {"type": "string"}]}) == 0
    assert schema_instance({"type": ["null", "boolean"]}) is False
    assert schema_instance({"type": "null"}) is None
    linked = {"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]}
    assert json.dumps(schema_instance(linked))  # a recursive schema still ends


# -- refusals ---------------------------------------------------------------------------------------

TEMPERATURE_REFUSED = ("Unsupported parameter: 'temperature' is not supported with this model.", "temperature")
EFFORTS = "'none', 'minimal', 'low', 'medium', 'high', 'xhigh', and 'max'"

CHAT_REFUSALS = {
    "unknown parameter": (
        {"extra_body": {"reasoning": {"effort": "low"}}},
        ("Unrecognized request argument supplied: reasoning", None, None),
    ),
    "temperature on a reasoning model": (
        {"model": "gpt-5", "temperature": 0.2},
        (*TEMPERATURE_REFUSED, "unsupported_parameter"),
    ),
    "top_p on a reasoning model": (
        {"model": "o3-mini", "top_p": 0.5, "reasoning_effort": "low"},
        ("Unsupported parameter: 'top_p' is not supported with this model.", "top_p", "unsupported_parameter"),
    ),
    "max_tokens on a reasoning model": (
        {"model": "o4-mini", "max_tokens": 50},
        (
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            "max_tokens",
            "unsupported_parameter",
        ),
    ),
    "reasoning effort on another model": (
        {"reasoning_effort": "low"},
        (
            "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
            "reasoning_effort",
            "unsupported_parameter",
        ),
    ),
    "verbosity on another model": (
        {"model": "gpt-5-chat-latest", "verbosity": "low"},
        ("Unsupported parameter: 'verbosity' is not supported with this model.", "verbosity", "unsupported_parameter"),
    ),
    "unknown effort": (
        {"model": "gpt-5", "reasoning_effort": "huge"},
        (f"Invalid value: 'huge'. Supported values are: {EFFORTS}.", "reasoning_effort", "invalid_value"),
    ),
    "unknown role": (
        {"messages": [{"role": "robot", "content": "beep"}]},
        (
            "Invalid value: 'robot'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and "
            "'developer'.",
            "messages[0].role",
            "invalid_value",
        ),
    ),
    "tool result without its call": (
        {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_9", "content": "y"}]},
        (
            "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
            "'tool_calls'.",
            "messages.[1].role",
            None,
        ),
    ),
    "tool call without its result": (
        {
            "messages": [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
            ]
        },
        (
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            "'tool_call_id'. The following tool_call_ids did not have response messages: call_9",
            "messages.[1].role",
            None,
        ),
    ),
}

RESPONSES_REFUSALS = {
    "unknown parameter": (
        {"extra_body": {"messages": []}},
        ("Unknown parameter: 'messages'.", "messages", "unknown_parameter"),
    ),
    "temperature on a reasoning model": (
        {"model": "gpt-5.1", "temperature": 0.2},
        (*TEMPERATURE_REFUSED, "unsupported_parameter"),
    ),
    "top_p on a reasoning model": (
        {"model": "o4-mini", "top_p": 0.5, "reasoning": {"effort": "high"}},
        ("Unsupported parameter: 'top_p' is not supported with this model.", "top_p", "unsupported_parameter"),
    ),
    "reasoning effort on another model": (
        {"reasoning": {"effort": "low"}},
        (
            "Unsupported parameter: 'reasoning.effort' is not supported with this model.",
            "reasoning.effort",
            "unsupported_parameter",
        ),
    ),
    "reasoning summary on another model": (
        {"model": "gpt-4.1", "reasoning": {"summary": "auto"}},
        (
            "Unsupported parameter: 'reasoning.summary' is not supported with this model.",
            "reasoning.summary",
            "unsupported_parameter",
        ),
    ),
    "verbosity on another model": (
        {"text": {"verbosity": "low"}},
        (
            "Unsupported parameter: 'text.verbosity' is not supported with this model.",
            "text.verbosity",
            "unsupported_parameter",
        ),
    ),
    "unknown effort": (
        {"model": "gpt-5", "reasoning": {"effort": "huge"}},
        (f"Invalid value: 'huge'. Supported values are: {EFFORTS}.", "reasoning.effort", "invalid_value"),
    ),
    "max_output_tokens below 16": (
        {"max_output_tokens": 15},
        (
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got 15 instead.",
            "max_output_tokens",
            "integer_below_min_value",
        ),
    ),
    "tool output without its call": (
        {"input": [{"type": "function_call_output", "call_id": "call_9", "output": "y"}]},
        ("No tool call found for function call output with call_id call_9.", "input", None),
    ),
    "tool call without its output": (
        {"input": [{"type": "function_call", "call_id": "call_9", "name": "f", "arguments": "{}"}]},
        ("No tool output found for function call call_9.", "input", None),
    ),
    "unknown role": (
        {"input": [{"role": "robot", "content": "beep"}]},
        (
            "Invalid value: 'robot'. Supported values are: 'assistant', 'system', 'developer', and 'user'.",
            "input[0].role",
            "invalid_value",
        ),
    ),
    "input text in an assistant message": (
        {"input": [{"role": "assistant", "content": [{"type": "input_text", "text": "x"}]}]},
        (
            "Invalid value: 'input_text'. Supported values are: 'output_text' and 'refusal'.",
            "input[0].content[0]",
            "invalid_value",
        ),
    ),
    "an image that is no URL": (
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "cat.png", "detail": "auto"}]}]},
        (
            "Invalid 'input[0].content[0].image_url'. Expected a valid URL, but got a value with an invalid format.",
            "input[0].content[0].image_url",
            "invalid_value",
        ),
    ),
}


@pytest.mark.parametrize(("params", "error"), CHAT_REFUSALS.values(), ids=CHAT_REFUSALS.keys())
def test_chat_refuses_what_openai_refuses(fake, client, params, error):
    params = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}], **params}
    fake.script(Reply("never sent"))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**params)
    assert caught.value.status_code == 400
    assert caught.value.type == "invalid_request_error"
    assert (caught.value.body["message"], caught.value.param, caught.value.code) == error
    assert fake.pending == 1  # refused before it took a scripted behaviour


@pytest.mark.parametrize(("params", "error"), RESPONSES_REFUSALS.values(), ids=RESPONSES_REFUSALS.keys())
def test_responses_refuse_what_openai_refuses(fake, client, params, error):
    params = {"model": "gpt-4o", "input": "hello", **params}
    fake.script(Reply("never sent"))
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(**params)
    assert caught.value.type == "invalid_request_error"
    assert (caught.value.body["message"], caught.value.param, caught.value.code) == error
    assert fake.pending == 1


def test_known_parameters_are_those_of_the_sdk():
    chat, responses = CompletionCreateParamsStreaming, ResponseCreateParamsStreaming
    assert chat.__required_keys__ | chat.__optional_keys__ == CHAT_PARAMETERS
    assert responses.__required_keys__ | responses.__optional_keys__ == RESPONSES_PARAMETERS


def test_reasoning_models_by_name():
    thinking = ["o1", "o3-mini", "o4-mini-2025-04-16", "gpt-5", "gpt-5.1", "gpt-5-nano", "gpt-6-astra"]
    plain = ["gpt-4o", "gpt-4.1-mini", "gpt-5-chat-latest", "omni-moderation-latest"]
    assert [is_reasoning_model(model) for model in thinking] == [True] * len(thinking)
    assert [is_reasoning_model(model) for model in plain] == [False] * len(plain)


def test_sampling_is_allowed_on_a_reasoning_model_with_effort_none_and_on_chat_models(client):
    assert respond(client, model="gpt-5.1", reasoning={"effort": "none"}, temperature=0.2).status == "completed"
    assert ask(client, model="gpt-5.1", reasoning_effort="none", top_p=0.5).choices
    assert respond(client, model="gpt-5-chat-latest", temperature=0.2).status == "completed"


def test_which_models_reason_and_which_efforts_they_accept_are_settable(fake, client):
    fake.is_reasoning_model = lambda model: model == "my-thinker"
    assert respond(client, model="my-thinker", reasoning={"effort": "low"}).status == "completed"
    with pytest.raises(openai.BadRequestError) as caught:
        respond(client, model="my-thinker", temperature=0.1)
    assert caught.value.param == "temperature"

    fake.accepted_efforts = {"my-thinker": ("low", "medium", "high")}
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, model="my-thinker", reasoning_effort="minimal")
    assert caught.value.code == "unsupported_value"
    assert caught.value.body["message"] == (
        "Unsupported value: 'reasoning_effort' does not support 'minimal' with this model. "
        "Supported values are: 'low', 'medium', and 'high'."
    )


def test_a_linked_response_may_send_a_tool_output_alone(client):
    output = [{"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]
    assert respond(client, output, previous_response_id="resp_earlier").previous_response_id == "resp_earlier"


def test_a_strict_fake_refuses_unknown_models_on_responses(fake, client):
    fake.strict_models = True
    with pytest.raises(openai.NotFoundError) as caught:
        respond(client, model="gpt-9")
    assert caught.value.code == "model_not_found"


# -- scripted behaviours on the Responses API -------------------------------------------------------


def test_status_errors_on_responses(fake, client):
    fake.script(rate_limited(retry_after=1), server_error(503))
    with pytest.raises(openai.RateLimitError) as caught:
        respond(client)
    assert caught.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.InternalServerError):
        respond(client)
    assert respond(client).output_text == "echo: hello"


def test_hang_and_reset_on_responses(fake):
    fake.script(Hang(5.0), Reset())
    with client_for(fake, timeout=0.3) as sdk:
        with pytest.raises(openai.APITimeoutError):
            respond(sdk)
        with pytest.raises(openai.APIConnectionError) as caught:
            respond(sdk)
        assert not isinstance(caught.value, openai.APITimeoutError)
        assert respond(sdk).status == "completed"


def test_a_response_stream_stalling_midway_times_out(fake):
    fake.script(Hang(5.0, after_chunks=3))
    with client_for(fake, timeout=0.3) as sdk:
        received = []
        with pytest.raises(openai.APITimeoutError):
            received.extend(respond(sdk, "one two three", stream=True))
    assert len(received) == 3


@pytest.mark.parametrize("rst", [False, True])
def test_a_broken_response_stream_raises_while_iterating(fake, client, rst):
    fake.script(BreakStream(after_chunks=3, rst=rst), BreakStream())
    received = []
    with pytest.raises(openai.APIConnectionError):
        received.extend(respond(client, "one two three", stream=True))
    assert [event.type for event in received] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
    ]
    with pytest.raises(openai.APIConnectionError):
        respond(client)


def test_a_stream_error_on_responses_is_an_error_event(fake, client):
    fake.script(StreamError(after_chunks=3, message="Overloaded.", code="server_error"))
    events = list(respond(client, "one two three", stream=True))
    assert len(events) == 4
    error = strictly(events[-1])
    assert (error.type, error.code, error.message, error.param, error.sequence_number) == (
        "error",
        "server_error",
        "Overloaded.",
        None,
        3,
    )


def test_a_failed_response_streamed_and_not(fake, client):
    fake.script(ResponseFailed(after_chunks=2, message="Model crashed."), ResponseFailed(code="rate_limit_exceeded"))
    events = list(respond(client, stream=True))
    assert [event.type for event in events] == ["response.created", "response.in_progress", "response.failed"]
    failed = strictly(events[-1])
    assert (failed.sequence_number, failed.response.status) == (2, "failed")
    assert (failed.response.error.code, failed.response.error.message) == ("server_error", "Model crashed.")
    response = strictly(respond(client))
    assert (response.status, response.error.code, response.output, response.usage) == (
        "failed",
        "rate_limit_exceeded",
        [],
        None,
    )


def test_an_ended_response_stream_has_no_completed_event(fake, client):
    fake.script(EndStream(after_chunks=4))
    events = list(respond(client, "one two three", stream=True))
    assert len(events) == 4
    assert all(event.type not in ("response.completed", "response.incomplete") for event in events)


def test_no_usage_on_responses(fake, client):
    fake.script(NoUsage(), NoUsage())
    assert respond(client).usage is None
    events = list(respond(client, stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage is None
    assert respond(client).usage is not None


def test_failed_response_on_chat_is_a_stream_error(fake, client):
    fake.script(ResponseFailed(after_chunks=1, message="Model crashed."))
    received = []
    with pytest.raises(openai.APIError) as caught:
        received.extend(ask(client, "one two", stream=True))
    assert len(received) == 1
    assert "Model crashed." in str(caught.value)


def test_responses_and_chat_requests_are_recorded_apart(fake, client):
    ask(client)
    respond(client)
    assert [request.path for request in fake.chat_requests] == ["/v1/chat/completions"]
    assert [request.path for request in fake.responses_requests] == ["/v1/responses"]
    assert fake.max_in_flight >= 1
