package testbed

import (
	"net"
	"path/filepath"
)

// ListenInNetns opens a TCP listener on addr inside the network namespace
// at nsPath (for example a node's Netns), so that a server run by the test
// process answers on that node's own addresses, loopback included, as a
// daemon running on the node would. Only the listening socket lives in the
// namespace; the rest of the process is unaffected.
func ListenInNetns(nsPath, addr string) (net.Listener, error) {
	return listenInNetns(nsPath, addr)
}

// PodCgroupParent is the cgroup parent the bed gives the pods of node n
// (kubelet's cgroup of a pod); the bed's teardown finds their processes
// and cgroups there. Use it in sandbox configurations a test makes itself.
func (n Node) PodCgroupParent(podUID string) string { return nodeCgroupParent(n.Name, podUID) }

// PodLogDir is where the bed keeps the logs of a pod of node n, as kubelet
// keeps them under /var/log/pods.
func (n Node) PodLogDir(namespace, name, uid string) string {
	return filepath.Join(n.Dir, "pods", namespace+"_"+name+"_"+uid)
}
