package testbed

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/soak"
	"github.com/crfailoverd/crfailoverd/test-app/bigstate"
)

// soakWorkload is one of the soak's workloads: a test app pod with a port
// of its own, so that two of them can run on one node after failovers.
type soakWorkload struct {
	ID   string // crfailoverd's name: namespace/pod/container
	Pod  string
	Node string // where it is started
	Port int
	Args []string
	Big  bool // the big-state app: /checksum is measured
}

// The big-state app's memory and seed.
const (
	soakStateMB   = 100
	soakStateSeed = 7
)

// soakWorkloads are the soak's three workloads on the first three nodes.
func soakWorkloads(nodes []string) []soakWorkload {
	mk := func(pod, node string, port int, big bool) soakWorkload {
		args := []string{"-listen", ":" + strconv.Itoa(port)}
		if big {
			args = append(args, "-state-mb", strconv.Itoa(soakStateMB), "-state-seed", strconv.Itoa(soakStateSeed))
		}
		return soakWorkload{ID: "default/" + pod + "/counter", Pod: pod, Node: node, Port: port, Args: args, Big: big}
	}
	return []soakWorkload{
		mk("counter-a", nodes[0], 8081, false),
		mk("counter-b", nodes[1], 8082, false),
		mk("bigstate", nodes[2], 8083, true),
	}
}

// annWorkload is the sandbox annotation crfailoverd puts on the static
// pods it hands to kubelet, naming the workload (namespace/pod/container).
const annWorkload = "crfailoverd.io/workload"

// workloadIndex maps a running container seen on node (its pod's
// namespace and name, its container name, its sandbox's annotations) to
// the index of its workload in ws; -1: none of them. The workload's name
// is crfailoverd's annotation when the pod has one (a static pod it
// restored), else namespace/pod/container, where kubelet's static pod
// name POD-NODE counts as POD.
func workloadIndex(ws []soakWorkload, node, namespace, pod, container string, ann map[string]string) int {
	find := func(id string) int {
		return slices.IndexFunc(ws, func(w soakWorkload) bool { return w.ID == id })
	}
	if id, ok := ann[annWorkload]; ok {
		return find(id)
	}
	if i := find(namespace + "/" + pod + "/" + container); i >= 0 {
		return i
	}
	if p, ok := strings.CutSuffix(pod, "-"+node); ok {
		return find(namespace + "/" + p + "/" + container)
	}
	return -1
}

// netnsDialer dials TCP from inside one node's network namespace (a
// goroutine locked on a thread that entered it), so that the observer
// reaches a node's apps over its loopback whatever the nemesis did to
// the node's link.
type netnsDialer struct {
	reqs chan dialReq
}

type dialReq struct {
	ctx   context.Context
	addr  string
	reply chan dialReply
}

type dialReply struct {
	c   net.Conn
	err error
}

func newNetnsDialer(nsPath string) (*netnsDialer, error) {
	d := &netnsDialer{reqs: make(chan dialReq)}
	ready := make(chan error, 1)
	go func() {
		// Never unlocked: the thread stays in the node's namespace and
		// exits with the goroutine.
		runtime.LockOSThread()
		f, err := os.Open(nsPath)
		if err != nil {
			ready <- fmt.Errorf("open network namespace %s: %w", nsPath, err)
			return
		}
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		if err != nil {
			ready <- fmt.Errorf("enter network namespace %s: %w", nsPath, err)
			return
		}
		ready <- nil
		nd := net.Dialer{Timeout: 100 * time.Millisecond}
		for r := range d.reqs {
			c, err := nd.DialContext(r.ctx, "tcp", r.addr)
			r.reply <- dialReply{c, err}
		}
	}()
	if err := <-ready; err != nil {
		return nil, err
	}
	return d, nil
}

func (d *netnsDialer) DialContext(ctx context.Context, _, addr string) (net.Conn, error) {
	r := dialReq{ctx: ctx, addr: addr, reply: make(chan dialReply, 1)}
	select {
	case d.reqs <- r:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case rep := <-r.reply:
		return rep.c, rep.err
	case <-ctx.Done():
		go func() {
			if rep := <-r.reply; rep.c != nil {
				rep.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

func (d *netnsDialer) close() { close(d.reqs) }

// observation is the last completed look at one thing, with when it ended.
type criObs struct {
	at      time.Time
	ok      bool
	running []bool // per workload
}

type httpObs struct {
	at      time.Time
	serving bool
	counter int64
}

// checkObs is a big-state checksum measured on a node, waiting to be put
// into the next sample.
type checkObs struct {
	counter        int64
	checksum, want string
}

// observer samples every 100 ms, over every node's CRI socket and over
// every app's HTTP on every node's loopback, where each workload runs and
// serves; it assembles one soak.Sample per workload per round.
type observer struct {
	b     *Bed
	ws    []soakWorkload
	nodes []Node
	start time.Time

	dialers map[string]*netnsDialer
	clients map[string]*http.Client

	mu      sync.Mutex
	cri     map[string]criObs
	http    map[string][]httpObs  // node -> per workload
	checks  map[string][]checkObs // node -> per workload, pending
	samples []soak.Sample

	wantMu sync.Mutex
	want   map[int64]string
	exp    *bigstate.Expecter // made on first use: 100 MiB

	finalErr []error // why final found no copy it could check
}

// freshFor: an observation older than this says nothing (its prober is
// stuck on a slow node).
const freshFor = 4 * time.Second

func newObserver(b *Bed, ws []soakWorkload, start time.Time) (*observer, error) {
	o := &observer{b: b, ws: ws, nodes: b.Nodes(), start: start,
		dialers: map[string]*netnsDialer{}, clients: map[string]*http.Client{},
		cri: map[string]criObs{}, http: map[string][]httpObs{}, checks: map[string][]checkObs{}, want: map[int64]string{}}
	for _, n := range o.nodes {
		d, err := newNetnsDialer(n.Netns)
		if err != nil {
			o.close()
			return nil, err
		}
		o.dialers[n.Name] = d
		o.clients[n.Name] = &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
		o.http[n.Name] = make([]httpObs, len(ws))
		o.checks[n.Name] = make([]checkObs, len(ws))
	}
	return o, nil
}

func (o *observer) close() {
	for _, d := range o.dialers {
		d.close()
	}
}

// run samples until ctx ends.
func (o *observer) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, n := range o.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); o.criLoop(ctx, n) }()
		for i := range o.ws {
			wg.Add(1)
			go func() { defer wg.Done(); o.httpLoop(ctx, n, i) }()
		}
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case now := <-t.C:
			o.assemble(now)
		}
	}
}

// every runs f every 100 ms (at once again when it took longer) until ctx ends.
func every(ctx context.Context, f func()) {
	for {
		next := time.Now().Add(100 * time.Millisecond)
		f()
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
	}
}

func (o *observer) criLoop(ctx context.Context, n Node) {
	var c *CRI
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	every(ctx, func() {
		if c == nil {
			var err error
			if c, err = DialCRI(n.Socket); err != nil {
				o.setCRI(n.Name, criObs{at: time.Now()})
				return
			}
		}
		running, err := runningWorkloads(ctx, c, o.ws, n.Name)
		if ctx.Err() != nil {
			return // stopped mid-look
		}
		if err != nil {
			// Redial: after a boot the socket is a new one, and gRPC's
			// reconnect backoff would hide it for a long while.
			c.Close()
			c = nil
		}
		o.setCRI(n.Name, criObs{at: time.Now(), ok: err == nil, running: running})
	})
}

func (o *observer) setCRI(node string, ob criObs) {
	o.mu.Lock()
	o.cri[node] = ob
	o.mu.Unlock()
}

// runningWorkloads lists the running containers on a node and says, per
// workload, whether one of them is it.
func runningWorkloads(ctx context.Context, c *CRI, ws []soakWorkload, node string) ([]bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	cs, err := c.Runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
	}})
	if err != nil {
		return nil, fmt.Errorf("list containers on %s: %w", node, err)
	}
	sbs, err := c.Runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return nil, fmt.Errorf("list pod sandboxes on %s: %w", node, err)
	}
	ann := map[string]map[string]string{}
	for _, s := range sbs.Items {
		ann[s.Id] = s.Annotations
	}
	out := make([]bool, len(ws))
	for _, ct := range cs.Containers {
		l := ct.Labels
		name := l[LabelContainerName]
		if name == "" && ct.Metadata != nil {
			name = ct.Metadata.Name
		}
		if i := workloadIndex(ws, node, l[LabelPodNamespace], l[LabelPodName], name, ann[ct.PodSandboxId]); i >= 0 {
			out[i] = true
		}
	}
	return out, nil
}

func (o *observer) httpLoop(ctx context.Context, n Node, wi int) {
	w := o.ws[wi]
	base := "http://127.0.0.1:" + strconv.Itoa(w.Port)
	client := o.clients[n.Name]
	was, checking := false, false
	var checkDone chan struct{}
	every(ctx, func() {
		var s struct {
			Counter *int64 `json:"counter"`
		}
		err := getJSON(ctx, client, base+"/state", &s)
		if ctx.Err() != nil {
			return // stopped mid-look: that says nothing of the copy
		}
		ob := httpObs{at: time.Now(), serving: err == nil && s.Counter != nil}
		if ob.serving {
			ob.counter = *s.Counter
		}
		o.mu.Lock()
		o.http[n.Name][wi] = ob
		o.mu.Unlock()
		if checking {
			select {
			case <-checkDone:
				checking = false
			default:
			}
		}
		// A copy that starts serving on a node is checked byte for byte
		// once (the checksum costs the app about 0.3 s).
		if w.Big && ob.serving && !was && !checking {
			checking, checkDone = true, make(chan struct{})
			go func() {
				defer close(checkDone)
				if c, err := o.checksum(ctx, n.Name, wi); err == nil {
					o.mu.Lock()
					o.checks[n.Name][wi] = c
					o.mu.Unlock()
				}
			}()
		}
		was = ob.serving
	})
	if checking {
		<-checkDone
	}
}

// checksum measures the big-state app on node: its counter and the
// sha256 of its memory, and the sha256 that counter implies.
func (o *observer) checksum(ctx context.Context, node string, wi int) (checkObs, error) {
	var s struct {
		Counter *int64 `json:"counter"`
		SHA256  string `json:"sha256"`
	}
	u := "http://127.0.0.1:" + strconv.Itoa(o.ws[wi].Port) + "/checksum"
	// Hashing 100 MiB on a busy 2-core machine (or an app frozen by a
	// dump) takes longer than a /state: its own 15 s, two tries.
	c := &http.Client{Timeout: 15 * time.Second, Transport: o.clients[node].Transport}
	err := getJSON(ctx, c, u, &s)
	if err != nil {
		err = getJSON(ctx, c, u, &s)
	}
	if err != nil {
		return checkObs{}, fmt.Errorf("big-state checksum on %s: %w", node, err)
	}
	if s.Counter == nil || s.SHA256 == "" {
		return checkObs{}, fmt.Errorf("GET %s on %s: no counter or sha256 in the answer", u, node)
	}
	return checkObs{counter: *s.Counter, checksum: s.SHA256, want: o.wantCheck(*s.Counter)}, nil
}

func (o *observer) wantCheck(counter int64) string {
	o.wantMu.Lock()
	defer o.wantMu.Unlock()
	if w, ok := o.want[counter]; ok {
		return w
	}
	if o.exp == nil {
		o.exp = bigstate.NewExpecter(soakStateMB, soakStateSeed)
	}
	w := o.exp.Expected(counter)
	o.want[counter] = w
	return w
}

func getJSON(ctx context.Context, c *http.Client, u string, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(into)
}

// assemble records one sample per workload from the fresh observations.
func (o *observer) assemble(now time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	at := now.Sub(o.start)
	for wi, w := range o.ws {
		sm := soak.Sample{At: at, Workload: w.ID}
		for _, n := range o.nodes {
			c := soak.Copy{Node: n.Name}
			if ob := o.cri[n.Name]; ob.ok && now.Sub(ob.at) < freshFor {
				c.Running = ob.running[wi]
			}
			if ob := o.http[n.Name][wi]; ob.serving && now.Sub(ob.at) < freshFor {
				c.Serving, c.Counter = true, ob.counter
			}
			if ck := o.checks[n.Name][wi]; ck.checksum != "" {
				c.Serving, c.Counter, c.Checksum, c.WantCheck = true, ck.counter, ck.checksum, ck.want
				o.checks[n.Name][wi] = checkObs{}
			}
			if c.Running || c.Serving {
				sm.Copies = append(sm.Copies, c)
			}
		}
		o.samples = append(o.samples, sm)
	}
}

// serving names, per workload, the nodes its latest observations say it
// serves on.
func (o *observer) serving() [][]string {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	out := make([][]string, len(o.ws))
	for wi := range o.ws {
		for _, n := range o.nodes {
			if ob := o.http[n.Name][wi]; ob.serving && now.Sub(ob.at) < freshFor {
				out[wi] = append(out[wi], n.Name)
			}
		}
	}
	return out
}

// latestCounter is workload wi's counter on node at the last look.
func (o *observer) latestCounter(node string, wi int) int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.http[node][wi].counter
}

// final is, per workload, the copy the end check finds: where it served
// at the last look srv (the first node when it served on several) with its counter, and for
// the big-state app its checksum.
func (o *observer) final(ctx context.Context, srv [][]string) []soak.Copy {
	out := make([]soak.Copy, len(o.ws))
	for wi, w := range o.ws {
		if len(srv[wi]) == 0 {
			continue
		}
		node := srv[wi][0]
		out[wi] = soak.Copy{Node: node, Running: true, Serving: true, Counter: o.latestCounter(node, wi)}
		if w.Big {
			c, err := o.checksum(ctx, node, wi)
			if err != nil {
				o.finalErr = append(o.finalErr, err)
				out[wi].Serving = false
				continue
			}
			out[wi].Counter, out[wi].Checksum, out[wi].WantCheck = c.counter, c.checksum, c.want
		}
	}
	return out
}

func (o *observer) takeSamples() []soak.Sample {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.samples)
}
