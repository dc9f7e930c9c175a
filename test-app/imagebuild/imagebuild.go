// Package imagebuild builds the OCI images of the test application and of
// crfailoverd's sandbox (pause) image without docker: each is a static Go
// binary in one layer, assembled with go-containerregistry and pushed to a
// registry.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Names of the images in a registry, as repository:tag.
const (
	CounterRef = "counter:latest"
	PauseRef   = "pause:3.10"
)

// Spec says how to build one image: which Go package becomes which binary.
type Spec struct {
	Package string   // Go package path, for example ./test-app
	Binary  string   // path of the binary inside the image, for example /counter
	Env     []string // image environment
}

// Counter and Pause are the two images the test bed needs. Package paths are
// relative to the module root.
var (
	Counter = Spec{Package: "./test-app", Binary: "/counter", Env: []string{"GODEBUG=multipathtcp=0"}}
	Pause   = Spec{Package: "./test-app/pause", Binary: "/pause"}
)

// Build compiles spec.Package as a static linux/amd64 binary in moduleDir
// and returns a one-layer image that runs it.
func Build(ctx context.Context, moduleDir string, spec Spec) (v1.Image, error) {
	tmp, err := os.MkdirTemp("", "crf-imagebuild-")
	if err != nil {
		return nil, fmt.Errorf("build image of %s: %w", spec.Package, err)
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, filepath.Base(spec.Binary))
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, spec.Package)
	cmd.Dir = moduleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build %s: %w\n%s", spec.Package, err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("build image of %s: %w", spec.Package, err)
	}
	return FromBinary(spec, data)
}

// FromBinary wraps an already built static binary as an image.
func FromBinary(spec Spec, binary []byte) (v1.Image, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	// A fixed modification time keeps the layer digest stable across builds
	// of the same binary.
	hdr := &tar.Header{Name: spec.Binary[1:], Mode: 0o755, Size: int64(len(binary)), ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, fmt.Errorf("write layer of %s: %w", spec.Binary, err)
	}
	if _, err := tw.Write(binary); err != nil {
		return nil, fmt.Errorf("write layer of %s: %w", spec.Binary, err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("write layer of %s: %w", spec.Binary, err)
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerBytes)), nil })
	if err != nil {
		return nil, fmt.Errorf("make layer of %s: %w", spec.Binary, err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("append layer of %s: %w", spec.Binary, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config of %s: %w", spec.Binary, err)
	}
	cf = cf.DeepCopy()
	// Without OS and architecture containerd filters the image out.
	cf.OS = "linux"
	cf.Architecture = "amd64"
	cf.Config.Entrypoint = []string{spec.Binary}
	cf.Config.Env = append([]string{"PATH=/"}, spec.Env...)
	return mutate.ConfigFile(img, cf)
}

// Push writes img to registry (host:port) as ref (repository:tag), over
// plain HTTP, which go-containerregistry uses for localhost and loopback
// registries.
func Push(ctx context.Context, registry, ref string, img v1.Image) (name.Reference, error) {
	r, err := name.ParseReference(registry+"/"+ref, name.Insecure)
	if err != nil {
		return nil, fmt.Errorf("parse image name %s/%s: %w", registry, ref, err)
	}
	if err := remote.Write(r, img, remote.WithContext(ctx)); err != nil {
		return nil, fmt.Errorf("push %s: %w", r, err)
	}
	return r, nil
}

// BuildAndPushAll builds the counter and pause images and pushes them to
// registry. It returns the pushed references.
func BuildAndPushAll(ctx context.Context, moduleDir, registry string) ([]string, error) {
	var refs []string
	for _, x := range []struct {
		spec Spec
		ref  string
	}{{Counter, CounterRef}, {Pause, PauseRef}} {
		img, err := Build(ctx, moduleDir, x.spec)
		if err != nil {
			return nil, err
		}
		r, err := Push(ctx, registry, x.ref, img)
		if err != nil {
			return nil, err
		}
		refs = append(refs, r.String())
	}
	return refs, nil
}
