package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/config"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ociserve"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/pullsecret"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// newImageServer sets up the checkpoint image endpoint of the [images]
// configuration (listen_addr must be set): the server of st's checkpoints,
// which serves only with this node's credentials (user "crfailoverd", the
// secret in <data_dir>/images/secret, made once and kept across restarts)
// and keeps its layer cache in <data_dir>/images, sealed with key (the
// store's data key; nil keeps it in plaintext, like the store). It writes
// the credentials into every images.pull_secret_files file, for the
// endpoint's hosts as image references name them, and fails naming the
// file it could not write: without them, the node's pulls of checkpoint
// images are refused.
//
// Only kubelet pulls from the endpoint (restores as static pods): with
// viaKubelet false (restores through the CRI) no pull secret file is
// written, and the endpoint serves nothing (see ociserve.Server.Serves).
func newImageServer(c config.Config, st *store.Store, key *seal.Key, viaKubelet bool, log *slog.Logger) (*ociserve.Server, error) {
	dir := filepath.Join(c.Node.DataDir, "images")
	creds, err := ociserve.NodeCredentials(filepath.Join(dir, "secret"))
	if err != nil {
		return nil, err
	}
	hosts, err := imageEndpointHosts(c.Images.ListenAddr)
	if err != nil {
		return nil, err
	}
	if !viaKubelet && len(c.Images.PullSecretFiles) > 0 {
		log.Info("image endpoint credentials not written into images.pull_secret_files: restores go through the CRI, not kubelet",
			"files", c.Images.PullSecretFiles)
	}
	for _, f := range c.Images.PullSecretFiles {
		if !viaKubelet {
			break
		}
		before, _ := os.ReadFile(f)
		if err := pullsecret.Write(f, hosts, pullsecret.Auth{Username: creds.Username, Password: creds.Password}); err != nil {
			return nil, fmt.Errorf("images.pull_secret_files: %w", err)
		}
		if after, _ := os.ReadFile(f); !bytes.Equal(before, after) {
			// kubelet keeps what it read for 5 minutes.
			log.Warn("image endpoint credentials written anew: a kubelet that already runs uses them only after up to 5 minutes (its credential cache); restart kubelet now (systemctl restart kubelet), or static-pod restores are refused until then; starting crfailoverd before kubelet avoids it",
				"file", f, "hosts", hosts)
		} else {
			log.Info("image endpoint credentials in place", "file", f, "hosts", hosts)
		}
	}
	srv := ociserve.NewServer(st, log)
	srv.CacheDir = dir
	srv.Credentials = creds
	srv.CacheKey = key
	return srv, nil
}

// imageEndpointHosts returns the registry hosts under which the node's
// pulls may name the endpoint at listenAddr: localhost and 127.0.0.1 with
// its port (static pods name localhost:PORT), and the listen address
// itself unless it is a wildcard.
func imageEndpointHosts(listenAddr string) ([]string, error) {
	host, port, err := net.SplitHostPort(listenAddr)
	if err != nil {
		return nil, fmt.Errorf("images.listen_addr %q: %w", listenAddr, err)
	}
	hosts := []string{net.JoinHostPort("localhost", port), net.JoinHostPort("127.0.0.1", port)}
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		if own := net.JoinHostPort(host, port); !slices.Contains(hosts, own) {
			hosts = append(hosts, own)
		}
	}
	return hosts, nil
}
