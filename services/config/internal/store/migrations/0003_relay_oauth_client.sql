-- The OAuth client of an XOAUTH2 relay that refreshes its access tokens:
-- provider, URLs, client id and scopes as protojson (RelayOAuth without
-- its secrets; '' for none), and its client secret and refresh token sealed.
ALTER TABLE relays ADD COLUMN oauth_client TEXT NOT NULL DEFAULT '';
ALTER TABLE relays ADD COLUMN sealed_oauth_client_secret TEXT NOT NULL DEFAULT '';
ALTER TABLE relays ADD COLUMN sealed_oauth_refresh_token TEXT NOT NULL DEFAULT '';
