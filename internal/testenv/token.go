package testenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/auth/token"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// defaultTokenLifetime is the token lifetime when TokenServerOptions sets
// none.
const defaultTokenLifetime = 5 * time.Minute

// tokenServerShutdownTimeout bounds how long TokenServer.Close waits for
// in-flight requests before it drops the remaining connections.
const tokenServerShutdownTimeout = 5 * time.Second

// tokenServerPath is the path that StartTokenServer serves the issuer on.
const tokenServerPath = "/token"

// TokenServerOptions configures a TokenIssuer and the server that
// StartTokenServer runs for it.
type TokenServerOptions struct {
	// Users maps a user name to its password and permissions.
	Users map[string]TokenUser

	// Service is the registry's service name, such as "harbor-registry".
	// The issuer rejects a request whose service parameter differs, and
	// every token names the service as its audience. It is required.
	Service string

	// Issuer is the "iss" claim of every token, which the registry checks.
	// It is required.
	Issuer string

	// AllowAnonymous lets a request without credentials get a token that
	// grants no access. Without it, such a request gets 401.
	AllowAnonymous bool

	// TokenLifetime is how long a token stays valid. Zero means 5 minutes.
	// distribution v3.1.2 still accepts a token up to 60 seconds after it
	// expires, to allow for clock skew.
	TokenLifetime time.Duration

	// TLSCertPEM and TLSKeyPEM make StartTokenServer serve HTTPS with this
	// certificate chain and private key. Both empty means plain HTTP.
	// NewTokenIssuer ignores them.
	TLSCertPEM []byte
	TLSKeyPEM  []byte
}

// TokenUser is the password and the permissions of one user of a
// TokenIssuer.
type TokenUser struct {
	Password string

	// Access maps a repository name, such as "team/app", or "*" for every
	// repository, to the actions the user may get: "pull", "push", "delete"
	// or "*" for every action.
	Access map[string][]string
}

// TokenRequest is one request that reached a TokenIssuer.
type TokenRequest struct {
	Method string
	Path   string
	// Host is the Host header as the issuer received it.
	Host string
	// User is the user name from the Basic credentials, also when the
	// password was wrong. It is empty for an anonymous request.
	User string
	// Service is the request's service parameter.
	Service string
	// Scopes are the requested scopes, such as "repository:team/app:pull,push",
	// in request order. A scope parameter that lists several
	// space-separated scopes adds one entry for each.
	Scopes []string
	// Granted lists the access in the issued token in the same form as
	// Scopes. It is empty unless Status is 200.
	Granted []string
	Status  int
}

// TokenIssuer is an http.Handler that issues the bearer tokens of
// distribution's "token" authentication, following distribution's "Token
// Authentication Implementation" page
// (https://distribution.github.io/distribution/spec/auth/jwt/). A client
// sends a GET request with the query parameters service and scope, and with
// Basic credentials unless TokenServerOptions.AllowAnonymous is set.
//
// Each token grants the intersection of the requested actions and the user's
// permissions. A pull-only user that requests "pull,push" thus gets a token
// for pull only, and the registry then rejects the push. The issuer serves
// every path it receives, so it can be mounted at any prefix.
//
// NOTE: Only "repository" scopes can be granted. A scope of another type,
// such as "registry:catalog:*", is accepted but grants nothing.
type TokenIssuer struct {
	users          map[string]TokenUser
	service        string
	issuer         string
	allowAnonymous bool
	lifetime       time.Duration

	signer  jose.Signer
	certPEM []byte

	// dir contains rootCertBundlePath and is removed by Close.
	dir                string
	rootCertBundlePath string

	requestsMu sync.Mutex
	requests   []TokenRequest

	closeOnce sync.Once
	closeErr  error
}

// NewTokenIssuer generates an ECDSA P-256 signing key and a self-signed
// certificate for it, valid for 24 hours, and writes the certificate to a
// new temporary directory for the registry's rootcertbundle setting. The
// caller must call Close to remove that directory.
func NewTokenIssuer(opts TokenServerOptions) (*TokenIssuer, error) {
	if opts.Service == "" {
		return nil, errors.New("new token issuer: Service is required")
	}
	if opts.Issuer == "" {
		return nil, errors.New("new token issuer: Issuer is required")
	}
	if opts.TokenLifetime < 0 {
		return nil, fmt.Errorf("new token issuer: invalid TokenLifetime %s: expected a positive duration or zero for the default", opts.TokenLifetime)
	}
	users, err := copyTokenUsers(opts.Users)
	if err != nil {
		return nil, fmt.Errorf("new token issuer: %w", err)
	}

	key, certDER, err := newSigningCertificate(opts.Issuer)
	if err != nil {
		return nil, fmt.Errorf("new token issuer: %w", err)
	}
	signer, err := newTokenSigner(key, certDER)
	if err != nil {
		return nil, fmt.Errorf("new token issuer: %w", err)
	}

	issuer := &TokenIssuer{
		users:          users,
		service:        opts.Service,
		issuer:         opts.Issuer,
		allowAnonymous: opts.AllowAnonymous,
		lifetime:       opts.TokenLifetime,
		signer:         signer,
		certPEM:        pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}),
	}
	if issuer.lifetime == 0 {
		issuer.lifetime = defaultTokenLifetime
	}

	issuer.dir, err = os.MkdirTemp("", "imgxfer-token-issuer-")
	if err != nil {
		return nil, fmt.Errorf("new token issuer: create directory for the root certificate bundle: %w", err)
	}
	issuer.rootCertBundlePath, err = WriteFile(issuer.dir, "token-signing-cert.pem", issuer.certPEM)
	if err != nil {
		_ = os.RemoveAll(issuer.dir)
		return nil, fmt.Errorf("new token issuer: %w", err)
	}
	return issuer, nil
}

// copyTokenUsers returns a deep copy of users, so a caller that changes its
// map later does not race with the handler.
func copyTokenUsers(users map[string]TokenUser) (map[string]TokenUser, error) {
	copied := make(map[string]TokenUser, len(users))
	for name, user := range users {
		// Basic credentials end the user name at the first colon.
		if name == "" || strings.Contains(name, ":") {
			return nil, fmt.Errorf("invalid user name %q: expected a non-empty name without a colon", name)
		}
		access := make(map[string][]string, len(user.Access))
		for repository, actions := range user.Access {
			access[repository] = slices.Clone(actions)
		}
		copied[name] = TokenUser{Password: user.Password, Access: access}
	}
	return copied, nil
}

// newSigningCertificate generates a P-256 key and a self-signed certificate
// for it. distribution trusts the certificate when it is in the registry's
// rootcertbundle, and it accepts any extended key usage.
func newSigningCertificate(commonName string) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate token signing key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}

	now := time.Now()
	template := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: commonName, Organization: []string{"imgxfer testenv"}},
		NotBefore:    now.Add(-certClockSkew),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create token signing certificate: %w", err)
	}
	return key, der, nil
}

// newTokenSigner returns an ES256 signer whose JWS header carries the
// certificate in "x5c", which distribution verifies against its
// rootcertbundle. The header also carries "kid", the key's JWK thumbprint,
// which distribution looks up among the rootcertbundle keys when "x5c" is
// missing.
func newTokenSigner(key *ecdsa.PrivateKey, certDER []byte) (jose.Signer, error) {
	signingKey := jose.SigningKey{
		Algorithm: jose.ES256,
		Key:       jose.JSONWebKey{Key: key, KeyID: token.GetJWKThumbprint(&key.PublicKey)},
	}
	options := (&jose.SignerOptions{}).
		WithType("JWT").
		WithHeader("x5c", []string{base64.StdEncoding.EncodeToString(certDER)})
	signer, err := jose.NewSigner(signingKey, options)
	if err != nil {
		return nil, fmt.Errorf("create ES256 token signer: %w", err)
	}
	return signer, nil
}

// CertPEM returns the self-signed certificate of the token signing key.
func (i *TokenIssuer) CertPEM() []byte {
	return append([]byte(nil), i.certPEM...)
}

// RegistryAuth returns the registry authentication settings that accept this
// issuer's tokens and send clients to realm for them. realm is an absolute
// URL, such as TokenServer.Realm or "http://127.0.0.1:5000/service/token"
// for an issuer mounted on the registry through
// RegistryOptions.ExtraHandlers. The settings also restrict the registry to
// ES256 signatures.
func (i *TokenIssuer) RegistryAuth(realm string) configuration.Auth {
	return configuration.Auth{"token": configuration.Parameters{
		"realm":          realm,
		"service":        i.service,
		"issuer":         i.issuer,
		"rootcertbundle": i.rootCertBundlePath,
		// distribution reads this setting only as a []any.
		"signingalgorithms": []any{string(jose.ES256)},
	}}
}

// Requests returns a copy of the requests served so far, in the order their
// responses were written.
func (i *TokenIssuer) Requests() []TokenRequest {
	i.requestsMu.Lock()
	defer i.requestsMu.Unlock()
	return slices.Clone(i.requests)
}

// ResetRequests clears the request log.
func (i *TokenIssuer) ResetRequests() {
	i.requestsMu.Lock()
	defer i.requestsMu.Unlock()
	i.requests = nil
}

// Close removes the directory of the root certificate bundle. A registry
// reads the bundle only when it starts, so running registries keep
// accepting tokens. Calls after the first return the first call's result.
func (i *TokenIssuer) Close() error {
	i.closeOnce.Do(func() {
		if err := os.RemoveAll(i.dir); err != nil {
			i.closeErr = fmt.Errorf("remove token issuer directory: %w", err)
		}
	})
	return i.closeErr
}

// tokenResponse is the body of a successful token response. Clients read
// either token or access_token, which carry the same value.
type tokenResponse struct {
	Token       string `json:"token"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
	IssuedAt    string `json:"issued_at"`
}

// ServeHTTP issues a token for a GET request, or writes a JSON error: 401
// for missing or wrong credentials, 400 for a wrong service or an invalid
// scope, and 405 for other methods.
func (i *TokenIssuer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	query := r.URL.Query()
	record := TokenRequest{
		Method:  r.Method,
		Path:    r.URL.Path,
		Host:    r.Host,
		Service: query.Get("service"),
	}
	for _, value := range query["scope"] {
		record.Scopes = append(record.Scopes, strings.Fields(value)...)
	}

	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		i.writeError(w, &record, http.StatusMethodNotAllowed, "UNSUPPORTED",
			fmt.Sprintf("method %s is not supported, expected GET", r.Method))
		return
	}

	user, status, message := i.authenticate(r)
	record.User = user.name
	if status != http.StatusOK {
		w.Header().Set("WWW-Authenticate", `Basic realm="imgxfer test token issuer", charset="UTF-8"`)
		i.writeError(w, &record, status, "UNAUTHORIZED", message)
		return
	}
	if record.Service != i.service {
		i.writeError(w, &record, http.StatusBadRequest, "INVALID_REQUEST",
			fmt.Sprintf("invalid service %q, expected %q", record.Service, i.service))
		return
	}
	access, err := grantAccess(user.TokenUser, record.Scopes)
	if err != nil {
		i.writeError(w, &record, http.StatusBadRequest, "INVALID_REQUEST", err.Error())
		return
	}

	now := time.Now()
	signed, err := i.signToken(user.name, access, now)
	if err != nil {
		i.writeError(w, &record, http.StatusInternalServerError, "UNKNOWN", err.Error())
		return
	}
	for _, resource := range access {
		record.Granted = append(record.Granted, resource.Type+":"+resource.Name+":"+strings.Join(resource.Actions, ","))
	}
	i.writeJSON(w, &record, http.StatusOK, tokenResponse{
		Token:       signed,
		AccessToken: signed,
		ExpiresIn:   int64(i.lifetime / time.Second),
		IssuedAt:    now.UTC().Format(time.RFC3339),
	})
}

// namedTokenUser is an authenticated user. The zero value is the anonymous
// user, which has no permissions.
type namedTokenUser struct {
	name string
	TokenUser
}

// authenticate checks the request's credentials. It returns the user name
// even when the password is wrong, so the request log shows it, with 200 or
// 401 and a message for the client.
func (i *TokenIssuer) authenticate(r *http.Request) (namedTokenUser, int, string) {
	if r.Header.Get("Authorization") == "" {
		if i.allowAnonymous {
			return namedTokenUser{}, http.StatusOK, ""
		}
		return namedTokenUser{}, http.StatusUnauthorized, "authentication required: send Basic credentials"
	}

	name, password, ok := r.BasicAuth()
	if !ok {
		return namedTokenUser{}, http.StatusUnauthorized, "invalid Authorization header: expected Basic credentials"
	}
	user, known := i.users[name]
	// The comparison runs for unknown users too, so both failures take
	// about the same time.
	passwordMatches := subtle.ConstantTimeCompare([]byte(password), []byte(user.Password)) == 1
	if !known || !passwordMatches {
		return namedTokenUser{name: name}, http.StatusUnauthorized, "invalid username or password"
	}
	return namedTokenUser{name: name, TokenUser: user}, http.StatusOK, ""
}

// grantAccess parses scopes and returns the access to grant to user for
// them, one entry for each repository in the order first requested. A
// repository whose requested actions the user has none of is left out.
func grantAccess(user TokenUser, scopes []string) ([]*token.ResourceActions, error) {
	var granted []*token.ResourceActions
	for _, scope := range scopes {
		resourceType, name, actions, err := parseScope(scope)
		if err != nil {
			return nil, err
		}
		if resourceType != "repository" {
			continue
		}
		permitted := append(slices.Clone(user.Access[name]), user.Access["*"]...)

		index := slices.IndexFunc(granted, func(resource *token.ResourceActions) bool { return resource.Name == name })
		if index < 0 {
			granted = append(granted, &token.ResourceActions{Type: resourceType, Name: name})
			index = len(granted) - 1
		}
		resource := granted[index]
		for _, action := range actions {
			// A permitted "*" covers every action, but a requested "*" is
			// granted only to users that may do everything.
			allowed := slices.Contains(permitted, "*") || (action != "*" && slices.Contains(permitted, action))
			if allowed && !slices.Contains(resource.Actions, action) {
				resource.Actions = append(resource.Actions, action)
			}
		}
	}

	granted = slices.DeleteFunc(granted, func(resource *token.ResourceActions) bool { return len(resource.Actions) == 0 })
	// The access claim stays a JSON array, not null, when nothing is
	// granted.
	if granted == nil {
		granted = []*token.ResourceActions{}
	}
	return granted, nil
}

// parseScope splits a scope of the form type:name:actions. The name may
// contain colons, such as a registry host with a port, so the actions start
// after the last colon.
func parseScope(scope string) (resourceType, name string, actions []string, err error) {
	resourceType, rest, found := strings.Cut(scope, ":")
	separator := strings.LastIndex(rest, ":")
	if !found || separator < 0 || resourceType == "" || separator == 0 {
		return "", "", nil, fmt.Errorf("invalid scope %q: expected type:name:actions, such as repository:team/app:pull", scope)
	}
	name = rest[:separator]
	for action := range strings.SplitSeq(rest[separator+1:], ",") {
		if action != "" {
			actions = append(actions, action)
		}
	}
	return resourceType, name, actions, nil
}

// signToken returns a signed JWT for subject with the claims that
// distribution checks: iss, aud, exp, nbf and access.
func (i *TokenIssuer) signToken(subject string, access []*token.ResourceActions, now time.Time) (string, error) {
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", fmt.Errorf("generate token ID: %w", err)
	}
	claims := token.ClaimSet{
		Issuer:     i.issuer,
		Subject:    subject,
		Audience:   token.AudienceList{i.service},
		Expiration: now.Add(i.lifetime).Unix(),
		NotBefore:  now.Unix(),
		IssuedAt:   now.Unix(),
		JWTID:      hex.EncodeToString(id[:]),
		Access:     access,
	}
	signed, err := jwt.Signed(i.signer).Claims(claims).Serialize()
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return signed, nil
}

// tokenErrorBody has the error format of the registry API.
type tokenErrorBody struct {
	Errors []tokenError `json:"errors"`
}

type tokenError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (i *TokenIssuer) writeError(w http.ResponseWriter, record *TokenRequest, status int, code, message string) {
	i.writeJSON(w, record, status, tokenErrorBody{Errors: []tokenError{{Code: code, Message: message}}})
}

// writeJSON records the request with status, then writes the response, so a
// client that has received the response finds its request in Requests.
func (i *TokenIssuer) writeJSON(w http.ResponseWriter, record *TokenRequest, status int, body any) {
	encoded, err := json.Marshal(body)
	if err != nil {
		status = http.StatusInternalServerError
		encoded = []byte(`{"errors":[{"code":"UNKNOWN","message":"encode response"}]}`)
	}
	record.Status = status
	i.requestsMu.Lock()
	i.requests = append(i.requests, *record)
	i.requestsMu.Unlock()

	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(encoded, '\n'))
}

// TokenServer serves a TokenIssuer on its own 127.0.0.1 listener, like the
// separate realm host of Docker Hub.
type TokenServer struct {
	// Addr is the listener address, 127.0.0.1:port.
	Addr string
	// URL is "http://" or "https://" followed by Addr.
	URL string
	// Realm is the token endpoint, URL followed by "/token". Other paths
	// return 404.
	Realm string
	// Issuer is the handler behind Realm, for its request log.
	Issuer *TokenIssuer

	server *http.Server

	serveDone chan struct{}
	serveErr  error

	closeOnce sync.Once
	closeErr  error
}

// StartTokenServer creates a TokenIssuer and serves it at Realm on a new
// 127.0.0.1 listener. It returns once the listener accepts connections. The
// caller must call Close. ctx bounds only the start.
func StartTokenServer(ctx context.Context, opts TokenServerOptions) (*TokenServer, error) {
	if (len(opts.TLSCertPEM) == 0) != (len(opts.TLSKeyPEM) == 0) {
		return nil, errors.New("start token server: TLSCertPEM and TLSKeyPEM must be set together")
	}
	var tlsConfig *tls.Config
	if len(opts.TLSCertPEM) > 0 {
		cert, err := tls.X509KeyPair(opts.TLSCertPEM, opts.TLSKeyPEM)
		if err != nil {
			return nil, fmt.Errorf("start token server: invalid TLS certificate or key: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	issuer, err := NewTokenIssuer(opts)
	if err != nil {
		return nil, fmt.Errorf("start token server: %w", err)
	}
	var listenConfig net.ListenConfig
	listener, err := listenConfig.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		_ = issuer.Close()
		return nil, fmt.Errorf("start token server: listen on 127.0.0.1: %w", err)
	}

	mux := http.NewServeMux()
	mux.Handle(tokenServerPath, issuer)
	s := &TokenServer{
		Addr:      listener.Addr().String(),
		Issuer:    issuer,
		serveDone: make(chan struct{}),
		server: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 30 * time.Second,
			TLSConfig:         tlsConfig,
		},
	}
	if tlsConfig == nil {
		s.URL = "http://" + s.Addr
		go s.serve(func() error { return s.server.Serve(listener) })
	} else {
		s.URL = "https://" + s.Addr
		go s.serve(func() error { return s.server.ServeTLS(listener, "", "") })
	}
	s.Realm = s.URL + tokenServerPath
	return s, nil
}

func (s *TokenServer) serve(run func() error) {
	defer close(s.serveDone)
	if err := run(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.serveErr = err
	}
}

// RegistryAuth returns the registry authentication settings that send
// clients to Realm and accept the issuer's tokens.
func (s *TokenServer) RegistryAuth() configuration.Auth {
	return s.Issuer.RegistryAuth(s.Realm)
}

// Close stops the server, waiting up to 5 seconds for in-flight requests,
// and closes the issuer. Calls after the first return the first call's
// result.
func (s *TokenServer) Close() error {
	s.closeOnce.Do(func() {
		err := shutdownServer(s.server, tokenServerShutdownTimeout, s.serveDone, &s.serveErr, "token server "+s.Addr)
		s.closeErr = errors.Join(err, s.Issuer.Close())
	})
	return s.closeErr
}
