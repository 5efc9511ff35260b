package batch

import (
	"fmt"
	"regexp"
	"strings"
	"sync"

	"github.com/regclient/regclient/types/ref"

	"github.com/imgxfer/imgxfer/internal/registry"
)

// imageName is an image reference split as written: whether it names a tag or a digest.
type imageName struct {
	ref       ref.Ref
	hasTag    bool // a tag was written; ref.Tag is "latest" when none was
	hasDigest bool
}

func parseImage(text string) (imageName, error) {
	r, err := registry.ParseReference(text)
	if err != nil {
		return imageName{}, err
	}
	if r.Scheme != "reg" {
		return imageName{}, fmt.Errorf("%w %q: batch files name registry images only", registry.ErrInvalidReference, text)
	}
	name := text
	if at := strings.Index(name, "@"); at >= 0 {
		name = name[:at]
	}
	lastPart := name[strings.LastIndex(name, "/")+1:]
	return imageName{ref: r, hasTag: strings.Contains(lastPart, ":"), hasDigest: r.Digest != ""}, nil
}

// repository returns the reference's registry and repository, without tag or digest.
func (n imageName) repository() string {
	return n.ref.SetTag("").CommonName()
}

// destinationFor returns the destination of a single copy of src. A destination that names
// neither tag nor digest is a repository, which gets the source's tag, or its digest when
// the source names only a digest.
func destinationFor(src, dst imageName) string {
	if dst.hasTag || dst.hasDigest {
		return dst.ref.CommonName()
	}
	switch {
	case src.hasTag || !src.hasDigest:
		return dst.ref.SetTag(src.ref.Tag).CommonName()
	default:
		return dst.ref.SetDigest(src.ref.Digest).CommonName()
	}
}

// prefixed returns the repository under prefix that mirrors the source's repository path:
// prefix "registry.prod.example.com/mirror" and source
// "registry.dev.example.com:5000/team/app:1.4" give
// "registry.prod.example.com/mirror/team/app".
func prefixed(prefix string, src imageName) (imageName, error) {
	return parseImage(strings.TrimSuffix(prefix, "/") + "/" + src.ref.Repository)
}

// checkPrefix validates a destination prefix: a registry, optionally with a path, and no
// tag or digest.
func checkPrefix(prefix string) error {
	trimmed := strings.TrimSuffix(prefix, "/")
	_, path, _ := strings.Cut(trimmed, "/")
	_, err := parseImage(trimmed + "/x")
	if trimmed == "" || strings.Contains(trimmed, "@") || strings.Contains(path, ":") || err != nil {
		return fmt.Errorf("invalid prefix %q: give a registry and an optional path without tag or digest, such as registry.prod.example.com/mirror", prefix)
	}
	return nil
}

// compilePattern compiles a tag pattern so that it matches whole tags.
func compilePattern(pattern string) (*regexp.Regexp, error) {
	re, err := regexp.Compile("^(?:" + pattern + ")$")
	if err != nil {
		return nil, fmt.Errorf("invalid tag pattern %q: %v", pattern, err)
	}
	return re, nil
}

// tagSyntax is compiled on first use, because its bounded repetition makes compiling it
// a noticeable part of the process start of every command.
var tagSyntax = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
})

func checkTag(tag string) error {
	if !tagSyntax().MatchString(tag) {
		return fmt.Errorf("invalid tag %q: a tag has up to 128 letters, digits, '_', '.' or '-', and does not start with '.' or '-'", tag)
	}
	return nil
}

// normalizeProxy turns a proxy given as host[:port] into an http:// URL and leaves URLs
// as they are. Routing validates the result.
func normalizeProxy(proxy string) string {
	if proxy == "" || strings.Contains(proxy, "://") {
		return proxy
	}
	return "http://" + proxy
}
