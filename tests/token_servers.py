"""Local stand-ins for the token services credfs's gcp and acr providers
call, checking what the real ones check, for the tests and benches.

One HTTP server on 127.0.0.1:PORT serves:

  POST /google/token        Google's OAuth2 token endpoint: the jwt-bearer
                            grant, the assertion's RS256 signature checked
                            with the service account's public key, its
                            header (alg, kid) and claims (iss, scope, aud =
                            this URL, iat/exp within an hour of now).
  GET  /computeMetadata/v1/instance/service-accounts/default/token
                            the GCE metadata server: `Metadata-Flavor:
                            Google` required, proxied requests refused.
  POST /<tenant>/oauth2/v2.0/token
                            Entra ID's client credentials grant: client_id,
                            scope, and a client_secret or a client_assertion
                            (workload identity's federated token) of type
                            jwt-bearer.
  GET  /metadata/identity/oauth2/token
                            Azure IMDS (managed identity): `Metadata: true`,
                            api-version, resource, client_id if one is set.
  POST /oauth2/exchange     ACR's exchange: grant_type=access_token, the
                            registry as service, the tenant, and an access
                            token this server issued; answers a refresh
                            token.
  GET  /calls               {endpoint: requests} (refused ones included).

Errors answer like the real services ({"error", "error_description"},
400 or 401). Tokens carry --secret, so a test can look for it in logs.

    python token_servers.py --port PORT --secret S [options]
"""

import argparse
import base64
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GOOGLE_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
ARM_SCOPE = "https://management.azure.com/.default"
ARM_RESOURCE = "https://management.azure.com/"
METADATA_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
IMDS_PATH = "/metadata/identity/oauth2/token"
SKEW = 300


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Refused(Exception):
    def __init__(self, status, error, description):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.calls = {}
        self.issued = {}
        self.aad_tokens = set()
        self.public_key = None
        if args.google_public_key:
            with open(args.google_public_key, "rb") as f:
                self.public_key = serialization.load_pem_public_key(f.read())

    def count(self, endpoint):
        with self.lock:
            self.calls[endpoint] = self.calls.get(endpoint, 0) + 1

    def next_number(self, kind):
        """Tokens of each kind are numbered 1, 2, … so tests know them."""
        with self.lock:
            self.issued[kind] = self.issued.get(kind, 0) + 1
            return self.issued[kind]

    def google_token(self, kind):
        """ya29.-style: short enough for htpasswd's bcrypt (72 bytes)."""
        return {
            "access_token": "ya29.%s-%s%d" % (self.args.secret, kind, self.next_number(kind)),
            "expires_in": self.args.lifetime,
            "token_type": "Bearer",
        }

    def aad_token(self):
        claims = {
            "aud": ARM_RESOURCE,
            "tid": self.args.tenant,
            "n": self.next_number("aad"),
            "s": self.args.secret,
            "exp": int(time.time()) + 3600,
        }
        token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.%s.c2ln" % b64url(
            json.dumps(claims).encode()
        )
        with self.lock:
            self.aad_tokens.add(token)
        return token

    def refresh_token(self):
        if self.args.acr_refresh_token:
            return self.args.acr_refresh_token
        # A JWT of the shortest shape: its exp is what credfs reads.
        # exp is a NumericDate: a fraction keeps short test lives exact.
        exp = round(time.time() + self.args.acr_refresh_lifetime, 3)
        claims = {"exp": exp, "n": self.next_number("refresh")}
        return "e30.%s." % b64url(json.dumps(claims, separators=(",", ":")).encode())


def check_assertion(state, assertion, audience):
    """What Google checks in a jwt-bearer assertion."""
    invalid = lambda why: Refused(400, "invalid_grant", why)
    try:
        header_b64, claims_b64, signature_b64 = assertion.split(".")
        header = json.loads(unb64url(header_b64))
        claims = json.loads(unb64url(claims_b64))
        signature = unb64url(signature_b64)
    except ValueError:
        raise invalid("Invalid JWT: not a JWS")
    if header.get("alg") != "RS256":
        raise invalid("Invalid JWT: alg must be RS256")
    if state.args.google_key_id and header.get("kid") != state.args.google_key_id:
        raise invalid("Invalid JWT: unknown kid")
    try:
        state.public_key.verify(
            signature,
            ("%s.%s" % (header_b64, claims_b64)).encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except InvalidSignature:
        raise invalid("Invalid JWT Signature.")
    if claims.get("iss") != state.args.google_email:
        raise invalid("Invalid grant: account not found")
    if claims.get("aud") != audience:
        raise invalid("Invalid JWT: wrong audience")
    if GOOGLE_SCOPE not in str(claims.get("scope", "")).split():
        raise Refused(400, "invalid_scope", "Invalid OAuth scope or ID token audience provided.")
    now = time.time()
    iat, exp = claims.get("iat"), claims.get("exp")
    reasonable = (
        isinstance(iat, int)
        and isinstance(exp, int)
        and abs(iat - now) <= SKEW
        and now < exp
        and exp - iat <= 3600
    )
    if not reasonable:
        raise invalid(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
            "reasonable timeframe. Check your iat and exp values in the JWT claim."
        )


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY a reused
    # connection waits for the client's delayed ACK (40 ms) between them.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def form(self):
        if self.headers.get("Content-Type", "").split(";")[0] != "application/x-www-form-urlencoded":
            raise Refused(400, "invalid_request", "expected a form")
        length = int(self.headers.get("Content-Length", "0"))
        fields = urllib.parse.parse_qs(self.rfile.read(length).decode(), strict_parsing=True)
        if any(len(values) != 1 for values in fields.values()):
            raise Refused(400, "invalid_request", "a field is repeated")
        return {key: values[0] for key, values in fields.items()}

    def handle_one(self, method):
        state = self.server.state
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        path = url.path
        if method == "GET" and path == "/calls":
            with state.lock:
                return self.reply(200, dict(state.calls))
        if method == "POST" and path == "/google/token":
            state.count("google_token")
            form = self.form()
            if form.get("grant_type") != JWT_BEARER:
                raise Refused(400, "unsupported_grant_type", "Invalid grant_type")
            audience = "http://%s%s" % (self.headers.get("Host"), path)
            check_assertion(state, form.get("assertion", ""), audience)
            return self.reply(200, state.google_token("k"))
        if method == "GET" and path == METADATA_PATH:
            state.count("google_metadata")
            if self.headers.get("Metadata-Flavor") != "Google" or "X-Forwarded-For" in self.headers:
                raise Refused(403, "forbidden", "Missing Metadata-Flavor:Google header.")
            return self.reply(200, state.google_token("m"))
        if method == "POST" and path == "/%s/oauth2/v2.0/token" % state.args.tenant:
            state.count("entra_token")
            self.check_entra(state, self.form())
            return self.reply(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": state.aad_token()})
        if method == "GET" and path == IMDS_PATH:
            state.count("imds")
            if self.headers.get("Metadata") != "true" or "X-Forwarded-For" in self.headers:
                raise Refused(400, "invalid_request", "Required metadata header not specified")
            if query.get("api-version") != "2018-02-01" or query.get("resource") != ARM_RESOURCE:
                raise Refused(400, "invalid_request", "bad api-version or resource")
            if query.get("client_id") != state.args.mi_client_id:
                raise Refused(400, "invalid_request", "Identity not found")
            return self.reply(200, {"access_token": state.aad_token(), "expires_in": "86399", "expires_on": str(int(time.time()) + 86399), "resource": ARM_RESOURCE, "token_type": "Bearer"})
        if method == "POST" and path == "/oauth2/exchange":
            state.count("acr_exchange")
            self.check_exchange(state, self.form())
            return self.reply(200, {"refresh_token": state.refresh_token()})
        raise Refused(404, "not_found", "no such endpoint")

    def check_entra(self, state, form):
        args = state.args
        if form.get("grant_type") != "client_credentials":
            raise Refused(400, "unsupported_grant_type", "AADSTS70003")
        if form.get("scope") != ARM_SCOPE:
            raise Refused(400, "invalid_scope", "AADSTS70011: The provided value for scope is not valid.")
        if form.get("client_id") != args.client_id:
            raise Refused(400, "unauthorized_client", "AADSTS700016: Application not found in the directory.")
        if "client_secret" in form and "client_assertion" not in form:
            if args.client_secret is None or form["client_secret"] != args.client_secret:
                raise Refused(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
        elif "client_assertion" in form and "client_secret" not in form:
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise Refused(400, "invalid_request", "AADSTS70002: bad client_assertion_type")
            if args.federated_token is None or form["client_assertion"] != args.federated_token:
                raise Refused(401, "invalid_client", "AADSTS700213: No matching federated identity record found.")
        else:
            raise Refused(401, "invalid_client", "AADSTS7000218: The request body must contain client_assertion or client_secret.")

    def check_exchange(self, state, form):
        if form.get("grant_type") != "access_token":
            raise Refused(400, "unsupported_grant_type", "grant_type must be access_token")
        if form.get("service") != state.args.acr_service:
            raise Refused(400, "invalid_request", "service is not this registry")
        if form.get("tenant") != state.args.tenant:
            raise Refused(401, "invalid_request", "tenant does not match")
        with state.lock:
            known = form.get("access_token") in state.aad_tokens
        if not known:
            raise Refused(401, "UNAUTHORIZED", "the access token is not valid")

    def dispatch(self, method):
        try:
            self.handle_one(method)
        except Refused as refused:
            self.reply(refused.status, {"error": refused.error, "error_description": refused.description})

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True, help="a part of every token issued")
    parser.add_argument("--lifetime", type=int, default=3600, help="expires_in of Google tokens")
    parser.add_argument("--google-public-key")
    parser.add_argument("--google-email")
    parser.add_argument("--google-key-id")
    parser.add_argument("--tenant", default="credfs-test-tenant")
    parser.add_argument("--client-id")
    parser.add_argument("--client-secret")
    parser.add_argument("--federated-token")
    parser.add_argument("--mi-client-id")
    parser.add_argument("--acr-service")
    parser.add_argument("--acr-refresh-token", help="a fixed refresh token, else a JWT")
    parser.add_argument("--acr-refresh-lifetime", type=float, default=10800.0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.state = State(args)
    server.serve_forever()


if __name__ == "__main__":
    main()
