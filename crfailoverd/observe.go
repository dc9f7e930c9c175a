package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/admin"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/metrics"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// observer turns the agent's reports into metrics records. Reading the
// CRIU statistics out of an archive happens off the checkpoint loop.
type observer struct {
	rec      *metrics.Recorder
	node     string
	archives archiveOpener // nil: no CRIU statistics in the records
}

// archiveOpener opens a stored archive's plaintext (the store: archives
// may be sealed, so never read e.Path directly).
type archiveOpener interface {
	OpenArchive(e store.Entry) (*store.Archive, error)
}

func (o observer) Checkpointed(w discovery.Workload, e store.Entry, method string, start time.Time, took time.Duration, err error) {
	r := metrics.CheckpointRecord{Workload: w.ID.String(), Node: o.node, Method: method, Seq: e.Seq, Start: start,
		Duration: took, Bytes: e.Size, OK: err == nil}
	if err != nil {
		r.Error = err.Error()
		o.rec.Checkpoint(r)
		return
	}
	r.Duration = e.Duration // the kubelet or CRI call alone
	go func() {
		r.Stats = o.stats(e)
		o.rec.Checkpoint(r)
	}()
}

// stats reads the CRIU statistics of e's archive, nil if they cannot be
// read (the record goes out without them).
func (o observer) stats(e store.Entry) *archive.DumpStats {
	if o.archives == nil {
		return nil
	}
	a, err := o.archives.OpenArchive(e)
	if err != nil {
		return nil
	}
	defer a.Close()
	s, err := archive.ReadStatsFrom(a, fmt.Sprintf("%s seq %d", e.Workload, e.Seq), archive.Options{})
	if err != nil {
		return nil
	}
	return s
}

func (o observer) Restored(id store.Workload, seq uint64, start time.Time, took, age time.Duration, reason string, err error) {
	r := metrics.RestoreRecord{Workload: id.String(), Node: o.node, Seq: seq, Start: start, Duration: took, CheckpointAge: age,
		OK: err == nil, Reason: reason}
	if err != nil {
		r.Error = err.Error()
	}
	o.rec.Restore(r)
}

// servePrometheus serves the recorder's metrics on addr until ctx ends.
func servePrometheus(ctx context.Context, addr string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	return admin.Serve(ctx, ln, mux)
}
