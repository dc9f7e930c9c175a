// Command pause is crfailoverd's sandbox (pause) image: it waits for SIGTERM
// or SIGINT and exits 0, reaping children meanwhile is not needed because
// every test container gets its own PID namespace.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
	os.Exit(0)
}
