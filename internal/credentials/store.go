// Package credentials stores and removes registry credentials where docker keeps them:
// in a credential helper when config.json names one for the registry (credHelpers) or for
// all registries (credsStore), else base64-encoded in config.json itself. imgxfer reads
// them back through regclient, under the same registry host.
package credentials

import (
	"fmt"
	"os"
	"os/exec"
	"sort"

	"github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/types"
)

// dockerHubKey is the key under which docker stores Docker Hub's credentials.
const dockerHubKey = "https://index.docker.io/v1/"

// Store saves the credentials for registry ("host" or "host:port", as in references) in
// the docker configuration folder ($DOCKER_CONFIG or ~/.docker). It returns where they went:
// the path of config.json, or the name of the credential helper.
func Store(registry, username, password string) (string, error) {
	file, err := load()
	if err != nil {
		return "", err
	}
	key := serverKey(registry)
	store := file.GetCredentialsStore(key)
	err = store.Store(types.AuthConfig{ServerAddress: key, Username: username, Password: password})
	if err != nil {
		return "", fmt.Errorf("storing credentials for %s in %s: %w", registry, location(file, key), err)
	}
	return location(file, key), nil
}

// Erase removes the stored credentials for registry. It reports whether any were stored.
func Erase(registry string) (bool, string, error) {
	file, err := load()
	if err != nil {
		return false, "", err
	}
	key := serverKey(registry)
	store := file.GetCredentialsStore(key)
	existing, err := store.Get(key)
	if err != nil {
		return false, "", fmt.Errorf("reading credentials for %s from %s: %w", registry, location(file, key), err)
	}
	if existing.Username == "" && existing.Password == "" && existing.IdentityToken == "" {
		return false, location(file, key), nil
	}
	if err := store.Erase(key); err != nil {
		return false, "", fmt.Errorf("removing credentials for %s from %s: %w", registry, location(file, key), err)
	}
	return true, location(file, key), nil
}

func load() (*configfile.ConfigFile, error) {
	dir := configDir()
	file, err := config.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("reading docker configuration in %s: %w", dir, err)
	}
	return file, nil
}

// configDir returns $DOCKER_CONFIG, else docker's default folder. It reads the variable on
// every call, where docker's config.Dir reads it once per process.
func configDir() string {
	if dir := os.Getenv(config.EnvOverrideConfigDir); dir != "" {
		return dir
	}
	return config.Dir()
}

// serverKey returns the key docker uses for registry in config.json and helpers.
func serverKey(registry string) string {
	switch registry {
	case "docker.io", "index.docker.io", "registry-1.docker.io":
		return dockerHubKey
	}
	return registry
}

func location(file *configfile.ConfigFile, key string) string {
	if helper := file.CredentialHelpers[key]; helper != "" {
		return "credential helper docker-credential-" + helper
	}
	if file.CredentialsStore != "" {
		return "credential helper docker-credential-" + file.CredentialsStore
	}
	return file.Filename
}

// Username returns the username stored for registry, or "" when none is stored or the
// store cannot be read.
func Username(registry string) string {
	file, err := load()
	if err != nil {
		return ""
	}
	key := serverKey(registry)
	auth, err := file.GetCredentialsStore(key).Get(key)
	if err != nil {
		return ""
	}
	return auth.Username
}

// Check reads docker's configuration as Store does. It returns an error when the file
// cannot be read or parsed, because regclient would then ignore every credential in it
// without saying so, and the names of the credential helpers it names that are not on
// PATH.
func Check() (missingHelpers []string, err error) {
	file, err := load()
	if err != nil {
		return nil, fmt.Errorf("%w; fix the file, or set DOCKER_CONFIG to a folder with a valid config.json", err)
	}
	helpers := map[string]bool{}
	if file.CredentialsStore != "" {
		helpers[file.CredentialsStore] = true
	}
	for _, helper := range file.CredentialHelpers {
		helpers[helper] = true
	}
	for helper := range helpers {
		if _, err := exec.LookPath("docker-credential-" + helper); err != nil {
			missingHelpers = append(missingHelpers, "docker-credential-"+helper)
		}
	}
	sort.Strings(missingHelpers)
	return missingHelpers, nil
}
