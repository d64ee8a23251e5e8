"""`make conformance`: the official MCP conformance suite's server scenarios against a running server.

Start the server first (`make run` in another terminal). Two releases of the suite run, each from
npm with the project's Node 22: the stable one that devtools/node.sh installs under .chitty/node,
and the newest 0.2 prerelease under .chitty/conformance-0.2. The 0.2 suite speaks both eras of
the protocol, so each of its scenarios runs once at the newest handshake-era version it lists
(2025-11-25: initialize) and once at 2026-07-28 (stateless: server/discover, per-request _meta).

A scenario runs unless the table below says why it does not apply to this server (most need a
fixture of the reference server, the suite's "everything server"); a scenario the table does not
know, one a newer suite adds, runs. The suite cannot send a bearer token, so devtools/auth-proxy.mjs
sits between it and the server and adds one.

When the server offers sign-in (its protected resource metadata names an authorization server, as
`make run`'s does), the 0.2 suite's authorization server scenarios run too: this registers a client
whose redirect URI is the suite's callback listener, gives the user `conformance-sign-in` a fresh
random password (in the server's database), signs in on the authorization page the suite prints,
and hands the redirect to the suite, which then redeems the code. Exit status: 0 when every
scenario that applies passes, 1 when one fails, 2 when nothing could run.

Environment: MCP_URL (default http://127.0.0.1:$PORT/mcp, PORT 8000), MCP_BEARER_TOKEN (default:
the dev-token that `make run` keeps in .chitty/ or $CHITTY_RUN_DIR), CHITTY_DATABASE_URL (the
server's database, for the sign-in user's password; default: the embedded PostgreSQL `make run`
keeps running under .chitty/ or $CHITTY_RUN_DIR), CONFORMANCE_PRERELEASE (the 0.2 release to run,
default below).

    python -m devtools.conformance [--verbose] [SCENARIO ...]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

if TYPE_CHECKING:
    from chalicelib.db import Database

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("CHITTY_RUN_DIR") or ROOT / ".chitty")
PACKAGE = "@modelcontextprotocol/conformance"
PRERELEASE = os.environ.get("CONFORMANCE_PRERELEASE", "0.2.0-alpha.12")
# Versions up to this one open with `initialize`; later ones are stateless. The suite runs a scenario once per era.
LAST_HANDSHAKE_VERSION = "2025-11-25"
SERVER_VERSIONS = ("2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28")
PARALLEL_RUNS = 4
RUN_TIMEOUT_S = 120


@dataclass(frozen=True)
class NotApplicable:
    """Why a scenario, or some of its checks, does not apply to this server.

    `wires` limits the row to those protocol versions, `checks` to those check ids (a check listed
    here is excused only while the suite reports it "Not testable"; any other failure still counts).
    """

    scenario: str
    reason: str
    wires: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()


def _fixture(kind: str, name: str, *more: str) -> str:
    return " ".join([f"needs the reference server's fixture {kind} {name}", *more])


_STATELESS_SAMPLING = "and server-to-client sampling, which a stateless server without sessions does not offer"
_STATELESS_ELICITATION = "and server-to-client elicitation, which a stateless server without sessions does not offer"
_NO_INPUT_REQUESTS = "(the server never asks the client for input: SEP-2322 InputRequiredResult)"
_NO_SUBSCRIBE = (
    "needs resources/subscribe: a stateless server has no stream to send updates on, and declares subscribe: false"
)
_TASKS = (
    "needs the reference server's fixture tools (greet, slow_compute, failing_job, protocol_error_job, "
    "confirm_delete, multi_input, test_tool_with_task); the server declares io.modelcontextprotocol/tasks "
    "(SEP-2663) for its completions, tested with its own tools in tests/test_jobs.py"
)
_SKILLS = (
    "needs the io.modelcontextprotocol/skills extension (SEP-2640), which the server does not declare "
    "(without it every check skips)"
)

# The scenarios that apply to this server, as read from their source: they need nothing the server lacks.
APPLIES = (
    "server-initialize",
    "ping",
    "tools-list",
    "resources-list",
    "prompts-list",
    "dns-rebinding-protection",
    "server-sse-multiple-streams",
    "server-stateless",
    "caching",
    "http-header-validation",
    "sep-2164-resource-not-found",
    "input-required-result-unsupported-methods",
)

# The 0.2 suite's authorization server scenarios (`conformance authorization`): both apply to a server that offers
# sign-in. They run as one command, since the code grant needs the metadata the first one reads.
AUTHORIZATION = ("authorization-server-metadata-endpoint", "authorization-code-grant")

# Every scenario of either suite that does not apply, and why, as read from its source.
TABLE: tuple[NotApplicable, ...] = (
    NotApplicable(
        "logging-set-level",
        "needs logging/setLevel: the server sends no log messages, so it declares no logging capability",
    ),
    NotApplicable(
        "completion-complete",
        "needs completion/complete (the completions capability, which the server does not declare) "
        "for the reference server's fixture prompt test_prompt_with_arguments",
    ),
    NotApplicable("tools-call-simple-text", _fixture("tool", "test_simple_text")),
    NotApplicable("tools-call-image", _fixture("tool", "test_image_content")),
    NotApplicable("tools-call-audio", _fixture("tool", "test_audio_content")),
    NotApplicable("tools-call-embedded-resource", _fixture("tool", "test_embedded_resource")),
    NotApplicable("tools-call-mixed-content", _fixture("tool", "test_multiple_content_types")),
    NotApplicable(
        "tools-call-with-logging",
        _fixture("tool", "test_tool_with_logging", "and logging/setLevel (see logging-set-level)"),
    ),
    NotApplicable("tools-call-error", _fixture("tool", "test_error_handling")),
    NotApplicable("tools-call-with-progress", _fixture("tool", "test_tool_with_progress")),
    NotApplicable("tools-call-sampling", _fixture("tool", "test_sampling", _STATELESS_SAMPLING)),
    NotApplicable("tools-call-elicitation", _fixture("tool", "test_elicitation", _STATELESS_ELICITATION)),
    NotApplicable("json-schema-2020-12", _fixture("tool", "json_schema_2020_12_tool")),
    NotApplicable(
        "elicitation-sep1034-defaults", _fixture("tool", "test_elicitation_sep1034_defaults", _STATELESS_ELICITATION)
    ),
    NotApplicable(
        "elicitation-sep1330-enums", _fixture("tool", "test_elicitation_sep1330_enums", _STATELESS_ELICITATION)
    ),
    NotApplicable(
        "server-sse-polling",
        "needs Mcp-Session-Id sessions, resumable SSE streams (event ids, Last-Event-ID) and the reference "
        "server's fixture tool test_reconnection; the server is stateless and answers each POST in one body",
    ),
    NotApplicable(
        "server-sse-multiple-streams",
        "at this version it needs an Mcp-Session-Id, which a stateless server does not issue "
        "(the scenario stops at a warning); it runs at 2026-07-28",
        wires=("2025-11-25",),
    ),
    NotApplicable(
        "server-session-lifecycle",
        "needs Mcp-Session-Id sessions (DELETE ends one, then 404); a stateless server issues none "
        "(the scenario reports itself not applicable)",
    ),
    NotApplicable("resources-read-text", _fixture("resource", "test://static-text")),
    NotApplicable("resources-read-binary", _fixture("resource", "test://static-binary")),
    NotApplicable("resources-templates-read", _fixture("resource template", "test://template/{id}/data")),
    NotApplicable("resources-subscribe", _NO_SUBSCRIBE),
    NotApplicable("resources-unsubscribe", _NO_SUBSCRIBE),
    NotApplicable("prompts-get-simple", _fixture("prompt", "test_simple_prompt")),
    NotApplicable("prompts-get-with-args", _fixture("prompt", "test_prompt_with_arguments")),
    NotApplicable("prompts-get-embedded-resource", _fixture("prompt", "test_prompt_with_embedded_resource")),
    NotApplicable("prompts-get-with-image", _fixture("prompt", "test_prompt_with_image")),
    NotApplicable(
        "http-custom-header-server-validation",
        "needs a tool with x-mcp-header parameters (SEP-2243 custom headers); none of the server's tools has one",
    ),
    NotApplicable(
        "server-stateless",
        _fixture("tool", "test_missing_capability", "(the server's tools need no client capability)"),
        checks=("sep-2575-server-rejects-undeclared-capability", "sep-2575-missing-capability-http-400"),
    ),
    NotApplicable(
        "server-stateless",
        _fixture("tool", "test_streaming_elicitation", _NO_INPUT_REQUESTS),
        checks=("sep-2575-http-server-no-independent-requests-on-stream",),
    ),
    NotApplicable(
        "server-stateless",
        _fixture("tool", "test_logging_tool", "(the server sends no log messages)"),
        checks=("sep-2575-server-no-log-without-loglevel",),
    ),
    NotApplicable(
        "input-required-result-basic-elicitation",
        _fixture("tool", "test_input_required_result_elicitation", _NO_INPUT_REQUESTS),
    ),
    NotApplicable(
        "input-required-result-basic-sampling",
        _fixture("tool", "test_input_required_result_sampling", _NO_INPUT_REQUESTS),
    ),
    NotApplicable(
        "input-required-result-basic-list-roots",
        _fixture("tool", "test_input_required_result_list_roots", _NO_INPUT_REQUESTS),
    ),
    NotApplicable(
        "input-required-result-request-state",
        _fixture("tool", "test_input_required_result_request_state", _NO_INPUT_REQUESTS),
    ),
    NotApplicable(
        "input-required-result-multiple-input-requests",
        _fixture("tool", "test_input_required_result_multiple_inputs", _NO_INPUT_REQUESTS),
    ),
    NotApplicable(
        "input-required-result-multi-round",
        _fixture("tool", "test_input_required_result_multi_round", _NO_INPUT_REQUESTS),
    ),
    NotApplicable(
        "input-required-result-missing-input-response",
        _fixture("tool", "test_input_required_result_elicitation", _NO_INPUT_REQUESTS),
    ),
    NotApplicable(
        "input-required-result-non-tool-request",
        _fixture("prompt", "test_input_required_result_prompt", _NO_INPUT_REQUESTS),
    ),
    NotApplicable(
        "input-required-result-result-type",
        _fixture("tool", "test_input_required_result_elicitation", _NO_INPUT_REQUESTS),
    ),
    NotApplicable(
        "input-required-result-tampered-state",
        _fixture("tool", "test_input_required_result_tampered_state", _NO_INPUT_REQUESTS),
    ),
    NotApplicable(
        "input-required-result-capability-check",
        _fixture("tool", "test_input_required_result_capabilities", _NO_INPUT_REQUESTS),
    ),
    NotApplicable(
        "input-required-result-ignore-extra-params",
        _fixture("tool", "test_input_required_result_elicitation", _NO_INPUT_REQUESTS),
    ),
    NotApplicable(
        "input-required-result-validate-input",
        _fixture(
            "tool",
            "test_input_required_result_elicitation",
            "(the server never asks the client for input; against any server without the fixture the scenario "
            "passes on its 'Unknown tool' error)",
        ),
    ),
    *(
        NotApplicable(f"tasks-{name}", _TASKS)
        for name in (
            "lifecycle",
            "capability-negotiation",
            "wire-fields",
            "request-state-removal",
            "mrtr-input",
            "request-headers",
            "dispatch-and-envelope",
            "required-task-error",
            "mrtr-composition",
        )
    ),
    NotApplicable(
        "tasks-status-notifications",
        "its one check is SKIPPED in the suite (pending the subscriptions/listen rewrite); status notifications are "
        "optional, and a stateless server sends none",
    ),
    *(NotApplicable(f"sep-2640-skills-{name}", _SKILLS) for name in ("directory", "enumeration", "manifest")),
)


KNOWN = {*APPLIES, *AUTHORIZATION, *(rule.scenario for rule in TABLE)}


class SetupError(Exception):
    """Nothing can run: no server, no token, no Node or no suite. The message says what to do."""


# The server


@dataclass(frozen=True)
class Server:
    """The MCP endpoint under test and the bearer token the proxy adds."""

    url: str
    token: str

    @classmethod
    def from_environment(cls) -> Server:
        url = os.environ.get("MCP_URL") or f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/mcp"
        if urlsplit(url).path in ("", "/"):
            url = url.rstrip("/") + "/mcp"
        if urlsplit(url).scheme != "http":
            raise SetupError(f"MCP_URL {url} is not an http:// URL; the suite tests a local server")
        token = os.environ.get("MCP_BEARER_TOKEN")
        if not token:
            token_file = STATE / "dev-token"
            if not token_file.exists():
                raise SetupError(f"no bearer token: set MCP_BEARER_TOKEN, or start `make run` (it writes {token_file})")
            token = token_file.read_text().strip()
        return cls(url=url, token=token)

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """One JSON-RPC request at 2025-11-25; its result, or SetupError when the server cannot be used."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        request = urllib.request.Request(  # noqa: S310 (the scheme is checked in from_environment)
            self.url,
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
                "MCP-Protocol-Version": LAST_HANDSHAKE_VERSION,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                text = response.read().decode()
                if response.headers.get_content_type() == "text/event-stream":  # the answer is its last event
                    text = [line[5:] for line in text.splitlines() if line.startswith("data:")][-1]
                answer = json.loads(text)
        except urllib.error.HTTPError as error:
            if error.code == 401:
                raise SetupError(
                    f"{self.url} refused the bearer token: set MCP_BEARER_TOKEN, or check {STATE / 'dev-token'}"
                ) from None
            raise SetupError(f"{self.url} answered {method} with HTTP {error.code}") from None
        except (urllib.error.URLError, OSError) as error:
            raise SetupError(
                f"no MCP server answers at {self.url} ({error}): start one with `make run` in another terminal"
            ) from None
        if "error" in answer:
            raise SetupError(f"{method}: {answer['error'].get('message')}")
        return answer["result"]


def seed_session(server: Server) -> str | None:
    """A chat session for the run, so that resource scenarios list and read a real one; None if it cannot be made."""
    try:
        result = server.call(
            "tools/call", {"name": "chitty_chat_session_create", "arguments": {"session_name": "conformance run"}}
        )
        return None if result.get("isError") else result["structuredContent"]["session_id"]
    except (SetupError, KeyError, TypeError):
        return None


def remove_session(server: Server, session_id: str) -> None:
    try:
        server.call("tools/call", {"name": "chitty_chat_session_delete", "arguments": {"session_id": session_id}})
    except SetupError as error:
        print(f"could not delete the session {session_id} this run made: {error}", file=sys.stderr)


# The suites


@dataclass(frozen=True)
class Suite:
    """One installed release of the conformance suite."""

    version: str
    entry: Path  # its dist/index.js
    chooses_wire: bool  # 0.2 and later take --spec-version and speak the stateless protocol too


def node_modules() -> Path:
    """Node 22 and the stable suite, as devtools/node.sh installs them."""
    try:
        done = subprocess.run(["bash", str(ROOT / "devtools/node.sh")], check=True, stdout=subprocess.PIPE, text=True)
    except subprocess.CalledProcessError:
        raise SetupError("devtools/node.sh could not install Node 22 and the suite from npm") from None
    return Path(done.stdout.strip().splitlines()[-1])


def install_prerelease(node: Path) -> Path:
    """The 0.2 prerelease beside the stable suite, installed with the same Node; its package folder."""
    major_minor = ".".join(PRERELEASE.split(".")[:2])
    prefix = ROOT / ".chitty" / f"conformance-{major_minor}"
    stamp = prefix / ".installed"
    wanted = f"{PACKAGE}@{PRERELEASE}"
    if not stamp.exists() or stamp.read_text().strip() != wanted:
        prefix.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PATH": f"{node.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        command = ["npm", "install", "--prefix", str(prefix), "--silent", "--no-audit", "--no-fund", wanted]
        try:
            subprocess.run(command, check=True, env=env, stdout=sys.stderr)
        except (OSError, subprocess.CalledProcessError):
            raise SetupError(f"could not install {wanted} with npm into {prefix}") from None
        stamp.write_text(wanted + "\n")
    return prefix / "node_modules" / PACKAGE


def suite_at(package: Path) -> Suite:
    version = json.loads((package / "package.json").read_text())["version"]
    return Suite(version=version, entry=package / "dist" / "index.js", chooses_wire=not version.startswith("0.1."))


def scenarios(node: Path, suite: Suite) -> dict[str, list[str]]:
    """The suite's server scenarios, each with the protocol versions it lists (or ["extension"])."""
    try:
        listing = subprocess.run(
            [str(node), str(suite.entry), "list", "--server"], check=True, stdout=subprocess.PIPE, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        raise SetupError(f"{PACKAGE} {suite.version} could not list its scenarios") from None
    found = re.findall(r"^\s*-\s+(\S+)\s+\[([^\]]*)\]", listing, flags=re.MULTILINE)
    return {name: [version.strip() for version in versions.split(",")] for name, versions in found}


# Runs and their outcomes


@dataclass(frozen=True)
class Run:
    """One scenario of one suite at one protocol version ("extension": the suite's own choice)."""

    suite: Suite
    scenario: str
    wire: str


@dataclass
class Outcome:
    run: Run
    status: str  # passed, FAILED, n/a
    note: str = ""
    output: str = ""
    warnings: list[str] = field(default_factory=list)
    excused: list[str] = field(default_factory=list)
    new: bool = False


def rules_for(scenario: str, wire: str) -> list[NotApplicable]:
    return [rule for rule in TABLE if rule.scenario == scenario and (not rule.wires or wire in rule.wires)]


def plan(suite: Suite, listed: dict[str, list[str]], only: set[str]) -> tuple[list[Run], list[Outcome]]:
    """What to run, and what does not apply (with why), in the suite's own order."""
    runs: list[Run] = []
    skipped: list[Outcome] = []
    for scenario, versions in listed.items():
        if only and scenario not in only:
            continue
        for wire in wires(suite, versions):
            run = Run(suite, scenario, wire)
            whole = [rule for rule in rules_for(scenario, wire) if not rule.checks]
            if wire not in SERVER_VERSIONS and wire != "extension":
                skipped.append(Outcome(run, "n/a", f"the server does not speak protocol {wire}"))
            elif whole:
                skipped.append(Outcome(run, "n/a", whole[0].reason))
            else:
                runs.append(run)
    return runs, skipped


def wires(suite: Suite, versions: list[str]) -> list[str]:
    """The protocol versions to run a scenario at: one per era (handshake, stateless) it lists."""
    if not suite.chooses_wire:
        return [LAST_HANDSHAKE_VERSION]  # the 0.1 suite's client always speaks it
    if "extension" in versions:
        return ["extension"]
    handshake = [v for v in versions if v <= LAST_HANDSHAKE_VERSION and v in SERVER_VERSIONS]
    later = [v for v in versions if v > LAST_HANDSHAKE_VERSION]
    return ([max(handshake)] if handshake else []) + later


def execute(node: Path, proxy_url: str, run: Run) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="conformance-") as results:
        command = [str(node), str(run.suite.entry), "server", "--url", proxy_url, "--scenario", run.scenario]
        command += ["--output-dir", results]
        if run.suite.chooses_wire and run.wire != "extension":
            command += ["--spec-version", run.wire]
        try:
            done = subprocess.run(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=RUN_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as expired:
            partial = expired.stdout or b""
            output = _plain(partial.decode(errors="replace") if isinstance(partial, bytes) else partial)
            return Outcome(run, "FAILED", f"no result within {RUN_TIMEOUT_S} s", output)
        output = _plain(done.stdout)
        written = sorted(Path(results).glob("*/checks.json"))
        checks = json.loads(written[0].read_text()) if written else None
    skipped_line = re.search(r"^SKIPPED: .*$", output, flags=re.MULTILINE)
    if checks is None and skipped_line:
        return Outcome(run, "n/a", skipped_line.group(0), output)
    if checks is None:
        return Outcome(run, "FAILED", f"the suite wrote no results (exit status {done.returncode})", output)
    return judge(run, checks, output)


def judge(run: Run, checks: list[dict[str, Any]], output: str) -> Outcome:
    """Passed unless a check failed that the table does not excuse."""
    excusable = {check: rule.reason for rule in rules_for(run.scenario, run.wire) for check in rule.checks}
    outcome = Outcome(run, "passed", output=output, new=run.scenario not in KNOWN)
    failed: list[str] = []  # the ids of the checks that count against the server
    for check in checks:
        message = check.get("errorMessage") or ""
        if check["status"] == "FAILURE":
            if check["id"] in excusable and message.startswith("Not testable"):
                outcome.excused.append(f"{check['id']}: {excusable[check['id']]}")
            else:
                failed.append(check["id"])
        elif check["status"] == "WARNING":
            outcome.warnings.append(f"{check['id']}: {message or check.get('description', '')}")
    counted = sum(check["status"] in ("SUCCESS", "FAILURE") for check in checks) - len(outcome.excused)
    if failed:
        outcome.status = "FAILED"
        outcome.note = f"{len(failed)} of {counted} checks failed"
    else:
        outcome.note = f"{counted} check{'' if counted == 1 else 's'}"
    return outcome


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def trimmed(output: str, limit: int = 40) -> str:
    """The suite's own words about what failed: failing and warning checks, the totals and the errors."""
    keep = [
        line
        for line in output.splitlines()
        if re.search(r"\] (FAILURE|WARNING) |^Passed: |^  - |^    Error: |^SKIPPED: ", line)
    ]
    if len(keep) > limit:
        keep = [*keep[:limit], f"... ({len(keep) - limit} more lines)"]
    return "\n".join(keep)


# Reporting


def report(suite: Suite, outcomes: list[Outcome], verbose: bool, subject: str = "") -> None:
    """The suite's table (a scenario that does not apply at several versions for one reason takes one row),
    then the checks that do not apply, the warnings, and the suite's own output for every failure."""
    rows: list[tuple[str, str, list[str], str]] = []
    for outcome in outcomes:
        note = outcome.note
        if outcome.warnings:
            note += f", {len(outcome.warnings)} warning{'s' if len(outcome.warnings) > 1 else ''}"
        if outcome.excused:
            note += f", {len(outcome.excused)} not applicable"
        if outcome.new:
            note += " (new: not in the table, so it ran)"
        last = rows[-1] if rows else None
        if (
            last
            and outcome.status == "n/a"
            and last[0] == "n/a"
            and last[1] == outcome.run.scenario
            and last[3] == note
        ):
            last[2].append(outcome.run.wire)
        else:
            rows.append((outcome.status, outcome.run.scenario, [outcome.run.wire], note))
    print(f"\n{PACKAGE} {suite.version}" + (f": {subject}" if subject else ""))
    name_width = max((len(row[1]) for row in rows), default=0)
    wire_width = max((len(",".join(row[2])) for row in rows), default=0)
    for status, scenario, wires_, note in rows:
        print(f"  {status:<7} {scenario:<{name_width}}  {','.join(wires_):<{wire_width}}  {note}")
    for outcome in outcomes:
        for line in outcome.excused:
            print(f"    {_label(outcome.run)}: not applicable: {line}")
        for line in outcome.warnings:
            print(f"    {_label(outcome.run)}: warning: {line}")
    shown: dict[str, str] = {}  # one run of the suite may judge several scenarios (the authorization ones)
    for outcome in outcomes:
        if outcome.status == "FAILED" or (verbose and outcome.output):
            print(f"\n  --- {_label(outcome.run)} ({outcome.status}), the suite's output:")
            if outcome.output in shown:
                print(f"    (the same run as {shown[outcome.output]}'s above)")
                continue
            shown[outcome.output] = _label(outcome.run)
            text = outcome.output if verbose else trimmed(outcome.output)
            print("\n".join("    " + line for line in text.splitlines()))


def _label(run: Run) -> str:
    return f"{run.scenario} @{run.wire}" if run.wire else run.scenario


# Sign-in: the authorization server scenarios

SIGN_IN_USER = "conformance-sign-in"
# How long the suite may take to print its authorization URL once it has read the metadata, and a page to answer.
SIGN_IN_TIMEOUT_S = 30


class SignInFailed(Exception):
    """The server did not let the suite's client register or sign in; the message says where it stopped."""


@dataclass(frozen=True)
class AuthorizationServer:
    """Sign-in as the MCP endpoint's metadata describes it (RFC 9728, then RFC 8414)."""

    issuer: str
    resource: str
    registration_endpoint: str | None


def authorization_scenarios(node: Path, suite: Suite) -> list[str]:
    """The suite's authorization server scenarios, in its order; none before 0.2, which has no such command."""
    if not suite.chooses_wire:
        return []
    try:
        listing = subprocess.run(
            [str(node), str(suite.entry), "list", "--authorization"], check=True, stdout=subprocess.PIPE, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        raise SetupError(f"{PACKAGE} {suite.version} could not list its authorization scenarios") from None
    return re.findall(r"^\s*-\s+(\S+)", listing, flags=re.MULTILINE)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=SIGN_IN_TIMEOUT_S) as response:  # noqa: S310 (the server's own origin)
        answer = json.loads(response.read())
    if not isinstance(answer, dict):
        raise ValueError(f"{url} answered JSON that is not an object")
    return answer


def discover(server: Server) -> AuthorizationServer | str:
    """The authorization server the MCP endpoint names, or why there is none here to test."""
    origin = _origin(server.url)
    resource_metadata = f"{origin}/.well-known/oauth-protected-resource{urlsplit(server.url).path.rstrip('/')}"
    try:
        resource = _get_json(resource_metadata)
    except urllib.error.HTTPError as error:
        return f"the server offers no sign-in ({resource_metadata} answered HTTP {error.code}: set CHITTY_PUBLIC_URL)"
    except (urllib.error.URLError, OSError, ValueError) as error:
        return f"the server offers no sign-in ({resource_metadata}: {error})"
    issuers = resource.get("authorization_servers") or []
    if not isinstance(issuers, list) or not issuers or not isinstance(issuers[0], str):
        return f"the server offers no sign-in ({resource_metadata} names no authorization server)"
    issuer = issuers[0]
    if _origin(issuer) != origin:
        return f"its authorization server {issuer} is elsewhere than the server under test ({origin})"
    # The three places an issuer's metadata may be (RFC 8414 with the path after the well-known part, then OpenID's).
    path = urlsplit(issuer).path.rstrip("/")
    registration = None
    for candidate in (
        f"{origin}/.well-known/oauth-authorization-server{path}",
        f"{origin}/.well-known/openid-configuration{path}",
        f"{issuer.rstrip('/')}/.well-known/openid-configuration",
    ):
        try:
            registration = _get_json(candidate).get("registration_endpoint")
            break
        except (urllib.error.URLError, OSError, ValueError):
            continue  # the metadata scenario reports a server without any
    return AuthorizationServer(
        issuer=issuer,
        resource=str(resource.get("resource") or server.url),
        registration_endpoint=registration if isinstance(registration, str) else None,
    )


def server_database() -> str:
    """The server's database: CHITTY_DATABASE_URL, else the embedded PostgreSQL that `make run` keeps running."""
    url = os.environ.get("CHITTY_DATABASE_URL")
    if url:
        return url
    from devtools.local import DATABASE

    pid_file = STATE / "pgdata" / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        port, socket_dir = lines[3].strip(), lines[4].strip()
    except (OSError, IndexError):
        raise SetupError(
            f"no database to give {SIGN_IN_USER} a password in: set CHITTY_DATABASE_URL to the server's "
            f"(`make run` without one keeps its own, with {pid_file})"
        ) from None
    return f"postgresql://postgres@/{DATABASE}?host={quote(socket_dir)}&port={port}"


def sign_in_user(server: Server, resource: str) -> tuple[Database, str]:
    """SIGN_IN_USER with a fresh random password, in the server's database (the one its bearer token is in): that
    database, and the password."""
    from pg8000.exceptions import DatabaseError

    from chalicelib import auth
    from chalicelib.db import SQL_DIR, Database, DatabaseUnavailable, DatabaseURLError, error_message, load_queries
    from chalicelib.oauth.passwords import hash_password

    url = server_database()
    try:
        db = Database(url=url, queries=load_queries(SQL_DIR / "queries"))
    except DatabaseURLError as error:
        raise SetupError(f"CHITTY_DATABASE_URL: {error}") from None
    try:
        if auth.authenticate(db, f"Bearer {server.token}", resource=resource) is None:
            raise SetupError(
                f"the bearer token is not in the database at {url}, so it is not the server's: "
                "set CHITTY_DATABASE_URL to the server's"
            )
        db.one("add_user", user_id=SIGN_IN_USER, display_name="MCP conformance suite", role="user")
        password = secrets.token_urlsafe(24)
        db.one("set_password", user_id=SIGN_IN_USER, password_hash=hash_password(password))
    except DatabaseUnavailable as error:
        db.discard()
        raise SetupError(f"the database at {url} cannot be used: {error.detail or error}") from None
    except DatabaseError as error:  # not the server's schema
        db.discard()
        raise SetupError(f"the database at {url} is not the server's: {error_message(error)}") from None
    except SetupError:
        db.discard()
        raise
    return db, password


def revoke_sign_ins(db: Database) -> None:
    """Revoke what the suite's sign-in granted (its tokens with it): nobody uses them after the run."""
    for grant in db.all("list_grants", user_id=SIGN_IN_USER, include_revoked=False):
        db.one("revoke_user_grant", user_id=SIGN_IN_USER, grant_id=str(grant["id"]))


def register_client(endpoint: str, redirect_uri: str) -> str:
    """A public client (RFC 7591) whose one redirect URI is the suite's callback listener; its client_id."""
    body = {
        "client_name": "MCP conformance suite",
        "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }
    request = urllib.request.Request(  # noqa: S310 (the server's own origin)
        endpoint, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=SIGN_IN_TIMEOUT_S) as response:  # noqa: S310
            client_id = json.loads(response.read()).get("client_id")
    except urllib.error.HTTPError as error:
        raise SignInFailed(f"{endpoint} refused the registration: HTTP {error.code} {_text(error.read())}") from None
    except (urllib.error.URLError, OSError, ValueError, AttributeError) as error:
        raise SignInFailed(f"{endpoint} did not register the client: {error}") from None
    if not isinstance(client_id, str) or not client_id:
        raise SignInFailed(f"{endpoint} answered the registration without a client_id")
    return client_id


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_: object) -> None:
        return None  # the redirect is the answer: it comes back as an HTTPError


def approve(authorization_url: str, login: str, password: str) -> str:
    """What a person at a browser does on the sign-in page: sign in and allow. The URL it redirects to."""
    opener = urllib.request.build_opener(_NoRedirects)
    try:
        with opener.open(authorization_url, timeout=SIGN_IN_TIMEOUT_S) as response:
            page = response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        if error.code in (302, 303) and error.headers.get("Location"):  # an error the client is told of at once
            return urljoin(authorization_url, error.headers["Location"])
        raise SignInFailed(f"the authorization page answered HTTP {error.code}: {_text(error.read())}") from None
    except (urllib.error.URLError, OSError) as error:
        raise SignInFailed(f"the authorization page did not answer: {error}") from None
    action = re.search(r'<form[^>]*\saction="([^"]+)"', page)
    if action is None:
        raise SignInFailed(f"the authorization page has no sign-in form: {_text(page)}")
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page))
    fields = {unescape(name): unescape(value) for name, value in hidden.items()}
    request = urllib.request.Request(  # noqa: S310 (the form's own action, on the server)
        urljoin(authorization_url, unescape(action[1])),
        data=urlencode({**fields, "login": login, "password": password, "decision": "allow"}).encode(),
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "same-origin"},
    )
    try:
        with opener.open(request, timeout=SIGN_IN_TIMEOUT_S) as response:
            text = _text(response.read())
        raise SignInFailed(f"signing in answered HTTP {response.status}, not a redirect: {text}")
    except urllib.error.HTTPError as error:
        location = error.headers.get("Location")
        if error.code in (302, 303) and location:
            return urljoin(authorization_url, location)
        raise SignInFailed(f"signing in answered HTTP {error.code}: {_text(error.read())}") from None
    except (urllib.error.URLError, OSError) as error:
        raise SignInFailed(f"signing in did not answer: {error}") from None


def _text(body: bytes | str, limit: int = 300) -> str:
    """A page's words, for a message."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    text = " ".join(unescape(re.sub(r"<(style|script)[^>]*>.*?</\1>|<[^>]+>", " ", text, flags=re.DOTALL)).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_authorization(node: Path, suite: Suite, server: Server, names: list[str]) -> tuple[str, list[Outcome]]:
    """`conformance authorization` against the server's sign-in, signing in as SIGN_IN_USER where the suite asks a
    person to: what was tested, and each scenario's outcome."""
    found = discover(server)
    if isinstance(found, str):
        return "authorization server", [Outcome(Run(suite, name, ""), "n/a", found) for name in names]
    port = free_port()
    redirect_uri = f"http://127.0.0.1:{port}/callback"
    db: Database | None = None
    password = client_id = ""
    why_not = ""  # why the code grant cannot be tried
    problems: list[str] = []  # why it failed before the suite could judge it
    try:
        db, password = sign_in_user(server, found.resource)
    except SetupError as error:
        why_not = f"needs a user who can sign in: {error}"
    if db is not None and found.registration_endpoint is None:
        why_not = "the server's metadata names no registration endpoint at which to register the suite's callback"
    elif db is not None and found.registration_endpoint is not None:
        try:
            client_id = register_client(found.registration_endpoint, redirect_uri)
        except SignInFailed as error:
            problems.append(str(error))
    subject = f"authorization server {found.issuer}" + (f", signing in as {SIGN_IN_USER}" if client_id else "")
    try:
        with tempfile.TemporaryDirectory(prefix="conformance-") as results:
            command = [str(node), str(suite.entry), "authorization", "--url", found.issuer]
            command += ["--resource", found.resource, "--port", str(port), "--output-dir", results]
            command += ["--client-id", client_id] if client_id else []
            output, status = _run_signing_in(command, client_id, password, redirect_uri, problems)
            checks = {name: _checks(Path(results), name) for name in names}
    finally:
        if db is not None:
            revoke_sign_ins(db)
            db.discard()
    outcomes = []
    for name in names:
        run, found_checks = Run(suite, name, ""), checks[name]
        skipped = found_checks is not None and all(check["status"] == "SKIPPED" for check in found_checks)
        if found_checks is None or (skipped and problems):
            note = "; ".join(problems) or f"the suite wrote no results (exit status {status})"
            outcomes.append(Outcome(run, "FAILED", note, output))
        elif skipped:
            reason = why_not or "; ".join(check.get("errorMessage") or "" for check in found_checks)
            outcomes.append(Outcome(run, "n/a", reason, output))
        else:
            outcomes.append(judge(run, found_checks, output))
    return subject, outcomes


def _run_signing_in(
    command: list[str], client_id: str, password: str, redirect_uri: str, problems: list[str]
) -> tuple[str, int | None]:
    """Run the suite; when it prints the URL a person should open, sign in there and hand the redirect to its
    callback listener. Its output and exit status; what went wrong on the way is added to problems."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    urls: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        asked = False
        for line in process.stdout:
            lines.append(line)
            if asked and line.strip():
                urls.put(line.strip())
                asked = False
            asked = asked or "following URL in your browser" in line
        urls.put(None)

    reader = threading.Thread(target=read, name="conformance-output", daemon=True)
    reader.start()
    try:
        if client_id:
            try:
                url = urls.get(timeout=SIGN_IN_TIMEOUT_S)
                if url is not None:  # else the suite ended first, and says why in its results
                    location = approve(url, SIGN_IN_USER, password)
                    if not location.startswith(redirect_uri + "?"):
                        raise SignInFailed(f"signing in redirected to {location}, not to the suite's {redirect_uri}")
                    with urllib.request.urlopen(location, timeout=SIGN_IN_TIMEOUT_S) as callback:  # noqa: S310 (127.0.0.1)
                        callback.read()
            except queue.Empty:
                problems.append(f"the suite printed no authorization URL within {SIGN_IN_TIMEOUT_S} s")
            except SignInFailed as error:
                problems.append(str(error))
            except (urllib.error.URLError, OSError) as error:
                problems.append(f"the suite's callback listener at {redirect_uri} did not take the redirect: {error}")
            if problems:
                process.kill()  # else it waits five minutes for a callback that will not come
        process.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        problems.append(f"no result within {RUN_TIMEOUT_S} s")
    reader.join(timeout=10)
    return _plain("".join(lines)), process.returncode


def _checks(results: Path, scenario: str) -> list[dict[str, Any]] | None:
    written = sorted(results.glob(f"authorization-server-{scenario}-*/checks.json"))
    return json.loads(written[0].read_text()) if written else None


class Proxy:
    """devtools/auth-proxy.mjs on a free port, in front of the server, for as long as the block runs."""

    def __init__(self, node: Path, server: Server) -> None:
        self.node = node
        self.server = server
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> Proxy:
        self.process = subprocess.Popen(
            [str(self.node), str(ROOT / "devtools/auth-proxy.mjs"), "0", self.server.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "MCP_BEARER_TOKEN": self.server.token},
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        if not ready.startswith("listening "):
            self.__exit__()
            raise SetupError("devtools/auth-proxy.mjs did not start")
        self.url = f"http://localhost:{ready.split()[1]}/mcp"
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.conformance", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", nargs="*", help="run only these scenarios (default: all)")
    parser.add_argument("--verbose", action="store_true", help="print the suite's whole output for every run")
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        failed = run_all(set(args.scenario), args.verbose)
    except SetupError as error:
        print(f"make conformance: {error}", file=sys.stderr)
        return 2
    print("\nconformance: " + ("FAILED (see above)" if failed else "every scenario that applies passed"))
    return 1 if failed else 0


def run_all(only: set[str], verbose: bool) -> bool:
    """Run both suites and print their tables; True if a scenario that applies failed."""
    server = Server.from_environment()
    server.call("ping", {})
    modules = node_modules()
    node = modules / ".node-platform" / "bin" / "node"
    suites = [suite_at(modules / PACKAGE), suite_at(install_prerelease(node))]
    listings = {suite: scenarios(node, suite) for suite in suites}
    sign_in = {suite: authorization_scenarios(node, suite) for suite in suites}
    every = {name for listed in [*listings.values(), *sign_in.values()] for name in listed}
    unknown = only - every
    if unknown:
        raise SetupError(f"no suite has a scenario named {', '.join(sorted(unknown))}")
    print(f"Server: {server.url}, through devtools/auth-proxy.mjs")
    session = seed_session(server)
    if session is None:
        print("(could not create a chat session for the run: resources/read goes untested)")
    failed = False
    try:
        with Proxy(node, server) as proxy, ThreadPoolExecutor(PARALLEL_RUNS) as pool:
            for suite in suites:
                runs, skipped = plan(suite, listings[suite], only)
                ran = list(pool.map(lambda run: execute(node, proxy.url, run), runs))
                order = {name: index for index, name in enumerate(listings[suite])}
                outcomes = sorted(ran + skipped, key=lambda o: (o.status == "n/a", order[o.run.scenario], o.run.wire))
                if outcomes or not only:
                    report(suite, outcomes, verbose)
                failed = failed or any(outcome.status == "FAILED" for outcome in outcomes)
        for suite in suites:
            if sign_in[suite] and (not only or only & set(sign_in[suite])):
                subject, outcomes = run_authorization(node, suite, server, sign_in[suite])
                report(suite, outcomes, verbose, subject)
                failed = failed or any(outcome.status == "FAILED" for outcome in outcomes)
    finally:
        if session is not None:
            remove_session(server, session)
    stale = sorted(KNOWN - every)
    if stale and not only:
        print(f"\nThe table names scenarios no suite lists any more: {', '.join(stale)}")
    return failed


if __name__ == "__main__":
    sys.exit(main())
