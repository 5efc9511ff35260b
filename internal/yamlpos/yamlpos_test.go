package yamlpos

import "testing"

const document = `version: 1
routes:
  - hosts: [a.test]
    proxy: http://p.test:1
annotations:
  'org.example.team': platform
`

func TestPosition(t *testing.T) {
	tests := []struct {
		path         string
		line, column int
	}{
		{"$.routes[0].proxy", 4, 12},
		{"$.routes[0].hosts[0]", 3, 13},
		{"$.routes[0].missing", 3, 10}, // the parent mapping
		{"$.routes[7]", 3, 3},
		{"$.annotations.'org.example.team'", 6, 23},
	}
	for _, tt := range tests {
		line, column := Position([]byte(document), tt.path)
		if line != tt.line || column != tt.column {
			t.Errorf("Position(%q) = %d:%d, want %d:%d", tt.path, line, column, tt.line, tt.column)
		}
	}
}

func TestPositionOfBrokenDocument(t *testing.T) {
	line, column := Position([]byte("routes: [a\n"), "$.routes[0]")
	if line != 1 || column != 1 {
		t.Errorf("Position in a broken document = %d:%d, want 1:1", line, column)
	}
}

func TestParent(t *testing.T) {
	tests := map[string]string{
		"$.routes[0].proxy":                "$.routes[0]",
		"$.routes[0]":                      "$.routes",
		"$.routes":                         "$",
		"$":                                "",
		"$.annotations.'org.example.team'": "$.annotations",
	}
	for path, want := range tests {
		if got := Parent(path); got != want {
			t.Errorf("Parent(%q) = %q, want %q", path, got, want)
		}
	}
}
