package testbed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/atomicfile"
)

// CounterManifest is a user's static pod manifest of the counter: host
// network, the bed registry's image, the given annotations (for example
// hitachienergy.com/cr_mode: "cr").
func (b *Bed) CounterManifest(name string, ann map[string]string) string {
	return b.AppManifest(name, ann, nil, AppPort)
}

// AppManifest is CounterManifest with the app's arguments (args, none:
// its defaults) and the port it serves on.
func (b *Bed) AppManifest(name string, ann map[string]string, args []string, port int) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: default\n", name)
	if len(ann) > 0 {
		keys := make([]string, 0, len(ann))
		for k := range ann {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		sb.WriteString("  annotations:\n")
		for _, k := range keys {
			fmt.Fprintf(&sb, "    %s: %q\n", k, ann[k])
		}
	}
	fmt.Fprintf(&sb, `spec:
  hostNetwork: true
  restartPolicy: Always
  containers:
  - name: counter
    image: %s
    imagePullPolicy: IfNotPresent
`, b.CounterImage())
	if len(args) > 0 {
		sb.WriteString("    args:\n")
		for _, a := range args {
			fmt.Fprintf(&sb, "    - %q\n", a)
		}
	}
	fmt.Fprintf(&sb, "    ports:\n    - containerPort: %d\n", port)
	return sb.String()
}

// RunStaticCounter writes the user's manifest of the counter (file
// NAME.yaml) into node's static pod directory and waits until kubelet runs
// it and it answers.
func (b *Bed) RunStaticCounter(ctx context.Context, node, name string, ann map[string]string) error {
	return b.RunStaticApp(ctx, node, name, ann, nil, AppPort)
}

// RunStaticApp is RunStaticCounter with the app's arguments and port.
func (b *Bed) RunStaticApp(ctx context.Context, node, name string, ann map[string]string, args []string, port int) error {
	n, err := b.Node(node)
	if err != nil {
		return err
	}
	path := filepath.Join(n.StaticPodDir(), name+".yaml")
	if err := os.MkdirAll(n.StaticPodDir(), 0o755); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, []byte(b.AppManifest(name, ann, args, port)), 0o644); err != nil {
		return fmt.Errorf("node %s: write static pod %s: %w", node, path, err)
	}
	return poll(ctx, 90*time.Second, "kubelet on "+node+" to run the static pod "+name, func() (bool, error) {
		err := b.waitAppOn(ctx, node, port, 500*time.Millisecond)
		return err == nil, err
	})
}

// StaticPodFiles lists the files in node's static pod directory.
func (b *Bed) StaticPodFiles(node string) ([]string, error) {
	n, err := b.Node(node)
	if err != nil {
		return nil, err
	}
	des, err := os.ReadDir(n.StaticPodDir())
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out, nil
}

// RunCounter runs the counter on node as users run it there: on kubelet
// nodes as a static pod from the user's manifest (pod "counter"), else as
// a pod made through the CRI calls kubelet would make. Either way the
// workload is CounterWorkload.
func (b *Bed) RunCounter(ctx context.Context, node string, ann map[string]string) error {
	if b.cfg.Kubelet {
		return b.RunStaticCounter(ctx, node, "counter", ann)
	}
	_, err := b.RunTestApp(ctx, node, PodSpec{Name: "counter", Annotations: ann})
	return err
}

// TakenOver reports whether crfailoverd on node has taken the counter's
// static pod over (only crfailoverd's manifest is left in kubelet's
// directory); always true on nodes without kubelet.
func (b *Bed) TakenOver(node string) bool {
	if !b.cfg.Kubelet {
		return true
	}
	files, err := b.StaticPodFiles(node)
	return err == nil && len(files) == 1 && files[0] == "crfailoverd-default_counter.yaml"
}

// TakenOverPod reports whether crfailoverd on node has taken the static
// pod default/POD over (its manifest replaced by crfailoverd's; other pods'
// files may be there too); always true on nodes without kubelet.
func (b *Bed) TakenOverPod(node, pod string) bool {
	if !b.cfg.Kubelet {
		return true
	}
	files, err := b.StaticPodFiles(node)
	if err != nil {
		return false
	}
	mine, user := false, false
	for _, f := range files {
		mine = mine || f == "crfailoverd-default_"+pod+".yaml"
		user = user || f == pod+".yaml"
	}
	return mine && !user
}

// Flavor names the bed's node flavor for the E2E lines: "containerd",
// "containerd+kubelet", "crio+kubelet", ...
func (b *Bed) Flavor() string {
	f := b.cfg.Runtime
	switch cd := b.cfg.Containerd; {
	case len(cd.Nodes) > 0:
		f = "mixed"
	case cd.Version != "" && f == RuntimeContainerd:
		f += "-" + cd.Version
	}
	if b.cfg.CRIOPatched {
		f += "-patched"
	}
	if b.cfg.Kubelet {
		f += "+kubelet"
	}
	return f
}
