package configclient

// Secret names of a relay, used in the additional data that binds a sealed
// secret to its relay.
const (
	SecretPassword   = "password"
	SecretOAuthToken = "oauth_token"
	SecretClientKey  = "client_key"
	// The OAuth client secret and refresh token of an XOAUTH2 relay.
	SecretOAuthClientSecret = "oauth_client_secret"
	SecretOAuthRefreshToken = "oauth_refresh_token"
)

// RelaySecretAAD is the seal additional data of a relay's secret: the config
// service seals with it and the client opens with it, so a sealed password
// moved to another relay's row does not open.
func RelaySecretAAD(relayID, secret string) []byte {
	return []byte("mailbus/relay/" + relayID + "/" + secret)
}

// DKIMKeyAAD is the seal additional data of a DKIM private key (PKCS#8 DER)
// of domain under selector.
func DKIMKeyAAD(domain, selector string) []byte {
	return []byte("mailbus/dkim/" + domain + "/" + selector)
}
