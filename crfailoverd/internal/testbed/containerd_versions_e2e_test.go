package testbed

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestE2ENodeRuntimes starts a bed whose nodes run what
// CRF_BED_NODE_RUNTIMES names (e.g.
// "n1=containerd,n2=containerd-2.4.2,n3=crio,n4=containerd-2.3.7") and
// checks, on every node, the runtime and version its CRI reports, whether
// a containerd 2.2/2.3 node has restore through CreateContainer on as
// CRF_BED_CONTAINERD_RESTORE asks (its CRI's own configuration), and that
// the counter runs there.
func TestE2ENodeRuntimes(t *testing.T) {
	c := requireE2E(t)
	if len(c.Containerd.Nodes) == 0 {
		t.Skipf("set %s (e.g. n1=containerd,n2=containerd-2.4.2,n3=crio) to check a bed of mixed runtimes", EnvNodeRuntimes)
	}
	n := 0
	for name := range c.Containerd.Nodes {
		i, _ := strconv.Atoi(strings.TrimPrefix(name, "n"))
		n = max(n, i)
	}
	b := upBed(t, c, n)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var line []string
	for _, node := range b.Nodes() {
		want := c.nodeRuntime(node.Name)
		if node.Runtime != want.Runtime || node.Containerd != want.Containerd {
			t.Errorf("%s: runtime %s %q, want %s", node.Name, node.Runtime, node.Containerd, want)
		}
		cri, err := DialCRI(node.Socket)
		if err != nil {
			t.Fatal(err)
		}
		v, err := cri.Runtime.Version(ctx, &runtimeapi.VersionRequest{})
		if err != nil {
			t.Fatalf("%s: %v", node.Name, err)
		}
		wantName, wantVersion := "containerd", b.Versions().Containerd
		switch {
		case want.Runtime == RuntimeCRIO:
			wantName, wantVersion = "cri-o", strings.TrimPrefix(CRIOVersion, "v")
		case want.Containerd != "":
			wantVersion = want.Containerd
		}
		got := strings.TrimPrefix(v.RuntimeVersion, "v")
		if v.RuntimeName != wantName || !strings.HasPrefix(got, wantVersion) {
			t.Errorf("%s: the CRI reports %s %s, want %s %s", node.Name, v.RuntimeName, v.RuntimeVersion, wantName, wantVersion)
		}
		entry := node.Name + "=" + v.RuntimeName + "-" + got
		if want.Runtime == RuntimeContainerd && CompareVersions(wantVersion, "2.2.0") >= 0 && CompareVersions(wantVersion, "2.4.0") < 0 {
			on, err := restoreViaCreate(ctx, cri)
			if err != nil {
				t.Fatalf("%s: %v", node.Name, err)
			}
			if wantOn := containerdRestoreViaCreate(wantVersion, want.Containerd != "", c.containerdRestore(node.Name)); on != wantOn {
				t.Errorf("%s: enable_experimental_restore_via_create is %v, want %v", node.Name, on, wantOn)
			}
			entry += fmt.Sprintf("(restore_via_create=%v)", on)
		}
		cri.Close()
		if _, err := b.RunTestApp(ctx, node.Name, PodSpec{Name: "counter"}); err != nil {
			t.Errorf("%s: %v", node.Name, err)
		}
		line = append(line, entry)
	}
	if !t.Failed() {
		fmt.Printf("E2E node-runtimes: nodes=%d %s apps=%d\n", n, strings.Join(line, " "), n)
	}
}

// restoreViaCreate reads enableExperimentalRestoreViaCreate from the CRI
// configuration containerd reports in its verbose status.
func restoreViaCreate(ctx context.Context, cri *CRI) (bool, error) {
	st, err := cri.Runtime.Status(ctx, &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		return false, fmt.Errorf("CRI status: %w", err)
	}
	var cfg struct {
		On *bool `json:"enableExperimentalRestoreViaCreate"`
	}
	if err := json.Unmarshal([]byte(st.Info["config"]), &cfg); err != nil {
		return false, fmt.Errorf("CRI status config: %w", err)
	}
	if cfg.On == nil {
		return false, fmt.Errorf("the CRI status config has no enableExperimentalRestoreViaCreate")
	}
	return *cfg.On, nil
}
