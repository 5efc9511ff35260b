package testenv

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/regclient/regclient"
	"github.com/regclient/regclient/types/descriptor"
	"github.com/regclient/regclient/types/manifest"
	"github.com/regclient/regclient/types/mediatype"
	"github.com/regclient/regclient/types/platform"
	"github.com/regclient/regclient/types/ref"
)

var testPlatforms = []platform.Platform{
	{OS: "linux", Architecture: "amd64"},
	{OS: "linux", Architecture: "arm64", Variant: "v8"},
}

func mustParseRef(t *testing.T, reference string) ref.Ref {
	t.Helper()
	parsed, err := ref.New(reference)
	if err != nil {
		t.Fatalf("parse reference %q: %v", reference, err)
	}
	return parsed
}

// checkPushedIndex reads the index at reference and everything it refers to
// back from the registry and compares each digest with pushed.
func checkPushedIndex(t *testing.T, rc *regclient.RegClient, reference string, pushed Pushed, types mediaTypes) {
	t.Helper()
	ctx := t.Context()
	target := mustParseRef(t, reference)

	index, err := rc.ManifestGet(ctx, target)
	if err != nil {
		t.Fatalf("ManifestGet %s: %v", reference, err)
	}
	if got := index.GetDescriptor().Digest; got != pushed.Index.Digest {
		t.Errorf("index digest = %s, expected %s", got, pushed.Index.Digest)
	}
	if got := index.GetDescriptor().MediaType; got != types.index {
		t.Errorf("index media type = %s, expected %s", got, types.index)
	}
	indexer, ok := index.(manifest.Indexer)
	if !ok {
		t.Fatalf("manifest %s is a %T, expected an index", reference, index)
	}
	children, err := indexer.GetManifestList()
	if err != nil {
		t.Fatalf("GetManifestList: %v", err)
	}
	if len(children) != len(pushed.Manifests) {
		t.Fatalf("index lists %d manifests, expected %d", len(children), len(pushed.Manifests))
	}

	blobDigests := map[digest.Digest]bool{}
	for _, blob := range pushed.Blobs {
		blobDigests[blob.Digest] = true
	}
	for i, child := range children {
		expected := pushed.Manifests[i]
		if child.Digest != expected.Digest || child.Size != expected.Size || child.MediaType != types.manifest {
			t.Errorf("index entry %d = %s %s %d, expected %s %s %d",
				i, child.MediaType, child.Digest, child.Size, types.manifest, expected.Digest, expected.Size)
		}
		if child.Platform == nil || child.Platform.String() != expected.Platform.String() {
			t.Errorf("index entry %d platform = %v, expected %v", i, child.Platform, expected.Platform)
		}

		m, err := rc.ManifestGet(ctx, target.SetDigest(child.Digest.String()))
		if err != nil {
			t.Fatalf("ManifestGet child %s: %v", child.Digest, err)
		}
		if got := m.GetDescriptor().MediaType; got != types.manifest {
			t.Errorf("child %s media type = %s, expected %s", child.Digest, got, types.manifest)
		}
		image, ok := m.(manifest.Imager)
		if !ok {
			t.Fatalf("child %s is a %T, expected an image manifest", child.Digest, m)
		}
		config, err := image.GetConfig()
		if err != nil {
			t.Fatalf("GetConfig: %v", err)
		}
		if config.MediaType != types.config || !blobDigests[config.Digest] {
			t.Errorf("child %s config = %s %s, expected media type %s and a digest in Pushed.Blobs", child.Digest, config.MediaType, config.Digest, types.config)
		}
		layers, err := image.GetLayers()
		if err != nil {
			t.Fatalf("GetLayers: %v", err)
		}
		for _, layer := range layers {
			if layer.MediaType != types.layer || !blobDigests[layer.Digest] {
				t.Errorf("child %s layer = %s %s, expected media type %s and a digest in Pushed.Blobs", child.Digest, layer.MediaType, layer.Digest, types.layer)
			}
		}
	}

	for _, blob := range pushed.Blobs {
		// The descriptor carries only the digest, so the size checked below
		// comes from the registry's response.
		head, err := rc.BlobHead(ctx, target, descriptor.Descriptor{Digest: blob.Digest})
		if err != nil {
			t.Errorf("BlobHead %s: %v", blob.Digest, err)
			continue
		}
		headers := head.RawHeaders()
		head.Close()
		if got := headers.Get("Docker-Content-Digest"); got != blob.Digest.String() {
			t.Errorf("blob %s: Docker-Content-Digest = %q", blob.Digest, got)
		}
		if got := headers.Get("Content-Length"); got != strconv.FormatInt(blob.Size, 10) {
			t.Errorf("blob %s: Content-Length = %q, expected %d", blob.Digest, got, blob.Size)
		}
	}
}

// countRequests returns how many recorded requests have the method and
// status and a path that contains pathPart.
func countRequests(requests []RequestRecord, method, pathPart string, status int) int {
	count := 0
	for _, request := range requests {
		if request.Method == method && strings.Contains(request.Path, pathPart) && request.Status == status {
			count++
		}
	}
	return count
}

func TestPushIndexOCIAndDockerList(t *testing.T) {
	ociRegistry := startTestRegistry(t, RegistryOptions{})
	dockerRegistry := startTestRegistry(t, RegistryOptions{RootDir: t.TempDir()})
	rc := NewClient(ociRegistry, dockerRegistry)

	const layersPerPlatform = 3
	cases := []struct {
		name      string
		registry  *Registry
		repo      string
		seed      int64
		mediaType string
		types     mediaTypes
	}{
		{name: "oci index", registry: ociRegistry, repo: "test/oci", seed: 1, mediaType: "", types: ociMediaTypes},
		{name: "docker manifest list", registry: dockerRegistry, repo: "test/docker", seed: 2, mediaType: mediatype.Docker2ManifestList, types: dockerMediaTypes},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := RandomImage(tc.seed, testPlatforms, layersPerPlatform, 64<<10)
			reference := tc.registry.Addr + "/" + tc.repo + ":v1"
			pushed, err := PushIndex(t.Context(), rc, reference, spec, tc.mediaType)
			if err != nil {
				t.Fatalf("PushIndex: %v", err)
			}

			if pushed.Index.MediaType != tc.types.index {
				t.Errorf("Pushed.Index media type = %s, expected %s", pushed.Index.MediaType, tc.types.index)
			}
			if len(pushed.Manifests) != len(testPlatforms) {
				t.Fatalf("Pushed.Manifests has %d entries, expected %d", len(pushed.Manifests), len(testPlatforms))
			}
			// One config per platform, the shared bottom layer once and
			// the other layers once per platform.
			expectedBlobs := len(testPlatforms) + 1 + len(testPlatforms)*(layersPerPlatform-1)
			if len(pushed.Blobs) != expectedBlobs {
				t.Errorf("Pushed.Blobs has %d entries, expected %d", len(pushed.Blobs), expectedBlobs)
			}

			checkPushedIndex(t, rc, reference, pushed, tc.types)

			requests := tc.registry.Requests()
			// distribution returns 201 Created for a completed upload.
			if got := countRequests(requests, http.MethodPut, "/v2/"+tc.repo+"/blobs/uploads/", http.StatusCreated); got != expectedBlobs {
				t.Errorf("completed blob uploads = %d, expected %d", got, expectedBlobs)
			}
			expectedManifestPuts := len(testPlatforms) + 1
			if got := countRequests(requests, http.MethodPut, "/v2/"+tc.repo+"/manifests/", http.StatusCreated); got != expectedManifestPuts {
				t.Errorf("manifest PUTs = %d, expected %d", got, expectedManifestPuts)
			}
		})
	}

	// Each push went to its own registry only.
	for _, request := range ociRegistry.Requests() {
		if strings.Contains(request.Path, "test/docker") {
			t.Errorf("OCI registry received %s %s", request.Method, request.Path)
		}
	}
	for _, request := range dockerRegistry.Requests() {
		if strings.Contains(request.Path, "test/oci") {
			t.Errorf("Docker registry received %s %s", request.Method, request.Path)
		}
	}
}

func TestPushSingleDockerSchema2(t *testing.T) {
	r := startTestRegistry(t, RegistryOptions{})
	rc := NewClient(r)
	spec := RandomImage(3, testPlatforms[:1], 2, 4096)
	reference := r.Addr + "/test/single:v1"

	pushed, err := PushSingle(t.Context(), rc, reference, spec.Platforms[0], mediatype.Docker2Manifest)
	if err != nil {
		t.Fatalf("PushSingle: %v", err)
	}
	if pushed.Index.Digest != "" {
		t.Errorf("Pushed.Index = %+v, expected the zero value", pushed.Index)
	}
	if len(pushed.Manifests) != 1 || len(pushed.Blobs) != 3 {
		t.Fatalf("Pushed has %d manifests and %d blobs, expected 1 and 3", len(pushed.Manifests), len(pushed.Blobs))
	}

	m, err := rc.ManifestGet(t.Context(), mustParseRef(t, reference))
	if err != nil {
		t.Fatalf("ManifestGet: %v", err)
	}
	if got := m.GetDescriptor(); got.Digest != pushed.Manifests[0].Digest || got.MediaType != mediatype.Docker2Manifest {
		t.Errorf("manifest = %s %s, expected %s %s", got.MediaType, got.Digest, mediatype.Docker2Manifest, pushed.Manifests[0].Digest)
	}
	layers, err := m.(manifest.Imager).GetLayers()
	if err != nil {
		t.Fatalf("GetLayers: %v", err)
	}
	for _, layer := range layers {
		if layer.MediaType != mediatype.Docker2LayerGzip {
			t.Errorf("layer %s media type = %s, expected %s", layer.Digest, layer.MediaType, mediatype.Docker2LayerGzip)
		}
	}
}

func TestPushIndexRejectsUnknownMediaType(t *testing.T) {
	spec := RandomImage(4, testPlatforms, 1, 16)
	// The media type is checked before any request, so no registry is needed.
	_, err := PushIndex(t.Context(), regclient.New(), "127.0.0.1:1/test/bad:v1", spec, mediatype.OCI1Manifest)
	if err == nil {
		t.Fatal("PushIndex with an image manifest media type succeeded, expected an error")
	}
}

func TestRandomImageDeterministic(t *testing.T) {
	layerDigests := func(spec ImageSpec) [][]digest.Digest {
		var all [][]digest.Digest
		for _, image := range spec.Platforms {
			var digests []digest.Digest
			for _, layer := range image.Layers {
				desc, err := layer.Descriptor(mediatype.OCI1LayerGzip)
				if err != nil {
					t.Fatalf("Descriptor: %v", err)
				}
				digests = append(digests, desc.Digest)
			}
			all = append(all, digests)
		}
		return all
	}

	first := layerDigests(RandomImage(5, testPlatforms, 3, 1000))
	again := layerDigests(RandomImage(5, testPlatforms, 3, 1000))
	otherSeed := layerDigests(RandomImage(6, testPlatforms, 3, 1000))

	if len(first) != 2 || len(first[0]) != 3 || len(first[1]) != 3 {
		t.Fatalf("layer digests = %v, expected 2 platforms with 3 layers each", first)
	}
	for p := range first {
		for l := range first[p] {
			if first[p][l] != again[p][l] {
				t.Errorf("platform %d layer %d: digest %s, then %s for the same seed", p, l, first[p][l], again[p][l])
			}
			if first[p][l] == otherSeed[p][l] {
				t.Errorf("platform %d layer %d: seeds 5 and 6 give the same digest %s", p, l, first[p][l])
			}
		}
	}
	if first[0][0] != first[1][0] {
		t.Errorf("bottom layers differ (%s, %s), expected one shared layer", first[0][0], first[1][0])
	}
	seen := map[digest.Digest]bool{}
	for p := range first {
		for _, d := range first[p][1:] {
			if seen[d] || d == first[0][0] {
				t.Errorf("layer digest %s appears twice, expected unique upper layers", d)
			}
			seen[d] = true
		}
	}
}

func TestLayerOpenMatchesDescriptor(t *testing.T) {
	const fileSize = 300_000
	layer := RandomImage(9, testPlatforms[:1], 1, fileSize).Platforms[0].Layers[0]
	desc, err := layer.Descriptor(mediatype.OCI1LayerGzip)
	if err != nil {
		t.Fatalf("Descriptor: %v", err)
	}
	diffID, err := layer.DiffID()
	if err != nil {
		t.Fatalf("DiffID: %v", err)
	}

	reader := layer.Open()
	defer reader.Close()
	// Read part of the stream, then start over as a retrying upload does.
	if _, err := io.CopyN(io.Discard, reader, 1000); err != nil {
		t.Fatalf("read layer start: %v", err)
	}
	if _, err := reader.Seek(0, io.SeekStart); err != nil {
		t.Fatalf("Seek to start: %v", err)
	}
	if _, err := reader.Seek(10, io.SeekStart); err == nil {
		t.Errorf("Seek to offset 10 succeeded, expected an error")
	}
	compressed, err := io.ReadAll(reader)
	if err != nil {
		t.Fatalf("read layer: %v", err)
	}

	if int64(len(compressed)) != desc.Size {
		t.Errorf("layer stream has %d bytes, descriptor size is %d", len(compressed), desc.Size)
	}
	if got := digest.Canonical.FromBytes(compressed); got != desc.Digest {
		t.Errorf("layer stream digest = %s, descriptor digest is %s", got, desc.Digest)
	}

	gz, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		t.Fatalf("gzip reader: %v", err)
	}
	uncompressed, err := io.ReadAll(gz)
	if err != nil {
		t.Fatalf("decompress layer: %v", err)
	}
	if got := digest.Canonical.FromBytes(uncompressed); got != diffID {
		t.Errorf("uncompressed digest = %s, DiffID is %s", got, diffID)
	}
	tr := tar.NewReader(bytes.NewReader(uncompressed))
	header, err := tr.Next()
	if err != nil {
		t.Fatalf("first tar entry: %v", err)
	}
	if header.Size != fileSize {
		t.Errorf("tar entry %s has size %d, expected %d", header.Name, header.Size, fileSize)
	}
	if _, err := tr.Next(); err != io.EOF {
		t.Errorf("second tar entry: err = %v, expected io.EOF after one file", err)
	}
}

func TestBinaryImagePushAndRead(t *testing.T) {
	dir := t.TempDir()
	contents := map[string][]byte{}
	var binaries []PlatformBinary
	for _, p := range testPlatforms {
		path := filepath.Join(dir, "imgxfer-"+p.Architecture)
		content := []byte("#!/bin/sh\necho " + p.String() + "\n")
		if err := os.WriteFile(path, content, 0o644); err != nil {
			t.Fatal(err)
		}
		contents[p.String()] = content
		binaries = append(binaries, PlatformBinary{Platform: p, Path: path})
	}
	const entrypoint = "/usr/local/bin/imgxfer"
	spec, err := BinaryImage(binaries, entrypoint)
	if err != nil {
		t.Fatalf("BinaryImage: %v", err)
	}

	r := startTestRegistry(t, RegistryOptions{})
	rc := NewClient(r)
	reference := r.Addr + "/test/binary:v1"
	pushed, err := PushIndex(t.Context(), rc, reference, spec, "")
	if err != nil {
		t.Fatalf("PushIndex: %v", err)
	}
	checkPushedIndex(t, rc, reference, pushed, ociMediaTypes)

	target := mustParseRef(t, reference)
	for i, p := range testPlatforms {
		m, err := rc.ManifestGet(t.Context(), target.SetDigest(pushed.Manifests[i].Digest.String()))
		if err != nil {
			t.Fatalf("ManifestGet %s: %v", p, err)
		}
		image := m.(manifest.Imager)
		configDesc, err := image.GetConfig()
		if err != nil {
			t.Fatal(err)
		}
		config, err := rc.BlobGetOCIConfig(t.Context(), target, configDesc)
		if err != nil {
			t.Fatalf("BlobGetOCIConfig %s: %v", p, err)
		}
		imageConfig := config.GetConfig()
		if imageConfig.Platform.String() != p.String() {
			t.Errorf("config platform = %s, expected %s", imageConfig.Platform, p)
		}
		if len(imageConfig.Config.Entrypoint) != 1 || imageConfig.Config.Entrypoint[0] != entrypoint {
			t.Errorf("config Entrypoint = %q, expected [%s]", imageConfig.Config.Entrypoint, entrypoint)
		}

		layers, err := image.GetLayers()
		if err != nil || len(layers) != 1 {
			t.Fatalf("GetLayers = %v, %v, expected one layer", layers, err)
		}
		files := readLayerFiles(t, rc, target, layers[0])
		file, ok := files["usr/local/bin/imgxfer"]
		if !ok {
			t.Fatalf("layer of %s has entries %v, expected usr/local/bin/imgxfer", p, files)
		}
		if file.mode != 0o755 {
			t.Errorf("usr/local/bin/imgxfer mode = %o, expected 755", file.mode)
		}
		if !bytes.Equal(file.content, contents[p.String()]) {
			t.Errorf("usr/local/bin/imgxfer content = %q, expected %q", file.content, contents[p.String()])
		}
		if dirEntry, ok := files["usr/local/bin/"]; !ok || dirEntry.mode != 0o755 {
			t.Errorf("directory usr/local/bin/ = %+v (present %t), expected mode 755", dirEntry, ok)
		}
	}
}

func TestBinaryImageRejectsRelativeEntrypoint(t *testing.T) {
	path := filepath.Join(t.TempDir(), "imgxfer")
	if err := os.WriteFile(path, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := BinaryImage([]PlatformBinary{{Platform: testPlatforms[0], Path: path}}, "bin/imgxfer")
	if err == nil {
		t.Error("BinaryImage with a relative entrypoint path succeeded, expected an error")
	}
}

func TestBinaryImageRejectsMissingFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	_, err := BinaryImage([]PlatformBinary{{Platform: testPlatforms[0], Path: missing}}, "/imgxfer")
	if err == nil {
		t.Error("BinaryImage with a missing executable succeeded, expected an error")
	}
}

type layerFile struct {
	mode    int64
	content []byte
}

// readLayerFiles downloads a layer, checks its digest and returns its tar
// entries by name.
func readLayerFiles(t *testing.T, rc *regclient.RegClient, target ref.Ref, layer descriptor.Descriptor) map[string]layerFile {
	t.Helper()
	blob, err := rc.BlobGet(t.Context(), target, layer)
	if err != nil {
		t.Fatalf("BlobGet %s: %v", layer.Digest, err)
	}
	defer blob.Close()
	compressed, err := io.ReadAll(blob)
	if err != nil {
		t.Fatalf("read blob %s: %v", layer.Digest, err)
	}
	sum := sha256.Sum256(compressed)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != layer.Digest.String() {
		t.Fatalf("blob content digest = %s, expected %s", got, layer.Digest)
	}

	gz, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		t.Fatalf("gzip reader: %v", err)
	}
	files := map[string]layerFile{}
	tr := tar.NewReader(gz)
	for {
		header, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		content, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read tar entry %s: %v", header.Name, err)
		}
		files[header.Name] = layerFile{mode: header.Mode, content: content}
	}
	return files
}
