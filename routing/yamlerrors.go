package routing

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"

	"github.com/imgxfer/imgxfer/internal/yamlpos"
)

// fieldError is a validation failure of one field, located by its YAML path such as
// "$.routes[0].proxy".
type fieldError struct {
	path    string
	message string
}

func (e *fieldError) Error() string {
	return e.field() + ": " + e.message
}

// field returns the path without the leading "$.", as a user would name the field.
func (e *fieldError) field() string {
	return strings.TrimPrefix(strings.TrimPrefix(e.path, "$"), ".")
}

var indexSegment = regexp.MustCompile(`\[\d+\]`)

// position returns the line and column of the field at a YAML path in data.
func position(data []byte, path string) (line, column int) {
	return yamlpos.Position(data, path)
}

// parentPath returns the YAML path one step above path.
func parentPath(path string) string {
	return yamlpos.Parent(path)
}

// decodeError turns a go-yaml decoding error into one line with the file, line, column
// and, for an unknown field, the fields allowed at that place.
func decodeError(name string, data []byte, err error) error {
	var yamlErr yaml.Error
	if !errors.As(err, &yamlErr) || yamlErr.GetToken() == nil {
		return fmt.Errorf("%w: %s: %w", ErrInvalidRules, name, err)
	}

	pos := yamlErr.GetToken().Position
	message := yamlErr.GetMessage()
	var unknown *yaml.UnknownFieldError
	if errors.As(err, &unknown) {
		if allowed := allowedFieldsAt(data, pos.Line, pos.Column); allowed != "" {
			message += "; allowed fields here: " + allowed
		}
		return fmt.Errorf("%w: %s:%d:%d: %s", ErrInvalidRules, name, pos.Line, pos.Column, message)
	}

	// go-yaml words type errors in Go terms ("cannot unmarshal string into Go struct
	// field Rules.Version of type int"). Name the field and the expected YAML kind instead.
	if field := fieldAt(data, pos.Line, pos.Column); field != "" {
		if kind := expectedKind(field); kind != "" {
			message = "expected " + kind
		}
		return fmt.Errorf("%w: %s:%d:%d: %s: %s", ErrInvalidRules, name, pos.Line, pos.Column, field, message)
	}
	return fmt.Errorf("%w: %s:%d:%d: %s", ErrInvalidRules, name, pos.Line, pos.Column, message)
}

// fieldAt returns the field path, such as "routes[0].tls", of the value at line:column,
// or "" when no mapping value starts there.
func fieldAt(data []byte, line, column int) string {
	file, err := parser.ParseBytes(data, 0)
	if err != nil {
		return ""
	}
	var path string
	for _, doc := range file.Docs {
		ast.Walk(visitorFunc(func(node ast.Node) {
			mv, ok := node.(*ast.MappingValueNode)
			if !ok || path != "" || mv.Value == nil {
				return
			}
			tok := mv.Value.GetToken()
			if tok != nil && tok.Position.Line == line && tok.Position.Column == column {
				path = mv.Key.GetPath()
			}
		}), doc)
	}
	return strings.TrimPrefix(strings.TrimPrefix(path, "$"), ".")
}

// expectedKind describes the YAML value that the field at path takes, such as "a list of
// strings" or "a mapping with fields ca_file, insecure", or "" when path is unknown.
func expectedKind(path string) string {
	parent := structAt(reflect.TypeOf(Rules{}), parentPath("$."+path))
	if parent == nil {
		return ""
	}
	name := indexSegment.ReplaceAllString(path[strings.LastIndex(path, ".")+1:], "")
	field, ok := fieldByYAMLName(parent, name)
	if !ok {
		return ""
	}
	return describeKind(field.Type)
}

func describeKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Struct {
			return "a list of mappings with fields " + strings.Join(yamlFieldNames(t.Elem()), ", ")
		}
		return "a list of " + strings.TrimPrefix(describeKind(t.Elem()), "a ") + "s"
	case reflect.Struct:
		return "a mapping with fields " + strings.Join(yamlFieldNames(t), ", ")
	case reflect.Pointer:
		return describeKind(t.Elem())
	}
	return ""
}

// allowedFieldsAt finds the mapping key at line:column and lists the YAML field names of
// the struct that the mapping decodes into.
func allowedFieldsAt(data []byte, line, column int) string {
	file, err := parser.ParseBytes(data, 0)
	if err != nil {
		return ""
	}

	var keyPath string
	for _, doc := range file.Docs {
		ast.Walk(visitorFunc(func(node ast.Node) {
			mv, ok := node.(*ast.MappingValueNode)
			if !ok || keyPath != "" {
				return
			}
			tok := mv.Key.GetToken()
			if tok != nil && tok.Position.Line == line && tok.Position.Column == column {
				keyPath = mv.Key.GetPath()
			}
		}), doc)
	}
	if keyPath == "" {
		return ""
	}

	structType := structAt(reflect.TypeOf(Rules{}), parentPath(keyPath))
	if structType == nil {
		return ""
	}
	return strings.Join(yamlFieldNames(structType), ", ")
}

type visitorFunc func(ast.Node)

func (f visitorFunc) Visit(node ast.Node) ast.Visitor {
	f(node)
	return f
}

// structAt follows a YAML path such as "$.routes[0].tls" through the struct fields of root
// and returns the struct type found there, or nil.
func structAt(root reflect.Type, path string) reflect.Type {
	current := root
	for _, segment := range strings.Split(strings.TrimPrefix(path, "$"), ".") {
		segment = indexSegment.ReplaceAllString(segment, "")
		if segment == "" {
			continue
		}
		field, ok := fieldByYAMLName(current, segment)
		if !ok {
			return nil
		}
		current = field.Type
		for current.Kind() == reflect.Slice || current.Kind() == reflect.Pointer {
			current = current.Elem()
		}
		if current.Kind() != reflect.Struct {
			return nil
		}
	}
	return current
}

func fieldByYAMLName(structType reflect.Type, name string) (reflect.StructField, bool) {
	for i := 0; i < structType.NumField(); i++ {
		field := structType.Field(i)
		if strings.Split(field.Tag.Get("yaml"), ",")[0] == name {
			return field, true
		}
	}
	return reflect.StructField{}, false
}

func yamlFieldNames(structType reflect.Type) []string {
	var names []string
	for i := 0; i < structType.NumField(); i++ {
		name := strings.Split(structType.Field(i).Tag.Get("yaml"), ",")[0]
		if name != "" && name != "-" {
			names = append(names, name)
		}
	}
	return names
}
