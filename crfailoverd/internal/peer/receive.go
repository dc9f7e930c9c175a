package peer

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// MaxConcurrentStreams bounds the streams of one connection to the Peer
// service (grpc.MaxConcurrentStreams): pushes and fetches each hold one.
const MaxConcurrentStreams = 64

// DefaultMaxPushesPerPeer bounds the pushes one calling node may have in
// progress at once, over all its connections. The Replicator of a node
// pushes to each peer one archive at a time, so more means a misbehaving
// (or compromised) peer.
const DefaultMaxPushesPerPeer = 4

// maxArchiveBytes is the largest archive st takes: its
// store.max_archive_bytes, else the archive package's default limit.
func maxArchiveBytes(st *store.Store) int64 {
	if m := st.Limits().MaxArchiveBytes; m > 0 {
		return m
	}
	_, total := archive.DefaultLimits()
	return total
}

// checkAnnounced refuses an archive whose header announces more than limit
// bytes, before any of its chunks is read.
func checkAnnounced(h header, limit int64) error {
	if h.Size > limit {
		return exhausted("%s seq %d: announced size %d bytes is above the limit of %d bytes per archive (store.max_archive_bytes): refused before reading it",
			h.Workload, h.Seq, h.Size, limit)
	}
	return nil
}

// tooMuch marks a refusal for a size or a count above a limit; the server
// reports it as codes.ResourceExhausted.
type tooMuch struct{ err error }

func (e tooMuch) Error() string { return e.err.Error() }
func (e tooMuch) Unwrap() error { return e.err }

func exhausted(format string, args ...any) error {
	return tooMuch{fmt.Errorf(format, args...)}
}

// pushSlots counts the pushes in progress per calling node.
type pushSlots struct {
	max int
	mu  sync.Mutex
	n   map[string]int
}

// acquire takes a slot for a push from peer, or refuses it naming the
// peer and the limit; release returns it.
func (p *pushSlots) acquire(peer string) (release func(), err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n[peer] >= p.max {
		return nil, exhausted("%s already has %d pushes in progress to this node, the most one peer may have: refused", peer, p.n[peer])
	}
	p.n[peer]++
	var once sync.Once
	return func() {
		once.Do(func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.n[peer]--; p.n[peer] == 0 {
				delete(p.n, peer)
			}
		})
	}, nil
}

// errWalkAbandoned ends the walk of an archive whose import stopped
// reading it.
var errWalkAbandoned = errors.New("the import stopped reading the archive")

// walkingReader is the reader a store imports a received archive from: it
// passes on the bytes of src and walks them at the same time with an
// archive.Walker (in a goroutine, through a pipe), so that a hostile
// archive is refused before the store commits it. It returns io.EOF only
// once src has ended and the walk has accepted the whole archive; a walk
// error is returned instead, so the store discards what it has written.
// Close must be called once the import has returned.
type walkingReader struct {
	src  io.Reader
	pw   *io.PipeWriter
	done chan struct{} // closed when the walk has ended
	err  error         // the walk's result, once done
	eof  bool
}

func newWalkingReader(src io.Reader, opts archive.Options) *walkingReader {
	pr, pw := io.Pipe()
	v := &walkingReader{src: src, pw: pw, done: make(chan struct{})}
	go func() {
		defer close(v.done)
		err := archive.WalkWith(pr, opts, func(*archive.Member) error { return nil })
		if err != nil && !errors.Is(err, errWalkAbandoned) {
			// What the other side sent (ErrTooLarge still shows through:
			// toStatus makes that ResourceExhausted).
			err = badRequest{fmt.Errorf("archive refused: %w", err)}
		}
		v.err = err
		if err == nil {
			err = errWalkEnded
		}
		pr.CloseWithError(err) // unblocks a Write in progress
	}()
	return v
}

// errWalkEnded is what a write after the end of an accepted walk gets; it
// cannot happen, since the walk ends only once the pipe is closed.
var errWalkEnded = errors.New("the archive's walk has ended")

func (v *walkingReader) Read(p []byte) (int, error) {
	if v.eof {
		return 0, io.EOF
	}
	n, err := v.src.Read(p)
	if n > 0 {
		if _, werr := v.pw.Write(p[:n]); werr != nil {
			<-v.done
			if v.err != nil {
				return 0, v.err
			}
			return 0, werr
		}
	}
	switch {
	case err == io.EOF:
		v.pw.Close()
		<-v.done
		if v.err != nil {
			return 0, v.err
		}
		v.eof = true
		return n, io.EOF
	case err != nil:
		v.pw.CloseWithError(err)
		return n, err
	}
	return n, nil
}

// Close ends the walk if it is still running and waits for it.
func (v *walkingReader) Close() {
	v.pw.CloseWithError(errWalkAbandoned)
	<-v.done
}
