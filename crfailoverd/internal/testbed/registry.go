package testbed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"golang.org/x/sys/unix"
)

// serveRegistry serves one in-memory registry on 127.0.0.1:port of the host
// and of every given network namespace: containerd's restore pulls the
// checkpoint's base image from localhost, ignoring mirror settings, so it
// must answer on each node's own loopback.
func serveRegistry(ctx context.Context, a registryArgs, log *slog.Logger) error {
	addr := "127.0.0.1:" + strconv.Itoa(a.Port)
	h := registry.New(registry.Logger(slog.NewLogLogger(log.Handler(), slog.LevelDebug)))
	var lns []net.Listener
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("registry: listen on %s: %w", addr, err)
	}
	lns = append(lns, ln)
	for _, ns := range a.Netns {
		ln, err := listenInNetns(ns, addr)
		if err != nil {
			return err
		}
		lns = append(lns, ln)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, len(lns))
	for _, l := range lns {
		go func() { errc <- srv.Serve(l) }()
	}
	log.Info("registry listening", "addr", addr, "netns", a.Netns)
	select {
	case <-ctx.Done():
		_ = srv.Close()
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}

// listenInNetns opens a TCP listener inside the network namespace at
// nsPath. The socket stays in that namespace; the thread that made it is
// thrown away, so no other goroutine ever runs in the wrong namespace.
func listenInNetns(nsPath, addr string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// Never unlocked: the goroutine's thread exits with it.
		runtime.LockOSThread()
		f, err := os.Open(nsPath)
		if err != nil {
			ch <- result{err: fmt.Errorf("open network namespace %s: %w", nsPath, err)}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("enter network namespace %s: %w", nsPath, err)}
			return
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			err = fmt.Errorf("registry: listen on %s in %s: %w", addr, nsPath, err)
		}
		ch <- result{ln, err}
	}()
	r := <-ch
	return r.ln, r.err
}
