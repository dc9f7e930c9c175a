package discovery

import (
	"strings"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
)

var defs = Defaults{Interval: 10 * time.Second, ProbePeriod: time.Second, FailureThreshold: 3}

func pod(name string, ann map[string]string, ctrs ...cri.Container) cri.Pod {
	return cri.Pod{SandboxID: "sb-" + name, Name: name, Namespace: "ns", UID: "u-" + name, Annotations: ann, Containers: ctrs, CreatedAt: time.Unix(100, 0)}
}

func ctr(name string, created int64, st cri.ContainerState) cri.Container {
	return cri.Container{ID: name + "-id", Name: name, CreatedAt: time.Unix(created, 0), State: st}
}

func TestFindDefaultsAndOverrides(t *testing.T) {
	pods := []cri.Pod{
		pod("plain", map[string]string{"other": "x"}, ctr("app", 1, cri.StateRunning)),
		pod("a", map[string]string{AnnMode: "cr"}, ctr("app", 1, cri.StateRunning)),
		pod("b", map[string]string{AnnMode: "cr", AnnInterval: "1", AnnContainer: "main", AnnProbePort: "8080",
			AnnProbePath: "/healthz", AnnProbePeriod: "0.5", AnnProbeThreshold: "5"},
			ctr("sidecar", 2, cri.StateRunning), ctr("main", 1, cri.StateRunning)),
	}
	ws, problems := Find(pods, defs)
	if len(problems) != 0 || len(ws) != 2 {
		t.Fatalf("workloads %v problems %v", ws, problems)
	}
	a, b := ws[0], ws[1]
	if a.ID.String() != "ns/a/app" || a.Interval != 10*time.Second || a.Probe.Port != 0 || a.Probe.FailureThreshold != 3 || a.Probe.Path != "/health" {
		t.Errorf("defaults: %+v", a)
	}
	if b.ID.String() != "ns/b/main" || b.ContainerID != "main-id" || b.Interval != time.Second ||
		b.Probe != (Probe{Port: 8080, Path: "/healthz", Period: 500 * time.Millisecond, FailureThreshold: 5}) {
		t.Errorf("overrides: %+v", b)
	}
}

func TestFindBadAnnotationsSkipThePodOnly(t *testing.T) {
	good := pod("good", map[string]string{AnnMode: "cr"}, ctr("app", 1, cri.StateRunning))
	for _, c := range []struct {
		ann  map[string]string
		ctrs []cri.Container
		want string
	}{
		{map[string]string{AnnInterval: "ten"}, nil, AnnInterval},
		{map[string]string{AnnInterval: "0"}, nil, AnnInterval},
		{map[string]string{AnnInterval: "-5"}, nil, AnnInterval},
		{map[string]string{AnnProbePort: "http"}, nil, AnnProbePort},
		{map[string]string{AnnProbePort: "70000"}, nil, AnnProbePort},
		{map[string]string{AnnProbePath: "health"}, nil, AnnProbePath},
		{map[string]string{AnnProbePeriod: "x"}, nil, AnnProbePeriod},
		{map[string]string{AnnProbeThreshold: "0"}, nil, AnnProbeThreshold},
		{map[string]string{AnnContainer: "nope"}, nil, "no such container"},
		{nil, []cri.Container{ctr("a", 1, cri.StateRunning), ctr("b", 2, cri.StateRunning)}, AnnContainer},
		{nil, []cri.Container{}, "no container"},
	} {
		ann := map[string]string{AnnMode: "cr"}
		for k, v := range c.ann {
			ann[k] = v
		}
		ctrs := c.ctrs
		if ctrs == nil {
			ctrs = []cri.Container{ctr("app", 1, cri.StateRunning)}
		}
		ws, problems := Find([]cri.Pod{good, pod("bad", ann, ctrs...)}, defs)
		if len(ws) != 1 || ws[0].ID.Pod != "good" {
			t.Errorf("%v: the good pod must still be found, got %v", c.ann, ws)
		}
		if len(problems) != 1 || problems[0].Pod != "ns/bad" || !strings.Contains(problems[0].Error(), c.want) {
			t.Errorf("%v: want one problem for ns/bad naming %q, got %v", c.ann, c.want, problems)
		}
	}
}

func TestFindNewestContainerAttemptAndSandbox(t *testing.T) {
	p := pod("a", map[string]string{AnnMode: "cr"},
		cri.Container{ID: "new", Name: "app", CreatedAt: time.Unix(5, 0), State: cri.StateExited},
		cri.Container{ID: "old", Name: "app", CreatedAt: time.Unix(1, 0), State: cri.StateExited})
	older := p
	older.SandboxID, older.CreatedAt = "sb-older", time.Unix(50, 0)
	ws, _ := Find([]cri.Pod{older, p}, defs)
	if len(ws) != 1 || ws[0].ContainerID != "new" || ws[0].SandboxID != "sb-a" {
		t.Fatalf("want the newest attempt in the newest sandbox, got %+v", ws)
	}
}

func TestStaticPodNames(t *testing.T) {
	d := defs
	d.NodeName = "N2"
	static := map[string]string{AnnMode: "cr", AnnConfigSource: "file"}
	restored := map[string]string{AnnMode: "cr", AnnConfigSource: "file", AnnWorkload: "ns/counter/app", AnnCheckpoint: "ns/counter/app:7"}
	for _, tc := range []struct {
		pod        cri.Pod
		id         string
		static     bool
		checkpoint string
	}{
		// kubelet names a static pod NAME-NODE (lower case): the workload is NAME.
		{pod("counter-n2", static, ctr("app", 1, cri.StateRunning)), "ns/counter/app", true, ""},
		// Another node's suffix, or none, is part of the name.
		{pod("counter-n1", static, ctr("app", 1, cri.StateRunning)), "ns/counter-n1/app", true, ""},
		{pod("-n2", static, ctr("app", 1, cri.StateRunning)), "ns/-n2/app", true, ""},
		// A pod of the API server (or created through the CRI) keeps its name.
		{pod("web-n2", map[string]string{AnnMode: "cr", AnnConfigSource: "api"}, ctr("app", 1, cri.StateRunning)), "ns/web-n2/app", false, ""},
		// crfailoverd's own static pod says which workload and checkpoint it is.
		{pod("counter-n2", restored, ctr("app", 1, cri.StateRunning)), "ns/counter/app", true, "ns/counter/app:7"},
	} {
		ws, problems := Find([]cri.Pod{tc.pod}, d)
		if len(ws) != 1 || len(problems) != 0 {
			t.Fatalf("%s: %v %v", tc.pod.Name, ws, problems)
		}
		w := ws[0]
		if w.ID.String() != tc.id || w.PodName != tc.pod.Name || w.StaticPod != tc.static || w.Checkpoint != tc.checkpoint {
			t.Errorf("%s: id %s pod name %s static %t checkpoint %q; want %s, %t, %q", tc.pod.Name, w.ID, w.PodName, w.StaticPod, w.Checkpoint, tc.id, tc.static, tc.checkpoint)
		}
	}
}

// A pod may not name a workload of another namespace as its own.
func TestWorkloadAnnotationStaysInItsNamespace(t *testing.T) {
	_, problems := Find([]cri.Pod{pod("x", map[string]string{AnnMode: "cr", AnnWorkload: "kube-system/etcd/etcd"}, ctr("app", 1, cri.StateRunning))}, defs)
	if len(problems) != 1 || !strings.Contains(problems[0].Error(), "another namespace") {
		t.Errorf("problems %v", problems)
	}
}
