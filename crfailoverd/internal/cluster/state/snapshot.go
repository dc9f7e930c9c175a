package state

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
)

// Snapshot format: a stream of JSON values, one per line:
//
//	{"format":"crfailoverd-state","version":1}      header
//	{"type":"node","node":{...}}                     one per node, sorted by name
//	{"type":"workload","workload":{...}}             one per workload, sorted by ID
//	{"type":"end","nodes":N,"workloads":M}           trailer
//
// The trailer makes a truncated snapshot an error rather than a smaller
// state. A reader rejects other formats and versions, unknown record
// types, duplicates, and data after the trailer.
const (
	snapshotFormat  = "crfailoverd-state"
	SnapshotVersion = 1
)

type snapshotHeader struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
}

// Record types.
const (
	recNode     = "node"
	recWorkload = "workload"
	recEnd      = "end"
)

type snapshotRecord struct {
	Type      string    `json:"type"`
	Node      *Node     `json:"node,omitempty"`
	Workload  *Workload `json:"workload,omitempty"`
	Nodes     int       `json:"nodes,omitempty"`
	Workloads int       `json:"workloads,omitempty"`
}

// WriteSnapshot writes the state to w. The output is deterministic: the
// same state gives the same bytes.
func (s *State) WriteSnapshot(w io.Writer) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	if err := enc.Encode(snapshotHeader{Format: snapshotFormat, Version: SnapshotVersion}); err != nil {
		return fmt.Errorf("write snapshot header: %w", err)
	}
	for _, name := range sortedKeys(s.Nodes) {
		if err := enc.Encode(snapshotRecord{Type: recNode, Node: s.Nodes[name]}); err != nil {
			return fmt.Errorf("write snapshot record of node %q: %w", name, err)
		}
	}
	for _, id := range sortedKeys(s.Workloads) {
		if err := enc.Encode(snapshotRecord{Type: recWorkload, Workload: s.Workloads[id]}); err != nil {
			return fmt.Errorf("write snapshot record of workload %q: %w", id, err)
		}
	}
	if err := enc.Encode(snapshotRecord{Type: recEnd, Nodes: len(s.Nodes), Workloads: len(s.Workloads)}); err != nil {
		return fmt.Errorf("write snapshot trailer: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	return nil
}

// ReadSnapshot reads a state written by WriteSnapshot and checks it (see
// [State.Validate]).
func ReadSnapshot(r io.Reader) (*State, error) {
	dec := json.NewDecoder(bufio.NewReader(r))
	var h snapshotHeader
	if err := dec.Decode(&h); err != nil {
		return nil, fmt.Errorf("read snapshot header: %w", eofAsTruncated(err))
	}
	if h.Format != snapshotFormat {
		return nil, fmt.Errorf("read snapshot: not a crfailoverd state snapshot (format %q)", h.Format)
	}
	if h.Version != SnapshotVersion {
		return nil, fmt.Errorf("read snapshot: unsupported version %d (this build reads version %d)", h.Version, SnapshotVersion)
	}
	s := New()
	for n := 1; ; n++ {
		var rec snapshotRecord
		if err := dec.Decode(&rec); err != nil {
			return nil, fmt.Errorf("read snapshot record %d: %w", n, eofAsTruncated(err))
		}
		switch {
		case rec.Type == recNode && rec.Node != nil && rec.Workload == nil:
			if _, dup := s.Nodes[rec.Node.Name]; dup {
				return nil, fmt.Errorf("read snapshot record %d: node %q twice", n, rec.Node.Name)
			}
			s.Nodes[rec.Node.Name] = rec.Node
		case rec.Type == recWorkload && rec.Workload != nil && rec.Node == nil:
			if _, dup := s.Workloads[rec.Workload.ID]; dup {
				return nil, fmt.Errorf("read snapshot record %d: workload %q twice", n, rec.Workload.ID)
			}
			s.Workloads[rec.Workload.ID] = rec.Workload
		case rec.Type == recEnd && rec.Node == nil && rec.Workload == nil:
			if rec.Nodes != len(s.Nodes) || rec.Workloads != len(s.Workloads) {
				return nil, fmt.Errorf("read snapshot: trailer counts %d nodes and %d workloads, the snapshot has %d and %d",
					rec.Nodes, rec.Workloads, len(s.Nodes), len(s.Workloads))
			}
			var extra json.RawMessage
			switch err := dec.Decode(&extra); {
			case err == nil:
				return nil, errors.New("read snapshot: data after the trailer")
			case err != io.EOF:
				return nil, fmt.Errorf("read snapshot: data after the trailer: %w", err)
			}
			if err := s.Validate(); err != nil {
				return nil, fmt.Errorf("read snapshot: %w", err)
			}
			return s, nil
		default:
			return nil, fmt.Errorf("read snapshot record %d: unknown or malformed record (type %q)", n, rec.Type)
		}
	}
}

func eofAsTruncated(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("snapshot truncated: %w", err)
	}
	return err
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
