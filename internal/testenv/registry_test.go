package testenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/regclient/regclient/types/mediatype"
	"github.com/regclient/regclient/types/platform"
	"github.com/regclient/regclient/types/ref"
)

// startTestRegistry starts a registry and closes it when the test ends.
func startTestRegistry(t *testing.T, opts RegistryOptions) *Registry {
	t.Helper()
	r, err := StartRegistry(t.Context(), opts)
	if err != nil {
		t.Fatalf("StartRegistry: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close registry %s: %v", r.Addr, err)
		}
	})
	return r
}

func getAPIBase(t *testing.T, client *http.Client, r *Registry) *http.Response {
	t.Helper()
	resp, err := client.Get(r.URL + "/v2/")
	if err != nil {
		t.Fatalf("GET %s/v2/: %v", r.URL, err)
	}
	resp.Body.Close()
	return resp
}

func TestStartRegistryTwoInstances(t *testing.T) {
	memory := startTestRegistry(t, RegistryOptions{})
	disk := startTestRegistry(t, RegistryOptions{RootDir: t.TempDir()})

	if memory.Addr == disk.Addr {
		t.Fatalf("both registries listen on %s", memory.Addr)
	}
	for _, r := range []*Registry{memory, disk} {
		if !strings.HasPrefix(r.Addr, "127.0.0.1:") {
			t.Errorf("Addr = %q, expected 127.0.0.1:port", r.Addr)
		}
		if r.URL != "http://"+r.Addr {
			t.Errorf("URL = %q, expected http://%s", r.URL, r.Addr)
		}
	}

	resp := getAPIBase(t, http.DefaultClient, memory)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /v2/ status = %d, expected 200", resp.StatusCode)
	}
	if got := resp.Header.Get("Docker-Distribution-API-Version"); got != "registry/2.0" {
		t.Errorf("Docker-Distribution-API-Version = %q, expected registry/2.0", got)
	}

	expected := RequestRecord{Method: http.MethodGet, Path: "/v2/", Host: memory.Addr, Status: http.StatusOK}
	requests := memory.Requests()
	if len(requests) != 1 || requests[0] != expected {
		t.Errorf("in-memory registry requests = %+v, expected [%+v]", requests, expected)
	}
	if requests := disk.Requests(); len(requests) != 0 {
		t.Errorf("filesystem registry requests = %+v, expected none", requests)
	}

	memory.ResetRequests()
	if requests := memory.Requests(); len(requests) != 0 {
		t.Errorf("requests after ResetRequests = %+v, expected none", requests)
	}
}

func TestRegistryCloseStopsListener(t *testing.T) {
	r, err := StartRegistry(t.Context(), RegistryOptions{})
	if err != nil {
		t.Fatalf("StartRegistry: %v", err)
	}
	getAPIBase(t, http.DefaultClient, r)

	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	conn, err := net.DialTimeout("tcp", r.Addr, time.Second)
	if err == nil {
		conn.Close()
		t.Errorf("dial %s after Close succeeded, expected connection refused", r.Addr)
	}
}

func TestRegistryRecordsErrorStatus(t *testing.T) {
	r := startTestRegistry(t, RegistryOptions{})
	missing := r.URL + "/v2/test/missing/manifests/latest"
	resp, err := http.Head(missing)
	if err != nil {
		t.Fatalf("HEAD %s: %v", missing, err)
	}
	resp.Body.Close()

	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("HEAD missing manifest status = %d, expected 404", resp.StatusCode)
	}
	expected := RequestRecord{Method: http.MethodHead, Path: "/v2/test/missing/manifests/latest", Host: r.Addr, Status: http.StatusNotFound}
	requests := r.Requests()
	if len(requests) != 1 || requests[0] != expected {
		t.Errorf("requests = %+v, expected [%+v]", requests, expected)
	}
}

func TestRegistryLocationFollowsHostHeader(t *testing.T) {
	r := startTestRegistry(t, RegistryOptions{})
	cases := []struct {
		name           string
		forwardedProto string
		expectedPrefix string
	}{
		{name: "plain", expectedPrefix: "http://registry.prod.test/v2/test/repo/blobs/uploads/"},
		{name: "forwarded https", forwardedProto: "https", expectedPrefix: "https://registry.prod.test/v2/test/repo/blobs/uploads/"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The connection goes to Addr while the Host header names
			// another registry, as a reverse proxy sends it.
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, r.URL+"/v2/test/repo/blobs/uploads/", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = "registry.prod.test"
			if tc.forwardedProto != "" {
				req.Header.Set("X-Forwarded-Proto", tc.forwardedProto)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("POST upload: %v", err)
			}
			resp.Body.Close()

			if resp.StatusCode != http.StatusAccepted {
				t.Fatalf("POST upload status = %d, expected 202", resp.StatusCode)
			}
			if location := resp.Header.Get("Location"); !strings.HasPrefix(location, tc.expectedPrefix) {
				t.Errorf("Location = %q, expected prefix %q", location, tc.expectedPrefix)
			}
			requests := r.Requests()
			last := requests[len(requests)-1]
			if last.Host != "registry.prod.test" {
				t.Errorf("recorded Host = %q, expected registry.prod.test", last.Host)
			}
		})
	}
}

func TestStartRegistryRejectsCertWithoutKey(t *testing.T) {
	certPEM, _ := registryTestCertificate(t)
	r, err := StartRegistry(t.Context(), RegistryOptions{TLSCertPEM: certPEM})
	if err == nil {
		r.Close()
		t.Fatal("StartRegistry with a certificate and no key succeeded, expected an error")
	}
}

func TestStartRegistryRejectsInvalidKey(t *testing.T) {
	certPEM, _ := registryTestCertificate(t)
	_, otherKeyPEM := registryTestCertificate(t)
	r, err := StartRegistry(t.Context(), RegistryOptions{TLSCertPEM: certPEM, TLSKeyPEM: otherKeyPEM})
	if err == nil {
		r.Close()
		t.Fatal("StartRegistry with a key of another certificate succeeded, expected an error")
	}
}

func TestRegistryTLSPushAndRead(t *testing.T) {
	certPEM, keyPEM := registryTestCertificate(t)
	r := startTestRegistry(t, RegistryOptions{TLSCertPEM: certPEM, TLSKeyPEM: keyPEM})
	if r.URL != "https://"+r.Addr {
		t.Errorf("URL = %q, expected https://%s", r.URL, r.Addr)
	}

	// Plain HTTP must not reach a TLS registry.
	plain, err := http.Get("http://" + r.Addr + "/v2/")
	if err == nil {
		plain.Body.Close()
		if plain.StatusCode == http.StatusOK {
			t.Errorf("plain HTTP GET /v2/ on a TLS registry returned 200")
		}
	}

	rc := NewClient(r)
	spec := RandomImage(7, []platform.Platform{{OS: "linux", Architecture: "amd64"}}, 1, 1024)
	reference := r.Addr + "/test/tls:v1"
	pushed, err := PushSingle(t.Context(), rc, reference, spec.Platforms[0], "")
	if err != nil {
		t.Fatalf("PushSingle over TLS: %v", err)
	}
	parsed, err := ref.New(reference)
	if err != nil {
		t.Fatal(err)
	}
	m, err := rc.ManifestGet(t.Context(), parsed)
	if err != nil {
		t.Fatalf("ManifestGet over TLS: %v", err)
	}
	if got := m.GetDescriptor().Digest; got != pushed.Manifests[0].Digest {
		t.Errorf("manifest digest = %s, expected %s", got, pushed.Manifests[0].Digest)
	}
	if got := m.GetDescriptor().MediaType; got != mediatype.OCI1Manifest {
		t.Errorf("manifest media type = %s, expected %s", got, mediatype.OCI1Manifest)
	}
}

func TestRegistryFilesystemKeepsContent(t *testing.T) {
	rootDir := t.TempDir()
	first, err := StartRegistry(t.Context(), RegistryOptions{RootDir: rootDir})
	if err != nil {
		t.Fatalf("StartRegistry: %v", err)
	}
	spec := RandomImage(8, []platform.Platform{{OS: "linux", Architecture: "arm64"}}, 1, 1024)
	pushed, err := PushSingle(t.Context(), NewClient(first), first.Addr+"/test/disk:v1", spec.Platforms[0], "")
	if err != nil {
		first.Close()
		t.Fatalf("PushSingle: %v", err)
	}
	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	second := startTestRegistry(t, RegistryOptions{RootDir: rootDir})
	rc := NewClient(second)
	parsed, err := ref.New(second.Addr + "/test/disk:v1")
	if err != nil {
		t.Fatal(err)
	}
	m, err := rc.ManifestGet(t.Context(), parsed)
	if err != nil {
		t.Fatalf("ManifestGet after restart: %v", err)
	}
	if got := m.GetDescriptor().Digest; got != pushed.Manifests[0].Digest {
		t.Errorf("manifest digest after restart = %s, expected %s", got, pushed.Manifests[0].Digest)
	}
}

func TestStartRegistryThreeInstancesConcurrently(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	registries := make(chan *Registry, 3)
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			r, err := StartRegistry(ctx, RegistryOptions{})
			if err != nil {
				errs <- err
				return
			}
			registries <- r
		}()
	}
	for range 3 {
		select {
		case err := <-errs:
			t.Errorf("StartRegistry: %v", err)
		case r := <-registries:
			t.Cleanup(func() { r.Close() })
			if resp := getAPIBase(t, http.DefaultClient, r); resp.StatusCode != http.StatusOK {
				t.Errorf("GET %s/v2/ status = %d, expected 200", r.URL, resp.StatusCode)
			}
		}
	}
}

// registryTestCertificate returns a self-signed certificate for 127.0.0.1
// and its private key, both PEM-encoded.
func registryTestCertificate(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "testenv registry"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	return certPEM, keyPEM
}
