package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/auth/token"
	"github.com/go-jose/go-jose/v4"
	"github.com/regclient/regclient"
	"github.com/regclient/regclient/types/errs"
)

const (
	testTokenService = "harbor-registry"
	testTokenIssuer  = "imgxfer-test-issuer"
	testRepository   = "team/app"
)

// testTokenOptions returns issuer options with three users: pusher may pull
// and push team/app, puller may only pull it, and admin may do anything in
// every repository.
func testTokenOptions() TokenServerOptions {
	return TokenServerOptions{
		Service: testTokenService,
		Issuer:  testTokenIssuer,
		Users: map[string]TokenUser{
			"pusher": {Password: "pusher-secret", Access: map[string][]string{testRepository: {"pull", "push"}}},
			"puller": {Password: "puller-secret", Access: map[string][]string{testRepository: {"pull"}}},
			"admin":  {Password: "admin-secret", Access: map[string][]string{"*": {"*"}}},
		},
	}
}

func newTestTokenIssuer(t *testing.T, opts TokenServerOptions) *TokenIssuer {
	t.Helper()
	issuer, err := NewTokenIssuer(opts)
	if err != nil {
		t.Fatalf("NewTokenIssuer: %v", err)
	}
	t.Cleanup(func() {
		if err := issuer.Close(); err != nil {
			t.Errorf("close token issuer: %v", err)
		}
	})
	return issuer
}

func startTestTokenServer(t *testing.T, opts TokenServerOptions) *TokenServer {
	t.Helper()
	server, err := StartTokenServer(t.Context(), opts)
	if err != nil {
		t.Fatalf("StartTokenServer: %v", err)
	}
	t.Cleanup(func() {
		if err := server.Close(); err != nil {
			t.Errorf("close token server %s: %v", server.Addr, err)
		}
	})
	return server
}

// requestToken sends a token request for scopes straight to the issuer's
// handler. An empty user sends no credentials.
func requestToken(issuer http.Handler, service, user, password string, scopes ...string) *httptest.ResponseRecorder {
	query := url.Values{"service": {service}, "scope": scopes}
	req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1/token?"+query.Encode(), nil)
	if user != "" {
		req.SetBasicAuth(user, password)
	}
	recorder := httptest.NewRecorder()
	issuer.ServeHTTP(recorder, req)
	return recorder
}

// verifyToken decodes a successful token response and checks the token the
// way distribution's token access controller does, with the issuer's
// certificate as the only root.
func verifyToken(t *testing.T, issuer *TokenIssuer, response *httptest.ResponseRecorder) *token.ClaimSet {
	t.Helper()
	var body struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
		IssuedAt    string `json:"issued_at"`
	}
	if err := json.Unmarshal(response.Body.Bytes(), &body); err != nil {
		t.Fatalf("decode token response %q: %v", response.Body.String(), err)
	}
	if body.Token == "" || body.AccessToken != body.Token {
		t.Errorf("token = %q and access_token = %q, expected the same non-empty value", body.Token, body.AccessToken)
	}
	if body.ExpiresIn != 300 {
		t.Errorf("expires_in = %d, expected 300", body.ExpiresIn)
	}
	if _, err := time.Parse(time.RFC3339, body.IssuedAt); err != nil {
		t.Errorf("issued_at = %q, expected an RFC 3339 time: %v", body.IssuedAt, err)
	}

	parsed, err := token.NewToken(body.Token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatalf("parse token as ES256: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(issuer.CertPEM()) {
		t.Fatal("CertPEM contains no certificate")
	}
	claims, err := parsed.Verify(token.VerifyOptions{
		TrustedIssuers:    []string{testTokenIssuer},
		AcceptedAudiences: []string{testTokenService},
		Roots:             roots,
	})
	if err != nil {
		t.Fatalf("verify token: %v", err)
	}
	return claims
}

func TestTokenIssuerGrantsIntersection(t *testing.T) {
	tests := []struct {
		name    string
		user    string
		scopes  []string
		granted []string
	}{
		{
			name:    "pusher gets pull and push",
			user:    "pusher",
			scopes:  []string{"repository:team/app:pull,push"},
			granted: []string{"repository:team/app:pull,push"},
		},
		{
			name:    "puller gets only pull",
			user:    "puller",
			scopes:  []string{"repository:team/app:pull,push"},
			granted: []string{"repository:team/app:pull"},
		},
		{
			name:   "puller gets nothing elsewhere",
			user:   "puller",
			scopes: []string{"repository:team/other:pull"},
		},
		{
			name:   "pusher cannot delete",
			user:   "pusher",
			scopes: []string{"repository:team/app:delete,*"},
		},
		{
			name:    "admin gets every repository",
			user:    "admin",
			scopes:  []string{"repository:any/repo:pull,push,*", "repository:127.0.0.1:5000/library/app:pull"},
			granted: []string{"repository:any/repo:pull,push,*", "repository:127.0.0.1:5000/library/app:pull"},
		},
		{
			name:    "scopes of one repository merge",
			user:    "pusher",
			scopes:  []string{"repository:team/app:pull repository:team/app:push", "repository:team/app:pull"},
			granted: []string{"repository:team/app:pull,push"},
		},
		{
			name:   "catalog scope grants nothing",
			user:   "admin",
			scopes: []string{"registry:catalog:*"},
		},
		{
			name: "no scope grants nothing",
			user: "pusher",
		},
	}

	issuer := newTestTokenIssuer(t, testTokenOptions())
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			issuer.ResetRequests()
			password := testTokenOptions().Users[tc.user].Password
			response := requestToken(issuer, testTokenService, tc.user, password, tc.scopes...)
			if response.Code != http.StatusOK {
				t.Fatalf("status = %d with body %q, expected 200", response.Code, response.Body.String())
			}

			claims := verifyToken(t, issuer, response)
			if claims.Subject != tc.user {
				t.Errorf("sub = %q, expected %q", claims.Subject, tc.user)
			}
			var access []string
			for _, resource := range claims.Access {
				access = append(access, resource.Type+":"+resource.Name+":"+strings.Join(resource.Actions, ","))
			}
			if !slices.Equal(access, tc.granted) {
				t.Errorf("access claim = %q, expected %q", access, tc.granted)
			}
			lifetime := time.Unix(claims.Expiration, 0).Sub(time.Unix(claims.IssuedAt, 0))
			if lifetime != defaultTokenLifetime {
				t.Errorf("exp - iat = %s, expected %s", lifetime, defaultTokenLifetime)
			}

			requests := issuer.Requests()
			if len(requests) != 1 {
				t.Fatalf("Requests() = %+v, expected one request", requests)
			}
			if requests[0].User != tc.user || requests[0].Status != http.StatusOK || requests[0].Service != testTokenService {
				t.Errorf("Requests()[0] = %+v, expected user %q, status 200 and service %q", requests[0], tc.user, testTokenService)
			}
			if !slices.Equal(requests[0].Granted, tc.granted) {
				t.Errorf("Requests()[0].Granted = %q, expected %q", requests[0].Granted, tc.granted)
			}
		})
	}
}

func TestTokenIssuerRecordsSplitScopes(t *testing.T) {
	issuer := newTestTokenIssuer(t, testTokenOptions())
	requestToken(issuer, testTokenService, "pusher", "pusher-secret", "repository:team/app:pull repository:team/app:push", "")

	requests := issuer.Requests()
	if len(requests) != 1 {
		t.Fatalf("Requests() = %+v, expected one request", requests)
	}
	expected := []string{"repository:team/app:pull", "repository:team/app:push"}
	if !slices.Equal(requests[0].Scopes, expected) {
		t.Errorf("Scopes = %q, expected %q", requests[0].Scopes, expected)
	}
}

func TestTokenIssuerRejectsCredentials(t *testing.T) {
	tests := []struct {
		name          string
		authorization string
		user          string
	}{
		{name: "wrong password", authorization: basicAuthorization("pusher", "wrong"), user: "pusher"},
		{name: "unknown user", authorization: basicAuthorization("nobody", "pusher-secret"), user: "nobody"},
		{name: "password of another user", authorization: basicAuthorization("pusher", "puller-secret"), user: "pusher"},
		{name: "missing credentials"},
		{name: "bearer credentials", authorization: "Bearer abc"},
	}

	issuer := newTestTokenIssuer(t, testTokenOptions())
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			issuer.ResetRequests()
			req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1/token?service=harbor-registry&scope=repository:team/app:pull", nil)
			if tc.authorization != "" {
				req.Header.Set("Authorization", tc.authorization)
			}
			response := httptest.NewRecorder()
			issuer.ServeHTTP(response, req)

			if response.Code != http.StatusUnauthorized {
				t.Errorf("status = %d, expected 401", response.Code)
			}
			if got := response.Header().Get("WWW-Authenticate"); !strings.HasPrefix(got, "Basic ") {
				t.Errorf("WWW-Authenticate = %q, expected a Basic challenge", got)
			}
			var body tokenErrorBody
			if err := json.Unmarshal(response.Body.Bytes(), &body); err != nil {
				t.Fatalf("decode error body %q: %v", response.Body.String(), err)
			}
			if len(body.Errors) != 1 || body.Errors[0].Code != "UNAUTHORIZED" || body.Errors[0].Message == "" {
				t.Errorf("error body = %+v, expected one UNAUTHORIZED error with a message", body)
			}

			requests := issuer.Requests()
			if len(requests) != 1 {
				t.Fatalf("Requests() = %+v, expected one request", requests)
			}
			if requests[0].User != tc.user || requests[0].Status != http.StatusUnauthorized || requests[0].Granted != nil {
				t.Errorf("Requests()[0] = %+v, expected user %q, status 401 and nothing granted", requests[0], tc.user)
			}
		})
	}
}

func basicAuthorization(user, password string) string {
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.SetBasicAuth(user, password)
	return req.Header.Get("Authorization")
}

func TestTokenIssuerAnonymous(t *testing.T) {
	opts := testTokenOptions()
	opts.AllowAnonymous = true
	issuer := newTestTokenIssuer(t, opts)

	response := requestToken(issuer, testTokenService, "", "", "repository:team/app:pull")
	if response.Code != http.StatusOK {
		t.Fatalf("status = %d with body %q, expected 200", response.Code, response.Body.String())
	}
	claims := verifyToken(t, issuer, response)
	if claims.Subject != "" {
		t.Errorf("sub = %q, expected empty for an anonymous token", claims.Subject)
	}
	if len(claims.Access) != 0 {
		t.Errorf("access claim = %+v, expected none", claims.Access)
	}

	response = requestToken(issuer, testTokenService, "pusher", "wrong", "repository:team/app:pull")
	if response.Code != http.StatusUnauthorized {
		t.Errorf("wrong password with anonymous access allowed: status = %d, expected 401", response.Code)
	}
}

func TestTokenIssuerRejectsInvalidRequests(t *testing.T) {
	issuer := newTestTokenIssuer(t, testTokenOptions())

	response := requestToken(issuer, "other-registry", "pusher", "pusher-secret", "repository:team/app:pull")
	if response.Code != http.StatusBadRequest {
		t.Errorf("wrong service: status = %d, expected 400", response.Code)
	}
	response = requestToken(issuer, "", "pusher", "pusher-secret", "repository:team/app:pull")
	if response.Code != http.StatusBadRequest {
		t.Errorf("missing service: status = %d, expected 400", response.Code)
	}
	for _, scope := range []string{"repository:team/app", "repository::pull", ":team/app:pull"} {
		response = requestToken(issuer, testTokenService, "pusher", "pusher-secret", scope)
		if response.Code != http.StatusBadRequest {
			t.Errorf("scope %q: status = %d, expected 400", scope, response.Code)
		}
	}

	req := httptest.NewRequest(http.MethodPost, "http://127.0.0.1/token", strings.NewReader("grant_type=password"))
	response = httptest.NewRecorder()
	issuer.ServeHTTP(response, req)
	if response.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST: status = %d, expected 405", response.Code)
	}
	if got := response.Header().Get("Allow"); got != http.MethodGet {
		t.Errorf("POST: Allow = %q, expected GET", got)
	}
}

func TestNewTokenIssuerValidatesOptions(t *testing.T) {
	tests := []struct {
		name   string
		modify func(opts *TokenServerOptions)
	}{
		{name: "missing service", modify: func(opts *TokenServerOptions) { opts.Service = "" }},
		{name: "missing issuer", modify: func(opts *TokenServerOptions) { opts.Issuer = "" }},
		{name: "negative lifetime", modify: func(opts *TokenServerOptions) { opts.TokenLifetime = -time.Second }},
		{name: "colon in user name", modify: func(opts *TokenServerOptions) { opts.Users["a:b"] = TokenUser{} }},
		{name: "empty user name", modify: func(opts *TokenServerOptions) { opts.Users[""] = TokenUser{} }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := testTokenOptions()
			tc.modify(&opts)
			issuer, err := NewTokenIssuer(opts)
			if err == nil {
				_ = issuer.Close()
				t.Fatal("NewTokenIssuer returned no error")
			}
		})
	}
}

// newUserClient returns a regclient client for r that logs in as user.
func newUserClient(r *Registry, user, password string) *regclient.RegClient {
	host := r.HostConfig()
	host.User = user
	host.Pass = password
	return regclient.New(regclient.WithConfigHost(host))
}

// checkTokenAuth pushes, pulls and fails to push through registry r, which
// accepts tokens from issuer. It returns the requests that reached issuer.
func checkTokenAuth(t *testing.T, r *Registry, issuer *TokenIssuer) []TokenRequest {
	t.Helper()
	ctx := t.Context()
	reference := r.Addr + "/" + testRepository + ":v1"

	anonymous := NewClient(r)
	if _, err := anonymous.ManifestHead(ctx, mustParseRef(t, reference)); !errors.Is(err, errs.ErrHTTPUnauthorized) {
		t.Errorf("anonymous ManifestHead error = %v, expected %v", err, errs.ErrHTTPUnauthorized)
	}

	pusher := newUserClient(r, "pusher", "pusher-secret")
	spec := RandomImage(21, testPlatforms[:1], 2, 4096)
	pushed, err := PushIndex(ctx, pusher, reference, spec, "")
	if err != nil {
		t.Fatalf("PushIndex as pusher: %v", err)
	}

	puller := newUserClient(r, "puller", "puller-secret")
	m, err := puller.ManifestGet(ctx, mustParseRef(t, reference))
	if err != nil {
		t.Fatalf("ManifestGet as puller: %v", err)
	}
	if got := m.GetDescriptor().Digest; got != pushed.Index.Digest {
		t.Errorf("pulled index digest = %s, expected %s", got, pushed.Index.Digest)
	}
	blob, err := puller.BlobGet(ctx, mustParseRef(t, reference), pushed.Blobs[0])
	if err != nil {
		t.Fatalf("BlobGet as puller: %v", err)
	}
	content, err := io.ReadAll(blob)
	_ = blob.Close()
	if err != nil || int64(len(content)) != pushed.Blobs[0].Size {
		t.Errorf("read blob as puller: %d bytes and error %v, expected %d bytes", len(content), err, pushed.Blobs[0].Size)
	}

	r.ResetRequests()
	otherSpec := RandomImage(22, testPlatforms[:1], 1, 1024)
	_, err = PushIndex(ctx, puller, r.Addr+"/"+testRepository+":denied", otherSpec, "")
	if !errors.Is(err, errs.ErrHTTPUnauthorized) {
		t.Errorf("PushIndex as puller error = %v, expected %v", err, errs.ErrHTTPUnauthorized)
	}
	uploadRejected := slices.ContainsFunc(r.Requests(), func(record RequestRecord) bool {
		return record.Method == http.MethodPost && strings.HasSuffix(record.Path, "/blobs/uploads/") && record.Status == http.StatusUnauthorized
	})
	if !uploadRejected {
		t.Errorf("registry requests = %+v, expected a POST to blobs/uploads/ rejected with 401", r.Requests())
	}

	wrongPassword := newUserClient(r, "pusher", "wrong")
	if _, err := wrongPassword.ManifestHead(ctx, mustParseRef(t, reference)); !errors.Is(err, errs.ErrHTTPUnauthorized) {
		t.Errorf("ManifestHead with a wrong password error = %v, expected %v", err, errs.ErrHTTPUnauthorized)
	}

	requests := issuer.Requests()
	checkTokenRequest(t, requests, "puller", http.StatusOK, "repository:team/app:pull")
	checkTokenRequest(t, requests, "pusher", http.StatusOK, "repository:team/app:pull,push")
	checkTokenRequest(t, requests, "pusher", http.StatusUnauthorized, "")
	checkTokenRequest(t, requests, "", http.StatusUnauthorized, "")
	for _, request := range requests {
		if request.Service != testTokenService {
			t.Errorf("token request %+v: service = %q, expected %q", request, request.Service, testTokenService)
		}
		if request.User == "puller" && slices.ContainsFunc(request.Granted, func(scope string) bool { return strings.Contains(scope, "push") }) {
			t.Errorf("token request %+v: puller was granted push", request)
		}
	}
	return requests
}

// checkTokenRequest reports an error unless requests contain one from user
// with status that granted access, or granted nothing when access is empty.
// The order of the actions in access does not matter.
func checkTokenRequest(t *testing.T, requests []TokenRequest, user string, status int, access string) {
	t.Helper()
	found := slices.ContainsFunc(requests, func(request TokenRequest) bool {
		if request.User != user || request.Status != status {
			return false
		}
		if access == "" {
			return len(request.Granted) == 0
		}
		return slices.ContainsFunc(request.Granted, func(granted string) bool {
			return sortScopeActions(granted) == sortScopeActions(access)
		})
	})
	if !found {
		t.Errorf("token requests = %+v, expected one from user %q with status %d that granted %q", requests, user, status, access)
	}
}

// sortScopeActions returns scope with its actions sorted, such as
// "repository:team/app:pull,push" for "repository:team/app:push,pull".
func sortScopeActions(scope string) string {
	separator := strings.LastIndex(scope, ":")
	actions := strings.Split(scope[separator+1:], ",")
	slices.Sort(actions)
	return scope[:separator+1] + strings.Join(actions, ",")
}

func TestTokenServerRealmOnSeparateHost(t *testing.T) {
	server := startTestTokenServer(t, testTokenOptions())
	if !strings.HasPrefix(server.Addr, "127.0.0.1:") {
		t.Errorf("Addr = %q, expected 127.0.0.1:port", server.Addr)
	}
	if server.Realm != "http://"+server.Addr+"/token" {
		t.Errorf("Realm = %q, expected http://%s/token", server.Realm, server.Addr)
	}
	r := startTestRegistry(t, RegistryOptions{Auth: server.RegistryAuth()})

	requests := checkTokenAuth(t, r, server.Issuer)
	for _, request := range requests {
		if request.Host != server.Addr || request.Path != "/token" {
			t.Errorf("token request %+v: expected host %s and path /token", request, server.Addr)
		}
	}

	resp, err := http.Get(server.URL + "/other")
	if err != nil {
		t.Fatalf("GET /other: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /other status = %d, expected 404", resp.StatusCode)
	}
}

func TestTokenRealmOnRegistryHost(t *testing.T) {
	issuer := newTestTokenIssuer(t, testTokenOptions())
	var listenConfig net.ListenConfig
	listener, err := listenConfig.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen on 127.0.0.1: %v", err)
	}
	addr := listener.Addr().String()
	r := startTestRegistry(t, RegistryOptions{
		Listener:      listener,
		Auth:          issuer.RegistryAuth("http://" + addr + "/service/token"),
		ExtraHandlers: map[string]http.Handler{"/service/token": issuer},
	})
	if r.Addr != addr {
		t.Fatalf("registry Addr = %s, expected the listener's address %s", r.Addr, addr)
	}

	requests := checkTokenAuth(t, r, issuer)
	for _, request := range requests {
		if request.Host != addr || request.Path != "/service/token" {
			t.Errorf("token request %+v: expected host %s and path /service/token", request, addr)
		}
	}

	// The wrong-password token request is the last request of
	// checkTokenAuth, so the registry log must end with it.
	records := r.Requests()
	if len(records) == 0 {
		t.Fatal("registry Requests() is empty")
	}
	last := records[len(records)-1]
	if last.Path != "/service/token" || last.Status != http.StatusUnauthorized {
		t.Errorf("last registry request = %+v, expected the token request rejected with 401", last)
	}
}

func TestTokenServerHTTPS(t *testing.T) {
	ca, err := NewCA()
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	certPEM, keyPEM, err := ca.Issue("127.0.0.1")
	if err != nil {
		t.Fatalf("issue certificate: %v", err)
	}
	opts := testTokenOptions()
	opts.TLSCertPEM = certPEM
	opts.TLSKeyPEM = keyPEM
	server := startTestTokenServer(t, opts)
	if !strings.HasPrefix(server.Realm, "https://127.0.0.1:") {
		t.Errorf("Realm = %q, expected https://127.0.0.1:port/token", server.Realm)
	}

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.CertPool()}}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, server.Realm+"?service=harbor-registry&scope=repository:team/app:pull", nil)
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	req.SetBasicAuth("puller", "puller-secret")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", server.Realm, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status = %d, expected 200", resp.StatusCode)
	}
}

func TestStartTokenServerRejectsHalfTLS(t *testing.T) {
	opts := testTokenOptions()
	opts.TLSCertPEM = []byte("certificate")
	if server, err := StartTokenServer(t.Context(), opts); err == nil {
		_ = server.Close()
		t.Fatal("StartTokenServer returned no error for a certificate without a key")
	}
}

func TestStartRegistryRejectsExtraHandlerPrefixes(t *testing.T) {
	handler := http.NotFoundHandler()
	tests := map[string]map[string]http.Handler{
		"relative path":      {"service/token": handler},
		"root":               {"/": handler},
		"registry API":       {"/v2/token": handler},
		"registry API root":  {"/v2": handler},
		"nil handler":        {"/service/token": nil},
		"duplicate prefixes": {"/service": handler, "/service/": handler},
	}
	for name, handlers := range tests {
		t.Run(name, func(t *testing.T) {
			r, err := StartRegistry(t.Context(), RegistryOptions{ExtraHandlers: handlers})
			if err == nil {
				_ = r.Close()
				t.Fatal("StartRegistry returned no error")
			}
		})
	}
}

func TestStartRegistryExtraHandlersRouting(t *testing.T) {
	named := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusTeapot)
			_, _ = io.WriteString(w, name)
		})
	}
	r := startTestRegistry(t, RegistryOptions{ExtraHandlers: map[string]http.Handler{
		"/service":       named("service"),
		"/service/token": named("token"),
	}})

	tests := []struct {
		path string
		body string // empty for the registry
	}{
		{path: "/service/token", body: "token"},
		{path: "/service/token/sub", body: "token"},
		{path: "/service/tokens", body: "service"},
		{path: "/service", body: "service"},
		{path: "/servicex"},
		{path: "/v2/"},
	}
	for _, tc := range tests {
		resp, err := http.Get(r.URL + tc.path)
		if err != nil {
			t.Fatalf("GET %s: %v", tc.path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("read %s: %v", tc.path, err)
		}
		if tc.body == "" {
			if resp.StatusCode == http.StatusTeapot {
				t.Errorf("GET %s went to an extra handler, expected the registry", tc.path)
			}
			continue
		}
		if resp.StatusCode != http.StatusTeapot || string(body) != tc.body {
			t.Errorf("GET %s = %d %q, expected 418 %q", tc.path, resp.StatusCode, body, tc.body)
		}
	}

	records := r.Requests()
	if len(records) != len(tests) {
		t.Fatalf("Requests() has %d entries, expected %d: %+v", len(records), len(tests), records)
	}
	if records[0].Path != "/service/token" || records[0].Status != http.StatusTeapot {
		t.Errorf("Requests()[0] = %+v, expected /service/token with status 418", records[0])
	}
}

// fakeListener reports a non-loopback address without listening anywhere.
type fakeListener struct {
	closed bool
}

func (l *fakeListener) Accept() (net.Conn, error) { return nil, net.ErrClosed }
func (l *fakeListener) Close() error              { l.closed = true; return nil }
func (l *fakeListener) Addr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 5000}
}

func TestStartRegistryRejectsNonLoopbackListener(t *testing.T) {
	listener := &fakeListener{}
	r, err := StartRegistry(t.Context(), RegistryOptions{Listener: listener})
	if err == nil {
		_ = r.Close()
		t.Fatal("StartRegistry returned no error for a listener on 192.0.2.1")
	}
	if !listener.closed {
		t.Error("StartRegistry left the rejected listener open")
	}
}

func TestTokenFromUntrustedKeyRejected(t *testing.T) {
	server := startTestTokenServer(t, testTokenOptions())
	// The second issuer has the same name and service but its own key, so
	// only the signature distinguishes its tokens.
	trusted := newTestTokenIssuer(t, testTokenOptions())
	r := startTestRegistry(t, RegistryOptions{Auth: trusted.RegistryAuth(server.Realm)})

	pusher := newUserClient(r, "pusher", "pusher-secret")
	_, err := pusher.ManifestHead(t.Context(), mustParseRef(t, r.Addr+"/"+testRepository+":v1"))
	if !errors.Is(err, errs.ErrHTTPUnauthorized) {
		t.Errorf("ManifestHead with a token of an untrusted key error = %v, expected %v", err, errs.ErrHTTPUnauthorized)
	}
	checkTokenRequest(t, server.Issuer.Requests(), "pusher", http.StatusOK, "repository:team/app:pull")
	// The first 401 is the challenge of the request without a token, and
	// the second one rejects the token.
	rejected := 0
	for _, record := range r.Requests() {
		if record.Method == http.MethodHead && record.Status == http.StatusUnauthorized {
			rejected++
		}
	}
	if rejected < 2 {
		t.Errorf("registry requests = %+v, expected at least two HEAD requests rejected with 401", r.Requests())
	}
}
