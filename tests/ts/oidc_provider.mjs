// A real OpenID provider for the sign-in tests: oidc-provider (a certified implementation) on 127.0.0.1.
// Its built-in login takes any login name and password: the account's e-mail is <login>@example.test, verified
// unless the login starts with "unverified". It ends when its standard input closes.
// usage: node oidc_provider.mjs <node_modules> <port> <client-id> <client-secret> <redirect-uri> [...]
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [modules, port, clientId, clientSecret, ...redirectUris] = process.argv.slice(2);
const { Provider } = await import(pathToFileURL(join(modules, 'oidc-provider', 'lib', 'index.js')).href);
const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: redirectUris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: `${id}@example.test`, email_verified: !id.startsWith('unverified'), name: id };
      },
    };
  },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  features: { devInteractions: { enabled: true } },
  pkce: { required: () => true },
  cookies: { keys: ['test-only-cookie-key'] },
});
provider.listen(Number(port), '127.0.0.1', () => console.log(`ready ${issuer}`));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
