package batch

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDetectFormats(t *testing.T) {
	tests := []struct {
		file string
		want Format
	}{
		{"imgxfer.yaml", FormatImgxfer},
		{"imgxfer.json", FormatImgxfer},
		{"transfer-list.json", FormatTransfer},
		{"transfer-one.json", FormatTransfer},
		{"images.yaml", FormatImageSyncer},
		{"images.json", FormatImageSyncer},
		{"config.json", FormatImageSyncer},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := Detect(tt.file, readTestdata(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("Detect = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestDetectAmbiguousFile(t *testing.T) {
	_, err := Detect("odd.yaml", []byte("name: {nested: 1}\n"))
	if !errors.Is(err, ErrInvalidFile) {
		t.Fatalf("error %v, want ErrInvalidFile", err)
	}
	for _, want := range []string{"odd.yaml", "--file-format", "copies", "src", "image-syncer"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestParseImgxfer(t *testing.T) {
	b, err := Parse("imgxfer.yaml", readTestdata(t, "imgxfer.yaml"), FormatAuto)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Entries) != 4 {
		t.Fatalf("got %d entries, want 4", len(b.Entries))
	}

	single := b.Entries[0]
	if single.Source != "registry.dev.example.com:5000/team/app:1.4" || single.Destination != "registry.prod.example.com/team/app:1.4" {
		t.Errorf("entry 0 = %s -> %s", single.Source, single.Destination)
	}
	if single.Origin != "imgxfer.yaml:7" {
		t.Errorf("entry 0 origin = %q, want imgxfer.yaml:7", single.Origin)
	}
	if strings.Join(single.Platforms, ",") != "linux/amd64,linux/arm64" {
		t.Errorf("entry 0 platforms = %v, want the defaults", single.Platforms)
	}
	if single.Annotations["org.example.team"] != "platform" || single.Annotations["org.example.tier"] != "gold" {
		t.Errorf("entry 0 annotations = %v, want the default merged with its own", single.Annotations)
	}
	if single.Proxy != "http://mesh-proxy.example.com:31080" {
		t.Errorf("entry 0 proxy = %q, want the host:port made a URL", single.Proxy)
	}

	tags := b.Entries[1]
	if tags.Source != "registry.dev.example.com:5000/team/api" || tags.Destination != "registry.prod.example.com/team/api" {
		t.Errorf("entry 1 = %s -> %s, want repositories", tags.Source, tags.Destination)
	}
	if strings.Join(tags.Tags, ",") != "1.0,1.1" || len(tags.TagPatterns) != 1 {
		t.Fatalf("entry 1 tags = %v, patterns = %v", tags.Tags, tags.TagPatterns)
	}
	if !tags.TagPatterns[0].MatchString("v2.3") || tags.TagPatterns[0].MatchString("xv2.3") || tags.TagPatterns[0].MatchString("v2.3-rc") {
		t.Errorf("pattern %q should match whole tags only", tags.TagPatterns[0])
	}
	if strings.Join(tags.Platforms, ",") != "linux/arm/v7" {
		t.Errorf("entry 1 platforms = %v, want its own to replace the defaults", tags.Platforms)
	}

	prefixed := b.Entries[2]
	if prefixed.Destination != "registry.prod.example.com/mirror/library/alpine:3.20" {
		t.Errorf("entry 2 destination = %q, want the default prefix with the source's path", prefixed.Destination)
	}
	digest := b.Entries[3]
	if !strings.HasSuffix(digest.Destination, "/copies/tool@sha256:"+strings.Repeat("a", 64)) {
		t.Errorf("entry 3 destination = %q, want the source digest", digest.Destination)
	}
}

func TestParseTransfer(t *testing.T) {
	b, err := Parse("transfer-list.json", readTestdata(t, "transfer-list.json"), FormatAuto)
	if err != nil {
		t.Fatal(err)
	}
	if b.Format != FormatTransfer || len(b.Entries) != 3 {
		t.Fatalf("format %s with %d entries, want transfer with 3", b.Format, len(b.Entries))
	}
	if b.Entries[0].Proxy != "http://mesh-proxy.example.com:31080" || b.Entries[0].Origin != "transfer-list.json:2" {
		t.Errorf("entry 0 = %+v", b.Entries[0])
	}
	if b.Entries[1].Proxy != "https://mesh-proxy.example.com:31443" || b.Entries[1].Annotations["org.example.build"] != "42" {
		t.Errorf("entry 1 = %+v", b.Entries[1])
	}
	if b.Entries[2].Proxy != "" || b.Entries[2].Destination != "registry.dev.example.com:5000/backup/app:1.4" {
		t.Errorf("entry 2 = %+v, want direct with the source tag kept", b.Entries[2])
	}

	one, err := Parse("transfer-one.json", readTestdata(t, "transfer-one.json"), FormatAuto)
	if err != nil {
		t.Fatal(err)
	}
	if len(one.Entries) != 1 || one.Entries[0].Destination != "registry.prod.example.com/team/app:1.4" {
		t.Errorf("single object entries = %+v", one.Entries)
	}
}

func TestParseImageSyncer(t *testing.T) {
	t.Setenv("MIRROR_NAMESPACE", "mirror")
	b, err := Parse("images.yaml", readTestdata(t, "images.yaml"), FormatAuto)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Entries) != 5 {
		t.Fatalf("got %d entries, want 5", len(b.Entries))
	}
	all := b.Entries[0]
	if !all.AllTags || all.Source != "quay.io/coreos/kube-rbac-proxy" || all.Destination != "registry.prod.example.com/coreos/kube-rbac-proxy" {
		t.Errorf("entry 0 = %+v, want every tag of the repository", all.SyncEntry)
	}
	one := b.Entries[1]
	if one.Source != "quay.io/coreos/kube-rbac-proxy:v0.4.1" || one.Destination != "registry.prod.example.com/coreos/rbac:v0.4.1" {
		t.Errorf("entry 1 = %s -> %s", one.Source, one.Destination)
	}
	list := b.Entries[2]
	if strings.Join(list.Tags, ",") != "v1,v2,v3" || list.Destination != "registry.prod.example.com/mirror/etcd" {
		t.Errorf("entry 2 = %+v, want three tags and $MIRROR_NAMESPACE expanded", list.SyncEntry)
	}
	if b.Entries[3].Destination != "registry.backup.example.com/mirror/etcd" || b.Entries[3].Origin != "images.yaml:3" {
		t.Errorf("entry 3 = %+v, want the second destination of the list", b.Entries[3].SyncEntry)
	}
	if !strings.HasPrefix(b.Entries[4].Destination, "registry.prod.example.com:5000/pause@sha256:") {
		t.Errorf("entry 4 destination = %q, want the digest kept", b.Entries[4].Destination)
	}
}

func TestParseImageSyncerConfig(t *testing.T) {
	b, err := Parse("config.json", readTestdata(t, "config.json"), FormatAuto)
	if err != nil {
		t.Fatal(err)
	}
	if b.Auth == nil || len(b.Auth.Entries) != 1 || b.Auth.Entries[0].Registry != "docker.io" {
		t.Fatalf("auth = %+v, want Docker Hub's credentials under docker.io", b.Auth)
	}
	if len(b.Entries) != 1 || b.Entries[0].Source != "docker.io/library/busybox:1.36" {
		t.Errorf("entries = %+v", b.Entries)
	}
}

func TestParseAuth(t *testing.T) {
	t.Setenv("QUAY_PASSWORD", "s3cret")
	auth, err := ParseAuth("auth.yaml", readTestdata(t, "auth.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	creds, err := auth.Credentials()
	if err != nil {
		t.Fatal(err)
	}
	quay := creds["quay.io"]
	if quay.Username != "robot" || quay.Password != "s3cret" || len(quay.Origins) != 2 {
		t.Errorf("quay.io credentials = %+v, want the expanded password from both keys", quay)
	}
	if got := auth.InsecureRegistries(); strings.Join(got, ",") != "registry.lab.example.com:5000" {
		t.Errorf("insecure registries = %v", got)
	}

	conflicting := []byte("quay.io:\n  username: a\n  password: x\nquay.io/coreos:\n  username: b\n  password: y\n")
	auth, err = ParseAuth("conflict.yaml", conflicting)
	if err != nil {
		t.Fatal(err)
	}
	_, err = auth.Credentials()
	if !errors.Is(err, ErrInvalidFile) {
		t.Fatalf("error %v, want ErrInvalidFile", err)
	}
	for _, want := range []string{"conflict.yaml:4", `"quay.io/coreos"`, `"quay.io"`, "one username and password per registry"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name   string
		format Format
		data   string
		want   []string
	}{
		{"unknown field", FormatAuto, "copies:\n  - source: a.test/x:1\n    destinaton: b.test/x:1\n", []string{"bad.yaml:3:5", "destinaton"}},
		{"missing destination", FormatAuto, "copies:\n  - source: a.test/x:1\n", []string{"bad.yaml:2:", "copies[0]", "destination_prefix"}},
		{"bad source", FormatAuto, "copies:\n  - source: 'Not A Ref'\n    destination: b.test/x\n", []string{"bad.yaml:2:", "copies[0].source", `"Not A Ref"`}},
		{"tag with patterns", FormatAuto, "copies:\n  - source: a.test/x:1\n    destination: b.test/x\n    tags: ['2']\n", []string{"copies[0].source", "repository alone"}},
		{"bad pattern", FormatAuto, "copies:\n  - source: a.test/x\n    destination: b.test/x\n    tag_patterns: ['(']\n", []string{"bad.yaml:4:", "tag_patterns[0]", `"("`}},
		{"bad platform", FormatAuto, "defaults:\n  platforms: [linux]\ncopies:\n  - source: a.test/x:1\n    destination: b.test/x\n", []string{"bad.yaml:2:", "defaults.platforms[0]", "os/arch"}},
		{"bad annotation", FormatAuto, "copies:\n  - source: a.test/x:1\n    destination: b.test/x\n    annotations: {'a b': c}\n", []string{"copies[0].annotations", `"a b"`}},
		{"newer version", FormatAuto, "version: 9\ncopies:\n  - source: a.test/x:1\n    destination: b.test/x\n", []string{"bad.yaml:1:", "upgrade imgxfer"}},
		{"no copies", FormatImgxfer, "version: 1\n", []string{"lists no copies"}},
		{"empty file", FormatAuto, "\n", []string{"bad.yaml is empty"}},
		{"transfer without dest", FormatAuto, `[{"src": {"image": "a.test/x:1"}}]`, []string{"bad.yaml:1:", "dest.image is missing"}},
		{"transfer unknown field", FormatAuto, `[{"src": {"image": "a.test/x:1"}, "dest": {"image": "b.test/x"}, "proxy": "p"}]`, []string{"bad.yaml:1:", "proxy"}},
		{"transfer bad proxy", FormatAuto, `{"src": {"image": "a.test/x:1"}, "dest": {"image": "b.test/x"}, "proxy_domain": "ftp://p:1"}`, []string{"proxy_domain", `"ftp://p:1"`}},
		{"image-syncer tag on multi-tag destination", FormatAuto, "a.test/x:1,2: b.test/x:3\n", []string{"bad.yaml:1:1", "must not name a tag"}},
		{"image-syncer empty destination", FormatAuto, "a.test/x:1: ''\n", []string{"bad.yaml:1:1", "no default registry"}},
		{"image-syncer bad tag", FormatAuto, "a.test/x:1,-bad: b.test/x\n", []string{"bad.yaml:1:1", `"-bad"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("bad.yaml", []byte(tt.data), tt.format)
			if !errors.Is(err, ErrInvalidFile) {
				t.Fatalf("error %v, want ErrInvalidFile", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans several lines: %q", err)
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		})
	}
}

func TestParseFormat(t *testing.T) {
	if f, err := ParseFormat("image-syncer"); err != nil || f != FormatImageSyncer {
		t.Errorf("ParseFormat(image-syncer) = %s, %v", f, err)
	}
	_, err := ParseFormat("xml")
	if err == nil || !strings.Contains(err.Error(), `"xml"`) || !strings.Contains(err.Error(), "transfer") {
		t.Errorf("ParseFormat(xml) error %v, want the value and the choices", err)
	}
}

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestK8sSyncExampleParses(t *testing.T) {
	b, err := Load("../../k8s/sync/sync.yaml", FormatAuto)
	if err != nil {
		t.Fatalf("k8s/sync/sync.yaml: %v", err)
	}
	if b.Format != FormatImgxfer {
		t.Errorf("k8s/sync/sync.yaml detected as %s, want %s", b.Format, FormatImgxfer)
	}
	if len(b.Entries) != 2 {
		t.Errorf("k8s/sync/sync.yaml has %d entries, want 2", len(b.Entries))
	}
}
