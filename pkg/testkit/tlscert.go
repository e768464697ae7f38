package testkit

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"testing"
	"time"
)

// Cert is a certificate authority made for one test, together with a leaf
// certificate that it signed for a set of host names. Clients verify the leaf
// with CAPool, exactly as they would verify a public server with the system
// pool, so tests exercise real certificate verification instead of turning it
// off.
type Cert struct {
	// CAPool holds only this test's CA; put it in tls.Config.RootCAs.
	CAPool *x509.CertPool
	// CAPEM is the CA certificate in PEM, for code that takes PEM.
	CAPEM []byte
	// Certificate is the leaf with its private key, for a server's
	// tls.Config.Certificates (or a client's, see ClientCert).
	Certificate tls.Certificate
	// CertPEM and KeyPEM are the leaf and its key in PEM.
	CertPEM, KeyPEM []byte
	// Hosts are the DNS names and IP addresses the leaf is valid for.
	Hosts []string

	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
}

// NewCert makes a fresh CA and a server leaf signed by it for hosts (DNS
// names or IP addresses). Without hosts the leaf is for "localhost" and
// 127.0.0.1, which is what a client dialling a loopback test server checks.
//
// For a certificate with the wrong name, give names the client will not ask
// for (NewCert(t, "a.test") while the client verifies "b.test"): the client
// then fails with "x509: certificate is valid for a.test, not b.test".
func NewCert(t testing.TB, hosts ...string) *Cert {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testkit: generate CA key: %v", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          certSerial(t),
		Subject:               pkix.Name{CommonName: "mailbus test CA " + t.Name()},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatalf("testkit: create CA certificate: %v", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testkit: parse CA certificate: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	c := &Cert{
		CAPool: pool,
		CAPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		ca:     ca,
		caKey:  caKey,
	}
	if len(hosts) == 0 {
		hosts = []string{"localhost", "127.0.0.1"}
	}
	c.Certificate, c.CertPEM, c.KeyPEM = c.issue(t, hosts, "", x509.ExtKeyUsageServerAuth)
	c.Hosts = hosts
	return c
}

// Issue returns another server leaf from the same CA for other hosts, for a
// test that swaps a server's certificate (for instance to one with the wrong
// name) while the client keeps trusting the same pool.
func (c *Cert) Issue(t testing.TB, hosts ...string) *Cert {
	t.Helper()
	out := *c
	out.Certificate, out.CertPEM, out.KeyPEM = c.issue(t, hosts, "", x509.ExtKeyUsageServerAuth)
	out.Hosts = hosts
	return &out
}

// ClientCert returns a client-authentication certificate signed by the same
// CA, with commonName as its subject; a server that trusts CAPool for client
// certificates accepts it.
func (c *Cert) ClientCert(t testing.TB, commonName string) tls.Certificate {
	t.Helper()
	cert, _, _ := c.issue(t, nil, commonName, x509.ExtKeyUsageClientAuth)
	return cert
}

// ServerTLSConfig returns a server configuration presenting the leaf.
func (c *Cert) ServerTLSConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{c.Certificate}, MinVersion: tls.VersionTLS12}
}

// ClientTLSConfig returns a client configuration that trusts only this CA
// and verifies serverName.
func (c *Cert) ClientTLSConfig(serverName string) *tls.Config {
	return &tls.Config{RootCAs: c.CAPool, ServerName: serverName, MinVersion: tls.VersionTLS12}
}

func (c *Cert) issue(t testing.TB, hosts []string, commonName string, usage x509.ExtKeyUsage) (tls.Certificate, []byte, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testkit: generate leaf key: %v", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: certSerial(t),
		Subject:      pkix.Name{CommonName: commonName},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	if commonName == "" && len(hosts) > 0 {
		tmpl.Subject.CommonName = hosts[0]
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.ca, &key.PublicKey, c.caKey)
	if err != nil {
		t.Fatalf("testkit: create leaf certificate: %v", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatalf("testkit: marshal leaf key: %v", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("testkit: load leaf key pair: %v", err)
	}
	return cert, certPEM, keyPEM
}

func certSerial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatalf("testkit: certificate serial: %v", err)
	}
	return n
}
