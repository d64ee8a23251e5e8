"""devtools.fake_openai, driven by the real `openai` SDK: wire format, usage, scripted faults, concurrency."""

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

from devtools.fake_openai import (
    BreakStream,
    ErrorResponse,
    FakeOpenAI,
    Hang,
    NoUsage,
    Reply,
    Reset,
    bad_request,
    count_prompt_tokens,
    count_tokens,
    make_usage,
    model_not_found,
    quota_exceeded,
    rate_limited,
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


def ask(client: openai.OpenAI, content: str = "hello", **params):
    return client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": content}], **params)


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
