package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/restorecfg"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// The pre-restore check of an archive against the registration: what the
// archive's spec.dump and config.dump ask for, read with the one archive
// walker (the whole archive is walked, so that an unsafe member is refused
// before the runtime unpacks it), compared by restorecfg.Excess.

// errRefusedArchive is wrapped by a refusal of an archive that asks for
// more than its registration.
var errRefusedArchive = errors.New("the archive asks for more than the workload's registration")

// checkArchive refuses entry e when its spec asks for more than cfg (the
// registration's restore configuration), naming each field.
func (a *Agent) checkArchive(ctx context.Context, cfg workloadConfig, e store.Entry) error {
	found, err := a.archiveSpecs(ctx, e)
	if err != nil {
		return fmt.Errorf("read the run configuration of checkpoint #%d of %s: %w", e.Seq, e.Workload, err)
	}
	var why []string
	var sandboxes []string
	sandboxIDs := map[string]bool{}
	for _, s := range found {
		check := restorecfg.Excess
		if s.sandbox {
			check = restorecfg.SandboxExcess
			sandboxes = append(sandboxes, s.dir)
		}
		if e.Method == MethodCRIPod {
			sandboxIDs[sandboxIDOf(s)] = true
		}
		for _, x := range check(cfg, s.Archive) {
			if s.dir != "" {
				x = s.dir + ": " + x
			}
			why = append(why, x)
		}
	}
	if len(sandboxes) > 1 {
		why = append(why, fmt.Sprintf("%d sandbox specs (in %s) in the archive of one pod", len(sandboxes), strings.Join(sandboxes, ", ")))
	}
	if len(sandboxIDs) > 1 {
		ids := make([]string, 0, len(sandboxIDs))
		for id := range sandboxIDs {
			if id == "" {
				id = "none"
			}
			ids = append(ids, id)
		}
		sort.Strings(ids)
		why = append(why, fmt.Sprintf("specs of %d sandboxes (%s) in the archive of one pod", len(ids), strings.Join(ids, ", ")))
	}
	if len(why) > 0 {
		return fmt.Errorf("checkpoint #%d of %s: %w: %s", e.Seq, e.Workload, errRefusedArchive, strings.Join(why, "; "))
	}
	return nil
}

// containerSpec is what one container's spec.dump and config.dump in an
// archive say; dir is their directory in the archive ("" at its top);
// sandbox: a pod-level archive's spec says it is its pod's sandbox's
// (checked against the registration's sandbox, not skipped).
type containerSpec struct {
	restorecfg.Archive
	dir     string
	sandbox bool
}

// sandboxIDOf is the sandbox ID a spec names: its own for a sandbox's
// (config.dump's, else its annotations'), its pod's for a container's.
func sandboxIDOf(s containerSpec) string {
	for _, k := range []string{"io.kubernetes.cri.sandbox-id", "io.kubernetes.cri-o.SandboxID"} {
		if v := s.Spec.Annotations[k]; v != "" {
			return v
		}
	}
	if s.sandbox {
		return s.ContainerID
	}
	return ""
}

// sandboxAnnotations mark the spec of a pod's sandbox (pause) container,
// which a pod-level archive may hold beside the workload's: containerd's
// and CRI-O's.
var sandboxAnnotations = []string{"io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType"}

// archiveSpecs reads the spec.dump and config.dump of every container in
// e's archive: at its top for a container checkpoint (always the
// container's, whatever its annotations say), in a directory per
// container for a pod-level one, where a spec annotated as the sandbox's
// is marked so (and needs no config.dump). An archive with no container,
// or a container's spec.dump without its config.dump, is an error.
func (a *Agent) archiveSpecs(ctx context.Context, e store.Entry) ([]containerSpec, error) {
	r, err := a.store.OpenArchive(e)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	byDir := map[string]*containerSpec{}
	images := map[string]bool{} // directories with a config.dump
	get := func(dir string) *containerSpec {
		if byDir[dir] == nil {
			byDir[dir] = &containerSpec{dir: dir}
		}
		return byDir[dir]
	}
	err = archive.WalkWith(r, archive.Options{Context: ctx}, func(m *archive.Member) error {
		if m.Dir {
			return nil
		}
		dir, name := path.Split(m.Name)
		dir = strings.TrimSuffix(dir, "/")
		if name != metadata.SpecDumpFile && name != metadata.ConfigDumpFile {
			return nil
		}
		if e.Method != MethodCRIPod && dir != "" {
			return nil // a container checkpoint's own metadata is at its top
		}
		b, err := readSmall(m)
		if err != nil {
			return err
		}
		c := get(dir)
		if name == metadata.SpecDumpFile {
			var s specs.Spec
			if err := json.Unmarshal(b, &s); err != nil {
				return fmt.Errorf("%s: invalid JSON: %w", m.Name, err)
			}
			c.Spec = &s
			return nil
		}
		var cd metadata.ContainerConfig
		if err := json.Unmarshal(b, &cd); err != nil {
			return fmt.Errorf("%s: invalid JSON: %w", m.Name, err)
		}
		c.Images = []string{cd.RootfsImage, cd.RootfsImageName, cd.RootfsImageRef}
		c.ContainerID = cd.ID
		images[dir] = true
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []containerSpec
	containers := 0
	for dir, c := range byDir {
		if c.Spec == nil {
			if e.Method == MethodCRIPod {
				continue // a config.dump of something else than a container
			}
			return nil, fmt.Errorf("no %s beside %s", metadata.SpecDumpFile, metadata.ConfigDumpFile)
		}
		// The annotation is the archive's word: it only chooses, in a
		// pod-level archive, which registration a spec is held to.
		c.sandbox = e.Method == MethodCRIPod && sandboxSpec(c.Spec)
		if !c.sandbox {
			if !images[dir] {
				return nil, fmt.Errorf("no %s beside %s", metadata.ConfigDumpFile, path.Join(dir, metadata.SpecDumpFile))
			}
			containers++
		}
		out = append(out, *c)
	}
	if containers == 0 {
		return nil, fmt.Errorf("no container %s and %s in the archive", metadata.SpecDumpFile, metadata.ConfigDumpFile)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].dir < out[j].dir })
	return out, nil
}

func sandboxSpec(s *specs.Spec) bool {
	for _, k := range sandboxAnnotations {
		if s.Annotations[k] == "sandbox" {
			return true
		}
	}
	return false
}

// readSmall reads a metadata member into memory, refusing one above
// archive.MaxMetadataSize.
func readSmall(m *archive.Member) ([]byte, error) {
	if m.Size > archive.MaxMetadataSize {
		return nil, fmt.Errorf("%s: %d bytes, above the limit of %d for a metadata file read into memory", m.Name, m.Size, archive.MaxMetadataSize)
	}
	b, err := io.ReadAll(io.LimitReader(m, m.Size))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) != m.Size {
		return nil, fmt.Errorf("%s: %d of %d bytes: %w", m.Name, len(b), m.Size, io.ErrUnexpectedEOF)
	}
	return b, nil
}
