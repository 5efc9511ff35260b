package e2e

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regclient/regclient"
	"github.com/regclient/regclient/types/mediatype"

	"github.com/imgxfer/imgxfer/internal/testenv"
)

const (
	originHost = "origin.prod.test" // a registry that redirects blob downloads
	blobsHost  = "blobs.prod.test"  // its blob storage
)

// blobStore serves a registry's storage folder, as object storage would, and records the
// Host and Authorization headers of every request.
type blobStore struct {
	server *http.Server
	url    string
	mu     sync.Mutex
	seen   []http.Header
	hosts  []string
}

func startBlobStore(t *testing.T, root string) *blobStore {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	store := &blobStore{url: "http://" + listener.Addr().String()}
	files := http.FileServer(http.Dir(root))
	store.server = &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			store.mu.Lock()
			store.seen = append(store.seen, r.Header.Clone())
			store.hosts = append(store.hosts, r.Host)
			store.mu.Unlock()
			files.ServeHTTP(w, r)
		}),
	}
	go func() { _ = store.server.Serve(listener) }()
	t.Cleanup(func() { _ = store.server.Close() })
	return store
}

// TestRedirectTargetGetsNoCredentials copies from a password-protected registry that
// redirects blob downloads to blob storage on another routed host. The storage must
// receive no Authorization header, and the copy must still be complete.
func TestRedirectTargetGetsNoCredentials(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	root := filepath.Join(e.dir, "origin-storage")
	auth, err := testenv.HtpasswdAuth(filepath.Join(e.dir), lockedUser, lockedPassword)
	if err != nil {
		t.Fatal(err)
	}
	origin := startRegistry(t, ctx, testenv.RegistryOptions{RootDir: root, Auth: auth, StorageRedirect: "https://" + blobsHost})
	store := startBlobStore(t, root)

	originConfig := origin.HostConfig()
	originConfig.User, originConfig.Pass = lockedUser, lockedPassword
	seed := regclient.New(regclient.WithConfigHost(originConfig))
	pushed, err := testenv.PushIndex(ctx, seed, origin.Addr+"/team/app:1", e.randomSpec(t, "linux/amd64", "linux/arm64"), mediatype.OCI1ManifestList)
	if err != nil {
		t.Fatal(err)
	}

	certFile, keyFile := e.proxyCertificate(t)
	proxy, err := testenv.StartNginx(ctx, testenv.NginxOptions{
		RepoDir:        repoRoot(),
		Dir:            filepath.Join(e.dir, "origin-nginx"),
		Upstreams:      map[string]string{originHost: origin.URL, blobsHost: store.url},
		TLSCertFile:    certFile,
		TLSKeyFile:     keyFile,
		UpstreamCAFile: e.caFile,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Stop() })

	rules := e.writeRules(t, "origin-rules.yaml", `routes:
  - hosts: [`+originHost+`, `+blobsHost+`]
    proxy: http://`+proxy.HTTPAddr+`
  - hosts: [`+prodHost+`]
    proxy: http://`+e.nginx.HTTPAddr+`
`)
	e.writeDockerConfig(t, map[string]string{originHost: lockedUser + ":" + lockedPassword})

	out := e.copyJSON(t, "--rules", rules, originHost+"/team/app:1", prodHost+"/team/app:1")
	if out.DestinationDigest != pushed.Index.Digest.String() {
		t.Errorf("destinationDigest = %s, want %s", out.DestinationDigest, pushed.Index.Digest)
	}
	e.assertImage(t, e.prod, "team/app:1", pushed)

	store.mu.Lock()
	defer store.mu.Unlock()
	if len(store.seen) == 0 {
		t.Fatal("no blob was downloaded from blob storage, so the registry did not redirect")
	}
	for i, header := range store.seen {
		if header.Get("Authorization") != "" {
			t.Errorf("blob storage request %d carried an Authorization header", i)
		}
		if store.hosts[i] != blobsHost {
			t.Errorf("blob storage request %d arrived with Host %q, want %q (through the proxy)", i, store.hosts[i], blobsHost)
		}
	}
	if !strings.HasPrefix(store.url, "http://127.0.0.1:") {
		t.Errorf("blob storage listens on %s, want loopback", store.url)
	}
}
