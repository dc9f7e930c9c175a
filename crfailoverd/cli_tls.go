package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/pki"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
)

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error {
	*l = append(*l, s)
	return nil
}

func cmdTLS(args []string, stdout, stderr io.Writer) error {
	const usage = "Usage: crfailoverd tls ca --dir DIR [--force]\n       crfailoverd tls cert --ca-dir DIR --dir DIR --node NAME --ip ADDR [--ip ADDR...] [--dns NAME...]\n\n" +
		"Makes the cluster's TLS material: a CA (ca.crt for every node, ca.key kept off the nodes), and per node a\n" +
		"certificate (node.crt, node.key) with the node name as common and DNS name and its addresses as IP names,\n" +
		"valid for both server and client use, as the cluster's mutual TLS requires.\n"
	if len(args) == 0 || (args[0] != "ca" && args[0] != "cert") {
		fmt.Fprint(stderr, usage)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return nil
		}
		return fmt.Errorf("%w: want \"tls ca\" or \"tls cert\"", errUsage)
	}
	switch args[0] {
	case "ca":
		fs := newFlags("tls ca", "tls ca --dir DIR [--force]", "Creates the cluster CA in DIR: ca.crt and ca.key (0600). Refuses to replace an existing CA without --force.", stderr)
		dir := fs.String("dir", "", "directory for ca.crt and ca.key (required)")
		force := fs.Bool("force", false, "replace an existing CA (every node certificate it signed stops working)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if *dir == "" || fs.NArg() != 0 {
			return fmt.Errorf("%w: tls ca --dir DIR", errUsage)
		}
		var opts []pki.Option
		if *force {
			opts = append(opts, pki.Force())
		}
		if err := pki.WriteCA(*dir, opts...); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s and %s\n", filepath.Join(*dir, pki.CACertFile), filepath.Join(*dir, pki.CAKeyFile))
		return nil
	}
	fs := newFlags("tls cert", "tls cert --ca-dir DIR --dir DIR --node NAME --ip ADDR [--ip ADDR...] [--dns NAME...] [--force]",
		"Creates a node certificate (node.crt, node.key) in --dir, signed by the CA in --ca-dir.", stderr)
	caDir := fs.String("ca-dir", "", "directory holding ca.crt and ca.key (required)")
	dir := fs.String("dir", "", "directory for node.crt and node.key (required)")
	node := fs.String("node", "", "node name, as node.name in its configuration (required)")
	force := fs.Bool("force", false, "replace an existing certificate")
	var ips, dns listFlag
	fs.Var(&ips, "ip", "an address of the node (repeatable; at least one)")
	fs.Var(&dns, "dns", "an extra DNS name of the node (repeatable)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *caDir == "" || *dir == "" || *node == "" || len(ips) == 0 || fs.NArg() != 0 {
		return fmt.Errorf("%w: tls cert --ca-dir DIR --dir DIR --node NAME --ip ADDR", errUsage)
	}
	var parsed []net.IP
	for _, s := range ips {
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("%w: --ip %q is not an IP address", errUsage, s)
		}
		parsed = append(parsed, ip)
	}
	var opts []pki.Option
	if *force {
		opts = append(opts, pki.Force())
	}
	if err := pki.WriteNodeCert(*dir, *caDir, *node, parsed, dns, opts...); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s and %s for node %s (%s)\n", filepath.Join(*dir, "node.crt"), filepath.Join(*dir, "node.key"), *node, ips.String())
	return nil
}

func cmdKeygen(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("keygen", "keygen [--out FILE] [--force] | keygen --data-key FILE",
		"Makes a gossip encryption key (32 random bytes, base64) for cluster.gossip_key_file: printed, or written to\nFILE (0600). Every node of a cluster needs the same key.\n\nWith --data-key, makes the data key that encrypts checkpoint archives at rest (an age X25519\nidentity) for store.data_key_file, written to FILE (0600; an existing file is never replaced:\narchives sealed with it could no longer be read). Every node of a cluster needs the same key.", stderr)
	out := fs.String("out", "", "write the key to this file instead of printing it")
	force := fs.Bool("force", false, "replace an existing key file")
	dataKey := fs.String("data-key", "", "write a new data key (store.data_key_file) to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: keygen takes no arguments", errUsage)
	}
	if *dataKey != "" {
		if *out != "" || *force {
			return fmt.Errorf("%w: --data-key makes a data key; --out and --force are for the gossip key", errUsage)
		}
		if err := writeDataKey(*dataKey); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s\n", *dataKey)
		return nil
	}
	if *out != "" {
		var opts []pki.Option
		if *force {
			opts = append(opts, pki.Force())
		}
		if err := pki.WriteGossipKey(*out, opts...); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s\n", *out)
		return nil
	}
	k, err := pki.NewGossipKey()
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, k)
	return nil
}

// writeDataKey writes a new data key to path (0600, fsynced), refusing to
// replace a file that exists. Its directory is created (0700) if needed.
func writeDataKey(path string) (err error) {
	id, err := seal.Generate()
	if err != nil {
		return err
	}
	b, err := seal.KeyFile(id)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("data key %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("data key %s exists: not replaced (archives sealed with it could no longer be read); remove it first if that is what you want", path)
	} else if err != nil {
		return fmt.Errorf("data key %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			os.Remove(path)
		}
	}()
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write data key %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync data key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write data key %s: %w", path, err)
	}
	return nil
}
