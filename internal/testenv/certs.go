package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// certValidity is the lifetime of every certificate the test CA creates. A
// test run never needs more, and a leaked key expires within a day.
const certValidity = 24 * time.Hour

// certClockSkew backdates NotBefore so that a peer whose clock runs slightly
// behind still accepts a certificate issued a moment ago.
const certClockSkew = time.Hour

// CA is a throwaway certificate authority with an ECDSA P-256 key. It signs
// server certificates for test listeners and upstreams.
type CA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

// NewCA creates a self-signed CA certificate that is valid for 24 hours.
func NewCA() (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}

	now := time.Now()
	template := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "imgxfer test CA", Organization: []string{"imgxfer testenv"}},
		NotBefore:             now.Add(-certClockSkew),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}

	return &CA{
		cert:    cert,
		key:     key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
	}, nil
}

// CertPEM returns the CA certificate in PEM form, for trust stores and for
// nginx's proxy_ssl_trusted_certificate.
func (ca *CA) CertPEM() []byte {
	return append([]byte(nil), ca.certPEM...)
}

// CertPool returns a pool that contains only the CA certificate, for the
// RootCAs of a client's tls.Config.
func (ca *CA) CertPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	return pool
}

// Issue creates a server certificate signed by the CA and returns it with
// its private key, both PEM-encoded. Each host is a DNS name or an IP
// address, and the first one also becomes the subject's common name.
func (ca *CA) Issue(hosts ...string) (certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		return nil, nil, errors.New("issue certificate: no host names or IP addresses given")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key for %v: %w", hosts, err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}

	now := time.Now()
	template := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hosts[0], Organization: []string{"imgxfer testenv"}},
		NotBefore:    now.Add(-certClockSkew),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, host := range hosts {
		if host == "" {
			return nil, nil, fmt.Errorf("issue certificate for %q: empty host name", hosts)
		}
		if ip := net.ParseIP(host); ip != nil {
			template.IPAddresses = append(template.IPAddresses, ip)
		} else {
			template.DNSNames = append(template.DNSNames, host)
		}
	}

	der, err := x509.CreateCertificate(rand.Reader, template, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate for %v: %w", hosts, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode key for %v: %w", hosts, err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return certPEM, keyPEM, nil
}

// TLSCertificate issues a server certificate like Issue and returns it ready
// for a tls.Config, for example the TLS field of an httptest.Server.
func (ca *CA) TLSCertificate(hosts ...string) (tls.Certificate, error) {
	certPEM, keyPEM, err := ca.Issue(hosts...)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

// WriteFile writes data to dir/name with mode 0600 and returns the file's
// path. Private keys and certificates for nginx are written this way.
func WriteFile(dir, name string, data []byte) (string, error) {
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return path, nil
}

// randomSerial returns a random 128-bit serial number. RFC 5280 allows up to
// 20 octets, and random serials keep two test CAs from issuing equal ones.
func randomSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate certificate serial number: %w", err)
	}
	return serial, nil
}

// WriteListenerFiles issues a certificate for hosts from ca and writes it, its key and the
// CA certificate into dir, as the TLS files that NginxOptions needs. It sets
// opts.TLSCertFile, opts.TLSKeyFile and opts.UpstreamCAFile.
func (ca *CA) WriteListenerFiles(dir string, opts *NginxOptions, hosts ...string) error {
	certPEM, keyPEM, err := ca.Issue(hosts...)
	if err != nil {
		return err
	}
	files := []struct {
		target *string
		name   string
		data   []byte
	}{
		{&opts.TLSCertFile, "proxy.pem", certPEM},
		{&opts.TLSKeyFile, "proxy-key.pem", keyPEM},
		{&opts.UpstreamCAFile, "ca.pem", ca.CertPEM()},
	}
	for _, file := range files {
		path, err := WriteFile(dir, file.name, file.data)
		if err != nil {
			return err
		}
		*file.target = path
	}
	return nil
}
