"""The patients' sign-in layer: OpenID Connect (authorization code flow with PKCE) against a patient
identity provider, and server-side sessions in the database.

- jwt.py: compact JWS (RS256, ES256) verification, and signing for the development provider;
- oidc.py: the relying party (discovery, the authorization request, the code exchange, id_token checks);
- sessions.py: the sessions and the pending sign-ins, shared by every process using the database;
- signin.py: the WSGI application under /portal and the helpers the rest of the server asks
  (session_of, check_csrf).
"""
