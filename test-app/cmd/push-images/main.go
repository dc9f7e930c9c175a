// Command push-images builds the counter test application and the sandbox
// (pause) image as OCI images, with no docker, and pushes them to a
// registry:
//
//	go run ./test-app/cmd/push-images --registry localhost:5000
//
// It must run from the module root (or be given --module).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/crfailoverd/crfailoverd/test-app/imagebuild"
)

func main() {
	registry := flag.String("registry", "localhost:5000", "registry to push to, host:port (plain HTTP on loopback)")
	module := flag.String("module", ".", "root of the crfailoverd Go module")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: push-images [--registry HOST:PORT] [--module DIR]\n\nBuilds %s and %s and pushes them.\n\n", imagebuild.CounterRef, imagebuild.PauseRef)
		flag.PrintDefaults()
	}
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	refs, err := imagebuild.BuildAndPushAll(ctx, *module, *registry)
	if err != nil {
		fmt.Fprintln(os.Stderr, "push-images:", err)
		os.Exit(1)
	}
	for _, r := range refs {
		fmt.Println("pushed", r)
	}
}
