package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
)

// manifestAccept lists the manifest media types that the raw copier reads.
var manifestAccept = strings.Join([]string{
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}, ", ")

// rawBlobParallel is how many blobs the raw copier streams at once.
const rawBlobParallel = 4

// endpoint is the address to which the raw copier sends one registry's requests. For a
// registry behind the mesh proxy, base is nginx's listener and host is the registry name.
type endpoint struct {
	base string // http://127.0.0.1:port
	host string // mesh header value; empty for a direct connection
}

// rawCopier copies images with plain net/http requests and no registry client: every blob
// streams from a source GET into one monolithic upload (POST, then PUT with the body), then
// the manifests are written, platform manifests before the index.
type rawCopier struct {
	client *http.Client

	// verifyDigests computes the SHA-256 of every blob as it streams and fails the upload
	// when it differs from the digest in the manifest, as registry clients do. The
	// destination registry checks the digest too, in both modes.
	verifyDigests bool

	// checkBlobs sends a HEAD request for each blob to the destination first and skips
	// the blobs that it has, as registry clients do.
	checkBlobs bool
}

// withClientChecks returns a copier on the same connections that verifies digests and,
// with checkBlobs, also checks for each blob in the destination first.
func (c *rawCopier) withClientChecks(checkBlobs bool) *rawCopier {
	return &rawCopier{client: c.client, verifyDigests: true, checkBlobs: checkBlobs}
}

func newRawCopier() *rawCopier {
	transport := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
	}
	return &rawCopier{client: &http.Client{Transport: transport}}
}

func (c *rawCopier) do(ctx context.Context, ep endpoint, method, pathAndQuery string, body io.Reader, size int64, header http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, ep.base+pathAndQuery, body)
	if err != nil {
		return nil, err
	}
	for name, values := range header {
		req.Header[name] = values
	}
	if body != nil {
		req.ContentLength = size
	}
	if ep.host != "" {
		req.Host = ep.host
		req.Header.Set("mesh", ep.host)
	}
	return c.client.Do(req)
}

// manifestRef is one manifest to copy, by tag or digest, with its raw body.
type manifestRef struct {
	reference string
	mediaType string
	body      []byte
}

// getManifest fetches a manifest and returns its body, media type and digest header.
func (c *rawCopier) getManifest(ctx context.Context, ep endpoint, repo, reference string) (manifestRef, string, error) {
	resp, err := c.do(ctx, ep, http.MethodGet, "/v2/"+repo+"/manifests/"+reference, nil, 0, http.Header{"Accept": {manifestAccept}})
	if err != nil {
		return manifestRef{}, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return manifestRef{}, "", err
	}
	if resp.StatusCode != http.StatusOK {
		return manifestRef{}, "", fmt.Errorf("GET manifest %s:%s: status %d", repo, reference, resp.StatusCode)
	}
	return manifestRef{reference: reference, mediaType: resp.Header.Get("Content-Type"), body: body}, resp.Header.Get("Docker-Content-Digest"), nil
}

// headManifestDigest returns the digest that the registry reports for a manifest, or ""
// when it has none.
func (c *rawCopier) headManifestDigest(ctx context.Context, ep endpoint, repo, reference string) (string, error) {
	resp, err := c.do(ctx, ep, http.MethodHead, "/v2/"+repo+"/manifests/"+reference, nil, 0, http.Header{"Accept": {manifestAccept}})
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return "", nil
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HEAD manifest %s:%s: status %d", repo, reference, resp.StatusCode)
	}
	return resp.Header.Get("Docker-Content-Digest"), nil
}

type blobRef struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

// manifestBody contains the fields of an index or image manifest that the copy needs.
type manifestBody struct {
	Manifests []blobRef `json:"manifests"`
	Config    *blobRef  `json:"config"`
	Layers    []blobRef `json:"layers"`
}

// copyImage copies src repo:tag to dst repo:tag. With skipIfPresent it first compares the
// destination tag's digest with the source's and writes nothing when they are equal.
func (c *rawCopier) copyImage(ctx context.Context, src endpoint, srcRepo string, dst endpoint, dstRepo, tag string, skipIfPresent bool) error {
	top, topDigest, err := c.getManifest(ctx, src, srcRepo, tag)
	if err != nil {
		return err
	}
	if skipIfPresent {
		current, err := c.headManifestDigest(ctx, dst, dstRepo, tag)
		if err != nil {
			return err
		}
		if current != "" && current == topDigest {
			return nil
		}
	}

	var parsed manifestBody
	if err := json.Unmarshal(top.body, &parsed); err != nil {
		return fmt.Errorf("parse manifest %s:%s: %w", srcRepo, tag, err)
	}
	children := []manifestRef{}
	images := []manifestBody{parsed}
	if len(parsed.Manifests) > 0 {
		images = nil
		for _, child := range parsed.Manifests {
			m, _, err := c.getManifest(ctx, src, srcRepo, child.Digest)
			if err != nil {
				return err
			}
			var body manifestBody
			if err := json.Unmarshal(m.body, &body); err != nil {
				return fmt.Errorf("parse manifest %s@%s: %w", srcRepo, child.Digest, err)
			}
			children = append(children, m)
			images = append(images, body)
		}
	}

	seen := map[string]bool{}
	var blobs []blobRef
	for _, image := range images {
		all := image.Layers
		if image.Config != nil {
			all = append([]blobRef{*image.Config}, all...)
		}
		for _, blob := range all {
			if !seen[blob.Digest] {
				seen[blob.Digest] = true
				blobs = append(blobs, blob)
			}
		}
	}

	group, groupCtx := errgroup.WithContext(ctx)
	group.SetLimit(rawBlobParallel)
	for _, blob := range blobs {
		group.Go(func() error { return c.copyBlob(groupCtx, src, srcRepo, dst, dstRepo, blob) })
	}
	if err := group.Wait(); err != nil {
		return err
	}

	for _, child := range children {
		if err := c.putManifest(ctx, dst, dstRepo, child); err != nil {
			return err
		}
	}
	return c.putManifest(ctx, dst, dstRepo, top)
}

// copyBlob streams one blob from a source GET into a monolithic upload on the destination.
func (c *rawCopier) copyBlob(ctx context.Context, src endpoint, srcRepo string, dst endpoint, dstRepo string, blob blobRef) error {
	if c.checkBlobs {
		head, err := c.do(ctx, dst, http.MethodHead, "/v2/"+dstRepo+"/blobs/"+blob.Digest, nil, 0, nil)
		if err != nil {
			return err
		}
		head.Body.Close()
		if head.StatusCode == http.StatusOK {
			return nil
		}
		if head.StatusCode != http.StatusNotFound {
			return fmt.Errorf("HEAD blob %s: status %d", blob.Digest, head.StatusCode)
		}
	}

	get, err := c.do(ctx, src, http.MethodGet, "/v2/"+srcRepo+"/blobs/"+blob.Digest, nil, 0, nil)
	if err != nil {
		return err
	}
	defer get.Body.Close()
	if get.StatusCode != http.StatusOK {
		return fmt.Errorf("GET blob %s: status %d", blob.Digest, get.StatusCode)
	}

	post, err := c.do(ctx, dst, http.MethodPost, "/v2/"+dstRepo+"/blobs/uploads/", nil, 0, nil)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, post.Body)
	post.Body.Close()
	if post.StatusCode != http.StatusAccepted {
		return fmt.Errorf("POST upload for %s: status %d", blob.Digest, post.StatusCode)
	}
	location, err := url.Parse(post.Header.Get("Location"))
	if err != nil {
		return fmt.Errorf("POST upload for %s: invalid Location: %w", blob.Digest, err)
	}
	query := location.Query()
	query.Set("digest", blob.Digest)

	// The Location names the host the registry saw, which is the mesh name behind nginx,
	// so only its path and query are kept and the request goes to the endpoint's base.
	var body io.Reader = get.Body
	if c.verifyDigests {
		body = &verifyingReader{reader: get.Body, hash: sha256.New(), want: blob.Digest}
	}
	header := http.Header{"Content-Type": {"application/octet-stream"}, "Content-Length": {strconv.FormatInt(blob.Size, 10)}}
	put, err := c.do(ctx, dst, http.MethodPut, location.Path+"?"+query.Encode(), body, blob.Size, header)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, put.Body)
	put.Body.Close()
	if put.StatusCode != http.StatusCreated {
		return fmt.Errorf("PUT upload for %s: status %d", blob.Digest, put.StatusCode)
	}
	return nil
}

func (c *rawCopier) putManifest(ctx context.Context, dst endpoint, repo string, m manifestRef) error {
	resp, err := c.do(ctx, dst, http.MethodPut, "/v2/"+repo+"/manifests/"+m.reference, bytes.NewReader(m.body), int64(len(m.body)),
		http.Header{"Content-Type": {m.mediaType}})
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("PUT manifest %s:%s: status %d", repo, m.reference, resp.StatusCode)
	}
	return nil
}

// verifyingReader hashes what it reads and, at EOF, returns an error instead when the
// SHA-256 differs from want, so that net/http aborts the upload.
type verifyingReader struct {
	reader io.Reader
	hash   hash.Hash
	want   string
}

func (r *verifyingReader) Read(p []byte) (int, error) {
	n, err := r.reader.Read(p)
	r.hash.Write(p[:n])
	if err == io.EOF {
		if got := "sha256:" + hex.EncodeToString(r.hash.Sum(nil)); got != r.want {
			return n, fmt.Errorf("blob digest mismatch: expected %s, computed %s", r.want, got)
		}
	}
	return n, err
}
