package batch

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
)

// parseImageSyncer reads image-syncer's images file: a mapping from a source to one
// destination or a list of them. It also reads image-syncer's older config file, which
// holds the auth file's content under "auth" and the images file's under "images".
//
// A source without tag copies every tag; "repo:a,b,c" copies those tags; "repo:tag" and
// "repo@digest" copy one image. A destination without tag keeps the source's tag, and
// must have none when the source names several tags or none. "$VAR" and "${VAR}" in
// destinations are replaced by environment variables, as image-syncer does.
func parseImageSyncer(name string, data []byte) (*Batch, error) {
	body, err := topNode(name, data)
	if err != nil {
		return nil, err
	}
	mapping, ok := body.(*ast.MappingNode)
	if !ok {
		return nil, fmt.Errorf("%w: %s: an image-syncer images file is a mapping from source images to destinations", ErrInvalidFile, name)
	}

	b := &Batch{}
	images := mapping
	keys := map[string]*ast.MappingValueNode{}
	for _, value := range mapping.Values {
		keys[keyString(value)] = value
	}
	if imagesValue := keys["images"]; imagesValue != nil && len(keys) <= 2 && (len(keys) == 1 || keys["auth"] != nil) {
		if images, ok = imagesValue.Value.(*ast.MappingNode); !ok {
			return nil, imageSyncerError(name, imagesValue.Value, "images must be a mapping from source images to destinations")
		}
		if authValue := keys["auth"]; authValue != nil {
			auth, err := parseAuthNode(name, authValue.Value)
			if err != nil {
				return nil, err
			}
			b.Auth = auth
		}
	}

	for _, item := range images.Values {
		source := keyString(item)
		var destinations []string
		switch v := item.Value.(type) {
		case *ast.StringNode:
			destinations = []string{v.Value}
		case *ast.SequenceNode:
			for _, d := range v.Values {
				s, ok := d.(*ast.StringNode)
				if !ok {
					return nil, imageSyncerError(name, d, "destinations of %q must be strings", source)
				}
				destinations = append(destinations, s.Value)
			}
		default:
			return nil, imageSyncerError(name, item.Value, "the destination of %q must be a string or a list of strings", source)
		}
		if len(destinations) == 0 {
			return nil, imageSyncerError(name, item.Value, "%q has no destination", source)
		}

		seen := map[string]bool{}
		for _, destination := range destinations {
			destination = os.ExpandEnv(destination)
			if seen[destination] {
				continue
			}
			seen[destination] = true
			entry, err := imageSyncerEntry(source, destination)
			if err != nil {
				return nil, imageSyncerError(name, item.Key, "%v", err)
			}
			entry.Origin = fmt.Sprintf("%s:%d", name, item.Key.GetToken().Position.Line)
			b.Entries = append(b.Entries, entry)
		}
	}
	return b, nil
}

func imageSyncerError(name string, node ast.Node, format string, args ...any) error {
	pos := node.GetToken().Position
	return fmt.Errorf("%w: %s:%d:%d: %s", ErrInvalidFile, name, pos.Line, pos.Column, fmt.Sprintf(format, args...))
}

// imageSyncerEntry turns one source and destination of an images file into an entry.
func imageSyncerEntry(source, destination string) (Entry, error) {
	if destination == "" {
		return Entry{}, fmt.Errorf("the destination of %q is empty: imgxfer has no default registry or namespace; write the destination", source)
	}
	dst, err := parseImage(destination)
	if err != nil {
		return Entry{}, fmt.Errorf("destination: %w", err)
	}

	var entry Entry
	repo, tagList, hasTags := cutTags(source)
	switch {
	case strings.Contains(source, "@"):
		src, err := parseImage(source)
		if err != nil {
			return Entry{}, fmt.Errorf("source: %w", err)
		}
		entry.Source = src.ref.CommonName()
		entry.Destination = destinationFor(src, dst)
	case hasTags && !strings.Contains(tagList, ","):
		src, err := parseImage(source)
		if err != nil {
			return Entry{}, fmt.Errorf("source: %w", err)
		}
		entry.Source = src.ref.CommonName()
		entry.Destination = destinationFor(src, dst)
	default:
		src, err := parseImage(repo)
		if err != nil {
			return Entry{}, fmt.Errorf("source: %w", err)
		}
		if dst.hasTag || dst.hasDigest {
			return Entry{}, fmt.Errorf("%q copies several tags, so its destination %q must not name a tag", source, destination)
		}
		if hasTags {
			for _, tag := range strings.Split(tagList, ",") {
				tag = strings.TrimSpace(tag)
				if err := checkTag(tag); err != nil {
					return Entry{}, err
				}
				if !slices.Contains(entry.Tags, tag) {
					entry.Tags = append(entry.Tags, tag)
				}
			}
		} else {
			entry.AllTags = true
		}
		entry.Source = src.repository()
		entry.Destination = dst.repository()
	}
	return entry, nil
}

// cutTags splits "registry/repo:a,b" into the repository and the tag list. The tag list
// follows the last ':' after the last '/', so a registry port is not taken for a tag.
func cutTags(source string) (repo, tags string, found bool) {
	slash := strings.LastIndex(source, "/")
	colon := strings.LastIndex(source, ":")
	if colon <= slash {
		return source, "", false
	}
	return source[:colon], source[colon+1:], true
}

// Auth is the content of an image-syncer auth file.
type Auth struct {
	Entries []AuthEntry
}

// AuthEntry is one key of an image-syncer auth file.
type AuthEntry struct {
	Origin   string // "auth.yaml:3"
	Key      string // "registry" or "registry/namespace", as written
	Registry string // the registry host as written in references; Docker Hub's names become docker.io
	Username string
	Password string
	Insecure bool // a plain-HTTP registry, as image-syncer documents the field
}

type authFields struct {
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	Insecure bool   `yaml:"insecure"`
}

// LoadAuth reads an image-syncer auth file, YAML or JSON.
func LoadAuth(path string) (*Auth, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading auth file: %w", err)
	}
	return ParseAuth(path, data)
}

// ParseAuth parses an image-syncer auth file: a mapping from "registry" or
// "registry/namespace" to username, password and insecure. "$VAR" and "${VAR}" in
// usernames and passwords are replaced by environment variables, as image-syncer does.
func ParseAuth(name string, data []byte) (*Auth, error) {
	body, err := topNode(name, data)
	if err != nil {
		return nil, err
	}
	return parseAuthNode(name, body)
}

func parseAuthNode(name string, body ast.Node) (*Auth, error) {
	mapping, ok := body.(*ast.MappingNode)
	if !ok {
		return nil, fmt.Errorf("%w: %s: an auth file is a mapping from registries to username, password and insecure", ErrInvalidFile, name)
	}
	auth := &Auth{}
	for _, item := range mapping.Values {
		key := keyString(item)
		var fields authFields
		if err := yaml.NodeToValue(item.Value, &fields, yaml.DisallowUnknownField()); err != nil {
			return nil, decodeError(name, err)
		}
		host, _, _ := strings.Cut(key, "/")
		if _, err := parseImage(host + "/x"); err != nil || host == "" {
			return nil, imageSyncerError(name, item.Key, "invalid registry %q: write registry or registry/namespace, such as quay.io or quay.io/coreos", key)
		}
		auth.Entries = append(auth.Entries, AuthEntry{
			Origin:   fmt.Sprintf("%s:%d", name, item.Key.GetToken().Position.Line),
			Key:      key,
			Registry: canonicalRegistry(host),
			Username: os.ExpandEnv(fields.Username),
			Password: os.ExpandEnv(fields.Password),
			Insecure: fields.Insecure,
		})
	}
	return auth, nil
}

// canonicalRegistry names Docker Hub as references do.
func canonicalRegistry(host string) string {
	switch strings.ToLower(host) {
	case "registry.hub.docker.com", "index.docker.io", "registry-1.docker.io":
		return "docker.io"
	}
	return host
}

// Credential is one registry's credentials, with the auth file entries they came from.
type Credential struct {
	Username string
	Password string
	Origins  []string
}

// Credentials returns one credential per registry host. imgxfer's registry client keeps
// credentials per host, so the namespace keys of a registry must carry the same username
// and password as its other keys. Otherwise Credentials fails, naming both entries.
func (a *Auth) Credentials() (map[string]Credential, error) {
	creds := map[string]Credential{}
	firstKey := map[string]AuthEntry{}
	for _, e := range a.Entries {
		if e.Username == "" && e.Password == "" {
			continue
		}
		if first, seen := firstKey[e.Registry]; seen {
			if first.Username != e.Username || first.Password != e.Password {
				return nil, fmt.Errorf("%w: %s: %q has other credentials than %q (%s); imgxfer keeps one username and password per registry, so give %s one set", ErrInvalidFile, e.Origin, e.Key, first.Key, first.Origin, e.Registry)
			}
			c := creds[e.Registry]
			c.Origins = append(c.Origins, e.Origin)
			creds[e.Registry] = c
			continue
		}
		firstKey[e.Registry] = e
		creds[e.Registry] = Credential{Username: e.Username, Password: e.Password, Origins: []string{e.Origin}}
	}
	return creds, nil
}

// InsecureRegistries returns the hosts marked insecure, which image-syncer documents as
// plain-HTTP registries.
func (a *Auth) InsecureRegistries() []string {
	var hosts []string
	for _, e := range a.Entries {
		if e.Insecure && !slices.Contains(hosts, e.Registry) {
			hosts = append(hosts, e.Registry)
		}
	}
	return hosts
}
