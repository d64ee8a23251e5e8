// Signs in to the server with an official TypeScript MCP client's own OAuth code, as Claude Code, Cursor,
// VS Code and the Inspector do: `@modelcontextprotocol/sdk` 1.x (StreamableHTTPClientTransport with an
// authProvider, `finishAuth(code)`) or `@modelcontextprotocol/client` 2.x pinned to 2026-07-28
// (`finishAuth(URLSearchParams)`, which checks the callback's `iss`). Discovery from the 401, dynamic client
// registration, PKCE and the resource are the SDK's; the browser step is the caller's:
//
//   node oauth_client.mjs '<plan JSON>'
//     plan: {"modules": "<node_modules folder>", "sdk": "v1" | "v2", "url": "<MCP URL>",
//            "redirect": "<loopback redirect URI>", "tool": {"name": "...", "arguments": {...}},
//            "probeIssuer": true}        (v2 only: try a forged and a missing `iss` before the real callback)
//   stdout: {"authorize": "<authorization URL>"}      then reads one line on stdin: the full callback URL
//   stdout: {"done": {...}} or {"failed": {...}}     and exits
//
// Stdout carries only these JSON lines; the SDKs' own warnings go to stderr.
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const plan = JSON.parse(process.argv[2]);
const load = (path) => import(pathToFileURL(join(plan.modules, path)).href);
const say = (message) => process.stdout.write(JSON.stringify(message) + "\n");
const described = (error) => ({ name: error?.name, message: String(error?.message ?? error), code: error?.code });

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function readLine() {
  const { value, done } = await lines.next();
  if (done) throw new Error("stdin closed before the callback URL came");
  return value.trim();
}

// Every HTTP request the SDK makes (discovery, registration, token, MCP), with its answer.
const requests = [];
const loggedFetch = async (input, init) => {
  const url = input instanceof Request ? input.url : String(input);
  const method = init?.method ?? (input instanceof Request ? input.method : "GET");
  const response = await fetch(input, init);
  requests.push(`${method} ${url} ${response.status}`);
  return response;
};

let sdk;
if (plan.sdk === "v1") {
  const { Client } = await load("@modelcontextprotocol/sdk/dist/esm/client/index.js");
  const { StreamableHTTPClientTransport } = await load("@modelcontextprotocol/sdk/dist/esm/client/streamableHttp.js");
  const { UnauthorizedError } = await load("@modelcontextprotocol/sdk/dist/esm/client/auth.js");
  sdk = {
    client: () => new Client({ name: "tests-oauth-v1", version: "1.0.0" }),
    StreamableHTTPClientTransport,
    UnauthorizedError,
  };
} else {
  const v2 = await load("@modelcontextprotocol/client/dist/index.mjs");
  sdk = {
    client: () =>
      new v2.Client({ name: "tests-oauth-v2", version: "1.0.0" }, { versionNegotiation: { mode: { pin: "2026-07-28" } } }),
    StreamableHTTPClientTransport: v2.StreamableHTTPClientTransport,
    UnauthorizedError: v2.UnauthorizedError,
  };
}

// The client's storage, in memory: what a desktop client keeps on disk between the redirect and the callback.
const saved = { state: randomBytes(16).toString("base64url"), warnings: [] };
let authorizationUrl;
const provider = {
  get redirectUrl() {
    return plan.redirect;
  },
  get clientMetadata() {
    return {
      client_name: `TypeScript SDK ${plan.sdk} test`,
      redirect_uris: [plan.redirect],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  },
  state: () => saved.state,
  clientInformation: () => saved.client,
  saveClientInformation: (client) => {
    saved.client = client;
  },
  tokens: () => saved.tokens,
  saveTokens: (tokens) => {
    saved.tokens = tokens;
  },
  redirectToAuthorization: (url) => {
    authorizationUrl = new URL(url);
  },
  saveCodeVerifier: (verifier) => {
    saved.verifier = verifier;
  },
  codeVerifier: () => saved.verifier,
  // v2 (SEP-2352): the discovery state must survive the redirect, as the code verifier does, so that the
  // callback leg can check that the code comes from the authorization server the flow started with.
  saveDiscoveryState: (state) => {
    saved.discovery = state;
  },
  discoveryState: () => saved.discovery,
  invalidateCredentials: (scope) => {
    saved.invalidated = [...(saved.invalidated ?? []), scope];
    if (scope === "all" || scope === "client") delete saved.client;
    if (scope === "all" || scope === "tokens") delete saved.tokens;
    if (scope === "all" || scope === "verifier") delete saved.verifier;
    if (scope === "all" || scope === "discovery") delete saved.discovery;
  },
};

const url = new URL(plan.url);
const transportOf = () => new sdk.StreamableHTTPClientTransport(url, { authProvider: provider, fetch: loggedFetch });
const out = {};
let client;
try {
  // 1. Without a token: the 401 sends the SDK through discovery and registration to redirectToAuthorization.
  client = sdk.client();
  let transport = transportOf();
  try {
    await client.connect(transport);
    throw new Error("connected without signing in");
  } catch (error) {
    if (!(error instanceof sdk.UnauthorizedError)) throw error;
    out.firstError = { ...described(error), class: error.constructor?.name };
  }
  await client.close().catch(() => {});
  if (!authorizationUrl) throw new Error("the SDK never asked to open an authorization URL");
  out.registered = saved.client?.client_id ?? null;

  // 2. The browser step is the caller's: the URL out, the callback URL back.
  say({ authorize: authorizationUrl.href });
  const callback = new URL(await readLine());
  const params = callback.searchParams;
  if (params.get("state") !== saved.state) throw new Error(`state mismatch: ${params.get("state")}`);
  out.callbackParams = [...params.keys()];

  // 3. The callback: v1 takes the code alone (it does not read iss); v2 takes the whole query and checks iss.
  if (plan.sdk === "v1") {
    await transport.finishAuth(params.get("code"));
  } else {
    if (plan.probeIssuer) {
      out.issuerProbes = {};
      const forged = new URLSearchParams(params);
      forged.set("iss", "https://evil.example");
      const missing = new URLSearchParams(params);
      missing.delete("iss");
      for (const [name, probe] of [["forged", forged], ["missing", missing]]) {
        try {
          await transport.finishAuth(probe);
          out.issuerProbes[name] = { accepted: true };
        } catch (error) {
          out.issuerProbes[name] = described(error);
        }
      }
    }
    await transport.finishAuth(params);
  }
  out.discoveredIssuer = saved.discovery?.authorizationServerMetadata?.issuer ?? null;

  // 4. Reconnect with the token: list the tools and call one.
  client = sdk.client();
  transport = transportOf();
  await client.connect(transport);
  out.protocolVersion = transport.protocolVersion ?? client.getNegotiatedProtocolVersion?.() ?? null;
  out.tools = (await client.listTools()).tools.map((tool) => tool.name);
  const result = await client.callTool({ name: plan.tool.name, arguments: plan.tool.arguments ?? {} });
  out.result = { isError: result.isError ?? false, structuredContent: result.structuredContent ?? null };
  out.tokens = {
    token_type: saved.tokens?.token_type,
    scope: saved.tokens?.scope,
    expires_in: saved.tokens?.expires_in,
    has_refresh_token: Boolean(saved.tokens?.refresh_token),
  };
  out.invalidated = saved.invalidated ?? [];
  out.requests = requests;
  say({ done: out });
} catch (error) {
  say({ failed: { error: described(error), stack: String(error?.stack ?? ""), ...out, requests } });
  process.exitCode = 1;
} finally {
  await client?.close().catch(() => {});
  process.stdin.destroy();
}
