// Package yamlpos finds where a field sits in a YAML document, so that configuration
// errors found after decoding can still name a line and column.
package yamlpos

import (
	"regexp"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/parser"
)

// lastSegment matches the last step of a YAML path: ".key", ".'quoted key'" or "[3]".
var lastSegment = regexp.MustCompile(`(\.[^.\[\]']+|\.'[^']*'|\[\d+\])$`)

// Parent returns the path one step above path, such as "$.routes[0]" for
// "$.routes[0].proxy", and "" above the root "$".
func Parent(path string) string {
	if path == "$" {
		return ""
	}
	return lastSegment.ReplaceAllString(path, "")
}

// Position returns the line and column of the node at a YAML path such as
// "$.routes[0].proxy" in data, falling back to the closest parent that exists, and to 1:1
// when the document has none of them or cannot be parsed.
func Position(data []byte, path string) (line, column int) {
	file, err := parser.ParseBytes(data, 0)
	if err != nil {
		return 1, 1
	}
	for p := path; p != ""; p = Parent(p) {
		yamlPath, err := yaml.PathString(p)
		if err != nil {
			continue
		}
		node, err := yamlPath.FilterFile(file)
		if err != nil || node == nil || node.GetToken() == nil {
			continue
		}
		return node.GetToken().Position.Line, node.GetToken().Position.Column
	}
	return 1, 1
}
