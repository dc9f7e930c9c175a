// Package discovery finds the workloads crfailoverd looks after among the
// pods the runtime reports, from their annotations (kubelet copies pod
// annotations into the CRI sandbox, so no API server is needed). It does no
// I/O.
//
// Annotations (values are strings, as in Kubernetes):
//
//	hitachienergy.com/cr_mode                    "cr" to checkpoint the pod (required)
//	hitachienergy.com/cr_interval                seconds between checkpoints (default from the config)
//	hitachienergy.com/cr_container               container to checkpoint (default: the pod's only container)
//	hitachienergy.com/cr_probe_port              port of an HTTP liveness probe (no probe when absent)
//	hitachienergy.com/cr_probe_path              its path (default /health)
//	hitachienergy.com/cr_probe_period            seconds between probes (default from the config)
//	hitachienergy.com/cr_probe_failure_threshold failures in a row that mean the app failed (default 3)
//
// A kubelet static pod (sandbox annotation kubernetes.io/config.source:
// "file") named NAME-NODENAME by kubelet is the workload NAME, so that a
// static pod keeps one name on every node it runs on.
package discovery

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// Annotation keys.
const (
	Prefix              = "hitachienergy.com/"
	AnnMode             = Prefix + "cr_mode"
	AnnInterval         = Prefix + "cr_interval"
	AnnContainer        = Prefix + "cr_container"
	AnnProbePort        = Prefix + "cr_probe_port"
	AnnProbePath        = Prefix + "cr_probe_path"
	AnnProbePeriod      = Prefix + "cr_probe_period"
	AnnProbeThreshold   = Prefix + "cr_probe_failure_threshold"
	ModeCheckpointValue = "cr"
	// AnnEpoch is set by crfailoverd on pods it restores: the cluster epoch
	// of the placement the copy belongs to. Pods without it are originals.
	AnnEpoch = "crfailoverd.io/epoch"
	// AnnWorkload is set on static pods crfailoverd hands to kubelet:
	// kubelet names such a pod POD-NODE, and this keeps the workload's name.
	AnnWorkload = "crfailoverd.io/workload"
	// AnnCheckpoint is set on static pods crfailoverd hands to kubelet: the
	// checkpoint the pod restores, namespace/pod/container:seq.
	AnnCheckpoint = "crfailoverd.io/checkpoint"
	// AnnConfigSource is kubelet's annotation on a sandbox naming where the
	// pod came from: "file" for a static pod, "api" for the API server.
	AnnConfigSource = "kubernetes.io/config.source"
)

// Defaults come from the configuration.
type Defaults struct {
	Interval         time.Duration
	ProbePeriod      time.Duration
	FailureThreshold int
	// NodeName is this node's name. kubelet names a static pod
	// NAME-NODENAME (lower case); the workload keeps the manifest's NAME,
	// so that it has one name on every node.
	NodeName string
}

// Probe is an HTTP liveness probe; Port 0 means none.
type Probe struct {
	Port             int
	Path             string
	Period           time.Duration
	FailureThreshold int
}

// Workload is a container to checkpoint, as found now.
type Workload struct {
	ID store.Workload
	// PodName is the pod's name as the runtime and kubelet know it (for a
	// static pod NAME-NODENAME): the name kubelet's checkpoint API takes.
	PodName     string
	SandboxID   string
	PodUID      string
	ContainerID string
	State       cri.ContainerState
	Interval    time.Duration
	Probe       Probe
	Epoch       uint64 // AnnEpoch of the pod; 0 for an original pod
	// StaticPod: kubelet runs the pod from a manifest in its static pod
	// directory (the user's own, or one crfailoverd wrote).
	StaticPod bool
	// Checkpoint is AnnCheckpoint of a pod crfailoverd handed to kubelet;
	// empty for any other pod.
	Checkpoint string
}

// Problem is a pod that asks for checkpointing but cannot be handled.
type Problem struct {
	Pod string // namespace/name
	Err error
}

func (p Problem) Error() string { return fmt.Sprintf("pod %s: %v", p.Pod, p.Err) }

// Find returns the workloads among pods, sorted by ID, and the annotated
// pods it had to skip with the reason. When several sandboxes carry the
// same pod (a restore made a new one before the old was removed), the
// newest wins.
func Find(pods []cri.Pod, d Defaults) ([]Workload, []Problem) {
	byID := map[store.Workload]Workload{}
	created := map[store.Workload]time.Time{}
	var problems []Problem
	for _, p := range pods {
		if p.Annotations[AnnMode] != ModeCheckpointValue {
			continue
		}
		w, err := workloadOf(p, d)
		if err != nil {
			problems = append(problems, Problem{Pod: p.Namespace + "/" + p.Name, Err: err})
			continue
		}
		if t, dup := created[w.ID]; dup && t.After(p.CreatedAt) {
			continue
		}
		byID[w.ID], created[w.ID] = w, p.CreatedAt
	}
	out := make([]Workload, 0, len(byID))
	for _, w := range byID {
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID.String() < out[j].ID.String() })
	return out, problems
}

func workloadOf(p cri.Pod, d Defaults) (Workload, error) {
	a := p.Annotations
	w := Workload{PodName: p.Name, SandboxID: p.SandboxID, PodUID: p.UID, Interval: d.Interval,
		StaticPod: a[AnnConfigSource] == "file", Checkpoint: a[AnnCheckpoint],
		Probe: Probe{Path: "/health", Period: d.ProbePeriod, FailureThreshold: d.FailureThreshold}}
	var err error
	if v, ok := a[AnnInterval]; ok {
		if w.Interval, err = seconds(AnnInterval, v); err != nil {
			return w, err
		}
	}
	ctr, err := pickContainer(p, a[AnnContainer])
	if err != nil {
		return w, err
	}
	w.ContainerID, w.State = ctr.ID, ctr.State
	if v, ok := a[AnnEpoch]; ok {
		e, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return w, fmt.Errorf("annotation %s=%q: want a whole number", AnnEpoch, v)
		}
		w.Epoch = e
	}
	w.ID = store.Workload{Namespace: p.Namespace, Pod: p.Name, Container: ctr.Name}
	if suffix := "-" + strings.ToLower(d.NodeName); w.StaticPod && d.NodeName != "" && strings.HasSuffix(p.Name, suffix) && len(p.Name) > len(suffix) {
		w.ID.Pod = strings.TrimSuffix(p.Name, suffix)
	}
	if v, ok := a[AnnWorkload]; ok {
		id, err := store.ParseWorkload(v)
		if err != nil {
			return w, fmt.Errorf("annotation %s=%q: %v", AnnWorkload, v, err)
		}
		if id.Namespace != p.Namespace {
			return w, fmt.Errorf("annotation %s=%q names another namespace than the pod's %q", AnnWorkload, v, p.Namespace)
		}
		w.ID = id
	}
	if v, ok := a[AnnProbePort]; ok {
		port, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || port < 1 || port > 65535 {
			return w, fmt.Errorf("annotation %s=%q: want a port number 1-65535", AnnProbePort, v)
		}
		w.Probe.Port = port
	}
	if v, ok := a[AnnProbePath]; ok {
		if !strings.HasPrefix(v, "/") {
			return w, fmt.Errorf("annotation %s=%q: want a path starting with /", AnnProbePath, v)
		}
		w.Probe.Path = v
	}
	if v, ok := a[AnnProbePeriod]; ok {
		if w.Probe.Period, err = seconds(AnnProbePeriod, v); err != nil {
			return w, err
		}
	}
	if v, ok := a[AnnProbeThreshold]; ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 || n > 1000 {
			return w, fmt.Errorf("annotation %s=%q: want a whole number 1-1000", AnnProbeThreshold, v)
		}
		w.Probe.FailureThreshold = n
	}
	return w, nil
}

// seconds parses a number of seconds ("10", "0.5"): at least 0.1 s, at most
// a day.
func seconds(key, v string) (time.Duration, error) {
	f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || f < 0.1 || f > 86400 {
		return 0, fmt.Errorf("annotation %s=%q: want seconds between 0.1 and 86400", key, v)
	}
	return time.Duration(f * float64(time.Second)), nil
}

// pickContainer chooses the named container, or the pod's only one. Of
// several attempts of one container, the newest counts.
func pickContainer(p cri.Pod, name string) (cri.Container, error) {
	newest := map[string]cri.Container{}
	var names []string
	for _, c := range p.Containers { // newest first
		if _, seen := newest[c.Name]; !seen {
			newest[c.Name] = c
			names = append(names, c.Name)
		}
	}
	if name != "" {
		c, ok := newest[name]
		if !ok {
			return c, fmt.Errorf("annotation %s=%q: the pod has no such container (it has %s)", AnnContainer, name, strings.Join(names, ", "))
		}
		return c, nil
	}
	switch len(names) {
	case 0:
		return cri.Container{}, fmt.Errorf("the pod has no container yet")
	case 1:
		return newest[names[0]], nil
	}
	sort.Strings(names)
	return cri.Container{}, fmt.Errorf("the pod has %d containers (%s): name the one to checkpoint with annotation %s", len(names), strings.Join(names, ", "), AnnContainer)
}
