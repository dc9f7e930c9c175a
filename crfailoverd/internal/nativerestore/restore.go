// Package nativerestore restores CRI checkpoint archives through
// containerd's own client API, outside the CRI: the restore path of
// containerd 2.4 and later, which took restore through CreateContainer
// away. Each restored container lives in a containerd namespace of
// crfailoverd's (Namespace), runs the registration's configuration (the
// archive gives only CRIU's images and the root file system's changes),
// and is listed and removed here so that the daemon can supervise and
// fence it. The CRI and kubelet do not see such containers: nodes without
// kubelet only.
package nativerestore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/restorecfg"
)

// Namespace is crfailoverd's containerd namespace.
const Namespace = "crfailoverd"

// Labels crfailoverd puts on the containers it restores.
const (
	// LabelWorkload names the workload, namespace/pod/container.
	LabelWorkload = "crfailoverd.io/workload"
	// LabelArchive is the base name of the archive restored.
	LabelArchive = "crfailoverd.io/restored-from"
)

// Options configure a Restorer.
type Options struct {
	Namespace   string // containerd namespace (default Namespace)
	Snapshotter string // default "overlayfs"
	Runtime     string // default "io.containerd.runc.v2"
	// StateDir holds one directory per restored container (the extracted
	// checkpoint during the restore, the files bound into the container,
	// its log). containerd must see it at the same path. Required.
	StateDir string
	// CgroupParent is the cgroup under which each container gets its own,
	// CgroupParent/ID (default "/crfailoverd"), when its registration's
	// sandbox names no cgroup parent (one that does gets PARENT/ID, as
	// the CRI places a pod's containers).
	CgroupParent string
	// Resolver fetches base images (nil: plain HTTP to localhost, HTTPS
	// elsewhere, no credentials).
	Resolver remotes.Resolver
	// Limits bound the archive as it is extracted (zero: the archive
	// package's defaults).
	Limits archive.Options
	// HostsFile and ResolvConf are copied for the container (default
	// /etc/hosts, /etc/resolv.conf); Hostname is written as its
	// /etc/hostname (default os.Hostname).
	HostsFile, ResolvConf, Hostname string
	Log                             *slog.Logger
}

// Restorer restores, lists and removes crfailoverd's containerd
// containers.
type Restorer struct {
	client          *containerd.Client
	opts            Options
	cgroupNamespace bool
	log             *slog.Logger
}

// New connects to containerd's API at address (its gRPC socket).
func New(address string, opts Options) (*Restorer, error) {
	if opts.StateDir == "" || !filepath.IsAbs(opts.StateDir) {
		return nil, fmt.Errorf("native restore: the state directory %q is not an absolute path", opts.StateDir)
	}
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&opts.Namespace, Namespace)
	def(&opts.Snapshotter, "overlayfs")
	def(&opts.Runtime, "io.containerd.runc.v2")
	def(&opts.CgroupParent, "/crfailoverd")
	def(&opts.HostsFile, "/etc/hosts")
	def(&opts.ResolvConf, "/etc/resolv.conf")
	if opts.Hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("native restore: read the host name: %w", err)
		}
		opts.Hostname = h
	}
	if opts.Resolver == nil {
		opts.Resolver = docker.NewResolver(docker.ResolverOptions{Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchLocalhost))})
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("native restore: create the state directory: %w", err)
	}
	c, err := containerd.New(address, containerd.WithDefaultNamespace(opts.Namespace), containerd.WithTimeout(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("native restore: connect to containerd at %s: %w", address, err)
	}
	// The CRI gives a container a cgroup namespace of its own on a cgroup
	// v2 host only.
	_, err = os.Stat("/sys/fs/cgroup/cgroup.controllers")
	return &Restorer{client: c, opts: opts, cgroupNamespace: err == nil, log: opts.Log.With("containerd_namespace", opts.Namespace)}, nil
}

// Close closes the connection to containerd.
func (r *Restorer) Close() error { return r.client.Close() }

// Version is containerd's version ("2.4.2").
func (r *Restorer) Version(ctx context.Context) (string, error) {
	v, err := r.client.Version(ctx)
	if err != nil {
		return "", fmt.Errorf("ask containerd its version: %w", err)
	}
	return strings.TrimPrefix(v.Version, "v"), nil
}

func (r *Restorer) ctx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, r.opts.Namespace)
}

// Request is one restore.
type Request struct {
	// ID is the new containerd container's ID: letters, digits, '_', '.'
	// and '-', starting with a letter or digit, at most 76 characters.
	ID string
	// Archive is a plaintext CRI checkpoint archive (the store's
	// PlaintextFile). It is read only during Restore.
	Archive string
	// Registration is the sandbox and container configuration recorded
	// for the workload, which the restored container runs with.
	Registration restorecfg.Config
}

// Result is what a restore did and how long its steps took.
type Result struct {
	ID, Image string
	PID       uint32
	// Extract: the archive unpacked; EnsureImage: the base image ensured
	// (pulled when missing); Create: the container made; Restore: CRIU's
	// restore and the task's start; Total: all of it.
	Extract, EnsureImage, Create, Restore, Total time.Duration
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,75}$`)

// Restore restores req.Archive into a new container req.ID and starts its
// task from the checkpoint: the archive's CRIU images and rootfs-diff.tar
// are unpacked into the container's state directory, the registration's
// image is ensured in the namespace (it must be the image the checkpoint
// ran on when the archive names its ID), the spec is built from the
// registration (BuildSpec), and containerd's shim restores the task with
// CRIU. On failure nothing of the container is left.
func (r *Restorer) Restore(ctx context.Context, req Request) (res Result, err error) {
	start := time.Now()
	res.ID = req.ID
	if !idRE.MatchString(req.ID) {
		return res, fmt.Errorf("native restore: container ID %q: want letters, digits, '_', '.' and '-'", req.ID)
	}
	ctx = r.ctx(ctx)
	log := r.log.With("container", req.ID, "workload", workloadOf(req.Registration), "archive", req.Archive)
	dir := filepath.Join(r.opts.StateDir, req.ID)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return res, fmt.Errorf("native restore of %s: create its state directory: %w", req.ID, err)
	}
	var ctr containerd.Container
	defer func() {
		if err == nil {
			return
		}
		err = fmt.Errorf("native restore of %s from %s: %w", req.ID, req.Archive, err)
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if ctr != nil {
			if derr := deleteContainer(cctx, ctr); derr != nil {
				log.Warn("native restore failed, and removing its container failed too", "err", derr)
			}
		}
		if rerr := os.RemoveAll(dir); rerr != nil {
			log.Warn("native restore failed, and removing its state directory failed too", "err", rerr)
		}
	}()

	t := time.Now()
	extracted := filepath.Join(dir, "archive")
	d, err := extract(ctx, req.Archive, extracted, r.opts.Limits)
	if err != nil {
		return res, err
	}
	res.Extract = time.Since(t)

	t = time.Now()
	img, err := r.ensureImage(ctx, req.Registration.Container.GetImage().GetImage(), d.ImageRef)
	if err != nil {
		return res, err
	}
	res.EnsureImage = time.Since(t)
	imgSpec, err := img.Spec(ctx)
	if err != nil {
		return res, fmt.Errorf("read the configuration of image %s: %w", img.Name(), err)
	}

	t = time.Now()
	files, err := r.runtimeFiles(dir)
	if err != nil {
		return res, err
	}
	spec, err := BuildSpec(ctx, SpecInput{
		ID: req.ID, Registration: req.Registration, Image: imgSpec.Config,
		CgroupsPath: cgroupsPath(r.opts.CgroupParent, req.Registration, req.ID),
		DumpedBinds: d.Binds, Files: files, CgroupNamespace: r.cgroupNamespace,
	})
	if err != nil {
		return res, err
	}
	labels := map[string]string{}
	for k, v := range req.Registration.Container.GetLabels() {
		labels[k] = v
	}
	labels[LabelWorkload] = workloadOf(req.Registration)
	labels[LabelArchive] = filepath.Base(req.Archive)
	ext, err := registrationExtension(req.Registration)
	if err != nil {
		return res, err
	}
	ctr, err = r.client.NewContainer(ctx, req.ID,
		containerd.WithImage(img),
		containerd.WithSnapshotter(r.opts.Snapshotter),
		containerd.WithNewSnapshot(req.ID, img),
		containerd.WithSpec(spec),
		containerd.WithRuntime(r.opts.Runtime, nil),
		containerd.WithContainerLabels(labels),
		containerd.WithContainerExtension(ExtensionRegistration, ext),
	)
	if err != nil {
		return res, fmt.Errorf("create the container: %w", err)
	}
	res.Create = time.Since(t)

	t = time.Now()
	// The shim restores with CRIU from the directory, applies
	// rootfs-diff.tar found beside it, and starts the task.
	pid, err := ctr.Restore(ctx, cio.LogFile(filepath.Join(dir, "container.log")), filepath.Join(extracted, "checkpoint"))
	if err != nil {
		return res, fmt.Errorf("restore the task with CRIU: %w", err)
	}
	res.Restore = time.Since(t)
	res.PID = uint32(pid)
	res.Image = img.Name()
	res.Total = time.Since(start)
	// CRIU's images are not needed once the task runs.
	if err := os.RemoveAll(extracted); err != nil {
		log.Warn("cannot remove the extracted checkpoint of a restored container", "err", err)
	}
	log.Info("restored natively", "pid", res.PID, "image", res.Image, "rootfs_diff", d.RootfsDiff,
		"extract_ms", res.Extract.Milliseconds(), "image_ms", res.EnsureImage.Milliseconds(), "create_ms", res.Create.Milliseconds(), "restore_ms", res.Restore.Milliseconds(), "total_ms", res.Total.Milliseconds())
	return res, nil
}

// cgroupsPath is a restored container's cgroup: below the registration's
// sandbox cgroup parent when it has one (as the CRI places a pod's
// containers), else below parent.
func cgroupsPath(parent string, reg restorecfg.Config, id string) string {
	if p := reg.Sandbox.GetLinux().GetCgroupParent(); strings.HasPrefix(p, "/") {
		parent = p
	}
	return strings.TrimSuffix(parent, "/") + "/" + id
}

// EnsureImage makes sure the registration's image is in the namespace,
// unpacked, pulling it when missing: a node that receives a checkpoint can
// call it then, so that a restore does not wait for a pull.
func (r *Restorer) EnsureImage(ctx context.Context, reg restorecfg.Config) error {
	if _, err := r.ensureImage(r.ctx(ctx), reg.Container.GetImage().GetImage(), ""); err != nil {
		return fmt.Errorf("native restore: ensure the image of %s: %w", workloadOf(reg), err)
	}
	return nil
}

// ensureImage returns the registration's image in the namespace, unpacked,
// pulling it when missing. When the archive names the image ID its
// container ran on (config.dump's rootfsImageRef, a config digest), the
// image must have it: a base image changed under the tag would not match
// the checkpoint's file system.
func (r *Restorer) ensureImage(ctx context.Context, name, dumpedID string) (containerd.Image, error) {
	if name == "" {
		return nil, errors.New("the registration names no image")
	}
	named, err := reference.ParseDockerRef(name)
	if err != nil {
		return nil, fmt.Errorf("the registration's image %q is not an image name: %w", name, err)
	}
	ref := named.String()
	want := ""
	if strings.HasPrefix(dumpedID, "sha256:") {
		want = dumpedID
	}
	img, err := r.client.GetImage(ctx, ref)
	if err == nil && want != "" {
		if cfg, cerr := img.Config(ctx); cerr != nil || cfg.Digest.String() != want {
			img, err = nil, errdefs.ErrNotFound // pull again: the tag may have moved back
		}
	}
	if err != nil && !errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("look up image %s: %w", ref, err)
	}
	if img == nil {
		img, err = r.client.Pull(ctx, ref, containerd.WithPullUnpack, containerd.WithPullSnapshotter(r.opts.Snapshotter), containerd.WithResolver(r.opts.Resolver))
		if err != nil {
			return nil, fmt.Errorf("pull image %s: %w", ref, err)
		}
	}
	if want != "" {
		cfg, err := img.Config(ctx)
		if err != nil {
			return nil, fmt.Errorf("read the configuration digest of image %s: %w", ref, err)
		}
		if cfg.Digest.String() != want {
			return nil, fmt.Errorf("image %s is %s, but the checkpoint ran on %s: refusing to restore onto another file system", ref, cfg.Digest, want)
		}
	}
	unpacked, err := img.IsUnpacked(ctx, r.opts.Snapshotter)
	if err != nil {
		return nil, fmt.Errorf("check image %s is unpacked: %w", ref, err)
	}
	if !unpacked {
		if err := img.Unpack(ctx, r.opts.Snapshotter); err != nil {
			return nil, fmt.Errorf("unpack image %s: %w", ref, err)
		}
	}
	return img, nil
}

// runtimeFiles writes this node's RuntimeFiles for a container into its
// state directory and returns their paths by destination.
func (r *Restorer) runtimeFiles(dir string) (map[string]string, error) {
	fdir := filepath.Join(dir, "files")
	if err := os.Mkdir(fdir, 0o755); err != nil {
		return nil, fmt.Errorf("create the container's files: %w", err)
	}
	hosts, err := os.ReadFile(r.opts.HostsFile)
	if err != nil {
		return nil, fmt.Errorf("read the node's hosts file: %w", err)
	}
	resolv, err := os.ReadFile(r.opts.ResolvConf)
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("read the node's resolv.conf: %w", err)
	}
	out := map[string]string{}
	for _, f := range []struct {
		dest, name string
		data       []byte
	}{
		{"/etc/hosts", "hosts", hosts},
		{"/etc/resolv.conf", "resolv.conf", resolv},
		{"/etc/hostname", "hostname", []byte(r.opts.Hostname + "\n")},
	} {
		p := filepath.Join(fdir, f.name)
		if err := os.WriteFile(p, f.data, 0o644); err != nil {
			return nil, fmt.Errorf("write the container's %s: %w", f.dest, err)
		}
		out[f.dest] = p
	}
	shm := filepath.Join(fdir, "shm")
	if err := os.Mkdir(shm, 0o1777); err != nil {
		return nil, fmt.Errorf("create the container's /dev/shm: %w", err)
	}
	if err := os.Chmod(shm, 0o1777); err != nil { // past the umask
		return nil, fmt.Errorf("create the container's /dev/shm: %w", err)
	}
	out["/dev/shm"] = shm
	return out, nil
}

func workloadOf(reg restorecfg.Config) string {
	md := reg.Sandbox.GetMetadata()
	return md.GetNamespace() + "/" + md.GetName() + "/" + reg.Container.GetMetadata().GetName()
}

// Container is one of crfailoverd's containerd containers.
type Container struct {
	ID       string
	Workload string // LabelWorkload
	Archive  string // LabelArchive
	// Status is the task's: "running", "stopped", "paused", "created",
	// ...; "" when the container has no task.
	Status string
	PID    uint32
	Labels map[string]string
}

// List returns the containers crfailoverd restored in its namespace.
func (r *Restorer) List(ctx context.Context) ([]Container, error) {
	ctx = r.ctx(ctx)
	cs, err := r.client.Containers(ctx, `labels."`+LabelWorkload+`"`)
	if err != nil {
		return nil, fmt.Errorf("list containerd containers in namespace %s: %w", r.opts.Namespace, err)
	}
	out := make([]Container, 0, len(cs))
	for _, c := range cs {
		labels, err := c.Labels(ctx)
		if err != nil {
			if errdefs.IsNotFound(err) {
				continue // removed meanwhile
			}
			return nil, fmt.Errorf("labels of container %s: %w", c.ID(), err)
		}
		e := Container{ID: c.ID(), Workload: labels[LabelWorkload], Archive: labels[LabelArchive], Labels: labels}
		task, err := c.Task(ctx, nil)
		switch {
		case errdefs.IsNotFound(err):
		case err != nil:
			return nil, fmt.Errorf("task of container %s: %w", c.ID(), err)
		default:
			e.PID = task.Pid()
			st, err := task.Status(ctx)
			if err != nil && !errdefs.IsNotFound(err) {
				return nil, fmt.Errorf("status of container %s: %w", c.ID(), err)
			}
			e.Status = string(st.Status)
		}
		out = append(out, e)
	}
	return out, nil
}

// Remove kills container id's task, deletes the task, the container and
// its snapshot, and its state directory. A container that is not there is
// not an error: Remove fences, and may be called again.
func (r *Restorer) Remove(ctx context.Context, id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("remove container %q: not a container ID", id)
	}
	ctx = r.ctx(ctx)
	c, err := r.client.LoadContainer(ctx, id)
	switch {
	case errdefs.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("remove container %s: load it: %w", id, err)
	default:
		if err := deleteContainer(ctx, c); err != nil {
			return fmt.Errorf("remove container %s: %w", id, err)
		}
	}
	if err := os.RemoveAll(filepath.Join(r.opts.StateDir, id)); err != nil {
		return fmt.Errorf("remove container %s: its state directory: %w", id, err)
	}
	r.log.Info("removed a natively restored container", "container", id)
	return nil
}

// deleteContainer kills c's task (SIGKILL, waiting for its exit), deletes
// it, then c with its snapshot.
func deleteContainer(ctx context.Context, c containerd.Container) error {
	task, err := c.Task(ctx, nil)
	switch {
	case errdefs.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("load its task: %w", err)
	default:
		exited, err := task.Wait(ctx)
		if err != nil {
			return fmt.Errorf("wait for its task: %w", err)
		}
		if err := task.Kill(ctx, syscall.SIGKILL); err != nil && !errdefs.IsNotFound(err) && !strings.Contains(err.Error(), "process already finished") {
			return fmt.Errorf("kill its task: %w", err)
		}
		select {
		case <-exited:
		case <-ctx.Done():
			return fmt.Errorf("wait for its task to exit: %w", ctx.Err())
		}
		if _, err := task.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete its task: %w", err)
		}
	}
	if err := c.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete the container: %w", err)
	}
	return nil
}
