package peer

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/encoding"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// codecName is the gRPC content-subtype of the Peer service
// ("application/grpc+crfpeer"). The codec is registered under this name
// only, so the default proto codec stays in place for everything else.
const codecName = "crfpeer"

// Wire format: each gRPC message starts with a tag byte.
//
//	0x01 JSON   the rest is a JSON object (control messages)
//	0x02 chunk  the rest is raw archive bytes (no further framing: gRPC
//	            frames carry the length)
const (
	tagJSON  byte = 0x01
	tagChunk byte = 0x02
)

func init() { encoding.RegisterCodec(codec{}) }

// codec encodes *chunk as tagged raw bytes and every other message as
// tagged JSON.
type codec struct{}

func (codec) Name() string { return codecName }

func (codec) Marshal(v any) ([]byte, error) {
	if c, ok := v.(*chunk); ok {
		b := make([]byte, 1+len(c.Data))
		b[0] = tagChunk
		copy(b[1:], c.Data)
		return b, nil
	}
	j, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("crfpeer codec: encode %T: %w", v, err)
	}
	return append([]byte{tagJSON}, j...), nil
}

// Unmarshal decodes data into v. It copies a chunk's bytes (into the
// chunk's existing buffer when large enough), since gRPC reuses data.
func (codec) Unmarshal(data []byte, v any) error {
	if len(data) == 0 {
		return fmt.Errorf("crfpeer codec: decode %T: empty message", v)
	}
	tag, body := data[0], data[1:]
	if c, ok := v.(*chunk); ok {
		if tag != tagChunk {
			return fmt.Errorf("crfpeer codec: decode chunk: message has tag 0x%02x, want 0x%02x", tag, tagChunk)
		}
		c.Data = append(c.Data[:0], body...)
		return nil
	}
	if tag != tagJSON {
		return fmt.Errorf("crfpeer codec: decode %T: message has tag 0x%02x, want 0x%02x", v, tag, tagJSON)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("crfpeer codec: decode %T: %w", v, err)
	}
	return nil
}

// header describes an archive: the first message of a Push (client to
// server) and of a Fetch reply stream. Chunks of exactly Size bytes in
// total follow.
type header struct {
	Workload string        `json:"workload"` // "namespace/pod/container"
	Seq      uint64        `json:"seq"`
	SHA256   string        `json:"sha256"` // hex
	Size     int64         `json:"size"`
	Created  time.Time     `json:"created"`
	Method   string        `json:"method,omitempty"`
	Source   string        `json:"source,omitempty"`      // node that took the checkpoint
	Duration time.Duration `json:"duration_ns,omitempty"` // how long taking it took
}

// chunk is a piece of an archive (at most chunkSize bytes).
type chunk struct{ Data []byte }

// pushReply acknowledges a Push once the archive is committed.
type pushReply struct {
	Seq    uint64 `json:"seq"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

type applyRequest struct {
	Command []byte `json:"command"`
}

// applyReply carries the handler's error, if any; transport failures are
// gRPC statuses instead.
type applyReply struct {
	Error string `json:"error,omitempty"`
}

// identifyRequest asks a peer for its node name.
type identifyRequest struct{}

type identifyReply struct {
	Node      string `json:"node"`
	RaftState bool   `json:"raft_state,omitempty"` // it belongs to a formed cluster
}

type migrateRequest struct {
	Workload string `json:"workload"`
	To       string `json:"to"`
}

type migrateReply struct {
	Error      string `json:"error,omitempty"`
	DowntimeMS int64  `json:"downtime_ms"`
	Seq        uint64 `json:"seq"`
}

// fetchRequest asks for a workload's entry Seq (0: the newest good one).
type fetchRequest struct {
	Workload string `json:"workload"`
	Seq      uint64 `json:"seq"`
}

func headerOf(e store.Entry) header {
	return header{
		Workload: e.Workload.String(), Seq: e.Seq, SHA256: e.SHA256, Size: e.Size,
		Created: e.Created, Method: e.Method, Source: e.Source, Duration: e.Duration,
	}
}

// entry validates h and returns the workload and the metadata to import
// the archive with.
func (h header) entry() (store.Workload, store.Entry, error) {
	w, err := store.ParseWorkload(h.Workload)
	if err != nil {
		return store.Workload{}, store.Entry{}, invalid("header: %w", err)
	}
	switch {
	case h.Seq == 0:
		return w, store.Entry{}, invalid("header: seq is 0")
	case h.Size < 0:
		return w, store.Entry{}, invalid("header: negative size %d", h.Size)
	case len(h.SHA256) != 64:
		return w, store.Entry{}, invalid("header: sha256 %q is not 64 hex digits", h.SHA256)
	}
	if _, err := hex.DecodeString(h.SHA256); err != nil {
		return w, store.Entry{}, invalid("header: sha256 %q is not 64 hex digits", h.SHA256)
	}
	return w, store.Entry{
		Seq: h.Seq, SHA256: h.SHA256, Size: h.Size, Created: h.Created,
		Method: h.Method, Source: h.Source, Duration: h.Duration,
	}, nil
}

// badRequest marks an error caused by what the other side sent; the
// server reports it as codes.InvalidArgument.
type badRequest struct{ err error }

func (e badRequest) Error() string { return e.err.Error() }
func (e badRequest) Unwrap() error { return e.err }

func invalid(format string, args ...any) error {
	return badRequest{fmt.Errorf(format, args...)}
}

// isBadRequest reports whether err was caused by what the other side sent.
func isBadRequest(err error) bool {
	var b badRequest
	return errors.As(err, &b)
}
