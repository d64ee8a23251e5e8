// A reverse proxy for the MCP conformance suite, which cannot send an Authorization header:
// adds `Authorization: Bearer $MCP_BEARER_TOKEN` and forwards every request to the MCP URL,
// Host and Origin unchanged, so the server's own DNS-rebinding checks are what gets tested.
// Listens on 127.0.0.1:<listen-port> (0: any free port) and prints `listening <port>` once ready;
// when its standard input is a pipe, it ends as the pipe closes: it never outlives the runner that started it.
// usage: MCP_BEARER_TOKEN=... node auth-proxy.mjs <listen-port> <upstream-mcp-url>
import fs from 'node:fs';
import http from 'node:http';

const [listenPort, upstream] = process.argv.slice(2);
const token = process.env.MCP_BEARER_TOKEN;
if (listenPort === undefined || !upstream || !token) {
  console.error('usage: MCP_BEARER_TOKEN=... node auth-proxy.mjs <listen-port> <upstream-mcp-url>');
  process.exit(2);
}
const target = new URL(upstream);
if (target.protocol !== 'http:') {
  console.error(`auth-proxy: ${upstream} is not an http:// URL`);
  process.exit(2);
}

const server = http.createServer((req, res) => {
  const query = new URL(req.url, 'http://proxy').search;
  const forward = http.request(
    {
      hostname: target.hostname,
      port: target.port || 80,
      method: req.method,
      path: target.pathname + query,
      headers: { ...req.headers, authorization: `Bearer ${token}` },
    },
    (answer) => {
      res.writeHead(answer.statusCode, answer.statusMessage, answer.rawHeaders);
      answer.pipe(res);
    },
  );
  forward.on('error', (error) => {
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
    res.end(`proxy error: ${error.message}`);
  });
  req.pipe(forward);
});

server.listen(Number(listenPort), '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
if (fs.fstatSync(0).isFIFO()) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}
