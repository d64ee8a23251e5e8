"""CloudWatch metrics in the embedded metric format (EMF), and optional X-Ray tracing.

A request's metrics travel on its log line: the `_aws` directive and the values beside the
other fields make that JSON line an EMF record, one line per request, written before the
Lambda answers (nothing is left to flush when it freezes). Each metric set keeps its own
dimensions (a completion's model and tool; a failed call's tool). When INFO lines are off
(LOG_LEVEL above INFO), the metrics are written on a line of their own.

EMF is built here rather than through Powertools Metrics: its per-metric validation cost a
tenth of a millisecond per completion (measured), for a format that is one JSON object.

Tracing is off unless CHITTY_TRACING=1; Powertools Tracer (and aws-xray-sdk under it) are
imported only then.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from chalicelib.config import get_settings
from chalicelib.logs import SERVICE, logger, write_line

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

NAMESPACE = "ChittyChatGPT"
# Calls that become X-Ray subsegments of their own: the AWS SDK's (Secrets Manager, KMS). The openai SDK
# speaks HTTP through httpx2, which aws-xray-sdk does not patch; UpstreamLatency measures it instead.
TRACED_MODULES = ("botocore",)


COUNT, MILLISECONDS, NONE = "Count", "Milliseconds", "None"
# Dimension values, and metric values by name with their unit.
MetricSet = tuple[Mapping[str, str], Mapping[str, tuple[str, float]]]


def emf_members(metric_sets: Sequence[MetricSet]) -> dict[str, Any]:
    """What makes a JSON log line an EMF record of these metric sets: `_aws`, dimensions, values."""
    directives: list[dict[str, Any]] = []
    members: dict[str, Any] = {}
    for dimensions, values in metric_sets:
        keys = {**dimensions, "service": SERVICE}
        directives.append(
            {
                "Namespace": NAMESPACE,
                "Dimensions": [list(keys)],
                "Metrics": [{"Name": name, "Unit": unit} for name, (unit, _) in values.items()],
            }
        )
        members.update(keys)
        members.update((name, value) for name, (_, value) in values.items())
    return {"_aws": {"Timestamp": int(time.time() * 1000), "CloudWatchMetrics": directives}, **members}


def write(metric_sets: Sequence[MetricSet]) -> None:
    """Write the metric sets as an EMF line of their own."""
    write_line(emf_members(metric_sets))


def completion(tool: str, model: str, outcome: Mapping[str, Any], cost_usd: float | None) -> MetricSet:
    """A recorded completion's tokens, cost, upstream latency and error count, by model and tool."""
    failed = outcome.get("status") != "ok"
    values: dict[str, tuple[str, float]] = {
        "Completions": (COUNT, 1),
        "UpstreamErrors": (COUNT, 1 if failed else 0),
        "UpstreamLatency": (MILLISECONDS, outcome.get("latency_ms") or 0),
    }
    if not failed:
        values["PromptTokens"] = (COUNT, outcome["prompt_tokens"])
        values["CompletionTokens"] = (COUNT, outcome["completion_tokens"])
        values["CachedTokens"] = (COUNT, outcome["cached_tokens"])
        values["ReasoningTokens"] = (COUNT, outcome["reasoning_tokens"])
    if cost_usd is not None:
        values["CostUSD"] = (NONE, float(cost_usd))
    return {"model": model, "tool": tool}, values


def tool_error(tool: str) -> MetricSet:
    """One ToolErrors count for a tools/call that answered isError or a JSON-RPC error."""
    return {"tool": tool}, {"ToolErrors": (COUNT, 1)}


@functools.lru_cache(maxsize=1)
def tracer() -> Tracer | None:
    """Powertools Tracer when CHITTY_TRACING=1 and aws-xray-sdk is installed, else None."""
    if not get_settings().tracing:
        return None
    try:
        from aws_lambda_powertools import Tracer

        return Tracer(service=SERVICE, patch_modules=TRACED_MODULES)
    except ImportError:
        logger.warning("CHITTY_TRACING is on but aws-xray-sdk is not installed; requests are not traced")
        return None


@contextlib.contextmanager
def traced(name: str) -> Iterator[dict[str, str]]:
    """A subsegment around the block when tracing is on; annotations put in the yielded dict are indexed."""
    annotations: dict[str, str] = {}
    current = tracer()
    if current is None:
        yield annotations
        return
    with current.provider.in_subsegment(name) as subsegment:
        try:
            yield annotations
        finally:
            for key, value in annotations.items():
                subsegment.put_annotation(key, value)
