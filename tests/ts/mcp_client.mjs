// Drives the server with an official TypeScript MCP client, as Claude Code, Cursor, VS Code and the
// Inspector do: `@modelcontextprotocol/sdk` 1.x (the 2025 handshake) or `@modelcontextprotocol/client`
// 2.x pinned to 2026-07-28. Reads a plan as JSON on stdin:
//   {"modules": "<node_modules folder>", "sdk": "v1" | "v2", "url": "...", "token": "...",
//    "steps": [{"op": "listTools"}, {"op": "callTool", "name": "...", "arguments": {...}, "progress": true}, ...]}
// and prints one JSON line: {"protocolVersion": "...", "results": [{"ok": <result>} | {"error": {...}}, ...]}.
// Each step's errors are caught, so one plan tests many paths; the client validates every answer itself.
import { pathToFileURL } from "node:url";
import { join } from "node:path";

const plan = JSON.parse(await new Promise((resolve) => {
  let text = "";
  process.stdin.on("data", (chunk) => (text += chunk));
  process.stdin.on("end", () => resolve(text));
}));
const load = (path) => import(pathToFileURL(join(plan.modules, path)).href);

let client;
let transport;
const requestInit = { headers: { Authorization: `Bearer ${plan.token}` } };
if (plan.sdk === "v1") {
  const { Client } = await load("@modelcontextprotocol/sdk/dist/esm/client/index.js");
  const { StreamableHTTPClientTransport } = await load("@modelcontextprotocol/sdk/dist/esm/client/streamableHttp.js");
  client = new Client({ name: "tests-ts-v1", version: "1.0.0" });
  transport = new StreamableHTTPClientTransport(new URL(plan.url), { requestInit });
} else {
  const sdk = await load("@modelcontextprotocol/client/dist/index.mjs");
  client = new sdk.Client(
    { name: "tests-ts-v2", version: "1.0.0" },
    { versionNegotiation: { mode: { pin: "2026-07-28" } } },
  );
  transport = new sdk.StreamableHTTPClientTransport(new URL(plan.url), { requestInit });
}

const run = {
  listTools: () => client.listTools(),
  listResources: () => client.listResources(),
  listResourceTemplates: () => client.listResourceTemplates(),
  readResource: (step) => client.readResource({ uri: step.uri }),
  listPrompts: () => client.listPrompts(),
  getPrompt: (step) => client.getPrompt({ name: step.name, arguments: step.arguments ?? {} }),
  ping: () => client.ping(),
  callTool: async (step) => {
    const progress = [];
    const options = step.progress ? { onprogress: (note) => progress.push(note) } : undefined;
    const result = await client.callTool({ name: step.name, arguments: step.arguments ?? {} }, undefined, options);
    return step.progress ? { ...result, progress } : result;
  },
};

const out = { results: [] };
try {
  await client.connect(transport);
  out.protocolVersion = transport.protocolVersion ?? client.getNegotiatedProtocolVersion?.() ?? null;
  for (const step of plan.steps) {
    try {
      out.results.push({ ok: await run[step.op](step) });
    } catch (error) {
      out.results.push({ error: { name: error?.name, message: String(error?.message ?? error), code: error?.code } });
    }
  }
} catch (error) {
  out.connectError = { name: error?.name, message: String(error?.message ?? error), code: error?.code };
} finally {
  await client.close().catch(() => {});
}
process.stdout.write(JSON.stringify(out) + "\n");
