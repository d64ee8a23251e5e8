// A web host of MCP Apps for the tests, built like the official basic-host: the MCP client
// (@modelcontextprotocol/client, the 2025 handshake or pinned to 2026-07-28) talks to the server, an
// AppBridge (@modelcontextprotocol/ext-apps) talks to the view, and the view runs in a sandbox proxy on
// another origin, whose HTTP header carries the view's CSP. Bundled with esbuild (iife) by tests/test_apps.py.
//
// The page reads ?mcp=<MCP URL>&token=<bearer>&era=legacy|2026-07-28&sandbox=<sandbox.html URL>, and the
// test drives it through window.chittyHost:
//   connect()                      -> {protocolVersion}
//   show(name, args, {serverTools}) -> the tool's result, once the view has it (serverTools false: a host
//                                     that does not let views call the server's tools)
//   direct(name, args)             -> a tool's result, called by the host itself
//   setTheme("light" | "dark")     -> a host-context-changed to the view
//   calls                          -> the view's tools/call requests: {name, arguments, result | refused}
import {
  AppBridge,
  PostMessageTransport,
  RESOURCE_MIME_TYPE,
  getToolUiResourceUri,
} from "@modelcontextprotocol/ext-apps/app-bridge";
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";

const query = new URLSearchParams(location.search);
const MCP_URL = query.get("mcp");
const TOKEN = query.get("token");
const ERA = query.get("era") || "legacy";
const SANDBOX_URL = query.get("sandbox");
const HOST_INFO = { name: "chitty-test-host", version: "1" };
const EXTENSION = "io.modelcontextprotocol/ui";

const host = {
  client: null,
  tools: new Map(),
  calls: [],
  errors: [],
  bridge: null,
  context: null,
  connect,
  show,
  direct,
  setTheme,
};
window.chittyHost = host;
window.addEventListener("error", (event) => host.errors.push(String(event.message)));
window.addEventListener("unhandledrejection", (event) => host.errors.push(String(event.reason?.message ?? event.reason)));

async function connect() {
  const options = { capabilities: { extensions: { [EXTENSION]: { mimeTypes: [RESOURCE_MIME_TYPE] } } } };
  if (ERA !== "legacy") options.versionNegotiation = { mode: { pin: ERA } };
  const client = new Client(HOST_INFO, options);
  const transport = new StreamableHTTPClientTransport(new URL(MCP_URL), {
    requestInit: { headers: { Authorization: `Bearer ${TOKEN}` } },
  });
  await client.connect(transport);
  let cursor;
  do {
    const page = await client.listTools(cursor ? { cursor } : undefined);
    for (const tool of page.tools) host.tools.set(tool.name, tool);
    cursor = page.nextCursor;
  } while (cursor);
  host.client = client;
  return {
    protocolVersion: transport.protocolVersion ?? client.getNegotiatedProtocolVersion?.() ?? null,
    extensions: client.getServerCapabilities()?.extensions ?? null,
  };
}

function direct(name, args) {
  return host.client.callTool({ name, arguments: args });
}

function setTheme(theme) {
  host.context = { ...host.context, theme };
  document.documentElement.dataset.theme = theme;
  host.bridge.setHostContext(host.context);
}

// The tool is callable by the view unless its _meta.ui.visibility leaves out "app" (the spec's rule,
// which AppBridge leaves to the host).
function callableByApps(tool) {
  const visibility = tool?._meta?.ui?.visibility ?? ["model", "app"];
  return Boolean(tool) && visibility.includes("app");
}

async function show(name, args, { serverTools = true } = {}) {
  const client = host.client;
  const tool = host.tools.get(name);
  const uri = tool && getToolUiResourceUri(tool);
  if (!uri) throw new Error(`${name} names no view`);
  const resultPromise = client.callTool({ name, arguments: args });
  const content = (await client.readResource({ uri })).contents[0];
  if (content.mimeType !== RESOURCE_MIME_TYPE) throw new Error(`${uri} is ${content.mimeType}`);
  const ui = content._meta?.ui ?? {};

  const frame = document.getElementById("frame");
  const iframe = document.createElement("iframe");
  iframe.id = "view";
  iframe.title = tool.title ?? name;
  iframe.setAttribute("sandbox", "allow-scripts allow-same-origin allow-forms");
  iframe.classList.toggle("bordered", ui.prefersBorder === true);
  iframe.src = SANDBOX_URL + (ui.csp ? `?csp=${encodeURIComponent(JSON.stringify(ui.csp))}` : "");
  const proxyReady = new Promise((resolve) => {
    const listen = (event) => {
      if (event.source === iframe.contentWindow && event.data?.method === "ui/notifications/sandbox-proxy-ready") {
        window.removeEventListener("message", listen);
        resolve();
      }
    };
    window.addEventListener("message", listen);
  });
  frame.replaceChildren(iframe);
  await proxyReady;

  const capabilities = client.getServerCapabilities() ?? {};
  host.context = {
    theme: document.documentElement.dataset.theme === "dark" ? "dark" : "light",
    displayMode: "inline",
    availableDisplayModes: ["inline"],
    containerDimensions: { width: iframe.clientWidth, maxHeight: 6000 },
    locale: "en-US",
    toolInfo: { tool },
  };
  const bridge = new AppBridge(
    client,
    HOST_INFO,
    {
      openLinks: {},
      ...(serverTools ? { serverTools: capabilities.tools ?? {} } : {}),
      serverResources: capabilities.resources,
      logging: {},
    },
    { hostContext: host.context },
  );
  host.bridge = bridge;
  const initialized = new Promise((resolve) => (bridge.oninitialized = resolve));
  bridge.onsizechange = ({ height }) => {
    if (height) iframe.style.height = `${height}px`;
  };
  await bridge.connect(new PostMessageTransport(iframe.contentWindow, iframe.contentWindow));
  // connect() installs its own forwarder, so the gate wraps it afterwards.
  const forward = bridge.oncalltool;
  bridge.oncalltool = async (params, extra) => {
    const call = { name: params.name, arguments: params.arguments ?? {} };
    host.calls.push(call);
    if (!callableByApps(host.tools.get(params.name))) {
      call.refused = true;
      throw new Error("tool not callable by apps");
    }
    call.result = await forward(params, extra);
    return call.result;
  };
  await bridge.sendSandboxResourceReady({ html: content.text, csp: ui.csp, permissions: ui.permissions });
  await initialized;
  await bridge.sendToolInput({ arguments: args });
  const result = await resultPromise;
  await bridge.sendToolResult(result);
  return result;
}
