package batch

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/goccy/go-yaml"

	"github.com/imgxfer/imgxfer/internal/yamlpos"
)

// maxFileSize bounds a batch or auth file read from stdin.
const maxFileSize = 16 << 20

func readAll(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("the input is larger than %d MiB", maxFileSize>>20)
	}
	return data, nil
}

// decodeError turns a go-yaml error into one line with the file, line and column.
func decodeError(name string, err error) error {
	var yamlErr yaml.Error
	if !errors.As(err, &yamlErr) || yamlErr.GetToken() == nil {
		return fmt.Errorf("%w: %s: %w", ErrInvalidFile, name, err)
	}
	pos := yamlErr.GetToken().Position
	return fmt.Errorf("%w: %s:%d:%d: %s", ErrInvalidFile, name, pos.Line, pos.Column, yamlErr.GetMessage())
}

// locator turns a YAML path such as "$.copies[2].source" into an error that names the
// file, the line and column of that field, and the field.
type locator struct {
	name string
	data []byte
}

func (l locator) errorf(path, format string, args ...any) error {
	line, column := l.position(path)
	field := strings.TrimPrefix(strings.TrimPrefix(path, "$"), ".")
	message := fmt.Sprintf(format, args...)
	if field == "" {
		return fmt.Errorf("%w: %s:%d:%d: %s", ErrInvalidFile, l.name, line, column, message)
	}
	return fmt.Errorf("%w: %s:%d:%d: %s: %s", ErrInvalidFile, l.name, line, column, field, message)
}

// origin returns "name:line" for the node at path, for messages about a copy.
func (l locator) origin(path string) string {
	line, _ := l.position(path)
	return fmt.Sprintf("%s:%d", l.name, line)
}

// position returns the line and column of the field at path, or of its closest parent
// that exists.
func (l locator) position(path string) (line, column int) {
	return yamlpos.Position(l.data, path)
}
