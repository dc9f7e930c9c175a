// Command counter is the test application of crfailoverd, the seeds' counter
// app rewritten in Go. It counts up every 100 ms and serves its state over
// HTTP on port 8080 (plain TCP: CRIU cannot dump MPTCP sockets):
//
//	GET  /state    {"counter":N}
//	POST /state    {"counter":N} sets the counter (pull-state baseline)
//	GET  /restore  {"restore":bool,"counter":N}: restore is true once the
//	               process finds itself restored from a checkpoint
//	GET  /kill     answers, then exits with status 1
//	GET  /health   200
//	GET  /checksum {"counter":N,"sha256":"..."}: the big state's hash with
//	               the counter it belongs to (404 without -state-mb)
//
// With -state-mb N the app also holds N MiB of big state
// (test-app/bigstate, filled from -state-seed) and rewrites one page of it
// on every tick, so a restored copy can be checked byte for byte:
// /checksum must equal bigstate.Expected(N, seed, counter). Hashing 100 MB
// takes a few hundred milliseconds: meanwhile the counter goes on and its
// page writes wait, applied once the hash is done, so /checksum answers
// the counter read when the hash began and the memory is that counter's
// throughout (and the ticks keep their pace: a late tick would read as a
// restore). POST /state sets the big state to match the new counter.
//
// It writes one log line per second.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/crfailoverd/crfailoverd/test-app/bigstate"
)

type app struct {
	mu       sync.Mutex
	counter  int64
	restored bool
	lastTick time.Time
	state    *bigstate.State // nil: no big state
	// While /checksum hashes the state (hashing), ticks queue their page
	// writes in pending instead of changing the memory under the hash.
	// hashMu serializes the hashes and the counter's POSTs.
	hashMu  sync.Mutex
	hashing bool
	pending []int64
}

func main() {
	addr := flag.String("listen", ":8080", "listen address (must be a wildcard address so a restored process can serve on another node)")
	stateMB := flag.Int("state-mb", 0, "MiB of big state to hold and check (0: none)")
	stateSeed := flag.Uint64("state-seed", 1, "seed the big state is filled from")
	flag.Parse()

	a := &app{lastTick: time.Now()}
	if *stateMB > 0 {
		a.state = bigstate.New(*stateMB, *stateSeed)
		log.Printf("counter: holding %d MiB of big state from seed %d", *stateMB, *stateSeed)
	}
	go a.count()
	go a.logLoop()

	lc := net.ListenConfig{}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", *addr)
	if err != nil {
		log.Fatalf("counter: listen on %s: %v", *addr, err)
	}
	log.Printf("counter: listening on %s", ln.Addr())
	srv := &http.Server{Handler: a.routes(), ReadHeaderTimeout: 5 * time.Second}
	// No keep-alive: an open connection makes a CRIU dump harder (tcp-close
	// handles it, but fewer open sockets mean smaller, faster checkpoints).
	srv.SetKeepAlivesEnabled(false)
	log.Fatal(srv.Serve(ln))
}

// restoreGap is the pause between two ticks that marks a restore: a dump
// freezes the process for a fraction of a second, a restore resumes it
// seconds after the dump. A restore sooner than that goes unnoticed.
const restoreGap = time.Second

// count increments the counter every 100 ms.
func (a *app) count() {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for now := range t.C {
		a.tick(now)
	}
}

func (a *app) tick(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.counter++
	switch {
	case a.state == nil:
	case a.hashing:
		a.pending = append(a.pending, a.counter)
	default:
		a.state.Tick(a.counter)
	}
	// Wall clock, not Go's monotonic reading: CRIU restores the container's
	// time namespace so that its monotonic clock shows no gap.
	if now.Round(0).Sub(a.lastTick.Round(0)) > restoreGap {
		a.restored = true
	}
	a.lastTick = now
}

func (a *app) logLoop() {
	for range time.Tick(time.Second) {
		a.mu.Lock()
		c, r := a.counter, a.restored
		a.mu.Unlock()
		log.Printf("counter=%d restored=%t", c, r)
	}
}

func (a *app) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /state", func(w http.ResponseWriter, _ *http.Request) {
		a.mu.Lock()
		defer a.mu.Unlock()
		writeJSON(w, map[string]int64{"counter": a.counter})
	})
	mux.HandleFunc("POST /state", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Counter *int64 `json:"counter"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&body); err != nil || body.Counter == nil {
			http.Error(w, `want a JSON body {"counter":N}`, http.StatusBadRequest)
			return
		}
		a.hashMu.Lock() // no hash reads the memory Set rewrites
		a.mu.Lock()
		a.counter = *body.Counter
		if a.state != nil {
			a.state.Set(a.counter)
		}
		a.mu.Unlock()
		a.hashMu.Unlock()
		writeJSON(w, map[string]int64{"counter": *body.Counter})
	})
	mux.HandleFunc("GET /restore", func(w http.ResponseWriter, _ *http.Request) {
		a.mu.Lock()
		defer a.mu.Unlock()
		writeJSON(w, map[string]any{"restore": a.restored, "counter": a.counter})
	})
	mux.HandleFunc("GET /checksum", func(w http.ResponseWriter, _ *http.Request) {
		if a.state == nil {
			http.Error(w, "no big state: the app was started without -state-mb", http.StatusNotFound)
			return
		}
		counter, sum := a.checksum()
		writeJSON(w, map[string]any{"counter": counter, "sha256": sum})
	})
	mux.HandleFunc("GET /kill", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "exiting with status 1")
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		go func() {
			time.Sleep(100 * time.Millisecond)
			log.Printf("counter: killed through /kill")
			os.Exit(1)
		}()
	})
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// checksum hashes the big state and returns it with the counter it
// belongs to; ticks during the hash are applied after it.
func (a *app) checksum() (int64, string) {
	a.hashMu.Lock()
	defer a.hashMu.Unlock()
	a.mu.Lock()
	a.hashing = true
	counter := a.counter
	a.mu.Unlock()

	sum := a.state.Sum() // nothing writes the memory now

	a.mu.Lock()
	for _, c := range a.pending {
		a.state.Tick(c)
	}
	a.pending, a.hashing = a.pending[:0], false
	a.mu.Unlock()
	return counter, sum
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
