package testbed

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseContainerdFlavor(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		want    ContainerdFlavor
		wantErr string
	}{
		{name: "none", want: ContainerdFlavor{Nodes: map[string]NodeRuntime{}}},
		{name: "2.4.2", env: map[string]string{EnvContainerd: "2.4.2"}, want: ContainerdFlavor{Version: "2.4.2", Nodes: map[string]NodeRuntime{}}},
		{name: "v prefix", env: map[string]string{EnvContainerd: "v2.3.7", EnvContainerdRestore: "1"}, want: ContainerdFlavor{Version: "2.3.7", Restore: true, Nodes: map[string]NodeRuntime{}}},
		{name: "unbuilt version", env: map[string]string{EnvContainerd: "2.5.0"}, wantErr: "want one of 2.3.7, 2.4.2"},
		{name: "bad restore", env: map[string]string{EnvContainerdRestore: "yes"}, wantErr: EnvContainerdRestore},
		{name: "per node", env: map[string]string{EnvNodeRuntimes: "n1=containerd, n2=containerd-2.4.2,n3=crio,n4=containerd-v2.3.7"}, want: ContainerdFlavor{Nodes: map[string]NodeRuntime{
			"n1": {Runtime: RuntimeContainerd}, "n2": {Runtime: RuntimeContainerd, Containerd: "2.4.2"},
			"n3": {Runtime: RuntimeCRIO}, "n4": {Runtime: RuntimeContainerd, Containerd: "2.3.7"},
		}}},
		{name: "node twice", env: map[string]string{EnvNodeRuntimes: "n1=crio,n1=containerd"}, wantErr: "named twice"},
		{name: "bad node name", env: map[string]string{EnvNodeRuntimes: "node1=crio"}, wantErr: "NODE=RUNTIME"},
		{name: "n0", env: map[string]string{EnvNodeRuntimes: "n0=crio"}, wantErr: "NODE=RUNTIME"},
		{name: "unknown runtime", env: map[string]string{EnvNodeRuntimes: "n1=docker"}, wantErr: `runtime "docker"`},
		{name: "unbuilt node version", env: map[string]string{EnvNodeRuntimes: "n1=containerd-1.7.0"}, wantErr: `containerd version "1.7.0"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseContainerdFlavor(func(k string) string { return tc.env[k] })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestNodeRuntime(t *testing.T) {
	c := Config{Runtime: RuntimeContainerd, Containerd: ContainerdFlavor{Version: "2.4.2", Nodes: map[string]NodeRuntime{
		"n2": {Runtime: RuntimeCRIO}, "n3": {Runtime: RuntimeContainerd},
	}}}
	got := c.nodeRuntimes(4)
	want := []NodeRuntime{
		{Runtime: RuntimeContainerd, Containerd: "2.4.2"}, // the bed's flavor
		{Runtime: RuntimeCRIO},
		{Runtime: RuntimeContainerd}, // named: Debian's, whatever the bed's flavor
		{Runtime: RuntimeContainerd, Containerd: "2.4.2"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if !c.anyNodeRuns(2, RuntimeCRIO) || c.anyNodeRuns(1, RuntimeCRIO) {
		t.Error("anyNodeRuns does not see n2's CRI-O only from two nodes on")
	}
	if s := got[0].String() + " " + got[1].String() + " " + got[2].String(); s != "containerd-2.4.2 crio containerd" {
		t.Errorf("String: %s", s)
	}
	crio := Config{Runtime: RuntimeCRIO, Containerd: ContainerdFlavor{Version: "2.4.2"}}
	if r := crio.nodeRuntime("n1"); r != (NodeRuntime{Runtime: RuntimeCRIO}) {
		t.Errorf("a CRI-O bed's node: %+v, want CRI-O without a containerd version", r)
	}
}

func TestContainerdRestoreViaCreate(t *testing.T) {
	for _, tc := range []struct {
		version        string
		built, restore bool
		want           bool
	}{
		{"2.1.9", false, false, false}, // restores without the option
		{"2.1.9", false, true, false},
		{"2.2.1", true, true, true},
		{"2.2.1", false, false, false}, // Debian's: from 2.3 on, as the bed always had it
		{"2.3.7", false, false, true},
		{"2.3.7", true, false, false}, // built, left off: the incapable 2.3 node
		{"2.3.7", true, true, true},
		{"2.4.2", true, true, false}, // the option is gone
		{"2.4.2", false, false, true},
	} {
		if got := containerdRestoreViaCreate(tc.version, tc.built, tc.restore); got != tc.want {
			t.Errorf("containerdRestoreViaCreate(%s, built=%v, restore=%v) = %v, want %v", tc.version, tc.built, tc.restore, got, tc.want)
		}
	}
}

func TestContainerdConfigRestoreOption(t *testing.T) {
	const opt = "enable_experimental_restore_via_create = true"
	b := &Bed{cfg: Config{RegistryPort: 5000, Containerd: ContainerdFlavor{Restore: true}}}
	b.state.Versions.Containerd = "2.1.9"
	on := b.containerdConfig(Node{Name: "n1", Dir: "/x/n1", Socket: "/x/n1/containerd.sock", Containerd: "2.3.7"})
	if !strings.Contains(on, "[plugins.'io.containerd.cri.v1.runtime']\n  # This machine lacks CAP_SYS_RESOURCE: without it every sandbox fails.\n  restrict_oom_score_adj = true\n  "+opt+"\n") {
		t.Errorf("2.3.7 with restore asked: the option is not in the CRI runtime table:\n%s", on)
	}
	b.cfg.Containerd.Restore = false
	if off := b.containerdConfig(Node{Name: "n1", Containerd: "2.3.7"}); strings.Contains(off, opt) {
		t.Errorf("2.3.7 with restore left off has the option:\n%s", off)
	}
	if debian := b.containerdConfig(Node{Name: "n1"}); strings.Contains(debian, opt) {
		t.Errorf("Debian's 2.1.9 has the option:\n%s", debian)
	}
}
