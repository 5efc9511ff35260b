package e2e

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/regclient/regclient/types/descriptor"
	"github.com/regclient/regclient/types/manifest"
	"github.com/regclient/regclient/types/mediatype"
	v1 "github.com/regclient/regclient/types/oci/v1"
	"github.com/regclient/regclient/types/ref"
)

// pushArtifact pushes a one-layer OCI artifact to repo in the source registry, under tag,
// or by its digest when tag is empty, with subject set when given.
func (e *env) pushArtifact(t *testing.T, repo, tag, artifactType, content string, subject *descriptor.Descriptor) descriptor.Descriptor {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := ref.New(e.src.Addr + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}

	config := descriptor.Descriptor{MediaType: mediatype.OCI1Empty, Digest: descriptor.EmptyDigest, Size: int64(len(descriptor.EmptyData))}
	layer := descriptor.Descriptor{MediaType: "text/plain", Digest: digest.FromString(content), Size: int64(len(content))}
	for _, blob := range []struct {
		desc descriptor.Descriptor
		data []byte
	}{{config, descriptor.EmptyData}, {layer, []byte(content)}} {
		if _, err := e.srcClient.BlobPut(ctx, r, blob.desc, bytes.NewReader(blob.data)); err != nil {
			t.Fatalf("pushing an artifact blob: %v", err)
		}
	}

	m, err := manifest.New(manifest.WithOrig(v1.Manifest{
		Versioned:    v1.ManifestSchemaVersion,
		MediaType:    mediatype.OCI1Manifest,
		ArtifactType: artifactType,
		Config:       config,
		Layers:       []descriptor.Descriptor{layer},
		Subject:      subject,
	}))
	if err != nil {
		t.Fatal(err)
	}
	if tag != "" {
		r = r.SetTag(tag)
	} else {
		r = r.SetDigest(m.GetDescriptor().Digest.String())
	}
	if err := e.srcClient.ManifestPut(ctx, r, m); err != nil {
		t.Fatalf("pushing the artifact manifest: %v", err)
	}
	return m.GetDescriptor()
}

func TestCopyReferrersAndDigestTags(t *testing.T) {
	e := newEnv(t)
	pushed := e.pushRandomIndex(t, "team/signed:1", mediatype.OCI1ManifestList, "linux/amd64", "linux/arm64")
	subject := pushed.Index
	sbom := e.pushArtifact(t, "team/signed", "", "application/spdx+json", `{"sbom":1}`, &subject)
	sigTag := strings.Replace(subject.Digest.String(), ":", "-", 1) + ".sig"
	sig := e.pushArtifact(t, "team/signed", sigTag, "application/vnd.dev.cosign.simplesigning.v1+json", "signature", nil)

	src, dst := e.src.Addr+"/team/signed:1", prodHost+"/team/signed:1"

	// Without --referrers, only the image arrives.
	plain := e.copyJSON(t, "--rules", e.rulesFile, src, dst)
	if plain.DestinationDigest != subject.Digest.String() {
		t.Fatalf("destination digest %s, want %s", plain.DestinationDigest, subject.Digest)
	}
	e.assertNoTag(t, e.prod, "team/signed:"+sigTag)

	// With --referrers, an up-to-date image still gets its referrers and cosign tags.
	res := e.run(t, "copy", "--format", "json", "--referrers", "--rules", e.rulesFile, src, dst)
	if res.code != 0 {
		t.Fatalf("copy --referrers: exit %d\n%s", res.code, res.stderr)
	}
	if !strings.Contains(res.stdout, `"status":"copied"`) {
		t.Errorf("copy --referrers of an up-to-date image should report copied referrers:\n%s", res.stdout)
	}
	e.headManifest(t, e.prod, "team/signed@"+sbom.Digest.String())
	if got := e.headManifest(t, e.prod, "team/signed:"+sigTag); got.GetDescriptor().Digest != sig.Digest {
		t.Errorf("%s has digest %s, want the signature %s", sigTag, got.GetDescriptor().Digest, sig.Digest)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	subjectRef, err := ref.New(e.prod.Addr + "/team/signed@" + subject.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	referrers, err := e.dstClient.ReferrerList(ctx, subjectRef)
	if err != nil {
		t.Fatalf("listing the destination's referrers: %v", err)
	}
	if len(referrers.Descriptors) != 1 || referrers.Descriptors[0].Digest != sbom.Digest {
		t.Errorf("destination referrers = %v, want the SBOM %s", referrers.Descriptors, sbom.Digest)
	}

	// A second run finds nothing new.
	again := e.run(t, "copy", "--format", "json", "--referrers", "--rules", e.rulesFile, src, dst)
	if again.code != 0 || !strings.Contains(again.stdout, `"status":"skipped"`) {
		t.Errorf("second copy --referrers: exit %d, want status skipped\n%s\n%s", again.code, again.stdout, again.stderr)
	}
}
