// Package batch reads the files that list the copies of `imgxfer sync`: imgxfer's own
// format, the JSON of the in-house transfer tool that imgxfer replaces, and image-syncer's
// images and auth files. Every format becomes the same list of entries, checked without
// contacting a registry, and every error names the file, line and column.
package batch

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"

	"github.com/imgxfer/imgxfer/internal/registry"
)

// ErrInvalidFile marks every error about the content of a batch or auth file.
var ErrInvalidFile = errors.New("invalid batch file")

// Format is a batch file format.
type Format string

// Batch file formats.
const (
	FormatAuto        Format = "auto"         // detect from the content
	FormatImgxfer     Format = "imgxfer"      // version, defaults and copies; YAML or JSON
	FormatTransfer    Format = "transfer"     // the in-house tool's JSON: src, dest, proxy_domain
	FormatImageSyncer Format = "image-syncer" // image-syncer's images file, or its config file with auth and images
)

// Formats lists the values that ParseFormat accepts.
var Formats = []Format{FormatAuto, FormatImgxfer, FormatTransfer, FormatImageSyncer}

// ParseFormat returns the format named text.
func ParseFormat(text string) (Format, error) {
	for _, f := range Formats {
		if string(f) == text {
			return f, nil
		}
	}
	names := make([]string, len(Formats))
	for i, f := range Formats {
		names[i] = string(f)
	}
	return "", fmt.Errorf("invalid file format %q: use %s", text, strings.Join(names, ", "))
}

// Entry is one entry of a batch file.
type Entry struct {
	registry.SyncEntry

	// Proxy routes the destination's registry through this proxy URL, as a route of its
	// own placed ahead of the rules file's routes. Empty means the rules decide.
	Proxy string
}

// Batch is a parsed batch file.
type Batch struct {
	Format  Format
	Entries []Entry

	// Auth holds the credentials of an image-syncer config file, which carries its auth
	// file's content under "auth". It is nil for other formats.
	Auth *Auth
}

// Load reads and parses the batch file at path; "-" reads stdin.
func Load(path string, format Format) (*Batch, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(displayName(path), data, format)
}

func readFile(path string) ([]byte, error) {
	if path == "-" {
		data, err := readAll(os.Stdin)
		if err != nil {
			return nil, fmt.Errorf("reading the batch file from stdin: %w", err)
		}
		return data, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading batch file: %w", err)
	}
	return data, nil
}

func displayName(path string) string {
	if path == "-" {
		return "(stdin)"
	}
	return path
}

// Parse parses a batch file. name is used in error messages, which take the form
// "name:line:column: problem".
func Parse(name string, data []byte, format Format) (*Batch, error) {
	if strings.TrimSpace(string(data)) == "" {
		return nil, fmt.Errorf("%w: %s is empty; list the copies in it", ErrInvalidFile, name)
	}
	if format == "" || format == FormatAuto {
		detected, err := Detect(name, data)
		if err != nil {
			return nil, err
		}
		format = detected
	}

	var b *Batch
	var err error
	switch format {
	case FormatImgxfer:
		b, err = parseImgxfer(name, data)
	case FormatTransfer:
		b, err = parseTransfer(name, data)
	case FormatImageSyncer:
		b, err = parseImageSyncer(name, data)
	default:
		return nil, fmt.Errorf("invalid file format %q", format)
	}
	if err != nil {
		return nil, err
	}
	if len(b.Entries) == 0 {
		return nil, fmt.Errorf("%w: %s lists no copies", ErrInvalidFile, name)
	}
	b.Format = format
	return b, nil
}

// Detect returns the format of a batch file, judged by its top-level structure:
//   - imgxfer: a mapping with "copies" (and optionally "version" and "defaults");
//   - transfer: a list, or one mapping with "src";
//   - image-syncer: a mapping from image references to a string or a list of strings, or a
//     mapping with exactly "auth" and "images".
func Detect(name string, data []byte) (Format, error) {
	body, err := topNode(name, data)
	if err != nil {
		return "", err
	}
	switch node := body.(type) {
	case *ast.SequenceNode:
		return FormatTransfer, nil
	case *ast.MappingNode:
		keys := map[string]bool{}
		imageMap := true
		for _, value := range node.Values {
			keys[keyString(value)] = true
			switch v := value.Value.(type) {
			case *ast.StringNode:
			case *ast.SequenceNode:
				for _, item := range v.Values {
					if _, ok := item.(*ast.StringNode); !ok {
						imageMap = false
					}
				}
			default:
				imageMap = false
			}
		}
		switch {
		case keys["copies"]:
			return FormatImgxfer, nil
		case keys["src"]:
			return FormatTransfer, nil
		case keys["images"] && len(keys) <= 2 && (len(keys) == 1 || keys["auth"]):
			return FormatImageSyncer, nil
		case imageMap:
			return FormatImageSyncer, nil
		}
	}
	return "", fmt.Errorf("%w: %s: cannot tell the file format: expected a mapping with \"copies\" (imgxfer), a list of {src, dest} objects (transfer) or a mapping from images to destinations (image-syncer); set --file-format", ErrInvalidFile, name)
}

// topNode returns the body of the file's only YAML document. JSON is YAML, so JSON files
// parse the same way.
func topNode(name string, data []byte) (ast.Node, error) {
	file, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, decodeError(name, err)
	}
	if len(file.Docs) != 1 || file.Docs[0].Body == nil {
		return nil, fmt.Errorf("%w: %s: expected one YAML or JSON document, found %d", ErrInvalidFile, name, len(file.Docs))
	}
	return file.Docs[0].Body, nil
}

func keyString(value *ast.MappingValueNode) string {
	if s, ok := value.Key.(*ast.StringNode); ok {
		return s.Value
	}
	return value.Key.GetToken().Value
}
