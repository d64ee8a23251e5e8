// A reverse proxy for the MCP conformance suite, which cannot send an Authorization header:
// adds `Authorization: Bearer $MCP_BEARER_TOKEN` and forwards everything else unchanged,
// Host and Origin included, so the server's own DNS-rebinding checks are what gets tested.
// usage: MCP_BEARER_TOKEN=... node auth-proxy.mjs <listen-port> <upstream-base-url>
import http from 'node:http';

const [listenPort, upstream] = process.argv.slice(2);
const token = process.env.MCP_BEARER_TOKEN;
if (!listenPort || !upstream || !token) {
  console.error('usage: MCP_BEARER_TOKEN=... node auth-proxy.mjs <listen-port> <upstream-base-url>');
  process.exit(2);
}
const target = new URL(upstream);

http
  .createServer((req, res) => {
    const forward = http.request(
      {
        hostname: target.hostname,
        port: target.port || 80,
        method: req.method,
        path: req.url,
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
  })
  .listen(Number(listenPort), '127.0.0.1');
