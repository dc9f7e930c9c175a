package main

import (
	"context"
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
	rec  *metrics.Recorder
	node string
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
		if s, serr := archive.ReadStats(e.Path); serr == nil {
			r.Stats = s
		}
		o.rec.Checkpoint(r)
	}()
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
